"""What the native forward pass reads from a config.json, and the parsing every architecture shares.

Contract: `ModelArgs` holds every number and switch that the one forward pass
(`chatcli.lm.llama.NativeCausalLM`) reads, checked once; its defaults are Llama's, and
an architecture module (`chatcli.lm.models.<model_type>`) states only where its model
differs. `RopeParams` is one RoPE table's settings ("default", "linear" or "llama3").
`common_args(config, ...)` reads the fields Llama-like configs share (sizes, heads,
norm epsilon, RoPE, tied head, refusals of what the forward pass cannot compute) and
takes the architecture's differences as keywords; `window_layers` reads the per-layer
sliding windows of configs that declare `layer_types` or Qwen's `use_sliding_window`.
Everything it cannot compute exactly raises `UnsupportedModelError` (a `ChatcliError`
and a `ValueError`) naming it, in words `models show` and `--stats` print.

Knows nothing about weights, tensors or which architectures exist (that is the
registry, `chatcli.lm.models`); imports no torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from chatcli.errors import ChatcliError

_ROPE_TYPES = frozenset({"default", "linear", "llama3"})
_LLAMA3_KEYS = ("factor", "low_freq_factor", "high_freq_factor",
                "original_max_position_embeddings")
ACTIVATIONS = frozenset({"silu", "gelu_pytorch_tanh"})
QK_NORMS = frozenset({"heads", "transposed"})


class UnsupportedModelError(ChatcliError, ValueError):
    """A config.json this forward pass cannot compute exactly, or a malformed one."""

    def __init__(self, message: str) -> None:
        super().__init__(message, 'set implementation = "transformers" for this model')


@dataclass(frozen=True)
class RopeParams:
    """Rotary position embedding settings ("default", "linear" scaling, or "llama3"
    frequency scaling)."""

    type: str = "default"
    theta: float = 10_000.0
    factor: float | None = None
    low_freq_factor: float | None = None
    high_freq_factor: float | None = None
    original_max_position_embeddings: int | None = None

    def __post_init__(self) -> None:
        if self.type not in _ROPE_TYPES:
            raise UnsupportedModelError(f"RoPE type {self.type!r} is not native")
        if not self.theta > 0:
            raise UnsupportedModelError(f"rope_theta must be positive (got {self.theta})")
        missing = [key for key in _LLAMA3_KEYS if getattr(self, key) is None]
        if self.type == "llama3" and missing:
            raise UnsupportedModelError(f"llama3 RoPE scaling lacks {', '.join(missing)}")
        if self.type == "linear" and not (self.factor or 0) > 0:
            raise UnsupportedModelError(f"linear RoPE scaling needs a positive factor "
                                        f"(got {self.factor!r})")

    @classmethod
    def from_config(cls, config: dict, params: dict | None = None,
                    theta: float = 10_000.0) -> RopeParams:
        """From a 5.x `rope_parameters` or a 4.x `rope_theta` + `rope_scaling` config;
        `params` (one layer type's entry of a nested `rope_parameters`) overrides them,
        `theta` is the architecture's default base."""
        if params is None:
            params = dict(config.get("rope_parameters") or config.get("rope_scaling") or {})
            if any(isinstance(value, dict) for value in params.values()):
                raise UnsupportedModelError("RoPE parameters nested per layer type are not "
                                            "native")
        rotary = params.get("partial_rotary_factor", config.get("partial_rotary_factor"))
        if rotary not in (None, 1.0):
            raise UnsupportedModelError(f"partial_rotary_factor {rotary} is not native")
        kind = params.get("rope_type", params.get("type", "default"))
        original = params.get("original_max_position_embeddings")
        if kind == "llama3":
            original = config.get("original_max_position_embeddings",
                                  original or config.get("max_position_embeddings"))
        return cls(kind, params.get("rope_theta", config.get("rope_theta", theta)),
                   params.get("factor"), params.get("low_freq_factor"),
                   params.get("high_freq_factor"), original)


@dataclass(frozen=True)
class ModelArgs:
    """What the forward pass reads from config.json, checked once. The defaults after
    `mlp_bias` are Llama's; each architecture module sets where its model differs."""

    model_type: str
    vocab_size: int
    hidden_size: int
    num_layers: int
    heads: int
    kv_heads: int
    head_dim: int
    rms_norm_eps: float = 1e-6
    rope: RopeParams = RopeParams()
    tie_word_embeddings: bool = False
    qkv_bias: bool = False  # Qwen2 always; Llama's `attention_bias`
    o_bias: bool = False  # Llama's `attention_bias`
    mlp_bias: bool = False  # Llama's `mlp_bias`
    # -- where architectures differ from Llama -------------------------------------------
    windows: tuple[int | None, ...] = ()  # per layer: its sliding window (None: full); (): all full
    local_rope: RopeParams | None = None  # the sliding layers' RoPE where it differs (Gemma 3)
    qk_norm: str | None = None  # RMSNorm of each q/k head: "heads" (Qwen3), "transposed" (Gemma 3)
    gemma_norms: bool = False  # RMSNorm in float32 times (1 + weight); norms after attention/MLP
    embed_scale: float | None = None  # embeddings times this, in the model dtype (Gemma)
    activation: str = "silu"  # of the gated MLP: "silu" or "gelu_pytorch_tanh" (Gemma)
    attention_scale: float | None = None  # None: head_dim ** -0.5
    final_softcap: float | None = None  # logits = cap * tanh(logits / cap) (Gemma's option)
    fused: bool = False  # q/k/v and gate/up stored as one projection each (Phi-3)

    def __post_init__(self) -> None:
        sizes = ("vocab_size", "hidden_size", "num_layers", "heads", "kv_heads", "head_dim")
        for name in sizes:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise UnsupportedModelError(f"{name} must be a positive integer (got {value!r})")
        if self.heads % self.kv_heads:
            raise UnsupportedModelError(
                f"{self.heads} attention heads do not split into {self.kv_heads} key/value "
                "heads")
        if self.head_dim % 2:
            raise UnsupportedModelError(f"RoPE needs an even head_dim (got {self.head_dim})")
        if not self.rms_norm_eps > 0:
            raise UnsupportedModelError(f"rms_norm_eps must be positive ({self.rms_norm_eps})")
        if self.windows and len(self.windows) != self.num_layers:
            raise UnsupportedModelError(f"{len(self.windows)} layer types for "
                                        f"{self.num_layers} layers")
        for window in self.windows:
            if window is not None and (not isinstance(window, int) or isinstance(window, bool)
                                       or window < 1):
                raise UnsupportedModelError(f"sliding_window must be a positive integer "
                                            f"(got {window!r})")
        if self.activation not in ACTIVATIONS:
            raise UnsupportedModelError(f"{self.model_type} with activation "
                                        f"{self.activation!r} is not native")
        if self.qk_norm is not None and self.qk_norm not in QK_NORMS:
            raise ValueError(f"unknown qk_norm {self.qk_norm!r}")

    @property
    def sliding(self) -> bool:
        """Whether any layer attends over a sliding window."""
        return any(window is not None for window in self.windows)

    @classmethod
    def from_config(cls, config: dict) -> ModelArgs:
        """The arguments of `config` (a parsed config.json), by its architecture's module;
        raises `UnsupportedModelError` for what the forward pass does not compute."""
        from chatcli.lm.models import args_of

        return args_of(config)


def positive_window(config: dict, arch: str) -> int:
    """The config's `sliding_window`, checked."""
    window = config.get("sliding_window")
    if not isinstance(window, int) or isinstance(window, bool) or window < 1:
        raise UnsupportedModelError(f"{arch} sliding_window must be a positive integer "
                                    f"(got {window!r})")
    return window


def window_layers(config: dict, arch: str, window: int | None) -> tuple[int | None, ...]:
    """Per layer, its sliding window or None, from `layer_types` ("full_attention",
    "sliding_attention"), all layers full when absent; () when no layer slides."""
    types = config.get("layer_types")
    if types is None:
        return ()
    if not isinstance(types, list) or len(types) != config.get("num_hidden_layers"):
        raise UnsupportedModelError(f"{arch} layer_types does not list one type per layer")
    unknown = sorted(set(types) - {"full_attention", "sliding_attention"})
    if unknown:
        raise UnsupportedModelError(f"{arch} with layer type {unknown[0]!r} is not native")
    if "sliding_attention" in types and window is None:
        raise UnsupportedModelError(f"{arch} with sliding layers but no sliding_window")
    windows = tuple(window if kind == "sliding_attention" else None for kind in types)
    return windows if any(w is not None for w in windows) else ()


def qwen_windows(config: dict, arch: str) -> tuple[int | None, ...]:
    """Qwen2/Qwen3: `use_sliding_window` turns `sliding_window` on for the layers from
    `max_window_layers` on, unless `layer_types` lists each layer's type."""
    window = positive_window(config, arch) if config.get("use_sliding_window") else None
    if config.get("layer_types") is not None:
        return window_layers(config, arch, window)
    if window is None:
        return ()
    first = config.get("max_window_layers", 28)
    layers = config.get("num_hidden_layers")
    if not isinstance(layers, int) or not isinstance(first, int):
        return ()  # common_args names what is missing or malformed
    windows = tuple(window if i >= first else None for i in range(layers))
    return windows if any(w is not None for w in windows) else ()


def common_args(config: dict, *, activation_key: str = "hidden_act",
                default_activation: str = "silu", default_head_dim: int | None = None,
                default_tie: bool = False, theta: float = 10_000.0,
                **differences: Any) -> ModelArgs:
    """The arguments every Llama-like config shares, with the architecture's
    `differences` (`ModelArgs` fields) on top. `activation_key` names the config's
    activation field, `default_head_dim` the head size when the config gives none (else
    hidden_size // heads), `default_tie` whether the head is tied when the config does
    not say, `theta` the default RoPE base."""
    arch = config.get("model_type") or "unknown"
    activation = config.get(activation_key) or default_activation
    unsupported = {
        f"activation {activation!r}": activation not in ACTIVATIONS,
        "non-causal attention": not config.get("is_causal", True),
        "pre-quantized weights": "quantization_config" in config,
    }
    for what, present in unsupported.items():
        if present:
            raise UnsupportedModelError(f"{arch} with {what} is not native")
    missing = [key for key in ("vocab_size", "hidden_size", "num_hidden_layers",
                               "num_attention_heads") if config.get(key) is None]
    if missing:
        raise UnsupportedModelError(f"config.json lacks {', '.join(missing)}")
    heads = config["num_attention_heads"]
    hidden = config["hidden_size"]
    head_dim = config.get("head_dim") or default_head_dim or (
        hidden // heads if isinstance(hidden, int) and isinstance(heads, int) and heads else 0)
    fields: dict[str, Any] = {
        "model_type": arch, "vocab_size": config["vocab_size"], "hidden_size": hidden,
        "num_layers": config["num_hidden_layers"], "heads": heads,
        "kv_heads": config.get("num_key_value_heads") or heads, "head_dim": head_dim,
        "rms_norm_eps": config.get("rms_norm_eps", 1e-6),
        "tie_word_embeddings": bool(config.get("tie_word_embeddings", default_tie)),
        "activation": activation,
    }
    if "rope" not in differences:
        fields["rope"] = RopeParams.from_config(config, theta=theta)
    fields.update(differences)
    return ModelArgs(**fields)
