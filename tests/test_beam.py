"""Beam search gives the same hypotheses and scores as transformers' `generate(num_beams=N)`.

A tiny random-weight Llama (vocabulary 120) is built once per module. EOS ids are picked from
its own greedy output, so that beams do end early; every case is compared with `generate()`
on the same model (sequences, then `sequences_scores`). Scores agree to float32 rounding
only: we prefill the prompt with one row, `generate()` with N, and the batch size changes
the last bits of the matmuls.
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import torch
from transformers.generation.logits_process import NoRepeatNGramLogitsProcessor

from chatcli.decoding.beam import BeamResult, beam_search
from chatcli.lm.hf import HFLanguageModel

PAD = 119
PROMPTS = [[5, 17, 33, 8, 91], [1, 2, 3], [44, 44, 44, 44, 10, 11, 12, 13, 14, 15], [7]]
SCORE_TOL = {"rel": 1e-5, "abs": 1e-6}


@dataclass(frozen=True)
class Tiny:
    model: Any
    lm: HFLanguageModel
    eos_sets: list[list[int]]  # each picked so that greedy decoding reaches it after a few steps


def _greedy(lm: HFLanguageModel, prompt: list[int], n: int) -> list[int]:
    logits, cache = lm.prefill(prompt)
    out: list[int] = []
    for _ in range(n):
        out.append(int(logits[0].argmax()))
        logits, cache = lm.step(torch.tensor(out[-1:]), cache)
    return out


def _fresh_tokens(tokens: list[int], start: int) -> Iterator[int]:
    """Tokens at positions >= start that did not occur before them."""
    for i in range(start, len(tokens)):
        if tokens[i] not in tokens[:i] and tokens[i] != PAD:
            yield tokens[i]


@pytest.fixture(scope="module")
def tiny() -> Iterator[Tiny]:
    from transformers import LlamaConfig, LlamaForCausalLM

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a model this small only loses from threading on a busy machine
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=120,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=True,
        eos_token_id=0,  # replaced below, once greedy output is known
        pad_token_id=PAD,
    )
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() == 2:
                param.normal_(0, 0.3)
    model = model.float().eval()
    lm = HFLanguageModel(model)
    # EOS ids that greedy decoding produces after 3+ steps: some beams end early, others not.
    first = [next(_fresh_tokens(_greedy(lm, p, 20), 3)) for p in PROMPTS[:2]]
    second = next(_fresh_tokens(_greedy(lm, PROMPTS[2], 20), 2))
    eos_sets = [[first[0]], sorted({first[1], second})]
    model.config.eos_token_id = model.generation_config.eos_token_id = eos_sets[0][0]
    yield Tiny(model, lm, eos_sets)
    torch.set_num_threads(threads)


def reference(model: Any, prompt: list[int], **kw: Any) -> list[tuple[list[int], float]]:
    """generate()'s (generated tokens, sequences_score) per returned sequence."""
    out = model.generate(
        torch.tensor([prompt]),
        attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
        do_sample=False,
        pad_token_id=PAD,
        output_scores=True,
        return_dict_in_generate=True,
        **kw,
    )
    result = []
    for row, beams, score in zip(
        out.sequences, out.beam_indices, out.sequences_scores, strict=True
    ):
        length = int((beams != -1).sum())  # generated length; the rest is padding
        gen = row[len(prompt) :].tolist()
        assert all(t == PAD for t in gen[length:])
        result.append((gen[:length], float(score)))
    return result


def ours(tiny: Tiny, prompt: list[int], trace: bool = False, **kw: Any) -> BeamResult:
    ngram = kw.pop("no_repeat_ngram_size", 0)
    processors = [NoRepeatNGramLogitsProcessor(ngram)] if ngram else []
    return beam_search(
        tiny.lm,
        prompt,
        eos_ids=frozenset(kw.pop("eos_token_id")),
        processors=processors,
        trace=trace,
        **kw,
    )


def assert_same(tiny: Tiny, prompt: list[int], **kw: Any) -> BeamResult:
    expected = reference(tiny.model, prompt, **kw)
    got = ours(tiny, prompt, **kw)
    assert [h.token_ids for h in got.hypotheses] == [tokens for tokens, _ in expected]
    assert [h.score for h in got.hypotheses] == [
        pytest.approx(score, **SCORE_TOL) for _, score in expected
    ]
    return got


# The full grid of the options that change the algorithm; prompt, EOS set and token limit
# are drawn (deterministically) per case so that all of them vary across the grid.
_rng = random.Random(1234)
CASES = [
    pytest.param(
        n,
        lp,
        es,
        ng,
        r,
        _rng.randrange(len(PROMPTS)),
        _rng.randrange(2),
        _rng.choice([6, 11, 16]),
        id=f"n{n}-lp{lp}-es{es}-ng{ng}-r{r}",
    )
    for n, lp, es, ng, r in itertools.product(
        [2, 3, 4, 5], [1.0, 0.0, 2.0, -0.5], [True, False, "never"], [0, 2, 3], ["1", "N"]
    )
]


@pytest.mark.parametrize(("n", "lp", "es", "ng", "r", "prompt", "eos", "max_new"), CASES)
def test_matches_generate(
    tiny: Tiny,
    n: int,
    lp: float,
    es: bool | str,
    ng: int,
    r: str,
    prompt: int,
    eos: int,
    max_new: int,
) -> None:
    got = assert_same(
        tiny,
        PROMPTS[prompt],
        num_beams=n,
        max_new_tokens=max_new,
        eos_token_id=tiny.eos_sets[eos],
        length_penalty=lp,
        early_stopping=es,
        no_repeat_ngram_size=ng,
        num_return_sequences=1 if r == "1" else n,
    )
    assert len(got.hypotheses) == (1 if r == "1" else n)
    assert 1 <= got.steps <= max_new
    for h in got.hypotheses:
        assert h.finished == (h.token_ids[-1] in tiny.eos_sets[eos])
        assert h.finished or len(h.token_ids) == max_new
        assert h.score == pytest.approx(h.logprob / len(h.token_ids) ** lp, rel=1e-6)


