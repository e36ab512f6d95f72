"""Llama: the forward pass as written (`chatcli.lm.models.base.ModelArgs` defaults).

Its differences: `attention_bias` on q/k/v/o, `mlp_bias`, no sliding windows.
"""

from __future__ import annotations

from chatcli.lm.models import Register
from chatcli.lm.models.base import ModelArgs, UnsupportedModelError, common_args


def args(config: dict) -> ModelArgs:
    if set(config.get("layer_types") or ["full_attention"]) != {"full_attention"}:
        raise UnsupportedModelError("llama with layer types other than full attention is "
                                    "not native")
    bias = bool(config.get("attention_bias", False))
    return common_args(config, qkv_bias=bias, o_bias=bias,
                       mlp_bias=bool(config.get("mlp_bias", False)))


def setup(register: Register) -> None:
    register("llama", args)
