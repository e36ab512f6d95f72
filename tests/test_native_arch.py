"""Every architecture of the registry runs natively, bit-identical to transformers on CPU.

Tiny random-weight models of each architecture (`CASES`: Qwen3 with QK-norm and biases,
Qwen2/Qwen3 with a sliding window on their upper layer, Mistral with and without one,
Phi-3 with fused projections and a window, Gemma 3 with its local/global layers, two
RoPE bases, sandwich norms, embedding scale, GeGLU, softcapped logits and a linear-scaled
global RoPE) are built with transformers and saved with the ChatML tokenizer of conftest;
every sliding window is 8 positions, so 20-token prompts and 40-step decodes run far past
it, and the windowed cache drops positions while decoding. The comparisons follow
test_native_llama's rule: `torch.equal` between the same operations on the same shapes
(prefill logits, every greedy step's logits against `generate(output_logits=True)`, cache
edits against the same edits to transformers' cache, chunked prefill against
`generate(prefill_chunk_size=...)`), bounds elsewhere (the fast ops of quantized models and
the static decode step against the float32 error measured against float64). Chat turns
with prompt-cache reuse, /retry and /undo, and beam search are compared token for token
with `generate()` of each packed prompt, as test_transformers_path does.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from test_native_llama import _hf_forward, _load
from test_transformers_path import _tokenizer, chat_script_matches_generate

from chatcli.chat.session import ChatSession, DecodingRequest
from chatcli.conversation import Conversation
from chatcli.decoding.registry import strategy_registry
from chatcli.errors import ChatcliError
from chatcli.lm import models
from chatcli.lm.graphs import GraphedLanguageModel
from chatcli.lm.llama import SUPPORTED_MODEL_TYPES, KVCache, ModelArgs, NativeCausalLM, RopeParams
from chatcli.lm.native import NativeLanguageModel
from chatcli.lm.quant import Dense
from chatcli.loader import LoadedModel, load_model
from chatcli.progress import SilentReporter
from chatcli.registry import load_registry
from chatcli.runtime import Runtime
from conftest import Tiny, answer_ids, reference_generate, run_cli

WINDOW = 8
SIZE = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 3,
        "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 256}
GEMMA3 = {"head_dim": 16, "sliding_window": WINDOW, "query_pre_attn_scalar": 24,
          "layer_types": ["sliding_attention", "full_attention", "sliding_attention"]}
CASES: dict[str, tuple[str, dict[str, Any]]] = {
    "qwen3": ("Qwen3Config", {"head_dim": 16, "attention_bias": True}),
    "qwen3-sliding": ("Qwen3Config", {"head_dim": 16, "use_sliding_window": True,
                                      "sliding_window": WINDOW, "max_window_layers": 1}),
    "qwen2-sliding": ("Qwen2Config", {"use_sliding_window": True, "sliding_window": WINDOW,
                                      "max_window_layers": 1, "tie_word_embeddings": True}),
    "mistral": ("MistralConfig", {"sliding_window": WINDOW}),
    "mistral-full": ("MistralConfig", {"sliding_window": None, "head_dim": 16}),
    "phi3": ("Phi3Config", {"sliding_window": WINDOW}),
    "gemma3": ("Gemma3TextConfig", {
        **GEMMA3, "final_logit_softcapping": 1.0, "tie_word_embeddings": False,
        "rope_parameters": {"full_attention": {"rope_type": "linear", "factor": 4.0,
                                               "rope_theta": 1e6},
                            "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}}}),
    "gemma3-tied": ("Gemma3TextConfig", {
        **GEMMA3, "layer_types": ["full_attention", "sliding_attention", "sliding_attention"]}),
}
SLIDING = [case for case, (_, config) in CASES.items()
           if config.get("sliding_window") and config.get("use_sliding_window", True)]
DTYPES = [torch.float32, torch.bfloat16]


def build(folder: Path, case: str) -> Path:
    """A tiny random `case` model with conftest's tokenizer, saved to `folder`."""
    import transformers
    from transformers import AutoModelForCausalLM

    tok = _tokenizer()
    kind, extra = CASES[case]
    config = getattr(transformers, kind)(
        **SIZE, vocab_size=len(tok), bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, **extra)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    gemma = case.startswith("gemma")
    with torch.no_grad():  # larger than the default init, so outputs vary
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):  # Gemma's norms scale by (1 + weight)
                param.normal_(0.0 if gemma else 1.0, 0.2)
            elif gemma and name.endswith("embed_tokens.weight"):  # scaled by sqrt(hidden):
                param.normal_(0, 0.3 / 32**0.5)  # as large as the others' in the stream
            else:
                param.normal_(0, 0.3)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module", params=list(CASES))
