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

This module knows nothing about tokenization, text or the terminal.
"""

from __future__ import annotations

import dataclasses
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


def check(ok: bool, cls: type, name: str, valid: str, value: Any) -> None:
    """Raise the standard out-of-range error for `name` unless `ok`."""
    if ok:
        return
    fields = {f.name: f for f in dataclasses.fields(cls)}
    flag = flag_of(name, fields.get(name))
    raise UsageError(
        f"{flag} must be {valid} (got {value!r})", "'chatcli strategies' lists every parameter"
    )


def param_types(cls: type) -> dict[str, type]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


_TRUE = ("true", "yes", "on", "1")
_FALSE = ("false", "no", "off", "0")


def coerce(cls: type, name: str, raw: str) -> Any:
    """Turn a `-o name=value` string into the parameter's declared type.

    Supported types: int, float, bool, str, and `bool | str` (booleans first).
    """
    kind = param_types(cls)[name]
    text, low = raw.strip(), raw.strip().lower()
    try:
        if kind in (bool, bool | str):
            if low in _TRUE or low in _FALSE:
                return low in _TRUE
            if kind is bool:
                raise ValueError(text)
            return text
        if kind in (int, float):
            return kind(text)
        return text
    except ValueError:
        tname = getattr(kind, "__name__", str(kind))
        example = {int: "4", float: "0.5", bool: "true"}.get(kind, "value")
        raise UsageError(
            f"-o {name}={raw}: expected {tname}", f"e.g. -o {name}={example}"
        ) from None


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
