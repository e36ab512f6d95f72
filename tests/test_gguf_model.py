"""A GGUF file runs at its own precision: its stored weights, no conversion written.

The tiny test model is written as a GGUF (tests/gguf_export.py: llama.cpp's layout, the
query/key rows reordered per head) with a different format per projection: Q4_0 query
and key, a Q8_0 value (so q/k/v run as two kernels), a Q4_1 output, Q5_0 gate and Q5_1
up (one fused 5-bit kernel), an F16 down projection and a Q8_0 tied embedding/head.
Read as stored, every linear's weights equal what transformers' GGUF loader gives for the
same file (the exact, converted path) bit for bit; in float32 the answer is the exact
path's answer; the first load writes the config and tokenizer only (no weights), and
`models show` says what each tensor type runs as.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from gguf_export import write_gguf

from chatcli import loader, sources
from chatcli.lm import block_kernels, gguf_weights
from chatcli.lm.llama import NativeCausalLM
from chatcli.lm.quant import BlockLinear, Dense, Int4Linear, SplitInt4Linear, Stacked
from chatcli.registry import load_registry
from conftest import Tiny, printed, run_cli

TYPES = {"attn_q": "Q4_0", "attn_k": "Q4_0", "attn_v": "Q8_0", "attn_output": "Q4_1",
         "ffn_gate": "Q5_0", "ffn_up": "Q5_1", "ffn_down": "F16", "token_embd": "Q8_0"}
READING = ("chatcli: Reading the configuration and tokenizer of tiny.gguf (one time only, "
           "a few seconds; its weights are read as stored, at every load)\n")


def _type_of(name: str) -> str:
    return next((kind for part, kind in TYPES.items() if f".{part}." in name
                 or name.startswith(f"{part}.")), "F32")


@pytest.fixture(scope="session")
def tiny_gguf(tiny_model: Tiny, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_gguf(tiny_model.folder, tmp_path_factory.mktemp("gguf") / "tiny.gguf",
                      _type_of)


@pytest.fixture
def g(home: Path, tiny_gguf: Path) -> Path:
    """An alias `g` for the tiny GGUF (float32), the default; returns its cache folder."""
    with (home / "models.toml").open("a") as f:
        f.write(f'\n[models.g]\nsource = "path"\npath = "{tiny_gguf}"\ndtype = "float32"\n')
    text = (home / "models.toml").read_text().replace('default = "tiny"', 'default = "g"')
    (home / "models.toml").write_text(text)
    spec = load_registry().resolve("g")
    weights = sources.locate(spec)
    assert weights is not None
    return loader.converted_dir(spec, weights)


def _greedy(model: NativeCausalLM, ids: list[int], steps: int) -> tuple[list[int], list[float]]:
    """Greedy tokens and, per step, the gap between the two best logits."""
    logits, cache = model.forward(torch.tensor([ids]), None)
    out, gaps = [], []
    for _ in range(steps):
        top = logits[0, -1].float().topk(2)
        out.append(int(top.indices[0]))
        gaps.append(float(top.values[0] - top.values[1]))
        logits, cache = model.forward(torch.tensor([[out[-1]]]), cache)
    return out, gaps


def _prompt(folder: Path, text: str) -> list[int]:
    from chatcli.conversation import Conversation
    from chatcli.lm.tokenizer import ChatTokenizer
    from chatcli.prompt import render_ids

    conv = Conversation()
    conv.add_user(text)
    return render_ids(ChatTokenizer.from_folder(folder), conv.messages())


def test_a_gguf_alias_runs_its_stored_precision_by_default(g: Path) -> None:
    assert load_registry().resolve("g").quantize == "gguf"
    first = run_cli(["ask", "-n", "12", "--stats", "hello there"])
    assert first.exit_code == 0, first.stderr
    assert first.stderr.startswith(READING)
    assert first.stderr.splitlines()[-1].endswith(" implementation=native+gguf")
    # the config and tokenizer only: no weights written
    assert sorted(p.name for p in g.iterdir()) == [
        ".chatcli-manifest.json", ".chatcli-metadata", "chat_template.jinja", "config.json",
        "generation_config.json", "tokenizer.json", "tokenizer_config.json"]
    again = run_cli(["ask", "-n", "12", "--stats", "hello there"])
    assert again.stdout == first.stdout
    assert again.stderr.startswith("stats: ")  # nothing read again
    # the tokens are the GGUF model's own (its forward pass, loaded here)
    from chatcli.lm.tokenizer import ChatTokenizer

    model = gguf_weights.load_model(load_registry().resolve("g").path,
                                    json.loads((g / "config.json").read_text()), torch.float32)
    ids, _ = _greedy(model, _prompt(g, "hello there"), 12)
    assert first.stdout == printed(ChatTokenizer.from_folder(g).decode(
        ids, skip_special_tokens=True))


@pytest.mark.parametrize("blocks", [True, False], ids=["blocks", "int4x2"])
def test_the_stored_weights_are_transformers_gguf_weights_bit_for_bit(
        g: Path, tiny_gguf: Path, monkeypatch: pytest.MonkeyPatch, blocks: bool) -> None:
    """transformers' GGUF loader (the exact path's conversion) dequantizes the same file;
    read as stored, chatcli's kernels multiply by exactly those weights (the block
    kernel's formats as int4x2 where it is switched off)."""
    if not blocks:
        monkeypatch.setenv("CHATCLI_BLOCK_KERNELS", "0")
    elif block_kernels.unavailable() is not None:
        pytest.skip(block_kernels.unavailable())
    assert run_cli(["pull", "g"]).exit_code == 0  # config and tokenizer only
    config = json.loads((g / "config.json").read_text())
    stored = gguf_weights.load_model(tiny_gguf, config, torch.float32)
    spec = load_registry().resolve("g")
    weights = sources.locate(spec)
    assert weights is not None
    folder = loader.ensure_converted(spec, weights, _Silent())
    exact = NativeCausalLM.from_folder(folder, torch.float32)
    for mine, theirs in zip(stored.layers, exact.layers, strict=True):
        assert isinstance(mine.qkv, Stacked)  # Q4_0 q/k, Q8_0 v
        if blocks:  # as stored: one block linear per format
            assert [type(p) for p in mine.qkv.parts] == [Int4Linear, BlockLinear]
            assert isinstance(mine.gate_up, Stacked)  # Q5_0, Q5_1
            assert [(type(p), p.format) for p in mine.gate_up.parts] == [
                (BlockLinear, "Q5_0"), (BlockLinear, "Q5_1")]
        else:
            assert [type(p) for p in mine.qkv.parts] == [Int4Linear, SplitInt4Linear]
            assert type(mine.gate_up) is SplitInt4Linear  # Q5_0 + Q5_1, one kernel
        assert type(mine.o) is Int4Linear and type(mine.down) is Dense
        pairs = {"qkv": (theirs.q, theirs.k, theirs.v), "gate_up": (theirs.gate, theirs.up),
                 "o": (theirs.o,), "down": (theirs.down,)}
        for name, dense in pairs.items():
            want = torch.cat([lin.weight for lin in dense])
            assert torch.equal(getattr(mine, name).dequantized(), want), name
        assert torch.equal(mine.input_norm, theirs.input_norm)
        assert torch.equal(mine.post_norm, theirs.post_norm)
    assert torch.equal(stored.head.dequantized(), exact.lm_head)
    vocab = torch.arange(exact.vocab_size)
    assert torch.equal(stored.embed(vocab), exact.embed)


