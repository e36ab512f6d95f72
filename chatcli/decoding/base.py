"""What a decoding strategy is, what it declares, what it is given and what it returns.

Contract: a strategy is a class with a `name`, a one-line docstring (shown by
`chatcli strategies`), a `Params` dataclass and a `decode(lm, prompt_ids, params, ctx)`
method that yields one `TokenStep` per generated token; the last one carries the
finish reason ("stop" at an EOS id, "length" at the token limit). A strategy that
returns several hypotheses puts the typed `Hypotheses` it found on the first step
yielded once they are known (beam search: its first step).

Parameters are declared once, with `param(default, help, flag, short=, valid=, off=,
request=)` on the `Params` dataclass, derived from `StrategyParams` so that its
constructor validates every declared range (cross-field checks stay in
`__post_init__`, after `super().__post_init__()`, with `check`). Everything else
reads the declaration (`declared(cls)`): the command-line flags of ask/chat/compare
(built-in strategies and the common parameters), `-o`, `/set`, `compare -S`,
models.toml [defaults], `chatcli strategies`, and the request field a server is
sent. A bad value raises `ParamError` whose message names the parameter, its flag
and the valid range.

A strategy declares what it can do with `capabilities` (a `Capabilities`): whether it
streams tokens as it chooses them, has per-token distributions (--show-candidates),
returns several hypotheses (--show-beams), and how it runs on an OpenAI-compatible
server (`Remote`: fixed request fields, parameters always sent, the seed, server
features it needs). Without the attribute a strategy gets `DEFAULT_CAPABILITIES`: a
token-by-token strategy (as `chatcli.decoding.loop.token_loop` makes) that runs on
local models only. Callers ask `capabilities_of(cls)`, never a strategy's name.
Every command's --help reads the built-in declarations, so a strategy module imports
what it decodes with (the loop, filters, torch) inside `decode`, not at module level.

`DecodeContext` carries what every strategy shares: limits, EOS ids, the logit
processors (penalties), a seeded random generator, what the caller asks to see
(top-K candidates, the beams a search pruned), and speculative decoding's drafter
(`speculation`), which every strategy built on `chatcli.decoding.loop.token_loop` uses.

Parameter types: `coerce` turns a typed-in string into a parameter's declared type
(int, float, bool, str, `bool | str`, a tuple of str, any of them `| None`),
`convert` checks a value read from a file; `check` raises `ParamError` (out of
range), which says which parameter so that callers can name where it was written.

This module knows nothing about tokenization, text, the terminal or servers' HTTP.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import operator
import types
import typing
from collections.abc import Callable, Iterator, Mapping, Sequence
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
    # With a constraint (--schema, --regex, ...): the ids among `raw` the constraint
    # removed, and the probability the model gave all removed tokens together (None: no
    # constraint).
    removed: tuple[int, ...] = ()
    removed_mass: float | None = None


@dataclass(frozen=True)
class Hypothesis:
    """One finished sequence of a strategy that returns several."""

    token_ids: list[int]  # generated tokens only (includes the final EOS id if it ended with one)
    score: float  # what the strategy ranks by (beam: length-normalised, as sequences_scores)
    logprob: float  # sum of the log-probabilities of the generated tokens (un-normalised)
    finished: bool  # ended with an EOS id (False: hit the token limit)


@dataclass(frozen=True)
class PrunedBeam:
    """A partial sequence a search dropped (recorded when `DecodeContext.trace` is set)."""

    token_ids: list[int]  # its generated tokens when it left the search
    score: float  # its running (un-normalised) score then
    step: int  # the generation step (1-based) at which no continuation of it survived


@dataclass(frozen=True)
class Hypotheses:
    """What a strategy that returns several hypotheses found, on one of its `TokenStep`s."""

    ranked: list[Hypothesis]  # best first; the first one is the answer the steps spelled
    pruned: list[PrunedBeam] = field(default_factory=list)  # only with `DecodeContext.trace`
    title: str = ""  # how they were found, e.g. "beam search: 4 beams, length penalty 1.0, ..."
    score: str = ""  # what a score is, e.g. "log-prob / length^1.0"


@dataclass(frozen=True)
class TokenStep:
    token_id: int
    logprob: float  # log-probability under the model's raw distribution (nan: not kept)
    finish_reason: str | None = None
    candidates: Candidates | None = None
    hypotheses: Hypotheses | None = None  # once known, from a strategy that returns several
    drafted: bool = False  # speculative decoding: a drafted token the model accepted


@dataclass
class DecodeContext:
    max_new_tokens: int
    eos_ids: frozenset[int]
    processors: Sequence[Processor] = ()
    generator: Any = None  # torch.Generator, seeded
    pad_id: int | None = None
    candidates: int | None = None  # K: record the top-K candidates at every step (None: off)
    trace: bool = False  # record what a search pruned (`Hypotheses.pruned`)
    # --speculate: a `chatcli.decoding.speculative.loop.Speculation` (drafter, schedule, figures);
    # `token_loop` then drafts and verifies (strategies that do not use it refuse it)
    speculation: Any = None


# -- what a strategy can do -------------------------------------------------------------


@dataclass(frozen=True)
class Remote:
    """How a strategy runs on an OpenAI-compatible server (`chatcli.remote.params` maps it).

    The request carries `fixed` fields as they are, the strategy's own parameters named in
    `always` even at their default (the server's own default may differ), every other
    parameter with a `request` field only when it is not off, and the run's seed when
    `seed`. `needs` names server features the strategy cannot run without.
    """

    fixed: Mapping[str, Any] = field(default_factory=dict)  # e.g. {"temperature": 0.0}
    always: tuple[str, ...] = ()  # own parameters sent even when off, e.g. ("temperature",)
    seed: bool = False  # send the seed of the run (recorded in the history)
    needs: tuple[str, ...] = ()  # server features, e.g. ("beam_search",)


@dataclass(frozen=True)
class Capabilities:
    """What a strategy can do; callers ask this, never the strategy's name."""

    streams: bool = True  # yields each token as it is chosen (False: all of them at the end)
    distributions: bool = True  # per-token distributions (--show-candidates, /candidates)
    hypotheses: bool = False  # returns several hypotheses (--show-beams, "hypotheses" in --json)
    remote: Remote | None = None  # how it runs on a server (None: local models only)
    # What it does instead of what it lacks, for refusals: "beam search scores whole sequences".
    note: str = ""
    # Whether a model's generation_config.json asks for this strategy (None: never).
    implied_by: Callable[[Mapping[str, Any]], bool] | None = None


# A plugin strategy without `capabilities`: token by token with distributions, local only.
DEFAULT_CAPABILITIES = Capabilities()


def capabilities_of(cls: type) -> Capabilities:
    """What strategy class `cls` declares it can do (`DEFAULT_CAPABILITIES` when silent)."""
    caps = getattr(cls, "capabilities", DEFAULT_CAPABILITIES)
    if not isinstance(caps, Capabilities):
        raise ValueError(f"strategy '{getattr(cls, 'name', cls)}': `capabilities` must be a "
                         "chatcli.decoding.base.Capabilities")
    return caps


class Strategy(Protocol):
    name: ClassVar[str]
    Params: ClassVar[type]
    # Optional: capabilities: ClassVar[Capabilities] (see `capabilities_of`).

    def decode(
        self, lm: LanguageModel, prompt_ids: list[int], params: Any, ctx: DecodeContext
    ) -> Iterator[TokenStep]: ...


# -- declaring parameters ---------------------------------------------------------------


@dataclass(frozen=True)
class Valid:
    """A parameter's valid values: `text` as error messages say it ("in (0, 1]"), `test`."""

    text: str
    test: Callable[[Any], bool]


def _num(x: float) -> str:
    return f"{x:g}"


def above(lo: float) -> Valid:
    """A finite number > lo."""
    return Valid(f"a number > {_num(lo)}", lambda v: math.isfinite(v) and v > lo)


def at_least(lo: int) -> Valid:
    """An integer >= lo."""
    return Valid(f"an integer >= {lo}", lambda v: v >= lo)


def interval(lo: float, hi: float, ends: str = "[]") -> Valid:
    """A number between lo and hi; `ends` says which ends are included: "[]", "(]", "[)"."""
    low = (lambda v: v >= lo) if ends[0] == "[" else (lambda v: v > lo)
    high = (lambda v: v <= hi) if ends[1] == "]" else (lambda v: v < hi)
    return Valid(f"in {ends[0]}{_num(lo)}, {_num(hi)}{ends[1]}", lambda v: low(v) and high(v))


def finite() -> Valid:
    return Valid("a finite number", math.isfinite)


def param(default: Any, help: str, flag: str | None = None, *, short: str | None = None,
          valid: Valid | None = None, off: Any = dataclasses.MISSING,
          request: str | None = None, example: Any = None) -> Any:
    """A strategy parameter, declared once.

    `help` is shown by `chatcli strategies` and `--help`; `flag` (and `short`) make it
    an option of ask, chat and compare (built-in strategies and common parameters only:
    a plugin's parameters are set with `-o NAME=VALUE`); `valid` is checked by the
    constructor of a `Params` subclass (None, for an optional parameter, always passes;
    a tuple is checked item by item); `off` is the value that leaves decoding unchanged
    (default: `default`); `request` is the field of a chat-completions request that
    carries it to a server (None: it cannot be sent, and is refused there unless off);
    `example` is the value hints suggest (default: the default, else one of its type).
    """
    meta = {"help": help, "flag": flag, "short": short, "valid": valid,
            "off": default if off is dataclasses.MISSING else off, "request": request,
            "example": example}
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class Declared:
    """One parameter as its `param(...)` declares it."""

    name: str
    kind: Any  # its declared type
    default: Any
    help: str
    flag: str | None  # its long option, e.g. "--temperature" (None: set with -o)
    short: str | None  # e.g. "-t"
    valid: Valid | None
    off: Any
    request: str | None  # its chat-completions request field, e.g. "top_k"

    @property
    def spelled(self) -> str:
        """How the user sets it: its flag, else `-o NAME`."""
        return self.flag or f"-o {self.name}"


def declared(cls: type) -> list[Declared]:
    """The parameters of a `Params` dataclass, in declaration order."""
    kinds = param_types(cls)
    out = []
    for f in dataclasses.fields(cls):
        m = f.metadata
        default = None if f.default is dataclasses.MISSING else f.default
        out.append(Declared(f.name, kinds[f.name], default, str(m.get("help", "")),
                            m.get("flag"), m.get("short"), m.get("valid"),
                            m.get("off", default), m.get("request")))
    return out


def validate(params: Any) -> None:
    """Check every declared `valid=` of a Params instance, in declaration order."""
    cls = type(params)
    for f in dataclasses.fields(cls):
        valid: Valid | None = f.metadata.get("valid")
        value = getattr(params, f.name)
        if valid is None or value is None:
            continue
        items = value if isinstance(value, (tuple, list)) else (value,)
        for item in items:
            check(valid.test(item), cls, f.name, valid.text, item)


class StrategyParams:
    """Base of a strategy's parameter dataclass: its constructor checks every `valid=`.

    A subclass with cross-field checks overrides `__post_init__`, calls
    `super().__post_init__()` first, then `check(...)`.
    """

    def __post_init__(self) -> None:
        validate(self)


@dataclass(frozen=True)
class NoParams(StrategyParams):
    """This strategy takes no parameters."""


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


def unwrap_optional(kind: Any) -> Any:
    """`X | None` -> X; any other type unchanged."""
    return _optional(kind)[0]


def is_list(kind: Any) -> bool:
    """Whether a declared type is a tuple or list (of str), optional or not."""
    return _is_list(_optional(kind)[0])


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
    if f.metadata.get("example") is not None:
        return f.metadata["example"]
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
