"""A lean, pure-torch forward pass for Llama-family causal LMs (llama, qwen2).

Contract: `ModelArgs.from_config(config)` parses a config.json once into the numbers the
forward pass reads, and raises `UnsupportedModelError` (a `ChatcliError` and a
`ValueError`) naming what it cannot compute; `supports(config)` asks it.
`NativeCausalLM.from_folder(folder, dtype)` reads a transformers-style checkpoint folder
(config.json plus one or sharded *.safetensors files) and `forward(input_ids, cache)`
returns logits for the last `logits_to_keep` positions together with the grown
`KVCache`, positions continuing from `len(cache)`. A prompt longer than `prefill_chunk`
tokens (512) is fed in chunks of that size, so no tensor grows with prompt x prompt
(nor prompt x MLP width) at once: the logits of a chunked prefill equal an unchunked
one up to float rounding (other matmul shapes, an explicit mask), and they equal
transformers' own chunked prefill (`generate(prefill_chunk_size=...)`) bit for bit.

On CPU the logits are bit-identical to transformers' `LlamaForCausalLM` /
`Qwen2ForCausalLM` (SDPA attention, no padding) in float32 and bfloat16: every op,
its operand shapes, its dtype casts and the SDPA call (`is_causal`, `enable_gqa`,
boolean mask when a multi-token chunk follows a non-empty cache) mirror transformers
5.x, so greedy decoding picks the same tokens. It exists so that chatcli can answer
without importing transformers' modeling code, which is slow to import; it never
imports transformers. `quantize("int8"|"int4")` swaps in weight-only quantized linear
layers (`chatcli.lm.quant`) and faster, no longer bit-identical ops; `from_linears`
builds a model whose linears are made elsewhere (a GGUF read at its stored precision,
`chatcli.lm.gguf_weights`), with an embedding that may be a lookup callable (a table
left quantized) instead of a tensor.

The transformer block is written once (`NativeCausalLM.block`: norm, attention,
residual, norm, MLP, residual); what varies is passed in or chosen per model: the
cache write (`KVCache.append` here, a static in-place write in `chatcli.lm.graphs`),
the attention kernel (`attend` here, a masked fixed-shape one in graphs.py), and the
exact or fast ops (RMSNorm, RoPE table, fused projections, float32 attention) of a
quantized model. RoPE is `apply_rope` over cos/sin from `rope_cos_sin`, for every path.

It deliberately knows nothing about tokenization, decoding strategies or text:
token ids go in, logits and a cache come out. It supports one unpadded sequence
per row (all rows the same length), full attention only (no sliding windows)
and the "default" and "llama3" RoPE types.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, ClassVar, Protocol

import torch
import torch.nn.functional as F

from chatcli.errors import ChatcliError
from chatcli.lm.quant import Dense, Linear, from_tensors, fuse, quantize, to_tensors

SUPPORTED_MODEL_TYPES = frozenset({"llama", "qwen2"})
_ROPE_TYPES = frozenset({"default", "llama3"})
_LLAMA3_KEYS = ("factor", "low_freq_factor", "high_freq_factor",
                "original_max_position_embeddings")


class UnsupportedModelError(ChatcliError, ValueError):
    """A config.json this forward pass cannot compute exactly, or a malformed one."""

    def __init__(self, message: str) -> None:
        super().__init__(message, 'set implementation = "transformers" for this model')


@dataclass(frozen=True)
class RopeParams:
    """Rotary position embedding settings ("default", or "llama3" frequency scaling)."""

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

    @classmethod
    def from_config(cls, config: dict) -> RopeParams:
        """From a 5.x `rope_parameters` or a 4.x `rope_theta` + `rope_scaling` config."""
        params = dict(config.get("rope_parameters") or config.get("rope_scaling") or {})
        if any(isinstance(value, dict) for value in params.values()):
            raise UnsupportedModelError("RoPE parameters nested per layer type are not native")
        rotary = params.get("partial_rotary_factor", config.get("partial_rotary_factor"))
        if rotary not in (None, 1.0):
            raise UnsupportedModelError(f"partial_rotary_factor {rotary} is not native")
        kind = params.get("rope_type", params.get("type", "default"))
        original = params.get("original_max_position_embeddings")
        if kind == "llama3":
            original = config.get("original_max_position_embeddings",
                                  original or config.get("max_position_embeddings"))
        return cls(kind, params.get("rope_theta", config.get("rope_theta", 10_000.0)),
                   params.get("factor"), params.get("low_freq_factor"),
                   params.get("high_freq_factor"), original)


@dataclass(frozen=True)
class ModelArgs:
    """What the forward pass reads from config.json, checked once."""

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

    def __post_init__(self) -> None:
        if self.model_type not in SUPPORTED_MODEL_TYPES:
            raise UnsupportedModelError(
                f"{self.model_type} architecture has no native implementation")
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

    @classmethod
    def from_config(cls, config: dict) -> ModelArgs:
        """The arguments of `config` (a parsed config.json); raises `UnsupportedModelError`
        for what this module does not compute (sliding windows, other activations, ...)."""
        arch = config.get("model_type") or "unknown"
        if arch not in SUPPORTED_MODEL_TYPES:
            raise UnsupportedModelError(f"{arch} architecture has no native implementation")
        unsupported = {
            "a sliding window": config.get("use_sliding_window", False),
            "layer types other than full attention":
                set(config.get("layer_types") or ["full_attention"]) != {"full_attention"},
            f"activation {config.get('hidden_act')!r}": config.get("hidden_act", "silu") != "silu",
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
        head_dim = config.get("head_dim") or (hidden // heads if isinstance(hidden, int)
                                              and isinstance(heads, int) and heads else 0)
        attention_bias = bool(config.get("attention_bias", False))
        return cls(
            model_type=arch, vocab_size=config["vocab_size"], hidden_size=hidden,
            num_layers=config["num_hidden_layers"], heads=heads,
            kv_heads=config.get("num_key_value_heads") or heads, head_dim=head_dim,
            rms_norm_eps=config.get("rms_norm_eps", 1e-6), rope=RopeParams.from_config(config),
            tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
            qkv_bias=arch == "qwen2" or attention_bias, o_bias=attention_bias,
            mlp_bias=bool(config.get("mlp_bias", False)),
        )


def supports(config: dict) -> bool:
    """Whether `config` (a parsed config.json) describes a model this module computes exactly."""
    try:
        ModelArgs.from_config(config)
    except UnsupportedModelError:
        return False
    return True


# -- RoPE: one frequency table, one table builder, one rotation ------------------------------
def inv_freq(rope: RopeParams, dim: int) -> torch.Tensor:
    """RoPE inverse frequencies, computed with transformers' exact float32 expressions."""
    freqs = 1.0 / (rope.theta ** (torch.arange(0, dim, 2, dtype=torch.int64).to(torch.float) / dim))
    if rope.type != "llama3":
        return freqs
    assert rope.factor and rope.low_freq_factor and rope.high_freq_factor
    assert rope.original_max_position_embeddings
    factor, low, high = rope.factor, rope.low_freq_factor, rope.high_freq_factor
    old_context_len = rope.original_max_position_embeddings
    low_freq_wavelen, high_freq_wavelen = old_context_len / low, old_context_len / high
    wavelen = 2 * math.pi / freqs
    inv_freq_llama = torch.where(wavelen > low_freq_wavelen, freqs / factor, freqs)
    smooth_factor = (old_context_len / wavelen - low) / (high - low)
    smoothed = (1 - smooth_factor) * inv_freq_llama / factor + smooth_factor * inv_freq_llama
    is_medium_freq = ~(wavelen < high_freq_wavelen) * ~(wavelen > low_freq_wavelen)
    return torch.where(is_medium_freq, smoothed, inv_freq_llama)


