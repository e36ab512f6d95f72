"""Write a tiny transformers model folder as a GGUF file, as llama.cpp's converter
(`convert_hf_to_gguf.py`) lays each architecture out:

- llama and mistral (GGUF architecture "llama": llama.cpp converts a MistralForCausalLM
  as a llama), qwen2, qwen3, phi3 and gemma3_text (GGUF architecture "gemma3");
- the metadata llama.cpp writes for each (block count, lengths, head counts, RoPE bases,
  RMS epsilon; key/value lengths where the config names a head_dim; Gemma 3's sliding
  window and local RoPE base; Phi-3's rope dimensions, original context and a 0 window
  where its config has none);
- GGUF's tensor names (`gguf.get_tensor_name_map`: biases, QK-norms, Gemma's extra
  norms, Phi-3's fused `attn_qkv` and `ffn_up` as stored), a llama's query/key rows
  reordered per head (llama.cpp's `permute`; the others are kept in order), Gemma's norms
  stored as 1 + w;
- the tokenizer as GGUF metadata (gpt2 BPE: tokens, types, merges, special ids, chat
  template);
- each tensor in the GGML type asked for: Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, F16, BF16 and
  F32 by `gguf.quants.quantize` (llama.cpp's reference quantizers), Q4_K and Q6_K (which
  `gguf` cannot quantize) by a plain per-block quantizer here: a valid block of the
  format, not llama.cpp's search for the best scales. Seconds, offline.

`general.name` is the `name` argument: transformers reads a "llama" GGUF whose name is
exactly "mistral" as a mistral config (any other name: a llama).

Used by the tests of GGUF files read at their stored precision (and by benchmarks for
larger random shapes); it knows nothing about chatcli.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

TypeOf = Callable[[str], str]  # GGUF tensor name -> GGML type name ("Q8_0", "F32", ...)
GGUF_ARCH = {"llama": "llama", "mistral": "llama", "qwen2": "qwen2", "qwen3": "qwen3",
             "phi3": "phi3", "gemma3_text": "gemma3"}


def _permute(w: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's reordering of a query/key projection's rows (convert_hf_to_gguf)."""
    return (w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


# -- K-quants (layouts as in ggml-quants.c: block_q4_K, block_q6_K) -------------------------
def _f16(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """fp16 bytes of `x` (..., 2) and the fp16 values as float32."""
    half = x.astype(np.float16)
    return half.view(np.uint8).reshape(*x.shape, 2), half.astype(np.float32)


def _q4_k(w: np.ndarray) -> np.ndarray:
    """Q4_K: per 256 weights d, dmin (fp16), 8 six-bit scales and minimums (12 bytes) and
    256 four-bit codes; weight = d * scale * code - dmin * min per 32."""
    x = w.reshape(-1, 8, 32).astype(np.float32)
    low = np.minimum(x.min(-1), 0)
    step = (x.max(-1) - low) / 15
    d_bytes, d = _f16(step.max(-1) / 63)
    m_bytes, dmin = _f16(-low.min(-1) / 63)
    sc = np.clip(np.rint(np.divide(step, d[:, None], out=np.zeros_like(step),
                                   where=d[:, None] > 0)), 0, 63).astype(np.uint8)
    mn = np.clip(np.rint(np.divide(-low, dmin[:, None], out=np.zeros_like(low),
                                   where=dmin[:, None] > 0)), 0, 63).astype(np.uint8)
    scale, offset = d[:, None] * sc, dmin[:, None] * mn
    codes = np.divide(x + offset[..., None], scale[..., None], out=np.zeros_like(x),
                      where=scale[..., None] > 0)
    q = np.clip(np.rint(codes), 0, 15).astype(np.uint8)
    scales = np.concatenate([sc[:, :4] | (sc[:, 4:] >> 4) << 6,
                             mn[:, :4] | (mn[:, 4:] >> 4) << 6,
                             (sc[:, 4:] & 0x0F) | (mn[:, 4:] & 0x0F) << 4], axis=1)
    qs = (q[:, 0::2] | q[:, 1::2] << 4).reshape(-1, 128)  # sub-blocks 2j (low), 2j+1 (high)
    out = np.concatenate([d_bytes, m_bytes, scales, qs], axis=1)
    return out.reshape(w.shape[0], -1)


def _q6_k(w: np.ndarray) -> np.ndarray:
    """Q6_K: per 256 weights 256 six-bit codes (low 4 bits, high 2 bits), 16 int8 scales
    and d (fp16); weight = d * scale * (code - 32) per 16."""
    x = w.reshape(-1, 16, 16).astype(np.float32)
    step = np.abs(x).max(-1) / 31
    d_bytes, d = _f16(step.max(-1) / 127)
    sc = np.clip(np.rint(np.divide(step, d[:, None], out=np.zeros_like(step),
                                   where=d[:, None] > 0)), -128, 127).astype(np.int8)
    scale = d[:, None] * sc
    codes = np.divide(x, scale[..., None], out=np.zeros_like(x), where=scale[..., None] > 0)
    q = (np.clip(np.rint(codes), -32, 31) + 32).astype(np.uint8).reshape(-1, 2, 4, 32)
    # half n, l < 32: ql[l] = q[n][0][l] | q[n][2][l] << 4, ql[l + 32] = q[n][1] | q[n][3];
    # qh[l] = the high 2 bits of q[n][0..3][l] at bits 0, 2, 4, 6
    ql = np.concatenate([q[:, :, 0] & 15 | (q[:, :, 2] & 15) << 4,
                         q[:, :, 1] & 15 | (q[:, :, 3] & 15) << 4], axis=2)
    qh = (q[:, :, 0] >> 4 | (q[:, :, 1] >> 4) << 2 | (q[:, :, 2] >> 4) << 4
          | (q[:, :, 3] >> 4) << 6)
    out = np.concatenate([ql.reshape(-1, 128), qh.reshape(-1, 64), sc.view(np.uint8),
                          d_bytes], axis=1)
    return out.reshape(w.shape[0], -1)


def quantize(w: np.ndarray, kind: str) -> np.ndarray:
    """(rows, row bytes) uint8 blocks of float32 `w` in GGML type `kind` (F32: `w`)."""
    import gguf

    if kind == "F32":
        return w
    if kind in ("Q4_K", "Q6_K"):
        if w.shape[-1] % 256:
            raise ValueError(f"{kind} needs rows of a multiple of 256 weights")
        return _q4_k(w) if kind == "Q4_K" else _q6_k(w)
    return gguf.quants.quantize(w, gguf.GGMLQuantizationType[kind])


# -- metadata ------------------------------------------------------------------------------
def _ropes(config: dict) -> tuple[dict, dict]:
    """The full-attention and the sliding layers' RoPE parameters (llama.cpp's
    `rope_parameters`, from a transformers 5 config)."""
    params = dict(config.get("rope_parameters") or {})
    if any(isinstance(v, dict) for v in params.values()):
        return dict(params.get("full_attention") or {}), dict(params.get("sliding_attention")
                                                              or {})
    if "rope_theta" in config:
        params.setdefault("rope_theta", config["rope_theta"])
    return params, {}


def _text_model(writer: Any, config: dict) -> None:
    """llama.cpp's `TextModel.set_gguf_parameters` for these configs."""
    import gguf

    writer.add_block_count(config["num_hidden_layers"])
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(config["num_attention_heads"])
    writer.add_head_count_kv(config["num_key_value_heads"])
    full, sliding = _ropes(config)
    if full.get("rope_type") == "linear" and full.get("factor") is not None:
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(full["factor"])
    if full.get("rope_theta") is not None:
        writer.add_rope_freq_base(float(full["rope_theta"]))
    if sliding.get("rope_theta") is not None:
        writer.add_rope_freq_base_swa(float(sliding["rope_theta"]))
    writer.add_layer_norm_rms_eps(config["rms_norm_eps"])
    if config.get("head_dim") is not None:
        writer.add_key_length(config["head_dim"])
        writer.add_value_length(config["head_dim"])


def _metadata(writer: Any, config: dict) -> None:
    arch = config["model_type"]
    heads, hidden = config["num_attention_heads"], config["hidden_size"]
    if arch == "phi3":  # Phi3MiniModel.set_gguf_parameters, its own
        full, _ = _ropes(config)
        writer.add_context_length(config["max_position_embeddings"])
        writer.add_rope_scaling_orig_ctx_len(config.get("original_max_position_embeddings")
                                             or full["original_max_position_embeddings"])
        writer.add_embedding_length(hidden)
        writer.add_feed_forward_length(config["intermediate_size"])
        writer.add_block_count(config["num_hidden_layers"])
        writer.add_head_count(heads)
        writer.add_head_count_kv(config["num_key_value_heads"])
        writer.add_layer_norm_rms_eps(config["rms_norm_eps"])
        rot = full.get("partial_rotary_factor", config.get("partial_rotary_factor", 1.0))
        writer.add_rope_dimension_count(int(rot * hidden) // heads)
        writer.add_rope_freq_base(float(full["rope_theta"]))
        writer.add_sliding_window(config.get("sliding_window") or 0)
        return
    _text_model(writer, config)
    if arch in ("llama", "mistral"):  # LlamaModel
        writer.add_vocab_size(config["vocab_size"])
        writer.add_rope_dimension_count(config.get("head_dim") or hidden // heads)
    elif arch == "gemma3_text":  # Gemma3Model
        if config.get("head_dim") is None:  # else written above
            writer.add_key_length(256)
            writer.add_value_length(256)
        if config.get("final_logit_softcapping"):
            writer.add_final_logit_softcapping(config["final_logit_softcapping"])
        if config.get("sliding_window_pattern") != 1:
            writer.add_sliding_window(config["sliding_window"])


def _tokenizer(writer: Any, folder: Path, config: dict) -> None:
    tokenizer = json.loads((folder / "tokenizer.json").read_text())
    tok_config = json.loads((folder / "tokenizer_config.json").read_text())
    vocab = tokenizer["model"]["vocab"]
    added = {t["content"]: t["id"] for t in tokenizer.get("added_tokens", [])}
    tokens = [""] * config["vocab_size"]
    for text, i in {**vocab, **added}.items():
        tokens[i] = text
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types([3 if t in added else 1 for t in tokens])
    merges = tokenizer["model"]["merges"]
    writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in merges])
    for key in ("bos", "eos", "pad", "unk"):
        token_id = config.get(f"{key}_token_id")
        if token_id is not None:
            getattr(writer, f"add_{key}_token_id")(token_id)
    template = tok_config.get("chat_template")
    if template is None and (folder / "chat_template.jinja").is_file():
        template = (folder / "chat_template.jinja").read_text()
    if template:
        writer.add_chat_template(template)


# -- the file ------------------------------------------------------------------------------
def write_gguf(folder: Path, out: Path, type_of: TypeOf, name: str = "tiny") -> Path:
    """`out`: the model in `folder` (config.json, model.safetensors, tokenizer.json) as a
    GGUF, tensor `name` stored as `type_of(name)` (1-D tensors always F32)."""
    import gguf
    from safetensors.numpy import load_file

    config = json.loads((folder / "config.json").read_text())
    arch = config["model_type"]
    heads, kv_heads = config["num_attention_heads"], config["num_key_value_heads"]
    gguf_arch = GGUF_ARCH[arch]
    layers = config["num_hidden_layers"]
    names = gguf.get_tensor_name_map(
        next(a for a, n in gguf.MODEL_ARCH_NAMES.items() if n == gguf_arch), layers)
    writer = gguf.GGUFWriter(str(out), gguf_arch)
    writer.add_name(name)
    _metadata(writer, config)
    _tokenizer(writer, folder, config)
    for hf, w in load_file(str(folder / "model.safetensors")).items():
        gguf_name = names.get_name(hf, try_suffixes=(".weight", ".bias"))
        if gguf_name is None:
            raise ValueError(f"{arch}: no GGUF name for {hf}")
        w = w.astype(np.float32)
        if gguf_arch == "llama" and ".self_attn.q_proj." in hf:
            w = _permute(w, heads)
        elif gguf_arch == "llama" and ".self_attn.k_proj." in hf:
            w = _permute(w, kv_heads)
        if gguf_arch == "gemma3" and hf.endswith("norm.weight"):
            w = w + 1  # Gemma3RMSNorm multiplies by 1 + w: llama.cpp stores 1 + w
        kind = "F32" if w.ndim == 1 else type_of(gguf_name)
        writer.add_tensor(gguf_name, quantize(w, kind),
                          raw_dtype=gguf.GGMLQuantizationType[kind])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out
