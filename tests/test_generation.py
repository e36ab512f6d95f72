"""The greedy token loop and the text stream, against transformers' generate()."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chatcli.decoding.registry import strategy_registry
from chatcli.decoding.settings import resolve_settings
from chatcli.generation.detokenize import IncrementalDetokenizer
from chatcli.generation.stream import complete, stream
from chatcli.loader import LoadedModel
from conftest import Tiny, tiny_loaded

GREEDY = resolve_settings(strategy_registry(), strategy="greedy")


@pytest.fixture(scope="module")
def loaded(tiny_model: Tiny) -> LoadedModel:
    return tiny_loaded(tiny_model)  # with the transformers model as .model, for generate()


def reference_ids(loaded: LoadedModel, prompt: list[int], n: int) -> list[int]:
    import torch

    out = loaded.model.generate(
        torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
        max_new_tokens=n, do_sample=False, eos_token_id=sorted(loaded.eos_ids),
        pad_token_id=loaded.tokenizer.pad_token_id,
    )
    new = out[0, len(prompt):].tolist()
    for i, t in enumerate(new):
        if t in loaded.eos_ids:
            return new[: i + 1]
    return new


PROMPTS = [
    "Hello there",
    "The capital of France is",
    "def add(a, b):",
    "Ünïcödé 🙂 中文",
    "a",
    "The quick brown fox jumps over the lazy dog. " * 4,
]


@pytest.mark.parametrize("text", PROMPTS)
@pytest.mark.parametrize("n", [1, 7, 40])
def test_greedy_equals_generate(loaded: LoadedModel, text: str, n: int) -> None:
    prompt = loaded.tokenizer(text, add_special_tokens=False)["input_ids"]
    gen = complete(loaded, prompt, GREEDY, n)
    assert gen.token_ids == reference_ids(loaded, prompt, n)
    assert gen.stats.completion_tokens == len(gen.token_ids)
    assert gen.stats.prompt_tokens == len(prompt)
    assert gen.stats.finish_reason == ("length" if len(gen.token_ids) == n else "stop")


def test_stops_at_every_eos_id_and_hides_it(loaded: LoadedModel) -> None:
    prompt = loaded.tokenizer("Hello there", add_special_tokens=False)["input_ids"]
    free = complete(loaded, prompt, GREEDY, 30).token_ids
    target = free[5]
    first = free.index(target)
    extra_eos = dataclasses.replace(loaded, eos_ids=loaded.eos_ids | {target})
    gen = stream(extra_eos, prompt, GREEDY, 30)
    events = list(gen)
    assert [e.token_id for e in events] == free[: first + 1]
    assert events[-1].finish_reason == "stop"
    assert [e.finish_reason for e in events[:-1]] == [None] * first
    # The EOS token itself is never printed (the target is an ordinary token here).
    assert gen.text == "".join(e.text for e in events)
    assert gen.text == loaded.tokenizer.decode(free[:first], skip_special_tokens=True)


def test_logprobs_are_log_softmax_of_the_chosen_token(loaded: LoadedModel) -> None:
    import torch

    prompt = loaded.tokenizer("Hello", add_special_tokens=False)["input_ids"]
    events = list(stream(loaded, prompt, GREEDY, 3))
    logits = loaded.model(torch.tensor([prompt])).logits[0, -1].float()
    expected = torch.log_softmax(logits, -1)[events[0].token_id].item()
    assert events[0].logprob == pytest.approx(expected, abs=1e-5)
    assert all(e.logprob <= 0 for e in events)


def test_an_answer_stopped_early_keeps_its_figures(loaded: LoadedModel) -> None:
    """Ctrl-C or SIGTERM stop the consumer between tokens: the stats count what came."""
    gen = stream(loaded, [5, 6, 7], GREEDY, 50)
    for n, _ in enumerate(gen, start=1):
        if n == 6:
            break
    s = gen.stats
    assert s.completion_tokens == 6 == len(gen.token_ids)
    assert s.decode_tokens_per_s > 0 and s.total_s >= s.time_to_first_token_s > 0
    assert s.finish_reason is None


def test_zero_budget_generates_nothing(loaded: LoadedModel) -> None:
    gen = complete(loaded, [5, 6, 7], GREEDY, 0)
    assert gen.token_ids == [] and gen.text == ""


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=399), max_size=40))
def test_detokenizer_deltas_join_to_full_decode(tiny_model: Tiny, ids: list[int]) -> None:
    tok = _tokenizer(tiny_model)
    detok = IncrementalDetokenizer(tok)
    deltas = [detok.push(i) for i in ids]
    assert all(not d.endswith("\ufffd") for d in deltas)
    text = "".join(deltas) + detok.flush()
    assert text == tok.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)


_TOK: dict[str, object] = {}


def _tokenizer(tiny: Tiny):  # type: ignore[no-untyped-def]
    if "tok" not in _TOK:
        from transformers import AutoTokenizer

        _TOK["tok"] = AutoTokenizer.from_pretrained(tiny.folder)
    return _TOK["tok"]


def test_detokenizer_holds_back_partial_utf8(tiny_model: Tiny) -> None:
    tok = _tokenizer(tiny_model)
    ids = tok("🙂", add_special_tokens=False)["input_ids"]
    assert len(ids) > 1  # the emoji is split into byte tokens
    detok = IncrementalDetokenizer(tok)
    out = [detok.push(i) for i in ids]
    assert out[:-1] == [""] * (len(ids) - 1)
    assert out[-1] == "🙂"
