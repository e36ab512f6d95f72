"""A GGUF file's header, and what chatcli runs each of its tensor types as.

Contract: `read_header(path)` parses the header of a GGUF file (versions 2 and 3): the
metadata values it needs (numbers and strings; arrays are skipped, never decoded, so a
header with a 262,144-token vocabulary reads in milliseconds) and every tensor's name,
type, shape and byte offset; a file that is not a complete GGUF raises `GGUFError`
naming what is wrong. `TENSOR_TYPES` says how each GGML type is laid out (elements and
bytes per block) and what chatcli's native forward pass runs it as (`Kernel`);
`runs_as(header)` puts that in words for `models show`, one entry per type present.

What runs, by type (chatcli.lm.gguf_weights does it):
- Q4_0, Q4_1, Q4_K: torch's int4 kernel with a scale and a minimum per 32 input
  columns: Q4_K's super-block scale times its 6-bit sub-block scale (and the same for
  the minimum) is a per-32 scale and minimum, so the codes are the file's own.
- Q5_0, Q5_1, Q5_K, Q6_K, Q8_0 (`BLOCK_FORMATS`): as stored, the file's own bytes,
  through chatcli's block kernel (chatcli.lm.block_kernels: a CPU with AVX-512 and a C
  compiler; `runs_as(header, blocks=True)`). Where it cannot run: codes of 5 to 8 bits
  split into a low and a high 4-bit half, both run by the int4 kernel over the input
  read twice ("int4x2", Q6_K's 16-column blocks too): the weight is the sum of the
  halves, so again the file's own codes and scales; it reads 8 bits per weight.
- F32, F16, BF16: plain (dense) weights in the model's dtype.
- Any other type (Q2_K, Q3_K, the IQ types, ...): no kernel fits; the tensor is
  dequantized by `gguf` and runs dense in the model's dtype.
Exactness: with float32 activations the weights the kernel multiplies by equal `gguf`'s
float32 dequantization bit for bit (the block kernel's in bfloat16 too: it reads the
activations in float32); in bfloat16 (what chatcli picks on a CPU with bf16)
torch's kernel reads each block's scale and minimum rounded to bfloat16, 8 significant
bits instead of fp16's 11: a weight then differs by at most |code - 8| x the scale's
rounding plus the minimum's (relative 2^-9 each), about as much as rounding each
dequantized weight to bfloat16 (the exact path in bf16) does.

Knows nothing about torch (it is not imported), tokenizers or models.toml.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class GGUFError(ValueError):
    """A file that is not a (complete) GGUF file; the message says what is wrong."""


@dataclass(frozen=True)
class Kernel:
    """How chatcli runs a tensor type: `kind` is "int4" (4-bit codes, per-`block` scale
    and minimum), "int4x2" (5-8-bit codes as two 4-bit halves), "dense" (stored as
    floats) or "dequantized" (no kernel fits: dequantized to the model's dtype)."""

    kind: str
    block: int = 32  # input columns per scale (and minimum)
    bits: int = 4


@dataclass(frozen=True)
class TensorType:
    name: str
    block_elements: int  # weights per block
    block_bytes: int
    kernel: Kernel


BLOCK_FORMATS: tuple[str, ...] = ("Q8_0", "Q5_0", "Q5_1", "Q5_K", "Q6_K")
"""Types chatcli's own block kernel (chatcli.lm.block_kernels) multiplies as stored,
where it runs; their `Kernel` below is what runs where it does not."""

_DENSE = Kernel("dense", 1, 32)
TENSOR_TYPES: dict[int, TensorType] = {  # GGML type code: layout and kernel
    0: TensorType("F32", 1, 4, _DENSE),
    1: TensorType("F16", 1, 2, Kernel("dense", 1, 16)),
    2: TensorType("Q4_0", 32, 18, Kernel("int4", 32, 4)),
    3: TensorType("Q4_1", 32, 20, Kernel("int4", 32, 4)),
    6: TensorType("Q5_0", 32, 22, Kernel("int4x2", 32, 5)),
    7: TensorType("Q5_1", 32, 24, Kernel("int4x2", 32, 5)),
    8: TensorType("Q8_0", 32, 34, Kernel("int4x2", 32, 8)),
    12: TensorType("Q4_K", 256, 144, Kernel("int4", 32, 4)),
    13: TensorType("Q5_K", 256, 176, Kernel("int4x2", 32, 5)),
    14: TensorType("Q6_K", 256, 210, Kernel("int4x2", 16, 6)),
    30: TensorType("BF16", 1, 2, Kernel("dense", 1, 16)),
}


def tensor_type(code: int) -> TensorType:
    """The layout of GGML type `code`; types without a kernel here come from `gguf`."""
    known = TENSOR_TYPES.get(code)
    if known is not None:
        return known
    import gguf  # only for the types chatcli has no kernel for

    try:
        qtype = gguf.GGMLQuantizationType(code)
        elements, size = gguf.GGML_QUANT_SIZES[qtype]
    except (ValueError, KeyError) as exc:
        raise GGUFError(f"unknown tensor type {code}") from exc
    return TensorType(qtype.name, elements, size, Kernel("dequantized", elements, 0))


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]  # GGUF's order: the fastest-varying dimension first
    type: TensorType
    offset: int  # from the start of the file

    @property
    def rows(self) -> int:
        rows = 1
        for dim in self.shape[1:]:
            rows *= dim
        return rows

    @property
    def cols(self) -> int:
        return self.shape[0] if self.shape else 1

    @property
    def nbytes(self) -> int:
        return self.rows * self.row_bytes

    @property
    def row_bytes(self) -> int:
        return self.cols // self.type.block_elements * self.type.block_bytes


