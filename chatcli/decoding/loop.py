"""The token-by-token loop shared by greedy and sampling strategies.

Contract: `token_loop(lm, prompt_ids, pick, ctx)` prefills once, then for each
step applies `ctx.processors` (penalties) to the float32 logits, asks `pick` for
the next token, and yields a `TokenStep` with the token's log-probability under
the model's raw distribution (over a `chatcli.constraints.masked.ConstrainedLM`, whose
logits are masked: its `last_unmasked` logits, the model's own, with its mask for the
candidates view). It stops after an EOS id ("stop", yielded too) or at
`ctx.max_new_tokens` ("length"), and runs no forward pass after the last token.

With `ctx.speculation` (--speculate) the loop is `chatcli.decoding.speculative.loop`'s instead:
the same steps, drafted and verified several at a time.

The loop knows nothing about how a token is chosen (that is `pick`), nor about
text.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from chatcli.decoding.base import Candidates, DecodeContext, TokenStep
from chatcli.lm.base import LanguageModel

Pick = Callable[[Any], int]  # float32 scores (1, vocab) -> token id
Distribution = Callable[[Any], Any]  # float32 scores (1, vocab) -> probabilities (1, vocab)


def candidates(raw: Any, drawn: Any, token: int, k: int, allowed: Any = None) -> Candidates:
    """Top-k of the model's distribution and of the one the token was drawn from; with
    `allowed` (a constraint's mask of the row), which of the model's top-k it removed and
    the probability of everything it removed."""
    import torch

    logp = torch.log_softmax(raw[0], -1)
    p = logp.exp()
    entropy = float(-(p * logp.nan_to_num(neginf=0.0)).sum())
    k = min(k, p.shape[-1])

    def top(probs: Any) -> list[tuple[int, float]]:
        if k == 0:
            return []
        values, ids = torch.topk(probs, k)
        return [(int(i), float(v)) for i, v in zip(ids, values, strict=True)]

    model_top = top(p)
    if allowed is None:
        return Candidates(model_top, top(drawn[0]), entropy, float(drawn[0, token]))
    allowed = allowed.to(p.device)
    removed = tuple(i for i, _ in model_top if not bool(allowed[i]))
    mass = float(p.masked_fill(allowed, 0.0).sum())
    # what the strategy could draw from: never a token the constraint removed (p = 0)
    drawn_top = [(i, v) for i, v in top(drawn[0]) if v > 0.0]
    return Candidates(model_top, drawn_top, entropy, float(drawn[0, token]), removed, mass)


def token_loop(
    lm: LanguageModel,
    prompt_ids: list[int],
    pick: Pick,
    ctx: DecodeContext,
    distribution: Distribution | None = None,
) -> Iterator[TokenStep]:
    """`distribution` gives what `pick` draws from, for `ctx.candidates` (default: the
    softmax of the processed scores)."""
    import torch

    if ctx.speculation is not None:
        from chatcli.decoding.speculative.loop import speculative_loop

        yield from speculative_loop(lm, prompt_ids, pick, ctx, distribution, ctx.speculation)
        return
    if ctx.max_new_tokens <= 0:
        return
    logits, cache = lm.prefill(prompt_ids)
    history = torch.tensor([prompt_ids], device=lm.device) if ctx.processors else None
    last = ctx.max_new_tokens - 1
    constrained = hasattr(lm, "last_unmasked")  # a ConstrainedLM: masked logits
    for i in range(ctx.max_new_tokens):
        scores = logits.float()
        # the model's own distribution: what log-probabilities and the views report
        raw = lm.last_unmasked.float() if constrained else scores  # type: ignore[attr-defined]
        for process in ctx.processors:
            scores = process(history, scores)
        token = pick(scores)
        logprob = float(raw[0, token] - torch.logsumexp(raw[0], -1))
        finish = "stop" if token in ctx.eos_ids else ("length" if i == last else None)
        seen = None
        if ctx.candidates is not None:
            drawn = distribution(scores) if distribution else torch.softmax(scores, -1)
            allowed = lm.last_allowed[0] if constrained else None  # type: ignore[attr-defined]
            seen = candidates(raw, drawn, token, ctx.candidates, allowed)
        yield TokenStep(token, logprob, finish, seen)
        if finish is not None:
            return
        next_token = torch.tensor([token], device=lm.device)
        if history is not None:
            history = torch.cat([history, next_token.view(1, 1)], dim=1)
        logits, cache = lm.step(next_token, cache)
