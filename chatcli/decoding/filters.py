"""Sampling filters: small pure functions on logits that compose into one filter.

Contract
--------
Every filter takes float32 logits of shape ``(rows, vocab)`` and returns a *new*
tensor of the same shape and dtype; its input is never modified. A token the
filter removes is set to ``-inf`` (so ``softmax`` gives it probability 0);
a kept token keeps its value unchanged (only `apply_temperature` changes values).
Every filter keeps at least one token per row, provided the row has at least one
finite logit (a row of only ``-inf`` is not a distribution and is not supported).
Tokens that are already ``-inf`` stay ``-inf``.

Each filter reproduces the transformers logits warper of the same concept
bit for bit, with its default ``min_tokens_to_keep=1``: the same kept set,
including how ties at the boundary are resolved, and the same surviving values
(``tests/test_filters.py`` checks this property-based):

- `apply_temperature`: ``TemperatureLogitsWarper``;
- `top_k`: ``TopKLogitsWarper`` (every token tied with the k-th is kept);
- `top_p`: ``TopPLogitsWarper`` (ties at the boundary are split by the position
  ``torch.sort`` gives them, exactly as in transformers);
- `min_p`: ``MinPLogitsWarper``;
- `typical`: ``TypicalLogitsWarper``.

Parameters are not validated here (the strategy's ``Params`` classes do that);
each docstring states the valid range. Outside it the result is unspecified.

Order
-----
`make_filter` composes the active filters in the order transformers'
``generate()`` appends its warpers in ``GenerationMixin._get_logits_processor``
(``transformers/generation/utils.py``, the ``do_sample`` block):

    temperature -> top-k -> top-p -> min-p -> typical

so temperature is applied first and changes what the later filters see (min-p in
particular is applied after temperature scaling, as in llama.cpp). transformers'
``top_h`` (between temperature and top-k) and ``epsilon``/``eta`` cutoffs (after
typical) have no counterpart here. Logit processors (penalties,
`chatcli.decoding.processors`) run before all of these, as in ``generate()``.

What this module does not know
------------------------------
Nothing about models, tokenizers, token ids or text, the random generator, or the
CLI: it only maps logits to logits. ``torch`` is imported lazily, inside the
functions, so that importing this module (e.g. to list strategies) stays cheap.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import Tensor

Filter = Callable[["Tensor"], "Tensor"]

_NEG_INF = float("-inf")


def apply_temperature(logits: Tensor, temperature: float) -> Tensor:
    """Divide the logits by `temperature` (valid: a finite number > 0).

    < 1 sharpens the distribution, > 1 flattens it; 1.0 returns an equal copy.
    Removes nothing. Same arithmetic as ``TemperatureLogitsWarper``.
    """
    return logits / temperature


def top_k(logits: Tensor, k: int) -> Tensor:
    """Keep the `k` highest logits of each row (valid: an integer >= 1).

    Every token tied with the k-th highest value is kept too, so more than `k`
    tokens may survive. `k` is raised to 1 (``min_tokens_to_keep``) and capped at
    the vocabulary size, as ``TopKLogitsWarper`` does.
    """
    import torch

    k = min(max(k, 1), logits.shape[-1])
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, _NEG_INF)


def top_p(logits: Tensor, p: float) -> Tensor:
    """Nucleus filter: keep the most likely tokens whose probabilities sum to >= `p`.

    Valid: ``0 <= p <= 1`` (1.0 keeps everything but the tokens whose probability
    underflows to 0 at the low end; the strategy treats 1.0 as "off"). The most
    likely token is always kept.

    Exactly ``TopPLogitsWarper``: sort ascending, softmax over the sorted logits,
    cumulative sum from the least likely token, and drop every token whose
    cumulative probability is ``<= 1 - p``. Tied tokens at the boundary are split
    by their position in the sort (the same ``torch.sort`` call as transformers),
    so of two equal logits one may be kept and the other dropped.

    Fast path: a full sort of a 50k vocabulary costs milliseconds per token, so the
    kept set is first decided from a partial sort (`_top_p_partial`), which is
    used only when no rounding could change the decision; otherwise (and in the
    rare near-boundary cases) the full sort above runs.
    """
    import torch

    kept = _top_p_partial(logits, p)
    if kept is not None:
        return kept
    sorted_logits, sorted_indices = torch.sort(logits, descending=False)
    cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
    sorted_remove = cumulative <= (1 - p)
    sorted_remove[..., -1:] = False  # keep at least the most likely token
    remove = sorted_remove.scatter(-1, sorted_indices, sorted_remove)
    return logits.masked_fill(remove, _NEG_INF)


# A decision is trusted only if the cumulative probability misses `p` by more than
# this. The full-sort path's float32 softmax and (double-accumulated) cumsum differ
# from an exact sum by ~1e-7 at most; 1e-4 leaves three orders of magnitude.
_TOP_P_MARGIN = 1e-4
_TOP_P_PARTIAL_K = (64, 1024)


def _top_p_partial(
    logits: Tensor, p: float, ks: tuple[int, ...] = _TOP_P_PARTIAL_K
) -> Tensor | None:
    """`top_p` from the k largest logits only, or None when that cannot be exact.

    Mathematically transformers drops the token of descending rank i (1-based) iff
    the probability of the tokens ranked above it, ``D[i-1]``, is ``>= p``: so it
    keeps the m most likely tokens, m the smallest count with ``D[m] >= p``. That
    is decided here from ``topk``; the answer is returned only when ``D[m-1]`` and
    ``D[m]`` are both farther than `_TOP_P_MARGIN` from `p` (so float rounding in
    either computation cannot flip a decision) and the m-th and (m+1)-th logits
    differ (so the sort's tie order does not matter). `ks` are the partial sort
    sizes tried in turn, while the nucleus may reach past the k-th token.
    """
    import torch

    vocab = logits.shape[-1]
    probs = torch.softmax(logits, dim=-1)
    for k in ks:
        if k >= vocab:
            return None
        values, indices = torch.topk(logits, k, dim=-1)
        mass = probs.gather(-1, indices).double().cumsum(dim=-1)  # D[1..k]
        if bool((mass[..., -1] < p + _TOP_P_MARGIN).any()):
            continue  # the nucleus may reach past the k-th token: look further
        m = (mass < p).sum(dim=-1, keepdim=True) + 1  # kept count, 1..k
        if bool((m >= k).any()):
            continue  # the (m+1)-th logit is needed for the tie check
        below = torch.where(m > 1, mass.gather(-1, (m - 2).clamp(min=0)), 0.0)
        at = mass.gather(-1, m - 1)
        safe = (p - below > _TOP_P_MARGIN) & (at - p > _TOP_P_MARGIN)
        untied = values.gather(-1, m - 1) > values.gather(-1, m)
        if not bool((safe & untied).all()):
            return None
        keep = torch.arange(k, device=logits.device) < m
        remove = torch.ones_like(logits, dtype=torch.bool)
        remove.scatter_(-1, indices, ~keep)
        return logits.masked_fill(remove, _NEG_INF)
    return None


def min_p(logits: Tensor, p: float) -> Tensor:
    """Drop tokens whose probability is below ``p * max probability`` of their row.

    Valid: ``0 <= p <= 1`` (0.0 removes nothing; the strategy treats it as "off").
    The most likely token is always kept. Exactly ``MinPLogitsWarper``: the
    comparison is on ``softmax(logits)``, strict (``prob < p * top`` is removed).
    """
    import torch

    probs = torch.softmax(logits, dim=-1)
    top_probs, top_index = probs.topk(1, dim=-1)
    remove = probs < p * top_probs
    remove.scatter_(-1, top_index, False)  # keep at least one token
    return logits.masked_fill(remove, _NEG_INF)


def typical(logits: Tensor, mass: float) -> Tensor:
    """Locally typical sampling: keep the tokens closest to the row's entropy.

    Valid: ``0 < mass < 1`` (1.0 means "off" to the strategy, which then does not
    call this). Tokens are ranked by ``|-log p - H|`` (H the entropy); the smallest
    prefix of that ranking whose probability reaches `mass` is kept, together with
    every token whose distance ties with the last one kept. The most typical token
    is always kept (which need not be the most likely one). Exactly
    ``TypicalLogitsWarper``.
    """
    import torch

    normalized = torch.nn.functional.log_softmax(logits, dim=-1)
    p = torch.exp(normalized)
    ent = -(normalized * p).nansum(-1, keepdim=True)  # -inf * 0 = nan is skipped
    shifted = torch.abs((-normalized) - ent)
    sorted_scores, sorted_indices = torch.sort(shifted, descending=False)
    sorted_logits = logits.gather(-1, sorted_indices)
    cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
    last_ind = (cumulative < mass).sum(dim=-1, keepdim=True)
    last_ind.clamp_(max=sorted_scores.shape[-1] - 1)
    sorted_remove = sorted_scores > sorted_scores.gather(-1, last_ind)
    sorted_remove[..., :1] = False  # keep at least the most typical token
    remove = sorted_remove.scatter(-1, sorted_indices, sorted_remove)
    return logits.masked_fill(remove, _NEG_INF)


# `make_filter`'s parameters shadow the filter functions' names.
_top_k, _top_p, _min_p = top_k, top_p, min_p


def make_filter(
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    min_p: float = 0.0,
    typical_p: float = 1.0,
) -> Callable[[Tensor], Tensor]:
    """Compose the active filters, in transformers' order, into one function.

    temperature -> top-k -> top-p -> min-p -> typical. A filter is left out when
    its parameter has its "off" value: ``temperature == 1.0`` (a no-op),
    ``top_k == 0``, ``top_p == 1.0``, ``min_p == 0.0``, ``typical_p == 1.0``.
    These are the conditions under which ``generate()`` leaves the warpers out
    (for min-p it adds the warper whenever set, but 0.0 removes nothing).

    Valid ranges: temperature > 0, top_k >= 0, 0 <= top_p <= 1, 0 <= min_p <= 1,
    0 < typical_p <= 1. With nothing active the result returns a copy.
    """
    steps: list[Filter] = []
    if temperature != 1.0:
        steps.append(lambda x: apply_temperature(x, temperature))
    if top_k != 0:
        steps.append(lambda x: _top_k(x, top_k))
    if top_p < 1.0:
        steps.append(lambda x: _top_p(x, top_p))
    if min_p != 0.0:
        steps.append(lambda x: _min_p(x, min_p))
    if typical_p < 1.0:
        steps.append(lambda x: typical(x, typical_p))

    if not steps:
        return lambda logits: logits.clone()
    if len(steps) == 1:
        return steps[0]

    def apply(logits: Tensor) -> Tensor:
        for step in steps:
            logits = step(logits)
        return logits

    return apply
