"""`LanguageModel` over chatcli's own forward pass (`chatcli.lm.llama`, every
architecture of `chatcli.lm.models`).

Contract: implements `chatcli.lm.base.LanguageModel` with `NativeCausalLM` and its
`KVCache`; logits are bit-identical to transformers' on CPU (a prompt of more than
`NativeCausalLM.prefill_chunk` tokens: to transformers' prefill in chunks of that
size), and nothing from transformers is imported, so a model answers about two
seconds sooner. Its caches crop exactly to any length, except where a sliding-window
layer has dropped positions the next step would attend to (`can_crop` says so, from
`KVCache.can_crop`; the prompt cache then prefills afresh).
Knows nothing about tokenization, decoding strategies or text.
"""

from __future__ import annotations

from typing import Any

import torch

from chatcli.lm.llama import KVCache, NativeCausalLM


class NativeLanguageModel:
    def __init__(self, model: NativeCausalLM) -> None:
        self.model = model
        self.device = model.device
        self.vocab_size = model.vocab_size

    def prefill(self, ids: list[int], cache: KVCache | None = None) -> tuple[Any, KVCache]:
        input_ids = torch.tensor([ids], dtype=torch.long, device=self.device)
        logits, cache = self.model.forward(input_ids, cache, logits_to_keep=1)
        return logits[:, -1, :], cache

    def step(self, tokens: Any, cache: KVCache) -> tuple[Any, KVCache]:
        logits, cache = self.model.forward(tokens.view(-1, 1), cache, logits_to_keep=1)
        return logits[:, -1, :], cache

    def extend(self, ids: list[int], cache: KVCache) -> tuple[Any, KVCache]:
        input_ids = torch.tensor([ids], dtype=torch.long, device=self.device)
        logits, cache = self.model.forward(input_ids, cache, logits_to_keep=len(ids))
        return logits[0], cache

    def expand(self, cache: KVCache, rows: int) -> None:
        cache.expand(rows)

    def reorder(self, cache: KVCache, rows: Any) -> None:
        cache.reorder(rows)

    def crop(self, cache: KVCache, length: int) -> None:
        cache.crop(length)

    def can_crop(self, cache: KVCache, length: int) -> bool:
        return cache.can_crop(length)
