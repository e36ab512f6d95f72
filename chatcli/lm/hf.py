"""`LanguageModel` over any transformers causal LM and its `DynamicCache`.

Contract: implements `chatcli.lm.base.LanguageModel`; only the last position is
projected to the vocabulary during prefill (`logits_to_keep=1`, as `generate()`
does). It hides the cache keyword's name, which moved between transformers
releases (`past_key_values` → `cache`). It works for every architecture
transformers supports; `chatcli.lm.llama` is the faster-starting path for the
Llama family.

Knows nothing about tokenization, decoding strategies or text.
"""

from __future__ import annotations

import inspect
from typing import Any


class HFLanguageModel:
    def __init__(self, model: Any) -> None:
        self.model = model
        params = inspect.signature(model.forward).parameters
        self._cache_kw = "cache" if "cache" in params else "past_key_values"
        self._keep_kw = "logits_to_keep" if "logits_to_keep" in params else None
        self.device = next(model.parameters()).device
        self.vocab_size = int(model.config.vocab_size)

    def _forward(self, input_ids: Any, cache: Any) -> tuple[Any, Any]:
        import torch

        with torch.inference_mode():
            return self._forward_raw(input_ids, cache)

    def _forward_raw(self, input_ids: Any, cache: Any) -> tuple[Any, Any]:
        kwargs: dict[str, Any] = {"use_cache": True, self._cache_kw: cache}
        if self._keep_kw:
            kwargs[self._keep_kw] = 1
        out = self.model(input_ids=input_ids, **kwargs)
        new_cache = getattr(out, "cache", None)
        if new_cache is None:
            new_cache = out.past_key_values
        return out.logits[:, -1, :], new_cache

    def prefill(self, ids: list[int], cache: Any = None) -> tuple[Any, Any]:
        import torch

        input_ids = torch.tensor([ids], dtype=torch.long, device=self.device)
        return self._forward(input_ids, cache)

    def step(self, tokens: Any, cache: Any) -> tuple[Any, Any]:
        return self._forward(tokens.view(-1, 1), cache)

    def expand(self, cache: Any, rows: int) -> None:
        cache.batch_repeat_interleave(rows)

    def reorder(self, cache: Any, rows: Any) -> None:
        cache.reorder_cache(rows)

    def crop(self, cache: Any, length: int) -> None:
        cache.crop(length)
