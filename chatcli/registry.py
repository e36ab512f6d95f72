"""The model registry: models.toml files turned into frozen `ModelSpec`s.

Contract: `load_registry()` reads the built-in models.toml (shipped inside the
package), then the user's file (`<config dir>/models.toml`), then an explicit
`--models-file`; a later file adds aliases or replaces an earlier alias whole.
Every schema problem raises `ConfigError` naming the file, the line and the fix
(a file that is not UTF-8: the line and byte offset; `[models.ALIAS.defaults]`:
each value checked against its decoding parameter's type and range, plugins'
parameters and strategies included, when the file is read);
an unknown alias raises `UnknownModelError` listing the known ones.

`compile = "auto" | "never"` (whether chatcli builds a local model's compiled decode
step in the background after an answer: `chatcli.autocompile`) may be set at the top
level of a file or per alias; an alias's own setting wins, else the top-level one of the
last file that sets it, else "auto": after `load_registry` every local alias's
`compile` field says which. `keep_alive` (how long `chatcli serve` keeps a model no
command uses: "5m", "30s", 0, -1) may be set at the top level (the server's default,
below --keep-alive and CHATCLI_KEEP_ALIVE: `chatcli.serve.keep_alive`) or per local
alias (that model's, whatever the server's default).

Every alias has the common keys (description, params, context_window, license,
defaults, backend); `backend` (default `local`) names the backend that runs it
(`chatcli.backends`), which declares and checks its own keys (`local`: where the
weights come from; `openai`: the server). A key that belongs to another backend
is an error naming that backend. `ModelSpec` holds the common fields; a backend's own
live on its subclass, declared in the backend's module (`spec_class`), so that a new
backend is one module.

This module knows nothing about torch, downloads, caches or HTTP: it only
describes where weights (or the server) are and how to use them.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from chatcli import paths
from chatcli.errors import ConfigError, UnknownModelError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

SourceKind = Literal["hf", "path", "pypi", "remote"]
# Keys every alias takes, whatever its backend; each backend declares its own
# (`chatcli.backends`: `keys`, checked by its `parse`).
_COMMON_KEYS: dict[str, type | tuple[type, ...]] = {
    "description": str,
    "params": str,
    "context_window": int,
    "license": str,
    "defaults": dict,
    "backend": str,
}
_TYPE_NAMES: dict[type | tuple[type, ...], str] = {
    str: "a string", int: "an integer", bool: "true or false", dict: "a table",
    (int, float): "a number",
}
_ALIAS_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass(frozen=True)
class ModelSpec:
    """One alias: the fields every backend has. Each backend's own fields are on its
    subclass, declared in its module (`spec_class` of its class: `LocalSpec`,
    `OpenAISpec`); `ModelSpec(..., backend=NAME)` makes an instance of that subclass."""

    alias: str
    source: SourceKind
    description: str = ""
    params: str | None = None
    context_window: int | None = None
    license: str | None = None
    defaults: dict[str, Any] = field(default_factory=dict)
    origin: Path | None = None
    backend: str = "local"  # a name in chatcli.backends.BACKENDS

    def __new__(cls, *args: Any, **kwargs: Any) -> ModelSpec:
        if cls is ModelSpec:  # the backend's own spec class
            from chatcli.backends import backend_class

            own = getattr(backend_class(kwargs.get("backend", "local")), "spec_class", None)
            if own is not None:
                cls = own
        return super().__new__(cls)

    @property
    def location(self) -> str:
        """Where the weights (or the server) are, in one short string (its backend says)."""
        from chatcli.backends import backend_of

        return str(backend_of(self).location(self))


@dataclass(frozen=True)
class Registry:
    models: dict[str, ModelSpec]
    default: str
    files: tuple[Path, ...]
    # The top-level keep_alive (chatcli serve's default; None: not set).
    keep_alive: str | None = None

    def resolve(self, alias: str | None) -> ModelSpec:
        name = alias or self.default
        spec = self.models.get(name)
        if spec is not None:
            return spec
        known = ", ".join(sorted(self.models))
        close = difflib.get_close_matches(name, list(self.models), n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        hint += "run 'chatcli models list', or add the alias to " + str(paths.user_models_file())
        raise UnknownModelError(f"unknown model '{name}' (known: {known})", hint)


def builtin_models_file() -> Path:
    """The models.toml shipped with chatcli (inside the wheel, or at the repo root)."""
    here = Path(__file__).resolve().parent
    packaged = here / "models.toml"
    return packaged if packaged.is_file() else here.parent / "models.toml"


def load_registry(extra_file: Path | None = None) -> Registry:
    files = [builtin_models_file()]
    user = paths.user_models_file()
    if user.is_file():
        files.append(user)
    if extra_file is not None:
        if not extra_file.is_file():
            raise ConfigError(
                f"models file not found: {extra_file}",
                "pass an existing file to --models-file",
            )
        files.append(extra_file)
    models: dict[str, ModelSpec] = {}
    default: str | None = None
    auto_compile = "auto"
    keep_alive: str | None = None
    for f in files:
        file_models, file_default, file_compile, file_keep = _parse_file(f)
        models.update(file_models)
        default = file_default or default
        auto_compile = file_compile or auto_compile
        keep_alive = file_keep if file_keep is not None else keep_alive
    models = {alias: spec if spec.backend != "local" or spec.compile is not None
              else dataclasses.replace(spec, compile=auto_compile)
              for alias, spec in models.items()}
    if default is None:
        raise ConfigError(
            f"{files[0]}: no 'default' alias is set", "add default = \"ALIAS\" at the top"
        )
    if default not in models:
        raise ConfigError(
            f"default model '{default}' is not defined in any models.toml",
            f"define [models.{default}] or set default to one of: {', '.join(sorted(models))}",
        )
    return Registry(models=models, default=default, files=tuple(files), keep_alive=keep_alive)


def parse_models_file(path: Path) -> tuple[dict[str, ModelSpec], str | None]:
    """Parse one models.toml; returns its aliases and its `default` (or None)."""
    models, default, _, _ = _parse_file(path)
    return models, default


Parsed = tuple[dict[str, ModelSpec], str | None, str | None, str | None]


def _parse_file(path: Path) -> Parsed:
    """One models.toml's aliases, its `default`, its top-level `compile` and `keep_alive`
    (None where not set)."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}",
                          "check the file's permissions") from exc
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise ConfigError(
            f"{path}:{line}: not UTF-8: byte 0x{raw[exc.start]:02x} at offset {exc.start} "
            f"({exc.reason})", "save the file as UTF-8 (TOML files are UTF-8)",
        ) from exc
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}", "fix the syntax at that line") from exc
    return _parse(data, text, path)


