"""One place that decides decoding settings and their precedence.

Contract: `resolve_settings(...)` merges, lowest first: the strategy's defaults <
the model's generation_config.json (every key that names a declared parameter) <
the alias's [defaults] in models.toml < command-line flags (and `-o key=value`). It
picks the strategy (flag, else the alias's `strategy`, else the first strategy whose
capabilities say generation_config implies it (`implied_by`), else greedy), validates
every value through the parameter classes' constructors, and returns
`DecodingSettings` that also record where each value came from and carry the
strategy's capabilities. A flag the chosen strategy does not use is an error naming the
strategy that does; values from lower layers that do not apply are dropped.
Every value reaches the parameter classes as its declared type: typed-in strings
(`-o`, `compare -S`, `/set`) are converted with an error quoting how they were
written, file values (models.toml, generation_config.json) are checked; an
out-of-range value typed in with `compare -S` is reported as written there.
`check_defaults(...)` checks a models.toml [defaults] table (types, ranges, known
strategy, plugin parameters included) when the file is read.
`CommonParams` declares the parameters every strategy takes; `command_line_parameters()`
lists those with a flag (common, then the built-in strategies'), which ask, chat and
compare turn into options; `builtin_strategies()` names chatcli's own strategies.

Knows nothing about the terminal or how tokens are generated.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from chatcli.decoding.base import (
    DEFAULT_CAPABILITIES,
    Capabilities,
    Declared,
    DecodeContext,
    ParamError,
    Processor,
    Spelling,
    StrategyParams,
    Valid,
    above,
    at_least,
    capabilities_of,
    coerce,
    convert,
    declared,
    example,
    flag_of,
    interval,
    option_spelling,
    param,
)
from chatcli.decoding.registry import StrategyRegistry, register_builtins
from chatcli.decoding.speculative.spelling import VALID as SPECULATE
from chatcli.errors import ChatcliError, UsageError

DEFAULT_MAX_NEW_TOKENS = 512
DEFAULT_STRATEGY = "greedy"  # when neither a flag, the alias nor generation_config chooses


@dataclass(frozen=True)
class CommonParams(StrategyParams):
    """Parameters every strategy accepts."""

    max_new_tokens: int = param(DEFAULT_MAX_NEW_TOKENS, "most tokens to generate",
                                "--max-new-tokens", short="-n", valid=at_least(1),
                                request="max_tokens")
    seed: int | None = param(None, "random seed (a fixed seed reproduces a sampled answer)",
                             "--seed", valid=Valid("in [0, 2^63)", lambda v: 0 <= v < 2**63),
                             request="seed")
    stop: tuple[str, ...] = param((), "stop when this text appears (not printed)", "--stop",
                                  valid=Valid("a non-empty string", bool), request="stop")
    repetition_penalty: float = param(1.0, "divide logits of seen tokens (1: off)",
                                      "--repetition-penalty", valid=above(0),
                                      request="repetition_penalty")
    frequency_penalty: float = param(0.0, "subtract this x count of each generated token",
                                     "--frequency-penalty", valid=interval(-2, 2),
                                     request="frequency_penalty")
    presence_penalty: float = param(0.0, "subtract this from every generated token",
                                    "--presence-penalty", valid=interval(-2, 2),
                                    request="presence_penalty")
    no_repeat_ngram_size: int = param(0, "never repeat an n-gram of this size (0: off)",
                                      "--no-repeat-ngram-size", valid=at_least(0))
    thinking_budget: int | None = param(None, "a reasoning model thinks at most this many "
                                        "tokens, then chatcli closes its thinking",
                                        "--thinking-budget", valid=at_least(0))
    speculate: str | None = param(None, "draft tokens and verify them in one pass: ngram[:N] "
                                  "(prompt lookup) or a model alias[:N] (a draft model)",
                                  "--speculate", valid=SPECULATE, example="ngram")


COMMON_NAMES = frozenset(f.name for f in dataclasses.fields(CommonParams))


@dataclass(frozen=True)
class Flagged:
    """A parameter with a command-line flag, and who takes it."""

    param: Declared
    owners: tuple[str, ...]  # the built-in strategies that take it (): every strategy


@functools.cache
def _builtins() -> StrategyRegistry:
    builtins = StrategyRegistry()
    register_builtins(builtins.register)
    return builtins


def builtin_strategies() -> list[str]:
    """The names of chatcli's own strategies, in registration order (no plugins)."""
    return _builtins().names()


def command_line_parameters() -> list[Flagged]:
    """Every parameter with a flag: the common ones, then each built-in strategy's in
    registration order (a name several strategies declare appears once). Plugins are
    not loaded: their parameters are set with -o."""
    builtins = _builtins()
    out = [Flagged(d, ()) for d in declared(CommonParams) if d.flag]
    seen = {f.param.name for f in out}
    for name in builtins.names():
        for d in declared(builtins.get(name).Params):
            if d.flag and d.name not in seen:
                seen.add(d.name)
                out.append(Flagged(d, tuple(builtins.users_of(d.name))))
    return out


