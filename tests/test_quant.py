"""Weight-only int8/int4 linear layers and `--quantize`.

Quantized layers are not bit-identical to anything outside chatcli, so these tests
pin what they promise instead: each layer computes ``x @ dequantized(W).T`` (up to
the kernel's float accumulation), the quantization error per weight is at most half
a step, 4-bit re-quantization of weights already on a Q4_1 grid is lossless, fused
layers equal the separate ones, and a quantized model answers through the CLI with
exactly the tokens its own forward pass picks.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from chatcli.lm.llama import NativeCausalLM
from chatcli.lm.quant import (
    INT4_GROUP_SIZE,
    Dense,
    Int4Linear,
    Int8Linear,
    fuse,
    quantize,
    split,
)
from conftest import Tiny, printed


def _weight(rows: int, cols: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(rows, cols, generator=gen)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(64, 32), (96, 64), (48, 96)])
def test_int8_computes_with_its_dequantized_weights(
    dtype: torch.dtype, shape: tuple[int, int]
) -> None:
    w = _weight(*shape)
    lin = Int8Linear.from_weight(w.to(dtype))
    deq = lin.dequantized()
    # round to nearest: every weight within half a step of its row's grid
    step = lin.scales.float()[:, None]
    assert ((deq - w.to(dtype).float()).abs() <= step / 2 + 1e-6).all()
    x = _weight(3, shape[1], seed=1).to(dtype)
    got = lin(x).float()
    want = x.float() @ deq.t()
    tol = 1e-4 if dtype == torch.float32 else 3e-2 * want.abs().max().item()
    assert torch.allclose(got, want, atol=tol, rtol=0), (got - want).abs().max()


def test_int4_is_lossless_on_a_q4_1_grid() -> None:
    """GGUF's Q4_1 stores d * code + m per 32 weights; re-quantizing that is exact."""
    rows, cols = 64, 96
    gen = torch.Generator().manual_seed(3)
    codes = torch.randint(0, 16, (rows, cols // INT4_GROUP_SIZE, INT4_GROUP_SIZE), generator=gen)
    codes[..., 0], codes[..., 1] = 0, 15  # Q4_1 uses the block's min and max
    d = torch.rand(rows, cols // INT4_GROUP_SIZE, 1, generator=gen) * 0.01 + 1e-3
    m = -torch.rand(rows, cols // INT4_GROUP_SIZE, 1, generator=gen) * 0.05
    w = (codes.float() * d + m).view(rows, cols)
    lin = Int4Linear.from_weight(w)
    x = _weight(5, cols, seed=4)
    assert torch.allclose(lin(x), x @ w.t(), atol=2e-5, rtol=0)


def test_int4_error_is_bounded_on_arbitrary_weights() -> None:
    w = _weight(32, 64)
    lin = Int4Linear.from_weight(w)
    groups = w.view(32, -1, INT4_GROUP_SIZE)
    step = (groups.amax(-1) - groups.amin(-1)) / 15  # one code step per group
    x = torch.eye(64)  # the identity reads the dequantized weights back, column by column
    deq = lin(x).t()
    err = (deq - w).view(32, -1, INT4_GROUP_SIZE).abs()
    assert (err <= step[..., None] / 2 + 1e-5).all()


def test_int4_falls_back_to_int8_when_columns_do_not_split_into_groups() -> None:
    assert isinstance(quantize(Dense(_weight(16, 40)), "int4"), Int8Linear)
    assert isinstance(quantize(Dense(_weight(16, 64)), "int4"), Int4Linear)
    dense = Dense(_weight(16, 64))
    assert quantize(dense, "none") is dense
    with pytest.raises(ValueError, match="unknown quantization mode 'int3'"):
        quantize(dense, "int3")


@pytest.mark.parametrize("bias", [False, True])
def test_fuse_and_split_equal_the_separate_layers(bias: bool) -> None:
    parts = [
        Dense(_weight(n, 32, seed=n), _weight(1, n, seed=n + 1)[0] if bias else None)
        for n in (32, 16, 16)
    ]
    x = _weight(4, 32, seed=9)
    fused = fuse(parts)
    for got, lin in zip(split(fused(x), [32, 16, 16]), parts, strict=True):
        assert torch.allclose(got, lin(x), atol=1e-6, rtol=0)


def _greedy(model: NativeCausalLM, ids: list[int], steps: int) -> list[int]:
    logits, cache = model.forward(torch.tensor([ids]), None)
    out: list[int] = []
    for _ in range(steps):
        out.append(int(logits[0, -1].argmax()))
        logits, cache = model.forward(torch.tensor([[out[-1]]]), cache)
    return out


@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_quantized_model_computes_with_its_dequantized_weights(
    tiny_model: Tiny, mode: str
) -> None:
    """The forward pass uses the fused, quantized layers everywhere: a model given the
    dequantized weights as plain dense layers computes the same logits."""
    quant = NativeCausalLM.from_folder(tiny_model.folder, torch.float32)
    quant.quantize(mode)
    assert quant.quantization == mode
    ref = NativeCausalLM.from_folder(tiny_model.folder, torch.float32)
    ref.quantize(mode)
    for layer in ref.layers:
        for name in ("qkv", "gate_up", "o", "down"):
            lin = getattr(layer, name)
            setattr(layer, name, Dense(lin.dequantized(), lin.bias))
    ref.head = Dense(ref.head.dequantized())
    full = NativeCausalLM.from_folder(tiny_model.folder, torch.float32)

    ids = torch.tensor([[5, 17, 42, 99, 7, 250, 3]])
    got, cache = quant.forward(ids, None, logits_to_keep=0)
    want, ref_cache = ref.forward(ids, None, logits_to_keep=0)
    assert torch.allclose(got, want, atol=1e-4, rtol=0), (got - want).abs().max()
    step, _ = quant.forward(torch.tensor([[11]]), cache)
    ref_step, _ = ref.forward(torch.tensor([[11]]), ref_cache)
    assert torch.allclose(step, ref_step, atol=1e-4, rtol=0)
    # ... and those are not the full-precision logits
    assert not torch.allclose(got, full.forward(ids, None, logits_to_keep=0)[0], atol=1e-3)
    with pytest.raises(ValueError, match="quantized once"):
        quant.quantize("int8" if mode == "int4" else "int4")


def test_ask_quantize_answers_with_the_quantized_models_tokens(
    cli, tiny_model: Tiny
) -> None:
    from chatcli.lm.tokenizer import ChatTokenizer
    from chatcli.prompt import render_ids

    tok = ChatTokenizer.from_folder(tiny_model.folder)
    model = NativeCausalLM.from_folder(tiny_model.folder, torch.float32)
    model.quantize("int8")
    from chatcli.conversation import Conversation

    conv = Conversation()
    conv.add_user("hello there")
    ids = render_ids(tok, conv.messages())
    want = tok.decode(_greedy(model, ids, 12), skip_special_tokens=True)

    result = cli(["ask", "--quantize", "int8", "-n", "12", "hello there"])
    assert result.exit_code == 0, result.stderr
    assert result.stdout == printed(want)
    # and it is not simply the unquantized answer
    plain = cli(["ask", "-n", "12", "hello there"])
    assert plain.exit_code == 0
    assert plain.stdout != result.stdout


def test_quantize_errors(cli, home: Path) -> None:
    result = cli(["ask", "--quantize", "int3", "hi"])
    assert result.exit_code == 2
    assert result.stderr == (
        "error: --quantize must be one of none, int8, int4, gguf (got 'int3'); hint: use "
        "--quantize int8 (smaller and faster, slightly less exact) or none\n"
    )
    result = cli(["ask", "--quantize", "gguf", "hi"])  # `tiny` is a safetensors folder
    assert (result.exit_code, result.stdout) == (2, "")
    assert result.stderr == (
        "error: --quantize gguf reads a GGUF file's own precision; model 'tiny' is not a GGUF "
        "file; hint: use --quantize int4, int8 or none\n")
    models = home / "models.toml"
    models.write_text(models.read_text() + 'implementation = "transformers"\nquantize = "int8"\n')
    # the alias's quantize gives way where quantized layers do not exist...
    assert cli(["ask", "-n", "2", "hi"]).exit_code == 0
    # ...the flag is refused there
    result = cli(["ask", "--quantize", "int8", "-n", "2", "hi"])
    assert result.exit_code == 2
    assert result.stderr == (
        "error: --quantize int8 is not available for 'tiny': it runs on transformers' "
        "implementation; hint: use --quantize none, or run on the CPU with the native "
        "implementation\n"
    )
    assert cli(["ask", "--quantize", "none", "-n", "2", "hi"]).exit_code == 0


def test_models_toml_quantize_is_validated(cli, home: Path) -> None:
    models = home / "models.toml"
    models.write_text(models.read_text() + 'quantize = "fp4"\n')
    result = cli(["ask", "hi"])
    assert result.exit_code != 0
    assert "'quantize' must be one of none, int8, int4, gguf" in result.stderr
    assert result.stderr.count("\n") == 1
    models.write_text(models.read_text().replace('quantize = "fp4"', 'quantize = "gguf"'))
    result = cli(["ask", "hi"])
    assert result.exit_code != 0
    assert ("'quantize' gguf reads a GGUF file's own precision; this model is not a .gguf "
            "file") in result.stderr
    assert result.stderr.count("\n") == 1


def test_models_show_prints_quantize(cli, home: Path) -> None:
    models = home / "models.toml"
    models.write_text(models.read_text() + 'quantize = "int4"\n')
    result = cli(["models", "show", "tiny"])
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert any(line.split() == ["quantize", "int4"] for line in lines), result.stdout


@pytest.mark.parametrize("cached", [1, 7, 300])
def test_one_query_attention_equals_the_fused_kernel(tiny_model: Tiny, cached: int) -> None:
    model = NativeCausalLM.from_folder(tiny_model.folder, torch.float32)
    gen = torch.Generator().manual_seed(cached)
    rows, d = 2, model.head_dim
    q = torch.randn(rows, model.heads, 1, d, generator=gen)
    k = torch.randn(rows, model.kv_heads, cached, d, generator=gen)
    v = torch.randn(rows, model.kv_heads, cached, d, generator=gen)
    fused = model.attend(q, k, v, past=cached - 1)
    model.exact = False
    mine = model.attend(q, k, v, past=cached - 1)
    assert mine.shape == fused.shape == (rows, 1, model.heads * d)
    assert torch.allclose(mine, fused, atol=1e-5, rtol=0)


@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_quantized_tensors_round_trip(tiny_model: Tiny, mode: str) -> None:
    quant = NativeCausalLM.from_folder(tiny_model.folder, torch.float32)
    quant.quantize(mode)
    again = NativeCausalLM.from_folder(tiny_model.folder, torch.float32)
    again.load_quantized(mode, quant.quantized_tensors())
    assert again.quantization == mode and not again.exact
    ids = torch.tensor([[3, 1, 4, 1, 5, 9, 2, 6]])
    assert torch.equal(quant.forward(ids, None)[0], again.forward(ids, None)[0])


def test_quantized_weights_are_cached(cli, home: Path) -> None:
    first = cli(["ask", "--quantize", "int4", "-n", "10", "hello"])
    assert first.exit_code == 0, first.stderr
    files = list((home / "cache" / "quantized").glob("*.safetensors"))
    assert len(files) == 1
    stamp = files[0].stat().st_mtime_ns
    second = cli(["ask", "--quantize", "int4", "-n", "10", "hello"])
    assert second.stdout == first.stdout
    assert files[0].stat().st_mtime_ns == stamp  # read, not rewritten
    # another mode is another file
    assert cli(["ask", "--quantize", "int8", "-n", "2", "hello"]).exit_code == 0
    assert len(list((home / "cache" / "quantized").glob("*.safetensors"))) == 2
    # a damaged file is quantized again and replaced
    files[0].write_bytes(b"not a safetensors file")
    third = cli(["ask", "--quantize", "int4", "-n", "10", "hello"])
    assert third.exit_code == 0, third.stderr
    assert third.stdout == first.stdout
    assert files[0].stat().st_size > 100


def test_fast_forward_pass_computes_the_same_function(tiny_model: Tiny) -> None:
    """The fused model's forward pass (one RoPE over q and k, `F.rms_norm`, a RoPE table,
    two-matmul decode attention) is the exact one up to rounding: same layers, unquantized."""
    exact = NativeCausalLM.from_folder(tiny_model.folder, torch.float32)
    fast = NativeCausalLM.from_folder(tiny_model.folder, torch.float32)
    fast._fuse(lambda lin: lin)
    assert exact.exact and not fast.exact
    ids = torch.tensor([[5, 17, 42, 99, 7, 250, 3, 8, 8, 1]] * 2)  # two rows, as beams use
    more = torch.tensor([[3, 4, 5]] * 2)  # a multi-token chunk after a cache (KV reuse)
    # The exact pass in float32 and in float64 on the same tokens: the largest difference
    # is float32's own error on this CPU (its kernels' summation order: AVX2, AVX-512,
    # AMX); two correct float32 passes differ by at most about twice that.
    exact64 = NativeCausalLM.from_folder(tiny_model.folder, torch.float64)
    runs: list[list[torch.Tensor]] = []
    for model in (exact, exact64, fast):
        logits, cache = model.forward(ids, None, logits_to_keep=0)
        seen = [logits]
        tokens = torch.tensor([[11], [12]])
        for step in range(300):  # past the RoPE table's first size (256 positions)
            logits, cache = model.forward(tokens, cache)
            seen.append(logits)
            tokens = runs[0][step + 1][:, -1].argmax(-1, keepdim=True) if runs else \
                logits[:, -1].argmax(-1, keepdim=True)  # the float32 exact pass's tokens
        seen.append(model.forward(more, cache, logits_to_keep=0)[0])
        runs.append(seen)
    error = max(float((a.double() - b).abs().max()) for a, b in zip(*runs[:2], strict=True))
    assert 0 < error < 1e-3, error
    for got, want in zip(runs[2], runs[0], strict=True):
        assert torch.allclose(got, want, atol=4 * error, rtol=0), (got - want).abs().max()


def test_misaligned_weights_are_copied_before_the_kernel_sees_them() -> None:
    """Weights read from a mapped safetensors file (the quantized cache) can sit at any
    8-byte offset; torch's int8 kernel crashed the process on them with a few rows."""
    lin = Int8Linear.from_weight(_weight(96, 64))
    raw = torch.empty(lin.qweight.numel() + 40, dtype=torch.int8)
    misaligned = raw[40:].view(96, 64)
    misaligned.copy_(lin.qweight)
    assert misaligned.data_ptr() % 64 != 0
    moved = Int8Linear(misaligned, lin.scales)
    assert moved.qweight.data_ptr() % 64 == 0
    x = _weight(37, 64, seed=2).to(torch.bfloat16)
    moved_bf16 = Int8Linear(moved.qweight, lin.scales.to(torch.bfloat16))
    assert torch.equal(moved_bf16(x), Int8Linear(lin.qweight, lin.scales.to(torch.bfloat16))(x))


def test_continue_keeps_quantize(cli, home: Path) -> None:
    """`ask -c` reopens the conversation's model; --quantize still applies to it."""
    assert cli(["ask", "-n", "4", "hello"]).exit_code == 0
    result = cli(["ask", "-c", "--quantize", "int8", "-n", "4", "again"])
    assert result.exit_code == 0, result.stderr
    assert len(list((home / "cache" / "quantized").glob("*.safetensors"))) == 1
