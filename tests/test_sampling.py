"""The sample strategy: seeded reproducibility and the distribution it draws from."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from chatcli.decoding.base import DecodeContext
from chatcli.decoding.filters import make_filter
from chatcli.decoding.sampling import Sample, SampleParams

LOGITS = torch.tensor([[2.0, 1.5, 1.0, 0.5, 0.0, -1.0, -2.0, -4.0]])


class FixedLM:
    """A 'model' whose next-token logits never change (vocab of 8)."""

    device = torch.device("cpu")
    vocab_size = 8

    def prefill(self, ids: list[int], cache: Any = None) -> tuple[Any, Any]:
        return LOGITS.clone(), None

    def step(self, tokens: Any, cache: Any) -> tuple[Any, Any]:
        return LOGITS.expand(tokens.shape[0], -1).clone(), None

    def expand(self, cache: Any, rows: int) -> None: ...
    def reorder(self, cache: Any, rows: Any) -> None: ...
    def crop(self, cache: Any, length: int) -> None: ...


def draw(params: SampleParams, n: int, seed: int) -> list[int]:
    gen = torch.Generator().manual_seed(seed)
    ctx = DecodeContext(max_new_tokens=n, eos_ids=frozenset(), generator=gen)
    return [s.token_id for s in Sample().decode(FixedLM(), [0], params, ctx)]


# chi-square critical values at p = 0.001 by degrees of freedom
CRITICAL = {1: 10.83, 2: 13.82, 3: 16.27, 4: 18.47, 5: 20.52, 6: 22.46, 7: 24.32}


@pytest.mark.parametrize(
    "params",
    [
        SampleParams(),
        SampleParams(temperature=0.7),
        SampleParams(temperature=1.3, top_k=4),
        SampleParams(top_p=0.8),
        SampleParams(min_p=0.1),
        SampleParams(typical_p=0.9),
    ],
)
def test_empirical_distribution_matches_filtered_softmax(params: SampleParams) -> None:
    n = 10_000
    tokens = draw(params, n, seed=1234)
    filt = make_filter(params.temperature, params.top_k, params.top_p, params.min_p,
                       params.typical_p)
    probs = torch.softmax(filt(LOGITS.float()), -1)[0]
    counts = torch.bincount(torch.tensor(tokens), minlength=8).double()
    kept = probs > 0
    assert counts[~kept].sum() == 0  # never a filtered-out token
    expected = probs[kept].double() * n
    chi2 = float(((counts[kept] - expected) ** 2 / expected).sum())
    dof = int(kept.sum()) - 1
    if dof == 0:
        return
    assert chi2 < CRITICAL[dof], (chi2, dof)


def test_fixed_seed_reproduces_and_seeds_differ() -> None:
    params = SampleParams(temperature=0.9)
    assert draw(params, 200, seed=7) == draw(params, 200, seed=7)
    assert draw(params, 200, seed=7) != draw(params, 200, seed=8)


def test_logprob_is_from_the_raw_distribution() -> None:
    gen = torch.Generator().manual_seed(0)
    ctx = DecodeContext(max_new_tokens=5, eos_ids=frozenset(), generator=gen)
    raw = torch.log_softmax(LOGITS[0], -1)
    for step in Sample().decode(FixedLM(), [0], SampleParams(temperature=0.5), ctx):
        assert step.logprob == pytest.approx(float(raw[step.token_id]), abs=1e-6)
