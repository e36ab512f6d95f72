"""Qwen3: Llama with an RMSNorm over each query and key head before RoPE (applied before
the heads are transposed), `attention_bias` on q/k/v/o, a 128-wide head unless the config
says otherwise, and Qwen's sliding windows.
"""

from __future__ import annotations

from chatcli.lm.models import Register
from chatcli.lm.models.base import ModelArgs, common_args, qwen_windows


def args(config: dict) -> ModelArgs:
    bias = bool(config.get("attention_bias", False))
    return common_args(config, default_head_dim=128, qkv_bias=bias, o_bias=bias,
                       qk_norm="heads", windows=qwen_windows(config, "qwen3"))


def setup(register: Register) -> None:
    register("qwen3", args)