def test_quantize_none_is_the_dequantized_exact_path(g: Path) -> None:
    from chatcli.runtime import Runtime

    stored = run_cli(["ask", "-n", "16", "--stats", "the capital of France"])
    gguf_mode = Runtime("cpu", "float32", None, "gguf")
    compiled_for = loader.weights_id(g, loader.gguf_of(g, gguf_mode))
    exact = run_cli(["ask", "-n", "16", "--stats", "--quantize", "none",
                     "the capital of France"])
    assert exact.exit_code == 0, exact.stderr
    assert exact.stderr.startswith("chatcli: Converting tiny.gguf to safetensors (one time "
                                   "only, about 15 s; later loads take under a second)\n")
    assert exact.stderr.splitlines()[-1].endswith(" implementation=native")
    assert (g / "model.safetensors").is_file()
    # float32, the same weights (other kernels): the same tokens up to a near tie of the
    # exact logits (none here: so the same answer)
    ids = _prompt(g, "the capital of France")
    want, gaps = _greedy(NativeCausalLM.from_folder(g, torch.float32), ids, 16)
    config = json.loads((g / "config.json").read_text())
    got, _ = _greedy(gguf_weights.load_model(load_registry().resolve("g").path, config,
                                             torch.float32), ids, 16)
    assert min(gaps) > 1e-3
    assert got == want
    assert stored.stdout == exact.stdout
    # and the stored precision still runs from the GGUF beside the converted weights
    again = run_cli(["ask", "-n", "16", "--stats", "the capital of France"])
    assert (again.stdout, again.stderr.splitlines()[-1].endswith("native+gguf")) == (
        stored.stdout, True)
    # and a compiled step of the stored precision is still its own (the config rewritten
    # by the conversion is not part of its identity), until the GGUF itself changes
    gguf = loader.gguf_of(g, gguf_mode)
    assert gguf == load_registry().resolve("g").path
    assert loader.weights_id(g, gguf) == compiled_for
    stat = gguf.stat()
    os.utime(gguf, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))
    assert loader.weights_id(g, gguf) != compiled_for