def case(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
         ) -> tuple[str, Path]:
    return request.param, build(tmp_path_factory.mktemp(request.param), request.param)


def _ids(lm: NativeCausalLM, length: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, lm.vocab_size, (1, length), generator=torch.manual_seed(seed))


def _hf_cache(ref: Any) -> Any:
    """transformers' cache for `ref`, recording its sliding layers' past so that it can be
    cropped back (as `generate` does for assisted decoding)."""
    from transformers import DynamicCache

    cache = DynamicCache(config=ref.config)
    cache.activate_past_recording()
    return cache


def _greedy(lm: NativeCausalLM, ids: torch.Tensor, steps: int
            ) -> tuple[list[int], list[torch.Tensor], KVCache]:
    logits, cache = lm.forward(ids, None)
    tokens, step_logits = [], []
    for _ in range(steps):
        step_logits.append(logits[0, -1])
        tokens.append(int(logits[0, -1].argmax()))
        logits, cache = lm.forward(torch.tensor([[tokens[-1]]]), cache)
    return tokens, step_logits, cache


def test_the_registry_names_every_architecture() -> None:
    expected = {"llama", "qwen2", "qwen3", "mistral", "phi3", "gemma3_text"}
    assert SUPPORTED_MODEL_TYPES == models.SUPPORTED_MODEL_TYPES == expected
    assert models.supported_model_types() == expected
    registry = models.ArchitectureRegistry()
    registry.register("mine", models.args_of)
    with pytest.raises(ValueError, match="'mine' is already registered by built-in"):
        registry.register("mine", models.args_of)
    with pytest.raises(models.UnsupportedModelError,
                       match=r"^gpt2 architecture has no native implementation$"):
        registry.args({"model_type": "gpt2"})


@pytest.mark.parametrize("dtype", DTYPES)
def test_prefill_logits_are_identical(case: tuple[str, Path], dtype: torch.dtype) -> None:
    ref, lm = _load(case[1], dtype)
    ids = _ids(lm, 20)
    logits, cache = lm.forward(ids, None)
    assert logits.shape == (1, 1, lm.vocab_size) and logits.dtype == dtype
    assert len(cache) == 20
    assert torch.equal(logits, _hf_forward(ref, ids, None, keep=1))
    every, _ = lm.forward(ids, None, logits_to_keep=0)
    assert torch.equal(every, _hf_forward(ref, ids, None, keep=0))


@pytest.mark.parametrize("dtype", DTYPES)
def test_greedy_decode_matches_generate(
    case: tuple[str, Path], dtype: torch.dtype, monkeypatch: pytest.MonkeyPatch
) -> None:
    """40 steps after a 20-token prompt: a sliding layer's storage is compacted on the
    way (its views then start elsewhere in a new buffer) and stays bounded."""
    monkeypatch.setattr(KVCache, "initial_capacity", 4)  # so that decoding grows the cache
    ref, lm = _load(case[1], dtype)
    prompt, steps = 20, 40
    ids = _ids(lm, prompt)
    out = ref.generate(
        ids, do_sample=False, max_new_tokens=steps, output_logits=True,
        return_dict_in_generate=True, eos_token_id=None)
    tokens, step_logits, cache = _greedy(lm, ids, steps)
    assert tokens == out.sequences[0, prompt:].tolist()
    # the weights make greedy wander, not repeat one token (a tied Gemma head, scaled like
    # its embeddings, favours the token just seen: its answer settles on one)
    assert len(set(tokens)) > 3 or case[0] == "gemma3-tied"
    for ours, theirs in zip(step_logits, out.logits, strict=True):
        assert torch.equal(ours.float(), theirs[0].float())
    for layer, window, keys, start in zip(lm.layers, cache.windows, cache.keys, cache.starts,
                                          strict=True):
        assert keys is not None and window == layer.window
        if window is None:
            assert start == 0 and keys.shape[2] >= prompt + steps
        else:
            assert start > 0 and keys.shape[2] == 4 * WINDOW


