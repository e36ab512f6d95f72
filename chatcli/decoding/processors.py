"""Logit processors: penalties that look at the tokens seen so far.

Contract
--------
A processor has transformers' ``LogitsProcessor`` call signature::

    processor(input_ids, scores) -> new_scores

``input_ids`` is a LongTensor ``(rows, seq_len)``: the prompt followed by the
tokens generated so far. ``scores`` is the float32 ``(rows, vocab)`` logits for
the next token. A processor is pure: it returns a new tensor and modifies neither
argument. Ids ``>= vocab`` in ``input_ids`` (an embedding table larger than the
output layer) are ignored, as transformers does.

The factories build processors from their parameters; `compose` chains them in
the given order. In transformers' ``generate()`` the penalties run before the
sampling filters (`chatcli.decoding.filters`), repetition penalty before the
n-gram ban; the strategy applies ``ctx.processors`` first, then its own filter.

- `repetition_penalty`: ``RepetitionPenaltyLogitsProcessor`` over prompt +
  generated tokens, bit for bit;
- `no_repeat_ngram`: ``NoRepeatNGramLogitsProcessor``, bit for bit;
- `frequency_presence_penalty`: OpenAI's frequency/presence penalties over the
  generated tokens only (transformers has no equivalent).

Parameters are not validated here (the parameter classes do that); docstrings
state the valid ranges. Each processor is vectorised over the vocabulary, cheap
for one decode step on a ~50k vocabulary. Knows nothing about models,
tokenizers, text or the CLI; ``torch`` is imported lazily.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import Tensor

Processor = Callable[["Tensor", "Tensor"], "Tensor"]


def _seen_mask(input_ids: Tensor, scores: Tensor) -> Tensor:
    """(rows, vocab) bool: which tokens occur in each row of `input_ids`."""
    import torch

    rows, vocab = scores.shape
    mask = torch.zeros((rows, vocab + 1), dtype=torch.bool, device=scores.device)
    # ids past the output vocabulary land in a spare column that is dropped
    mask.scatter_(1, input_ids.clamp(max=vocab), True)
    return mask[:, :vocab]


def repetition_penalty(penalty: float) -> Processor:
    """Penalise every token that occurs in ``input_ids`` (prompt and generated).

    Valid: ``penalty > 0``; 1.0 is no penalty, > 1 discourages repeats, < 1
    encourages them. A seen token's logit is divided by `penalty` if it is >= 0
    and multiplied by it if it is < 0, once however often it occurs. Identical to
    ``RepetitionPenaltyLogitsProcessor(penalty)`` (without ``prompt_ignore_length``).
    """

    def apply(input_ids: Tensor, scores: Tensor) -> Tensor:
        import torch

        seen = _seen_mask(input_ids, scores)
        penalised = torch.where(scores < 0, scores * penalty, scores / penalty)
        return torch.where(seen, penalised, scores)

    return apply


def no_repeat_ngram(size: int) -> Processor:
    """Ban every token that would repeat an n-gram of `size` tokens already in ``input_ids``.

    Valid: ``size >= 1`` (1 bans every token seen). Banned tokens get ``-inf``.
    Identical to ``NoRepeatNGramLogitsProcessor(size)``, and uses its algorithm:
    the last ``size - 1`` tokens are compared against every window of the
    sequence at once (O(seq_len * size), vectorised; no dictionary of n-grams).
    """

    def apply(input_ids: Tensor, scores: Tensor) -> Tensor:
        import torch

        cur_len = input_ids.shape[-1]
        if cur_len < size:  # no complete n-gram yet
            return scores.clone()
        prefix = input_ids[:, cur_len + 1 - size :]  # what the next token would extend
        windows = input_ids.unfold(dimension=1, size=size, step=1)
        matches = (windows[..., :-1] == prefix.unsqueeze(1)).all(dim=-1)
        rows, vocab = scores.shape
        banned = torch.zeros((rows, vocab + 1), dtype=torch.bool, device=scores.device)
        # non-matching windows (and ids past the vocabulary) go to the spare column
        targets = torch.where(matches, windows[..., -1].clamp(max=vocab), vocab)
        banned.scatter_(1, targets, True)
        return scores.masked_fill(banned[:, :vocab], float("-inf"))

    return apply


def frequency_presence_penalty(frequency: float, presence: float, prompt_len: int) -> Processor:
    """OpenAI-style penalties over the generated tokens, ``input_ids[:, prompt_len:]``.

    For each token t generated c > 0 times so far::

        scores[t] -= frequency * c + presence

    (float32 arithmetic, in that order); tokens not generated yet, and the
    prompt, are left alone. Valid (OpenAI's range): ``-2 <= frequency, presence
    <= 2``; 0 and 0 is no penalty. ``prompt_len >= 0``.
    """

    def apply(input_ids: Tensor, scores: Tensor) -> Tensor:
        import torch

        rows, vocab = scores.shape
        generated = input_ids[:, prompt_len:].clamp(max=vocab)
        counts = torch.zeros((rows, vocab + 1), dtype=scores.dtype, device=scores.device)
        counts.scatter_add_(1, generated, torch.ones_like(generated, dtype=scores.dtype))
        counts = counts[:, :vocab]
        penalty = counts * frequency + presence
        return torch.where(counts > 0, scores - penalty, scores)

    return apply


def compose(processors: Sequence[Processor]) -> Processor:
    """One processor that applies `processors` in order (a copy when empty)."""
    chain = tuple(processors)

    def apply(input_ids: Tensor, scores: Tensor) -> Tensor:
        if not chain:
            return scores.clone()
        for process in chain:
            scores = process(input_ids, scores)
        return scores

    return apply
