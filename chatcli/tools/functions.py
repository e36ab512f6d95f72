"""Python functions as tools: `--tool FILE.py[:NAME]` and `--tool-module pkg.mod:func`.

Contract: `load_file(spec)` runs FILE.py as a module of its own and returns its public
functions (those it defines, not starting with `_`), or the one NAME names;
`load_module(spec)` imports `pkg.mod` and returns `func`. Each becomes a `Tool`: its
name, the first paragraph of its docstring as the description, and `parameters`, a JSON
schema of its arguments from the signature (str, int, float, bool, list[T], dict,
Literal[...] (an enum), T | None; an argument with a default is optional; one without
an annotation takes any JSON value). A file that is missing or does not run, a name it
does not define, a file without public functions, two tools of one name, or an
annotation that has no JSON form raise `ToolError` (one line naming the file or
function, with a hint). Loading runs the user's code: that is what `--tool` asks for.

Knows nothing about models, prompts or the terminal.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from chatcli.errors import UsageError


class ToolError(UsageError):
    """A tool that cannot be loaded or described."""


@dataclass(frozen=True)
class Tool:
    name: str
    description: str
    parameters: dict[str, Any]  # JSON schema of an object: the arguments
    call: Callable[..., Any]
    source: str  # where it came from, for messages: "tools.py", "pkg.mod"

    def as_dict(self) -> dict[str, Any]:
        """The OpenAI form: {"type": "function", "function": {name, description, parameters}}."""
        return {"type": "function", "function": {"name": self.name,
                                                  "description": self.description,
                                                  "parameters": self.parameters}}


_SCALARS: dict[Any, str] = {str: "string", int: "integer", float: "number", bool: "boolean"}


def _schema(annotation: Any, where: str) -> dict[str, Any]:
    """The JSON schema of one annotation."""
    if annotation is inspect.Parameter.empty or annotation is Any:
        return {}
    if annotation in _SCALARS:
        return {"type": _SCALARS[annotation]}
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is list or origin is list:
        return {"type": "array", **({"items": _schema(args[0], where)} if args else {})}
    if annotation is dict or origin is dict:
        return {"type": "object"}
    if origin is typing.Literal:
        return {"enum": list(args)}
    if origin in (typing.Union, types.UnionType):
        kinds = [a for a in args if a is not type(None)]
        if len(kinds) == 1:
            inner = _schema(kinds[0], where)
            return {"anyOf": [inner, {"type": "null"}]} if inner else {}
    raise ToolError(f"{where}: the annotation {annotation!r} has no JSON form",
                    "use str, int, float, bool, list[T], dict, Literal[...] or T | None")


def describe(fn: Callable[..., Any], source: str) -> Tool:
    """`fn` as a `Tool` (see the module)."""
    name = fn.__name__
    try:
        hints = typing.get_type_hints(fn)
    except Exception as exc:  # an annotation that does not evaluate
        raise ToolError(f"{source}: {name}: its annotations do not evaluate: {exc}",
                        "fix the annotation, or remove it") from None
    properties: dict[str, Any] = {}
    required: list[str] = []
    for param in inspect.signature(fn).parameters.values():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        properties[param.name] = _schema(hints.get(param.name, param.empty),
                                         f"{source}: {name}({param.name})")
        if param.default is param.empty:
            required.append(param.name)
    doc = inspect.getdoc(fn) or ""
    description = doc.split("\n\n")[0].replace("\n", " ").strip()
    parameters = {"type": "object", "properties": properties, "required": required,
                  "additionalProperties": False}
    return Tool(name, description, parameters, fn, source)


def _public(module: types.ModuleType) -> list[Callable[..., Any]]:
    return [f for n, f in vars(module).items() if inspect.isfunction(f) and not n.startswith("_")
            and f.__module__ == module.__name__]


def load_file(spec: str) -> list[Tool]:
    """`FILE.py` (every public function) or `FILE.py:NAME` (that one)."""
    path_text, name = spec, ""
    if ":" in spec and not Path(spec).exists():
        path_text, name = spec.rsplit(":", 1)
    path = Path(path_text).expanduser()
    if not path.is_file():
        raise ToolError(f"--tool {spec}: no such file: {path}",
                        "give a Python file, e.g. --tool tools.py or --tool tools.py:add")
    module_name = f"chatcli_tool_{abs(hash(str(path.resolve())))}"
    loader_spec = importlib.util.spec_from_file_location(module_name, path)
    if loader_spec is None or loader_spec.loader is None:
        raise ToolError(f"--tool {spec}: {path} is not a Python file", "give a .py file")
    module = importlib.util.module_from_spec(loader_spec)
    sys.modules[module_name] = module
    try:
        loader_spec.loader.exec_module(module)
    except SyntaxError as exc:
        raise ToolError(f"--tool {spec}: {path}:{exc.lineno}: {exc.msg}",
                        "fix the file; chatcli runs it to read its functions") from None
    except Exception as exc:
        raise ToolError(f"--tool {spec}: running {path} failed: {type(exc).__name__}: {exc}",
                        "fix the file; chatcli runs it to read its functions") from None
    return _chosen(module, name, spec, path.name)


def load_module(spec: str) -> list[Tool]:
    """`pkg.mod:func`: that function of an importable module."""
    module_name, _, name = spec.partition(":")
    if not module_name or not name:
        raise ToolError(f"--tool-module {spec}: expected MODULE:FUNCTION",
                        "e.g. --tool-module mytools.files:list_files")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise ToolError(f"--tool-module {spec}: cannot import {module_name}: "
                        f"{type(exc).__name__}: {exc}",
                        "install the package, or run chatcli where it can be imported") from None
    return _chosen(module, name, spec, module_name, flag="--tool-module")


def _chosen(module: types.ModuleType, name: str, spec: str, source: str,
            flag: str = "--tool") -> list[Tool]:
    if name:
        fn = getattr(module, name, None)
        if not callable(fn):
            public = ", ".join(f.__name__ for f in _public(module)) or "none"
            raise ToolError(f"{flag} {spec}: {source} has no function '{name}'",
                            f"its public functions: {public}")
        return [describe(fn, source)]
    functions = _public(module)
    if not functions:
        raise ToolError(f"{flag} {spec}: {source} defines no public function",
                        "define one (a name not starting with _), or name it: FILE.py:NAME")
    return [describe(f, source) for f in functions]


def toolbox(files: list[str], modules: list[str], mcp: list[str] | None = None,
            timeout: float = 30.0) -> dict[str, Tool]:
    """Every tool of `--tool`, `--tool-module` and `--mcp` (each server started:
    `chatcli.tools.mcp`), by name (two of one name refused)."""
    found: dict[str, Tool] = {}
    served: list[Tool] = []
    if mcp:
        from chatcli.tools.mcp import MCPServer

        for command in mcp:
            served.extend(MCPServer(command, timeout).tools())
    for tool in [t for f in files for t in load_file(f)] + \
            [t for m in modules for t in load_module(m)] + served:
        if tool.name in found:
            raise ToolError(f"two tools are named '{tool.name}' ({found[tool.name].source} and "
                            f"{tool.source})", "rename one, or name the one you want: FILE:NAME")
        found[tool.name] = tool
    return found