@dataclass
class GGUFHeader:
    path: Path
    version: int
    metadata: dict[str, Any]  # scalars and strings; arrays are left out
    tensors: dict[str, TensorInfo] = field(default_factory=dict)
    data_start: int = 0

    @property
    def architecture(self) -> str:
        return str(self.metadata.get("general.architecture", ""))


_MAGIC = b"GGUF"
# GGUF value types: 0 u8, 1 i8, 2 u16, 3 i16, 4 u32, 5 i32, 6 f32, 7 bool, 8 string,
# 9 array, 10 u64, 11 i64, 12 f64
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?",
            10: "<Q", 11: "<q", 12: "<d"}


class _Cursor:
    def __init__(self, data: bytes, what: Path) -> None:
        self.data, self.pos, self.what = data, 0, what

    def take(self, fmt: str) -> Any:
        size = struct.calcsize(fmt)
        if self.pos + size > len(self.data):
            raise GGUFError(f"{self.what.name}: the GGUF header is cut short")
        (value,) = struct.unpack_from(fmt, self.data, self.pos)
        self.pos += size
        return value

    def string(self) -> str:
        length = self.take("<Q")
        end = self.pos + length
        if end > len(self.data):
            raise GGUFError(f"{self.what.name}: the GGUF header is cut short")
        text = self.data[self.pos:end].decode("utf-8", errors="replace")
        self.pos = end
        return text

    def skip_array(self) -> None:
        kind, count = self.take("<I"), self.take("<Q")
        if kind == 8:  # strings: each its own length
            for _ in range(count):
                length = struct.unpack_from("<Q", self.data, self.pos)[0] if (
                    self.pos + 8 <= len(self.data)) else None
                if length is None:
                    raise GGUFError(f"{self.what.name}: the GGUF header is cut short")
                self.pos += 8 + length
        elif kind == 9:
            for _ in range(count):
                self.skip_array()
        elif kind in _SCALARS:
            self.pos += count * struct.calcsize(_SCALARS[kind])
        else:
            raise GGUFError(f"{self.what.name}: unknown GGUF value type {kind}")
        if self.pos > len(self.data):
            raise GGUFError(f"{self.what.name}: the GGUF header is cut short")

    def value(self, kind: int) -> Any:
        if kind in _SCALARS:
            return self.take(_SCALARS[kind])
        if kind == 8:
            return self.string()
        if kind == 9:
            self.skip_array()
            return None
        raise GGUFError(f"{self.what.name}: unknown GGUF value type {kind}")


