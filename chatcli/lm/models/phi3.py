"""Phi-3: Llama with q/k/v stored as one `qkv_proj` and gate/up as one `gate_up_proj`
(computed fused, as stored), and every layer over `sliding_window` positions when the
config sets one. Its "longrope" RoPE scaling (Phi-3.5, the 128k models) is not native.
"""

from __future__ import annotations

from chatcli.lm.models import Register
from chatcli.lm.models.base import ModelArgs, common_args, positive_window


def args(config: dict) -> ModelArgs:
    windows: tuple[int | None, ...] = ()
    if config.get("sliding_window") is not None and isinstance(
            config.get("num_hidden_layers"), int):
        windows = (positive_window(config, "phi3"),) * config["num_hidden_layers"]
    return common_args(config, fused=True, windows=windows)


def setup(register: Register) -> None:
    register("phi3", args)
