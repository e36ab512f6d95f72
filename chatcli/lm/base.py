"""The interface every model implementation offers to the decoding loops.

Contract: `prefill(ids, cache)` feeds a prompt (or the new suffix of one, after a
cached prefix) and returns the logits of its last position, shape (1, vocab), with
the cache; `step(tokens, cache)` feeds one token per row and returns (rows, vocab)
logits; `expand`, `reorder` and `crop` reshape a cache in place for beam search and
prompt-cache reuse. Logits come back in the model's dtype.

`extend(ids, cache)` (optional: `can_extend(lm)` says whether a model has it) feeds
several tokens after what `cache` holds in one forward pass and returns the logits of
every one of them, shape (len(ids), vocab): the logits row i is what `step` would have
returned after feeding ids[:i+1] one by one (the same maths, other matmul shapes: equal
up to rounding). Speculative decoding verifies a draft with it and crops the cache
back to what it accepted.

`can_crop(cache, length)` declares whether `crop(cache, length)` rolls the cache back
exactly by dropping positions, without recomputing anything: chatcli's own caches
can, unless a sliding-window layer has already dropped positions the next step would
attend to (`KVCache.can_crop`); a transformers cache holding a sliding-window layer
past its window, or a recurrent layer, cannot. The prompt cache asks before reusing a
cached prefix and prefills the whole prompt afresh where the answer is no. A model
that does not declare `can_crop` is taken to crop exactly (`can_crop` below).

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
    def can_crop(self, cache: Any, length: int) -> bool: ...


def can_extend(lm: Any) -> bool:
    """Whether `lm` (or every model it wraps) feeds several tokens at once (`extend`)."""
    return callable(getattr(lm, "extend", None))


def can_crop(lm: Any, cache: Any, length: int) -> bool:
    """`lm.can_crop(cache, length)`, or True for a model that does not declare it."""
    declared = getattr(lm, "can_crop", None)
    return True if declared is None else bool(declared(cache, length))
