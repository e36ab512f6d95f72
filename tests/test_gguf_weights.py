"""GGUF tensors read at their stored precision (chatcli/lm/gguf_weights.py, gguf_file.py).

Every supported format is checked against `gguf`'s own dequantization, bit for bit, on
blocks of every code and realistic scales: the decoded codes and scales, and the weights
torch's int4 kernel multiplies by when given them (read back through the kernel) with a
float32 table. With a bf16 table (what bf16 activations need) the codes are still the
file's and each block's scale and zero is rounded to bf16, exactly that. The linears
compute ``x @ W.T`` with those weights, whatever chunks their rows were packed in.

Where chatcli's block kernel runs (a CPU with AVX-512 and a C compiler: the machines
chatcli is tested on), Q8_0, Q5_0, Q5_1, Q5_K and Q6_K run as stored through it: its
weights, read back, are gguf's dequantization bit for bit too, in float32 and bfloat16
activations alike; with ``CHATCLI_BLOCK_KERNELS=0`` (or where it cannot run) they run
as int4x2, as above.
"""

from __future__ import annotations

import struct
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch

from chatcli.lm import block_kernels, gguf_weights
from chatcli.lm.gguf_file import (
    BLOCK_FORMATS,
    TENSOR_TYPES,
    GGUFError,
    TensorType,
    read_header,
    runs_as,
)
from chatcli.lm.quant import (
    BlockLinear,
    Int4Linear,
    SplitInt4Linear,
    Stacked,
    from_tensors,
    pack_int4,
    to_tensors,
)


@pytest.fixture
def needs_blocks() -> None:
    """Tests of the block kernel run where it runs (asked at run time: the kernels'
    folder is conftest's session fixture)."""
    why_not = block_kernels.unavailable()
    if why_not is not None:
        pytest.skip(why_not)

FORMATS = ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q4_K", "Q5_K", "Q6_K"]
BY_NAME = {t.name: t for t in TENSOR_TYPES.values()}


def random_blocks(name: str, rows: int, cols: int, seed: int = 0) -> np.ndarray:
    """(rows, row bytes) raw blocks of format `name`: random codes (every bit pattern),
    fp16 scales and minimums of the magnitudes llama.cpp's quantizer gives (a minimum
    within a small factor of the scale times the code range)."""
    rng = np.random.default_rng(seed)
    t = BY_NAME[name]
    blocks = cols // t.block_elements
    raw = rng.integers(0, 256, (rows, blocks, t.block_bytes), dtype=np.uint8)

    def half(scale: np.ndarray) -> np.ndarray:
        return scale.astype(np.float16).view(np.uint8).reshape(*scale.shape, 2)

    d = rng.uniform(0.5, 2, (rows, blocks)) * 10.0 ** rng.uniform(-4, -1, (rows, blocks))
    if name == "Q6_K":
        raw[..., 208:210] = half(d)
    else:
        raw[..., 0:2] = half(d)
    if name in ("Q4_1", "Q5_1"):  # the block's minimum, about -half the code range
        raw[..., 2:4] = half(-d * rng.uniform(4, 12, d.shape))
    if name in ("Q4_K", "Q5_K"):  # dmin, multiplied by 6-bit minimums like d by scales
        raw[..., 2:4] = half(d * rng.uniform(0.3, 3, d.shape))
    return raw.reshape(rows, -1)


def reference(raw: np.ndarray, name: str) -> torch.Tensor:
    return torch.from_numpy(gguf.quants.dequantize(raw, gguf.GGMLQuantizationType[name]))


def linear_of(blocks: gguf_weights.Blocks, dtype: torch.dtype, rows: int) -> Int4Linear:
    codes, table = gguf_weights.int4_codes(blocks)
    table = table.to(dtype).transpose(0, 1).contiguous()
    if blocks.bits <= 4:
        return Int4Linear(pack_int4(codes), table, 32, rows)
    high = 8.0 if blocks.block == 16 else 1.0
    return SplitInt4Linear(pack_int4(codes), table, 32, rows, None, blocks.block, high)