@dataclass(frozen=True)
class DecodingSettings:
    strategy: str
    params: Any  # the strategy's Params instance
    common: CommonParams
    origins: dict[str, str]  # parameter -> "default" | "generation_config.json" | ...
    seed: int  # the seed actually used (drawn at random when none was given)
    capabilities: Capabilities = DEFAULT_CAPABILITIES  # what the strategy can do

    def as_dict(self) -> dict[str, Any]:
        out = {"strategy": self.strategy, **dataclasses.asdict(self.params)}
        out.update(dataclasses.asdict(self.common))
        out["seed"] = self.seed
        out["stop"] = list(self.common.stop)
        return out

    def processors(self, prompt_len: int) -> list[Processor]:
        from chatcli.decoding import processors as p

        c = self.common
        out: list[Processor] = []
        if c.repetition_penalty != 1.0:
            out.append(p.repetition_penalty(c.repetition_penalty))
        if c.no_repeat_ngram_size > 0:
            out.append(p.no_repeat_ngram(c.no_repeat_ngram_size))
        if c.frequency_penalty or c.presence_penalty:
            out.append(p.frequency_presence_penalty(c.frequency_penalty, c.presence_penalty,
                                                    prompt_len))
        return out

    def context(self, max_new_tokens: int, eos_ids: frozenset[int], prompt_len: int,
                device: Any = "cpu", pad_id: int | None = None) -> DecodeContext:
        import torch

        generator = torch.Generator(device=device)
        generator.manual_seed(self.seed)
        return DecodeContext(max_new_tokens=max_new_tokens, eos_ids=eos_ids,
                             processors=self.processors(prompt_len), generator=generator,
                             pad_id=pad_id)


def from_generation_config(registry: StrategyRegistry, config: Mapping[str, Any]
                           ) -> tuple[str | None, dict[str, Any]]:
    """The strategy a generation_config.json implies (the first whose capabilities say
    so), and its values that name a declared parameter (others, like max_length, are
    ignored)."""
    names = set(COMMON_NAMES)
    for n in registry.names():
        names.update(f.name for f in dataclasses.fields(registry.get(n).Params))
    values = {k: v for k, v in config.items() if k in names and v is not None}
    implied = registry.with_capability(lambda c: c.implied_by is not None
                                       and c.implied_by(config))
    return (implied[0] if implied else None), values


def resolve_settings(
    registry: StrategyRegistry,
    *,
    strategy: str | None = None,
    flags: dict[str, Any] | None = None,
    options: dict[str, str] | None = None,
    alias_defaults: dict[str, Any] | None = None,
    generation_config: dict[str, Any] | None = None,
    spelling: Spelling = option_spelling,
    common_options: bool = False,
) -> DecodingSettings:
    """The settings of one run; see the module docstring for the layers.

    `options` are typed-in strings (`-o key=value`), converted to each parameter's
    declared type; `spelling` says how the user wrote one (errors quote it), and
    `common_options` lets them set common parameters too (`compare -S`).
    """
    flags = {k: v for k, v in (flags or {}).items() if v is not None}
    alias = dict(alias_defaults or {})
    gc_strategy, gc_values = from_generation_config(registry, generation_config or {})
    alias_strategy = alias.pop("strategy", None)
    name, strategy_origin = next(
        (n, o) for n, o in ((strategy, "flag"), (alias_strategy, "models.toml"),
                            (gc_strategy, "generation_config.json"),
                            (DEFAULT_STRATEGY, "default")) if n
    )
    cls = registry.get(name)
    own = {f.name: f for f in dataclasses.fields(cls.Params)}

    for key in flags:
        if key not in own and key not in COMMON_NAMES:
            users = registry.users_of(key)
            flag = _flag_for(registry, key, users)
            fix = f"use --strategy {users[0]}" if users else "remove it"
            raise UsageError(f"{flag} has no effect with --strategy {name}", fix)
    typed_options: dict[str, Any] = {}
    for key, raw in (options or {}).items():
        written = spelling(key, raw.strip())
        if key in own:
            typed_options[key] = coerce(cls.Params, key, raw, spelling)
        elif key in COMMON_NAMES and common_options:
            typed_options[key] = coerce(CommonParams, key, raw, spelling)
        elif key in COMMON_NAMES:
            raise UsageError(f"{written}: use the flag {flag_of(key, _common_field(key))}",
                             "common parameters have their own flags")
        else:
            listed = ", ".join(own) or "none"
            raise UsageError(f"{written}: strategy '{name}' has no parameter '{key}'",
                             f"its parameters: {listed}")

    merged: dict[str, Any] = {}
    origins: dict[str, str] = {"strategy": strategy_origin}
    for layer, values in (("generation_config.json", gc_values), ("models.toml", alias),
                          ("flag", {**flags, **typed_options})):
        for key, value in values.items():
            if key in own or key in COMMON_NAMES:
                merged[key] = value
                origins[key] = layer
    for key, value in merged.items():  # a value from a file: its declared type, or an error
        if origins[key] != "flag":
            owner = cls.Params if key in own else CommonParams
            merged[key] = _typed(owner, key, value, origins[key])
    for key in [*own, *COMMON_NAMES]:
        origins.setdefault(key, "default")
    if isinstance(merged.get("stop"), (list, str)):
        stops = merged["stop"]
        merged["stop"] = (stops,) if isinstance(stops, str) else tuple(stops)
    try:
        params = cls.Params(**{k: v for k, v in merged.items() if k in own})
        common = CommonParams(**{k: v for k, v in merged.items() if k in COMMON_NAMES})
    except ParamError as exc:
        raise _reworded(exc, origins, options or {}, spelling) from None
    if common.seed is not None:
        seed = common.seed
    else:
        import secrets

        seed = secrets.randbits(32)
    return DecodingSettings(name, params, common, origins, seed, capabilities_of(cls))


