"""The AOTInductor-compiled decode step (chatcli.lm.compiled) on the tiny test model, fp32.

The fallbacks that need no package (missing, stale key, corrupt or damaged file, a
directory in its place, a step that fails at run time) run in every suite. Building a
package compiles C++ (about 20-90 s here), so the tests that need one share a
session-wide build and are marked slow (CI runs them)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from chatcli.lm import block_kernels, compiled
from chatcli.lm.compiled import CompiledLanguageModel, CompiledStep
from chatcli.lm.llama import NativeCausalLM
from chatcli.lm.native import NativeLanguageModel
from chatcli.lm.quant import BlockLinear
from conftest import Tiny

PROMPTS = [[1, 5, 9, 22], [7], [300, 12, 45, 99, 101, 250, 3, 17, 88, 64, 2]]


def tiny_lm(tiny: Tiny, dtype: torch.dtype = torch.float32) -> NativeCausalLM:
    return NativeCausalLM.from_folder(tiny.folder, dtype)


def greedy(lm: Any, ids: list[int], n: int) -> tuple[list[int], list[torch.Tensor], Any]:
    """n greedy tokens after `ids`, each step's logits, and the final cache."""
    logits, cache = lm.prefill(ids)
    tokens, seen = [], [logits]
    for _ in range(n):
        token = logits.argmax(-1)
        tokens.append(int(token))
        logits, cache = lm.step(token, cache)
        seen.append(logits)
    return tokens, seen, cache


def fake_package(tmp_path: Path, model: NativeCausalLM, model_id: str,
                 content: bytes = b"not a package", changes: dict[str, Any] | None = None
                 ) -> Path:
    """A package file with a key that matches `model` here (but for `changes`)."""
    path = tmp_path / "step.pt2"
    path.write_bytes(content)
    key = {**compiled.expected_key(model, model_id),
           "inductor": compiled.TEST_OPTIONS, "constants": None, "package_bytes": len(content),
           "package_sha256": hashlib.sha256(content).hexdigest(), **(changes or {})}
    compiled.key_path(path).write_text(json.dumps(key))
    return path


def assert_eager(lm: CompiledLanguageModel, model: NativeCausalLM, reason: str) -> None:
    """`lm` decodes eagerly, says `reason`, and gives the native model's tokens exactly."""
    assert not lm.compiled
    assert lm.reason == reason
    for ids in PROMPTS:
        want, want_logits, _ = greedy(NativeLanguageModel(model), ids, 12)
        got, got_logits, _ = greedy(lm, ids, 12)
        assert got == want
        assert all(torch.equal(a, b) for a, b in zip(got_logits, want_logits, strict=True))


# -- fallbacks without a package (fast) ------------------------------------------------------
def test_missing_package_decodes_eagerly(tiny_model: Tiny, tmp_path: Path) -> None:
    model = tiny_lm(tiny_model)
    path = tmp_path / "none.pt2"
    lm = CompiledLanguageModel.open(model, path, "id")
    assert_eager(lm, model, f"no compiled decode step at {path}")


@pytest.mark.parametrize("field", ["format", "torch", "cpu", "cpu_flags", "model", "mode",
                                   "weights"])
def test_stale_key_decodes_eagerly(tiny_model: Tiny, tmp_path: Path, field: str) -> None:
    model = tiny_lm(tiny_model)
    path = fake_package(tmp_path, model, "id", changes={field: "something else"})
    lm = CompiledLanguageModel.open(model, path, "id")
    assert_eager(lm, model, f"the compiled decode step is stale ({field} changed)")


