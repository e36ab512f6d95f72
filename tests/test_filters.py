"""Property-based tests: chatcli's filters and processors against transformers.

Every filter must keep exactly the tokens the transformers warper of the same
concept keeps (``min_tokens_to_keep=1``) and leave the survivors' values equal,
on logits with frequent exact ties, ``-inf`` entries, extreme values (±1e4) and
float32 neighbours (one ulp apart). Our implementations perform the same torch
operations in the same order as transformers, so the outputs are compared with
``torch.equal`` (bit for bit; ``-inf == -inf``); no tolerance is needed anywhere.
The frequency/presence penalty has no transformers counterpart and is checked
against a direct Python loop doing the same float32 arithmetic.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers.generation.logits_process import (
    LogitsProcessor,
    MinPLogitsWarper,
    NoRepeatNGramLogitsProcessor,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
    TypicalLogitsWarper,
)

from chatcli.decoding import filters, processors

NEG_INF = float("-inf")
EXAMPLES = 150


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    """The tensors here are tiny: intra-op threads only add overhead (tens of ms
    per call on a busy 2-core machine), so run this module single-threaded."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# float32 neighbours of 1.0: differences of one ulp, which softmax barely resolves
_ULP = [float(x) for x in np.nextafter(np.float32(1.0), np.float32(2.0)) + np.arange(4) * 2**-23]
TIES = [0.0, 1.0, -1.0, 2.0, 0.5, -3.0]
# Each example draws its values from one palette, so that the smooth, flat
# distributions where filters disagree most are not drowned by a stray 1e4.
PALETTES = [
    st.sampled_from(TIES),  # small set: exact ties are frequent
    st.sampled_from([1.0, *_ULP]),  # ties and one-ulp differences
    st.floats(-4.0, 4.0, width=32),  # smooth: many tokens share the mass
    st.floats(-30.0, 30.0, width=32),  # peaked
    st.one_of(st.sampled_from([1e4, -1e4, 0.0, 1.0]), st.floats(-1e4, 1e4, width=32)),  # extreme
]
FINITE = st.one_of(*PALETTES)


@st.composite
def logits_st(draw: st.DrawFn, rows: int | None = None, vocab: int | None = None) -> torch.Tensor:
    """(rows, vocab) float32 logits, some -inf; each row has at least one finite value."""
    rows = rows if rows is not None else draw(st.integers(1, 3))
    vocab = vocab if vocab is not None else draw(st.integers(1, 60))
    n = rows * vocab
    values = draw(st.lists(draw(st.sampled_from(PALETTES)), min_size=n, max_size=n))
    out = torch.tensor(values, dtype=torch.float32).view(rows, vocab)
    if draw(st.booleans()):
        removed = draw(st.lists(st.booleans(), min_size=n, max_size=n))
        out = out.masked_fill(torch.tensor(removed).view(rows, vocab), NEG_INF)
    for r in range(rows):
        if not torch.isfinite(out[r]).any():
            out[r, draw(st.integers(0, vocab - 1))] = draw(FINITE)
    return out


def _dummy_ids(logits: torch.Tensor) -> torch.Tensor:
    return torch.zeros((logits.shape[0], 1), dtype=torch.long)


def _check_filter(
    ours: Callable[[torch.Tensor], torch.Tensor],
    theirs: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    logits: torch.Tensor,
) -> None:
    before = logits.clone()
    got = ours(logits)
    want = theirs(_dummy_ids(logits), logits.clone())
    assert torch.equal(logits, before), "input was modified"
    assert got.data_ptr() != logits.data_ptr(), "must return a new tensor"
    assert got.dtype == torch.float32 and got.shape == logits.shape
    # the kept set (finite entries) is exactly transformers' ...
    assert torch.equal(torch.isfinite(got), torch.isfinite(want)), (logits, got, want)
    # ... and so are the surviving values (same ops, same order: bit for bit)
    assert torch.equal(got, want), (logits, got, want)
    # at least one token per row survives
    assert torch.isfinite(got).any(dim=-1).all()