def _typed(cls: type, key: str, value: Any, layer: str) -> Any:
    """A value from a file layer as the parameter's declared type."""
    try:
        return convert(cls, key, value)
    except TypeError as exc:
        raise ChatcliError(f"{layer}: {exc}, got {value!r}",
                           f"fix or remove '{key}' there, or override it with its flag") from None


def _reworded(exc: ParamError, origins: dict[str, str], options: dict[str, str],
              spelling: Spelling) -> ChatcliError:
    """An out-of-range error that says where the value was written, when not a flag."""
    name, raw = exc.name, options.get(exc.name)
    if raw is not None and spelling is not option_spelling:
        return UsageError(f"{spelling(name, raw.strip())}: {name} must be {exc.valid}",
                          exc.hint)
    if origins.get(name) == "generation_config.json":
        return ChatcliError(
            f"the model's generation_config.json sets {name} = {exc.value!r}, but it must be "
            f"{exc.valid}", "override it with its flag or in [models.ALIAS.defaults]")
    return exc


class DefaultsError(ChatcliError):
    """A bad entry of a models.toml [defaults] table; `key` names it (for file:line)."""

    def __init__(self, key: str, message: str, hint: str) -> None:
        super().__init__(message, hint)
        self.key = key


def check_defaults(registry: StrategyRegistry, defaults: dict[str, Any]) -> dict[str, Any]:
    """A [models.ALIAS.defaults] table checked and typed as the parameters declare.

    Keys are `strategy` (a known strategy, plugins included), the common parameters
    and any strategy's parameters; each value must have its parameter's type
    (integers pass for numbers) and range. Raises `DefaultsError` naming the key.
    """
    out: dict[str, Any] = {}
    for key, value in defaults.items():
        if key == "strategy":
            if not isinstance(value, str):
                raise DefaultsError(key, f"defaults.strategy must be a string, got {value!r}",
                                    'e.g. strategy = "sample"')
            try:
                registry.get(value)
            except UsageError as exc:
                raise DefaultsError(key, f"defaults.strategy: {exc.message}", exc.hint) from None
            out[key] = value
            continue
        owners = [CommonParams] if key in COMMON_NAMES else [
            registry.get(n).Params for n in registry.users_of(key)]
        if not owners:
            known = {*COMMON_NAMES, "strategy"}
            for n in registry.names():
                known.update(f.name for f in dataclasses.fields(registry.get(n).Params))
            close = difflib.get_close_matches(key, sorted(known), n=1)
            hint = f"did you mean '{close[0]}'?" if close else "see 'chatcli strategies'"
            raise DefaultsError(key, f"defaults has unknown parameter '{key}'", hint)
        try:
            out[key] = convert(owners[0], key, value)
        except TypeError as exc:
            raise DefaultsError(key, f"defaults.{exc}, got {value!r}",
                                f"e.g. {key} = {_toml(example(owners[0], key))}") from None
    for cls in [CommonParams, *(registry.get(n).Params for n in registry.names())]:
        values = {f.name: out[f.name] for f in dataclasses.fields(cls) if f.name in out}
        if not values:
            continue
        try:
            cls(**values)
        except ParamError as exc:
            raise DefaultsError(exc.name, f"defaults.{exc.name} must be {exc.valid} "
                                f"(got {exc.value!r})", exc.hint) from None
    return out


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, tuple):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return f'"{value}"' if isinstance(value, str) else repr(value)


def _common_field(name: str) -> dataclasses.Field[Any] | None:
    return {f.name: f for f in dataclasses.fields(CommonParams)}.get(name)


def _flag_for(registry: StrategyRegistry, name: str, users: list[str]) -> str:
    for user in users:
        fields = {f.name: f for f in dataclasses.fields(registry.get(user).Params)}
        return flag_of(name, fields[name])
    return flag_of(name, _common_field(name))
