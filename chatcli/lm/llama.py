"""The one native forward pass for Llama-like causal LMs (every architecture in
`chatcli.lm.models`: llama, qwen2, qwen3, mistral, phi3, gemma3_text).

Contract: `ModelArgs.from_config(config)` parses a config.json once into the numbers and
switches the forward pass reads, by the architecture module of its `model_type`
(`chatcli.lm.models`), and raises `UnsupportedModelError` (a `ChatcliError` and a
`ValueError`) naming what it cannot compute; `supports(config)` asks it.
`NativeCausalLM.from_folder(folder, dtype)` reads a transformers-style checkpoint folder
(config.json plus one or sharded *.safetensors files; `build_layers` maps the tensors
onto the layers) and `forward(input_ids, cache)` returns logits for the last
`logits_to_keep` positions together with the grown `KVCache`, positions continuing from
`len(cache)`. A prompt longer than `prefill_chunk` tokens (512) is fed in chunks of that
size, so no tensor grows with prompt x prompt (nor prompt x MLP width) at once: the
logits of a chunked prefill equal an unchunked one up to float rounding (other matmul
shapes, an explicit mask), and they equal transformers' own chunked prefill
(`generate(prefill_chunk_size=...)`) bit for bit.

On CPU the logits are bit-identical to transformers' `<Arch>ForCausalLM` (SDPA
attention, no padding) in float32 and bfloat16: every op, its operand shapes, its dtype
casts and the SDPA call (`is_causal`, `enable_gqa`, the boolean mask transformers builds
for a multi-token chunk after a non-empty cache or for a sliding window the keys reach)
mirror transformers 5.x, so greedy decoding picks the same tokens. What varies by
architecture is read from `ModelArgs`: Gemma's (1 + w) float32 RMSNorm and its norms
after attention and MLP, QK-norm (Qwen3 before transposing the heads, Gemma 3 after),
the embedding scale, GeGLU, the attention scale, final logit softcapping, Phi-3's fused
q/k/v and gate/up projections (computed as stored), tied heads, and per-layer sliding
windows with a RoPE table per layer kind (Gemma 3's local and global layers).

A sliding layer attends, as transformers' sliding cache returns them, to the new
positions and the `window - 1` before them (a mask where the window cuts in). Its
`KVCache` storage keeps only a bounded stretch of positions (the window, as much again
for rollbacks, and room to append), so memory does not grow with the context; `crop`
to a length whose window reaches before the kept positions is not exact, and
`KVCache.can_crop` says so (the prompt cache then prefills afresh).

It exists so that chatcli can answer without importing transformers' modeling code,
which is slow to import; it never imports transformers. `quantize("int8"|"int4")`
swaps in weight-only quantized linear layers (`chatcli.lm.quant`) and faster, no
longer bit-identical ops; `from_linears` builds a model whose linears are made
elsewhere (a GGUF read at its stored precision, `chatcli.lm.gguf_weights`), with an
embedding that may be a lookup callable (a table left quantized) instead of a tensor.

The transformer block is written once (`NativeCausalLM.block`: norm, attention,
residual, norm, MLP, residual); what varies is passed in or chosen per model: the
cache write (`KVCache.append` here, a static in-place write in `chatcli.lm.graphs`),
the attention kernel (`attend` here, a masked fixed-shape one in graphs.py; it gets
the layer's sliding window), and the exact or fast ops (RMSNorm, RoPE table, fused
projections, float32 attention) of a quantized model. RoPE is `apply_rope` over cos/sin
from `rope_cos_sin`, for every path; `rope(positions)` gives one (cos, sin) pair per
RoPE table and each layer reads its own (`_Layer.rope`).

It deliberately knows nothing about tokenization, decoding strategies or text:
token ids go in, logits and a cache come out. It supports one unpadded sequence
per row (all rows the same length) and the "default", "linear" and "llama3" RoPE types.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, ClassVar, Protocol

import torch
import torch.nn.functional as F

from chatcli.lm.models import supported_model_types
from chatcli.lm.models import supports as supports
from chatcli.lm.models.base import ModelArgs, RopeParams, UnsupportedModelError
from chatcli.lm.quant import Dense, Linear, from_tensors, fuse, quantize, to_tensors

__all__ = ["SUPPORTED_MODEL_TYPES", "KVCache", "ModelArgs", "NativeCausalLM", "RopeParams",
           "UnsupportedModelError", "apply_rope", "inv_freq", "rope_cos_sin", "supports"]

SUPPORTED_MODEL_TYPES = supported_model_types()


# -- RoPE: one frequency table, one table builder, one rotation ------------------------------
def inv_freq(rope: RopeParams, dim: int) -> torch.Tensor:
    """RoPE inverse frequencies, computed with transformers' exact float32 expressions."""
    freqs = 1.0 / (rope.theta ** (torch.arange(0, dim, 2, dtype=torch.int64).to(torch.float) / dim))
    if rope.type == "linear":
        assert rope.factor
        return freqs / rope.factor
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


