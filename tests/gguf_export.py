"""Write a transformers llama or qwen2 folder (the tiny test models) as a GGUF file, as
llama.cpp's converter lays it out: GGUF's tensor names (biases too), a llama's query/key
rows reordered per head (llama.cpp's `permute`; qwen2's are kept in order), the tokenizer
as GGUF metadata (gpt2 BPE: tokens, types, merges, special ids, chat template), each
tensor in the GGML type asked for, quantized by `gguf.quants.quantize` (Q4_0, Q4_1,
Q5_0, Q5_1, Q8_0, F16, BF16, F32). Seconds, offline.

Used by the tests of GGUF files read at their stored precision (and by benchmarks for
larger random shapes); it knows nothing about chatcli.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np

TypeOf = Callable[[str], str]  # GGUF tensor name -> GGML type name ("Q8_0", "F32", ...)


def _permute(w: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's reordering of a query/key projection's rows (convert_hf_to_gguf)."""
    return (w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


def _tensor_names(layers: int) -> dict[str, str]:
    names = {"model.embed_tokens.weight": "token_embd.weight",
             "model.norm.weight": "output_norm.weight", "lm_head.weight": "output.weight"}
    per_layer = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
                 "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
                 "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
                 "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
                 "mlp.down_proj": "ffn_down"}
    for i in range(layers):
        for hf, gg in per_layer.items():
            for kind in ("weight", "bias"):
                names[f"model.layers.{i}.{hf}.{kind}"] = f"blk.{i}.{gg}.{kind}"
    return names


def write_gguf(folder: Path, out: Path, type_of: TypeOf) -> Path:
    """`out`: the model in `folder` (config.json, model.safetensors, tokenizer.json) as a
    GGUF, tensor `name` stored as `type_of(name)` (1-D tensors always F32)."""
    import gguf
    from safetensors.numpy import load_file

    config = json.loads((folder / "config.json").read_text())
    tokenizer = json.loads((folder / "tokenizer.json").read_text())
    tok_config = json.loads((folder / "tokenizer_config.json").read_text())
    heads, kv_heads = config["num_attention_heads"], config["num_key_value_heads"]
    arch = config["model_type"]  # llama or qwen2 (whose rows llama.cpp keeps in order)
    writer = gguf.GGUFWriter(str(out), arch)
    writer.add_name("tiny")
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_freq_base(float(config.get("rope_theta")
                                    or config["rope_parameters"]["rope_theta"]))
    writer.add_layer_norm_rms_eps(config["rms_norm_eps"])
    writer.add_vocab_size(config["vocab_size"])
    writer.add_rope_dimension_count(config["hidden_size"] // heads)
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
    weights = load_file(str(folder / "model.safetensors"))
    for hf, name in _tensor_names(config["num_hidden_layers"]).items():
        if hf not in weights:
            continue
        w = weights[hf].astype(np.float32)
        if arch == "llama" and ".self_attn.q_proj." in hf:
            w = _permute(w, heads)
        elif arch == "llama" and ".self_attn.k_proj." in hf:
            w = _permute(w, kv_heads)
        kind = "F32" if w.ndim == 1 else type_of(name)
        qtype = gguf.GGMLQuantizationType[kind]
        data = gguf.quants.quantize(w, qtype) if kind != "F32" else w
        writer.add_tensor(name, data, raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out
