"""The native Llama/Qwen2 forward pass is bit-identical to transformers on CPU.

Tiny random-weight models (llama tied/untied, qwen2 with q/k/v biases, llama3
RoPE scaling) are built with transformers and saved to a temporary folder; the
native implementation loads the same files. Every comparison of the same operations on
the same shapes is `torch.equal` (the same maths in other shapes is bounded instead: CPUs
round it differently):

* prefill: our last-position logits equal `model(ids, logits_to_keep=1).logits`,
  which is what transformers' `generate` computes. They need not equal
  `model(ids).logits[:, -1:]`: that projects all 20 positions in one matmul, and
  in float32 a row's result then differs in the last bits from projecting it
  alone (the BLAS kernel and blocking depend on the number of rows; here
  bfloat16 happened to agree, float32 did not). So the all-positions comparison
  uses `logits_to_keep=0` on both sides.
* decode: greedy tokens and every step's logits equal `generate(do_sample=False)`.
* cache edits (crop + re-feed, expand, reorder) equal the same edits made to
  transformers' DynamicCache, where transformers takes its other SDPA paths
  (a materialised boolean causal mask with `repeat_kv`, several rows).
"""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from chatcli.errors import ChatcliError
from chatcli.lm.llama import (
    KVCache,
    ModelArgs,
    NativeCausalLM,
    RopeParams,
    UnsupportedModelError,
    supports,
)

SIZE = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 256,
    "vocab_size": 300,
    # No EOS, so `generate` always runs the full number of steps.
    "bos_token_id": None,
    "eos_token_id": None,
    "pad_token_id": None,
}
LLAMA3_ROPE = {
    "rope_type": "llama3",
    "rope_theta": 10000.0,
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 64,
}
CASES = ["llama-tied", "llama-untied", "qwen2", "llama3-rope"]
DTYPES = [torch.float32, torch.bfloat16]


def _config(case: str) -> Any:
    from transformers import LlamaConfig, Qwen2Config

    if case == "qwen2":
        return Qwen2Config(**SIZE)
    if case == "llama3-rope":  # transformers 5.x spelling; 4.x `rope_scaling` is tested below
        return LlamaConfig(**SIZE, rope_parameters=dict(LLAMA3_ROPE))
    return LlamaConfig(**SIZE, tie_word_embeddings=case == "llama-tied")


@pytest.fixture(scope="module", params=CASES)
def folder(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(_config(request.param))
    with torch.no_grad():  # larger than the default init, so outputs vary
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.normal_(1.0, 0.2)
            else:  # 2-D weights, and qwen2's q/k/v biases
                param.normal_(0, 0.3)
    path = tmp_path_factory.mktemp(request.param)
    model.save_pretrained(path)
    return path


_LOADED: dict[tuple[Path, torch.dtype], tuple[Any, NativeCausalLM]] = {}


def _load(folder: Path, dtype: torch.dtype) -> tuple[Any, NativeCausalLM]:
    """transformers' model and ours from the same folder (neither is changed by the tests)."""
    from transformers import AutoModelForCausalLM

    if (folder, dtype) not in _LOADED:
        ref = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).eval()
        assert ref.config._attn_implementation == "sdpa"
        _LOADED[folder, dtype] = ref, NativeCausalLM.from_folder(folder, dtype)
    return _LOADED[folder, dtype]


def _ids(length: int) -> torch.Tensor:
    return torch.randint(0, SIZE["vocab_size"], (1, length), generator=torch.manual_seed(1))


def _hf_forward(ref: Any, ids: torch.Tensor, cache: Any, keep: int = 1) -> torch.Tensor:
    with torch.inference_mode():
        return ref(ids, cache=cache, use_cache=True, logits_to_keep=keep).logits


@pytest.mark.parametrize("dtype", DTYPES)
def test_prefill_logits_are_identical(folder: Path, dtype: torch.dtype) -> None:
    ref, lm = _load(folder, dtype)
    ids = _ids(20)
    logits, cache = lm.forward(ids, None)
    assert logits.shape == (1, 1, SIZE["vocab_size"]) and logits.dtype == dtype
    assert len(cache) == 20
    assert torch.equal(logits, _hf_forward(ref, ids, None, keep=1))
    every, _ = lm.forward(ids, None, logits_to_keep=0)
    assert every.shape == (1, 20, SIZE["vocab_size"])
    assert torch.equal(every, _hf_forward(ref, ids, None, keep=0))


