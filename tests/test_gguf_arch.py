"""A GGUF of every architecture chatcli runs natively reads as transformers' GGUF loader
reads it, at its stored precision.

Tiny random-weight Qwen3 (QK-norm, head_dim 128, tied head), Mistral, Phi-3 (fused
q/k/v and gate/up) and Gemma 3 (QK-norm, sandwich norms, five sliding layers and a
global one; its head untied: a random tied Gemma's greedy answer settles on one token)
are written as llama.cpp's converter writes them (tests/gguf_export.py: Mistral as a
"llama" with its query/key rows reordered, Gemma's norms stored as 1 + w), each tensor in
its own format: Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q6_K, F16 and BF16 (hidden size 256:
the K-quants' rows). `gguf_weights.load_model`, given the config transformers makes from
the file, reads them into chatcli's linears (int4 kernels and chatcli's block kernel as
stored, no dense fallback where a kernel fits; and again with the block kernel switched
off, its formats as int4x2); transformers' `from_pretrained(gguf_file=...)` dequantizes
the same file:

- every linear's weights (read back through the kernels), the embedding, the head and
  every norm equal transformers' bit for bit (a Gemma norm is its multiplier 1 + w);
- greedy decoding in float32 gives `generate()`'s tokens for 20 steps after a 12-token
  prompt (past Gemma's 8-position window). The kernels sum in another order than
  transformers' dense matmuls, so each step's logits agree within 2e-4 of their largest
  magnitude: float32 rounding of these large random weights is up to 3e-5 of it (as far
  from a float64 run for transformers as for chatcli), while Gemma's norms read without
  the shift, or a llama's rows left in llama.cpp's order, move them by more than that
  magnitude. The tokens are equal except after a near tie (transformers' top-2 gap
  within twice that bound), where two correct float32 runs may part, and only the steps
  before it are compared.

Not covered: a "llama" GGUF named exactly "mistral", which transformers reads as a
mistral config (its default sliding window, 4096) but whose weights it cannot load
(gguf-py has no "mistral" architecture), so there is nothing to compare with.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from gguf_export import write_gguf
from test_transformers_path import _tokenizer

from chatcli.lm import block_kernels, gguf_weights
from chatcli.lm.llama import NativeCausalLM
from chatcli.lm.quant import Stacked
from conftest import one_thread

SIZE = {"hidden_size": 256, "intermediate_size": 256, "num_hidden_layers": 2,
        "num_attention_heads": 2, "num_key_value_heads": 1, "max_position_embeddings": 256}
PROMPT, STEPS, REL_TOL = 12, 20, 2e-4


@dataclass(frozen=True)
class Arch:
    config: str  # transformers' config class
    extra: dict[str, Any]  # beside SIZE
    types: dict[str, str]  # each GGUF tensor's type
    kinds: dict[str, str]  # what chatcli runs each linear as without the block kernel
    gguf_arch: str  # general.architecture, as llama.cpp writes it
    model_type: str  # the config transformers reads from the file
    name: str = "tiny"  # general.name
    blocks: dict[str, str] | None = None  # ... and with it


MISTRAL_TYPES = {"attn_q": "Q4_0", "attn_k": "Q4_K", "attn_v": "Q8_0", "attn_output": "Q6_K",
                 "ffn_gate": "Q4_K", "ffn_up": "Q4_1", "ffn_down": "Q5_1",
                 "token_embd": "Q6_K", "output": "Q8_0"}
MISTRAL_KINDS = {"qkv": "Stacked(Int4Linear, SplitInt4Linear)", "o": "SplitInt4Linear",
                 "gate_up": "Int4Linear", "down": "SplitInt4Linear", "head": "SplitInt4Linear"}
MISTRAL_BLOCKS = {"qkv": "Stacked(Int4Linear, BlockLinear)", "o": "BlockLinear",
                  "gate_up": "Int4Linear", "down": "BlockLinear", "head": "BlockLinear"}
CASES = {
    # transformers' qwen3 GGUF config ignores attention.key_length: head_dim is its
    # default, 128 (every Qwen3's)
    "qwen3": Arch(
        "Qwen3Config", {"head_dim": 128, "tie_word_embeddings": True},
        {"attn_q": "Q4_K", "attn_k": "Q4_0", "attn_v": "Q6_K", "attn_output": "Q5_1",
         "ffn_gate": "Q8_0", "ffn_up": "Q5_0", "ffn_down": "F16", "token_embd": "Q8_0"},
        {"qkv": "Stacked(Int4Linear, SplitInt4Linear)", "o": "SplitInt4Linear",
         "gate_up": "SplitInt4Linear", "down": "Dense", "head": "SplitInt4Linear"},
        "qwen3", "qwen3",
        blocks={"qkv": "Stacked(Int4Linear, BlockLinear)", "o": "BlockLinear",
                "gate_up": "Stacked(BlockLinear, BlockLinear)", "down": "Dense",
                "head": "BlockLinear"}),
    # llama.cpp converts a Mistral as a llama, and transformers reads it back as one
    "mistral": Arch("MistralConfig", {}, MISTRAL_TYPES, MISTRAL_KINDS, "llama", "llama",
                    "Tiny Mistral", MISTRAL_BLOCKS),
    "phi3": Arch(
        "Phi3Config", {},
        {"attn_qkv": "Q4_K", "attn_output": "Q8_0", "ffn_up": "Q6_K", "ffn_down": "Q5_0",
         "token_embd": "BF16", "output": "Q4_1"},
        {"qkv": "Int4Linear", "o": "SplitInt4Linear", "gate_up": "SplitInt4Linear",
         "down": "SplitInt4Linear", "head": "Int4Linear"},
        "phi3", "phi3",
        blocks={"qkv": "Int4Linear", "o": "BlockLinear", "gate_up": "BlockLinear",
                "down": "BlockLinear", "head": "Int4Linear"}),
    # llama.cpp writes no query_pre_attn_scalar and no layer pattern: transformers reads
    # its defaults (256; five sliding layers, then a global one), which these are
    "gemma3_text": Arch(
        "Gemma3TextConfig", {"num_hidden_layers": 6, "num_attention_heads": 1, "head_dim": 256,
                             "query_pre_attn_scalar": 256, "sliding_window": 8,
                             "tie_word_embeddings": False},
        {"attn_q": "Q4_K", "attn_k": "Q6_K", "attn_v": "Q8_0", "attn_output": "Q5_0",
         "ffn_gate": "Q4_K", "ffn_up": "Q6_K", "ffn_down": "Q4_1", "token_embd": "Q8_0",
         "output": "Q6_K"},
        {"qkv": "Stacked(Int4Linear, SplitInt4Linear, SplitInt4Linear)",
         "o": "SplitInt4Linear", "gate_up": "Stacked(Int4Linear, SplitInt4Linear)",
         "down": "Int4Linear", "head": "SplitInt4Linear"},
        "gemma3", "gemma3_text",
        blocks={"qkv": "Stacked(Int4Linear, BlockLinear, BlockLinear)", "o": "BlockLinear",
                "gate_up": "Stacked(Int4Linear, BlockLinear)", "down": "Int4Linear",
                "head": "BlockLinear"}),
}


def _build(folder: Path, arch: Arch) -> Path:
    """A tiny random model of `arch` with conftest's tokenizer, as transformers saves it."""
    import transformers
    from transformers import AutoModelForCausalLM

    tok = _tokenizer()
    config = getattr(transformers, arch.config)(
        **{**SIZE, **arch.extra}, vocab_size=len(tok), bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    gemma = arch.gguf_arch == "gemma3"
    with torch.no_grad():  # larger than the default init, so outputs vary
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):  # Gemma's norms scale by (1 + weight)
                param.normal_(0.0 if gemma else 1.0, 0.2)
            elif gemma and name.endswith("embed_tokens.weight"):  # scaled by sqrt(256)
                param.normal_(0, 0.3 / 16)
            else:
                param.normal_(0, 0.3)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@dataclass
