"""Gemma 3 (text): Llama with Gemma's differences.

- RMSNorm in float32 times (1 + weight), cast back, and two more norms per layer: on the
  attention output and on the MLP output (`gemma_norms`);
- an RMSNorm over each query and key head after transposing, before RoPE (`qk_norm`);
- embeddings times sqrt(hidden_size), rounded to the model dtype (`embed_scale`);
- a GeGLU MLP (`gelu_pytorch_tanh`);
- attention scaled by `query_pre_attn_scalar` ** -0.5;
- local layers over a `sliding_window` and global layers (5 : 1 by default,
  `layer_types`), each kind with its own RoPE base (10,000 local, 1,000,000 global);
- the output head tied to the embeddings unless the config says otherwise, and
  `final_logit_softcapping` when the config sets it.

Attention logit softcapping and bidirectional attention are not native.
"""

from __future__ import annotations

from chatcli.lm.models import Register
from chatcli.lm.models.base import (
    ModelArgs,
    RopeParams,
    UnsupportedModelError,
    common_args,
    positive_window,
    window_layers,
)

ARCH = "gemma3_text"


def _ropes(config: dict) -> tuple[RopeParams, RopeParams]:
    """The global (full-attention) and the local (sliding) layers' RoPE."""
    params = config.get("rope_parameters")
    if isinstance(params, dict) and any(isinstance(v, dict) for v in params.values()):
        full = dict(params.get("full_attention") or {})
        local = dict(params.get("sliding_attention") or {})
    else:  # a 4.x config: rope_theta, rope_local_base_freq, rope_scaling (global only)
        full = dict(config.get("rope_scaling") or params or {})
        local = {}
        if "rope_local_base_freq" in config:
            local["rope_theta"] = config["rope_local_base_freq"]
    full.setdefault("rope_theta", config.get("rope_theta", 1_000_000.0))
    local.setdefault("rope_theta", 10_000.0)
    bare = {k: v for k, v in config.items() if k != "rope_theta"}
    return RopeParams.from_config(bare, full), RopeParams.from_config(bare, local)


def args(config: dict) -> ModelArgs:
    if config.get("attn_logit_softcapping") is not None:
        raise UnsupportedModelError(f"{ARCH} with attention logit softcapping is not native")
    if config.get("use_bidirectional_attention"):
        raise UnsupportedModelError(f"{ARCH} with bidirectional attention is not native")
    layers = config.get("num_hidden_layers")
    config = {"sliding_window": 4096, **config}
    if config.get("layer_types") is None and isinstance(layers, int):
        pattern = config.get("sliding_window_pattern", config.get("_sliding_window_pattern", 6))
        config["layer_types"] = ["sliding_attention" if (i + 1) % pattern else "full_attention"
                                 for i in range(layers)]
    window = positive_window(config, ARCH) if config["sliding_window"] is not None else None
    scalar = config.get("query_pre_attn_scalar", 256)
    if not isinstance(scalar, (int, float)) or isinstance(scalar, bool) or not scalar > 0:
        raise UnsupportedModelError(f"{ARCH} query_pre_attn_scalar must be positive "
                                    f"(got {scalar!r})")
    cap = config.get("final_logit_softcapping")
    if cap is not None and not (isinstance(cap, (int, float)) and cap > 0):
        raise UnsupportedModelError(f"{ARCH} final_logit_softcapping must be positive "
                                    f"(got {cap!r})")
    hidden = config.get("hidden_size")
    rope, local_rope = _ropes(config)
    windows = window_layers(config, ARCH, window)
    bias = bool(config.get("attention_bias", False))
    return common_args(
        config, activation_key="hidden_activation", default_activation="gelu_pytorch_tanh",
        default_head_dim=256, default_tie=True, rope=rope,
        local_rope=local_rope if windows and local_rope != rope else None,
        windows=windows, qkv_bias=bias, o_bias=bias, qk_norm="transposed", gemma_norms=True,
        embed_scale=hidden**0.5 if isinstance(hidden, int) and hidden > 0 else None,
        attention_scale=scalar**-0.5, final_softcap=cap)


def setup(register: Register) -> None:
    register(ARCH, args)