def _greedy(lm: NativeCausalLM, ids: torch.Tensor, steps: int) -> tuple[list[int], list[Any]]:
    logits, cache = lm.forward(ids, None)
    tokens, step_logits = [], []
    for _ in range(steps):
        step_logits.append(logits[0, -1])
        tokens.append(int(logits[0, -1].argmax()))
        logits, cache = lm.forward(torch.tensor([[tokens[-1]]]), cache)
    return tokens, step_logits


@pytest.mark.parametrize("dtype", DTYPES)
def test_greedy_decode_matches_generate(
    folder: Path, dtype: torch.dtype, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(KVCache, "initial_capacity", 4)  # so that decoding grows the cache
    ref, lm = _load(folder, dtype)
    prompt, steps = 20, 15
    ids = _ids(prompt)
    out = ref.generate(
        ids, do_sample=False, max_new_tokens=steps, output_logits=True, return_dict_in_generate=True
    )
    tokens, step_logits = _greedy(lm, ids, steps)
    assert tokens == out.sequences[0, prompt:].tolist()
    assert len(out.logits) == steps
    for ours, theirs in zip(step_logits, out.logits, strict=True):
        assert torch.equal(ours.float(), theirs[0].float())


@pytest.mark.parametrize("dtype", DTYPES)
def test_crop_and_refeed(folder: Path, dtype: torch.dtype) -> None:
    """Cache edits equal the same edits to transformers' DynamicCache (same history each side:
    a position's K/V depends, in its last bits, on how many positions its matmul covered)."""
    from transformers import DynamicCache

    ref, lm = _load(folder, dtype)
    ids = _ids(20)
    full, cache = lm.forward(ids, None)
    hf_cache = DynamicCache(config=ref.config)
    _hf_forward(ref, ids, hf_cache)
    cache.crop(12)
    hf_cache.crop(-8)
    assert len(cache) == 12
    # 8 tokens after 12 cached ones: transformers' boolean mask + repeat_kv path
    refed, cache = lm.forward(ids[:, 12:], cache)
    assert len(cache) == 20
    assert torch.equal(refed, _hf_forward(ref, ids[:, 12:], hf_cache))
    # Another SDPA kernel path than the one-shot prefill (is_causal): equal up to rounding only.
    torch.testing.assert_close(refed, full)
    cache.crop(19)
    hf_cache.crop(-1)
    last, cache = lm.forward(ids[:, 19:], cache)
    assert torch.equal(last, _hf_forward(ref, ids[:, 19:], hf_cache))
    with pytest.raises(ValueError):
        cache.crop(21)

    # Reusing a shorter prompt's cache (prompt caching), then decoding.
    prefix, cache = lm.forward(ids[:, :12], None)
    hf_cache = DynamicCache(config=ref.config)
    assert torch.equal(prefix, _hf_forward(ref, ids[:, :12], hf_cache))
    rest, cache = lm.forward(ids[:, 12:], cache)
    assert torch.equal(rest, _hf_forward(ref, ids[:, 12:], hf_cache))
    step = torch.tensor([[int(rest[0, -1].argmax())]])
    assert torch.equal(lm.forward(step, cache)[0], _hf_forward(ref, step, hf_cache))


@pytest.mark.parametrize("dtype", DTYPES)
def test_expand_and_reorder(folder: Path, dtype: torch.dtype) -> None:
    from transformers import DynamicCache

    ref, lm = _load(folder, dtype)
    ids = _ids(20)
    _, cache = lm.forward(ids, None)
    hf_cache = DynamicCache(config=ref.config)
    _hf_forward(ref, ids, hf_cache)

    one_row, _ = lm.forward(torch.tensor([[7]]), copy.deepcopy(cache))
    cache.expand(3)
    hf_cache.batch_repeat_interleave(3)
    same = torch.tensor([[7], [7], [7]])
    single = copy.deepcopy(cache)
    logits, cache = lm.forward(same, cache)
    assert logits.shape == (3, 1, SIZE["vocab_size"])
    assert torch.equal(logits, _hf_forward(ref, same, hf_cache))
    # The rows are identical up to rounding only: torch's CPU flash-attention kernel splits
    # (row, head) pairs over threads, and pairs computed by another thread than the first can
    # differ in the last bit (deterministically; transformers gets the very same bits, above).
    # On one thread the rows are bit-identical. Against the 1-row cache's logits they are
    # close only: in float32 a 3-row matmul may round differently from a 1-row one.
    torch.testing.assert_close(logits, one_row.expand(3, -1, -1))
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        logits, _ = lm.forward(same, single)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(logits[0], logits[1]) and torch.equal(logits[0], logits[2])

    different = torch.tensor([[1], [2], [3]])
    logits, cache = lm.forward(different, cache)
    assert torch.equal(logits, _hf_forward(ref, different, hf_cache))
    before = [t[:, :, : len(cache)].clone() for t in cache.keys + cache.values if t is not None]
    beams = torch.tensor([2, 0, 0])
    cache.reorder(beams)
    hf_cache.reorder_cache(beams)
    after = [t[:, :, : len(cache)] for t in cache.keys + cache.values if t is not None]
    assert len(after) == 2 * SIZE["num_hidden_layers"] and len(cache) == 22
    assert all(torch.equal(new, old[beams]) for new, old in zip(after, before, strict=True))
    logits, cache = lm.forward(same, cache)
    assert torch.equal(logits, _hf_forward(ref, same, hf_cache))
    assert len(cache) == 23
    with pytest.raises(ValueError):
        cache.expand(2)  # only a 1-row cache can be expanded
    with pytest.raises(ValueError):
        lm.forward(torch.tensor([[1]]), cache)  # 1 row against a 3-row cache


@pytest.mark.parametrize("dtype", DTYPES)
def test_chunked_prefill_equals_transformers_chunked_prefill(
    folder: Path, dtype: torch.dtype, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A prompt longer than `prefill_chunk` is fed in chunks, as transformers'
    `generate(prefill_chunk_size=...)` feeds it: the same logits and tokens, bit for bit."""
    from transformers import DynamicCache

    ref, lm = _load(folder, dtype)
    monkeypatch.setattr(lm, "prefill_chunk", 8)
    ids = _ids(20)  # chunks of 8, 8 and 4
    hf_cache = DynamicCache(config=ref.config)
    for start in (0, 8, 16):
        theirs = _hf_forward(ref, ids[:, start:start + 8], hf_cache)
    ours, cache = lm.forward(ids, None)
    assert len(cache) == 20 and torch.equal(ours, theirs)
    # All positions, and the last 6 (two chunks), against the same chunks fed one by one.
    # These run the same maths in other shapes (the head projects 2 rows of the middle
    # chunk for `last6`, 8 for `every`; the hand-fed cache grows where `forward` reserved
    # 20 positions), which CPUs round differently: bounded, not bit-equal.
    every, _ = lm.forward(ids, None, logits_to_keep=0)
    last6, _ = lm.forward(ids, None, logits_to_keep=6)
    by_hand, chunks = KVCache(SIZE["num_hidden_layers"]), []
    for start in (0, 8, 16):
        chunks.append(lm.forward(ids[:, start:start + 8], by_hand, logits_to_keep=0)[0])
    assert every.shape == (1, 20, SIZE["vocab_size"])
    assert last6.shape == (1, 6, SIZE["vocab_size"])
    torch.testing.assert_close(every, torch.cat(chunks, dim=1))
    torch.testing.assert_close(last6, every[:, -6:])

    steps = 12
    out = ref.generate(ids, do_sample=False, max_new_tokens=steps, prefill_chunk_size=8,
                       output_logits=True, return_dict_in_generate=True)
    tokens, step_logits = _greedy(lm, ids, steps)
    assert tokens == out.sequences[0, 20:].tolist()
    for mine, theirs in zip(step_logits, out.logits, strict=True):
        assert torch.equal(mine.float(), theirs[0].float())


def test_new_cache_is_empty() -> None:
    assert len(KVCache(2)) == 0


def test_transformers_4_config_and_sharded_weights(tmp_path: Path) -> None:
    """A 4.x config.json (`rope_theta` + `rope_scaling`) and sharded safetensors load the same."""
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(_config("llama3-rope"))
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0, 0.3)
    model.save_pretrained(tmp_path / "new", max_shard_size="20KB")
    assert (tmp_path / "new" / "model.safetensors.index.json").exists()
    shutil.copytree(tmp_path / "new", tmp_path / "old")
    config = json.loads((tmp_path / "new" / "config.json").read_text())
    rope = config.pop("rope_parameters")
    config["rope_theta"] = rope.pop("rope_theta")
    rope["type"] = rope.pop("rope_type")
    config["rope_scaling"] = rope
    (tmp_path / "old" / "config.json").write_text(json.dumps(config))

    ids = _ids(20)
    expected = None
    for variant in ("new", "old"):
        ref = LlamaForCausalLM.from_pretrained(tmp_path / variant, dtype=torch.float32).eval()
        theirs = _hf_forward(ref, ids, None)
        expected = theirs if expected is None else expected
        assert torch.equal(theirs, expected), variant  # transformers reads both alike
        ours, _ = NativeCausalLM.from_folder(tmp_path / variant, torch.float32).forward(ids, None)
        assert torch.equal(ours, expected), variant


LLAMA = {"model_type": "llama", "num_attention_heads": 4, "num_key_value_heads": 2,
         "hidden_size": 32, "num_hidden_layers": 2, "vocab_size": 300}
QWEN2 = {**LLAMA, "model_type": "qwen2"}


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        (LLAMA, True),
        ({**LLAMA, "rope_parameters": {"rope_type": "default", "rope_theta": 1e5}}, True),
        ({**LLAMA, "rope_theta": 5e5, "rope_scaling": {**LLAMA3_ROPE}}, True),
        ({**LLAMA, "rope_scaling": {"type": "llama3", **LLAMA3_ROPE}}, True),
        ({**LLAMA, "rope_scaling": {"type": "linear", "factor": 2.0}}, True),
        ({**LLAMA, "rope_scaling": {"type": "linear"}}, False),
        ({**LLAMA, "rope_parameters": {"rope_type": "dynamic", "factor": 2.0}}, False),
        ({**LLAMA, "rope_parameters": {"rope_type": "yarn", "factor": 2.0}}, False),
        ({**LLAMA, "partial_rotary_factor": 0.5}, False),
        ({**LLAMA, "hidden_act": "gelu"}, False),
        ({**LLAMA, "quantization_config": {"quant_method": "bitsandbytes"}}, False),
        ({**QWEN2, "use_sliding_window": False, "sliding_window": 4096}, True),
        ({**QWEN2, "use_sliding_window": True, "sliding_window": 4096}, True),
        ({**QWEN2, "use_sliding_window": True, "sliding_window": 0}, False),
        ({**LLAMA, "layer_types": ["full_attention", "sliding_attention"]}, False),
        ({**LLAMA, "model_type": "mistral"}, True),
        ({**LLAMA, "model_type": "phi3", "rope_scaling": {"type": "longrope"}}, False),
        ({**LLAMA, "model_type": "gpt2"}, False),
        ({**LLAMA, "num_key_value_heads": 3}, False),
        ({k: v for k, v in LLAMA.items() if k != "hidden_size"}, False),
    ],
)
def test_supports(config: dict, expected: bool) -> None:
    assert supports({"max_position_embeddings": 256, **config}) is expected


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({**LLAMA, "model_type": "gpt2"}, "gpt2 architecture has no native implementation"),
        ({**QWEN2, "use_sliding_window": True},
         "qwen2 sliding_window must be a positive integer (got None)"),
        ({**LLAMA, "layer_types": ["sliding_attention"] * 2},
         "llama with layer types other than full attention is not native"),
        ({**LLAMA, "hidden_act": "gelu"}, "llama with activation 'gelu' is not native"),
        ({**LLAMA, "rope_scaling": {"type": "yarn", "factor": 2.0}},
         "RoPE type 'yarn' is not native"),
        ({**LLAMA, "rope_scaling": {"type": "llama3", "factor": 8.0}},
         "llama3 RoPE scaling lacks low_freq_factor, high_freq_factor"),
        ({**LLAMA, "partial_rotary_factor": 0.5}, "partial_rotary_factor 0.5 is not native"),
        ({"model_type": "llama", "hidden_size": 32},
         "config.json lacks vocab_size, num_hidden_layers, num_attention_heads"),
        ({**LLAMA, "num_key_value_heads": 3},
         "4 attention heads do not split into 3 key/value heads"),
        ({**LLAMA, "hidden_size": 0}, "hidden_size must be a positive integer (got 0)"),
        ({**LLAMA, "head_dim": 7}, "RoPE needs an even head_dim (got 7)"),
    ],
)
def test_model_args_name_what_they_refuse(config: dict, message: str) -> None:
    with pytest.raises(UnsupportedModelError) as raised:
        ModelArgs.from_config(config)
    assert str(raised.value).startswith(message)
    assert isinstance(raised.value, ChatcliError) and isinstance(raised.value, ValueError)


def test_model_args_read_the_config_once() -> None:
    args = ModelArgs.from_config({**QWEN2, "head_dim": 16, "rms_norm_eps": 1e-5,
                                  "rope_theta": 5e5, "tie_word_embeddings": True})
    assert args == ModelArgs(
        model_type="qwen2", vocab_size=300, hidden_size=32, num_layers=2, heads=4, kv_heads=2,
        head_dim=16, rms_norm_eps=1e-5, rope=RopeParams("default", 5e5),
        tie_word_embeddings=True, qkv_bias=True, o_bias=False, mlp_bias=False,
    )
    llama = ModelArgs.from_config({**LLAMA, "num_key_value_heads": None,
                                   "rope_scaling": {"type": "llama3", **LLAMA3_ROPE}})
    assert (llama.kv_heads, llama.head_dim, llama.qkv_bias) == (4, 8, False)
    assert llama.rope == RopeParams("llama3", 10000.0, 8.0, 1.0, 4.0, 64)


def test_from_folder_rejects_unsupported(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({**LLAMA, "model_type": "gpt2"}))
    with pytest.raises(ValueError, match="does not support"):
        NativeCausalLM.from_folder(tmp_path, torch.float32)


def test_does_not_import_transformers(tmp_path: Path) -> None:
    from transformers import LlamaForCausalLM

    LlamaForCausalLM(_config("llama-tied")).save_pretrained(tmp_path)
    code = (
        "import sys, torch\n"
        "from chatcli.lm.llama import NativeCausalLM\n"
        f"lm = NativeCausalLM.from_folder({str(tmp_path)!r}, torch.bfloat16)\n"
        "logits, cache = lm.forward(torch.tensor([[1, 2, 3]]), None)\n"
        "assert logits.shape == (1, 1, 300), logits.shape\n"
        "assert not [m for m in sys.modules if m.split('.')[0] == 'transformers']\n"
    )
    root = Path(__file__).resolve().parents[1]
    subprocess.run([sys.executable, "-c", code], check=True, cwd=root)


def test_safetensors_reader_matches_the_library(tmp_path: Path) -> None:
    """chatcli reads weights tensor by tensor (no mapping, for a lower load peak); the
    result equals safetensors' own loader, converted the same way."""
    from safetensors.torch import load_file, save_file

    from chatcli.lm.llama import _read_safetensors

    tensors = {
        "a": torch.randn(3, 4),
        "b": torch.randn(5).to(torch.bfloat16),
        "ids": torch.arange(6, dtype=torch.int64).view(2, 3),
        "empty": torch.zeros(0, 7),
    }
    path = tmp_path / "w.safetensors"
    save_file(tensors, str(path))
    for dtype in (torch.float32, torch.bfloat16):
        got = _read_safetensors(path, dtype, torch.device("cpu"))
        want = {k: v.to(dtype) for k, v in load_file(str(path)).items()}
        assert got.keys() == want.keys()
        for key in want:
            assert got[key].shape == want[key].shape and torch.equal(got[key], want[key])
    path.write_bytes(path.read_bytes()[:-8])  # cut short
    with pytest.raises(ValueError, match=r"w\.safetensors: "):
        _read_safetensors(path, torch.float32, torch.device("cpu"))
