"""The road not taken: where the model was unsure in an answer, and where another token leads.

Contract
--------
Steps are counted from 1, as users count them: step 1 is the answer's first token. So
"step S" of an answer `answer_ids` is `answer_ids[S - 1]`, and "the alternative at step S
with rank R" keeps the answer's first S - 1 tokens (`answer_ids[:S - 1]`), puts the token
the model ranked R-th at step S in their place of `answer_ids[S - 1]`, and continues from
there with the answer's own strategy, settings and seed. (The issue's wording "keeping its
first STEP tokens, forcing ... at that step" counts steps from 0; chatcli's STEP is that
number plus one.) Ranks are counted from 1: rank 1 is the model's most likely token.

- `distributions(lm, prompt_ids, answer_ids, k)`: one teacher-forced pass (prefill the
  prompt, then feed the answer one token per `step`, so it works over every
  `LanguageModel`) and, per step, a `StepView`: entropy (nats), the top-k (id,
  probability), the margin between the top two probabilities, the answer's token with its
  rank and probability. `least_sure(views, n)`: the n views of highest entropy (ties: the
  smaller margin first, then the earlier step), returned in step order.
- `alternative(lm, prompt_ids, answer_ids, step, rank, settings=None)`: the same teacher-
  forced pass up to STEP, and the `Alternative` it defines: `forced`, the token ids to
  force (`answer_ids[:step - 1] + [the rank-th token]`). Bad arguments raise `UsageError`
  naming STEP or RANK and the valid range. With `settings` it refuses strategies that are
  not token by token (beam search) and a token the answer's own penalties ban there
  (`--no-repeat-ngram-size`), before anything is generated. RANK equal to the answer's own
  token's rank is allowed: it forces the answer's own token, so the original answer comes
  back (`Alternative.same`).
- `ForcedLM(lm, forced)`: a `LanguageModel` whose first len(forced) calls (the prefill,
  then each `step`) return the model's logits with every token but the forced one at
  -inf; after them, the model's own logits. Every token-by-token strategy then picks the
  forced token: greedy (argmax), sampling (the filters keep a row's only finite token),
  plugins. `chatcli.decoding.sampling.draw` draws exactly one uniform number per step
  whatever the distribution (one `torch.rand` call), and from a one-hot distribution it
  returns the only token with mass, so a seeded sampled run over `ForcedLM` consumes the
  generator as the original run did: the steps after the forced ones use the same random
  numbers as the original answer's steps at the same positions (a plugin that draws a
  fixed number of random numbers per step keeps this too). Hence forcing the answer's
  own tokens gives the answer back, token for token, for greedy and seeded sampling.
  Like `ConstrainedLM`, it exposes `last_unmasked` (the wrapped model's own logits; a
  wrapped `ConstrainedLM`'s own `last_unmasked`) and `last_allowed` (False for the tokens
  the forcing removed), so `token_loop` reports each forced token's log-probability under
  the model's raw distribution, and the candidates view shows what the forcing removed.
  A fed token other than the forced one (a processor or plugin removed it) raises
  `ChatcliError`. `expand` (beam search) raises `UsageError` while tokens are forced.
- `stream_alternative(loaded, prompt_ids, settings, max_new_tokens, alt, ...)`: the
  alternative answer as a `chatcli.generation.stream.Generation`, decoded by the same
  `stream` with `loaded.lm` wrapped in a `ForcedLM` (a constraint, when given, is applied
  under the forcing: `ForcedLM(ConstrainedLM(lm))`, and `constraint_satisfied` is set).

Why beam answers are refused: beam search does not choose a token per step from a
distribution; it keeps N prefixes and picks the best whole sequence at the end, so the
winner's token at step S is not "the model's choice" there, and a search restarted from a
forced prefix is not the search that produced the answer (the other beams and the
finished hypotheses that competed with it are gone): even forcing the winner's own token
need not return the original answer. "Where the answer would have gone" has no meaning
there.

Ranking: the logits `lm` returns, as float32, sorted descending with ties going to the
lower token id (a stable sort). Pass the model itself (`loaded.lm`, or the backend's
`PromptCache`, whose prefill of the same prompt returns the very logits the answer saw) for
the model's raw distribution; over a `ConstrainedLM` ranks count only what the constraint
allows. Penalties and sampling filters are not applied: RANK may name a token that top-k or
top-p would have removed, and forcing it still works.

Deliberately knows nothing about text, the terminal, history or branches: token ids in,
token ids out. torch is imported inside the functions.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from chatcli.errors import ChatcliError, UsageError
from chatcli.lm.wrapped import WrappedLM

STEP_HINT = "'/alt' with no arguments lists the steps where the model was least sure"


@dataclass(frozen=True)
class StepView:
    """What the model weighed at one step of an answer (teacher-forced)."""

    step: int  # 1-based: the answer's token answer_ids[step - 1]
    token_id: int  # the answer's token at this step
    entropy: float  # of the model's distribution, in nats
    top: list[tuple[int, float]]  # the top-k (token id, probability), most likely first
    margin: float  # probability of the top token minus that of the second (1.0: one token)
    rank: int  # the answer's token's rank (1: the most likely)
    prob: float  # the answer's token's probability


@dataclass(frozen=True)
class Alternative:
    """The answer's first STEP - 1 tokens and, at STEP, the token ranked RANK."""

    step: int  # 1-based
    rank: int  # 1-based, in the model's distribution at STEP
    token_id: int  # the token forced at STEP
    prob: float  # its probability there
    original_id: int  # the answer's token at STEP
    original_rank: int  # its rank there
    forced: list[int]  # answer_ids[:step - 1] + [token_id]: what ForcedLM forces

    @property
    def same(self) -> bool:
        """Whether the forced token is the answer's own: the original answer comes back."""
        return self.token_id == self.original_id