def test_other_weights_and_dtype_make_a_key_stale(tiny_model: Tiny, tmp_path: Path) -> None:
    model = tiny_lm(tiny_model)
    path = fake_package(tmp_path, model, compiled.folder_fingerprint(tiny_model.folder))
    copy = tmp_path / "copy"
    shutil.copytree(tiny_model.folder, copy)
    (copy / "model.safetensors").write_bytes((copy / "model.safetensors").read_bytes() + b"x")
    other = compiled.folder_fingerprint(copy)
    assert other != compiled.folder_fingerprint(tiny_model.folder)
    assert CompiledLanguageModel.open(model, path, other).reason == (
        "the compiled decode step is stale (model changed)")
    bf16 = tiny_lm(tiny_model, torch.bfloat16)
    assert compiled.mode_of(bf16) == "bfloat16/none"
    assert CompiledLanguageModel.open(
        bf16, path, compiled.folder_fingerprint(tiny_model.folder)).reason == (
        "the compiled decode step is stale (mode changed)")


def test_truncated_package_decodes_eagerly(tiny_model: Tiny, tmp_path: Path) -> None:
    model = tiny_lm(tiny_model)
    path = fake_package(tmp_path, model, "id", content=b"x" * 100)
    path.write_bytes(b"x" * 40)
    lm = CompiledLanguageModel.open(model, path, "id")
    assert_eager(lm, model, f"the compiled decode step {path} is corrupt (40 bytes, built as 100)")


def test_unloadable_package_decodes_eagerly(tiny_model: Tiny, tmp_path: Path) -> None:
    model = tiny_lm(tiny_model)
    path = fake_package(tmp_path, model, "id", content=b"PK\x03\x04 garbage")
    lm = CompiledLanguageModel.open(model, path, "id")
    assert not lm.compiled
    assert lm.reason is not None
    assert lm.reason.startswith(f"the compiled decode step {path} does not load (")
    assert_eager(lm, model, lm.reason)


def test_a_directory_in_its_place_decodes_eagerly(tiny_model: Tiny, tmp_path: Path) -> None:
    model = tiny_lm(tiny_model)
    path = fake_package(tmp_path, model, "id")
    path.unlink()
    path.mkdir()
    lm = CompiledLanguageModel.open(model, path, "id")
    assert_eager(lm, model, f"the compiled decode step {path} is not a file")


def test_other_content_of_the_same_size_decodes_eagerly(tiny_model: Tiny, tmp_path: Path
                                                        ) -> None:
    model = tiny_lm(tiny_model)
    path = fake_package(tmp_path, model, "id", content=b"x" * 100)
    path.write_bytes(b"x" * 50 + b"y" * 50)
    lm = CompiledLanguageModel.open(model, path, "id")
    assert_eager(lm, model, f"the compiled decode step {path} is damaged (its content differs "
                 "from what was built)")
    assert not compiled.unpacked_path(path).exists()


def test_a_key_without_a_digest_decodes_eagerly(tiny_model: Tiny, tmp_path: Path) -> None:
    model = tiny_lm(tiny_model)
    path = fake_package(tmp_path, model, "id")
    key = json.loads(compiled.key_path(path).read_text())
    del key["package_sha256"]
    compiled.key_path(path).write_text(json.dumps(key))
    assert CompiledLanguageModel.open(model, path, "id").reason == (
        f"the compiled decode step's key {compiled.key_path(path)} is unreadable (no digest)")


def test_partial_unpacked_folders_are_removed(tmp_path: Path) -> None:
    """A rebuild removes the unpacked copy and any partial one a killed process left."""
    path = tmp_path / "step.pt2"
    kept = [tmp_path / "other.pt2.unpacked", tmp_path / ".other.pt2.unpacked-x1"]
    gone = [compiled.unpacked_path(path), tmp_path / ".step.pt2.unpacked-x1",
            tmp_path / ".step.pt2.unpacked-x2"]
    for folder in (*kept, *gone):
        (folder / "sub").mkdir(parents=True)
        (folder / "sub" / "file").write_text("x")
    compiled.remove_unpacked(path)
    assert sorted(tmp_path.iterdir()) == sorted(kept)


def test_unreadable_key_decodes_eagerly(tiny_model: Tiny, tmp_path: Path) -> None:
    model = tiny_lm(tiny_model)
    path = fake_package(tmp_path, model, "id")
    compiled.key_path(path).write_text("{not json")
    lm = CompiledLanguageModel.open(model, path, "id")
    assert lm.reason is not None
    assert lm.reason.startswith(f"the compiled decode step's key {compiled.key_path(path)} "
                                "is unreadable (")


