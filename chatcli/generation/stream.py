"""The text stream: a strategy's tokens → `StepEvent`s with text deltas, plus `Stats`.

Contract: `stream(loaded, prompt_ids, settings, max_new_tokens)` returns a
`Generation` (the answer types live in `chatcli.answer`, re-exported here);
iterating it runs the chosen decoding strategy and yields one
`StepEvent` per generated token, with the printable text delta (never broken
UTF-8, never an EOS token, never a stop string or what follows it). The last
event carries the finish reason: "stop" (an EOS id), "length" (the token limit)
or "stop_string". `Generation.stats` is kept current as it streams; a strategy that
returns several hypotheses (beam search) fills `Generation.search` (its typed result),
`Generation.hypotheses` (`AnswerHypothesis`, with text) and `Generation.pruned`
(`PrunedText`, with text; only with `trace_beams`) as soon as its steps carry them.
`as_dict()` of either is its --json form. `complete()` is the convenience wrapper.
With a `constraint` (chatcli.constraints), `stream` compiles it for the model's
vocabulary first (a `ConstraintError` before anything is generated) and decodes over a
`ConstrainedLM`, so any strategy only picks what the constraint allows; the last event's
Generation has `constraint_satisfied` (whether the answer is complete under it: False
when the token limit or a stop string cut it short).

With `--speculate` (`settings.common.speculate`), the strategy's token loop drafts and
verifies (`chatcli.decoding.speculative`): prompt lookup here, or the draft model the caller
passes (`drafter`, a `chatcli.decoding.speculative.drafters.ModelDrafter`); each accepted drafted
token's event says so (`drafted`) and `Stats.speculation` has the figures. A model
that cannot feed several tokens at once is refused (`UsageError`) before anything runs.

Knows nothing about the terminal or the CLI.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from chatcli.answer import AnswerHypothesis, Generation, PrunedText, Stats, StepEvent
from chatcli.decoding.base import Hypotheses
from chatcli.decoding.registry import StrategyRegistry, strategy_registry
from chatcli.decoding.settings import DecodingSettings
from chatcli.generation.detokenize import IncrementalDetokenizer
from chatcli.generation.stops import StopMatcher
from chatcli.loader import LoadedModel

__all__ = ["AnswerHypothesis", "Generation", "PrunedText", "Stats", "StepEvent", "complete",
           "constrained_lm", "stream"]


def stream(
    loaded: LoadedModel,
    prompt_ids: list[int],
    settings: DecodingSettings,
    max_new_tokens: int,
    registry: StrategyRegistry | None = None,
    candidates: int | None = None,
    trace_beams: bool = False,
    constraint: Any = None,
    drafter: Any = None,
) -> Generation:
    """`candidates=K` records each step's top-K candidates on the events; `trace_beams`
    records the beams beam search pruned (`Generation.pruned`); `constraint` holds the
    answer to a shape; `drafter` drafts for `--speculate ALIAS` (see the module)."""
    stats = Stats(prompt_tokens=len(prompt_ids))
    gen = Generation(iter(()), stats, settings, constraint=constraint)
    lm = loaded.lm
    if constraint is not None:
        lm = constrained_lm(loaded, constraint)
    if settings.common.thinking_budget is not None:
        lm = budgeted_lm(loaded, lm, prompt_ids, settings.common.thinking_budget)
    speculation = speculation_for(settings, lm, drafter)
    stats.speculation = speculation.stats if speculation is not None else None
    gen._events = _events(loaded, lm, prompt_ids, settings, max_new_tokens, registry, gen,
                          candidates, trace_beams, speculation)
    return gen


NGRAM_MOST = 16  # prompt lookup drafts at most this many tokens a round (adaptive)
MODEL_MOST = 8  # a draft model, at most this many


def speculation_for(settings: DecodingSettings, lm: Any, drafter: Any) -> Any:
    """What --speculate asks for (a `chatcli.decoding.speculative.loop.Speculation`), or None."""
    value = settings.common.speculate
    if value is None:
        return None
    from chatcli.decoding.speculative.drafters import NgramDrafter
    from chatcli.decoding.speculative.loop import Speculation
    from chatcli.decoding.speculative.schedule import Schedule
    from chatcli.decoding.speculative.spelling import parse
    from chatcli.errors import UsageError
    from chatcli.lm.base import can_extend

    if not can_extend(lm):
        raise UsageError("--speculate: this model cannot verify several drafted tokens in "
                         "one pass", "drop --speculate")
    wanted = parse(value)
    if wanted.lookup:
        drafter, most = NgramDrafter(), NGRAM_MOST
    elif drafter is None:
        raise UsageError(f"--speculate {value}: no draft model was opened for it",
                         "use --speculate ngram")
    else:
        most = MODEL_MOST
    most = max(most, wanted.length or 0)
    speculation = Speculation(drafter, Schedule(wanted.length, most))
    speculation.stats.source = wanted.source
    return speculation


def budgeted_lm(loaded: LoadedModel, lm: Any, prompt_ids: list[int], budget: int) -> Any:
    """`lm` ending the model's thinking after `budget` tokens (--thinking-budget); a model
    whose chat template has no thinking block is refused."""
    from chatcli.errors import UsageError
    from chatcli.generation.thinking_budget import BudgetedLM, Tags
    from chatcli.thinking import CLOSE, OPEN, format_of

    tokenizer = loaded.tokenizer
    prompt = tokenizer.decode(prompt_ids[-16:], skip_special_tokens=False)
    fmt = format_of(getattr(tokenizer, "chat_template", None), prompt)
    if fmt is None:
        raise UsageError(f"--thinking-budget: '{loaded.spec.alias}' does not think (its chat "
                         f"template has no {OPEN} block)", "drop --thinking-budget")

    def ids(text: str) -> tuple[int, ...]:
        return tuple(tokenizer(text, add_special_tokens=False)["input_ids"])

    return BudgetedLM(lm, budget, Tags(ids(OPEN), ids(CLOSE), ids(f"\n{CLOSE}\n\n")),
                      fmt.inside)


def constrained_lm(loaded: LoadedModel, constraint: Any) -> Any:
    """`loaded.lm` under `constraint`, compiled for its vocabulary (ConstraintError)."""
    from chatcli.constraints.engine import ConstraintError, compile_constraint
    from chatcli.constraints.masked import ConstrainedLM

    tokenizer_json = loaded.folder / "tokenizer.json" if loaded.folder is not None else None
    if tokenizer_json is None or not tokenizer_json.is_file():
        raise ConstraintError("constrained decoding needs the model's tokenizer.json, which "
                              f"{loaded.folder or 'this model'} lacks",
                              "answer without a constraint")
    compiled = compile_constraint(constraint, str(tokenizer_json), loaded.lm.vocab_size,
                                  frozenset(loaded.eos_ids))
    return ConstrainedLM(loaded.lm, compiled)


def _events(
    loaded: LoadedModel,
    lm: Any,
    prompt_ids: list[int],
    settings: DecodingSettings,
    max_new_tokens: int,
    registry: StrategyRegistry | None,
    gen: Generation,
    candidates: int | None,
    trace_beams: bool,
    speculation: Any = None,
) -> Iterator[StepEvent]:
    strategy = (registry or strategy_registry()).get(settings.strategy)()
    ctx = settings.context(max_new_tokens, loaded.eos_ids, len(prompt_ids), lm.device,
                           loaded.tokenizer.pad_token_id)
    ctx.candidates = candidates
    ctx.trace = trace_beams
    ctx.speculation = speculation
    detok = IncrementalDetokenizer(loaded.tokenizer)
    stops = StopMatcher(settings.common.stop)
    stats = gen.stats
    start = time.perf_counter()
    first = start
    from chatcli.generation.thinking_budget import BudgetedLM

    budget = lm if isinstance(lm, BudgetedLM) else None  # --thinking-budget: it forces
    steps = strategy.decode(lm, prompt_ids, settings.params, ctx)
    chosen: list[int] = []
    for n, step in enumerate(steps, start=1):
        chosen.append(step.token_id)
        now = time.perf_counter()
        if n == 1:
            first = now
            stats.time_to_first_token_s = first - start
        # The figures so far, kept current so that an interrupted answer has them too.
        stats.completion_tokens = n
        stats.total_s = now - start
        stats.decode_tokens_per_s = (n - 1) / (now - first) if n > 1 and now > first else 0.0
        finish = step.finish_reason
        delta = "" if step.token_id in loaded.eos_ids else detok.push(step.token_id)
        if finish is not None:
            delta += detok.flush()
        text, stopped = stops.feed(delta)
        if stopped:
            finish = "stop_string"
        elif finish is not None:
            text += stops.flush()
        if step.hypotheses is not None:
            _found(loaded, gen, step.hypotheses)
        if finish is not None:
            stats.finish_reason = finish
            if gen.constraint is not None:
                answer = gen.search.ranked[0].token_ids if gen.search and gen.search.ranked \
                    else chosen
                gen.constraint_satisfied = finish != "stop_string" and lm.satisfied(answer)
        yield StepEvent(step.token_id, text, step.logprob, finish, step.candidates,
                        forced=budget is not None and budget.forced(n), drafted=step.drafted)
        if finish is not None:
            return


def _found(loaded: LoadedModel, gen: Generation, found: Hypotheses) -> None:
    """A strategy's hypotheses and pruned beams, with their texts, on `gen`."""

    def text(ids: list[int]) -> str:
        return loaded.tokenizer.decode(ids, skip_special_tokens=True)

    gen.search = found
    gen.hypotheses = [
        AnswerHypothesis(text([t for t in h.token_ids if t not in loaded.eos_ids]),
                         list(h.token_ids), h.score, h.logprob, h.finished)
        for h in found.ranked
    ]
    gen.pruned = [PrunedText(b.step, b.score, text(b.token_ids)) for b in found.pruned]


def complete(
    loaded: LoadedModel,
    prompt_ids: list[int],
    settings: DecodingSettings,
    max_new_tokens: int,
) -> Generation:
    """Generate the whole answer; returns the exhausted `Generation`."""
    gen = stream(loaded, prompt_ids, settings, max_new_tokens)
    for _ in gen:
        pass
    return gen
