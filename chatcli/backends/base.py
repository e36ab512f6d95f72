"""What a backend is and what it does: the one interface answers come through.

Contract: a backend is where an alias's answers come from (`backend = NAME` in
models.toml). Its class declares, before anything is opened:

* `name` and `keys`: its own models.toml keys and their types (`parse` validates an
  alias's table and returns the `ModelSpec` fields; a key of another backend is an
  error naming that backend, in that backend's words where its class has `misplaced`);
* `capabilities_of(spec)`: what it can give (`Capabilities`), so that every refusal
  happens before stdin is read or anything loads, naming the missing capability;
* `runtime_for(spec, options)`: the validated runtime (local: device, dtype, threads,
  quantization) or None;
* `describe(spec)`: what `models list|show` print of the alias;
* `open(spec, registry, reporter, runtime)`: the opened backend.

An opened backend has `spec`, `context_window`, `generation_config` (its generation
defaults; {} where the server applies its own), `capabilities`, and does: `count`
(the prompt token ids of packed messages, the model's own chat template where it
can; it may be a `chatcli.context.Measure`, which packing then uses to count each
message once instead of rendering every prefix), `stream` (a `Generation` for
packed messages with decoding settings, views and an optional `constraint`,
chatcli.constraints.spec.Constraint: the answer's shape), `check` (refuses settings,
views and constraints it cannot honour, naming the missing capability, before any
request), `invalidate` (forget its prompt cache), `token_text`, `prompt_text`
(what the model is given, for /prompt), `attention` (the answer's attention per
turn: internals only), `reused` (prompt tokens the last answer did not recompute),
`approximate` (token counts are estimates) and `implementation` (which code runs;
`implementation_name` and `implementation_note` split it for --json). With the
capability `alternatives` it also does `distributions` (what the model weighed at each
step of an answer) and `alternative` (the answer taken another way at one step); with
`compile`, its class does `compile(spec, runtime, reporter, autotune)`. Callers ask the
capability, never the backend's name or its attributes.

Raw completions (`ask --raw`; the `raw` capability): a backend that has it also has
`raw_count` (the prompt token ids of messages taken as plain text, no chat template:
`chatcli.prompt.raw_text`), `has_chat_template` (False: the model can only complete
text) and takes `raw=True` in `stream` (and `attention`). `check_raw` refuses `--raw`
where the capability is missing, before anything loads; a backend class may have its own
`check_raw(spec, views, constraint)` instead, naming what it cannot give in a raw
completion. A
backend without these attributes has a chat template and no raw completions.

Knows nothing about the terminal, the CLI or a particular backend.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

from chatcli.errors import UsageError


@dataclass(frozen=True)
class Capabilities:
    """What a backend can give; each field is named in the refusal when it is missing."""

    token_ids: bool = False  # answers as the model's vocabulary ids (--json token_ids)
    internals: bool = False  # logits and attention (--show-beams, --explain-context)
    any_strategy: bool = False  # runs every strategy, plugins included (it picks tokens)
    beam: bool = False  # strategies that keep several hypotheses
    max_candidates: int | None = None  # --show-candidates K up to this (None: no limit)
    constrained: bool = False  # constrained decoding (a logits mask per step)
    kv_reuse: bool = False  # keeps the prompt's KV cache between turns
    exact_count: bool = True  # counts prompt tokens with the model's own tokenizer
    raw: bool = False  # completes plain text without a chat template (ask --raw)
    # The model's distribution at every step of an answer, and an answer taken another way
    # at one step (`distributions`, `alternative`: --alt, /alt).
    alternatives: bool = False
    compile: bool = False  # a decode step `chatcli compile` builds (the class's `compile`)


@dataclass(frozen=True)
class Views:
    """What the user asked to see of an answer besides its text."""

    candidates: int | None = None  # top-K candidates per step (None: off)
    trace_beams: bool = False  # the beams beam search pruned (--show-beams)
    internals: str | None = None  # a flag that reads the model's internals, e.g. --show-beams


def _name(spec: Any) -> str:
    return str(spec.alias or getattr(spec, "base_url", None) or spec.backend)


def check_capabilities(spec: Any, caps: Capabilities, views: Views,
                       settings: Any = None) -> None:
    """The generic refusals of what `caps` lacks, each naming the missing capability:
    a view of the model's internals, candidates (more than `max_candidates`), and with
    `settings` a strategy the backend cannot run. A backend with its own wording (the
    openai backend's server profiles) refuses before this is reached."""
    where = f"'{_name(spec)}' (backend {spec.backend})"
    if views.internals and not caps.internals:
        raise UsageError(f"{views.internals} needs the capability 'internals', which {where} "
                         "lacks", "use a local model (-m)")
    k, most = views.candidates, caps.max_candidates
    if k and most is not None and k > most:
        if most == 0:
            raise UsageError(f"--show-candidates needs the capability 'candidates', which "
                             f"{where} lacks", "drop --show-candidates, or use a local model")
        raise UsageError(f"--show-candidates {k}: {where} gives at most {most} candidates "
                         "per token", f"use --show-candidates {most} or less")
    if settings is not None:
        needs = strategy_needs(settings)
        for capability in needs:
            if not getattr(caps, capability):
                raise UsageError(f"strategy '{settings.strategy}' needs the capability "
                                 f"'{capability}', which {where} lacks",
                                 "choose another strategy (-S), or use a local model (-m)")


def misplaced_key(owner: Any, owner_name: str, key: str, backend: str) -> tuple[str, str]:
    """The error and hint for models.toml key `key` of backend `owner` in an alias of
    `backend`: the owner's own wording (its class's `misplaced`, with {key} and {backend})
    where it has one."""
    wording = getattr(owner, "misplaced", None)
    if wording is not None:
        message, hint = wording
        return message.format(key=key, backend=backend), hint.format(key=key, backend=backend)
    return (f"'{key}' needs backend = \"{owner_name}\"",
            f"add backend = \"{owner_name}\" or remove '{key}'")


def check_alternatives(spec: Any, caps: Capabilities, what: str) -> None:
    """Refuse `what` (--alt, /alt) where the backend has no per-step distributions."""
    if not caps.alternatives:
        raise UsageError(f"{what} needs the model's distribution at every step, which "
                         f"'{_name(spec)}' (backend {spec.backend}) does not give",
                         "use a local model (-m)")


def check_raw(spec: Any, caps: Capabilities) -> None:
    """Refuse `--raw` where the backend cannot complete plain text."""
    if not caps.raw:
        raise UsageError(f"--raw needs the capability 'raw', which '{_name(spec)}' (backend "
                         f"{spec.backend}) lacks", "drop --raw, or use a local model (-m)")


def strategy_needs(settings: Any) -> list[str]:
    """The backend capabilities the strategy of `settings` needs."""
    caps = settings.capabilities
    needs = []
    if caps.remote is None:
        needs.append("any_strategy")  # it picks tokens itself: the backend must run it
    if caps.hypotheses:
        needs.append("beam")
    return needs


class Backend(Protocol):
    name: ClassVar[str]
    spec: Any  # chatcli.registry.ModelSpec
    context_window: int
    generation_config: dict[str, Any]
    capabilities: Capabilities
    implementation: str  # "native", "transformers (why native was not possible)", "remote"
    implementation_name: str  # "native", "transformers", "remote"
    implementation_note: str  # why not native ("" when it is, or on a server)

    # The model's thinking block (chatcli.thinking.ThinkingFormat), None: it has none.
    thinking: Any

    # The prompt token ids of messages: a method, or a `chatcli.context.Measure`.
    count: Callable[[list[Any]], list[int]]

    def stream(self, packed: Any, settings: Any, max_new_tokens: int, views: Views,
               strategies: Any = None, constraint: Any = None) -> Any: ...

    def check(self, settings: Any, views: Views, constraint: Any = None) -> None: ...

    def invalidate(self) -> None: ...

    def token_text(self, token_id: int) -> str: ...

    def prompt_text(self, messages: list[Any]) -> tuple[str, str | None]: ...

    def attention(self, packed: Any, answer_ids: list[int]) -> Any: ...

    @property
    def reused(self) -> int: ...

    @property
    def approximate(self) -> bool: ...