def test_a_step_that_fails_falls_back_for_good(tiny_model: Tiny) -> None:
    model = tiny_lm(tiny_model)
    calls = []

    def broken(*args: Any) -> Any:
        calls.append(args)
        raise RuntimeError("kernel exploded\nmore detail")

    lm = CompiledLanguageModel(model, CompiledStep(broken))
    want, want_logits, _ = greedy(NativeLanguageModel(model), PROMPTS[0], 12)
    got, got_logits, cache = greedy(lm, PROMPTS[0], 12)
    assert got == want
    assert all(torch.equal(a, b) for a, b in zip(got_logits, want_logits, strict=True))
    assert len(calls) == 1
    assert not lm.compiled and not cache.static
    assert lm.reason == "the compiled decode step failed (kernel exploded)"


def test_build_refuses_other_suffixes(tiny_model: Tiny, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"ends in \.pt2"):
        compiled.build(tiny_lm(tiny_model), tmp_path / "step.bin", model_id="id")


# -- with a built package (slow) -------------------------------------------------------------
@pytest.fixture(scope="session")
def package(tiny_model: Tiny, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("compiled")
    path = folder / "tiny.pt2"
    key = compiled.build(tiny_lm(tiny_model), path,
                         model_id=compiled.folder_fingerprint(tiny_model.folder),
                         options=compiled.TEST_OPTIONS)
    assert key["package_bytes"] == path.stat().st_size
    assert key["package_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert key["inductor"] == compiled.TEST_OPTIONS
    # the build unpacked it beside it, and left nothing else (its inductor cache removed)
    unpacked = compiled.unpacked_path(path)
    assert sorted(p.name for p in folder.iterdir()) == [
        "tiny.pt2", "tiny.pt2.json", "tiny.pt2.unpacked"]
    assert sorted(p.name for p in unpacked.iterdir()) == [
        key["package_sha256"][:16], "stamp.json"]
    return path


def open_compiled(tiny: Tiny, path: Path) -> tuple[CompiledLanguageModel, NativeCausalLM]:
    model = tiny_lm(tiny)
    lm = CompiledLanguageModel.open(model, path, compiled.folder_fingerprint(tiny.folder))
    assert lm.compiled, lm.reason
    return lm, model


@pytest.fixture
def small_buffers(monkeypatch: pytest.MonkeyPatch) -> int:
    """Fresh caches start with room for 8 positions, so that they grow within a test."""
    monkeypatch.setattr(compiled, "INITIAL_POSITIONS", 8)
    return 8


@pytest.mark.slow
def test_greedy_tokens_equal_eager(tiny_model: Tiny, package: Path, small_buffers: int) -> None:
    """Every step runs the package, whatever the cache's length: it grows 8 -> 128."""
    lm, model = open_compiled(tiny_model, package)
    eager = NativeLanguageModel(model)
    calls = []
    run = lm.step_fn.run  # type: ignore[union-attr]

    def counted(*args: Any) -> Any:
        calls.append(args[2].shape[0])
        return run(*args)

    lm.step_fn.run = counted  # type: ignore[union-attr]
    for ids in PROMPTS:
        calls.clear()
        n = 100
        want, want_logits, _ = greedy(eager, ids, n)
        got, got_logits, cache = greedy(lm, ids, n)
        assert got == want
        assert cache.static and len(cache) == len(ids) + n
        assert cache.keys.shape[0] == 128  # type: ignore[union-attr]
        # the package served every length from the prompt's (a 1-token one: from 2)
        first = max(len(ids), compiled.MIN_LENGTH)
        assert calls == list(range(first, len(ids) + n))
        for a, b in zip(got_logits, want_logits, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_the_package_writes_the_cache_as_eager_does(
    tiny_model: Tiny, package: Path, small_buffers: int
) -> None:
    lm, model = open_compiled(tiny_model, package)
    *_, cache = greedy(lm, PROMPTS[0], 20)
    *_, eager_cache = greedy(NativeLanguageModel(model), PROMPTS[0], 20)
    assert len(cache) == len(eager_cache) == 24
    for layer in range(len(model.layers)):
        for mine, theirs in ((cache.inner.keys, eager_cache.keys),
                             (cache.inner.values, eager_cache.values)):
            torch.testing.assert_close(mine[layer][:, :, :24], theirs[layer][:, :, :24],
                                       rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_a_prompt_longer_than_the_buffers_is_compiled(
    tiny_model: Tiny, package: Path, small_buffers: int
) -> None:
    lm, model = open_compiled(tiny_model, package)
    ids = [(7 * i) % 400 for i in range(70)]
    want, want_logits, _ = greedy(NativeLanguageModel(model), ids, 5)
    got, got_logits, cache = greedy(lm, ids, 5)
    assert got == want and cache.static and lm.compiled
    assert torch.equal(got_logits[0], want_logits[0])  # the prefill is the eager forward
    for a, b in zip(got_logits, want_logits, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_crop_and_prefill_the_rest(tiny_model: Tiny, package: Path, small_buffers: int) -> None:
    """The prompt cache's use: crop to a shared prefix, prefill only the new suffix."""
    lm, model = open_compiled(tiny_model, package)
    *_, cache = greedy(lm, PROMPTS[2], 10)
    assert lm.can_crop(cache, 6) and not lm.can_crop(cache, len(cache) + 1)
    lm.crop(cache, 6)
    suffix = [40, 41, 42]
    logits, cache = lm.prefill(suffix, cache)
    assert cache.static and len(cache) == 9
    want, want_logits, _ = greedy(NativeLanguageModel(model), PROMPTS[2][:6] + suffix, 20)
    torch.testing.assert_close(logits, want_logits[0], rtol=1e-5, atol=1e-5)
    got = []
    for _ in range(20):
        got.append(int(logits.argmax(-1)))
        logits, cache = lm.step(logits.argmax(-1), cache)
    assert got == want
    # a suffix longer than the room left grows the buffers and stays compiled
    lm.crop(cache, 9)
    long_suffix = list(range(100, 180))
    logits, cache = lm.prefill(long_suffix, cache)
    assert cache.static and len(cache) == 89
    want, *_ = greedy(NativeLanguageModel(model), PROMPTS[2][:6] + suffix + long_suffix, 10)
    got = []
    for _ in range(10):
        got.append(int(logits.argmax(-1)))
        logits, cache = lm.step(logits.argmax(-1), cache)
    assert got == want


@pytest.mark.slow
def test_beam_rows_decode_eagerly(tiny_model: Tiny, package: Path) -> None:
    lm, model = open_compiled(tiny_model, package)
    eager = NativeLanguageModel(model)
    (_, cache), (_, want_cache) = lm.prefill(PROMPTS[0]), eager.prefill(PROMPTS[0])
    lm.expand(cache, 3)
    eager.expand(want_cache, 3)
    assert not cache.static
    tokens = torch.tensor([5, 6, 7])
    for _ in range(3):
        got, cache = lm.step(tokens, cache)
        want, want_cache = eager.step(tokens, want_cache)
        assert torch.equal(got, want)
        rows = torch.tensor([2, 0, 0])
        lm.reorder(cache, rows)
        eager.reorder(want_cache, rows)
        tokens = want.argmax(-1)


@pytest.mark.slow
def test_a_real_package_stale_or_cut_short_falls_back(
    tiny_model: Tiny, package: Path, tmp_path: Path
) -> None:
    model = tiny_lm(tiny_model)
    model_id = compiled.folder_fingerprint(tiny_model.folder)
    path = tmp_path / "tiny.pt2"
    shutil.copy(package, path)
    shutil.copy(compiled.key_path(package), compiled.key_path(path))
    assert CompiledLanguageModel.open(model, path, model_id).compiled
    key = json.loads(compiled.key_path(path).read_text())
    compiled.key_path(path).write_text(json.dumps({**key, "torch": "2.0.0"}))
    assert CompiledLanguageModel.open(model, path, model_id).reason == (
        "the compiled decode step is stale (torch changed)")
    half = path.read_bytes()[: key["package_bytes"] // 2]
    path.write_bytes(half)
    compiled.key_path(path).write_text(json.dumps({**key, "package_bytes": len(half)}))
    assert CompiledLanguageModel.open(model, path, model_id).reason == (
        f"the compiled decode step {path} is damaged (its content differs from what was "
        "built)")
    compiled.key_path(path).write_text(json.dumps(
        {**key, "package_bytes": len(half), "package_sha256": hashlib.sha256(half).hexdigest()}))
    lm = CompiledLanguageModel.open(model, path, model_id)
    assert lm.reason == f"the compiled decode step {path} does not load (File is not a zip file)"
    assert_eager(lm, model, lm.reason)
    assert not compiled.unpacked_path(path).exists()


def _copy(package: Path, tmp_path: Path) -> Path:
    """The package and its key, copied (not yet unpacked)."""
    path = tmp_path / "tiny.pt2"
    shutil.copy(package, path)
    shutil.copy(compiled.key_path(package), compiled.key_path(path))
    return path


def _damage(path: Path, size: int) -> None:
    """Overwrite `size` bytes in the middle of `path` with random ones (as `dd` would)."""
    with path.open("r+b") as f:
        f.seek((path.stat().st_size - size) // 2)
        f.write(os.urandom(size))


@pytest.mark.slow
@pytest.mark.parametrize("unpacked_before", [False, True])
def test_a_real_package_damaged_in_the_middle_falls_back(
    tiny_model: Tiny, package: Path, tmp_path: Path, unpacked_before: bool
) -> None:
    """Random bytes in the middle, the size unchanged: noticed at unpacking, which a
    changed mtime repeats."""
    model = tiny_lm(tiny_model)
    model_id = compiled.folder_fingerprint(tiny_model.folder)
    path = _copy(package, tmp_path)
    if unpacked_before:
        assert CompiledLanguageModel.open(model, path, model_id).compiled
        assert compiled.unpacked_path(path).is_dir()
    size = path.stat().st_size
    _damage(path, 64 * 1024)
    assert path.stat().st_size == size
    lm = CompiledLanguageModel.open(model, path, model_id)
    assert_eager(lm, model, f"the compiled decode step {path} is damaged (its content differs "
                 "from what was built)")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.pt2", "tiny.pt2.json"]


@pytest.mark.slow
def test_later_loads_use_the_unpacked_copy_while_it_is_whole(
    tiny_model: Tiny, package: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = tiny_lm(tiny_model)
    model_id = compiled.folder_fingerprint(tiny_model.folder)
    path = _copy(package, tmp_path)
    unpacks: list[Path] = []
    unpack = compiled._unpack

    def counted(path: Path, key: dict[str, Any]) -> Path | str:
        unpacks.append(path)
        return unpack(path, key)

    monkeypatch.setattr(compiled, "_unpack", counted)
    eager = NativeLanguageModel(model)
    want, *_ = greedy(eager, PROMPTS[0], 12)

    def loads() -> int:
        """Open it (compiled, eager's tokens); how many times it was unpacked."""
        unpacks.clear()
        lm = CompiledLanguageModel.open(model, path, model_id)
        assert lm.compiled, lm.reason
        assert greedy(lm, PROMPTS[0], 12)[0] == want
        return len(unpacks)

    assert loads() == 1
    assert loads() == 0  # the stamp matches: loaded as it is
    stamp = json.loads((compiled.unpacked_path(path) / "stamp.json").read_text())
    (so,) = (name for name in stamp["files"] if name.endswith(".so"))
    shared = compiled.unpacked_path(path) / so
    # damaged, the same size: a new file (this process has the old one loaded)
    damaged = tmp_path / "damaged.so"
    damaged.write_bytes(b"\0" * shared.stat().st_size)
    os.replace(damaged, shared)
    assert loads() == 1  # unpacked again from the package
    assert loads() == 0
    shutil.rmtree(compiled.unpacked_path(path))
    assert loads() == 1
    os.utime(path)  # the package's mtime changed: unpacked again (and its digest checked)
    assert loads() == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "tiny.pt2", "tiny.pt2.json", "tiny.pt2.unpacked"]


# -- a quantized model's package: no weights of its own --------------------------------------
def assert_eager_tokens(lm: CompiledLanguageModel, model: NativeCausalLM) -> None:
    """20 greedy tokens after each prompt: the package's are the eager model's, with
    logits within 1e-4."""
    eager = NativeLanguageModel(model)
    for ids in PROMPTS:
        want, want_logits, _ = greedy(eager, ids, 20)
        got, got_logits, _ = greedy(lm, ids, 20)
        assert got == want
        for a, b in zip(got_logits, want_logits, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_large_constants_a_kernel_makes_travel_in_the_package(
    tiny_model: Tiny, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A constant inductor makes that is too large for the key (an autotuned kernel's
    prepacked weights, 28 MB for the default model's int8 head; here every one, the int4
    kernel's group sizes, by lowering the limit) goes into the package's CONSTANTS file;
    the model's own tensors do not, and the step gives the eager model's tokens."""
    monkeypatch.setattr(compiled, "_SMALL", 0)
    model = tiny_lm(tiny_model)
    model.quantize("int4")
    path = tmp_path / "int4.pt2"
    key = compiled.build(model, path, model_id="id", options=compiled.TEST_OPTIONS)
    assert key["constants"] and all(
        c == {"dtype": "int64", "shape": [], "values": compiled.STORED}
        for c in key["constants"].values())
    folder = compiled._unpacked(path, key)
    assert folder is not None and (folder / compiled.CONSTANTS).is_file()
    lm = CompiledLanguageModel.open(model, path, "id")
    assert lm.compiled, lm.reason
    assert_eager_tokens(lm, model)
    # the weights are the model's: a scale zeroed in place zeroes the logits
    _, _, cache = greedy(lm, PROMPTS[0], 2)
    model.head.scales.zero_()
    logits, cache = lm.step(torch.tensor([3]), cache)
    assert lm.compiled and cache.static
    assert torch.equal(logits, torch.zeros_like(logits))
    # a key that says otherwise of a stored constant: the package is not used
    name = next(iter(key["constants"]))
    key["constants"][name]["shape"] = [2]
    compiled.key_path(path).write_text(json.dumps(key))
    lm = CompiledLanguageModel.open(model, path, "id")
    assert not lm.compiled
    assert lm.reason == (f"the compiled decode step {path} does not load "
                         f"({compiled.CONSTANTS} holds another {name})")


@pytest.mark.slow
def test_a_block_kernel_head_runs_inside_the_package(tiny_model: Tiny, tmp_path: Path) -> None:
    """A GGUF's Q8_0 head as stored (chatcli's block kernel, a custom op): the package
    calls the op with the model's own blocks, and gives the eager model's tokens."""
    import gguf

    if block_kernels.unavailable() is not None:
        pytest.skip(block_kernels.unavailable())

    model = tiny_lm(tiny_model)
    model.quantize("int4")
    weight = model.head.dequantized().float().numpy()
    blocks = gguf.quants.quantize(weight, gguf.GGMLQuantizationType.Q8_0)
    model.head = BlockLinear(torch.from_numpy(blocks), "Q8_0", weight.shape[1])
    path = tmp_path / "blocks.pt2"
    compiled.build(model, path, model_id="id", options=compiled.TEST_OPTIONS)
    lm = CompiledLanguageModel.open(model, path, "id")
    assert lm.compiled, lm.reason
    assert_eager_tokens(lm, model)
    _, _, cache = greedy(lm, PROMPTS[0], 2)
    model.head.blocks.zero_()  # the model's own blocks: zero scales, zero logits
    logits, cache = lm.step(torch.tensor([3]), cache)
    assert lm.compiled and cache.static
    assert torch.equal(logits, torch.zeros_like(logits))
