"""Qwen2: Llama with biases on q/k/v (not o), and Qwen's sliding windows
(`use_sliding_window` from layer `max_window_layers` on, or `layer_types`).
"""

from __future__ import annotations

from chatcli.lm.models import Register
from chatcli.lm.models.base import ModelArgs, common_args, qwen_windows


def args(config: dict) -> ModelArgs:
    return common_args(config, qkv_bias=True,
                       o_bias=bool(config.get("attention_bias", False)),
                       windows=qwen_windows(config, "qwen2"))


def setup(register: Register) -> None:
    register("qwen2", args)
