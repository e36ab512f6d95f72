"""A language model that ends a reasoning model's thinking after a budget of tokens.

Contract: `BudgetedLM(lm, budget, tags, inside)` implements `chatcli.lm.base.LanguageModel`
over `lm` for one answer row (greedy, sampling: strategies that decode one sequence). It
follows the tokens fed to it: the block opens with `tags.open` (or is open from the start,
`inside`) and closes with `tags.close`, each given as token ids. Once `budget` tokens have
been fed inside an open block, the logits it returns allow only the next token of
`tags.forced` (the close tag as the template spells it, e.g. "\\n</think>\\n\\n"), one after
the other, so whatever the strategy, the model then answers. `hit_at` is the number of
the first forced token in the answer (1-based; None while the budget holds), so the text
stream can mark the tokens chatcli chose.

Knows nothing about text, strategies or the terminal.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from chatcli.lm.wrapped import WrappedLM


@dataclass(frozen=True)
class Tags:
    open: tuple[int, ...]
    close: tuple[int, ...]
    forced: tuple[int, ...]


class BudgetedLM(WrappedLM):
    def __init__(self, lm: Any, budget: int, tags: Tags, inside: bool) -> None:
        super().__init__(lm)
        self.budget, self.tags, self.start_inside = budget, tags, inside
        self.hit_at: int | None = None
        self._reset()

    def _reset(self) -> None:
        self.inside = self.start_inside
        self.opened = self.start_inside
        self.count = 0  # tokens fed inside the block
        self.fed = 0  # tokens fed since the prompt
        self.pending: list[int] = []
        self.tail: list[int] = []

    def forced(self, n: int) -> bool:
        """Whether the answer's `n`-th token (1-based) was one chatcli forced."""
        return self.hit_at is not None and self.hit_at <= n < self.hit_at + len(self.tags.forced)

    def _feed(self, token: int) -> None:
        self.fed += 1
        self.tail = [*self.tail, token][-max(len(self.tags.open), len(self.tags.close)):]
        if self.pending:
            self.pending = self.pending[1:] if token == self.pending[0] else []
        if self.inside:
            self.count += 1
            if tuple(self.tail[-len(self.tags.close):]) == self.tags.close:
                self.inside = False  # what is left of a forced close is still forced
        elif not self.opened and tuple(self.tail[-len(self.tags.open):]) == self.tags.open:
            self.inside = self.opened = True

    def _limit(self, logits: Any) -> Any:
        if self.inside and not self.pending and self.count >= self.budget \
                and self.hit_at is None:
            self.pending = list(self.tags.forced)
            self.hit_at = self.fed + 1
        if not self.pending:
            return logits
        import torch

        only = torch.full_like(logits, float("-inf"))
        only[..., self.pending[0]] = 0.0
        return only

    def prefill(self, ids: list[int], cache: Any = None) -> tuple[Any, Any]:
        logits, cache = super().prefill(ids, cache)
        self._reset()
        self.hit_at = None
        return self._limit(logits), cache

    def step(self, tokens: Any, cache: Any) -> tuple[Any, Any]:
        self._feed(int(tokens.view(-1)[0]))
        logits, cache = self.lm.step(tokens, cache)
        return self._limit(logits), cache
