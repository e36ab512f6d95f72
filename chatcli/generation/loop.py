"""The token loop: prefill once, then one forward step per token.

Contract: `greedy_tokens(lm, prompt_ids, max_new_tokens, eos_ids)` yields
`(token_id, logprob, finish_reason)` for each generated token, choosing the
argmax (ties go to the lowest id, as in `torch.argmax` and transformers'
`generate(do_sample=False)`). The last tuple carries "stop" (an EOS id was
produced; it is yielded too) or "length". No forward pass is run after the last
token. Knows nothing about text.
"""

from __future__ import annotations

from collections.abc import Iterator

from chatcli.lm.base import LanguageModel


def greedy_tokens(
    lm: LanguageModel, prompt_ids: list[int], max_new_tokens: int, eos_ids: frozenset[int]
) -> Iterator[tuple[int, float, str | None]]:
    import torch

    if max_new_tokens <= 0:
        return
    logits, cache = lm.prefill(prompt_ids)
    for i in range(max_new_tokens):
        row = logits[0].float()
        token = int(row.argmax())
        logprob = float(row[token] - row.logsumexp(-1))
        if token in eos_ids:
            yield token, logprob, "stop"
            return
        if i == max_new_tokens - 1:
            yield token, logprob, "length"
            return
        yield token, logprob, None
        logits, cache = lm.step(torch.tensor([token], device=lm.device), cache)
