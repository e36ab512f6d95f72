"""Long prompts are prefilled in chunks: the same answer as one pass over the prompt.

`NativeCausalLM.forward` (and so `NativeLanguageModel`, `GraphedLanguageModel` and
quantized models) and `HFLanguageModel.prefill` feed more than `prefill_chunk` (512)
prompt tokens in chunks of that size through the cache. Against transformers' own
chunked prefill that is bit-identical (test_native_llama). Against one pass over the
whole prompt it is not: the matmuls cover fewer rows and a chunk after cached positions
takes SDPA's explicit-mask path instead of `is_causal`, which sums in another order. So
the last position's logits are compared with `torch.testing.assert_close` at its default
tolerance (float32: rtol 1.3e-6, atol 1e-5; bfloat16: rtol 1.6e-2, atol 1e-5), the one
test_native_llama uses for a suffix prefilled over a cached prefix, and greedy decoding
after either prefill must pick the same tokens.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from chatcli.lm.graphs import GraphedLanguageModel
from chatcli.lm.hf import HFLanguageModel
from chatcli.lm.llama import NativeCausalLM
from chatcli.lm.native import NativeLanguageModel
from conftest import Tiny

PROMPT = 100  # tokens; with chunks of 16: six full chunks and one of 4


def _prompt(length: int, seed: int = 0) -> list[int]:
    return torch.randint(3, 300, (length,), generator=torch.Generator().manual_seed(seed)).tolist()


def _greedy(lm: Any, prompt: list[int], steps: int) -> tuple[Any, list[int]]:
    """The prefill's logits and the greedy tokens after it."""
    first, cache = lm.prefill(prompt)
    logits, tokens = first, []
    for _ in range(steps):
        tokens.append(int(logits[0].argmax()))
        logits, cache = lm.step(torch.tensor(tokens[-1:]), cache)
    return first, tokens


def _whole_and_chunked(lm: Any, owner: Any, prompt: list[int], steps: int, chunk: int,
                       monkeypatch: pytest.MonkeyPatch) -> list[tuple[Any, list[int]]]:
    runs = []
    for size in (0, chunk):  # 0: the whole prompt in one pass
        monkeypatch.setattr(owner, "prefill_chunk", size)
        runs.append(_greedy(lm, prompt, steps))
    return runs


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_chunked_prefill_answers_like_one_pass(
    tiny_model: Tiny, dtype: torch.dtype, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = NativeCausalLM.from_folder(tiny_model.folder, dtype)
    lm = NativeLanguageModel(model)
    (whole, want), (chunked, got) = _whole_and_chunked(
        lm, model, _prompt(PROMPT), 30, 16, monkeypatch)
    assert chunked.shape == whole.shape == (1, model.vocab_size) and chunked.dtype == dtype
    torch.testing.assert_close(chunked, whole)
    assert got == want


def test_the_default_chunk_is_512_positions(tiny_model: Tiny) -> None:
    """1,100 prompt tokens: chunks of 512, 512 and 76, in one cache allocation; the logits
    kept (the last 80: two chunks) agree with those of the same chunks fed one by one (within
    float rounding: the head projects 4 rows of the middle chunk here, 512 there, and CPUs
    round those shapes differently)."""
    model = NativeCausalLM.from_folder(tiny_model.folder, torch.float32)
    assert NativeCausalLM.prefill_chunk == HFLanguageModel.prefill_chunk == 512
    ids = torch.tensor([_prompt(1100, seed=3)])
    logits, cache = model.forward(ids, None, logits_to_keep=80)
    assert logits.shape == (1, 80, model.vocab_size) and len(cache) == 1100
    assert all(t is not None and t.shape[2] == 1100 for t in cache.keys + cache.values)
    model.prefill_chunk = 0
    by_hand, pieces = None, []
    for start in (0, 512, 1024):
        out, by_hand = model.forward(ids[:, start:start + 512], by_hand, logits_to_keep=0)
        pieces.append(out)
    torch.testing.assert_close(logits, torch.cat(pieces, dim=1)[:, -80:])
    whole, _ = model.forward(ids, None, logits_to_keep=80)
    torch.testing.assert_close(logits, whole)


def test_a_long_suffix_after_a_cached_prefix_is_chunked(
    tiny_model: Tiny, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the prompt cache feeds after a reused prefix: chunks continue its positions."""
    model = NativeCausalLM.from_folder(tiny_model.folder, torch.float32)
    lm = NativeLanguageModel(model)
    prompt = _prompt(PROMPT, seed=4)
    runs = []
    for size in (0, 16):
        monkeypatch.setattr(model, "prefill_chunk", size)
        _, cache = lm.prefill(prompt[:30])
        logits, cache = lm.prefill(prompt[30:], cache)
        assert len(cache) == PROMPT
        runs.append(logits)
    torch.testing.assert_close(runs[1], runs[0])


@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_quantized_chunked_prefill(
    tiny_model: Tiny, mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fast ops (float32 cache, fused layers) chunk the same way."""
    model = NativeCausalLM.from_folder(tiny_model.folder, torch.float32)
    model.quantize(mode)
    (whole, want), (chunked, got) = _whole_and_chunked(
        NativeLanguageModel(model), model, _prompt(PROMPT, seed=5), 20, 16, monkeypatch)
    torch.testing.assert_close(chunked, whole)
    assert got == want


def test_graphed_prefill_is_chunked_into_the_static_cache(
    tiny_model: Tiny, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = NativeCausalLM.from_folder(tiny_model.folder, torch.float32)
    graphed = GraphedLanguageModel(model, 160)
    (whole, want), (chunked, got) = _whole_and_chunked(
        graphed, model, _prompt(PROMPT, seed=6), 20, 16, monkeypatch)
    torch.testing.assert_close(chunked, whole)
    assert got == want
    assert graphed._cache is not None and graphed._cache.keys[0].shape[2] == 160


def test_transformers_prefill_is_chunked(
    tiny_model: Tiny, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`HFLanguageModel` feeds the chunks through transformers' cache: bit-identical to
    `generate(prefill_chunk_size=16)`, close to one pass, the same greedy tokens."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model.folder, dtype=torch.float32).eval()
    lm = HFLanguageModel(model)
    prompt = _prompt(PROMPT, seed=7)
    (whole, want), (chunked, got) = _whole_and_chunked(lm, lm, prompt, 20, 16, monkeypatch)
    torch.testing.assert_close(chunked, whole)
    assert got == want
    out = model.generate(torch.tensor([prompt]), do_sample=False, max_new_tokens=20,
                         prefill_chunk_size=16, eos_token_id=None, output_logits=True,
                         return_dict_in_generate=True)
    assert torch.equal(chunked, out.logits[0]) and got == out.sequences[0, PROMPT:].tolist()


def test_a_rebuilt_transformers_cache_is_fed_in_chunks(
    tiny_model: Tiny, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """hf.py's rebuild of a cache that cannot roll back goes through the same chunks."""
    from transformers import AutoModelForCausalLM

    lm = HFLanguageModel(AutoModelForCausalLM.from_pretrained(tiny_model.folder,
                                                             dtype=torch.float32))
    lm.prefill_chunk = 16
    fed: list[int] = []
    forward = lm._forward_raw
    monkeypatch.setattr(lm, "_forward_raw",
                        lambda ids, cache: (fed.append(ids.shape[1]), forward(ids, cache))[1])
    _, cache = lm.prefill(_prompt(40, seed=8))
    assert fed == [16, 16, 8]
    lm._rebuild(cache, _prompt(40, seed=8)[:35])
    assert fed == [16, 16, 8, 16, 16, 3] and int(cache.get_seq_length()) == 35