# -- teacher-forced passes -----------------------------------------------------------------


def _positions(lm: Any, prompt_ids: list[int], answer_ids: list[int], last: int
               ) -> Iterator[Any]:
    """The float32 logits (vocab,) the model gives at steps 1..last, feeding the answer."""
    import torch

    logits, cache = lm.prefill(list(prompt_ids))
    for i in range(last):
        yield logits[0].float()
        if i + 1 < last:
            token = torch.tensor([int(answer_ids[i])], device=lm.device)
            logits, cache = lm.step(token, cache)


def _ranked(logits: Any) -> Any:
    """Token ids, most likely first, ties to the lower id."""
    import torch

    return torch.sort(logits, descending=True, stable=True).indices


def _rank_of(logits: Any, token: int) -> int:
    """`token`'s 1-based place in `_ranked(logits)`."""
    value = logits[token]
    return int((logits > value).sum()) + int((logits[:token] == value).sum()) + 1


def distributions(lm: Any, prompt_ids: list[int], answer_ids: list[int], k: int = 5
                  ) -> list[StepView]:
    """One `StepView` per token of `answer_ids` (see the module docstring)."""
    import torch

    views: list[StepView] = []
    for i, logits in enumerate(_positions(lm, prompt_ids, answer_ids, len(answer_ids))):
        logp = torch.log_softmax(logits, -1)
        p = logp.exp()
        entropy = float(-(p * logp.nan_to_num(neginf=0.0)).sum())
        order = _ranked(logits)
        token = int(answer_ids[i])
        rank = _rank_of(logits, token)
        top = [(int(t), float(p[t])) for t in order[: max(0, min(k, order.shape[0]))]]
        first, second = float(p[order[0]]), float(p[order[1]]) if order.shape[0] > 1 else 0.0
        views.append(StepView(i + 1, token, entropy, top, first - second, rank,
                              float(p[token])))
    return views