@pytest.mark.parametrize("dtype", DTYPES)
def test_crop_and_refeed(case: tuple[str, Path], dtype: torch.dtype) -> None:
    """Cache edits equal the same edits to transformers' cache (same history each side)."""
    ref, lm = _load(case[1], dtype)
    ids = _ids(lm, 20)
    _, cache = lm.forward(ids, None)
    hf_cache = _hf_cache(ref)
    _hf_forward(ref, ids, hf_cache)
    assert cache.can_crop(12)
    cache.crop(12)
    hf_cache.crop(-8)
    # 8 tokens after 12 cached ones: a mask, and for a sliding layer the 7 before them
    refed, cache = lm.forward(ids[:, 12:], cache)
    assert len(cache) == 20
    assert torch.equal(refed, _hf_forward(ref, ids[:, 12:], hf_cache))
    cache.crop(19)
    hf_cache.crop(-1)
    last, cache = lm.forward(ids[:, 19:], cache)
    assert torch.equal(last, _hf_forward(ref, ids[:, 19:], hf_cache))

    # Reusing a shorter prompt's cache (prompt caching), then decoding.
    prefix, cache = lm.forward(ids[:, :12], None)
    hf_cache = _hf_cache(ref)
    assert torch.equal(prefix, _hf_forward(ref, ids[:, :12], hf_cache))
    rest, cache = lm.forward(ids[:, 12:], cache)
    assert torch.equal(rest, _hf_forward(ref, ids[:, 12:], hf_cache))
    step = torch.tensor([[int(rest[0, -1].argmax())]])
    assert torch.equal(lm.forward(step, cache)[0], _hf_forward(ref, step, hf_cache))


@pytest.mark.parametrize("dtype", DTYPES)
def test_expand_and_reorder(case: tuple[str, Path], dtype: torch.dtype) -> None:
    """Beam-search edits (several rows; a sliding layer's mask once its keys reach the
    window) equal the same edits to transformers' cache."""
    ref, lm = _load(case[1], dtype)
    ids = _ids(lm, 20)
    _, cache = lm.forward(ids, None)
    hf_cache = _hf_cache(ref)
    _hf_forward(ref, ids, hf_cache)
    cache.expand(3)
    hf_cache.batch_repeat_interleave(3)
    for rows in ([[7], [7], [7]], [[1], [2], [3]]):
        step = torch.tensor(rows)
        logits, cache = lm.forward(step, cache)
        assert logits.shape == (3, 1, lm.vocab_size)
        assert torch.equal(logits, _hf_forward(ref, step, hf_cache))
    beams = torch.tensor([2, 0, 0])
    cache.reorder(beams)
    hf_cache.reorder_cache(beams)
    for _ in range(12):  # past the window
        step = logits[:, -1].argmax(-1, keepdim=True)
        logits, cache = lm.forward(step, cache)
        assert torch.equal(logits, _hf_forward(ref, step, hf_cache))
    assert len(cache) == 34


@pytest.mark.parametrize("dtype", DTYPES)
def test_chunked_prefill_equals_transformers_chunked_prefill(
    case: tuple[str, Path], dtype: torch.dtype, monkeypatch: pytest.MonkeyPatch
) -> None:
    ref, lm = _load(case[1], dtype)
    monkeypatch.setattr(lm, "prefill_chunk", 8)
    ids = _ids(lm, 20)  # chunks of 8, 8 and 4, each past the window of the one before
    steps = 12
    out = ref.generate(ids, do_sample=False, max_new_tokens=steps, prefill_chunk_size=8,
                       output_logits=True, return_dict_in_generate=True, eos_token_id=None)
    tokens, step_logits, _ = _greedy(lm, ids, steps)
    assert tokens == out.sequences[0, 20:].tolist()
    for mine, theirs in zip(step_logits, out.logits, strict=True):
        assert torch.equal(mine.float(), theirs[0].float())


