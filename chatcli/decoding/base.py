"""What a decoding strategy is, and what it is given.

Contract: a strategy is a class with a `name`, a one-line docstring (shown by
`chatcli strategies`), a `Params` dataclass whose constructor validates every
value (the message names the parameter, its flag and the valid range), and a
`decode(lm, prompt_ids, params, ctx)` method that yields one `TokenStep` per
generated token; the last one carries the finish reason ("stop" at an EOS id,
"length" at the token limit). Strategies that do not stream (beam search) yield
their best sequence at the end and put the rest in `ctx.extras`.

`DecodeContext` carries what every strategy shares: limits, EOS ids, the logit
processors (penalties) and a seeded random generator.

Parameter types: `coerce` turns a typed-in string into a parameter's declared type
(int, float, bool, str, `bool | str`, a tuple of str, any of them `| None`),
`convert` checks a value read from a file; `check` raises `ParamError` (out of
range), which says which parameter so that callers can name where it was written.

This module knows nothing about tokenization, text or the terminal.
"""

from __future__ import annotations

import dataclasses
import functools
import operator
import types
import typing
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

from chatcli.errors import UsageError
from chatcli.lm.base import LanguageModel

Processor = Callable[[Any, Any], Any]  # (input_ids (rows, seq), scores (rows, vocab)) -> scores


@dataclass(frozen=True)
class Candidates:
    """What the model weighed at one step (only computed when asked for)."""

    raw: list[tuple[int, float]]  # top-K (token id, probability) of the model's distribution
    drawn_from: list[tuple[int, float]]  # top-K of the distribution the strategy chose from
    entropy: float  # of the model's distribution, in nats
    chosen_prob: float  # the chosen token's probability in the drawn-from distribution


@dataclass(frozen=True)
class TokenStep:
    token_id: int
    logprob: float  # log-probability under the model's raw distribution
    finish_reason: str | None = None
    candidates: Candidates | None = None


@dataclass
class DecodeContext:
    max_new_tokens: int
    eos_ids: frozenset[int]
    processors: Sequence[Processor] = ()
    generator: Any = None  # torch.Generator, seeded
    pad_id: int | None = None
    extras: dict[str, Any] = field(default_factory=dict)
    candidates: int | None = None  # K: record the top-K candidates at every step (None: off)


@dataclass(frozen=True)
class NoParams:
    """This strategy takes no parameters."""


class Strategy(Protocol):
    name: ClassVar[str]
    Params: ClassVar[type]

    def decode(
        self, lm: LanguageModel, prompt_ids: list[int], params: Any, ctx: DecodeContext
    ) -> Iterator[TokenStep]: ...


def param(default: Any, help: str, flag: str | None = None) -> Any:
    """A dataclass field with the help text (and CLI flag) shown by `chatcli strategies`."""
    return field(default=default, metadata={"help": help, "flag": flag})


def flag_of(name: str, f: dataclasses.Field[Any] | None = None) -> str:
    flag = f.metadata.get("flag") if f is not None else None
    return flag or f"-o {name}"


class ParamError(UsageError):
    """A parameter value out of its valid range; `name`, `valid` and `value` say which.

    Callers that know how the user wrote the value (`/set`, `-S`, models.toml) reword it.
    """

    def __init__(self, message: str, hint: str, name: str, valid: str, value: Any) -> None:
        super().__init__(message, hint)
        self.name, self.valid, self.value = name, valid, value


def check(ok: bool, cls: type, name: str, valid: str, value: Any) -> None:
    """Raise the standard out-of-range error (a `ParamError`) for `name` unless `ok`."""
    if ok:
        return
    fields = {f.name: f for f in dataclasses.fields(cls)}
    flag = flag_of(name, fields.get(name))
    raise ParamError(f"{flag} must be {valid} (got {value!r})",
                     "'chatcli strategies' lists every parameter", name, valid, value)


def param_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


_TRUE = ("true", "yes", "on", "1")
_FALSE = ("false", "no", "off", "0")
# How a value is written on a command line: (name, value) -> e.g. "-o num_beams=4".
Spelling = Callable[[str, str], str]


def option_spelling(name: str, value: str) -> str:
    return f"-o {name}={value}"