@pytest.mark.parametrize("name", FORMATS)
def test_decoded_blocks_equal_ggufs_dequantization(name: str) -> None:
    raw = random_blocks(name, 48, 512)
    blocks = gguf_weights.decode(torch.from_numpy(raw), BY_NAME[name], 512)
    assert torch.equal(blocks.dequantized(), reference(raw, name))
    assert int(blocks.codes.min()) == 0 and int(blocks.codes.max()) == 2 ** blocks.bits - 1


@pytest.mark.parametrize("name", FORMATS)
def test_the_kernels_weights_are_the_files_in_float32(name: str) -> None:
    raw = random_blocks(name, 64, 512, seed=1)
    blocks = gguf_weights.decode(torch.from_numpy(raw), BY_NAME[name], 512)
    lin = linear_of(blocks, torch.float32, 64)
    assert torch.equal(lin.dequantized(), reference(raw, name))
    x = torch.randn(3, 512, generator=torch.Generator().manual_seed(2))
    want = x @ reference(raw, name).t()
    assert torch.allclose(lin(x), want, atol=1e-5 * want.abs().max().item(), rtol=0)


@pytest.mark.parametrize("name", FORMATS)
def test_bf16_keeps_the_codes_and_rounds_each_blocks_scale_and_zero(name: str) -> None:
    """bf16 activations need a bf16 table: the weights are then exactly the file's codes
    against each block's scale and zero rounded to bf16 (computed here from the blocks),
    which for a symmetric format is bf16(scale) * (code - center)."""
    raw = random_blocks(name, 64, 512, seed=3)
    blocks = gguf_weights.decode(torch.from_numpy(raw), BY_NAME[name], 512)
    got = linear_of(blocks, torch.bfloat16, 64).dequantized()
    s = blocks.scale.bfloat16().float().repeat_interleave(blocks.block, dim=1)
    c = blocks.codes.float()
    if blocks.center is not None:  # Q4_0, Q5_0, Q8_0, Q6_K
        want = s * (c - blocks.center)
    else:
        zero = (blocks.offset + 8 * blocks.scale).bfloat16().float()
        zero = zero.repeat_interleave(blocks.block, dim=1)
        low = (c % 16 - 8) * s + zero
        want = low if blocks.bits == 4 else low + 16 * s * (c // 16)
    assert torch.equal(got, want)
    # bf16 rounds to 8 significant bits: each scale and zero moves by at most 2^-8 of
    # itself, so a weight by at most 2^-8 of |code - 8| |scale| + |zero| (of each half)
    exact = reference(raw, name)
    scale = blocks.scale.abs().repeat_interleave(blocks.block, dim=1)
    if blocks.center is not None:
        bound = 2 ** -8 * exact.abs()
    else:
        zero = (blocks.offset + 8 * blocks.scale).abs().repeat_interleave(blocks.block, dim=1)
        bound = 2 ** -8 * ((c % 16 - 8).abs() * scale + zero + 16 * scale * (c // 16))
    assert ((got - exact).abs() <= bound * (1 + 2 ** -16)).all()


@pytest.mark.parametrize("blocks", [True, False], ids=["blocks", "int4x2"])
def test_rows_packed_in_chunks_equal_one_packing(monkeypatch: pytest.MonkeyPatch,
                                                 tmp_path: Path, blocks: bool) -> None:
    """q, k and v of different formats, and a fused pair spanning chunk boundaries."""
    if blocks and block_kernels.unavailable() is not None:
        pytest.skip(block_kernels.unavailable())
    if not blocks:
        monkeypatch.setenv("CHATCLI_BLOCK_KERNELS", "0")
    a, b = random_blocks("Q8_0", 80, 64, seed=4), random_blocks("Q5_0", 48, 64, seed=5)
    path = tmp_path / "t.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    for name, data, kind in (("a", a, "Q8_0"), ("b", b, "Q5_0"),
                             ("c", random_blocks("Q4_0", 32, 64), "Q4_0")):
        writer.add_tensor(name, data, raw_dtype=gguf.GGMLQuantizationType[kind])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    header = read_header(path)
    parts = [gguf_weights.Part(header.tensors[n]) for n in ("a", "b", "c")]
    reader = gguf_weights.Reader(header)
    try:
        whole = gguf_weights.build_linear(reader, parts, torch.float32)
        monkeypatch.setattr(gguf_weights, "_CHUNK_ROWS", 64)
        chunked = gguf_weights.build_linear(reader, parts, torch.float32)
    finally:
        reader.close()
    assert isinstance(whole, Stacked) and isinstance(chunked, Stacked)
    if blocks:  # one linear per stored format
        assert [type(p).__name__ for p in whole.parts] == ["BlockLinear", "BlockLinear",
                                                           "Int4Linear"]
        assert [p.format for p in whole.parts[:2]] == ["Q8_0", "Q5_0"]
        assert torch.equal(chunked.parts[0].blocks, torch.from_numpy(a))
        assert torch.equal(chunked.parts[1].blocks, torch.from_numpy(b))
        got = torch.cat([p.dequantized() for p in chunked.parts[:2]])
    else:
        assert [type(p).__name__ for p in whole.parts] == ["SplitInt4Linear", "Int4Linear"]
        assert torch.equal(whole.parts[0].packed, chunked.parts[0].packed)
        got = chunked.parts[0].dequantized()
    assert torch.equal(got, torch.cat([reference(a, "Q8_0"), reference(b, "Q5_0")]))
    x = torch.randn(2, 64)
    assert torch.allclose(chunked(x), whole(x), atol=0, rtol=0)


def _write(path: Path, kinds: dict[str, str]) -> None:
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_token_list([f"t{i}" for i in range(1000)])  # an array the header skips
    for name, kind in kinds.items():
        qtype = gguf.GGMLQuantizationType[kind]
        size = gguf.GGML_QUANT_SIZES[qtype][1]
        data = (random_blocks(kind, 16, 256) if kind in BY_NAME
                else np.zeros((16, size), dtype=np.uint8))  # 256 columns: one block a row
        writer.add_tensor(name, data, raw_dtype=qtype)
    writer.add_tensor("norm", np.ones(256, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def test_the_header_reader_finds_what_ggufs_reader_finds(tmp_path: Path) -> None:
    path = tmp_path / "m.gguf"
    _write(path, {"a": "Q4_K", "b": "Q6_K", "c": "Q4_K", "d": "Q3_K"})
    header = read_header(path)
    assert header.architecture == "llama"
    theirs = gguf.GGUFReader(str(path))
    assert {t.name: (t.data_offset, int(t.n_bytes)) for t in theirs.tensors} == {
        name: (info.offset, info.nbytes) for name, info in header.tensors.items()}
    assert runs_as(header) == [
        "Q4_K x2: int4 (a scale and minimum per 32)",
        "F32 x1: dense",
        "Q3_K x1: dequantized (no kernel fits)",
        "Q6_K x1: int4x2 (two 4-bit halves, a scale per 16)",
    ]
    assert runs_as(header, blocks=True)[-1] == "Q6_K x1: as stored (chatcli's block kernel)"


def test_a_damaged_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "m.gguf"
    _write(path, {"a": "Q8_0"})
    data = path.read_bytes()
    (tmp_path / "cut.gguf").write_bytes(data[:-100])
    with pytest.raises(GGUFError, match=r"^cut.gguf is truncated: tensor norm ends past the "
                                        r"end of the file \(\d+ bytes\)$"):
        read_header(tmp_path / "cut.gguf")
    (tmp_path / "short.gguf").write_bytes(data[:200])
    with pytest.raises(GGUFError, match=r"^short\.gguf: the GGUF header is cut short$"):
        read_header(tmp_path / "short.gguf")
    (tmp_path / "no.gguf").write_bytes(b"PK\x03\x04" + data[4:])
    with pytest.raises(GGUFError, match=r"^no.gguf is not a GGUF file \(it does not start "
                                        r"with 'GGUF'\)$"):
        read_header(tmp_path / "no.gguf")
    (tmp_path / "v9.gguf").write_bytes(b"GGUF" + struct.pack("<I", 9) + data[8:])
    with pytest.raises(GGUFError, match=r"^v9.gguf: GGUF version 9 is not supported"):
        read_header(tmp_path / "v9.gguf")


@pytest.mark.parametrize("name", ["Q8_0", "Q4_K", "F16"])
def test_the_embedding_dequantizes_only_the_rows_looked_up(tmp_path: Path, name: str) -> None:
    path = tmp_path / "e.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    values = np.random.default_rng(6).normal(size=(64, 256)).astype(np.float32)
    qtype = gguf.GGMLQuantizationType[name]
    data = gguf.quants.quantize(values, qtype) if name != "Q4_K" else random_blocks(
        "Q4_K", 64, 256)
    writer.add_tensor("e", data, raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    info = read_header(path).tensors["e"]
    table = torch.from_numpy(gguf.quants.dequantize(data, qtype))
    embed = gguf_weights.QuantEmbedding(path, info, torch.float32)
    ids = torch.tensor([[3, 0, 63], [7, 7, 1]])
    assert torch.equal(embed(ids), table[ids])
    assert embed(ids).shape == (2, 3, 256)


def test_every_type_with_a_kernel_is_listed() -> None:
    assert BLOCK_FORMATS == block_kernels.FORMATS == ("Q8_0", "Q5_0", "Q5_1", "Q5_K", "Q6_K")
    kinds = {t.name: t.kernel.kind for t in TENSOR_TYPES.values()}
    assert kinds == {"F32": "dense", "F16": "dense", "BF16": "dense", "Q4_0": "int4",
                     "Q4_1": "int4", "Q4_K": "int4", "Q5_0": "int4x2", "Q5_1": "int4x2",
                     "Q5_K": "int4x2", "Q8_0": "int4x2", "Q6_K": "int4x2"}
    for t in TENSOR_TYPES.values():  # the layouts are gguf's
        assert gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[t.name]] == (
            t.block_elements, t.block_bytes)
    assert isinstance(BY_NAME["Q6_K"], TensorType)


# -- chatcli's block kernel ----------------------------------------------------------------
@pytest.mark.usefixtures("needs_blocks")
@pytest.mark.parametrize("name", BLOCK_FORMATS)
def test_the_block_kernels_weights_are_the_files(name: str) -> None:
    """Read back through the kernel, in float32 and from bfloat16 activations alike (the
    kernel reads them in float32), the weights are gguf's, bit for bit; the products are
    ``x @ W.T`` up to float32 summation order, for any number of rows (the kernel's full
    tiles of 4 and the rows left over)."""
    raw = random_blocks(name, 52, 512, seed=7)  # 52 rows: 13 groups of 4
    want = reference(raw, name)
    lin = BlockLinear(torch.from_numpy(raw), name, 512)
    assert torch.equal(lin.dequantized(), want)
    eye = torch.eye(512, dtype=torch.bfloat16)
    assert torch.equal(lin(eye).float().t(), want.bfloat16().float())
    for rows in (1, 3, 4, 9):
        x = torch.randn(rows, 512, generator=torch.Generator().manual_seed(rows))
        exact = (x.double() @ want.double().t())
        bound = 1e-5 * (x.double().abs() @ want.double().abs().t()).max().item()
        assert (lin(x).double() - exact).abs().max().item() <= bound
        assert torch.equal(lin(x.bfloat16()), lin(x.bfloat16().float()).bfloat16())
    out = lin(torch.randn(2, 3, 512))  # any leading shape
    assert out.shape == (2, 3, 52) and out.dtype == torch.float32


@pytest.mark.usefixtures("needs_blocks")
def test_a_block_linear_saves_and_loads_with_its_bias() -> None:
    raw = random_blocks("Q6_K", 16, 256, seed=8)
    lin = BlockLinear(torch.from_numpy(raw), "Q6_K", 256, torch.arange(16.0))
    back = from_tensors(to_tensors(lin, "p"), "p")
    assert isinstance(back, BlockLinear) and back.format == "Q6_K"
    assert back.in_features == 256 and torch.equal(back.blocks, lin.blocks)
    x = torch.randn(2, 256)
    assert torch.equal(back(x), lin(x))
    assert torch.equal(lin(x), BlockLinear(lin.blocks, "Q6_K", 256)(x) + torch.arange(16.0))


def test_a_format_without_a_block_kernel_is_refused() -> None:
    with pytest.raises(ValueError, match=r"^format 'Q4_0' has no block kernel; choose one "
                                         r"of \('Q8_0', 'Q5_0', 'Q5_1', 'Q5_K', 'Q6_K'\)$"):
        BlockLinear(torch.zeros((1, 18), dtype=torch.uint8), "Q4_0", 32)


def test_switched_off_the_block_kernel_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHATCLI_BLOCK_KERNELS", "0")
    assert block_kernels.unavailable() == (
        "chatcli's block kernels are switched off (CHATCLI_BLOCK_KERNELS=0)")
    assert block_kernels.library() is None


def test_a_failed_build_is_logged_not_shown(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                            capfd: pytest.CaptureFixture[str]) -> None:
    """A compiler that fails: the reason names the log, the log has its output, nothing
    reaches the terminal, nothing is left in the folder but the log (nor in the temp
    folder: the compiler's temporary files go to a scratch folder inside it)."""
    if not block_kernels._has_avx512():
        pytest.skip("no AVX-512: the kernel is never built here")
    bad = tmp_path / "bin" / "cc"
    bad.parent.mkdir()
    bad.write_text("#!/bin/sh\necho 'block_mm.c:1: error: no'\nexit 1\n")
    bad.chmod(0o755)
    monkeypatch.setenv("CC", str(bad))
    monkeypatch.setenv("CHATCLI_KERNELS_DIR", str(tmp_path / "k"))
    monkeypatch.setattr(block_kernels, "_library", [])
    monkeypatch.setattr(block_kernels, "_why_not", None)
    assert block_kernels.library() is None
    log = tmp_path / "k" / "build.log"
    assert block_kernels.unavailable() == f"chatcli's block kernels did not build (see {log})"
    assert log.read_text() == "block_mm.c:1: error: no\n"
    assert sorted(p.name for p in (tmp_path / "k").iterdir()) == ["build.log"]
    assert capfd.readouterr() == ("", "")


@pytest.mark.usefixtures("needs_blocks")
def test_a_build_replaces_other_versions_and_leaves_only_itself(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """... and nothing in the temp folder (the compiler's files go to a scratch folder
    inside the kernels folder, removed after)."""
    folder, temp = tmp_path / "k", tmp_path / "temp"
    folder.mkdir()
    temp.mkdir()
    (folder / "block_mm-0123456789abcdef.so").write_bytes(b"an older version")
    monkeypatch.setenv("CHATCLI_KERNELS_DIR", str(folder))
    monkeypatch.setenv("TMPDIR", str(temp))
    monkeypatch.setattr(block_kernels, "_library", [])
    assert block_kernels.library() is not None
    assert [p.name for p in folder.iterdir()] == [
        f"block_mm-{block_kernels._digest(block_kernels._compiler())}.so"]
    assert list(temp.iterdir()) == []


@pytest.mark.usefixtures("needs_blocks")
@pytest.mark.parametrize("name", ["Q5_K", "Q6_K"])
def test_k_quant_decode_steps_read_bfloat16_activations_as_they_are(name: str) -> None:
    """A decode step's Q5_K and Q6_K (fewer than 4 bfloat16 rows, on a CPU with
    AVX512-BF16) run the bfloat16 dot-product path: its weights, read back one identity
    row at a time in float32, are the file's bit for bit, and its products agree with the
    exact ones to float32 summation order."""
    lib = block_kernels.library()
    assert lib is not None
    bf16_path = block_kernels._functions(lib)[1][BLOCK_FORMATS.index(name)]
    if bf16_path is None:
        pytest.skip("no AVX512-BF16 on this CPU")
    raw = random_blocks(name, 20, 512, seed=9)
    blocks, want = torch.from_numpy(raw), reference(raw, name)
    eye = torch.eye(512, dtype=torch.bfloat16)
    got = torch.empty(512, 20)
    for i in range(0, 512, 3):  # 3 rows a call: the path's own row count
        rows = eye[i:i + 3]
        bf16_path(rows.data_ptr(), rows.shape[0], 512, blocks.data_ptr(), 20,
                  got[i:].data_ptr())
    assert torch.equal(got.t(), want)
    lin = BlockLinear(blocks, name, 512)
    for rows in (1, 3):
        x = torch.randn(rows, 512, generator=torch.Generator().manual_seed(rows)).bfloat16()
        exact = x.double() @ want.double().t()
        bound = 1e-5 * (x.double().abs() @ want.double().abs().t()).max().item()
        spy = torch.empty(rows, 20)
        bf16_path(x.data_ptr(), rows, 512, blocks.data_ptr(), 20, spy.data_ptr())
        assert (spy.double() - exact).abs().max().item() <= bound
        assert torch.equal(lin(x), spy.bfloat16())  # the op takes this path
