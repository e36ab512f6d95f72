"""KV-cache reuse across turns: prefill only what changed since the last prompt.

Contract: `PromptCache(lm)` is a `LanguageModel` that wraps another one and
remembers which token ids its last single-row cache holds (the previous packed
prompt plus the reply tokens fed back while generating). `prefill(ids)` finds the
longest common prefix with them, crops the cache to it and feeds only the new
suffix; when nothing is shared (packing dropped a turn, a new system prompt), or when
the model declares that its cache cannot be cropped to that prefix
(`LanguageModel.can_crop`: e.g. a sliding-window layer past its window), it prefills
the whole prompt into a new cache instead. Beam search (several rows) or
`invalidate()` (after an interrupted answer) discards the cache. `reused` says how
many prompt tokens were skipped last time.

Exactness: the logits of the last prompt position are kept with the cache. A
prompt equal to the one last prefilled (`/retry`; `/undo` and the same message)
feeds nothing: the cache is cropped back to it and those logits are returned, so
the answer repeats the earlier one bit for bit. Otherwise the suffix is prefilled
over the cached prefix: the same math as a full prefill, but other matmul shapes
and an explicit attention mask, so in bf16 (or quantized) the logits can differ in
their last bits from a cold prefill and a near-tied greedy choice can flip
(docs/benchmarks.md, "Chat", measures how often).

Knows nothing about conversations, text or decoding strategies.
"""

from __future__ import annotations

from typing import Any

from chatcli.lm.base import LanguageModel, can_crop


class PromptCache:
    def __init__(self, lm: LanguageModel) -> None:
        self.lm = lm
        self.device = lm.device
        self.vocab_size = lm.vocab_size
        self.ids: list[int] = []
        self.cache: Any = None
        self.reused = 0
        self.logits: Any = None  # the last prefill's logits (a copy), for ids[:prompt_length]
        self.prompt_length = 0

    def invalidate(self) -> None:
        self.ids, self.cache, self.logits = [], None, None

    def prefill(self, ids: list[int], cache: Any = None) -> tuple[Any, Any]:
        if (cache is None and self.cache is not None and self.logits is not None
                and len(ids) == self.prompt_length and self.ids[:len(ids)] == ids
                and can_crop(self.lm, self.cache, len(ids))):
            self.lm.crop(self.cache, len(ids))
            self.ids, self.reused = list(ids), len(ids)
            return self.logits.clone(), self.cache
        shared = 0
        if self.cache is not None and cache is None:
            limit = min(len(self.ids), len(ids) - 1)  # feed at least one token
            while shared < limit and self.ids[shared] == ids[shared]:
                shared += 1
            if shared and not can_crop(self.lm, self.cache, shared):
                shared = 0
                self.invalidate()  # a full prefill into a new cache; this one is let go first
        if shared > 0:
            self.lm.crop(self.cache, shared)
            logits, new_cache = self.lm.prefill(ids[shared:], self.cache)
        else:
            logits, new_cache = self.lm.prefill(ids, cache)
        self.reused = shared
        self.cache, self.ids = new_cache, list(ids)
        # a copy: decoding may edit its scores in place
        self.logits, self.prompt_length = logits.clone(), len(ids)
        return logits, new_cache

    def step(self, tokens: Any, cache: Any) -> tuple[Any, Any]:
        if cache is self.cache and tokens.numel() == 1:
            self.ids.append(int(tokens.reshape(-1)[0]))
        else:
            self.invalidate()
        logits, new_cache = self.lm.step(tokens, cache)
        if self.cache is not None:
            self.cache = new_cache
        return logits, new_cache

    def extend(self, ids: list[int], cache: Any) -> tuple[Any, Any]:
        if cache is self.cache:
            self.ids.extend(ids)
        else:
            self.invalidate()
        logits, new_cache = self.lm.extend(ids, cache)
        if self.cache is not None:
            self.cache = new_cache
        return logits, new_cache

    def expand(self, cache: Any, rows: int) -> None:
        self.invalidate()
        self.lm.expand(cache, rows)

    def reorder(self, cache: Any, rows: Any) -> None:
        self.invalidate()
        self.lm.reorder(cache, rows)

    def can_crop(self, cache: Any, length: int) -> bool:
        return can_crop(self.lm, cache, length)

    def crop(self, cache: Any, length: int) -> None:
        self.lm.crop(cache, length)
        if cache is self.cache:
            self.ids = self.ids[:length]
            if length < self.prompt_length:
                self.logits = None