@pytest.mark.parametrize("es", [True, False, "never"])
def test_searches_that_end_early(tiny: Tiny, es: bool | str) -> None:
    """The chosen EOS ids end hypotheses early, and some searches stop before the limit."""
    kinds, stopped_early = set(), 0
    for prompt, eos, n in itertools.product(PROMPTS, tiny.eos_sets, [2, 3]):
        got = assert_same(
            tiny,
            prompt,
            num_beams=n,
            max_new_tokens=30,
            eos_token_id=eos,
            early_stopping=es,
            num_return_sequences=n,
        )
        kinds |= {h.finished for h in got.hypotheses}
        stopped_early += got.steps < 30
    assert kinds == {True, False}
    assert stopped_early > 0  # "never" too: its bound (best score over the longest length) is safe


@pytest.mark.parametrize("n", [2, 4])
def test_longer_generation(tiny: Tiny, n: int) -> None:
    for prompt in PROMPTS[:2]:
        assert_same(
            tiny,
            prompt,
            num_beams=n,
            max_new_tokens=40,
            eos_token_id=tiny.eos_sets[1],
            num_return_sequences=n,
        )


def test_logprob_is_the_sum_of_token_logprobs(tiny: Tiny) -> None:
    prompt = PROMPTS[0]
    got = ours(
        tiny,
        prompt,
        num_beams=4,
        max_new_tokens=12,
        eos_token_id=tiny.eos_sets[1],
        num_return_sequences=4,
    )
    for h in got.hypotheses:
        ids = torch.tensor([prompt + h.token_ids])
        with torch.no_grad():
            logp = torch.log_softmax(tiny.model(ids).logits[0].float(), dim=-1)
        positions = range(len(prompt) - 1, ids.shape[1] - 1)
        total = sum(float(logp[i, ids[0, i + 1]]) for i in positions)
        assert h.logprob == pytest.approx(total, abs=1e-4)


class CountingLM:
    """Wraps an LM and counts forward passes."""

    def __init__(self, lm: HFLanguageModel) -> None:
        self.lm, self.device, self.vocab_size = lm, lm.device, lm.vocab_size
        self.prefills = self.steps = 0

    def prefill(self, ids: list[int], cache: Any = None) -> tuple[Any, Any]:
        self.prefills += 1
        return self.lm.prefill(ids, cache)

    def step(self, tokens: Any, cache: Any) -> tuple[Any, Any]:
        assert tokens.dim() == 1
        self.steps += 1
        return self.lm.step(tokens, cache)

    def expand(self, cache: Any, rows: int) -> None:
        self.lm.expand(cache, rows)

    def reorder(self, cache: Any, rows: Any) -> None:
        self.lm.reorder(cache, rows)

    def crop(self, cache: Any, length: int) -> None:
        self.lm.crop(cache, length)


@pytest.mark.parametrize(("es", "max_new"), [(True, 16), (False, 16), ("never", 9), (False, 1)])
def test_no_needless_forward_pass(tiny: Tiny, es: bool | str, max_new: int) -> None:
    calls = 0

    def hook(*_: Any) -> None:
        nonlocal calls
        calls += 1

    kw = dict(num_beams=3, max_new_tokens=max_new, eos_token_id=tiny.eos_sets[1], early_stopping=es)
    handle = tiny.model.register_forward_hook(hook)
    try:
        reference(tiny.model, PROMPTS[1], **kw)
    finally:
        handle.remove()
    counting = CountingLM(tiny.lm)
    got = beam_search(
        counting,
        PROMPTS[1],
        num_beams=3,
        max_new_tokens=max_new,
        eos_ids=frozenset(tiny.eos_sets[1]),
        early_stopping=es,
    )
    assert counting.prefills == 1
    assert counting.steps == got.steps - 1
    assert counting.prefills + counting.steps == calls


@pytest.mark.parametrize("n", [2, 4])
def test_trace_records_pruned_beams_without_changing_the_result(tiny: Tiny, n: int) -> None:
    kw: dict[str, Any] = dict(
        num_beams=n,
        max_new_tokens=14,
        eos_token_id=tiny.eos_sets[1],
        num_return_sequences=n,
        no_repeat_ngram_size=2,
    )
    plain = ours(tiny, PROMPTS[0], **dict(kw))
    traced = ours(tiny, PROMPTS[0], trace=True, **dict(kw))
    assert plain.pruned == []
    assert traced.hypotheses == plain.hypotheses
    assert traced.steps == plain.steps
    assert traced.pruned, "a search over a random model prunes beams"
    for beam in traced.pruned:
        assert 1 <= beam.step <= traced.steps
        assert len(beam.token_ids) == beam.step - 1
        assert math.isfinite(beam.score) and beam.score <= 0.0
    assert [b.step for b in traced.pruned] == sorted(b.step for b in traced.pruned)


@pytest.mark.parametrize(
    "kw",
    [
        dict(num_beams=0, max_new_tokens=4),
        dict(num_beams=2, max_new_tokens=0),
        dict(num_beams=2, max_new_tokens=4, num_return_sequences=3),
        dict(num_beams=2, max_new_tokens=4, early_stopping="sometimes"),
        dict(num_beams=2, max_new_tokens=4, early_stopping=1),
    ],
)
def test_rejects_bad_arguments(tiny: Tiny, kw: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        beam_search(tiny.lm, PROMPTS[0], eos_ids=frozenset(tiny.eos_sets[0]), **kw)