Attend = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, int | None], torch.Tensor]
"""attend(q, k, v, window): a layer's attention, given its sliding window (None: full)."""
RopePair = tuple[torch.Tensor, torch.Tensor]  # cos, sin


class KVCache:
    """Per-layer key/value tensors of shape (rows, kv_heads, positions, head_dim).

    Storage is preallocated with spare capacity and grown by doubling, so decoding
    writes each new position in place instead of concatenating every step. `reserve`
    announces a length (a chunked prefill's end) so that one allocation holds it.
    `append` returns views over the layer's kept positions up to the new ones: for a
    full-attention layer every position from 0.

    A sliding-window layer (`windows[layer]`, None for full attention) keeps a bounded
    stretch instead: when its storage is full, the positions older than its window plus
    `window` more (kept for rollbacks) are dropped and the rest moved to the front
    (`starts[layer]` is the position at its index 0), so its memory stays about four
    windows however long the context. `can_crop(length)` says whether `crop(length)`
    rolls back exactly: always without sliding layers, else while each sliding layer
    still holds the `window - 1` positions before `length`.
    """

    initial_capacity = 256  # positions allocated at least, on the first write
    croppable: ClassVar[bool] = True  # False: a kind of cache that never crops exactly

    def __init__(self, layers: int, windows: Sequence[int | None] | None = None) -> None:
        self.keys: list[torch.Tensor | None] = [None] * layers
        self.values: list[torch.Tensor | None] = [None] * layers
        self.windows: list[int | None] = list(windows) if windows else [None] * layers
        if len(self.windows) != layers:
            raise ValueError(f"{len(self.windows)} windows for {layers} layers")
        self.starts = [0] * layers
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
        """Write `key`/`value` after the cached positions; views over the kept positions
        up to the new ones (for a full-attention layer: every position so far)."""
        start, end = self.length, self.length + key.shape[2]
        base, window = self.starts[layer], self.windows[layer]
        buf = self.keys[layer]
        if buf is not None and buf.shape[0] != key.shape[0]:
            raise ValueError(f"cache holds {buf.shape[0]} rows, input has {key.shape[0]}")
        if buf is None or buf.shape[2] < end - base:
            if window is None:
                doubled = 2 * buf.shape[2] if buf is not None else self.initial_capacity
                new_base, capacity = base, max(end, self._reserved, doubled)
            else:  # keep the window and as much again before the new positions
                new_base = max(base, start - 2 * window + 1)
                capacity = end - new_base + 2 * window
            for store, new in ((self.keys, key), (self.values, value)):
                old = store[layer]
                grown = new.new_empty((new.shape[0], new.shape[1], capacity, new.shape[3]))
                if old is not None and start > new_base:
                    grown[:, :, :start - new_base] = old[:, :, new_base - base:start - base]
                store[layer] = grown
            self.starts[layer] = base = new_base
        keys, values = self.keys[layer], self.values[layer]
        assert keys is not None and values is not None
        keys[:, :, start - base:end - base] = key
        values[:, :, start - base:end - base] = value
        return keys[:, :, :end - base], values[:, :, :end - base]

    def _map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
        self.keys = [None if t is None else fn(t) for t in self.keys]
        self.values = [None if t is None else fn(t) for t in self.values]

    def reorder(self, rows: torch.Tensor) -> None:
        """Keep rows `rows` (in that order), e.g. the surviving beams."""
        self._map(lambda t: t.index_select(0, rows.to(t.device)))

    def can_crop(self, length: int) -> bool:
        """Whether `crop(length)` leaves every position the next forward attends to."""
        return self.croppable and 0 <= length <= self.length and all(
            window is None or base <= max(0, length - window + 1)
            for base, window in zip(self.starts, self.windows, strict=True))

    def crop(self, length: int) -> None:
        """Keep the first `length` positions."""
        if not 0 <= length <= self.length:
            raise ValueError(f"cannot crop a cache of {self.length} positions to {length}")
        if not self.can_crop(length):
            raise ValueError(f"a sliding-window layer no longer holds the positions before "
                             f"{length}")
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
    q: Any  # Linear; None once fused into `qkv` (or stored fused: Phi-3)
    k: Any
    v: Any
    o: Linear
    post_norm: torch.Tensor  # before the MLP (Gemma's `pre_feedforward_layernorm`)
    gate: Any  # Linear; None once fused into `gate_up` (or stored fused: Phi-3)
    up: Any
    down: Linear
    # q/k/v and gate/up as one linear each (None: separate): Phi-3's, or after `quantize`
    qkv: Linear | None = None
    gate_up: Linear | None = None
    q_norm: torch.Tensor | None = None  # QK-norm (Qwen3, Gemma 3)
    k_norm: torch.Tensor | None = None
    attn_out_norm: torch.Tensor | None = None  # Gemma: on the attention output
    mlp_out_norm: torch.Tensor | None = None  # Gemma: on the MLP output
    window: int | None = None  # sliding window (None: full attention)
    rope: int = 0  # which of the model's RoPE tables (`NativeCausalLM.rope`) it reads


