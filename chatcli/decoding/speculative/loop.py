"""The speculative token loop: draft, verify in one forward pass, keep what the strategy
would have chosen.

Contract: `speculative_loop(lm, prompt_ids, pick, ctx, distribution, speculation)` yields
the same `TokenStep`s as `chatcli.decoding.loop.token_loop` (penalties applied to each
position's scores, candidates when asked, EOS and the token limit end it), with
`drafted=True` on a drafted token the target accepted. Each round: the drafter proposes
up to `Schedule.length()` tokens after the text so far and the pending token `t` (chosen,
not yet fed); a constrained model drops the drafted tokens its constraint forbids
(`admissible`); `lm.extend([t, d1..dk])` returns the logits after each of them; then
position by position:

- the strategy's `pick` chooses from the position's scores; the draft token is accepted
  when it is what was chosen (the rule for greedy, and for a drafter that gives no
  probabilities: exact in distribution for any sampler, since every emitted token is
  drawn from the target's conditional);
- with the drafter's probabilities q and the strategy's `distribution` p (a draft model
  and sampling), the standard rule instead: accept d with probability min(1, p(d)/q(d)),
  else draw from max(0, p - q) renormalised; the emitted tokens are distributed as the
  target's (Leviathan et al., 2023), and the run's seeded generator makes it repeatable;
- at the first rejection the chosen token ends the round and the cache is cropped back
  to the accepted tokens; when all are accepted, the last position gives one more.

A round with nothing drafted is a plain `lm.step`. In float32 the verification's logits
equal single steps' up to rounding (other matmul shapes): greedy answers are the plain
ones but at near ties. Times of plain steps and of rounds go to `speculation.stats`
(`chatcli.decoding.speculative.figures.SpeculationStats`), as the figures for the speed-up estimate.

Knows nothing about text, how drafts are made or the terminal.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from chatcli.decoding.base import DecodeContext, TokenStep
from chatcli.decoding.speculative.figures import SpeculationStats
from chatcli.decoding.speculative.schedule import Schedule


@dataclass
class Speculation:
    """What `--speculate` gives the loop: a drafter, its schedule and the figures."""

    drafter: Any  # chatcli.decoding.speculative.drafters: prepare(ids), propose(...)
    schedule: Schedule
    stats: SpeculationStats = field(default_factory=SpeculationStats)


def speculative_loop(
    lm: Any,
    prompt_ids: list[int],
    pick: Callable[[Any], int],
    ctx: DecodeContext,
    distribution: Callable[[Any], Any] | None,
    speculation: Speculation,
) -> Iterator[TokenStep]:
    import torch

    from chatcli.decoding.loop import candidates
    from chatcli.decoding.sampling import draw

    stats = speculation.stats
    schedule = speculation.schedule
    if ctx.max_new_tokens <= 0:
        return
    logits, cache = lm.prefill(prompt_ids)
    started = time.perf_counter()  # counted in the figures, not in any round's time
    speculation.drafter.prepare(prompt_ids)
    stats.verify_s += time.perf_counter() - started
    tokens = list(prompt_ids)
    constrained = hasattr(lm, "last_unmasked")
    emitted = 0
    last = ctx.max_new_tokens
    sample = None if distribution is None else (distribution, ctx.generator)

    def scored(row: Any, ahead: list[int] = ()) -> Any:  # type: ignore[assignment]
        """A position's scores after the penalties, its history the text so far and the
        drafted tokens `ahead` of it."""
        scores = row.float().view(1, -1)
        if ctx.processors:
            seen = torch.tensor([[*tokens, *ahead]], device=lm.device)
            for process in ctx.processors:
                scores = process(seen, scores)
        return scores

    def step_of(token: int, raw: Any, scores: Any, allowed: Any, drafted: bool) -> TokenStep:
        nonlocal emitted
        emitted += 1
        logprob = float(raw[0, token] - torch.logsumexp(raw[0], -1))
        finish = "stop" if token in ctx.eos_ids else ("length" if emitted == last else None)
        seen = None
        if ctx.candidates is not None:
            drawn = distribution(scores) if distribution else torch.softmax(scores, -1)
            seen = candidates(raw, drawn, token, ctx.candidates, allowed)
        tokens.append(token)
        return TokenStep(token, logprob, finish, seen, drafted=drafted)

    # the first token: from the prompt's logits
    raw = (lm.last_unmasked if constrained else logits).float()
    scores = scored(logits)
    token = pick(scores)
    allowed = lm.last_allowed[0] if constrained else None
    step = step_of(token, raw, scores, allowed, False)
    yield step
    if step.finish_reason is not None:
        return
    pending = token  # chosen, not yet fed to the model
    while True:
        room = last - emitted  # tokens still to emit, the pending one's successors
        want = min(schedule.length(), room - 1)
        started = time.perf_counter()
        draft = speculation.drafter.propose(tokens, want, sample) if want > 0 else None
        drafted = _usable(draft.tokens if draft else [], ctx.eos_ids)
        if drafted and constrained:
            drafted = drafted[:lm.admissible([pending, *drafted]) - 1]
        if not drafted:
            logits, cache = lm.step(torch.tensor([pending], device=lm.device), cache)
            raw = (lm.last_unmasked if constrained else logits).float()
            scores = scored(logits)
            pending = pick(scores)
            spent = time.perf_counter() - started
            stats.plain_steps += 1
            stats.plain_s += spent
            schedule.plain(spent)
            step = step_of(pending, raw, scores, lm.last_allowed[0] if constrained else None,
                           False)
            yield step
            if step.finish_reason is not None:
                return
            continue
        base = len(tokens) - 1  # the cache holds everything before the pending token
        rows, cache = lm.extend([pending, *drafted], cache)
        stats.rounds += 1
        stats.drafted += len(drafted)
        raws = (lm.rows_unmasked if constrained else rows).float()
        masks = lm.rows_allowed if constrained else None
        q = draft.probs if draft is not None and draft.probs else None
        accepted = 0
        chosen: int | None = None
        outcome: list[tuple[int, Any, Any, Any, bool]] = []
        for i, d in enumerate(drafted):
            scores = scored(rows[i], drafted[:i])
            if q is not None and distribution is not None:
                p = distribution(scores)[0]
                p_d, q_d = float(p[d]), float(q[i][d])
                u = float(torch.rand((1,), generator=ctx.generator, dtype=torch.float64))
                ok = q_d > 0 and u * q_d < p_d
                if not ok:
                    residual = (p - q[i].to(p.dtype)).clamp_min(0)
                    chosen = draw(residual if float(residual.sum()) > 0 else p, ctx.generator)
            else:
                chosen = pick(scores)
                ok = chosen == d
            mask = masks[i] if masks is not None else None
            outcome.append((d if ok else int(chosen), raws[i:i + 1], scores, mask, ok))  # type: ignore[arg-type]
            if not ok:
                break
            accepted += 1
        if accepted == len(drafted):  # every draft taken: the last position gives one more
            k = len(drafted)
            scores = scored(rows[k], drafted)
            outcome.append((pick(scores), raws[k:k + 1], scores,
                            masks[k] if masks is not None else None, False))
        else:
            lm.crop(cache, base + 1 + accepted)
        spent = time.perf_counter() - started
        stats.accepted += accepted
        stats.verify_s += spent
        schedule.verified(len(drafted), accepted, spent)
        for token, raw, scores, allowed, was_drafted in outcome:
            step = step_of(token, raw, scores, allowed, was_drafted)
            yield step
            if step.finish_reason is not None:
                return
        pending = outcome[-1][0]


def _usable(drafted: list[int], eos_ids: frozenset[int]) -> list[int]:
    """The draft up to and with its first EOS id (nothing follows the end)."""
    for i, token in enumerate(drafted):
        if token in eos_ids:
            return drafted[:i + 1]
    return list(drafted)
