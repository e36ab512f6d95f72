"""A GGUF file's weights as chatcli's linears, at the precision they are stored in.

Contract: `decode(raw, tensor_type, cols)` turns a quantized tensor's raw blocks (rows of
bytes) into `Blocks`: integer codes and a scale and an offset per block, so that a weight
is ``scale * code + offset`` -- computed in float32 that is bit for bit what
`gguf.quants.dequantize` gives (`Blocks.dequantized`). `build_linear(reader, parts,
dtype)` makes one linear of one or more tensors read by the same input (q/k/v,
gate/up), without a dequantize -> requantize round trip: the file's own codes and
scales go into torch's int4 kernel (`chatcli.lm.quant.Int4Linear`), and the 5-8-bit
formats' rows, as stored, into chatcli's block kernel (`BlockLinear`; where it cannot
run, torch's int4 kernel as `SplitInt4Linear`); see `chatcli.lm.gguf_file` for what
runs for each type and how exact it is. Parts of one kernel share one linear; a block
linear holds one format. `QuantEmbedding` looks token rows up in a quantized table
left in the file (memory-mapped: only the rows looked up are read) and dequantizes just
those. `load_model(path, config, dtype)` reads a GGUF of any architecture in
`chatcli.lm.models` into a `NativeCausalLM` this way, mapping GGUF's tensor names to
the model's and undoing what llama.cpp's converter changed, as transformers' GGUF loader
does: the query/key rows' order (llama), Gemma's norms stored as 1 + w.

Rows are decoded and packed a chunk at a time, so a load holds the packed model plus one
chunk's temporaries, never a dequantized copy, and nothing is written to disk; the freed
temporaries are handed back to the system at the end (glibc's `malloc_trim`).

Knows nothing about models.toml, caches, tokenizers or the CLI.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch

from chatcli.lm.gguf_file import (
    BLOCK_FORMATS,
    GGUFError,
    GGUFHeader,
    TensorInfo,
    TensorType,
    read_header,
)
from chatcli.lm.quant import (
    BlockLinear,
    Dense,
    Int4Linear,
    Linear,
    SplitInt4Linear,
    Stacked,
    pack_int4,
)

_CHUNK_ROWS = 1024  # rows decoded and packed at once: a multiple of 64 (aten's int4 blocks)


@dataclass
class Blocks:
    """A quantized tensor: weight[r, c] = scale[r, c // block] * codes[r, c] + offset[...]."""

    codes: torch.Tensor  # (rows, cols) int32, 0 .. 2**bits - 1
    scale: torch.Tensor  # (rows, cols // block) float32
    offset: torch.Tensor  # (rows, cols // block) float32
    block: int
    bits: int
    center: int | None = None  # symmetric formats: offset == -center * scale

    def dequantized(self) -> torch.Tensor:
        """(rows, cols) float32: the product is exact (at most 24 significant bits), so
        this rounds once, as gguf's float32 dequantization does."""
        rows, cols = self.codes.shape
        grouped = self.codes.view(rows, -1, self.block).float()
        out = grouped * self.scale[..., None] + self.offset[..., None]
        return out.view(rows, cols)


# -- decoding each format's blocks (layouts as in ggml-quants.c / gguf.quants) ---------------
def _half(raw: torch.Tensor) -> torch.Tensor:
    """fp16 values from (..., 2) bytes, as float32 (exact)."""
    return raw.contiguous().view(torch.float16).squeeze(-1).float()


def _nibbles(qs: torch.Tensor) -> torch.Tensor:
    """(..., n) bytes -> (..., 2n) codes: all low nibbles, then all high nibbles."""
    return torch.cat((qs & 0x0F, qs >> 4), dim=-1)


def _bits(packed: torch.Tensor, count: int) -> torch.Tensor:
    """(..., 4) little-endian bytes -> (..., count) bits 0..count-1 of that integer."""
    word = packed.to(torch.int64)
    value = word[..., 0] | word[..., 1] << 8 | word[..., 2] << 16 | word[..., 3] << 24
    shifts = torch.arange(count, dtype=torch.int64)
    return (value[..., None] >> shifts) & 1


def _k_scales(scales: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Q4_K/Q5_K: 12 bytes -> 8 six-bit scales and 8 six-bit minimums."""
    d, m, md = scales[..., 0:4], scales[..., 4:8], scales[..., 8:12]
    sc = torch.cat((d & 0x3F, (md & 0x0F) | ((d >> 2) & 0x30)), dim=-1)
    mn = torch.cat((m & 0x3F, (md >> 4) | ((m >> 2) & 0x30)), dim=-1)
    return sc.float(), mn.float()


def decode(raw: torch.Tensor, ttype: TensorType, cols: int) -> Blocks:
    """The codes and per-block scale/offset of `raw` (rows, row bytes) uint8 of type
    `ttype` (one of gguf_file's int4/int4x2 types) and `cols` columns."""
    rows = raw.shape[0]
    b = raw.view(rows, cols // ttype.block_elements, ttype.block_bytes)
    name = ttype.name
    if name in ("Q4_0", "Q4_1", "Q5_0", "Q5_1"):
        d = _half(b[..., 0:2])
        has_min = name.endswith("_1")
        m = _half(b[..., 2:4]) if has_min else None
        at = 4 if has_min else 2
        if name.startswith("Q5"):
            high = _bits(b[..., at:at + 4], 32).to(torch.uint8)
            at += 4
        codes = _nibbles(b[..., at:at + 16])
        if name.startswith("Q5"):
            codes = codes | (high << 4)
        center = 8 if name.startswith("Q4") else 16
        offset = m if m is not None else -center * d
        return Blocks(codes.reshape(rows, cols).to(torch.int32), d, offset, 32,
                      4 if name.startswith("Q4") else 5, None if has_min else center)
    if name == "Q8_0":
        d = _half(b[..., 0:2])
        codes = b[..., 2:34].contiguous().view(torch.int8).to(torch.int32) + 128
        return Blocks(codes.reshape(rows, cols), d, -128.0 * d, 32, 8, 128)
    if name in ("Q4_K", "Q5_K"):
        d, dmin = _half(b[..., 0:2]), _half(b[..., 2:4])
        sc, mn = _k_scales(b[..., 4:16])
        scale = (d[..., None] * sc).reshape(rows, -1)
        offset = -(dmin[..., None] * mn).reshape(rows, -1)
        qs = b[..., -128:].reshape(*b.shape[:2], 4, 32)
        codes = _nibbles(qs)  # (rows, blocks, 4, 64): sub-blocks 2j (low), 2j+1 (high)
        if name == "Q5_K":
            qh = b[..., 16:48]  # bit i of byte j: high bit of element j of sub-block i
            shifts = torch.arange(8, dtype=torch.uint8)
            high = (qh[..., None, :] >> shifts[:, None]) & 1  # (rows, blocks, 8, 32)
            codes = codes.reshape(*b.shape[:2], 8, 32) | (high << 4)
        return Blocks(codes.reshape(rows, cols).to(torch.int32), scale, offset, 32,
                      4 if name == "Q4_K" else 5)
    if name == "Q6_K":
        ql = b[..., 0:128].reshape(*b.shape[:2], 2, 64)
        low = torch.stack((ql & 0x0F, ql >> 4), dim=3).reshape(*b.shape[:2], 8, 32)
        qh = b[..., 128:192].reshape(*b.shape[:2], 2, 1, 32)
        shifts = torch.tensor([0, 2, 4, 6], dtype=torch.uint8).view(4, 1)
        high = ((qh >> shifts) & 3).reshape(*b.shape[:2], 8, 32)
        codes = (low | (high << 4)).reshape(rows, cols).to(torch.int32)
        sc = b[..., 192:208].contiguous().view(torch.int8).float()
        d = _half(b[..., 208:210])
        scale = (d[..., None] * sc).reshape(rows, -1)
        return Blocks(codes, scale, -32.0 * scale, 16, 6, 32)
    raise GGUFError(f"{name} has no int4 decoding")


def dequantize(raw: torch.Tensor, ttype: TensorType, cols: int) -> torch.Tensor:
    """(rows, cols) float32 weights of `raw` rows of any type, as gguf dequantizes them."""
    kind = ttype.kernel.kind
    if kind in ("int4", "int4x2"):
        return decode(raw, ttype, cols).dequantized()
    if ttype.name == "F32":
        return raw.contiguous().view(torch.float32).reshape(-1, cols)
    if ttype.name == "F16":
        return raw.contiguous().view(torch.float16).reshape(-1, cols).float()
    if ttype.name == "BF16":
        return raw.contiguous().view(torch.bfloat16).reshape(-1, cols).float()
    import gguf

    values = gguf.quants.dequantize(raw.numpy(), gguf.GGMLQuantizationType[ttype.name])
    return torch.from_numpy(np.ascontiguousarray(values)).reshape(-1, cols)


# -- codes and tables for the int4 kernel -------------------------------------------------
def int4_codes(blocks: Blocks) -> tuple[torch.Tensor, torch.Tensor]:
    """What the int4 kernel reads for `blocks`: 4-bit codes (rows, in') int32 and the
    (rows, in' / 32, 2) float32 table of scale and zero, where the kernel's weight is
    ``(code - 8) * scale + zero`` (one fused multiply-add). in' is the column count, or
    twice it for 5-8-bit codes (see `SplitInt4Linear`)."""
    rows, cols = blocks.codes.shape
    s, m = blocks.scale, blocks.offset
    if blocks.bits <= 4:  # one code, one scale and minimum per 32 columns
        return blocks.codes, torch.stack((s, m + 8 * s), dim=-1)
    low, high = blocks.codes & 0x0F, blocks.codes >> 4
    if blocks.block == 32:
        # [low block, high block]: s * low + m (code low, zero m + 8 s), then 16 s * high
        # (code high, zero 8 * 16 s). A symmetric format's offset -center * s goes into
        # the high half's codes instead (zeros 8 s and 0): every zero is then a power-of-
        # two multiple of s, so in bf16 the weights are bf16(s) * (code - center).
        low_zero, high_zero = m + 8 * s, 128 * s
        if blocks.center is not None:
            high = high + 8 - blocks.center // 16
            low_zero, high_zero = 8 * s, torch.zeros_like(s)
        codes = torch.stack((low.view(rows, -1, 32), high.view(rows, -1, 32)), dim=2)
        table = torch.stack((torch.stack((s, low_zero), dim=-1),
                             torch.stack((16 * s, high_zero), dim=-1)), dim=2)
        return codes.reshape(rows, 2 * cols), table.reshape(rows, -1, 2)
    # Q6_K's 16-column blocks: one 32-group holds a block's low half and its high half,
    # the latter read against 8 x the input: s (low - 8) + 8 s (2 high - 3) = s (code - 32)
    if blocks.block != 16 or blocks.center != 32:
        raise GGUFError("16-column blocks are supported for Q6_K only")
    codes = torch.stack((low.view(rows, -1, 16), (2 * high + 5).view(rows, -1, 16)), dim=2)
    table = torch.stack((s, torch.zeros_like(s)), dim=-1)
    return codes.reshape(rows, 2 * cols), table


# -- reading tensors ---------------------------------------------------------------------
@dataclass(frozen=True)
class Part:
    """One GGUF tensor as (part of) a linear: its rows, optionally reordered."""

    info: TensorInfo
    order: torch.Tensor | None = None  # row i of the linear is row order[i] of the tensor
    bias: TensorInfo | None = None


class Reader:
    """Reads tensor rows from a GGUF file by plain reads (never mapping the whole file,
    so the pages read to pack a tensor are not kept resident after it)."""

    def __init__(self, header: GGUFHeader) -> None:
        self.header = header
        self._file: BinaryIO = header.path.open("rb")

    def close(self) -> None:
        self._file.close()

    def rows(self, info: TensorInfo, start: int = 0, end: int | None = None) -> torch.Tensor:
        """Rows start..end of `info` as (rows, row bytes) uint8."""
        end = info.rows if end is None else end
        size = (end - start) * info.row_bytes
        buf = bytearray(size)
        self._file.seek(info.offset + start * info.row_bytes)
        if self._file.readinto(buf) != size:
            raise GGUFError(f"{self.header.path.name}: tensor {info.name} is cut short")
        if not size:
            return torch.empty((0, info.row_bytes), dtype=torch.uint8)
        return torch.frombuffer(buf, dtype=torch.uint8).view(end - start, info.row_bytes)

    def part_rows(self, part: Part, start: int, end: int) -> torch.Tensor:
        if part.order is None:
            return self.rows(part.info, start, end)
        return self.rows(part.info).index_select(0, part.order[start:end])

    def dense(self, info: TensorInfo, dtype: torch.dtype,
              order: torch.Tensor | None = None) -> torch.Tensor:
        """The whole tensor, dequantized if need be, in `dtype` (1-D for a vector)."""
        values = dequantize(self.rows(info), info.type, info.cols).to(dtype)
        if order is not None:
            values = values.index_select(0, order)
        return values.reshape(-1) if len(info.shape) == 1 else values


def _blocks_run() -> bool:
    """Whether chatcli's block kernel runs here (built on first use; see block_kernels)."""
    from chatcli.lm import block_kernels

    return block_kernels.unavailable() is None


def _kind(part: Part) -> tuple[str, int | str]:
    """How `part` runs: ("blocks", its GGUF type) as stored where the block kernel runs,
    else ("int4" or "int4x2", block) or ("dense", 0). Parts of one kind share a kernel."""
    name = part.info.type.name
    if name in BLOCK_FORMATS and _blocks_run():
        return "blocks", name
    kernel = part.info.type.kernel
    if kernel.kind in ("int4", "int4x2") and _packable(part.info):
        return kernel.kind, kernel.block
    return "dense", 0


def _packable(info: TensorInfo) -> bool:
    """The int4 kernel needs the output rows in multiples of 16 (aten's packing)."""
    return info.rows % 16 == 0 and info.cols % 32 == 0


def build_linear(reader: Reader, parts: list[Part], dtype: torch.dtype) -> Linear:
    """One linear computing `parts` side by side (each part's rows, in order): one int4
    kernel call where the parts share a format family, a `Stacked` of them otherwise."""
    groups: list[list[Part]] = []
    for part in parts:
        if groups and _kind(groups[-1][0]) == _kind(part):
            groups[-1].append(part)
        else:
            groups.append([part])
    built = [_build_group(reader, group, dtype) for group in groups]
    if len(built) == 1:
        return built[0]
    flat: list[Any] = []
    for linear in built:
        flat.extend(linear.parts if isinstance(linear, Stacked) else [linear])
    return Stacked(flat)


def _bias(reader: Reader, parts: list[Part], dtype: torch.dtype) -> torch.Tensor | None:
    if all(part.bias is None for part in parts):
        return None
    pieces = []
    for part in parts:
        if part.bias is None:
            pieces.append(torch.zeros(part.info.rows, dtype=dtype))
        else:
            pieces.append(reader.dense(part.bias, dtype, part.order))
    return torch.cat(pieces)


def _build_group(reader: Reader, parts: list[Part], dtype: torch.dtype) -> Linear:
    bias = _bias(reader, parts, dtype)
    kind, block = _kind(parts[0])
    if kind == "dense":
        weight = torch.cat([reader.dense(p.info, dtype, p.order) for p in parts])
        return Dense(weight, bias)
    out = sum(p.info.rows for p in parts)
    if kind == "blocks":  # the rows as stored, read straight into place
        stored = torch.empty((out, parts[0].info.row_bytes), dtype=torch.uint8)
        at = 0
        for rows in _chunks(parts):
            for p, start, end in rows:
                stored[at:at + end - start] = reader.part_rows(p, start, end)
                at += end - start
        return BlockLinear(stored, str(block), parts[0].info.cols, bias)
    cols = parts[0].info.cols * (1 if kind == "int4" else 2)  # what the kernel reads
    # The results are allocated first and filled chunk by chunk: the chunks' temporaries
    # (freed each time, the same sizes) then reuse the same memory.
    weights = torch.empty((out, cols // 2), dtype=torch.uint8)
    table = torch.empty((cols // 32, out, 2), dtype=dtype)  # (groups, out, 2): aten's
    at = 0
    for rows in _chunks(parts):
        pieces = [int4_codes(decode(reader.part_rows(p, start, end), p.info.type,
                                    p.info.cols)) for p, start, end in rows]
        codes = torch.cat([c for c, _ in pieces])
        weights[at:at + len(codes)] = pack_int4(codes)
        table[:, at:at + len(codes)] = torch.cat([t for _, t in pieces]).transpose(0, 1)
        at += len(codes)
        del pieces, codes
    if kind == "int4":
        return Int4Linear(weights, table, 32, out, bias)
    high = 8.0 if block == 16 else 1.0
    return SplitInt4Linear(weights, table, 32, out, bias, block, high)


def _chunks(parts: list[Part]) -> Iterator[list[tuple[Part, int, int]]]:
    """The rows of `parts` one after another, in pieces of `_CHUNK_ROWS`: per piece,
    (part, first row, end row) of each part it spans."""
    total = sum(p.info.rows for p in parts)
    for start in range(0, total, _CHUNK_ROWS):
        end, at, piece = min(start + _CHUNK_ROWS, total), 0, []
        for part in parts:
            lo, hi = max(start, at), min(end, at + part.info.rows)
            if lo < hi:
                piece.append((part, lo - at, hi - at))
            at += part.info.rows
        yield piece


# -- the token embedding -------------------------------------------------------------------
class QuantEmbedding:
    """A token embedding left quantized in the GGUF file (mapped, copy-on-write, never
    written): a lookup reads and dequantizes only the rows it needs."""

    def __init__(self, path: Path, info: TensorInfo, dtype: torch.dtype) -> None:
        mapped = np.memmap(path, dtype=np.uint8, mode="c", offset=info.offset,
                           shape=(info.rows, info.row_bytes))
        self.table = torch.from_numpy(mapped)
        self.type, self.cols = info.type, info.cols
        self.shape = (info.rows, info.cols)
        self.dtype, self.device = dtype, torch.device("cpu")

    def __call__(self, ids: torch.Tensor) -> torch.Tensor:
        rows = self.table.index_select(0, ids.reshape(-1).to(self.device))
        values = dequantize(rows, self.type, self.cols).to(self.dtype)
        return values.view(*ids.shape, self.cols)


# -- a whole model ---------------------------------------------------------------------
def _hf_to_gguf(header: GGUFHeader, layers: int) -> Callable[[str], str | None]:
    """GGUF's name of a transformers tensor name (None: the file has no such tensor)."""
    import gguf

    arches = {name: arch for arch, name in gguf.MODEL_ARCH_NAMES.items()}
    arch = arches.get(header.architecture)
    if arch is None:
        raise GGUFError(f"GGUF architecture {header.architecture!r} is unknown to gguf")
    names = gguf.get_tensor_name_map(arch, layers)

    def name(hf: str) -> str | None:
        found = names.get_name(hf, try_suffixes=(".weight", ".bias"))
        return found if found in header.tensors else None

    return name


def _reverse_permutation(rows: int, heads: int) -> torch.Tensor:
    """The row order that undoes llama.cpp's interleaving of each head's rotary halves
    (transformers' `_reverse_permute_weights`)."""
    return torch.arange(rows).view(heads, rows // heads // 2, 2).transpose(1, 2).reshape(-1)


def load_model(path: Path, config: dict, dtype: torch.dtype) -> Any:
    """A `NativeCausalLM` (CPU) whose linears run the GGUF's stored precision; `config`
    is the model's config.json (as transformers makes it from the same file)."""
    from chatcli.lm.llama import ModelArgs, NativeCausalLM

    args = ModelArgs.from_config(config)
    header = read_header(path)
    gguf_name = _hf_to_gguf(header, args.num_layers)

    def info(hf: str) -> TensorInfo:
        found = gguf_name(hf)
        if found is None:
            raise GGUFError(f"{Path(path).name} has no tensor for {hf}")
        return header.tensors[found]

    def optional(hf: str) -> TensorInfo | None:
        found = gguf_name(hf)
        return header.tensors[found] if found else None

    permute = header.architecture == "llama"  # llama.cpp's converter reorders q and k
    shifted = header.architecture.startswith("gemma")  # norms stored as 1 + w

    def norm(hf: str) -> torch.Tensor:
        """A norm's weight as transformers' GGUF loader makes it (Gemma: stored - 1)."""
        if not shifted:
            return reader.dense(info(hf), dtype)
        return (reader.dense(info(hf), torch.float32) - 1).to(dtype)

    def part(hf: str, heads: int = 0) -> Part:
        tensor = info(f"{hf}.weight")
        order = _reverse_permutation(tensor.rows, heads) if permute and heads else None
        return Part(tensor, order, optional(f"{hf}.bias"))

    norms = ["input_layernorm", "post_attention_layernorm"]
    if args.gemma_norms:
        norms += ["pre_feedforward_layernorm", "post_feedforward_layernorm"]
    if args.qk_norm:
        norms += ["self_attn.q_norm", "self_attn.k_norm"]
    reader = Reader(header)
    try:
        weights: dict[str, Any] = {}
        embed = info("model.embed_tokens.weight")
        if embed.type.kernel.kind in ("int4", "int4x2"):
            weights["model.embed_tokens.weight"] = QuantEmbedding(header.path, embed, dtype)
        else:
            weights["model.embed_tokens.weight"] = reader.dense(embed, dtype)
        weights["model.norm.weight"] = norm("model.norm.weight")
        head = optional("lm_head.weight")
        table = weights["model.embed_tokens.weight"]
        linears: dict[str, Linear] = {  # a tied dense table serves as the head too
            "head": Dense(table) if head is None and isinstance(table, torch.Tensor) and
            _kind(Part(embed))[0] == "dense" else
            build_linear(reader, [Part(head or embed)], dtype)}
        for i in range(args.num_layers):
            p = f"model.layers.{i}"
            for norm_name in norms:
                weights[f"{p}.{norm_name}.weight"] = norm(f"{p}.{norm_name}.weight")
            attn, mlp = f"{p}.self_attn", f"{p}.mlp"
            if args.fused:  # Phi-3: q/k/v and gate/up stored as one tensor each
                qkv, gate_up = [part(f"{attn}.qkv_proj")], [part(f"{mlp}.gate_up_proj")]
            else:
                qkv = [part(f"{attn}.{proj}_proj", heads) for proj, heads in
                       (("q", args.heads), ("k", args.kv_heads), ("v", 0))]
                gate_up = [part(f"{mlp}.{n}_proj") for n in ("gate", "up")]
            linears[f"layers.{i}.qkv"] = build_linear(reader, qkv, dtype)
            linears[f"layers.{i}.o"] = build_linear(reader, [part(f"{attn}.o_proj")], dtype)
            linears[f"layers.{i}.gate_up"] = build_linear(reader, gate_up, dtype)
            linears[f"layers.{i}.down"] = build_linear(reader, [part(f"{mlp}.down_proj")],
                                                       dtype)
    finally:
        reader.close()
    _release_freed_memory()
    return NativeCausalLM.from_linears(args, weights, linears, "gguf", config)


def _release_freed_memory() -> None:
    """Hand the load's freed temporaries back to the system: glibc keeps them in its heap
    otherwise (interleaved with the packed weights, they cannot shrink it), and the
    process stays ~2x the model's size (measured: 207 MB resident added for a 98 MB
    GGUF before, 112 MB after)."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        trim = getattr(libc, "malloc_trim", None)
    except OSError:
        return
    if trim is not None:  # glibc only
        trim(0)
