"""Mistral: Llama whose every layer attends over `sliding_window` positions when the
config sets one (transformers' default when the config does not say: 4096).
"""

from __future__ import annotations

from chatcli.lm.models import Register
from chatcli.lm.models.base import ModelArgs, UnsupportedModelError, common_args, positive_window


def args(config: dict) -> ModelArgs:
    if config.get("layer_types") is not None:
        raise UnsupportedModelError("mistral with layer_types is not native")
    config = {"sliding_window": 4096, **config}
    windows: tuple[int | None, ...] = ()
    if config["sliding_window"] is not None and isinstance(config.get("num_hidden_layers"), int):
        windows = (positive_window(config, "mistral"),) * config["num_hidden_layers"]
    return common_args(config, windows=windows)


def setup(register: Register) -> None:
    register("mistral", args)
