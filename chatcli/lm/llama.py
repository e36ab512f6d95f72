"""A lean, pure-torch forward pass for Llama-family causal LMs (llama, qwen2).

Contract: `NativeCausalLM.from_folder(folder, dtype)` reads a transformers-style
checkpoint folder (config.json plus one or sharded *.safetensors files) and
`forward(input_ids, cache)` returns logits for the last `logits_to_keep`
positions together with the grown `KVCache`, positions continuing from
`len(cache)`. On CPU the logits are bit-identical to transformers'
`LlamaForCausalLM` / `Qwen2ForCausalLM` (SDPA attention, no padding) in float32
and bfloat16: every op, its operand shapes, its dtype casts and the SDPA call
(`is_causal`, `enable_gqa`, boolean mask when a multi-token chunk follows a
non-empty cache) mirror transformers 5.x, so greedy decoding picks the same
tokens. It exists so that chatcli can answer without importing transformers'
modeling code, which is slow to import; it never imports transformers.
`quantize("int8"|"int4")` swaps in weight-only quantized linear layers
(`chatcli.lm.quant`) and faster, no longer bit-identical decode steps.

It deliberately knows nothing about tokenization, decoding strategies or text:
token ids go in, logits and a cache come out. It supports one unpadded sequence
per row (all rows the same length), full attention only (no sliding windows)
and the "default" and "llama3" RoPE types; `supports(config)` says up front.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from chatcli.lm.quant import Dense, Linear, from_tensors, fuse, quantize, split, to_tensors

SUPPORTED_MODEL_TYPES = frozenset({"llama", "qwen2"})
_ROPE_TYPES = frozenset({"default", "llama3"})


def _rope_parameters(config: dict) -> dict:
    """RoPE settings from a 5.x `rope_parameters` or a 4.x `rope_theta` + `rope_scaling` config."""
    params = dict(config.get("rope_parameters") or config.get("rope_scaling") or {})
    params.setdefault("rope_type", params.get("type", "default"))
    params.setdefault("rope_theta", config.get("rope_theta", 10_000.0))
    if params["rope_type"] == "llama3":
        if "original_max_position_embeddings" in config:
            params["original_max_position_embeddings"] = config["original_max_position_embeddings"]
        params.setdefault("original_max_position_embeddings", config.get("max_position_embeddings"))
    return params


def supports(config: dict) -> bool:
    """Whether `config` (a parsed config.json) describes a model this module computes exactly."""
    if config.get("model_type") not in SUPPORTED_MODEL_TYPES:
        return False
    rope = _rope_parameters(config)
    if any(isinstance(value, dict) for value in rope.values()):
        return False  # RoPE parameters nested per layer type
    partial = rope.get("partial_rotary_factor", config.get("partial_rotary_factor"))
    layer_types = set(config.get("layer_types") or ["full_attention"])
    heads = config.get("num_attention_heads") or 1
    kv_heads = config.get("num_key_value_heads") or heads
    return (
        rope["rope_type"] in _ROPE_TYPES
        and partial in (None, 1.0)
        and config.get("hidden_act", "silu") == "silu"
        and not config.get("use_sliding_window", False)
        and layer_types == {"full_attention"}
        and config.get("is_causal", True)
        and "quantization_config" not in config
        and heads % kv_heads == 0
    )


def _inv_freq(rope: dict, dim: int) -> torch.Tensor:
    """RoPE inverse frequencies, computed with transformers' exact float32 expressions."""
    base = rope["rope_theta"]
    inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.int64).to(torch.float) / dim))
    if rope["rope_type"] != "llama3":
        return inv_freq
    factor, low, high = rope["factor"], rope["low_freq_factor"], rope["high_freq_factor"]
    old_context_len = rope["original_max_position_embeddings"]
    low_freq_wavelen, high_freq_wavelen = old_context_len / low, old_context_len / high
    wavelen = 2 * math.pi / inv_freq
    inv_freq_llama = torch.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
    smooth_factor = (old_context_len / wavelen - low) / (high - low)
    smoothed = (1 - smooth_factor) * inv_freq_llama / factor + smooth_factor * inv_freq_llama
    is_medium_freq = ~(wavelen < high_freq_wavelen) * ~(wavelen > low_freq_wavelen)
    return torch.where(is_medium_freq, smoothed, inv_freq_llama)


