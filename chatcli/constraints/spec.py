"""What a user asked the answer's shape to be: one `Constraint`, from flags or slash commands.

Contract: `from_options(schema=..., json_object=..., regex=..., grammar=..., choice=...)`
turns at most one of the five options into a `Constraint` (None when none is given) and
raises `UsageError` (one line, naming the option, with a hint) for two at once, an
unreadable file (a directory, a file that is not UTF-8 text saying so), schema text
that is not JSON, a shorthand it cannot read, or an empty choice. `--schema` takes a
file (JSON Schema), JSON text (starting with `{`), or the shorthand
`'name str, age int, tags list[str]'` (`parse_shorthand`: one field per line when there
are several lines, else fields separated by commas, each `NAME [TYPE][: description]`,
TYPE one of str (the default), int, float, bool, list[T]; every field required, no
others allowed); a directory it names is refused, not read as a field. `--grammar`
takes a file in Lark or GBNF (`.gbnf`, or any file with `::=`, is GBNF).

A `Constraint` is plain data: kind, text (the JSON Schema as JSON, the regex, the
grammar, or the choices as a JSON list), grammar syntax, and where it came from. It
knows nothing about engines, tokenizers or servers: whether a schema is valid or
satisfiable is the engine's question (`chatcli.constraints.engine`) or the server's.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from chatcli.errors import UsageError

Kind = Literal["json_schema", "json_object", "regex", "grammar", "choice"]
OPTIONS = ("--schema", "--json-object", "--regex", "--grammar", "--choice")
SHORTHAND_TYPES = {"str": "string", "int": "integer", "float": "number", "bool": "boolean"}


@dataclass(frozen=True)
class Constraint:
    kind: Kind
    text: str  # JSON Schema (JSON text) | "" (json_object) | regex | grammar | JSON list
    syntax: str = ""  # grammar: "lark" | "gbnf"
    source: str = ""  # for messages: "--schema person.json", "/regex"

    @property
    def choices(self) -> list[str]:
        return list(json.loads(self.text)) if self.kind == "choice" else []

    def schema(self) -> dict[str, Any] | None:
        """The JSON Schema the answer must validate against (json_object: any object)."""
        if self.kind == "json_schema":
            return dict(json.loads(self.text))
        if self.kind == "json_object":
            return {"type": "object"}
        return None

    @property
    def is_json(self) -> bool:
        """Whether the answer is a JSON value (`--json` adds it, parsed)."""
        return self.kind in ("json_schema", "json_object")

    def describe(self) -> str:
        """One line for notes and headers, e.g. "JSON schema (person.json)"."""
        if self.kind == "json_schema":
            return f"JSON schema ({self.source})" if self.source else "JSON schema"
        if self.kind == "json_object":
            return "any JSON object"
        if self.kind == "regex":
            return f"regex {self.text!r}"
        if self.kind == "grammar":
            return f"{self.syntax} grammar" + (f" ({self.source})" if self.source else "")
        return "one of " + ", ".join(repr(c) for c in self.choices)

    def as_dict(self) -> dict[str, Any]:
        """What --json and the history record."""
        out: dict[str, Any] = {"kind": self.kind}
        if self.kind in ("json_schema", "json_object"):
            out["schema"] = self.schema()
        elif self.kind == "choice":
            out["choices"] = self.choices
        else:
            out[self.kind] = self.text
            if self.syntax:
                out["syntax"] = self.syntax
        return out


def from_options(*, schema: str | None = None, json_object: bool = False,
                 regex: str | None = None, grammar: str | None = None,
                 choice: str | None = None) -> Constraint | None:
    given = [name for name, value in zip(OPTIONS, (schema, json_object, regex, grammar, choice),
                                         strict=True) if value not in (None, False)]
    if len(given) > 1:
        raise UsageError(f"{' and '.join(given)} cannot be combined: an answer has one shape",
                         "keep one of them")
    if schema is not None:
        return schema_constraint(schema)
    if json_object:
        return Constraint("json_object", "", source="--json-object")
    if regex is not None:
        if regex == "":
            raise UsageError("--regex is empty", "give a regular expression, e.g. --regex '[0-9]+'")
        return Constraint("regex", regex, source="--regex")
    if grammar is not None:
        return grammar_constraint(grammar)
    if choice is not None:
        return choice_constraint(choice)
    return None


def _read(path: Path, option: str) -> str:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UsageError(f"{option}: cannot read {path}: {exc.strerror or exc}",
                         "check the path and its permissions") from exc
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UsageError(f"{option}: {path} is not UTF-8 text (byte 0x{data[exc.start]:02x} "
                         f"at offset {exc.start})", "save it as UTF-8") from exc


def _directory(path: Path, value: str, option: str, what: str) -> None:
    """Refuse a directory named where a file is wanted."""
    if path.is_dir():
        raise UsageError(f"{option}: {value} is a directory", f"give {what} inside it")


def schema_constraint(value: str, option: str = "--schema") -> Constraint:
    """A file, JSON text or the shorthand (see the module)."""
    text, source = value, ""
    stripped = value.strip()
    if stripped and not stripped.startswith(("{", "[")):
        _directory(Path(stripped).expanduser(), stripped, option, "a JSON Schema file")
    looks_like_path = not stripped.startswith(("{", "[")) and (
        stripped.endswith(".json") or "/" in stripped or Path(stripped).is_file())
    if looks_like_path and Path(stripped).expanduser().is_file():
        path = Path(stripped).expanduser()
        text, source = _read(path, option), path.name
    elif looks_like_path and stripped.endswith(".json"):
        raise UsageError(f"{option}: no such file: {stripped}",
                         "give a JSON Schema file, JSON text, or fields like 'name str, age int'")
    elif not stripped.startswith(("{", "[")):
        return Constraint("json_schema", json.dumps(parse_shorthand(value, option)),
                          source=option)
    try:
        parsed = json.loads(text)
    except json.JSONDecodeError as exc:
        where = f" in {source}" if source else ""
        raise UsageError(f"{option}: not valid JSON{where} (line {exc.lineno}, column "
                         f"{exc.colno}: {exc.msg})", "a JSON Schema is a JSON object") from exc
    if not isinstance(parsed, dict):
        raise UsageError(f"{option}: a JSON Schema is a JSON object, not {type(parsed).__name__}",
                         'e.g. {"type": "object", "properties": {"name": {"type": "string"}}}')
    return Constraint("json_schema", json.dumps(parsed), source=source or option)


_FIELD = re.compile(r"^\s*([A-Za-z_][\w-]*)\s*([^:]*?)\s*(?::\s*(.*))?$")


def _type(spelled: str, name: str, option: str) -> dict[str, Any]:
    spelled = spelled.strip() or "str"
    inner = re.fullmatch(r"list\[\s*(\w+)\s*\]", spelled)
    if inner:
        return {"type": "array", "items": _type(inner.group(1), name, option)}
    if spelled in SHORTHAND_TYPES:
        return {"type": SHORTHAND_TYPES[spelled]}
    raise UsageError(f"{option}: unknown type {spelled!r} for field {name!r}",
                     "types: str, int, float, bool, list[T] (e.g. 'name str, tags list[str]')")


def parse_shorthand(text: str, option: str = "--schema") -> dict[str, Any]:
    """'name str, age int: in years, tags list[str]' -> an object JSON Schema."""
    properties: dict[str, Any] = {}
    # As llm's concise schemas: one field per line when there are several lines (so a
    # description may hold commas), else fields separated by commas.
    parts = [p for p in re.split(r"\n" if "\n" in text.strip() else r",", text) if p.strip()]
    if not parts:
        raise UsageError(f"{option} is empty", "give fields like 'name str, age int'")
    for part in parts:
        found = _FIELD.match(part)
        if found is None:
            raise UsageError(f"{option}: cannot read {part.strip()!r} as a field",
                             "each field is NAME [TYPE][: description], e.g. 'age int: in years'")
        name, spelled, description = found.groups()
        if name in properties:
            raise UsageError(f"{option}: field {name!r} is given twice", "name each field once")
        prop = _type(spelled, name, option)
        if description:
            prop["description"] = description.strip()
        properties[name] = prop
    return {"type": "object", "properties": properties, "required": list(properties),
            "additionalProperties": False}


def grammar_constraint(value: str, option: str = "--grammar") -> Constraint:
    path = Path(value).expanduser()
    _directory(path, value, option, "a grammar file")
    if not path.is_file():
        raise UsageError(f"{option}: {value} is not a regular file (a FIFO, socket or device)"
                         if path.exists() else f"{option}: no such file: {value}",
                         "give a grammar file (Lark, or GBNF with ::= rules)")
    text = _read(path, option)
    if not text.strip():
        raise UsageError(f"{option}: {path} is empty", "write the grammar's rules in it")
    syntax = "gbnf" if path.suffix == ".gbnf" or "::=" in text else "lark"
    return Constraint("grammar", text, syntax=syntax, source=path.name)


def choice_constraint(value: str, option: str = "--choice") -> Constraint:
    choices = [c.strip() for c in value.split(",")]
    if not value.strip() or any(c == "" for c in choices):
        raise UsageError(f"{option}: an empty choice in {value!r}",
                         "separate non-empty choices with commas, e.g. --choice yes,no")
    if len(set(choices)) != len(choices):
        raise UsageError(f"{option}: a choice is given twice in {value!r}", "list each once")
    return Constraint("choice", json.dumps(choices), source=option)


def incomplete(constraint: Constraint, finish: str | None, tokens: int) -> tuple[str, str]:
    """(message, hint) for an answer cut short before it satisfied `constraint` (the
    answer is shown and saved as it is)."""
    what = constraint.source or constraint.describe()
    if finish == "stop":  # only a server ends an answer the constraint does not accept
        return (f"the answer does not satisfy {what}: the server ended it without holding "
                "it to the constraint", "check that the server supports it, and its "
                "server = ... profile in models.toml; or use a local model (-m)")
    why = {"length": f"the token limit ({tokens} tokens)",
           "stop_string": "a stop string"}.get(finish or "", f"finish reason {finish}")
    hint = ("raise --max-new-tokens (-n), or loosen the constraint" if finish == "length"
            else "drop the stop string, or loosen the constraint")
    return (f"the answer is incomplete: {why} cut it short before it satisfied {what}", hint)