TEMPERATURE = st.one_of(st.sampled_from([0.5, 0.7, 1.0, 1.5]), st.floats(0.05, 5.0))
TOP_P = st.one_of(st.sampled_from([0.0, 0.5, 0.9, 1.0]), st.floats(0.0, 1.0))
MIN_P = st.one_of(st.sampled_from([0.0, 0.05, 0.5, 1.0]), st.floats(0.0, 1.0))
TYPICAL = st.one_of(st.sampled_from([0.2, 0.5, 0.9]), st.floats(0.01, 0.99))


@settings(deadline=None, max_examples=EXAMPLES)
@given(logits=logits_st(), temperature=TEMPERATURE)
def test_temperature_matches_transformers(logits: torch.Tensor, temperature: float) -> None:
    _check_filter(
        lambda x: filters.apply_temperature(x, temperature),
        TemperatureLogitsWarper(temperature),
        logits,
    )


@settings(deadline=None, max_examples=EXAMPLES)
@given(logits=logits_st(), k=st.integers(1, 70))
def test_top_k_matches_transformers(logits: torch.Tensor, k: int) -> None:
    _check_filter(lambda x: filters.top_k(x, k), TopKLogitsWarper(k), logits)


@settings(deadline=None, max_examples=EXAMPLES)
@given(logits=logits_st(), p=TOP_P)
def test_top_p_matches_transformers(logits: torch.Tensor, p: float) -> None:
    _check_filter(lambda x: filters.top_p(x, p), TopPLogitsWarper(p), logits)


@settings(deadline=None, max_examples=EXAMPLES)
@given(logits=logits_st(), p=MIN_P)
def test_min_p_matches_transformers(logits: torch.Tensor, p: float) -> None:
    _check_filter(lambda x: filters.min_p(x, p), MinPLogitsWarper(p), logits)


@settings(deadline=None, max_examples=EXAMPLES)
@given(logits=logits_st(), mass=TYPICAL)
def test_typical_matches_transformers(logits: torch.Tensor, mass: float) -> None:
    _check_filter(lambda x: filters.typical(x, mass), TypicalLogitsWarper(mass), logits)


def _top_p_cumulative(logits: torch.Tensor) -> torch.Tensor:
    """The cumulative probabilities TopPLogitsWarper thresholds (ascending order)."""
    return torch.sort(logits)[0].softmax(dim=-1).cumsum(dim=-1)


def _typical_cumulative(logits: torch.Tensor) -> torch.Tensor:
    """The cumulative probabilities TypicalLogitsWarper thresholds (most typical first)."""
    normalized = torch.log_softmax(logits, dim=-1)
    ent = -(normalized * normalized.exp()).nansum(-1, keepdim=True)
    order = torch.sort((-normalized - ent).abs())[1]
    return logits.gather(-1, order).softmax(dim=-1).cumsum(dim=-1)


@settings(deadline=None, max_examples=EXAMPLES)
@given(logits=logits_st(), data=st.data())
def test_top_p_exactly_at_a_cumulative_probability(
    logits: torch.Tensor, data: st.DataObject
) -> None:
    # choose p so that `cumulative <= 1 - p` holds with equality for one token
    cumulative = _top_p_cumulative(logits)[0]
    i = data.draw(st.integers(0, cumulative.shape[0] - 1))
    p = min(max(1.0 - float(cumulative[i]), 0.0), 1.0)
    _check_filter(lambda x: filters.top_p(x, p), TopPLogitsWarper(p), logits)