class KVCache:
    """Per-layer key/value tensors of shape (rows, kv_heads, seq, head_dim).

    Storage is preallocated with spare capacity and grown by doubling, so decoding
    writes each new position in place instead of concatenating every step.
    """

    initial_capacity = 256  # positions allocated at least, on the first write

    def __init__(self, layers: int) -> None:
        self.keys: list[torch.Tensor | None] = [None] * layers
        self.values: list[torch.Tensor | None] = [None] * layers
        self.length = 0

    def __len__(self) -> int:
        return self.length

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
                capacity = max(end, 2 * buf.shape[2] if buf is not None else self.initial_capacity)
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
    qkv_sizes: list[int] | None = None
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

    def __init__(self, config: dict, weights: _Weights) -> None:
        self.config = config
        self.heads = config["num_attention_heads"]
        self.kv_heads = config.get("num_key_value_heads") or self.heads
        self.head_dim = config.get("head_dim") or config["hidden_size"] // self.heads
        self.scale = self.head_dim**-0.5
        self.eps = config.get("rms_norm_eps", 1e-6)
        self.embed = weights["model.embed_tokens.weight"]
        self.device, self.dtype = self.embed.device, self.embed.dtype
        tied = config.get("tie_word_embeddings", False) or "lm_head.weight" not in weights
        self.lm_head = self.embed if tied else weights["lm_head.weight"]
        self.vocab_size = self.lm_head.shape[0]
        self.norm = weights["model.norm.weight"]
        self.inv_freq = _inv_freq(_rope_parameters(config), self.head_dim).to(self.device)

        def linear(name: str) -> Dense:
            return Dense(weights[f"{name}.weight"], weights.get(f"{name}.bias"))

        def layer(p: str) -> _Layer:
            attn = (linear(f"{p}.self_attn.{n}_proj") for n in "qkvo")
            mlp = (linear(f"{p}.mlp.{n}_proj") for n in ("gate", "up", "down"))
            norms = (weights[f"{p}.{n}_layernorm.weight"] for n in ("input", "post_attention"))
            input_norm, post_norm = norms
            return _Layer(input_norm, *attn, post_norm, *mlp)

        self.layers = [layer(f"model.layers.{i}") for i in range(config["num_hidden_layers"])]
        self.head: Linear = Dense(self.lm_head)
        self.quantization = "none"
        self.exact = True  # bit-identical to transformers; False once quantized
        self._rope_table: tuple[torch.Tensor, torch.Tensor] | None = None
        self._norm_weights: dict[int, torch.Tensor] = {}  # `_fast_norm`'s [w, w]

    def quantize(self, mode: str) -> None:
        """Replace every linear layer, and the output head, by its `mode` version.

        Quantized layers also fuse q/k/v and gate/up into one linear each, and decode
        steps use `_attend_one` instead of torch's fused attention kernel: with int8 or
        int4 weights the result is no longer bit-identical to transformers anyway, and
        fewer, larger matrix-vector products and two small matmuls run faster. The
        embedding lookup keeps the full-precision table. "none" leaves the model unchanged.
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
        to the fast (no longer bit-identical) forward pass."""
        for layer in self.layers:
            dense = [layer.q, layer.k, layer.v, layer.gate, layer.up]
            assert all(isinstance(lin, Dense) for lin in dense)
            q, k, v, gate, up = (lin for lin in dense if isinstance(lin, Dense))
            layer.qkv_sizes = [q.out_features, k.out_features, v.out_features]
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
        if self.quantization != "none":
            raise ValueError("a model is quantized once")
        self.head = from_tensors(tensors, "head")
        for i, layer in enumerate(self.layers):
            layer.qkv, layer.gate_up, layer.o, layer.down = (
                from_tensors(tensors, f"layers.{i}.{name}") for name in self._QUANTIZED
            )
            layer.qkv_sizes = [lin.out_features for lin in (layer.q, layer.k, layer.v)]
            layer.q = layer.k = layer.v = layer.gate = layer.up = None  # free the dense copies
        self.quantization, self.exact = mode, False

    @classmethod
    def from_folder(cls, folder: Path, dtype: torch.dtype, device: str = "cpu") -> NativeCausalLM:
        folder = Path(folder)
        config = json.loads((folder / "config.json").read_text())
        if not supports(config):
            raise ValueError(f"{folder} holds a model this native implementation does not support")
        return cls(config, _load_weights(folder, dtype, torch.device(device)))

    def _rms_norm(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        h = x.to(torch.float32)
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return weight * h.to(x.dtype)

    def _attend_one(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Attention of one new position over the cache, as two small matmuls.

        torch's fused CPU attention kernel is slow for a single query: 12x slower than
        this at 1,024 cached positions (docs/benchmarks.md), but it is what
        transformers calls, so only the quantized (already inexact) model uses this.
        """
        rows, _, _, head_dim = q.shape
        grouped = q.reshape(rows, self.kv_heads, -1, head_dim)  # (rows, kv, n_rep, d)
        scores = torch.matmul(grouped, k.transpose(-1, -2)) * self.scale
        probs = torch.softmax(scores.float(), dim=-1).to(q.dtype)
        return torch.matmul(probs, v).reshape(rows, 1, -1)

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, past: int) -> torch.Tensor:
        """transformers' `sdpa_attention_forward` with the mask `create_causal_mask` builds."""
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

    @staticmethod
    def _qkv(layer: _Layer, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """q, k, v projections of `x` (one fused matmul once quantized)."""
        if layer.qkv is not None and layer.qkv_sizes is not None:
            return split(layer.qkv(x), layer.qkv_sizes)
        return layer.q(x), layer.k(x), layer.v(x)

    @staticmethod
    def _mlp(layer: _Layer, x: torch.Tensor) -> torch.Tensor:
        """The SwiGLU feed-forward block (gate and up fused once quantized)."""
        if layer.gate_up is not None:
            gate, up = layer.gate_up(x).chunk(2, dim=-1)
            return layer.down(F.silu(gate) * up)
        return layer.down(F.silu(layer.gate(x)) * layer.up(x))

    def _rope(self, end: int) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin (end, head_dim) in the model dtype, from a table grown by doubling."""
        table = self._rope_table
        if table is None or table[0].shape[0] < end:
            size = max(end, 2 * table[0].shape[0] if table is not None else 256)
            freqs = torch.arange(size, device=self.device)[:, None].float() * self.inv_freq
            emb = torch.cat((freqs, freqs), dim=-1)
            table = self._rope_table = (emb.cos().to(self.dtype), emb.sin().to(self.dtype))
        return table[0][:end], table[1][:end]

    def _forward_fast(
        self, input_ids: torch.Tensor, cache: KVCache, logits_to_keep: int
    ) -> tuple[torch.Tensor, KVCache]:
        """The forward pass of a fused (quantized) model, in fewer, larger ops: one RoPE
        over q and k together, `_fast_norm`, a cached RoPE table, `_attend_one` for a
        single new position. Same math as `forward`, not the same rounding."""
        rows, new = input_ids.shape
        past = len(cache)
        heads, kv_heads, hd, half = self.heads, self.kv_heads, self.head_dim, self.head_dim // 2
        cos, sin = (t[past:, None, :] for t in self._rope(past + new))  # (new, 1, hd)
        h = F.embedding(input_ids.to(self.device), self.embed)
        norm = self._fast_norm
        for i, layer in enumerate(self.layers):
            x = norm(h, layer.input_norm)
            qkv = layer.qkv(x).view(rows, new, heads + 2 * kv_heads, hd)
            qk = qkv[:, :, : heads + kv_heads]
            qk = qk * cos + torch.cat((-qk[..., half:], qk[..., :half]), dim=-1) * sin
            # attention in float32, over a float32 cache: cheaper than bf16 matmuls this small
            q = qk[:, :, :heads].transpose(1, 2).float()
            k, v = cache.append(
                i, qk[:, :, heads:].transpose(1, 2).float(),
                qkv[:, :, heads + kv_heads:].transpose(1, 2).float(),
            )
            h = h + layer.o(self._attend(q, k, v, past).to(self.dtype))
            gate, up = layer.gate_up(norm(h, layer.post_norm)).chunk(2, -1)
            h = h + layer.down(F.silu(gate) * up)
        cache.length = past + new
        if logits_to_keep:
            h = h[:, -logits_to_keep:, :]
        h = norm(h, self.norm)
        logits = self.head(h.reshape(-1, h.shape[-1]))
        return logits.view(rows, -1, logits.shape[-1]), cache

    def _fast_norm(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """RMSNorm as one `layer_norm` kernel: [x, -x] has mean 0 and variance mean(x^2),
        so its first half, layer-normalised, is x / sqrt(mean(x^2) + eps). Two kernels
        instead of `F.rms_norm`'s eight on CPU (8 vs 14 us per call for SmolLM2)."""
        d = x.shape[-1]
        doubled = self._norm_weights.get(id(weight))
        if doubled is None:
            doubled = self._norm_weights[id(weight)] = torch.cat((weight, weight))
        return F.layer_norm(torch.cat((x, -x), dim=-1), (2 * d,), doubled, None, self.eps)[..., :d]

    def forward(
        self, input_ids: torch.Tensor, cache: KVCache | None, logits_to_keep: int = 1
    ) -> tuple[torch.Tensor, KVCache]:
        """Logits (rows, logits_to_keep, vocab) in the model dtype (0 keeps all positions)."""
        with torch.inference_mode():
            cache = KVCache(len(self.layers)) if cache is None else cache
            if not self.exact:
                return self._forward_fast(input_ids, cache, logits_to_keep)
            rows, new = input_ids.shape
            past = len(cache)
            h = F.embedding(input_ids.to(self.device), self.embed)
            positions = torch.arange(past, past + new, device=self.device).unsqueeze(0)
            freqs = positions[..., None].float() * self.inv_freq
            emb = torch.cat((freqs, freqs), dim=-1)
            cos, sin = emb.cos().to(self.dtype).unsqueeze(1), emb.sin().to(self.dtype).unsqueeze(1)
            half = self.head_dim // 2
            for i, layer in enumerate(self.layers):
                q, k, v = self._qkv(layer, self._rms_norm(h, layer.input_norm))
                q = q.view(rows, new, -1, self.head_dim).transpose(1, 2)
                k = k.view(rows, new, -1, self.head_dim).transpose(1, 2)
                v = v.view(rows, new, -1, self.head_dim).transpose(1, 2)
                q = (q * cos) + (torch.cat((-q[..., half:], q[..., :half]), dim=-1) * sin)
                k = (k * cos) + (torch.cat((-k[..., half:], k[..., :half]), dim=-1) * sin)
                k, v = cache.append(i, k, v)
                h = h + layer.o(self._attend(q, k, v, past))
                h = h + self._mlp(layer, self._rms_norm(h, layer.post_norm))
            cache.length = past + new
            h = self._rms_norm(h, self.norm)
            if logits_to_keep:
                h = h[:, -logits_to_keep:, :]
            # 2-D: torch's matmul folds the slice into one `mm` for transformers (whose weights
            # require grad) but would `bmm` over a copy of the weight for plain tensors.
            logits = self.head(h.reshape(-1, h.shape[-1]))
            return logits.view(rows, -1, logits.shape[-1]), cache