class Case:
    """One architecture's GGUF, read by transformers and by chatcli (float32)."""

    arch: Arch
    path: Path
    theirs: Any  # transformers' model
    mine: NativeCausalLM
    int4x2: NativeCausalLM  # read with the block kernel switched off


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    with one_thread():
        yield


@pytest.fixture(scope="module", params=list(CASES))
def case(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Case:
    from transformers import AutoConfig, AutoModelForCausalLM

    arch = CASES[request.param]
    folder = _build(tmp_path_factory.mktemp(request.param), arch)
    path = write_gguf(folder, folder / "m.gguf", lambda t: arch.types[t.split(".")[-2]],
                      name=arch.name)
    config = AutoConfig.from_pretrained(folder, gguf_file=path.name)
    theirs = AutoModelForCausalLM.from_pretrained(folder, gguf_file=path.name,
                                                  dtype=torch.float32).eval()
    mine = gguf_weights.load_model(path, config.to_dict(), torch.float32)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CHATCLI_BLOCK_KERNELS", "0")
        int4x2 = gguf_weights.load_model(path, config.to_dict(), torch.float32)
    return Case(arch, path, theirs, mine, int4x2)


def _kind(linear: Any) -> str:
    if isinstance(linear, Stacked):
        return f"Stacked({', '.join(type(p).__name__ for p in linear.parts)})"
    return type(linear).__name__


def test_each_architecture_reads_as_its_own(case: Case) -> None:
    """llama.cpp's architecture name in the file; transformers' config from it; the
    layers chatcli builds from that config (fused, QK-norm, Gemma's windows)."""
    import gguf

    field = gguf.GGUFReader(case.path).fields["general.architecture"]
    assert bytes(field.parts[field.data[0]]).decode() == case.arch.gguf_arch
    model_type = case.arch.model_type
    assert case.theirs.config.model_type == model_type
    assert case.mine.args.fused == (model_type == "phi3")
    assert bool(case.mine.args.qk_norm) == (model_type in ("qwen3", "gemma3_text"))
    assert case.mine.windows == ([8, 8, 8, 8, 8, None] if model_type == "gemma3_text"
                                 else [None, None])


@pytest.mark.parametrize("blocks", [True, False], ids=["blocks", "int4x2"])
def test_every_weight_is_transformers_gguf_weight_bit_for_bit(case: Case, blocks: bool) -> None:
    theirs = case.theirs.state_dict()
    mine, model_type = case.mine if blocks else case.int4x2, case.arch.model_type
    expected = (case.arch.blocks if blocks and block_kernels.unavailable() is None
                else case.arch.kinds)
    gemma = model_type == "gemma3_text"

    def norm(name: str) -> torch.Tensor:  # chatcli holds a Gemma norm as 1 + w (float32)
        return 1.0 + theirs[name].float() if gemma else theirs[name]

    kinds = {"head": _kind(mine.head)}
    for i, layer in enumerate(mine.layers):
        p = f"model.layers.{i}"
        attn, mlp = f"{p}.self_attn", f"{p}.mlp"
        if model_type == "phi3":
            qkv, gate_up = [f"{attn}.qkv_proj"], [f"{mlp}.gate_up_proj"]
        else:
            qkv = [f"{attn}.{n}_proj" for n in "qkv"]
            gate_up = [f"{mlp}.{n}_proj" for n in ("gate", "up")]
        pairs = {"qkv": qkv, "o": [f"{attn}.o_proj"], "gate_up": gate_up,
                 "down": [f"{mlp}.down_proj"]}
        for name, hf in pairs.items():
            linear = getattr(layer, name)
            want = torch.cat([theirs[f"{n}.weight"] for n in hf])
            assert torch.equal(linear.dequantized(), want), (i, name)
            assert linear.bias is None and f"{hf[0]}.bias" not in theirs
            kinds[name] = _kind(linear)
        assert kinds == expected, i  # as stored: no dense where a kernel fits
        norms = {"input_norm": "input_layernorm", "post_norm": "post_attention_layernorm"}
        if gemma:
            norms |= {"post_norm": "pre_feedforward_layernorm",
                      "attn_out_norm": "post_attention_layernorm",
                      "mlp_out_norm": "post_feedforward_layernorm"}
        if model_type in ("qwen3", "gemma3_text"):
            norms |= {"q_norm": "self_attn.q_norm", "k_norm": "self_attn.k_norm"}
        for attr, hf_norm in norms.items():
            assert torch.equal(getattr(layer, attr), norm(f"{p}.{hf_norm}.weight")), (i, attr)
        extra = {a for a in ("q_norm", "k_norm", "attn_out_norm", "mlp_out_norm")
                 if getattr(layer, a) is not None}
        assert extra == set(norms) - {"input_norm", "post_norm"}
    assert torch.equal(mine.norm, norm("model.norm.weight"))
    head = case.theirs.get_output_embeddings().weight
    assert torch.equal(mine.head.dequantized(), head)
    embed = case.theirs.get_input_embeddings().weight
    table = mine.embed if isinstance(mine.embed, torch.Tensor) else mine.embed(
        torch.arange(mine.vocab_size))  # a dense table, or one left quantized in the file
    assert torch.equal(table, embed)
    # tied: the file has no output.weight (transformers ties the two)
    assert (head is embed) == (model_type == "qwen3")


def test_greedy_decoding_gives_transformers_tokens(case: Case) -> None:
    ids = torch.randint(0, case.mine.vocab_size, (1, PROMPT), generator=torch.manual_seed(1))
    out = case.theirs.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                               max_new_tokens=STEPS, output_logits=True,
                               return_dict_in_generate=True, eos_token_id=None)
    want = out.sequences[0, PROMPT:].tolist()
    assert len(set(want)) > 3  # the weights make greedy wander, not repeat one token
    logits, cache = case.mine.forward(ids, None)
    got, seen = [], []
    for _ in range(STEPS):
        seen.append(logits[0, -1])
        got.append(int(logits[0, -1].argmax()))
        logits, cache = case.mine.forward(torch.tensor([got[-1:]]), cache)
    tol = REL_TOL * max(float(step.abs().max()) for step in out.logits)
    steps = STEPS
    for i, (a, b) in enumerate(zip(got, want, strict=True)):
        if a != b:  # a near tie of transformers' logits: the runs may part there
            top = out.logits[i][0].topk(2).values
            assert float(top[0] - top[1]) <= 2 * tol, f"step {i}: {a} != {b}"
            steps = i + 1
            break
    for i in range(steps):
        assert float((seen[i] - out.logits[i][0]).abs().max()) <= tol, i
