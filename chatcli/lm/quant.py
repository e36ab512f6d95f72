"""Linear layers for the native forward pass: dense, and weight-only int8 / int4.

Contract: a *linear* is a callable ``x -> x @ W.T + b`` over the last dimension of
`x` (any leading shape). `Dense` is exactly ``F.linear`` (so the unquantized model
stays bit-identical to transformers). `Int8Linear` stores ``W`` as int8 with one
float scale per output row (symmetric, round-to-nearest) and multiplies with torch's
own CPU kernel ``aten._weight_int8pack_mm``; `Int4Linear` stores groups of `group_size`
input columns as 4-bit codes with a scale and a minimum per group (asymmetric, the
same form as GGUF's Q4_1) and multiplies with ``aten._weight_int4pack_mm_for_cpu``;
`SplitInt4Linear` runs 5-8-bit codes with per-block scales (GGUF's Q5_x, Q6_K, Q8_0)
through the same kernel as two 4-bit halves over the input read twice (`pack_int4`
packs codes made elsewhere, e.g. a GGUF's own); `BlockLinear` keeps a GGUF tensor's
rows exactly as stored (Q8_0, Q5_0, Q5_1, Q5_K, Q6_K) and multiplies with chatcli's
own kernel (`chatcli.lm.block_kernels`), where that kernel runs. `Stacked` puts
linears of different kinds that read the same input side by side. torch's kernels read
the activations in their own dtype (bfloat16 or float32), and the scale table in that
dtype too (its int4 kernel is vectorized for bfloat16 only on x86); the activations are
never quantized. `quantize(dense, mode)` makes one from a `Dense`; `fuse` concatenates
several linears that read the same input into one (fewer, larger matrix-vector
products), which `split` undoes on the output.

Deliberately knows nothing about models, layers or checkpoints: tensors in,
tensors out. The quantized kernels are CPU kernels; `supported(mode, device)` says
where each mode runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

QuantMode = Literal["none", "int8", "int4"]
QUANT_MODES: tuple[str, ...] = ("none", "int8", "int4")
INT4_GROUP_SIZE = 32  # GGUF's Q4_1 block size: re-quantizing Q4_1 weights is then exact
_INT4_INNER_K_TILES = 2


@dataclass
class Dense:
    weight: torch.Tensor
    bias: torch.Tensor | None = None

    @property
    def out_features(self) -> int:
        return self.weight.shape[0]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)

    def dequantized(self) -> torch.Tensor:
        return self.weight


@dataclass
class Int8Linear:
    """Per-output-row symmetric int8 weights: ``W ~= q * scale[:, None]``."""

    qweight: torch.Tensor  # (out, in) int8
    scales: torch.Tensor  # (out,) in the activation dtype
    bias: torch.Tensor | None = None

    def __post_init__(self) -> None:
        self.qweight, self.scales = _aligned(self.qweight), _aligned(self.scales)

    @classmethod
    def from_weight(cls, weight: torch.Tensor, bias: torch.Tensor | None = None) -> Int8Linear:
        q = torch.empty(weight.shape, dtype=torch.int8)
        scales = torch.empty(weight.shape[0], dtype=weight.dtype)
        for rows in _row_chunks(weight.shape[0]):  # float32 temporaries one chunk at a time
            w = weight[rows].float()
            exact = (w.abs().amax(dim=1) / 127.0).clamp(min=torch.finfo(torch.float32).tiny)
            scales[rows] = _stored_at_least(exact, weight.dtype)
            # round against the grid the kernel will use (the stored, rounded scales)
            q[rows] = torch.round(w / scales[rows].float()[:, None]).clamp_(-127, 127)
        return cls(q, scales, bias)

    @property
    def out_features(self) -> int:
        return self.qweight.shape[0]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1]).contiguous()  # the kernels need contiguous rows
        out = torch.ops.aten._weight_int8pack_mm(flat, self.qweight, self.scales)
        out = out.view(*x.shape[:-1], out.shape[-1])
        return out if self.bias is None else out + self.bias

    def dequantized(self) -> torch.Tensor:
        return self.qweight.float() * self.scales.float()[:, None]


@dataclass
class Int4Linear:
    """Groups of `group_size` input columns: ``W ~= code * scale + minimum``, code in 0..15."""

    packed: torch.Tensor  # aten's int4 CPU layout
    scales_and_zeros: torch.Tensor  # (in / group, out, 2), activation dtype
    group_size: int
    out_features: int
    bias: torch.Tensor | None = None

    def __post_init__(self) -> None:
        self.packed = _aligned(self.packed)
        self.scales_and_zeros = _aligned(self.scales_and_zeros)

    @classmethod
    def from_weight(
        cls, weight: torch.Tensor, bias: torch.Tensor | None = None,
        group_size: int = INT4_GROUP_SIZE,
    ) -> Int4Linear:
        out_features = weight.shape[0]
        parts = [_int4_codes(weight[rows].float(), group_size, weight.dtype)
                 for rows in _row_chunks(out_features)]
        codes = torch.cat([c for c, _ in parts])
        table = torch.cat([t for _, t in parts])
        packed = pack_int4(codes)
        table = table.transpose(0, 1).contiguous()  # (groups, out, 2): aten's layout
        return cls(packed, table, group_size, out_features, bias)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1]).contiguous()  # the kernels need contiguous rows
        out = torch.ops.aten._weight_int4pack_mm_for_cpu(
            flat, self.packed, self.group_size, self.scales_and_zeros
        )
        out = out.view(*x.shape[:-1], out.shape[-1])
        return out if self.bias is None else out + self.bias

    def dequantized(self) -> torch.Tensor:
        """The (out, in) float32 weights the kernel multiplies by, read back through it:
        in float32 with the table converted exactly (the kernel computes each weight in
        float32 from the table, whatever its dtype; a bf16 output would round it)."""
        in_features = self.scales_and_zeros.shape[0] * self.group_size
        eye = torch.eye(in_features, dtype=torch.float32)
        out = torch.ops.aten._weight_int4pack_mm_for_cpu(
            eye, self.packed, self.group_size, self.scales_and_zeros.float()
        )
        return out.t()


@dataclass
class SplitInt4Linear(Int4Linear):
    """Codes of 5 to 8 bits, per block of `block` input columns, run by the int4 kernel
    as two 4-bit halves (GGUF's Q5_x, Q6_K, Q8_0 at their own block scales).

    The kernel reads the input twice, block by block: ``[x_b, high * x_b]`` for each
    block ``x_b`` of `block` columns (`expand`); the first copy meets the low 4 bits of
    each code, the second the high bits, each with its own scale and minimum (or, with
    16-column blocks, one shared scale and ``high`` = 8). The weight is the sum of the two
    halves, which `dequantized` returns. It reads 8 bits per weight, as int8 would, but
    keeps a scale per block where int8's kernel has one per row."""

    block: int = 32
    high: float = 1.0

    @property
    def in_features(self) -> int:
        return self.scales_and_zeros.shape[0] * self.group_size // 2

    def expand(self, x: torch.Tensor) -> torch.Tensor:
        """`x` (..., in) as the kernel reads it: (..., 2 * in)."""
        blocks = x.reshape(*x.shape[:-1], -1, self.block)
        high = blocks if self.high == 1.0 else blocks * self.high
        return torch.cat((blocks, high), dim=-1).reshape(*x.shape[:-1], 2 * x.shape[-1])

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return super().__call__(self.expand(x))

    def dequantized(self) -> torch.Tensor:
        """The (out, in) weights: low half plus `high` times the high half, as the
        kernel reads them."""
        halves = super().dequantized().view(self.out_features, -1, 2, self.block)
        return (halves[:, :, 0] + self.high * halves[:, :, 1]).reshape(self.out_features, -1)


@dataclass
class BlockLinear:
    """A GGUF tensor's rows as stored, `blocks` (out, row bytes) uint8 in the GGUF type
    named `format` (one of `chatcli.lm.block_kernels.FORMATS`), multiplied by chatcli's
    block kernel: the weights are gguf's float32 dequantization bit for bit, at the
    file's own size."""

    blocks: torch.Tensor  # (out, row bytes) uint8
    format: str
    in_features: int
    bias: torch.Tensor | None = None

    def __post_init__(self) -> None:
        from chatcli.lm import block_kernels

        block_kernels.register()
        if self.format not in block_kernels.FORMATS:
            raise ValueError(f"format {self.format!r} has no block kernel; choose one of "
                             f"{block_kernels.FORMATS}")
        self.code = block_kernels.FORMATS.index(self.format)
        self.blocks = _aligned(self.blocks.contiguous())

    @property
    def out_features(self) -> int:
        return self.blocks.shape[0]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.ops.chatcli.block_mm(x, self.blocks, self.code, self.out_features)
        return out if self.bias is None else out + self.bias

    def dequantized(self) -> torch.Tensor:
        """The (out, in) float32 weights the kernel multiplies by, read back through it."""
        eye = torch.eye(self.in_features, dtype=torch.float32)
        return torch.ops.chatcli.block_mm(eye, self.blocks, self.code, self.out_features).t()


@dataclass
class Stacked:
    """Linears that read the same input, outputs side by side: a fused projection whose
    parts are stored in formats no one kernel runs together (e.g. a GGUF's Q4_K query
    and Q6_K value projections)."""

    parts: list[Dense | Int8Linear | Int4Linear | BlockLinear]
    bias: None = None  # each part carries its own

    @property
    def out_features(self) -> int:
        return sum(part.out_features for part in self.parts)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([part(x) for part in self.parts], dim=-1)

    def dequantized(self) -> torch.Tensor:
        return torch.cat([part.dequantized().float() for part in self.parts])


Linear = Dense | Int8Linear | Int4Linear | BlockLinear | Stacked


def pack_int4(codes: torch.Tensor) -> torch.Tensor:
    """4-bit codes (out, in) int32, 0..15, in aten's int4 CPU layout. `out` must be a
    multiple of 16; rows packed in pieces of a multiple of 64 concatenate to the whole."""
    return torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes, _INT4_INNER_K_TILES)


