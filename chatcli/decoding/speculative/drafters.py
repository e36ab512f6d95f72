"""Who proposes the tokens a round verifies: the text itself, or a smaller model.

Contract: a drafter's `propose(tokens, n, sample)` returns up to `n` token ids that might
follow `tokens` (the prompt, then every token chosen so far); `[]` when it has no guess.
`sample` is the strategy's (distribution, generator) when it samples, else None.
`prepare(prompt_ids)` reads the prompt before the answer starts (a draft model's
prefill: kept out of the first round's time, which would make drafting look dear).

- `NgramDrafter` (prompt lookup): the longest of the last `most`..`least` tokens (4 to
  3) that occurred before (in the prompt or the answer), the latest such place; the
  tokens that followed it there are the draft. (Two-token matches drafted three times
  as many wrong tokens on an answer sampled from open text, for little more right.) An
  index of every n-gram's latest end is kept up to date as tokens come, so a round
  costs a few dictionary look-ups, not a scan.
- `ModelDrafter`: a draft model with the same vocabulary decodes `n` tokens after
  `tokens` (its own prompt cache keeps what it already read: only what is new is fed),
  greedily, or drawn from the strategy's distribution of its logits with the run's
  generator; then `Draft.probs` holds what each token was drawn from (one (vocab,) row
  per token: the accept/resample rule needs them).

Knows nothing about the target model, verification or text.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Draft:
    tokens: list[int]
    probs: list[Any] = field(default_factory=list)  # draft model, sampling: q rows


class NgramDrafter:
    name = "ngram"

    def __init__(self, most: int = 4, least: int = 3) -> None:
        self.most, self.least = most, least
        self.index: dict[tuple[int, ...], int] = {}  # n-gram -> the end of its latest place
        self.indexed = 0  # n-grams ending at positions < indexed are in `index`

    def _catch_up(self, tokens: list[int], upto: int) -> None:
        for end in range(max(self.indexed, 1), upto + 1):
            for n in range(self.least, self.most + 1):
                if end >= n:
                    self.index[tuple(tokens[end - n:end])] = end
        self.indexed = max(self.indexed, upto + 1)

    def prepare(self, prompt_ids: list[int]) -> None:
        """Nothing to read ahead: the index catches up as it is asked."""

    def propose(self, tokens: list[int], n: int, sample: Any = None) -> Draft:
        if n <= 0 or len(tokens) <= self.least:
            return Draft([])
        if self.indexed > len(tokens):  # a different text (a new answer): start again
            self.index, self.indexed = {}, 0
        self._catch_up(tokens, len(tokens) - 1)  # every place but the end itself
        for size in range(min(self.most, len(tokens) - 1), self.least - 1, -1):
            end = self.index.get(tuple(tokens[-size:]))
            if end is not None:
                return Draft(tokens[end:end + n])
        return Draft([])


class ModelDrafter:
    def __init__(self, lm: Any, name: str) -> None:
        """`lm`: the draft model (a `chatcli.generation.prompt_cache.PromptCache`, so that
        it reads only what is new); `name`: its alias."""
        self.lm = lm
        self.name = name

    def prepare(self, prompt_ids: list[int]) -> None:
        self.lm.prefill(prompt_ids)

    def propose(self, tokens: list[int], n: int,
                sample: tuple[Callable[[Any], Any], Any] | None = None) -> Draft:
        import torch

        from chatcli.decoding.sampling import draw

        if n <= 0:
            return Draft([])
        logits, cache = self.lm.prefill(tokens)
        out = Draft([])
        for i in range(n):
            scores = logits.float()
            if sample is None:
                token = int(scores[0].argmax())
            else:
                distribution, generator = sample
                probs = distribution(scores)[0]
                token = draw(probs, generator)
                out.probs.append(probs)
            out.tokens.append(token)
            if i < n - 1:
                logits, cache = self.lm.step(torch.tensor([token], device=self.lm.device),
                                             cache)
        return out
