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
call (the candidates view: what the constraint removed). `satisfied(token_ids)` replays
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
        logits, cache = super().prefill(ids, cache)
        self.matchers = [self.compiled.matcher()]
        return self._masked(logits), cache

    def step(self, tokens: Any, cache: Any) -> tuple[Any, Any]:
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