_READ_AT_ONCE = 1 << 20


def read_header(path: Path) -> GGUFHeader:
    """The header of the GGUF file `path` (its tensors' data is not read)."""
    path = Path(path)
    with path.open("rb") as f:
        size = f.seek(0, 2)
        f.seek(0)
        data = f.read(_READ_AT_ONCE)
        while True:
            try:
                return _parse(data, path, size)
            except _NeedMore:
                if len(data) >= size:
                    raise GGUFError(f"{path.name}: the GGUF header is cut short") from None
                data += f.read(len(data))  # the header is longer: read twice as much


class _NeedMore(Exception):
    pass


def _parse(data: bytes, path: Path, size: int) -> GGUFHeader:
    cur = _Cursor(data, path)
    if data[:4] != _MAGIC:
        raise GGUFError(f"{path.name} is not a GGUF file (it does not start with 'GGUF')")
    try:
        cur.pos = 4
        version = cur.take("<I")
        if version not in (2, 3):
            raise GGUFError(f"{path.name}: GGUF version {version} is not supported (2 or 3)")
        n_tensors, n_kv = cur.take("<Q"), cur.take("<Q")
        metadata: dict[str, Any] = {}
        for _ in range(n_kv):
            key = cur.string()
            value = cur.value(cur.take("<I"))
            if value is not None:
                metadata[key] = value
        infos = []
        for _ in range(n_tensors):
            name = cur.string()
            dims = cur.take("<I")
            shape = tuple(cur.take("<Q") for _ in range(dims))
            code = cur.take("<I")
            infos.append((name, shape, code, cur.take("<Q")))
    except GGUFError as exc:
        if "cut short" in str(exc) and len(data) < size:
            raise _NeedMore from exc
        raise
    alignment = int(metadata.get("general.alignment", 32))
    start = (cur.pos + alignment - 1) // alignment * alignment
    header = GGUFHeader(path, version, metadata, data_start=start)
    for name, shape, code, offset in infos:
        info = TensorInfo(name, shape, tensor_type(code), start + offset)
        if info.cols % info.type.block_elements:
            raise GGUFError(f"{path.name}: tensor {name} has {info.cols} columns, not a "
                            f"multiple of {info.type.name}'s block of {info.type.block_elements}")
        if info.offset + info.nbytes > size:
            raise GGUFError(f"{path.name} is truncated: tensor {name} ends past the end of "
                            f"the file ({size} bytes)")
        header.tensors[name] = info
    return header


def _kernel_words(kernel: Kernel) -> str:
    if kernel.kind == "int4":
        return f"int4 (a scale and minimum per {kernel.block})"
    if kernel.kind == "int4x2":
        return f"int4x2 (two 4-bit halves, a scale per {kernel.block})"
    if kernel.kind == "dense":
        return "dense"
    return "dequantized (no kernel fits)"


BLOCK_WORDS = "as stored (chatcli's block kernel)"


def runs_as(header: GGUFHeader, blocks: bool = False) -> list[str]:
    """What the file's tensor types run as, one entry per kernel (the most tensors
    first), each type with its count, e.g. ["Q4_1 x210: int4 (a scale and minimum per
    32)", "F32 x61: dense", "Q8_0 x1: as stored (chatcli's block kernel)"]; `blocks`:
    whether the block kernel runs here (else `BLOCK_FORMATS` run as their `Kernel`)."""
    counts: dict[str, int] = {}
    kernels: dict[str, str] = {}
    for info in header.tensors.values():
        name = info.type.name
        counts[name] = counts.get(name, 0) + 1
        kernels[name] = (BLOCK_WORDS if blocks and name in BLOCK_FORMATS
                         else _kernel_words(info.type.kernel))
    groups: dict[str, list[str]] = {}
    for name in sorted(counts, key=lambda name: (-counts[name], name)):
        groups.setdefault(kernels[name], []).append(name)
    order = sorted(groups, key=lambda words: -sum(counts[n] for n in groups[words]))
    return [", ".join(f"{name} x{counts[name]}" for name in groups[words]) + f": {words}"
            for words in order]
