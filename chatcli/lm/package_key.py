"""The key of a compiled decode step package, readable without torch.

Contract: a package `<name>.pt2` has its key beside it, `key_path(path)` =
`<name>.pt2.json` (written by `chatcli.lm.compiled.build`). `FORMAT` is the key's
format; `cpu_identity()` the CPU's model name and flags (from /proc/cpuinfo);
`folder_fingerprint(folder)` a checkpoint folder's identity (its config.json and its
weight files' names, sizes and mtimes); `stale_fields(key, expected)` the fields of a
key that differ from what the running torch, CPU, model and mode expect;
`torch_version()` the running torch's version, read from the installed package's
metadata when torch is not imported (so that `chatcli models list` can say whether a
package is current without importing torch).

`chatcli.lm.compiled` builds and loads packages with these; this module knows nothing
about the graph, loading, or where packages live.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path
from typing import Any

FORMAT = 4  # bump when the step's inputs, outputs or the key's meaning change
# (3: the key records the package's sha256; 4: the package holds no weights)

KEY_FIELDS = ("format", "torch", "cpu", "cpu_flags", "model", "mode")


def key_path(path: Path) -> Path:
    """Where the key of the package `path` lives: `<path>.json`."""
    return path.with_name(path.name + ".json")


def cpu_identity() -> tuple[str, str]:
    """The CPU's model name and its sorted feature flags, from /proc/cpuinfo ("" unknown)."""
    name = flags = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key == "model name" and not name:
                name = value.strip()
            elif key == "flags" and not flags:
                flags = " ".join(sorted(value.split()))
    except OSError:
        pass
    return name, flags


def folder_fingerprint(folder: Path) -> str:
    """A hash of a checkpoint folder's config.json and its weight files' names, sizes and
    mtimes: it changes when the weights are rewritten (no need to read them)."""
    folder = Path(folder)
    digest = hashlib.sha256((folder / "config.json").read_bytes())
    for weights in sorted(folder.glob("*.safetensors")):
        info = weights.stat()
        digest.update(f"{weights.name}:{info.st_size}:{info.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:32]


def stale_fields(key: dict[str, Any], expected: dict[str, Any]) -> list[str]:
    """The names of the fields of `key` that differ from `expected` (empty: valid); the
    model's shape and its weights' layout are compared only when `expected` has them (the
    layout named only when nothing else differs: another model or mode has other weights)."""
    names = (*KEY_FIELDS, *(name for name in ("shape", "weights") if name in expected))
    stale = [name for name in names if key.get(name) != expected.get(name)]
    return stale if stale == ["weights"] else [name for name in stale if name != "weights"]


def torch_version() -> str:
    """The running torch's `__version__` (from its package metadata when not imported)."""
    torch = sys.modules.get("torch")
    if torch is not None:
        return str(torch.__version__)
    from importlib import metadata

    try:
        return metadata.version("torch")
    except metadata.PackageNotFoundError:
        return ""


def expected_fields(model_id: str, mode: str) -> dict[str, Any]:
    """The key fields a package must have for the model `model_id` in `mode` (e.g.
    "bfloat16/int4") here and now (all but the model's shape)."""
    name, flags = cpu_identity()
    return {"format": FORMAT, "torch": torch_version(), "cpu": name, "cpu_flags": flags,
            "model": model_id, "mode": mode}