def _line(text: str, alias: str | None = None, key: str | None = None) -> int | None:
    """Best-effort line number of `[models.ALIAS]` (or of KEY inside it)."""
    lines = text.splitlines()
    start = 0
    if alias is not None:
        header = re.compile(rf"^\s*\[\s*models\.\"?{re.escape(alias)}\"?\s*\]")
        for i, line in enumerate(lines):
            if header.match(line):
                start = i
                break
        else:
            return None
        if key is None:
            return start + 1
    if key is not None:
        pat = re.compile(rf"^\s*{re.escape(key)}\s*=")
        sub = re.compile(rf"^\[\s*models\.\"?{re.escape(alias or '')}\"?\.")
        for i in range(start, len(lines)):
            stripped = lines[i].lstrip()
            new_table = stripped.startswith("[") and not sub.match(stripped)
            if i > start and alias is not None and new_table:
                break
            if pat.match(lines[i]):
                return i + 1
    return start + 1 if alias else None


def _where(path: Path, text: str, alias: str | None = None, key: str | None = None) -> str:
    line = _line(text, alias, key)
    return f"{path}:{line}" if line else str(path)


COMPILE_SETTINGS = ("auto", "never")


def _parse(data: dict[str, Any], text: str, path: Path) -> Parsed:
    for top in data:
        if top not in ("default", "compile", "keep_alive", "models"):
            raise ConfigError(
                f"{_where(path, text, key=top)}: unknown top-level key '{top}'",
                "top level allows only 'default', 'compile', 'keep_alive' and "
                "[models.ALIAS] tables",
            )
    keep_alive = data.get("keep_alive")
    if keep_alive is not None:
        from chatcli.serve.keep_alive import duration

        try:
            if isinstance(keep_alive, bool) or not isinstance(keep_alive, str | int):
                raise ValueError("expected a string such as \"5m\" or a number of seconds")
            duration(keep_alive)
        except ValueError as exc:
            raise ConfigError(f"{_where(path, text, key='keep_alive')}: 'keep_alive' "
                              f"{keep_alive!r}: {exc}",
                              'e.g. keep_alive = "30m" (how long chatcli serve keeps a model '
                              "no command uses)") from None
        keep_alive = str(keep_alive)
    auto_compile = data.get("compile")
    if auto_compile is not None and auto_compile not in COMPILE_SETTINGS:
        raise ConfigError(
            f"{_where(path, text, key='compile')}: 'compile' must be \"auto\" or \"never\" "
            f"(got {auto_compile!r})",
            'compile = "never" stops chatcli building compiled decode steps in the background',
        )
    default = data.get("default")
    if default is not None and not isinstance(default, str):
        raise ConfigError(
            f"{_where(path, text, key='default')}: 'default' must be a string",
            'write default = "ALIAS"',
        )
    table = data.get("models", {})
    if not isinstance(table, dict):
        raise ConfigError(
            f"{_where(path, text, key='models')}: 'models' must be a table",
            "declare each alias as [models.ALIAS]",
        )
    models: dict[str, ModelSpec] = {}
    for alias, entry in table.items():
        models[alias] = _parse_entry(alias, entry, text, path)
    return models, default, auto_compile, keep_alive