def test_a_windowed_cache_rolls_back_only_what_it_holds() -> None:
    """A sliding layer keeps its window and as much again before the newest position when
    it compacts; `can_crop` says where `crop` is still exact, and `crop` refuses the rest."""
    cache = KVCache(2, [None, 4])
    kv = torch.zeros(1, 1, 10, 2)
    cache.append(0, kv, kv)
    cache.append(1, kv, kv)
    cache.length = 10
    assert cache.starts == [0, 0] and cache.keys[1] is not None
    assert cache.keys[1].shape[2] == 10 + 2 * 4  # the prompt and two windows of room
    assert cache.can_crop(0)
    one = torch.ones(1, 1, 1, 2)
    for position in range(10, 30):
        keys, _ = cache.append(0, one * position, one * position)
        assert keys.shape[2] == position + 1
        keys, _ = cache.append(1, one * position, one * position)
        cache.length = position + 1
        start = cache.starts[1]
        assert keys.shape[2] == position + 1 - start >= 4  # the window is always there
        assert torch.equal(keys[0, 0, -1], one[0, 0, 0] * position)
    # full at positions 18 (from 11 on) and 27: the window and as much again before 27
    assert cache.starts == [0, 27 - 2 * 4 + 1]
    assert cache.keys[1].shape[2] == 4 * 4
    # the next position after a crop to L attends to L - 3 ... L: held from L = 23 on
    assert cache.can_crop(30) and cache.can_crop(23) and not cache.can_crop(22)
    with pytest.raises(ValueError, match="no longer holds the positions before 22"):
        cache.crop(22)
    cache.crop(23)
    assert len(cache) == 23
    cache.croppable = False  # type: ignore[misc]  # a cache kind that never crops exactly
    assert not cache.can_crop(23)


# -- the registry's parsing: real configs, refusals --------------------------------------
GEMMA3_270M = {  # google/gemma-3-270m's config.json (the parts the forward pass reads)
    "model_type": "gemma3_text", "hidden_size": 640, "intermediate_size": 2048,
    "num_hidden_layers": 18, "num_attention_heads": 4, "num_key_value_heads": 1,
    "head_dim": 256, "vocab_size": 262144, "rms_norm_eps": 1e-06, "rope_theta": 1000000.0,
    "rope_local_base_freq": 10000.0, "rope_scaling": None, "sliding_window": 512,
    "query_pre_attn_scalar": 256, "hidden_activation": "gelu_pytorch_tanh",
    "attn_logit_softcapping": None, "final_logit_softcapping": None,
    "_sliding_window_pattern": 6, "use_bidirectional_attention": False,
    "layer_types": (["sliding_attention"] * 5 + ["full_attention"]) * 3,
}
QWEN3_06B = {  # Qwen/Qwen3-0.6B
    "model_type": "qwen3", "hidden_size": 1024, "intermediate_size": 3072,
    "num_hidden_layers": 28, "num_attention_heads": 16, "num_key_value_heads": 8,
    "head_dim": 128, "vocab_size": 151936, "rms_norm_eps": 1e-06, "rope_theta": 1000000,
    "rope_scaling": None, "sliding_window": None, "use_sliding_window": False,
    "max_window_layers": 28, "attention_bias": False, "tie_word_embeddings": True,
    "hidden_act": "silu",
}
MISTRAL_7B = {  # mistralai/Mistral-7B-v0.1
    "model_type": "mistral", "hidden_size": 4096, "intermediate_size": 14336,
    "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
    "vocab_size": 32000, "rms_norm_eps": 1e-05, "rope_theta": 10000.0,
    "sliding_window": 4096, "hidden_act": "silu", "tie_word_embeddings": False,
}
PHI3_MINI = {  # microsoft/Phi-3-mini-4k-instruct
    "model_type": "phi3", "hidden_size": 3072, "intermediate_size": 8192,
    "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 32,
    "vocab_size": 32064, "rms_norm_eps": 1e-05, "rope_theta": 10000.0, "rope_scaling": None,
    "sliding_window": 2047, "hidden_act": "silu", "tie_word_embeddings": False,
}