def rope_cos_sin(
    inv_freq: torch.Tensor, positions: torch.Tensor, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin (len(positions), head_dim) in `dtype`, as transformers computes them for
    those positions (its rotary embedding's matmul has one term: a product, rounded once)."""
    freqs = positions[:, None].float() * inv_freq
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """`x` (rows, heads, positions, head_dim) rotated: x * cos + rotate_half(x) * sin."""
    half = x.shape[-1] // 2
    return (x * cos) + (torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin)


# -- caches ----------------------------------------------------------------------------------
class CacheWriter(Protocol):
    """Where a block writes its new keys/values: views over every position it attends to."""

    def append(
        self, layer: int, key: torch.Tensor, value: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]: ...


Attend = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


class KVCache:
    """Per-layer key/value tensors of shape (rows, kv_heads, seq, head_dim).

    Storage is preallocated with spare capacity and grown by doubling, so decoding
    writes each new position in place instead of concatenating every step. `reserve`
    announces a length (a chunked prefill's end) so that one allocation holds it.
    `croppable`: `crop` rolls back exactly, to any length (it only moves `length`).
    """

    initial_capacity = 256  # positions allocated at least, on the first write
    croppable: ClassVar[bool] = True

    def __init__(self, layers: int) -> None:
        self.keys: list[torch.Tensor | None] = [None] * layers
        self.values: list[torch.Tensor | None] = [None] * layers
        self.length = 0
        self._reserved = 0

    def __len__(self) -> int:
        return self.length

    def reserve(self, length: int) -> None:
        """Allocate room for at least `length` positions at the next growth."""
        self._reserved = max(self._reserved, length)

    def append(
        self, layer: int, key: torch.Tensor, value: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write `key`/`value` after the cached positions; views over everything so far."""
        start, end = self.length, self.length + key.shape[2]
        for store, new in ((self.keys, key), (self.values, value)):
            buf = store[layer]
            if buf is not None and buf.shape[0] != new.shape[0]:
                raise ValueError(f"cache holds {buf.shape[0]} rows, input has {new.shape[0]}")
            if buf is None or buf.shape[2] < end:
                doubled = 2 * buf.shape[2] if buf is not None else self.initial_capacity
                capacity = max(end, self._reserved, doubled)
                grown = new.new_empty((new.shape[0], new.shape[1], capacity, new.shape[3]))
                if buf is not None and start:
                    grown[:, :, :start] = buf[:, :, :start]
                store[layer] = buf = grown
            buf[:, :, start:end] = new
        keys, values = self.keys[layer], self.values[layer]
        assert keys is not None and values is not None
        return keys[:, :, :end], values[:, :, :end]

    def _map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
        self.keys = [None if t is None else fn(t) for t in self.keys]
        self.values = [None if t is None else fn(t) for t in self.values]

    def reorder(self, rows: torch.Tensor) -> None:
        """Keep rows `rows` (in that order), e.g. the surviving beams."""
        self._map(lambda t: t.index_select(0, rows.to(t.device)))

    def crop(self, length: int) -> None:
        """Keep the first `length` positions."""
        if not 0 <= length <= self.length:
            raise ValueError(f"cannot crop a cache of {self.length} positions to {length}")
        self.length = length

    def expand(self, rows: int) -> None:
        """Repeat a 1-row cache to `rows` rows."""
        if any(t is not None and t.shape[0] != 1 for t in self.keys):
            raise ValueError("only a 1-row cache can be expanded")
        self._map(lambda t: t.expand(rows, -1, -1, -1).contiguous())


_Weights = dict[str, torch.Tensor]


@dataclass
class _Layer:
    input_norm: torch.Tensor
    q: Any  # Linear; None once fused into `qkv`
    k: Any
    v: Any
    o: Linear
    post_norm: torch.Tensor
    gate: Any  # Linear; None once fused into `gate_up`
    up: Any
    down: Linear
    # After `quantize`: q/k/v and gate/up as one fused linear each (None: separate)
    qkv: Linear | None = None
    gate_up: Linear | None = None


_SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
    "U8": torch.uint8, "BOOL": torch.bool,
}


def _read_safetensors(path: Path, dtype: torch.dtype, device: torch.device) -> _Weights:
    """Every tensor of one safetensors file, in `dtype`.

    A tensor already in `dtype` comes from safetensors' mapping of the file, exactly as
    transformers loads it (the matmul kernels' rounding depends on the data's alignment,
    so this is part of being bit-identical). A tensor to convert is read with plain
    `read` and converted at once: converting from the mapping kept the whole mapped
    file resident, and loading the float32 cache into bf16 peaked at ~1 GB for a 135M
    model; this way the peak is the converted weights plus the largest single tensor.
    """
    from safetensors import SafetensorError, safe_open

    try:  # safetensors checks the header (and that the data is all there) on opening
        mapped_file = safe_open(str(path), framework="pt", device="cpu")
    except SafetensorError as exc:
        raise ValueError(f"{path.name}: {exc}") from exc
    weights: _Weights = {}
    with open(path, "rb") as f, mapped_file as mapped:
        header_len = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(header_len))
        base = 8 + header_len
        for key, info in header.items():
            if key == "__metadata__":
                continue
            source = _SAFETENSORS_DTYPES[info["dtype"]]
            if source == dtype:
                weights[key] = mapped.get_tensor(key).to(device=device)
                continue
            start, end = info["data_offsets"]
            buf = bytearray(end - start)
            f.seek(base + start)
            if f.readinto(buf) != len(buf):
                raise ValueError(f"{path.name}: tensor {key} is cut short")
            flat = torch.frombuffer(buf, dtype=source) if buf else torch.empty(0, dtype=source)
            weights[key] = flat.reshape(info["shape"]).to(device=device, dtype=dtype)
    return weights


def _load_weights(folder: Path, dtype: torch.dtype, device: torch.device) -> _Weights:
    index = folder / "model.safetensors.index.json"
    if index.exists():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    else:
        files = [p.name for p in sorted(folder.glob("*.safetensors"))]
    if not files:
        raise FileNotFoundError(f"no *.safetensors weights in {folder}")
    weights: _Weights = {}
    for name in files:
        weights.update(_read_safetensors(folder / name, dtype, device))
    return weights


class NativeCausalLM:
    """Weights as plain tensors and a forward pass mirroring transformers' op order."""

    prefill_chunk = 512  # positions fed at once by `forward`; 0: any number at once

    def __init__(self, args: ModelArgs, weights: _Weights, config: dict | None = None) -> None:
        self.args = args
        self.config = config if config is not None else {}
        self.heads, self.kv_heads, self.head_dim = args.heads, args.kv_heads, args.head_dim
        self.scale = self.head_dim**-0.5
        self.eps = args.rms_norm_eps
        self.embed = weights["model.embed_tokens.weight"]
        expected = (args.vocab_size, args.hidden_size)
        if tuple(self.embed.shape) != expected:
            raise ValueError(f"model.embed_tokens.weight has shape {tuple(self.embed.shape)}, "
                             f"config.json says {expected}")
        self.device, self.dtype = self.embed.device, self.embed.dtype
        tied = args.tie_word_embeddings or "lm_head.weight" not in weights
        self.lm_head = self.embed if tied else weights["lm_head.weight"]
        self.vocab_size = self.lm_head.shape[0]
        self.norm = weights["model.norm.weight"]
        self.inv_freq = inv_freq(args.rope, self.head_dim).to(self.device)

        def linear(name: str, bias: bool) -> Dense | None:  # None: built elsewhere
            if f"{name}.weight" not in weights:  # (`from_linears`)
                return None
            return Dense(weights[f"{name}.weight"], weights[f"{name}.bias"] if bias else None)

        def layer(p: str) -> _Layer:
            q, k, v = (linear(f"{p}.self_attn.{n}_proj", args.qkv_bias) for n in "qkv")
            o = linear(f"{p}.self_attn.o_proj", args.o_bias)
            gate, up, down = (linear(f"{p}.mlp.{n}_proj", args.mlp_bias)
                              for n in ("gate", "up", "down"))
            norms = (weights[f"{p}.{n}_layernorm.weight"] for n in ("input", "post_attention"))
            input_norm, post_norm = norms
            return _Layer(input_norm, q, k, v, o, post_norm, gate, up, down)

        self.layers = [layer(f"model.layers.{i}") for i in range(args.num_layers)]
        self.head: Linear = Dense(self.lm_head)
        self.quantization = "none"
        self.exact = True  # bit-identical to transformers; False once fused (quantized)
        self._rope_table: tuple[torch.Tensor, torch.Tensor] | None = None  # the fast ops'
        self._norm_weights: dict[int, torch.Tensor] = {}  # `_fast_norm`'s [w, w]

    @classmethod
    def from_folder(cls, folder: Path, dtype: torch.dtype, device: str = "cpu") -> NativeCausalLM:
        folder = Path(folder)
        config = json.loads((folder / "config.json").read_text())
        try:
            args = ModelArgs.from_config(config)
        except UnsupportedModelError as exc:
            raise UnsupportedModelError(
                f"{folder} holds a model this native implementation does not support: {exc}"
            ) from exc
        return cls(args, _load_weights(folder, dtype, torch.device(device)), config)

    # -- quantization ----------------------------------------------------------------------
    def quantize(self, mode: str) -> None:
        """Replace every linear layer, and the output head, by its `mode` version.

        Quantized layers also fuse q/k/v and gate/up into one linear each and switch to
        the fast ops (see `block`): with int8 or int4 weights the result is no longer
        bit-identical to transformers anyway, and fewer, larger matrix-vector products
        run faster. The embedding lookup keeps the full-precision table. "none" leaves
        the model unchanged.
        """
        if mode == "none" or mode == self.quantization:
            return
        if self.quantization != "none":
            raise ValueError("a model is quantized once")
        self._fuse(lambda lin: quantize(lin, mode))
        assert isinstance(self.head, Dense)
        # The output head decides every token directly; 4 bits there cost visible quality
        # (llama.cpp's 4-bit formats keep it at 6-8 bits too), so int4 keeps it at int8.
        self.head = quantize(self.head, "int8" if mode == "int4" else mode)
        self.quantization = mode

    def _fuse(self, convert: Callable[[Dense], Linear]) -> None:
        """Fuse q/k/v and gate/up, pass every layer linear through `convert`, and switch
        to the fast (no longer bit-identical) ops."""
        for layer in self.layers:
            dense = [layer.q, layer.k, layer.v, layer.gate, layer.up]
            assert all(isinstance(lin, Dense) for lin in dense)
            q, k, v, gate, up = (lin for lin in dense if isinstance(lin, Dense))
            layer.qkv = convert(fuse([q, k, v]))
            layer.gate_up = convert(fuse([gate, up]))
            assert isinstance(layer.o, Dense) and isinstance(layer.down, Dense)
            layer.o, layer.down = convert(layer.o), convert(layer.down)
            layer.q = layer.k = layer.v = layer.gate = layer.up = None  # free the dense copies
        self.exact = False

    _QUANTIZED = ("qkv", "gate_up", "o", "down")

    def quantized_tensors(self) -> dict[str, torch.Tensor]:
        """The quantized layers' tensors, to save; `load_quantized` restores them."""
        if self.quantization == "none":
            raise ValueError("the model is not quantized")
        out = to_tensors(self.head, "head")
        for i, layer in enumerate(self.layers):
            for name in self._QUANTIZED:
                out.update(to_tensors(getattr(layer, name), f"layers.{i}.{name}"))
        return out

    def load_quantized(self, mode: str, tensors: dict[str, torch.Tensor]) -> None:
        """Adopt layers saved by `quantized_tensors` of a model quantized to `mode`."""
        self._adopt(mode, lambda name: from_tensors(tensors, name))

    @classmethod
    def from_linears(cls, args: ModelArgs, weights: dict[str, Any],
                     linears: dict[str, Linear], mode: str,
                     config: dict | None = None) -> NativeCausalLM:
        """A model whose linears are built already (e.g. read from a GGUF at its own
        precision): `linears` under `quantized_tensors`' names ("head",
        "layers.{i}.qkv|gate_up|o|down"), `weights` the rest (norms, and the embedding:
        a tensor or a lookup callable with `shape`, `dtype` and `device`)."""
        model = cls(args, weights, config)
        model._adopt(mode, linears.__getitem__)
        return model

    def _adopt(self, mode: str, linear: Callable[[str], Linear]) -> None:
        if self.quantization != "none":
            raise ValueError("a model is quantized once")
        self.head = linear("head")
        for i, layer in enumerate(self.layers):
            layer.qkv, layer.gate_up, layer.o, layer.down = (
                linear(f"layers.{i}.{name}") for name in self._QUANTIZED
            )
            layer.q = layer.k = layer.v = layer.gate = layer.up = None  # free the dense copies
        self.quantization, self.exact = mode, False

    # -- the ops: exact (transformers' op order) or fast (a fused model's) -----------------
    @property
    def cache_dtype(self) -> torch.dtype:
        """The dtype of cached keys/values: the fast ops attend in float32."""
        return self.dtype if self.exact else torch.float32

    def rms_norm(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """RMSNorm: transformers' `LlamaRMSNorm` op for op, or `_fast_norm` once fused."""
        if not self.exact:
            return self._fast_norm(x, weight)
        h = x.to(torch.float32)
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return weight * h.to(x.dtype)

    def _fast_norm(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """RMSNorm as one `layer_norm` kernel: [x, -x] has mean 0 and variance mean(x^2),
        so its first half, layer-normalised, is x / sqrt(mean(x^2) + eps). Two kernels
        instead of `F.rms_norm`'s eight on CPU (8 vs 14 us per call for SmolLM2)."""
        d = x.shape[-1]
        doubled = self._norm_weights.get(id(weight))
        if doubled is None:
            doubled = self._norm_weights[id(weight)] = torch.cat((weight, weight))
        return F.layer_norm(torch.cat((x, -x), dim=-1), (2 * d,), doubled, None, self.eps)[..., :d]

    def rope(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin (len(positions), head_dim) in the model dtype."""
        return rope_cos_sin(self.inv_freq, positions, self.dtype)

    def rope_at(self, past: int, new: int) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin (1, 1, new, head_dim) for positions past..past+new-1: computed for
        exactly those positions, as transformers does, or (fast ops) sliced from a table
        grown by doubling."""
        if self.exact:
            cos, sin = self.rope(torch.arange(past, past + new, device=self.device))
        else:
            table = self._rope_table
            if table is None or table[0].shape[0] < past + new:
                size = max(past + new, 2 * table[0].shape[0] if table is not None else 256)
                table = self._rope_table = self.rope(torch.arange(size, device=self.device))
            cos, sin = table[0][past:past + new], table[1][past:past + new]
        return cos[None, None], sin[None, None]

    def qkv(
        self, layer: _Layer, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q, k, v (rows, heads, new, head_dim) of normalised `x`, RoPE applied to q and k.

        Separate projections follow transformers (each projection, then RoPE on q and on
        k); a fused layer makes one matmul and one RoPE over q and k together, and hands
        float32 on (cheaper attention matmuls at these sizes than bf16).
        """
        rows, new, _ = x.shape
        hd = self.head_dim
        if layer.qkv is None:
            q, k, v = (lin(x).view(rows, new, -1, hd).transpose(1, 2)
                       for lin in (layer.q, layer.k, layer.v))
            return apply_rope(q, cos, sin), apply_rope(k, cos, sin), v
        qkv = layer.qkv(x).view(rows, new, -1, hd).transpose(1, 2)
        heads, rotated = self.heads, self.heads + self.kv_heads
        qk = apply_rope(qkv[:, :rotated], cos, sin).float()
        return qk[:, :heads], qk[:, heads:], qkv[:, rotated:].float()

    @staticmethod
    def mlp(layer: _Layer, x: torch.Tensor) -> torch.Tensor:
        """The SwiGLU feed-forward block (gate and up fused once quantized)."""
        if layer.gate_up is not None:
            gate, up = layer.gate_up(x).chunk(2, dim=-1)
            return layer.down(F.silu(gate) * up)
        return layer.down(F.silu(layer.gate(x)) * layer.up(x))

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, past: int) -> torch.Tensor:
        """transformers' `sdpa_attention_forward` with the mask `create_causal_mask` builds,
        for q (rows, heads, new, hd) over `past` cached and `new` positions; the fast ops
        attend a single new position with `_attend_one`. Returns (rows, new, heads * hd)."""
        rows, _, new, head_dim = q.shape
        if new == 1 and not self.exact:
            return self._attend_one(q, k, v)
        mask = None  # transformers skips the mask (relying on `is_causal`) unless ...
        if new > 1 and past > 0:  # ... a multi-token chunk follows cached positions
            q_pos = torch.arange(past, past + new, device=q.device)[:, None]
            mask = (q_pos >= torch.arange(past + new, device=q.device)[None, :])[None, None]
        n_rep, gqa = self.heads // self.kv_heads, False
        if n_rep > 1:
            if mask is None and head_dim <= 256:
                gqa = True
            elif new == 1:  # transformers' `pack_gqa`
                q = q.reshape(rows, self.kv_heads, n_rep, head_dim)
            else:  # transformers' `repeat_kv`
                shape = (rows, self.kv_heads * n_rep, k.shape[2], head_dim)
                k = k[:, :, None].expand(rows, self.kv_heads, n_rep, *k.shape[2:]).reshape(shape)
                v = v[:, :, None].expand(rows, self.kv_heads, n_rep, *v.shape[2:]).reshape(shape)
        is_causal = new > 1 and mask is None
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, scale=self.scale, is_causal=is_causal, enable_gqa=gqa
        )
        return out.reshape(rows, -1, new, head_dim).transpose(1, 2).reshape(rows, new, -1)

    def _attend_one(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Attention of one new position over the cache, as two small matmuls.

        torch's fused CPU attention kernel is slow for a single query: 12x slower than
        this at 1,024 cached positions (docs/benchmarks.md), but it is what
        transformers calls, so only the fast ops (an already inexact model) use this.
        """
        rows, _, _, head_dim = q.shape
        grouped = q.reshape(rows, self.kv_heads, -1, head_dim)  # (rows, kv, n_rep, d)
        scores = torch.matmul(grouped, k.transpose(-1, -2)) * self.scale
        probs = torch.softmax(scores.float(), dim=-1).to(q.dtype)
        return torch.matmul(probs, v).reshape(rows, 1, -1)

    # -- the block and the passes built from it --------------------------------------------
    def block(
        self, layer: _Layer, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
        write: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
        attend: Attend,
    ) -> torch.Tensor:
        """One decoder layer over hidden states `h` (rows, new, hidden): norm, attention,
        residual, norm, MLP, residual. `write(k, v)` stores the new keys/values and returns
        every position's; `attend(q, k, v)` returns (rows, new, heads * head_dim)."""
        q, k, v = self.qkv(layer, self.rms_norm(h, layer.input_norm), cos, sin)
        k, v = write(k, v)
        h = h + layer.o(attend(q, k, v).to(h.dtype))
        return h + self.mlp(layer, self.rms_norm(h, layer.post_norm))

    def hidden(
        self, input_ids: torch.Tensor, cache: CacheWriter, cos: torch.Tensor, sin: torch.Tensor,
        attend: Attend,
    ) -> torch.Tensor:
        """The hidden states (rows, new, hidden) after every layer, before the final norm,
        for `input_ids` (rows, new) at the positions `cos`/`sin` (1, 1, new, head_dim)
        belong to. Writes each layer's keys/values with `cache.append` (its length is the
        caller's to move)."""
        ids = input_ids.to(self.device)
        table = self.embed  # a tensor, or a lookup (a GGUF's table, left quantized)
        h = F.embedding(ids, table) if isinstance(table, torch.Tensor) else table(ids)
        for i, layer in enumerate(self.layers):
            h = self.block(layer, h, cos, sin, partial(cache.append, i), attend)
        return h

    def logits(self, h: torch.Tensor, keep: int) -> torch.Tensor:
        """Logits (rows, keep, vocab) of the last `keep` positions of hidden states `h`."""
        rows, length = h.shape[:2]
        h = self.rms_norm(h, self.norm)[:, length - keep:, :]
        # 2-D: torch's matmul folds the slice into one `mm` for transformers (whose weights
        # require grad) but would `bmm` over a copy of the weight for plain tensors.
        logits = self.head(h.reshape(-1, h.shape[-1]))
        return logits.view(rows, -1, logits.shape[-1])

    def forward(
        self, input_ids: torch.Tensor, cache: KVCache | None, logits_to_keep: int = 1
    ) -> tuple[torch.Tensor, KVCache]:
        """Logits (rows, logits_to_keep, vocab) in the model dtype (0 keeps all positions).

        More than `prefill_chunk` new positions are fed in chunks of that size (as
        transformers' `generate(prefill_chunk_size=...)` does), each chunk over the
        cache the earlier ones filled; only the chunks holding kept positions reach
        the output head.
        """
        with torch.inference_mode():
            cache = KVCache(len(self.layers)) if cache is None else cache
            new = input_ids.shape[1]
            keep = new if logits_to_keep <= 0 else min(logits_to_keep, new)
            size = self.prefill_chunk if 0 < self.prefill_chunk < new else max(new, 1)
            if new > size:
                cache.reserve(len(cache) + new)
            pieces = []
            for start in range(0, max(new, 1), size):
                end = min(start + size, new)
                past = len(cache)
                cos, sin = self.rope_at(past, end - start)
                h = self.hidden(input_ids[:, start:end], cache, cos, sin,
                                lambda q, k, v, past=past: self.attend(q, k, v, past))
                cache.length = past + end - start
                wanted = end - max(start, new - keep)
                if wanted > 0 or end == new:
                    pieces.append(self.logits(h, max(wanted, 0)))
            logits = pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=1)
            return logits, cache

