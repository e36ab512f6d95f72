"""The interface every model implementation offers to the decoding loops.

Contract: `prefill(ids, cache)` feeds a prompt (or the new suffix of one, after a
cached prefix) and returns the logits of its last position, shape (1, vocab), with
the cache; `step(tokens, cache)` feeds one token per row and returns (rows, vocab)
logits; `expand`, `reorder` and `crop` reshape a cache in place for beam search and
prompt-cache reuse. Logits come back in the model's dtype.

Implementations know nothing about tokenization, decoding strategies or text.
"""

from __future__ import annotations

from typing import Any, Protocol


class LanguageModel(Protocol):
    device: Any  # torch.device
    vocab_size: int

    def prefill(self, ids: list[int], cache: Any = None) -> tuple[Any, Any]: ...
    def step(self, tokens: Any, cache: Any) -> tuple[Any, Any]: ...
    def expand(self, cache: Any, rows: int) -> None: ...
    def reorder(self, cache: Any, rows: Any) -> None: ...
    def crop(self, cache: Any, length: int) -> None: ...
