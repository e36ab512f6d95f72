"""A language model over another: the seam for wrappers that change what the model says.

Contract: `WrappedLM(lm)` is a `chatcli.lm.base.LanguageModel` that hands every call to
`lm` (its `device` and `vocab_size`, `prefill`, `step`, `expand`, `reorder`, `crop`,
`can_crop`); a subclass overrides what it changes, e.g. masking the logits to what a
constraint allows (`chatcli.constraints.masked.ConstrainedLM`) or forcing a prefix
(`chatcli.alternatives.ForcedLM`).

Knows nothing about what its subclasses do, tokens or text; imports no torch.
"""

from __future__ import annotations

from typing import Any

from chatcli.lm.base import can_crop


class WrappedLM:
    def __init__(self, lm: Any) -> None:
        self.lm = lm
        self.device = lm.device
        self.vocab_size = lm.vocab_size

    def prefill(self, ids: list[int], cache: Any = None) -> tuple[Any, Any]:
        return self.lm.prefill(ids) if cache is None else self.lm.prefill(ids, cache)

    def step(self, tokens: Any, cache: Any) -> tuple[Any, Any]:
        return self.lm.step(tokens, cache)

    def expand(self, cache: Any, rows: int) -> None:
        self.lm.expand(cache, rows)

    def reorder(self, cache: Any, rows: Any) -> None:
        self.lm.reorder(cache, rows)

    def crop(self, cache: Any, length: int) -> None:
        self.lm.crop(cache, length)

    def can_crop(self, cache: Any, length: int) -> bool:
        return can_crop(self.lm, cache, length)