def test_models_show_says_what_each_type_runs_as(g: Path, tiny_gguf: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    if block_kernels.unavailable() is None:
        shown = json.loads(run_cli(["models", "show", "g", "--json"]).stdout)
        assert shown["stored_precision"] == [
            "F32 x5, F16 x2: dense",
            "Q8_0 x3, Q5_0 x2, Q5_1 x2: as stored (chatcli's block kernel)",
            "Q4_0 x4, Q4_1 x2: int4 (a scale and minimum per 32)"]
    monkeypatch.setenv("CHATCLI_BLOCK_KERNELS", "0")
    result = run_cli(["models", "show", "g"])
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "quantize           gguf" in lines
    assert ("stored precision   F32 x5, F16 x2: dense; Q8_0 x3, Q5_0 x2, Q5_1 x2: int4x2 "
            "(two 4-bit halves, a scale per 32); Q4_0 x4, Q4_1 x2: int4 (a scale and "
            "minimum per 32); not as stored: chatcli's block kernels are switched off "
            "(CHATCLI_BLOCK_KERNELS=0)") in lines
    shown = json.loads(run_cli(["models", "show", "g", "--json"]).stdout)
    assert shown["stored_precision"] == [
        "F32 x5, F16 x2: dense",
        "Q8_0 x3, Q5_0 x2, Q5_1 x2: int4x2 (two 4-bit halves, a scale per 32)",
        "Q4_0 x4, Q4_1 x2: int4 (a scale and minimum per 32)",
        "not as stored: chatcli's block kernels are switched off (CHATCLI_BLOCK_KERNELS=0)"]
    assert json.loads(run_cli(["models", "show", "tiny", "--json"]).stdout)[
        "stored_precision"] is None


def test_where_the_stored_precision_cannot_run(g: Path, home: Path) -> None:
    """An alias's default gives way (the converted path); --quantize gguf is refused."""
    with (home / "models.toml").open("a") as f:
        f.write('implementation = "transformers"\n')
    result = run_cli(["ask", "-n", "2", "--stats", "hi"])
    assert result.exit_code == 0, result.stderr
    assert result.stderr.startswith(READING + "chatcli: Converting tiny.gguf to safetensors")
    assert " implementation=transformers (implementation = " in result.stderr
    refused = run_cli(["ask", "-n", "2", "--quantize", "gguf", "hi"])
    assert (refused.exit_code, refused.stdout) == (2, "")
    assert refused.stderr == (
        "error: --quantize gguf is not available for 'g': it runs on transformers' "
        "implementation; hint: use --quantize none, or run on the CPU with the native "
        "implementation\n")


def test_a_damaged_config_folder_is_read_again_once(g: Path) -> None:
    assert run_cli(["ask", "-n", "2", "hi"]).exit_code == 0
    (g / "tokenizer.json").write_text("{}")
    result = run_cli(["ask", "-n", "2", "hi"])
    assert result.exit_code == 0, result.stderr
    size = (g / "tokenizer.json").stat().st_size
    assert result.stderr == (
        f"chatcli: The converted cache {g} is damaged (tokenizer.json has 2 bytes instead "
        f"of {size}); reading the model's configuration again\n" + READING)


def test_a_truncated_gguf_is_named(g: Path, home: Path, tiny_gguf: Path,
                                   tmp_path: Path) -> None:
    cut = tmp_path / "cut.gguf"
    shutil.copy(tiny_gguf, cut)
    assert run_cli(["pull", "g"]).exit_code == 0
    text = (home / "models.toml").read_text().replace(str(tiny_gguf), str(cut))
    (home / "models.toml").write_text(text)
    assert run_cli(["ask", "-n", "2", "hi"]).exit_code == 0
    data = cut.read_bytes()
    cut.write_bytes(data[:-4000])
    result = run_cli(["ask", "-n", "2", "hi"])
    assert (result.exit_code, result.stdout) == (1, "")
    assert result.stderr.startswith(
        "error: model 'g': cannot read cut.gguf: cut.gguf is truncated: tensor ")
    assert result.stderr.endswith(f"; hint: check that {cut} is a complete GGUF file, or use "
                                  "--quantize none (its dequantized weights)\n")


def test_a_qwen2_gguf_with_biases_reads_as_transformers_reads_it(tmp_path: Path) -> None:
    """qwen2: GGUF's names for its q/k/v biases, rows in their own order (no llama
    reordering); every weight and bias as transformers' GGUF loader gives them."""
    from test_transformers_path import build_model
    from transformers import AutoConfig, AutoModelForCausalLM

    folder = build_model(tmp_path / "qwen2", "qwen2")
    path = write_gguf(folder, tmp_path / "q.gguf",
                      lambda name: "Q8_0" if "attn_v" in name else "Q4_1")
    config = AutoConfig.from_pretrained(tmp_path, gguf_file="q.gguf")
    theirs = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="q.gguf").state_dict()
    stored = gguf_weights.load_model(path, config.to_dict(), torch.float32)
    for i, layer in enumerate(stored.layers):
        p = f"model.layers.{i}"
        qkv = [theirs[f"{p}.self_attn.{n}_proj.weight"] for n in "qkv"]
        bias = [theirs[f"{p}.self_attn.{n}_proj.bias"] for n in "qkv"]
        assert isinstance(layer.qkv, Stacked)  # Q4_1 q/k, Q8_0 v
        assert torch.equal(layer.qkv.dequantized(), torch.cat(qkv))
        assert torch.equal(torch.cat([part.bias for part in layer.qkv.parts]), torch.cat(bias))
        assert torch.equal(layer.down.dequantized(), theirs[f"{p}.mlp.down_proj.weight"])
    assert torch.equal(stored.head.dequantized(), theirs["lm_head.weight"])
    ids = torch.tensor([[5, 17, 42, 99, 7]])
    exact = NativeCausalLM(stored.args, {k: v.float() for k, v in theirs.items()},
                           config.to_dict())
    got, _ = stored.forward(ids, None, logits_to_keep=0)
    want, _ = exact.forward(ids, None, logits_to_keep=0)
    assert torch.allclose(got, want, atol=1e-4 * want.abs().max().item(), rtol=0)


def test_a_tied_dense_embedding_is_the_head_too(tiny_model: Tiny, tmp_path: Path) -> None:
    path = write_gguf(tiny_model.folder, tmp_path / "f16.gguf",
                      lambda name: "F16" if name.startswith("token_embd") else "Q8_0")
    config = json.loads((tiny_model.folder / "config.json").read_text())
    model = gguf_weights.load_model(path, config, torch.float32)
    assert isinstance(model.head, Dense) and model.head.weight is model.embed  # one copy


class _Silent:
    def notify(self, message: str) -> None:
        pass

    def warn(self, message: str) -> None:
        pass

    def busy(self, message: str) -> object:
        from contextlib import nullcontext

        return nullcontext()