def least_sure(views: list[StepView], n: int = 5) -> list[StepView]:
    """The `n` steps of highest entropy (ties: smaller margin, then earlier), in step order."""
    chosen = sorted(views, key=lambda v: (-v.entropy, v.margin, v.step))[: max(0, n)]
    return sorted(chosen, key=lambda v: v.step)


def _check_strategy(settings: Any) -> None:
    caps = getattr(settings, "capabilities", None)
    if caps is not None and caps.hypotheses:
        raise UsageError(
            f"alternatives of a {settings.strategy} answer are not defined: "
            f"{settings.strategy} search keeps several sequences and picks the best whole "
            "one, so no step's token was chosen from that step's distribution",
            "explore a greedy or sampled answer (--strategy greedy or sample)")


def alternative(lm: Any, prompt_ids: list[int], answer_ids: list[int], step: int, rank: int,
                settings: Any = None) -> Alternative:
    """The alternative at 1-based `step` with 1-based `rank` (see the module docstring).

    `settings` (the answer's `DecodingSettings`, optional) lets it refuse, before anything
    is generated, a strategy that is not token by token and a token the answer's penalties
    ban at STEP.
    """
    import torch

    if settings is not None:
        _check_strategy(settings)
    n = len(answer_ids)
    if n == 0:
        raise UsageError("there is no alternative to an empty answer: it has no steps",
                         "alternatives start from an answer with at least one token")
    if isinstance(step, bool) or not isinstance(step, int) or not 1 <= step <= n:
        raise UsageError(f"STEP must be in 1..{n}, the answer's tokens (got {step!r})",
                         STEP_HINT)
    *_, logits = _positions(lm, prompt_ids, answer_ids, step)
    vocab = int(logits.shape[-1])
    if isinstance(rank, bool) or not isinstance(rank, int) or not 1 <= rank <= vocab:
        raise UsageError(f"RANK must be in 1..{vocab}, the model's vocabulary (got {rank!r})",
                         "RANK 1 is the model's most likely token at STEP, 2 the next")
    possible = int(torch.isfinite(logits).sum())
    if rank > possible:
        raise UsageError(f"RANK must be in 1..{possible} at step {step}: only {possible} "
                         f"tokens are possible there (got {rank})",
                         "a constraint allows only these tokens at this step")
    order = _ranked(logits)
    token = int(order[rank - 1])
    original = int(answer_ids[step - 1])
    original_rank = _rank_of(logits, original)
    prefix = [int(t) for t in answer_ids[: step - 1]]
    if settings is not None:
        _check_penalties(settings, prompt_ids, prefix, logits, token, step, rank)
    prob = float(torch.softmax(logits, -1)[token])
    return Alternative(step, rank, token, prob, original, original_rank, [*prefix, token])


def _check_penalties(settings: Any, prompt_ids: list[int], prefix: list[int], logits: Any,
                     token: int, step: int, rank: int) -> None:
    """Refuse a token the answer's own processors set to -inf at STEP (an n-gram ban)."""
    import torch

    processors = settings.processors(len(prompt_ids))
    if not processors:
        return
    history = torch.tensor([list(prompt_ids) + prefix], device=logits.device)
    scores = logits.view(1, -1)
    for process in processors:
        scores = process(history, scores)
    if not bool(torch.isfinite(scores[0, token])):
        size = settings.common.no_repeat_ngram_size
        why = (f"would repeat a {size}-gram, which this answer's --no-repeat-ngram-size "
               f"{size} bans there" if size else "is banned there by this answer's penalties")
        raise UsageError(f"the token ranked {rank} at step {step} {why}", "choose another RANK")


# -- forcing tokens ------------------------------------------------------------------------