@settings(deadline=None, max_examples=EXAMPLES)
@given(logits=logits_st(), data=st.data())
def test_typical_exactly_at_a_cumulative_probability(
    logits: torch.Tensor, data: st.DataObject
) -> None:
    # choose the mass so that `cumulative < mass` is an equality for one token
    cumulative = [float(c) for c in _typical_cumulative(logits)[0] if 0.0 < float(c) < 1.0]
    mass = data.draw(st.sampled_from(cumulative)) if cumulative else 0.5
    _check_filter(lambda x: filters.typical(x, mass), TypicalLogitsWarper(mass), logits)


def test_ties_at_the_boundary() -> None:
    """A few hand-made cases that pin the tie behaviour we inherit from transformers."""
    ties = torch.tensor([[1.0, 3.0, 3.0, 3.0, 0.0]])
    # top-k keeps every token tied with the k-th
    assert torch.isfinite(filters.top_k(ties, 2)).tolist() == [[False, True, True, True, False]]
    # min-p compares strictly: a token at exactly p * top is kept
    assert torch.isfinite(filters.min_p(ties, 1.0)).sum() == 3
    # the maximum survives any top-p, even p = 0
    assert torch.isfinite(filters.top_p(ties, 0.0)).sum() >= 1
    for p in (0.0, 0.3, 0.5, 0.7, 0.95):
        _check_filter(lambda x, p=p: filters.top_p(x, p), TopPLogitsWarper(p), ties)


def _transformers_warpers(
    temperature: float, top_k: int, top_p: float, min_p: float, typical_p: float
) -> list[LogitsProcessor]:
    """The warpers `GenerationMixin._get_logits_processor` appends for do_sample, in order."""
    warpers: list[LogitsProcessor] = []
    if temperature != 1.0:
        warpers.append(TemperatureLogitsWarper(temperature))
    if top_k != 0:
        warpers.append(TopKLogitsWarper(top_k))
    if top_p < 1.0:
        warpers.append(TopPLogitsWarper(top_p))
    # generate() appends MinPLogitsWarper whenever min_p is set, even to 0.0: we
    # leave it out at 0.0, so this also checks that 0.0 removes nothing
    warpers.append(MinPLogitsWarper(min_p))
    if typical_p < 1.0:
        warpers.append(TypicalLogitsWarper(typical_p))
    return warpers