_ALIGN = 64  # bytes: torch's CPU allocator aligns to this; the int8 kernel relies on it


def _aligned(t: torch.Tensor) -> torch.Tensor:
    """`t`, copied if its data is not 64-byte aligned (e.g. read from a mapped safetensors
    file): `_weight_int8pack_mm` crashes the process on misaligned weights."""
    return t if t.data_ptr() % _ALIGN == 0 else t.clone()


def _row_chunks(rows: int, size: int = 4096) -> list[slice]:
    return [slice(start, min(start + size, rows)) for start in range(0, rows, size)]


def _stored_at_least(exact: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """`exact` (float32, > 0) in `dtype`, rounded up where rounding went down, so that
    ``127 * scale`` (or ``15 * scale``) still reaches the largest weight."""
    stored = exact.to(dtype)
    low = stored.float() < exact
    if low.any():
        up = torch.nextafter(stored, torch.full_like(stored, float("inf")))
        stored = torch.where(low, up, stored)
    return stored


def _int4_codes(
    w: torch.Tensor, group_size: int, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """4-bit codes (out, in) int32 and the (out, groups, 2) table of scale and zero in
    `dtype`, for float32 `w`. aten dequantizes ``(code - 8) * scale + zero``; the codes
    are rounded against the stored (rounded) scale and zero, the grid actually used."""
    out_features, in_features = w.shape
    groups = w.view(out_features, in_features // group_size, group_size)
    low = groups.amin(dim=-1)
    high = groups.amax(dim=-1)
    exact = ((high - low) / 15.0).clamp(min=torch.finfo(torch.float32).tiny)
    scales = _stored_at_least(exact, dtype)
    zeros = (low + 8 * scales.float()).to(dtype)
    origin = zeros.float() - 8 * scales.float()  # where code 0 really lands
    codes = torch.round((groups - origin[..., None]) / scales.float()[..., None]).clamp_(0, 15)
    table = torch.stack([scales, zeros], dim=2)
    return codes.to(torch.int32).view(out_features, in_features), table


def to_tensors(linear: Linear, prefix: str) -> dict[str, torch.Tensor]:
    """`linear`'s tensors under `prefix.` names, for saving (see `from_tensors`)."""
    if isinstance(linear, Stacked):
        out = {f"{prefix}.parts": torch.tensor([len(linear.parts)])}
        for i, part in enumerate(linear.parts):
            out.update(to_tensors(part, f"{prefix}.{i}"))
        return out
    if isinstance(linear, Int8Linear):
        out = {"qweight": linear.qweight, "scales": linear.scales}
    elif isinstance(linear, BlockLinear):
        from chatcli.lm import block_kernels

        out = {"blocks": linear.blocks,
               "block_format": torch.tensor([block_kernels.FORMATS.index(linear.format),
                                             linear.in_features])}
    elif isinstance(linear, Int4Linear):
        out = {
            "packed": linear.packed,
            "scales_and_zeros": linear.scales_and_zeros,
            # shapes ride along as tensors so that one safetensors file holds everything
            "shape": torch.tensor([linear.group_size, linear.out_features]),
        }
        if isinstance(linear, SplitInt4Linear):
            out["split"] = torch.tensor([float(linear.block), linear.high])
    else:
        out = {"weight": linear.weight}
    if linear.bias is not None:
        out["bias"] = linear.bias
    return {f"{prefix}.{name}": t.contiguous() for name, t in out.items()}


def from_tensors(tensors: dict[str, torch.Tensor], prefix: str) -> Linear:
    """The linear that `to_tensors(linear, prefix)` saved."""
    if f"{prefix}.parts" in tensors:
        count = int(tensors[f"{prefix}.parts"][0])
        return Stacked([from_tensors(tensors, f"{prefix}.{i}") for i in range(count)])
    bias = tensors.get(f"{prefix}.bias")
    if f"{prefix}.blocks" in tensors:
        from chatcli.lm import block_kernels

        code, in_features = (int(v) for v in tensors[f"{prefix}.block_format"])
        return BlockLinear(tensors[f"{prefix}.blocks"], block_kernels.FORMATS[code],
                           in_features, bias)
    if f"{prefix}.qweight" in tensors:
        return Int8Linear(tensors[f"{prefix}.qweight"], tensors[f"{prefix}.scales"], bias)
    if f"{prefix}.packed" in tensors:
        group_size, out_features = (int(v) for v in tensors[f"{prefix}.shape"])
        if f"{prefix}.split" in tensors:
            block, high = tensors[f"{prefix}.split"].tolist()
            return SplitInt4Linear(tensors[f"{prefix}.packed"],
                                   tensors[f"{prefix}.scales_and_zeros"], group_size,
                                   out_features, bias, int(block), float(high))
        return Int4Linear(tensors[f"{prefix}.packed"], tensors[f"{prefix}.scales_and_zeros"],
                          group_size, out_features, bias)
    return Dense(tensors[f"{prefix}.weight"], bias)


def supported(mode: str, device: torch.device, dtype: torch.dtype) -> str | None:
    """None if `mode` runs on `device`/`dtype`, else why not (one short sentence)."""
    if mode == "none":
        return None
    if device.type != "cpu":
        return f"--quantize {mode} uses torch's CPU kernels; this model runs on {device.type}"
    if dtype not in (torch.bfloat16, torch.float32):
        return f"--quantize {mode} needs bfloat16 or float32 activations, not {dtype}"
    return None


def quantize(linear: Dense, mode: str) -> Linear:
    """`linear` in `mode` ("none" returns it unchanged). int4 needs in_features % 32 == 0."""
    if mode == "none":
        return linear
    if mode == "int8":
        return Int8Linear.from_weight(linear.weight, linear.bias)
    if mode == "int4":
        if linear.weight.shape[1] % INT4_GROUP_SIZE:
            return Int8Linear.from_weight(linear.weight, linear.bias)
        return Int4Linear.from_weight(linear.weight, linear.bias)
    raise ValueError(f"unknown quantization mode {mode!r}; choose one of {QUANT_MODES}")


def fuse(linears: list[Dense]) -> Dense:
    """One `Dense` computing all of `linears` (same input) side by side."""
    weight = torch.cat([lin.weight for lin in linears], dim=0)
    biases = [lin.bias for lin in linears]
    if all(b is None for b in biases):
        return Dense(weight)
    filled = [
        b if b is not None else lin.weight.new_zeros(lin.weight.shape[0])
        for b, lin in zip(biases, linears, strict=True)
    ]
    return Dense(weight, torch.cat(filled))


def split(out: torch.Tensor, sizes: list[int]) -> tuple[torch.Tensor, ...]:
    """Undo `fuse` on an output: the parts along the last dimension."""
    return torch.split(out, sizes, dim=-1)