def _parse_entry(alias: str, entry: Any, text: str, path: Path) -> ModelSpec:
    from chatcli.backends import BACKENDS, backend_class

    def fail(what: str, hint: str, key: str | None = None) -> ConfigError:
        return ConfigError(f"{_where(path, text, alias, key)}: [models.{alias}] {what}", hint)

    if not _ALIAS_RE.match(alias):
        raise fail("is not a valid alias", "use letters, digits, '.', '_' and '-'")
    if not isinstance(entry, dict):
        raise fail("must be a table", f"write [models.{alias}] followed by key = value lines")
    kinds = {name: backend_class(name) for name in BACKENDS}
    known: dict[str, type | tuple[type, ...]] = dict(_COMMON_KEYS)
    for cls in kinds.values():
        known.update(cls.keys)
    for key, value in entry.items():
        if key not in known:
            close = difflib.get_close_matches(key, list(known), n=1)
            hint = f"did you mean '{close[0]}'?" if close else f"known keys: {', '.join(known)}"
            raise fail(f"has unknown key '{key}'", hint, key)
        expected = known[key]
        if not isinstance(value, expected) or (expected is not bool and isinstance(value, bool)):
            tname = _TYPE_NAMES.get(expected, "a value of another type")
            raise fail(f"'{key}' must be {tname}, got {value!r}", f"fix '{key}'", key)
    backend = entry.get("backend", "local")
    if backend not in kinds:
        raise fail(f"'backend' must be one of {', '.join(kinds)} (got {backend!r})",
                   'e.g. backend = "openai" with base_url and model', "backend")
    kind = kinds[backend]
    for key in entry:  # a key another backend declares
        if key in _COMMON_KEYS or key in kind.keys:
            continue
        owner = next(name for name, cls in kinds.items() if key in cls.keys)
        from chatcli.backends.base import misplaced_key

        raise fail(*misplaced_key(kinds[owner], owner, key, backend), key)
    fields = kind.parse(entry, fail, path)
    ctx = entry.get("context_window")
    if ctx is not None and ctx <= 0:
        raise fail(
            "'context_window' must be positive", "e.g. context_window = 8192", "context_window"
        )
    return ModelSpec(  # the backend's own spec class
        alias=alias,
        description=entry.get("description", ""),
        params=entry.get("params"),
        context_window=ctx,
        license=entry.get("license"),
        defaults=_parse_defaults(entry, fail),
        origin=path,
        backend=backend,
        **fields,
    )


def _parse_defaults(entry: dict[str, Any], fail: Any) -> dict[str, Any]:
    """The [defaults] table, typed and checked like the flags (plugins' parameters too)."""
    from chatcli.decoding.registry import strategy_registry
    from chatcli.decoding.settings import DefaultsError, check_defaults

    try:
        return check_defaults(strategy_registry(), entry.get("defaults", {}))
    except DefaultsError as exc:
        raise fail(exc.message, exc.hint, exc.key) from None