def build_layers(args: ModelArgs, weights: _Weights) -> list[_Layer]:
    """The decoder layers from a checkpoint's tensors (transformers' names, in the model
    dtype). A Gemma norm becomes its float32 multiplier (1 + weight), as transformers
    computes it in every call."""

    def linear(name: str, bias: bool) -> Any:  # None: built elsewhere (`from_linears`)
        if f"{name}.weight" not in weights:
            return None
        return Dense(weights[f"{name}.weight"], weights[f"{name}.bias"] if bias else None)

    def norm(name: str) -> torch.Tensor:
        weight = weights[f"{name}.weight"]
        return 1.0 + weight.float() if args.gemma_norms else weight

    windows = args.windows or (None,) * args.num_layers
    layers = []
    for i, window in enumerate(windows):
        p = f"model.layers.{i}"
        attn, mlp = f"{p}.self_attn", f"{p}.mlp"
        if args.fused:
            q = k = v = gate = up = None
            qkv: Any = linear(f"{attn}.qkv_proj", args.qkv_bias)
            gate_up: Any = linear(f"{mlp}.gate_up_proj", args.mlp_bias)
        else:
            q, k, v = (linear(f"{attn}.{n}_proj", args.qkv_bias) for n in "qkv")
            gate, up = (linear(f"{mlp}.{n}_proj", args.mlp_bias) for n in ("gate", "up"))
            qkv = gate_up = None
        layer = _Layer(norm(f"{p}.input_layernorm"), q, k, v,
                       linear(f"{attn}.o_proj", args.o_bias),
                       norm(f"{p}.pre_feedforward_layernorm" if args.gemma_norms
                            else f"{p}.post_attention_layernorm"),
                       gate, up, linear(f"{mlp}.down_proj", args.mlp_bias), qkv, gate_up,
                       window=window,
                       rope=1 if window is not None and args.local_rope is not None else 0)
        if args.qk_norm:
            layer.q_norm, layer.k_norm = norm(f"{attn}.q_norm"), norm(f"{attn}.k_norm")
        if args.gemma_norms:
            layer.attn_out_norm = norm(f"{p}.post_attention_layernorm")
            layer.mlp_out_norm = norm(f"{p}.post_feedforward_layernorm")
        layers.append(layer)
    return layers


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
        self.scale = args.attention_scale or self.head_dim**-0.5
        self.eps = args.rms_norm_eps
        self.embed = weights["model.embed_tokens.weight"]
        expected = (args.vocab_size, args.hidden_size)
        if tuple(self.embed.shape) != expected:
            raise ValueError(f"model.embed_tokens.weight has shape {tuple(self.embed.shape)}, "
                             f"config.json says {expected}")
        self.device, self.dtype = self.embed.device, self.embed.dtype
        # Gemma's scale: a float32 scalar rounded to the model dtype, as transformers has it
        self.embed_scale = None if args.embed_scale is None else torch.tensor(
            args.embed_scale, dtype=torch.float32).to(self.device, self.dtype)
        tied = args.tie_word_embeddings or "lm_head.weight" not in weights
        self.lm_head = self.embed if tied else weights["lm_head.weight"]
        self.vocab_size = self.lm_head.shape[0]
        self.norm = weights["model.norm.weight"]
        if args.gemma_norms:
            self.norm = 1.0 + self.norm.float()
        self.inv_freq = inv_freq(args.rope, self.head_dim).to(self.device)
        self.inv_freq_local = (None if args.local_rope is None else
                               inv_freq(args.local_rope, self.head_dim).to(self.device))
        self.layers = build_layers(args, weights)
        self.windows = [layer.window for layer in self.layers]
        self.head: Linear = Dense(self.lm_head)
        self.quantization = "none"
        self.exact = True  # bit-identical to transformers; False once fused (quantized)
        self._rope_table: tuple[tuple[torch.Tensor, torch.Tensor], ...] | None = None
        self._norm_weights: dict[int, torch.Tensor] = {}  # `_fast_norm`'s [w, w]
        self._act: Callable[[torch.Tensor], torch.Tensor] = (
            F.silu if args.activation == "silu" else partial(F.gelu, approximate="tanh"))

    def new_cache(self) -> KVCache:
        """An empty cache for this model (its sliding layers' storage bounded)."""
        return KVCache(len(self.layers), self.windows)

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
        def fused(stored: Linear | None, parts: list[Any]) -> Dense:
            if stored is not None:  # stored fused (Phi-3)
                assert isinstance(stored, Dense)
                return stored
            assert all(isinstance(lin, Dense) for lin in parts)
            return fuse(parts)

        for layer in self.layers:
            layer.qkv = convert(fused(layer.qkv, [layer.q, layer.k, layer.v]))
            layer.gate_up = convert(fused(layer.gate_up, [layer.gate, layer.up]))
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
        """RMSNorm: transformers' `LlamaRMSNorm` op for op (Gemma's `Gemma3RMSNorm`, whose
        `weight` here is its float32 multiplier 1 + w), or `_fast_norm` once fused."""
        if not self.exact:
            return self._fast_norm(x, weight)
        h = x.to(torch.float32) if not self.args.gemma_norms else x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        if self.args.gemma_norms:
            return (h * weight).type_as(x)
        return weight * h.to(x.dtype)

    def _fast_norm(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """RMSNorm as one `layer_norm` kernel: [x, -x] has mean 0 and variance mean(x^2),
        so its first half, layer-normalised, is x / sqrt(mean(x^2) + eps). Two kernels
        instead of `F.rms_norm`'s eight on CPU (8 vs 14 us per call for SmolLM2)."""
        d = x.shape[-1]
        doubled = self._norm_weights.get(id(weight))
        if doubled is None:
            doubled = torch.cat((weight, weight)).to(x.dtype)
            self._norm_weights[id(weight)] = doubled
        return F.layer_norm(torch.cat((x, -x), dim=-1), (2 * d,), doubled, None, self.eps)[..., :d]

    def _inv_freqs(self) -> tuple[torch.Tensor, ...]:
        local = self.inv_freq_local
        return (self.inv_freq,) if local is None else (self.inv_freq, local)

    def rope(self, positions: torch.Tensor) -> tuple[tuple[torch.Tensor, torch.Tensor], ...]:
        """cos and sin (len(positions), head_dim) in the model dtype, one pair per RoPE
        table (the model's, then its local layers' where they have their own)."""
        return tuple(rope_cos_sin(freqs, positions, self.dtype) for freqs in self._inv_freqs())

    def rope_at(self, past: int, new: int) -> tuple[tuple[torch.Tensor, torch.Tensor], ...]:
        """cos and sin (1, 1, new, head_dim) for positions past..past+new-1, per RoPE table:
        computed for exactly those positions, as transformers does, or (fast ops) sliced
        from a table grown by doubling."""
        if self.exact:
            pairs = self.rope(torch.arange(past, past + new, device=self.device))
        else:
            table = self._rope_table
            if table is None or table[0][0].shape[0] < past + new:
                size = max(past + new, 2 * table[0][0].shape[0] if table is not None else 256)
                table = self._rope_table = self.rope(torch.arange(size, device=self.device))
            pairs = tuple((cos[past:past + new], sin[past:past + new]) for cos, sin in table)
        return tuple((cos[None, None], sin[None, None]) for cos, sin in pairs)

    def qkv(
        self, layer: _Layer, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q, k, v (rows, heads, new, head_dim) of normalised `x`, QK-norm and RoPE applied
        to q and k.

        The exact ops follow transformers (each projection, or Phi-3's one projection
        sliced into three; QK-norm before or after transposing the heads; RoPE on q and
        on k); a fused layer's fast ops make one matmul and one RoPE over q and k
        together, and hand float32 on (cheaper attention matmuls at these sizes than bf16).
        """
        rows, new, _ = x.shape
        hd = self.head_dim
        if self.exact:
            if layer.qkv is not None:  # Phi-3's `qkv_proj`, sliced as transformers does
                qkv = layer.qkv(x)
                q_end, k_end = self.heads * hd, (self.heads + self.kv_heads) * hd
                parts = (qkv[..., :q_end], qkv[..., q_end:k_end], qkv[..., k_end:])
            else:
                parts = (layer.q(x), layer.k(x), layer.v(x))
            q, k, v = (part.view(rows, new, -1, hd) for part in parts)
            if self.args.qk_norm == "heads":
                q, k = self.rms_norm(q, layer.q_norm), self.rms_norm(k, layer.k_norm)
            q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
            if self.args.qk_norm == "transposed":
                q, k = self.rms_norm(q, layer.q_norm), self.rms_norm(k, layer.k_norm)
            return apply_rope(q, cos, sin), apply_rope(k, cos, sin), v
        assert layer.qkv is not None
        qkv = layer.qkv(x).view(rows, new, -1, hd)
        heads, rotated = self.heads, self.heads + self.kv_heads
        if layer.q_norm is not None and layer.k_norm is not None:
            qk = torch.cat((self.rms_norm(qkv[:, :, :heads], layer.q_norm),
                            self.rms_norm(qkv[:, :, heads:rotated], layer.k_norm)), dim=2)
        else:
            qk = qkv[:, :, :rotated]
        qk = apply_rope(qk.transpose(1, 2), cos, sin).float()
        return qk[:, :heads], qk[:, heads:], qkv[:, :, rotated:].transpose(1, 2).float()

    def mlp(self, layer: _Layer, x: torch.Tensor) -> torch.Tensor:
        """The gated feed-forward block, SwiGLU or GeGLU (gate and up fused once quantized,
        or as stored: Phi-3's `gate_up_proj`, whose up half multiplies)."""
        if layer.gate_up is not None:
            gate, up = layer.gate_up(x).chunk(2, dim=-1)
            return layer.down(up * self._act(gate))
        return layer.down(self._act(layer.gate(x)) * layer.up(x))

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, past: int,
               window: int | None = None) -> torch.Tensor:
        """transformers' `sdpa_attention_forward` with the mask `create_causal_mask` (or,
        for a sliding layer, `create_sliding_window_causal_mask`) builds, for q (rows,
        heads, new, hd) after `past` cached positions, over keys/values `k`, `v` that end
        with the new positions (a sliding layer reads the last `window - 1` cached ones,
        as transformers' sliding cache returns them); the fast ops attend a single new
        position with `_attend_one`. Returns (rows, new, heads * hd)."""
        rows, _, new, head_dim = q.shape
        if window is not None:
            visible = new + min(past, window - 1)
            if k.shape[2] > visible:
                k, v = k[:, :, k.shape[2] - visible:], v[:, :, v.shape[2] - visible:]
        if new == 1 and not self.exact:
            return self._attend_one(q, k, v)
        length = k.shape[2]
        # transformers skips the mask (relying on `is_causal`) unless a multi-token chunk
        # follows cached positions, or a sliding layer's keys reach the window's length
        masked = (new > 1 and past > 0) or (window is not None and length >= window)
        mask = None
        if masked:
            q_pos = torch.arange(past, past + new, device=q.device)[:, None]
            kv_pos = torch.arange(past + new - length, past + new, device=q.device)[None, :]
            mask = q_pos >= kv_pos
            if window is not None:
                mask = mask & (kv_pos > q_pos - window)
            mask = mask[None, None].expand(rows, -1, -1, -1)
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
        (Gemma: norm,) residual, norm, MLP, (Gemma: norm,) residual. `write(k, v)` stores
        the new keys/values and returns the layer's kept positions up to them;
        `attend(q, k, v, window)` (the layer's sliding window or None) returns (rows, new,
        heads * head_dim)."""
        q, k, v = self.qkv(layer, self.rms_norm(h, layer.input_norm), cos, sin)
        k, v = write(k, v)
        out = layer.o(attend(q, k, v, layer.window).to(h.dtype))
        if layer.attn_out_norm is not None:
            out = self.rms_norm(out, layer.attn_out_norm)
        h = h + out
        out = self.mlp(layer, self.rms_norm(h, layer.post_norm))
        if layer.mlp_out_norm is not None:
            out = self.rms_norm(out, layer.mlp_out_norm)
        return h + out

    def embed_tokens(self, input_ids: torch.Tensor) -> torch.Tensor:
        """The embeddings of `input_ids` (rows, new), times Gemma's scale."""
        ids = input_ids.to(self.device)
        table = self.embed  # a tensor, or a lookup (a GGUF's table, left quantized)
        h = F.embedding(ids, table) if isinstance(table, torch.Tensor) else table(ids)
        return h if self.embed_scale is None else h * self.embed_scale

    def hidden(
        self, input_ids: torch.Tensor, cache: CacheWriter, rope: Sequence[RopePair],
        attend: Attend,
    ) -> torch.Tensor:
        """The hidden states (rows, new, hidden) after every layer, before the final norm,
        for `input_ids` (rows, new) at the positions whose cos/sin (1, 1, new, head_dim)
        `rope` holds, one pair per RoPE table (`rope_at`). Writes each layer's
        keys/values with `cache.append` (its length is the caller's to move)."""
        h = self.embed_tokens(input_ids)
        for i, layer in enumerate(self.layers):
            cos, sin = rope[layer.rope]
            h = self.block(layer, h, cos, sin, partial(cache.append, i), attend)
        return h

    def logits(self, h: torch.Tensor, keep: int) -> torch.Tensor:
        """Logits (rows, keep, vocab) of the last `keep` positions of hidden states `h`
        (softcapped where the config says so)."""
        rows, length = h.shape[:2]
        h = self.rms_norm(h, self.norm)[:, length - keep:, :]
        # 2-D: torch's matmul folds the slice into one `mm` for transformers (whose weights
        # require grad) but would `bmm` over a copy of the weight for plain tensors.
        logits = self.head(h.reshape(-1, h.shape[-1]))
        cap = self.args.final_softcap
        if cap is not None:
            logits = torch.tanh(logits / cap) * cap
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
            cache = self.new_cache() if cache is None else cache
            new = input_ids.shape[1]
            keep = new if logits_to_keep <= 0 else min(logits_to_keep, new)
            size = self.prefill_chunk if 0 < self.prefill_chunk < new else max(new, 1)
            if new > size:
                cache.reserve(len(cache) + new)
            pieces = []
            for start in range(0, max(new, 1), size):
                end = min(start + size, new)
                past = len(cache)
                h = self.hidden(input_ids[:, start:end], cache, self.rope_at(past, end - start),
                                lambda q, k, v, window, past=past: self.attend(q, k, v, past,
                                                                               window))
                cache.length = past + end - start
                wanted = end - max(start, new - keep)
                if wanted > 0 or end == new:
                    pieces.append(self.logits(h, max(wanted, 0)))
            logits = pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=1)
            return logits, cache

