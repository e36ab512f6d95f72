"""The token-by-token loop shared by greedy and sampling strategies.

Contract: `token_loop(lm, prompt_ids, pick, ctx)` prefills once, then for each
step applies `ctx.processors` (penalties) to the float32 logits, asks `pick` for
the next token, and yields a `TokenStep` with the token's log-probability under
the model's raw distribution. It stops after an EOS id ("stop", yielded too) or at
`ctx.max_new_tokens` ("length"), and runs no forward pass after the last token.

The loop knows nothing about how a token is chosen (that is `pick`), nor about
text.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from chatcli.decoding.base import DecodeContext, TokenStep
from chatcli.lm.base import LanguageModel

Pick = Callable[[Any], int]  # float32 scores (1, vocab) -> token id


def token_loop(
    lm: LanguageModel, prompt_ids: list[int], pick: Pick, ctx: DecodeContext
) -> Iterator[TokenStep]:
    import torch

    if ctx.max_new_tokens <= 0:
        return
    logits, cache = lm.prefill(prompt_ids)
    history = torch.tensor([prompt_ids], device=lm.device) if ctx.processors else None
    last = ctx.max_new_tokens - 1
    for i in range(ctx.max_new_tokens):
        raw = logits.float()
        scores = raw
        for process in ctx.processors:
            scores = process(history, scores)
        token = pick(scores)
        logprob = float(raw[0, token] - torch.logsumexp(raw[0], -1))
        finish = "stop" if token in ctx.eos_ids else ("length" if i == last else None)
        yield TokenStep(token, logprob, finish)
        if finish is not None:
            return
        next_token = torch.tensor([token], device=lm.device)
        if history is not None:
            history = torch.cat([history, next_token.view(1, 1)], dim=1)
        logits, cache = lm.step(next_token, cache)
