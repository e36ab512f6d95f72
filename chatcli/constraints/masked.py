"""A language model whose logits only allow what a constraint accepts: every strategy obeys it.

Contract: `ConstrainedLM(lm, compiled)` implements `chatcli.lm.base.LanguageModel` over
`lm`. Each row of the cache has its own `Matcher`: `prefill` starts one, `step(tokens)`
advances each row's matcher by the token fed to it, then returns the model's logits with
every token the row's matcher does not allow set to -inf; `expand` copies the matcher to
the new rows, `reorder` gathers (and forks) them as the rows are gathered, so each beam
hypothesis advances its own. A strategy therefore picks only allowed tokens, whatever it
is (greedy, sampling, beam search, a plugin): the mask is applied to the model's logits,
before the strategy's processors and filters — the same as applying it after the
processors (penalties act token by token and keep -inf), and before temperature, top-k,
top-p, min-p and typical, as llama.cpp and vLLM order them. Beam search ranks
hypotheses by the log-softmax of the masked logits (the constrained distribution,
renormalized over the allowed tokens). An end-of-sequence id is allowed only where the
constraint accepts the text so far.

A row fed a token its matcher does not allow (only a beam whose score is already -inf:
beam search keeps 2N candidates, more than a narrow constraint allows) is dead: its
logits are returned unmasked and its score stays -inf.

`last_unmasked` and `last_allowed` are the model's own logits and the mask of the latest
call (the candidates view: what the constraint removed).

Speculative decoding (one row): `admissible(tokens)` says how many of the pending
token and a draft the constraint allows (the drafted tokens it forbids are dropped before
verification); `extend(ids)` advances the matcher through `ids`, masking each position's
logits with the state after the tokens before it (`rows_unmasked`, `rows_allowed`);
`crop` after it rolls the matcher back with the cache. `satisfied(token_ids)` replays
an answer through a fresh matcher: whether it is complete (a trailing EOS id ignored).

Knows nothing about tokenization, strategies, text or the CLI.
"""

from __future__ import annotations

from typing import Any

from chatcli.constraints.engine import Compiled, Matcher
from chatcli.lm.wrapped import WrappedLM


class ConstrainedLM(WrappedLM):
    def __init__(self, lm: Any, compiled: Compiled) -> None:
        super().__init__(lm)
        self.compiled = compiled
        self.matchers: list[Matcher | None] = []  # None: a dead row
        self.last_unmasked: Any = None
        self.last_allowed: Any = None
        self.rows_unmasked: Any = None
        self.rows_allowed: Any = None
        # the last extend: the positions the cache held before it, and the ids it fed
        self._extended: tuple[int, list[int]] | None = None
        self.length = 0  # positions the cache holds (one row)

    def _masked(self, logits: Any) -> Any:
        import torch

        rows = []
        for matcher in self.matchers:
            if matcher is None:
                rows.append(torch.ones(logits.shape[-1], dtype=torch.bool))
            else:
                rows.append(matcher.allowed())
        allowed = torch.stack(rows).to(logits.device)
        self.last_unmasked, self.last_allowed = logits, allowed
        return logits.masked_fill(~allowed, float("-inf"))

    def prefill(self, ids: list[int], cache: Any = None) -> tuple[Any, Any]:
        self.length = len(ids) if cache is None else self.length + len(ids)
        logits, cache = super().prefill(ids, cache)
        self.matchers = [self.compiled.matcher()]
        return self._masked(logits), cache

    def step(self, tokens: Any, cache: Any) -> tuple[Any, Any]:
        self._extended = None
        self.length += 1
        fed = [int(t) for t in tokens.view(-1).tolist()]
        for i, token in enumerate(fed):
            matcher = self.matchers[i]
            if matcher is None:
                continue
            if token not in self.compiled.eos_ids and not bool(self.last_allowed[i, token]):
                self.matchers[i] = None  # a beam already at -inf
                continue
            matcher.advance(token)
        logits, cache = self.lm.step(tokens, cache)
        return self._masked(logits), cache

    def admissible(self, ids: list[int]) -> int:
        matcher = self.matchers[0]
        return len(ids) if matcher is None else matcher.admissible(ids)

    def extend(self, ids: list[int], cache: Any) -> tuple[Any, Any]:
        import torch

        matcher = self.matchers[0]
        assert matcher is not None and len(self.matchers) == 1
        before = self.length
        logits, cache = self.lm.extend(ids, cache)
        self.length += len(ids)
        masks = []
        for token in ids:
            matcher.advance(token)
            masks.append(matcher.allowed())
        allowed = torch.stack(masks).to(logits.device)
        self._extended = (before, list(ids))
        self.rows_unmasked, self.rows_allowed = logits, allowed
        self.last_unmasked, self.last_allowed = logits[-1:], allowed[-1:]
        return logits.masked_fill(~allowed, float("-inf")), cache

    def crop(self, cache: Any, length: int) -> None:
        if self._extended is not None and self.matchers and self.matchers[0] is not None:
            before, ids = self._extended
            kept = max(length - before, 0)
            self.matchers[0].rollback(sum(t not in self.compiled.eos_ids for t in ids[kept:]))
            if kept:  # what the next token is chosen under: the mask after the last kept
                self.last_unmasked = self.rows_unmasked[kept - 1:kept]
                self.last_allowed = self.rows_allowed[kept - 1:kept]
            self._extended = None
        self.length = length
        self.lm.crop(cache, length)

    def expand(self, cache: Any, rows: int) -> None:
        self.lm.expand(cache, rows)
        self.last_allowed = self.last_allowed[:1].expand(rows, -1)
        first = self.matchers[0]
        self.matchers = [first] + [None if first is None else first.copy()
                                   for _ in range(rows - 1)]

    def reorder(self, cache: Any, rows: Any) -> None:
        self.lm.reorder(cache, rows)
        self.last_allowed = self.last_allowed[rows.to(self.last_allowed.device)]
        taken: set[int] = set()
        gathered: list[Matcher | None] = []
        for i in rows.view(-1).tolist():
            source = self.matchers[int(i)]
            gathered.append(source if source is None or i not in taken else source.copy())
            taken.add(int(i))
        self.matchers = gathered

    def satisfied(self, token_ids: list[int]) -> bool:
        """Whether `token_ids` (an answer) is complete under the constraint."""
        ids = list(token_ids)
        if ids and ids[-1] in self.compiled.eos_ids:
            ids.pop()
        matcher = self.compiled.matcher()
        for token in ids:
            if not bool(matcher.allowed()[token]):
                return False
            matcher.advance(token)
        return matcher.accepting