@settings(deadline=None, max_examples=2 * EXAMPLES)
@given(
    logits=logits_st(),
    temperature=st.one_of(st.just(1.0), TEMPERATURE),
    top_k=st.one_of(st.just(0), st.integers(1, 70)),
    top_p=st.one_of(st.just(1.0), TOP_P),
    min_p=st.one_of(st.just(0.0), MIN_P),
    typical_p=st.one_of(st.just(1.0), TYPICAL),
)
def test_make_filter_matches_transformers_chain(
    logits: torch.Tensor,
    temperature: float,
    top_k: int,
    top_p: float,
    min_p: float,
    typical_p: float,
) -> None:
    chain = _transformers_warpers(temperature, top_k, top_p, min_p, typical_p)

    def theirs(ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        for warper in chain:
            scores = warper(ids, scores)
        return scores

    ours = filters.make_filter(temperature, top_k, top_p, min_p, typical_p)
    _check_filter(ours, theirs, logits)


def test_make_filter_off_is_a_copy() -> None:
    logits = torch.tensor([[0.0, 1.0, NEG_INF]])
    out = filters.make_filter()(logits)
    assert torch.equal(out, logits) and out.data_ptr() != logits.data_ptr()


# ---------------------------------------------------------------- processors


@st.composite
def ids_and_scores(
    draw: st.DrawFn, min_len: int = 0, max_len: int = 30
) -> tuple[torch.Tensor, torch.Tensor]:
    """input_ids over a small vocabulary (so repeats happen) and matching scores.

    A few ids are past the scores' vocabulary (an embedding table larger than the
    output layer), which both transformers and we must ignore.
    """
    rows = draw(st.integers(1, 3))
    vocab = draw(st.integers(1, 8))
    seq_len = draw(st.integers(min_len, max_len))
    ids = draw(
        st.lists(st.integers(0, vocab + 1), min_size=rows * seq_len, max_size=rows * seq_len)
    )
    input_ids = torch.tensor(ids, dtype=torch.long).view(rows, seq_len)
    return input_ids, draw(logits_st(rows=rows, vocab=vocab))


def _check_processor(
    ours: processors.Processor,
    theirs: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    input_ids: torch.Tensor,
    scores: torch.Tensor,
) -> torch.Tensor:
    ids_before, scores_before = input_ids.clone(), scores.clone()
    got = ours(input_ids, scores)
    want = theirs(input_ids.clone(), scores.clone())
    assert torch.equal(input_ids, ids_before) and torch.equal(scores, scores_before)
    assert got.data_ptr() != scores.data_ptr(), "must return a new tensor"
    assert torch.equal(got, want), (input_ids, scores, got, want)
    return got


@settings(deadline=None, max_examples=EXAMPLES)
@given(data=ids_and_scores(), penalty=st.floats(0.5, 2.0))
def test_repetition_penalty_matches_transformers(
    data: tuple[torch.Tensor, torch.Tensor], penalty: float
) -> None:
    input_ids, scores = data
    _check_processor(
        processors.repetition_penalty(penalty),
        RepetitionPenaltyLogitsProcessor(penalty),
        input_ids,
        scores,
    )


@settings(deadline=None, max_examples=EXAMPLES)
@given(data=ids_and_scores(), size=st.integers(1, 4))
def test_no_repeat_ngram_matches_transformers(
    data: tuple[torch.Tensor, torch.Tensor], size: int
) -> None:
    input_ids, scores = data
    _check_processor(
        processors.no_repeat_ngram(size), NoRepeatNGramLogitsProcessor(size), input_ids, scores
    )


def _frequency_presence_reference(
    input_ids: torch.Tensor,
    scores: torch.Tensor,
    frequency: float,
    presence: float,
    prompt_len: int,
) -> torch.Tensor:
    """scores[t] -= frequency * count[t] + presence for each generated token t, in float32."""
    f32 = np.float32
    out = scores.clone()
    vocab = scores.shape[-1]
    for r in range(scores.shape[0]):
        for t, c in Counter(input_ids[r, prompt_len:].tolist()).items():
            if t < vocab:
                penalty = f32(c) * f32(frequency) + f32(presence)
                out[r, t] = float(f32(out[r, t].item()) - penalty)
    return out


PENALTY = st.one_of(st.sampled_from([0.0, 0.5, 1.0, -1.0, 2.0]), st.floats(-2.0, 2.0))


@settings(deadline=None, max_examples=EXAMPLES)
@given(data=ids_and_scores(), frequency=PENALTY, presence=PENALTY, prompt_len=st.integers(0, 35))
def test_frequency_presence_matches_reference(
    data: tuple[torch.Tensor, torch.Tensor], frequency: float, presence: float, prompt_len: int
) -> None:
    input_ids, scores = data
    process = processors.frequency_presence_penalty(frequency, presence, prompt_len)
    got = _check_processor(
        process,
        lambda ids, s: _frequency_presence_reference(ids, s, frequency, presence, prompt_len),
        input_ids,
        scores,
    )
    # the prompt part is ignored: any other prompt gives the same scores
    other = input_ids.clone()
    other[:, :prompt_len] = (other[:, :prompt_len] + 1) % (scores.shape[-1] + 2)
    assert torch.equal(process(other, scores), got)


@settings(deadline=None, max_examples=EXAMPLES // 2)
@given(
    data=ids_and_scores(),
    penalty=st.floats(0.5, 2.0),
    size=st.integers(1, 4),
    frequency=PENALTY,
    prompt_len=st.integers(0, 10),
)
def test_compose_applies_in_order(
    data: tuple[torch.Tensor, torch.Tensor],
    penalty: float,
    size: int,
    frequency: float,
    prompt_len: int,
) -> None:
    input_ids, scores = data
    steps = [
        processors.repetition_penalty(penalty),
        processors.frequency_presence_penalty(frequency, 0.5, prompt_len),
        processors.no_repeat_ngram(size),
    ]
    want = scores
    for step in steps:
        want = step(input_ids, want)
    _check_processor(processors.compose(steps), lambda _i, _s: want, input_ids, scores)


@pytest.mark.parametrize("seq_len", [0, 3])
def test_compose_empty_is_identity(seq_len: int) -> None:
    input_ids = torch.zeros((1, seq_len), dtype=torch.long)
    scores = torch.tensor([[0.5, NEG_INF, -2.0]])
    _check_processor(processors.compose([]), lambda _i, s: s, input_ids, scores)


# --- top-p's partial-sort fast path --------------------------------------------------
# `filters._top_p_partial` answers from `topk` when rounding cannot change the kept set
# and returns None otherwise. Small partial sizes make the property tests reach it on
# small vocabularies; whenever it answers, the answer must be transformers'.

SMALL_KS = (1, 2, 3, 5, 8, 13, 21, 34)


@settings(deadline=None, max_examples=EXAMPLES)
@given(logits=logits_st(), p=TOP_P)
def test_top_p_partial_matches_transformers_when_it_answers(
    logits: torch.Tensor, p: float
) -> None:
    got = filters._top_p_partial(logits, p, ks=SMALL_KS)
    if got is not None:
        want = TopPLogitsWarper(p)(_dummy_ids(logits), logits.clone())
        assert torch.equal(got, want), (logits, p, got, want)


@settings(deadline=None, max_examples=EXAMPLES)
@given(logits=logits_st(), data=st.data())
def test_top_p_partial_refuses_exact_boundaries(
    logits: torch.Tensor, data: st.DataObject
) -> None:
    cumulative = _top_p_cumulative(logits)[0]
    i = data.draw(st.integers(0, cumulative.shape[0] - 1))
    p = min(max(1.0 - float(cumulative[i]), 0.0), 1.0)
    got = filters._top_p_partial(logits, p, ks=SMALL_KS)
    if got is not None:
        want = TopPLogitsWarper(p)(_dummy_ids(logits), logits.clone())
        assert torch.equal(got, want), (logits, p, got, want)


def test_top_p_partial_hand_cases() -> None:
    # probabilities 0.5, 0.3, 0.2: p = 0.8 sits exactly on a boundary -> refused
    logits = torch.tensor([[0.5, 0.3, 0.2, 0.0]]).log()
    assert filters._top_p_partial(logits, 0.8, ks=(1, 2, 3)) is None
    # p = 0.7 is far from every boundary -> answered: the two most likely survive
    got = filters._top_p_partial(logits, 0.7, ks=(1, 2, 3))
    assert got is not None and torch.isfinite(got).tolist() == [[True, True, False, False]]
    # a tie between the last kept and the first dropped token -> refused
    tied = torch.tensor([[2.0, 1.0, 1.0, -3.0]])
    assert filters._top_p_partial(tied, 0.8, ks=(1, 2, 3)) is None


@pytest.mark.parametrize("temperature", [0.7, 1.0])
@pytest.mark.parametrize("p", [0.5, 0.9, 0.95])
def test_top_p_fast_path_on_a_real_sized_vocabulary(temperature: float, p: float) -> None:
    """On 49,152 language-model-like logits the fast path answers, and exactly."""
    gen = torch.Generator().manual_seed(7)
    answered = 0
    for _ in range(20):
        logits = (torch.randn(1, 49152, generator=gen) * 2.5).pow(3) / 10 / temperature
        got = filters._top_p_partial(logits, p)
        want = TopPLogitsWarper(p)(_dummy_ids(logits), logits.clone())
        assert torch.equal(filters.top_p(logits, p), want)
        if got is not None:
            answered += 1
            assert torch.equal(got, want)
    assert answered >= 18