def _optional(kind: Any) -> tuple[Any, bool]:
    """`X | None` -> (X, True); any other type -> (it, False)."""
    args = typing.get_args(kind)
    if type(None) in args and typing.get_origin(kind) in (typing.Union, types.UnionType):
        rest = [a for a in args if a is not type(None)]
        if len(rest) == 1:
            return rest[0], True
        return functools.reduce(operator.or_, rest), True
    return kind, False


def _is_list(kind: Any) -> bool:
    return typing.get_origin(kind) in (tuple, list)


def type_name(kind: Any) -> str:
    """What a value of `kind` is, with its article: "an integer", "a number"..."""
    kind, _ = _optional(kind)
    if _is_list(kind):
        return "a string or a list of strings"
    names = {int: "an integer", float: "a number", bool: "true or false", str: "a string",
             bool | str: "true, false or a string"}
    return names.get(kind, f"a {getattr(kind, '__name__', kind)}")


def _placeholder(kind: Any) -> str:
    kind, _ = _optional(kind)
    return {int: "N", float: "X", bool: "true|false", bool | str: "true|false|WORD"}.get(
        kind, "TEXT")


def example(cls: type, name: str) -> Any:
    """A valid value of parameter `name` (its default when it has one)."""
    f = {f.name: f for f in dataclasses.fields(cls)}[name]
    kind, _ = _optional(param_types(cls)[name])
    if f.default not in (None, (), dataclasses.MISSING) and isinstance(f.default, kind):
        return f.default
    if _is_list(kind):
        return ("###",)
    return {int: 42, float: 0.5, bool: True, bool | str: True}.get(kind, "text")


def _text(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def coerce(cls: type, name: str, raw: str, spelling: Spelling = option_spelling) -> Any:
    """Turn a typed-in string (`-o name=value`, `/set name value`) into the declared type.

    Supported types: int, float, bool, str, `bool | str` (booleans first), a tuple or
    list of str (one item), and any of them `| None` ("none" gives None). A value that
    does not parse raises a `UsageError` spelled the way the user wrote it (`spelling`).
    """
    declared = param_types(cls)[name]
    kind, optional = _optional(declared)
    text, low = raw.strip(), raw.strip().lower()
    if optional and low == "none":
        return None
    try:
        if kind in (bool, bool | str):
            if low in _TRUE or low in _FALSE:
                return low in _TRUE
            if kind is bool:
                raise ValueError(text)
            return text
        if kind is int:
            return int(text)
        if kind is float:
            return float(text)
        if _is_list(kind):
            return (text,)
        return text
    except ValueError:
        fix = spelling(name, _placeholder(declared))
        raise UsageError(
            f"{spelling(name, raw.strip())}: {name} must be {type_name(declared)}",
            f"write {fix}, e.g. {spelling(name, _text(example(cls, name)))}",
        ) from None


def convert(cls: type, name: str, value: Any) -> Any:
    """A value read from a file (TOML, JSON) as the declared type of `name`.

    Integers are accepted for floats (1 -> 1.0), one string for a list of strings;
    a value of another type raises `TypeError` (the caller names where it was written).
    """
    kind, optional = _optional(param_types(cls)[name])
    if value is None and optional:
        return None
    if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if kind is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if kind in (bool, str) and isinstance(value, kind):
        return value
    if kind == bool | str and isinstance(value, (bool, str)):
        return value
    if _is_list(kind):
        if isinstance(value, str):
            return (value,)
        if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
            return tuple(value)
    if kind not in (int, float, bool, str, bool | str) and not _is_list(kind):
        return value  # a plugin's own type: its Params constructor decides
    raise TypeError(f"{name} must be {type_name(kind)}")


def describe_params(cls: type) -> list[tuple[str, str, str, str]]:
    """(name, type, default, help) for each parameter of a Params dataclass."""
    types = param_types(cls)
    rows = []
    for f in dataclasses.fields(cls):
        kind = types[f.name]
        if typing.get_origin(kind) is tuple:
            tname = "str (repeatable)"
        else:
            tname = str(kind).replace(" | None", "") if kind != bool | str else "bool | str"
            tname = getattr(kind, "__name__", tname)
        default = "none" if f.default in (None, ()) else repr(f.default)
        rows.append((f.name, tname, default, str(f.metadata.get("help", ""))))
    return rows
