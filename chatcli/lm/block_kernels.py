"""GGUF's 5- to 8-bit block formats multiplied as stored: chatcli's own CPU kernel.

Contract: `FORMATS` are the GGUF types the kernel runs (Q8_0, Q5_0, Q5_1, Q5_K, Q6_K).
`library()` builds `block_mm.c` (once per source, compiler and CPU, into the folder the
caller names with `use_folder` -- chatcli's cache ``kernels/`` -- or
``$CHATCLI_KERNELS_DIR``, under a second; the builds of other versions there are
removed) and loads it, once per process. It returns None when it
cannot, and `unavailable()` then says why in one short sentence: switched off
(``CHATCLI_BLOCK_KERNELS=0``), no C compiler, a CPU without AVX-512, or a build that
failed (its output is kept in ``build.log`` in that folder, never printed).
`unavailable(build=False)` answers without building, from what is known already (for
`models show`).

`register()` (once; it imports torch, so that `models show` can ask `unavailable`
without it) defines the op ``torch.ops.chatcli.block_mm(x, blocks, fmt, out_features)``:
``x @ W.T`` where `blocks` (out_features, row bytes) uint8 holds W's rows as the GGUF
file stores them, in format ``FORMATS[fmt]``. It is a torch custom op with a shape
function, so export and AOTInductor's compiled step call it like any other op. The
activations are read in float32 (bfloat16 converts exactly) -- except Q5_K's and Q6_K's
in a decode step (fewer than 4 rows) on a CPU with AVX512-BF16, read in bfloat16 by
dot-product instructions -- and the result is returned in `x`'s dtype; either way the weights
multiplied are gguf's float32 dequantization bit for bit (the two paths differ only in
how the float32 sums are ordered).

The build writes nothing outside the kernels folder (the compiler's temporary files
included) and shows nothing on the terminal. Knows nothing about models, GGUF headers
or where chatcli's cache is.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

from chatcli.lm.gguf_file import BLOCK_FORMATS
from chatcli.lm.package_key import cpu_identity

FORMATS: tuple[str, ...] = BLOCK_FORMATS
_SOURCE = Path(__file__).with_name("block_mm.c")
_FLAGS = ("-O3", "-march=native", "-fopenmp", "-shared", "-fPIC", "-pipe", "-Wl,-z,defs")
_ENV = "CHATCLI_BLOCK_KERNELS"

_why_not: str | None = None  # the reason of a build that failed in this process


def _switched_off() -> bool:
    return os.environ.get(_ENV, "1").strip().lower() in ("0", "false", "no", "off")


def _compiler() -> str | None:
    named = os.environ.get("CC")
    if named:
        return shutil.which(named)
    return shutil.which("cc") or shutil.which("gcc")


@cache
def _cpu_flags() -> str:
    return cpu_identity()[1]


def _has_avx512() -> bool:
    return platform.machine().lower() in ("x86_64", "amd64") and "avx512f" in _cpu_flags().split()


_named_folder: list[Path] = []


def use_folder(folder: Path) -> None:
    """Build into (and load from) `folder`; ``$CHATCLI_KERNELS_DIR`` overrides it."""
    _named_folder[:] = [folder]


def _folder() -> Path | None:
    named = os.environ.get("CHATCLI_KERNELS_DIR")
    if named:
        return Path(named)
    return _named_folder[0] if _named_folder else None


_NO_FOLDER = "chatcli's block kernels have no folder to be built in"


@cache
def _digest(compiler: str) -> str:
    digest = hashlib.sha256()
    for part in (_SOURCE.read_bytes(), compiler.encode(), " ".join(_FLAGS).encode(),
                 _cpu_flags().encode(), platform.machine().encode()):
        digest.update(part)
        digest.update(b"\0")
    return digest.hexdigest()[:16]


def _target(compiler: str, folder: Path) -> Path:
    return folder / f"block_mm-{_digest(compiler)}.so"


def unavailable(build: bool = True) -> str | None:
    """None if the kernel runs here (built now if need be and `build`), else why not."""
    if _switched_off():
        return f"chatcli's block kernels are switched off ({_ENV}=0)"
    if _library:  # built and loaded already: nothing to look up again
        return None
    if not _has_avx512():
        return "chatcli's block kernels need a CPU with AVX-512"
    compiler = _compiler()
    if compiler is None:
        return "chatcli's block kernels need a C compiler (cc)"
    if _why_not is not None:
        return _why_not
    if not build:
        return None
    if _folder() is None:
        return _NO_FOLDER
    return None if library() is not None else _why_not


_library: list[ctypes.CDLL] = []  # loaded once per process


def library() -> ctypes.CDLL | None:
    """The loaded kernel library, built first if it is not in the cache; None if it
    cannot be (see `unavailable`)."""
    global _why_not
    if _switched_off() or not _has_avx512() or _why_not is not None:
        return None
    if _library:
        return _library[0]
    compiler, folder = _compiler(), _folder()
    if compiler is None or folder is None:
        return None
    target = _target(compiler, folder)
    if not target.exists():
        reason = _build(compiler, target)
        if reason is not None:
            _why_not = reason
            return None
    try:
        _library.append(ctypes.CDLL(str(target)))
    except OSError as e:
        _why_not = f"chatcli's block kernels did not load ({e})"
        return None
    return _library[0]


def _build(compiler: str, target: Path) -> str | None:
    """Compile into `target` (written under another name, then renamed: a reader never
    sees half a file); None on success, else why not."""
    folder = target.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        return f"chatcli's block kernels cannot be built ({folder}: {e.strerror})"
    partial = folder / f".{target.name}.{os.getpid()}.partial"
    scratch = folder / f".tmp-{os.getpid()}"  # the compiler's temporary files
    env = {**os.environ, "TMPDIR": str(scratch)}
    try:
        scratch.mkdir(exist_ok=True)
        done = subprocess.run([compiler, *_FLAGS, str(_SOURCE), "-o", str(partial)],
                              stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              env=env, timeout=300)
        if done.returncode != 0:
            (folder / "build.log").write_text(done.stdout + done.stderr)
            return ("chatcli's block kernels did not build "
                    f"(see {folder / 'build.log'})")
        os.replace(partial, target)
        for old in folder.glob("block_mm-*.so"):  # other versions' builds
            if old != target:
                old.unlink(missing_ok=True)
        return None
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"chatcli's block kernels did not build ({e})"
    finally:
        partial.unlink(missing_ok=True)
        shutil.rmtree(scratch, ignore_errors=True)


_BF16_FORMATS = ("Q5_K", "Q6_K")  # with a bfloat16 decode path (AVX512-BF16)
_BF16_ROWS = 4  # activation rows below which they take it (a decode step)


@cache
def _functions(lib: ctypes.CDLL) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
    """The library's product function per format (index: `FORMATS`), and its bfloat16
    decode function where it has one and the CPU has AVX512-BF16 (else None), typed
    once."""

    def typed(name: str) -> Any:
        fn = getattr(lib, name)
        fn.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p,
                       ctypes.c_int64, ctypes.c_void_p]
        fn.restype = None
        return fn

    bf16 = bool(lib.chatcli_has_bf16())
    return (tuple(typed(f"chatcli_{f.lower()}_mm") for f in FORMATS),
            tuple(typed(f"chatcli_{f.lower()}_mm_bf16") if bf16 and f in _BF16_FORMATS
                  else None for f in FORMATS))


_loaded: list[tuple[Any, ...]] = []  # the functions, once loaded (the op's fast path)


_LIBRARY: list[Any] = []  # the op's torch.library.Library, kept alive


@cache
def register() -> None:
    """Define ``torch.ops.chatcli.block_mm`` (once per process). Through torch.library's
    low-level `Library` (a plain CPU kernel and a shape function): `custom_op`'s wrapper
    imports torch._dynamo at the first call, 70 MB and a noticeable pause."""
    import torch

    def block_mm(x: torch.Tensor, blocks: torch.Tensor, fmt: int,
                 out_features: int) -> torch.Tensor:
        if not _loaded:
            lib = library()
            if lib is None:
                raise RuntimeError(unavailable() or "chatcli's block kernels are not loaded")
            _loaded.append(_functions(lib))
        k = x.shape[-1]
        flat = x.reshape(-1, k)
        fn, bf16 = _loaded[0][0][fmt], _loaded[0][1][fmt]
        if bf16 is not None and flat.dtype == torch.bfloat16 and flat.shape[0] < _BF16_ROWS:
            fn = bf16  # reads the bfloat16 activations as they are
            flat = flat.contiguous()
        elif flat.dtype != torch.float32 or not flat.is_contiguous():
            flat = flat.to(torch.float32).contiguous()
        weights = blocks.contiguous()
        out = torch.empty((flat.shape[0], out_features), dtype=torch.float32)
        if flat.shape[0]:
            fn(flat.data_ptr(), flat.shape[0], k, weights.data_ptr(), out_features,
               out.data_ptr())
        out = out.view(*x.shape[:-1], out_features)
        return out if x.dtype == torch.float32 else out.to(x.dtype)

    def shape(x: torch.Tensor, blocks: torch.Tensor, fmt: int,
              out_features: int) -> torch.Tensor:
        return x.new_empty((*x.shape[:-1], out_features))

    lib = torch.library.Library("chatcli", "DEF")
    lib.define("block_mm(Tensor x, Tensor blocks, int fmt, int out_features) -> Tensor")
    lib.impl("block_mm", block_mm, "CPU")
    torch.library.register_fake("chatcli::block_mm", shape, lib=lib)
    _LIBRARY.append(lib)