def test_real_configs_parse_to_their_differences() -> None:
    gemma = ModelArgs.from_config(GEMMA3_270M)
    assert (gemma.head_dim, gemma.kv_heads, gemma.tie_word_embeddings) == (256, 1, True)
    assert gemma.windows == ((512,) * 5 + (None,)) * 3
    assert gemma.rope == RopeParams("default", 1e6)
    assert gemma.local_rope == RopeParams("default", 1e4)
    assert (gemma.qk_norm, gemma.gemma_norms, gemma.activation) == (
        "transposed", True, "gelu_pytorch_tanh")
    assert gemma.embed_scale == 640**0.5 and gemma.attention_scale == 1 / 16
    assert gemma.final_softcap is None
    qwen3 = ModelArgs.from_config(QWEN3_06B)
    assert (qwen3.qk_norm, qwen3.windows, qwen3.head_dim, qwen3.qkv_bias) == (
        "heads", (), 128, False)
    assert ModelArgs.from_config({**QWEN3_06B, "use_sliding_window": True,
                                  "sliding_window": 4096, "max_window_layers": 26}
                                 ).windows == (None,) * 26 + (4096,) * 2
    mistral = ModelArgs.from_config(MISTRAL_7B)
    assert mistral.windows == (4096,) * 32 and mistral.head_dim == 128
    assert ModelArgs.from_config({**MISTRAL_7B, "sliding_window": None}).windows == ()
    phi3 = ModelArgs.from_config(PHI3_MINI)
    assert phi3.fused and phi3.windows == (2047,) * 32 and phi3.rope == RopeParams()


@pytest.mark.parametrize(("config", "message"), [
    ({**GEMMA3_270M, "attn_logit_softcapping": 50.0},
     "gemma3_text with attention logit softcapping is not native"),
    ({**GEMMA3_270M, "use_bidirectional_attention": True},
     "gemma3_text with bidirectional attention is not native"),
    ({**GEMMA3_270M, "hidden_activation": "gelu"},
     "gemma3_text with activation 'gelu' is not native"),
    ({**GEMMA3_270M, "layer_types": ["chunked_attention"] * 18},
     "gemma3_text with layer type 'chunked_attention' is not native"),
    ({**GEMMA3_270M, "model_type": "gemma3"}, "gemma3 architecture has no native implementation"),
    ({**PHI3_MINI, "rope_scaling": {"type": "longrope", "short_factor": [1.0],
                                    "long_factor": [1.0]}}, "RoPE type 'longrope' is not native"),
    ({**MISTRAL_7B, "layer_types": ["full_attention"] * 32},
     "mistral with layer_types is not native"),
    ({**MISTRAL_7B, "sliding_window": 0}, "mistral sliding_window must be a positive integer"),
])
def test_what_is_not_native_is_named(config: dict, message: str) -> None:
    with pytest.raises(models.UnsupportedModelError) as raised:
        ModelArgs.from_config(config)
    assert str(raised.value).startswith(message)
    assert isinstance(raised.value, ChatcliError) and not models.supports(config)


# -- the fast (quantized) ops and the static decode step: bounded -----------------------
def _float32_error(folder: Path, ids: torch.Tensor, tokens: list[int]) -> float:
    """The exact pass in float32 against float64 on the same tokens: float32's own
    error on this CPU for this computation."""
    runs = [_teacher_forced(NativeLanguageModel(NativeCausalLM.from_folder(folder, dtype)),
                            ids, tokens) for dtype in (torch.float32, torch.float64)]
    return max(float((a.double() - b).abs().max()) for a, b in zip(*runs, strict=True))


def _teacher_forced(lm: Any, ids: torch.Tensor, tokens: list[int]) -> list[torch.Tensor]:
    logits, cache = lm.prefill(ids[0].tolist())
    seen = [logits]
    for token in tokens:
        logits, cache = lm.step(torch.tensor([token]), cache)
        seen.append(logits)
    return seen


def test_fast_ops_and_the_static_step_compute_the_same_function(case: tuple[str, Path]) -> None:
    """The fused model's fast ops (quantized models run them) and `GraphedLanguageModel`'s
    static decode step (CUDA captures it; eager here), over a prompt and 40 steps past the
    window, equal the exact pass up to float32 rounding."""
    folder = case[1]
    exact = NativeCausalLM.from_folder(folder, torch.float32)
    ids = _ids(exact, 20)
    tokens, _, _ = _greedy(exact, ids, 40)
    error = _float32_error(folder, ids, tokens)
    assert 0 < error < 1e-3, error
    want = _teacher_forced(NativeLanguageModel(exact), ids, tokens)
    fast = NativeCausalLM.from_folder(folder, torch.float32)
    fast._fuse(lambda lin: lin)
    assert not fast.exact
    for lm in (NativeLanguageModel(fast), GraphedLanguageModel(exact, 64)):
        for got, ref in zip(_teacher_forced(lm, ids, tokens), want, strict=True):
            assert torch.allclose(got, ref, atol=4 * error, rtol=0), (got - ref).abs().max()