class ForcedLM(WrappedLM):
    """`lm` whose first len(forced) positions allow only the forced token (see the module)."""

    def __init__(self, lm: Any, forced: list[int]) -> None:
        super().__init__(lm)
        self.forced = [int(t) for t in forced]
        self.position = 0  # the position the latest logits are for (0: the prefill's)
        self._raw: Any = None
        self._inner_allowed: Any = None
        self._forcing = False

    # what token_loop reads, as over a ConstrainedLM
    @property
    def last_unmasked(self) -> Any:
        return self._raw

    @property
    def last_allowed(self) -> Any:
        import torch

        allowed = self._inner_allowed
        if allowed is None:
            allowed = torch.ones_like(self._raw, dtype=torch.bool)
        if self._forcing:
            only = torch.zeros_like(allowed)
            only[:, self.forced[self.position]] = True
            allowed = allowed & only
        return allowed

    def _out(self, logits: Any) -> Any:
        import torch

        inner_raw = getattr(self.lm, "last_unmasked", None)
        self._raw = logits if inner_raw is None else inner_raw
        self._inner_allowed = getattr(self.lm, "last_allowed", None)
        self._forcing = self.position < len(self.forced)
        if not self._forcing:
            return logits
        keep = self.forced[self.position]
        masked = torch.full_like(logits, float("-inf"))
        masked[:, keep] = logits[:, keep]
        return masked

    def prefill(self, ids: list[int], cache: Any = None) -> tuple[Any, Any]:
        logits, cache = super().prefill(ids, cache)
        self.position = 0
        return self._out(logits), cache

    def step(self, tokens: Any, cache: Any) -> tuple[Any, Any]:
        if self.position < len(self.forced):
            fed = [int(t) for t in tokens.view(-1).tolist()]
            want = self.forced[self.position]
            if fed != [want] * len(fed):
                raise ChatcliError(
                    f"the strategy did not take the forced token {want} at step "
                    f"{self.position + 1} (it took {fed[0]}): a penalty or plugin removed it",
                    "choose another STEP or RANK, or answer without that penalty")
        logits, cache = self.lm.step(tokens, cache)
        self.position += 1
        return self._out(logits), cache

    def expand(self, cache: Any, rows: int) -> None:
        if self.forced:
            raise UsageError(
                "alternatives of a beam answer are not defined: beam search keeps several "
                "sequences and picks the best whole one, so forcing a prefix restarts a "
                "different search", "explore a greedy or sampled answer")
        super().expand(cache, rows)

    def satisfied(self, token_ids: list[int]) -> bool:
        """A wrapped `ConstrainedLM`'s verdict on an answer (True without a constraint)."""
        inner = getattr(self.lm, "satisfied", None)
        return True if inner is None else bool(inner(token_ids))


def stream_alternative(loaded: Any, prompt_ids: list[int], settings: Any, max_new_tokens: int,
                       alt: Alternative, *, registry: Any = None, candidates: int | None = None,
                       constraint: Any = None) -> Any:
    """The alternative answer as a `Generation` (iterate it, as `stream`'s).

    Pass the original answer's `prompt_ids`, `settings` (same strategy, parameters and
    seed), `max_new_tokens` and `constraint`; `loaded.lm` may be the backend's
    `PromptCache`. The first len(alt.forced) events are the forced tokens.
    """
    from chatcli.generation.stream import Generation, constrained_lm, stream

    _check_strategy(settings)
    inner = loaded.lm if constraint is None else constrained_lm(loaded, constraint)
    forced = ForcedLM(inner, alt.forced)
    gen = stream(dataclasses.replace(loaded, lm=forced), prompt_ids, settings, max_new_tokens,
                 registry, candidates=candidates)
    if constraint is None:
        return gen
    def events() -> Iterator[Any]:
        chosen: list[int] = []
        for event in gen:
            chosen.append(event.token_id)
            if event.finish_reason is not None:
                outer.constraint_satisfied = (event.finish_reason != "stop_string"
                                              and forced.satisfied(chosen))
            yield event

    outer = Generation(events(), gen.stats, settings, constraint=constraint)
    return outer
