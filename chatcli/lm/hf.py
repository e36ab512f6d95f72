"""`LanguageModel` over any transformers causal LM and its `DynamicCache`.

Contract: implements `chatcli.lm.base.LanguageModel`; only the last position is
projected to the vocabulary during prefill (`logits_to_keep=1`, as `generate()`
does). It hides the cache keyword's name, which moved between transformers
releases (`past_key_values` → `cache`). It works for every architecture
transformers supports; `chatcli.lm.llama` is the faster-starting path for the
Llama family.

A prompt longer than `prefill_chunk` tokens (512) is fed in chunks of that size
through the cache, as `generate(prefill_chunk_size=...)` does, so that no tensor grows
with prompt x prompt (the causal mask of a chunk after cached positions) at once; the
last position's logits equal an unchunked prefill's up to float rounding.

`crop(cache, length)` keeps the first `length` positions. transformers 5.x's
`Cache.crop(n)` takes the number of positions to *remove*, as a negative int (a
positive one raises); that is what is called. `can_crop(cache, length)` says
whether that rolls the cache back: not for a sliding-window layer already past its
window, nor a layer that declares itself not croppable (linear attention); the
prompt cache then prefills afresh. Such a cache given to `crop` anyway is rebuilt in
place from the ids fed into it, which this class records for single-row caches, so
cropping is always exact.

Knows nothing about tokenization, decoding strategies or text.
"""

from __future__ import annotations

import contextlib
import inspect
import weakref
from typing import Any


class HFLanguageModel:
    prefill_chunk = 512  # prompt tokens fed at once; 0: the whole prompt at once

    def __init__(self, model: Any) -> None:
        self.model = model
        params = inspect.signature(model.forward).parameters
        self._cache_kw = "cache" if "cache" in params else "past_key_values"
        self._keep_kw = "logits_to_keep" if "logits_to_keep" in params else None
        self.device = next(model.parameters()).device
        self.vocab_size = int(model.config.vocab_size)
        # The ids each single-row cache holds (None once it has several rows).
        self._fed: weakref.WeakKeyDictionary[Any, list[int] | None] = weakref.WeakKeyDictionary()

    def _forward(self, input_ids: Any, cache: Any) -> tuple[Any, Any]:
        import torch

        with torch.inference_mode():
            return self._forward_raw(input_ids, cache)

    def _forward_raw(self, input_ids: Any, cache: Any, keep: int = 1) -> tuple[Any, Any]:
        """The logits (rows, vocab) of the last position, or with `keep` > 1 those of the
        last `keep` positions (rows, keep, vocab)."""
        kwargs: dict[str, Any] = {"use_cache": True, self._cache_kw: cache}
        if self._keep_kw:
            kwargs[self._keep_kw] = keep
        out = self.model(input_ids=input_ids, **kwargs)
        new_cache = getattr(out, "cache", None)
        if new_cache is None:
            new_cache = out.past_key_values
        logits = out.logits[:, -1, :] if keep == 1 else out.logits[:, -keep:, :]
        return logits, new_cache

    def _record(self, cache: Any, before: list[int] | None, ids: list[int] | None) -> None:
        fed = None if before is None or ids is None else before + ids
        with contextlib.suppress(TypeError):  # a cache type without weak references
            self._fed[cache] = fed

    def _feed(self, ids: list[int], cache: Any) -> tuple[Any, Any]:
        """Feed `ids` into `cache` in chunks of `prefill_chunk`: the last one's logits."""
        import torch

        size = self.prefill_chunk if self.prefill_chunk > 0 else len(ids)
        logits = None
        with torch.inference_mode():
            for start in range(0, len(ids), max(size, 1)):
                chunk = [ids[start:start + size]]
                input_ids = torch.tensor(chunk, dtype=torch.long, device=self.device)
                logits, cache = self._forward_raw(input_ids, cache)
        return logits, cache

    def prefill(self, ids: list[int], cache: Any = None) -> tuple[Any, Any]:
        before = [] if cache is None else self._fed.get(cache) if _weak(cache) else None
        logits, new_cache = self._feed(list(ids), cache)
        self._record(new_cache, before, list(ids))
        return logits, new_cache

    def step(self, tokens: Any, cache: Any) -> tuple[Any, Any]:
        before = self._fed.get(cache) if _weak(cache) else None
        logits, new_cache = self._forward(tokens.view(-1, 1), cache)
        single = [int(tokens.reshape(-1)[0])] if tokens.numel() == 1 else None
        self._record(new_cache, before, single)
        return logits, new_cache

    def extend(self, ids: list[int], cache: Any) -> tuple[Any, Any]:
        import torch

        before = self._fed.get(cache) if _weak(cache) else None
        with torch.inference_mode():
            input_ids = torch.tensor([ids], dtype=torch.long, device=self.device)
            logits, new_cache = self._forward_raw(input_ids, cache, keep=len(ids))
        self._record(new_cache, before, list(ids))
        return logits.reshape(len(ids), -1), new_cache

    def expand(self, cache: Any, rows: int) -> None:
        cache.batch_repeat_interleave(rows)
        self._record(cache, None, None)

    def reorder(self, cache: Any, rows: Any) -> None:
        cache.reorder_cache(rows)
        self._record(cache, None, None)

    def can_crop(self, cache: Any, length: int) -> bool:
        return length >= 0 and (length >= int(cache.get_seq_length()) or _can_roll_back(cache))

    def crop(self, cache: Any, length: int) -> None:
        current = int(cache.get_seq_length())
        if length >= current:
            return
        fed = self._fed.get(cache) if _weak(cache) else None
        if _can_roll_back(cache):
            cache.crop(length - current)  # negative: the number of positions to remove
        elif fed is not None and len(fed) == current:
            self._rebuild(cache, fed[:length])
        else:
            raise ValueError(f"this {type(cache).__name__} cannot be cropped to {length} positions")
        if fed is not None:
            self._record(cache, fed[:length], [])

    def _rebuild(self, cache: Any, ids: list[int]) -> None:
        """Refill `cache` in place with exactly `ids` (for caches that cannot roll back)."""
        cache.reset()
        self._feed(ids, cache)


def _weak(cache: Any) -> bool:
    try:
        weakref.ref(cache)
    except TypeError:
        return False
    return True


def _can_roll_back(cache: Any) -> bool:
    """Whether `cache.crop(-n)` restores exactly the state before the last n positions."""
    if not getattr(cache, "is_croppable", True):
        return False
    for layer in getattr(cache, "layers", ()):
        window = getattr(layer, "sliding_window", None)
        if window and layer.get_seq_length() >= window and not getattr(layer, "record_past", False):
            return False
    return True