@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_quantized_models_compute_with_their_dequantized_weights(
        case: tuple[str, Path], mode: str) -> None:
    """int8 and int4 run for every architecture: the quantized layers everywhere (a model
    given their dequantized weights as dense layers computes the same logits), saved and
    restored as they are."""
    folder = case[1]
    quant = NativeCausalLM.from_folder(folder, torch.float32)
    quant.quantize(mode)
    ref = NativeCausalLM.from_folder(folder, torch.float32)
    ref.quantize(mode)
    for layer in ref.layers:
        for name in ("qkv", "gate_up", "o", "down"):
            lin = getattr(layer, name)
            setattr(layer, name, Dense(lin.dequantized(), lin.bias))
    ref.head = Dense(ref.head.dequantized())
    again = NativeCausalLM.from_folder(folder, torch.float32)
    again.load_quantized(mode, quant.quantized_tensors())
    ids = _ids(quant, 20)
    got, cache = quant.forward(ids, None, logits_to_keep=0)
    want, ref_cache = ref.forward(ids, None, logits_to_keep=0)
    assert torch.allclose(got, want, atol=1e-4, rtol=0), (got - want).abs().max()
    assert torch.equal(again.forward(ids, None)[0], quant.forward(ids, None)[0])
    for token in range(12):
        step, cache = quant.forward(torch.tensor([[token]]), cache)
        ref_step, ref_cache = ref.forward(torch.tensor([[token]]), ref_cache)
        assert torch.allclose(step, ref_step, atol=1e-4, rtol=0)


# -- through chatcli: chat with the prompt cache, beam search, what it says ----------------
@pytest.fixture
def aliases(home: Path, case: tuple[str, Path]) -> str:
    """An alias of the case's model (float32, auto implementation); its name."""
    with (home / "models.toml").open("a") as f:
        f.write(f'\n[models.arch]\nsource = "path"\npath = "{case[1]}"\ndtype = "float32"\n')
    return "arch"


def _loaded(alias: str, **changes: Any) -> LoadedModel:
    spec = dataclasses.replace(load_registry().resolve(alias), **changes)
    return load_model(spec, Runtime("cpu", "float32", 1), SilentReporter())


def test_chat_turns_retry_and_undo_match_generate(case: tuple[str, Path], aliases: str) -> None:
    """Prompts run past the window; a sliding cache that no longer holds a turn's shared
    prefix is prefilled afresh, one that does is reused: every answer is generate()'s."""
    loaded = _loaded(aliases)
    assert loaded.implementation == "native" and type(loaded.lm) is NativeLanguageModel
    reused = chat_script_matches_generate(loaded, Tiny(case[1]))
    assert reused[0] == 0 and max(reused[1:]) > 10


def test_retry_after_a_long_answer_prefills_a_sliding_cache_afresh(
        case: tuple[str, Path], aliases: str) -> None:
    """A 40-token answer moves a sliding layer's kept positions past the prompt's window:
    /retry cannot roll the cache back to the prompt, so it prefills the prompt afresh and
    answers as before; a full-attention model's cache is cropped back instead."""
    loaded = dataclasses.replace(_loaded(aliases), eos_ids=frozenset())  # 40 tokens, always
    session = ChatSession(loaded, strategy_registry(),
                          DecodingRequest("greedy", {"max_new_tokens": 40}), Conversation())
    session.add_user("Tell me about Paris and the quick brown fox.")
    messages = [m.as_dict() for m in session.pack().messages]
    _, out, _ = reference_generate(Tiny(case[1]), messages, max_new_tokens=40,
                                   eos_token_id=None)
    first = answer_ids(session)
    assert len(first) == 40
    assert first == out[0].tolist()
    assert session.last_packed is not None
    prompt = session.last_packed.tokens
    assert session.retry() is not None
    assert answer_ids(session) == first
    assert session.cache.reused == (0 if case[0] in SLIDING else prompt)


def test_beam_search_matches_generate(case: tuple[str, Path], aliases: str) -> None:
    """A greedy turn fills the prompt cache; the beam turn after it crops (or prefills
    afresh), expands and reorders the cache. Both equal generate()."""
    loaded = _loaded(aliases)
    tiny = Tiny(case[1])
    eos = loaded.tokenizer.eos_token_id
    session = ChatSession(loaded, strategy_registry(),
                          DecodingRequest("greedy", {"max_new_tokens": 10}), Conversation())
    session.add_user("Hi")
    answer_ids(session)
    session.update_request(DecodingRequest("beam", {"max_new_tokens": 10, "num_beams": 3}))
    session.add_user("Tell me about Paris.")
    messages = [m.as_dict() for m in session.pack().messages]
    _, out, _ = reference_generate(tiny, messages, max_new_tokens=10, num_beams=3)
    expected = out[0].tolist()

    def strip(ids: list[int]) -> list[int]:
        return ids[: ids.index(eos)] if eos in ids else ids

    assert strip(answer_ids(session)) == strip(expected)


@pytest.mark.parametrize("case", ["gemma3", "phi3"], indirect=True)  # said the same way
def test_models_show_stats_and_json_say_native(case: tuple[str, Path], aliases: str) -> None:
    shown = run_cli(["models", "show", aliases])
    assert shown.exit_code == 0, shown.stderr
    assert "implementation     native\n" in shown.stdout
    model_type = json.loads((case[1] / "config.json").read_text())["model_type"]
    assert f"architecture       {model_type}\n" in shown.stdout
    stats = run_cli(["ask", "-m", aliases, "--stats", "-n", "2", "Hi"])
    assert stats.exit_code == 0, stats.stderr
    assert stats.stderr.endswith(" finish_reason=length implementation=native\n")
    quantized = run_cli(["ask", "-m", aliases, "--stats", "--quantize", "int8", "-n", "2", "Hi"])
    assert quantized.exit_code == 0, quantized.stderr
    assert quantized.stderr.endswith(" finish_reason=length implementation=native+int8\n")
    result = run_cli(["ask", "-m", aliases, "--json", "-n", "2", "Hi"])
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["implementation"] == {"name": "native", "reason": None}


@pytest.mark.slow
def test_gemma3_compiles_through_the_same_path(tmp_path_factory: pytest.TempPathFactory,
                                               tmp_path: Path) -> None:
    """The compiled decode step (chatcli compile) of an int8 Gemma 3: its sliding layers
    mask the positions before their window, each layer reads its RoPE table; 40 steps
    past the window give the eager model's tokens. The package holds no weights: it
    computes with the model's own tensors (a scale zeroed in place zeroes its logits)."""
    from chatcli.lm import compiled

    folder = build(tmp_path_factory.mktemp("gemma3-compiled"), "gemma3")
    model = NativeCausalLM.from_folder(folder, torch.float32)
    model.quantize("int8")
    path = tmp_path / "gemma3.pt2"
    model_id = compiled.folder_fingerprint(folder)
    key = compiled.build(model, path, model_id=model_id, options=compiled.TEST_OPTIONS)
    # the weights stay out: only the group sizes inductor makes itself are the package's
    assert key["constants"] == {}
    lm = compiled.CompiledLanguageModel.open(model, path, model_id)
    assert lm.compiled, lm.reason
    ids = _ids(model, 20)[0].tolist()
    runs = []
    for each in (NativeLanguageModel(model), lm):
        logits, cache = each.prefill(ids)
        tokens, seen = [], [logits]
        for _ in range(40):
            tokens.append(int(logits.argmax(-1)))
            logits, cache = each.step(torch.tensor([tokens[-1]]), cache)
            seen.append(logits)
        runs.append((tokens, seen))
    assert lm.compiled and cache.static and len(cache) == 60
    assert runs[0][0] == runs[1][0]
    for a, b in zip(runs[0][1], runs[1][1], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    assert runs[1][1][-1].abs().max() > 0
    model.head.scales.zero_()
    logits, cache = lm.step(torch.tensor([tokens[-1]]), cache)
    assert lm.compiled and cache.static and len(cache) == 61
    assert torch.equal(logits, torch.zeros_like(logits))
