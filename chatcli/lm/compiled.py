"""An ahead-of-time compiled single-row decode step (AOTInductor), with eager fallbacks.

Contract:
- `build(model, path, model_id=..., options=...)` exports one decode step of a
  `NativeCausalLM` with `torch.export` and compiles it with AOTInductor
  (`torch._inductor.aoti_compile_and_package`) into the package file `path`, and writes
  its key, `<path>.json`, beside it: format, torch version, CPU model and flags (from
  /proc/cpuinfo), `model_id` (the caller's identity of the weights; `folder_fingerprint`
  hashes a checkpoint folder's config.json and its weight files' names, sizes and
  mtimes), mode (dtype and quantization, `mode_of`), the model's shapes, the inductor
  options and the package's size and sha256 (the key's fields and their checks, which
  need no torch, are `chatcli.lm.package_key`'s). Autotuning (max-autotune) happens once, at
  build time: its choices are compiled into the package and never revisited at load.
  Inductor's own cache lives in a folder beside the package for the build and is removed
  after it: a build leaves nothing in the temp folder. It then unpacks the package (below)
  and returns the key. Building takes a minute for the test model, minutes for a real one.
- A quantized model's package holds no weights: it is built without them
  (`package_constants_in_so` off) and, loaded, computes with the model's own tensors,
  handed over as AOTInductor's user-managed constants (no copy: the compiled step adds
  code, not the weights again, to the process). The few constants inductor makes itself
  (the int4 kernel's group size, a 0-d tensor per matmul; a weight freezing renamed) are
  recorded while building and kept in the key (`constants`); the large ones its kernels
  make (a weight an autotuned kernel prepacks) go into the package, in a file of their
  own (`CONSTANTS`). The key also keeps a digest of the weights' names, dtypes, shapes
  and strides (`weights`): a model whose tensors no longer match is stale. A dense
  model's package (inductor prepacks its weights into opaque constants of its own), or
  one needing a constant chatcli cannot give, holds all its weights (`constants` null).
- Unpacking: the package's files (its code, a few MB) are extracted
  once into `<path>.unpacked` beside it (into a partial sibling folder, then renamed; a
  rebuild removes the old one), after checking the package's sha256 against the key's.
  Its stamp.json records the digest and the package's and every file's size and mtime;
  a load whose stamp still matches loads the unpacked files as they are (torch's loader
  over a folder: no extraction, nothing in the temp folder, a few milliseconds); any
  mismatch unpacks again (and checks the digest again).
- The step's graph takes the token id (1, 1), its position (1,) and the cached keys and
  values, each one tensor (positions, layers, kv_heads, head_dim) whose first dimension
  is dynamic (one package serves every cache length from `MIN_LENGTH`; attention reads
  exactly the cached positions, no mask, except that a sliding-window layer masks those
  before its window), *read only*; it returns the logits (1, vocab)
  and the token's new key and value, (layers, kv_heads, head_dim) each, which the
  caller writes at the position, outside the graph (a graph that wrote into the cache
  gave wrong tokens or ran slowly, issue 13).
- `CompiledLanguageModel.open(model, path, model_id)` implements
  `chatcli.lm.base.LanguageModel`. It never raises for a bad package: a missing,
  stale (key fields differ from the running torch, CPU, model or mode), corrupt
  (truncated, unreadable), damaged (another digest) package, a directory in its place,
  or one whose first call fails, leaves it decoding eagerly, with `compiled` False and
  `reason` a one-line sentence the caller can print.
  The cache is position-major buffers (room for `INITIAL_POSITIONS`, or the prompt's
  next power of two, doubling when full), so that its first n positions are one
  contiguous tensor; prefill is the native model's eager forward writing into per-layer
  views of them; each single-row step from position `MIN_LENGTH` on runs the package.
- Fallbacks to the eager native model, per cache and transparent to the caller (its
  tokens are the eager model's from then on): beam search (`expand` to several rows
  moves the cache into an eager `KVCache`: the package is built for one row).
  `crop`/`can_crop` roll back any cache exactly. The context window is the loader's
  limit, not this module's.
- Logits are not bit-identical to the eager model's (inductor fuses and reorders ops);
  in float32 greedy tokens agree in the tests.

Deliberately knows nothing about where packages live, when they are built, CLI labels,
tokenization, decoding strategies or checkpoints beyond `folder_fingerprint`. torch is
imported at module level only through `chatcli.lm.llama` (lm/ is never imported by
the CLI at start); inductor is imported only inside `build` (loading needs only torch's
`torch._C._aoti`).
"""

from __future__ import annotations

import errno
import hashlib
import importlib
import json
import os
import shutil
import tempfile
import warnings
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import torch

from chatcli.errors import ChatcliError
from chatcli.lm.graphs import StaticKVCache
from chatcli.lm.llama import KVCache, NativeCausalLM
from chatcli.lm.package_key import (  # noqa: F401  (part of this module's interface)
    FORMAT,
    cpu_identity,
    folder_fingerprint,
    key_path,
    stale_fields,
)

TEST_OPTIONS: dict[str, Any] = {"freezing": True}
"""Inductor options without autotuning: quick to build (tests)."""
AUTOTUNE_OPTIONS: dict[str, Any] = {
    "freezing": True,  # weights become constants: inductor may prepack them (oneDNN, AMX)
    "max_autotune": True,
    "max_autotune_gemm_backends": "CPP,ATEN",
}
"""Inductor options of a release build: GEMM templates autotuned once, at build time."""

class CompiledStepError(ChatcliError):
    """A compiled decode step that cannot be built; `disk_full` when the folder it was
    built in ran out of space (the caller names the disk)."""

    disk_full = False


# -- the key ---------------------------------------------------------------------------------
def mode_of(model: NativeCausalLM) -> str:
    """The model's dtype and quantization, e.g. "bfloat16/int4" or "float32/none"."""
    return f"{str(model.dtype).removeprefix('torch.')}/{model.quantization}"


def _shape(model: NativeCausalLM) -> dict[str, int]:
    return {"layers": len(model.layers), "kv_heads": model.kv_heads,
            "head_dim": model.head_dim, "vocab": model.vocab_size}


def expected_key(model: NativeCausalLM, model_id: str,
                 weights: dict[str, torch.Tensor] | None = None) -> dict[str, Any]:
    """The key fields a package must have to serve `model` here and now (`weights`: the
    model's `_weights`, when the caller has them already)."""
    name, flags = cpu_identity()
    return {"format": FORMAT, "torch": torch.__version__, "cpu": name, "cpu_flags": flags,
            "model": model_id, "mode": mode_of(model), "shape": _shape(model),
            "weights": weights_digest(_weights(model) if weights is None else weights)}


def _weights(model: NativeCausalLM) -> dict[str, torch.Tensor]:
    """The tensors the step computes with, by the names the package knows them by. The
    fast ops fill small tables lazily (`_fast_norm`'s doubled weights): a forward pass
    fills them first, so that tracing finds real tensors and never stores traced ones."""
    with torch.inference_mode():
        model.forward(torch.zeros((1, 1), dtype=torch.long, device=model.device), None)
    return dict(_Step(model).named_buffers())


# -- the graph -------------------------------------------------------------------------------
class _ReadOnlyCache:
    """The cache as the compiled step sees it: `append` keeps the new key/value of the
    layer and hands back the layer's cached positions; `attend` then adds the new one."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        self.keys, self.values = keys, values  # (positions, layers, kv_heads, head_dim)
        self.new_keys: list[torch.Tensor] = []
        self.new_values: list[torch.Tensor] = []

    def append(
        self, layer: int, key: torch.Tensor, value: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        self.new_keys.append(key)
        self.new_values.append(value)
        return self.keys[:, layer], self.values[:, layer]


class _Step(torch.nn.Module):
    """forward(ids (1, 1), pos (1,), keys, values) -> logits (1, vocab), new keys, new values.

    keys/values: (positions, layers, kv_heads, head_dim), the cached positions before the
    token's, their number a dynamic dimension (the package serves every cache length)."""

    def __init__(self, model: NativeCausalLM) -> None:
        super().__init__()
        self.model = model
        # The model's tensors become this module's buffers (each once: tied weights share
        # one), so that export lifts them as weights inductor can freeze and prepack.
        self._slots = list(_tensor_slots(model))
        self._names: dict[int, str] = {}
        for obj, attr in self._slots:
            tensor = getattr(obj, attr)
            if id(tensor) not in self._names:
                self._names[id(tensor)] = name = f"w{len(self._names)}"
                self.register_buffer(name, tensor)
        for doubled in model._norm_weights.values():
            if id(doubled) not in self._names:
                self._names[id(doubled)] = name = f"w{len(self._names)}"
                self.register_buffer(name, doubled)

    def forward(
        self, ids: torch.Tensor, pos: torch.Tensor, keys: torch.Tensor, values: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        model = self.model
        saved = [(obj, attr, getattr(obj, attr)) for obj, attr in self._slots]
        norms = model._norm_weights
        try:  # the model computes with this module's buffers (traced), then gets its own back
            for obj, attr, tensor in saved:
                setattr(obj, attr, getattr(self, self._names[id(tensor)]))
            swapped = {id(t): getattr(self, self._names[id(t)]) for _, _, t in saved}
            model._norm_weights = {
                id(swapped[key]): getattr(self, self._names[id(doubled)])
                for key, doubled in norms.items() if key in swapped}
            return self._step(ids, pos, keys, values)
        finally:
            for obj, attr, tensor in saved:
                setattr(obj, attr, tensor)
            model._norm_weights = norms

    def _step(
        self, ids: torch.Tensor, pos: torch.Tensor, keys: torch.Tensor, values: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        model = self.model
        hd, kv = model.head_dim, model.kv_heads
        rope = tuple((cos.view(1, 1, 1, hd), sin.view(1, 1, 1, hd))
                     for cos, sin in model.rope(pos))
        cache = _ReadOnlyCache(keys, values)

        def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                   window: int | None) -> torch.Tensor:
            new_k, new_v = cache.new_keys[-1], cache.new_values[-1]  # (1, kv, 1, hd)
            # Products and sums, not matmuls: inductor fuses them into one reduction each,
            # and its bf16 AMX batched-GEMM template, which max-autotune picked for
            # q @ K^T on a busy machine, returned NaN logits (SmolLM2, torch 2.13).
            grouped = q.reshape(1, kv, -1, 1, hd)  # the query heads sharing a K/V head
            k = k.permute(1, 0, 2)[None, :, None]  # (1, kv, 1, positions, hd)
            v = v.permute(1, 0, 2)[None, :, None]
            old = (grouped * k).sum(-1) * model.scale  # (1, kv, n_rep, positions)
            if window is not None:  # a sliding layer: the positions before its window
                cached = torch.arange(old.shape[-1], device=old.device)
                old = old.masked_fill(cached <= pos - window, float("-inf"))
            own = (grouped[..., 0, :] * new_k).sum(-1, keepdim=True) * model.scale
            probs = torch.softmax(torch.cat((old, own), dim=-1).float(), dim=-1).to(q.dtype)
            out = (probs[..., :-1, None] * v).sum(-2) + probs[..., -1:] * new_v
            return out.reshape(1, 1, -1)

        h = model.hidden(ids, cache, rope, attend)
        logits = model.logits(h, 1).view(1, -1)
        # (layers, kv, hd) each: the row the caller writes at position `pos`
        return (logits, torch.stack(cache.new_keys).view(-1, kv, hd),
                torch.stack(cache.new_values).view(-1, kv, hd))


def _tensor_slots(model: NativeCausalLM) -> list[tuple[Any, str]]:
    """(object, attribute) of every tensor the forward pass reads: the model's own, its
    layers' and their linears' (dense or quantized)."""
    holders: list[Any] = [model, model.head]
    if not isinstance(model.embed, torch.Tensor):  # a lookup left quantized (a GGUF's)
        holders.append(model.embed)
    for layer in model.layers:
        holders.append(layer)
        holders.extend(value for value in vars(layer).values()
                       if value is not None and hasattr(value, "__dict__")
                       and not isinstance(value, torch.Tensor))
    holders.extend(part for holder in list(holders)  # a `Stacked` linear's parts
                   for part in getattr(holder, "parts", None) or ())
    return [(obj, attr) for obj in holders for attr, value in vars(obj).items()
            if isinstance(value, torch.Tensor)]


def _buffers(model: NativeCausalLM, positions: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Empty key and value buffers (positions, layers, kv_heads, head_dim): position-major,
    so that the first n positions are one contiguous tensor (what the step reads)."""
    shape = (positions, len(model.layers), model.kv_heads, model.head_dim)
    with torch.inference_mode():
        return tuple(torch.empty(shape, dtype=model.cache_dtype, device=model.device)
                     for _ in range(2))  # type: ignore[return-value]


def _layer_views(buffer: torch.Tensor) -> list[torch.Tensor]:
    """Per layer, the (1, kv_heads, positions, head_dim) view the eager forward writes."""
    return [buffer[:, i].permute(1, 0, 2).unsqueeze(0) for i in range(buffer.shape[1])]


_EXAMPLE_LENGTH = 16
MIN_LENGTH = 2
"""The step serves caches of at least this many positions (export specializes 0 and 1)."""


def _example(model: NativeCausalLM) -> tuple[torch.Tensor, ...]:
    shape = (_EXAMPLE_LENGTH, len(model.layers), model.kv_heads, model.head_dim)
    keys, values = (torch.zeros(shape, dtype=model.cache_dtype, device=model.device)
                    for _ in range(2))
    ids = torch.zeros((1, 1), dtype=torch.long, device=model.device)
    pos = torch.full((1,), _EXAMPLE_LENGTH, dtype=torch.long, device=model.device)
    return ids, pos, keys, values


_PACKAGING: dict[str, Any] = {
    # no weights in the package (a quantized model's: `build`): a loaded step computes
    # with the model's own tensors
    "aot_inductor.package_constants_in_so": False,
    # Precompiled headers go to a folder in the temp folder whatever inductor's cache
    # folder is (about 280 MB, fixed when inductor is imported): none are made.
    "aot_inductor.precompile_headers": False,
    "cpp_cache_precompile_headers": False,
    # autotuning's tables of timings go to stderr otherwise, on the user's terminal
    "max_autotune_report_choices_stats": False,
}
"""Inductor options of every build, beyond `options` (not part of the key)."""


def build(
    model: NativeCausalLM, path: Path, *, model_id: str, options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Compile `model`'s decode step into `path` (and its key beside it); `options`:
    inductor's (default `AUTOTUNE_OPTIONS`). Returns the key.
    Raises `CompiledStepError` if export or compilation fails, or `path` is a directory."""
    options = dict(AUTOTUNE_OPTIONS if options is None else options)
    path = Path(path)
    if path.suffix != ".pt2":
        raise ValueError(f"a package path ends in .pt2 (got {path})")
    if path.is_dir():
        raise CompiledStepError(f"could not compile the decode step: {path} is a directory",
                                "remove it, then compile again")
    path.parent.mkdir(parents=True, exist_ok=True)
    weights = _weights(model)
    step = _Step(model)
    length = torch.export.Dim("positions", min=MIN_LENGTH, max=1 << 24)
    work = Path(tempfile.mkdtemp(prefix=f".{path.name}.build-", dir=path.parent))
    try:
        with torch.no_grad(), _private_inductor_cache(work / "inductor"), _quiet():
            # importing inductor makes its cache folder: the private one
            inductor = importlib.import_module("torch._inductor")
            _no_autotune_tables()
            exported = torch.export.export(
                step, _example(model), strict=False,
                dynamic_shapes=(None, None, {0: length}, {0: length}))
            partial = work / path.name
            constants: dict[str, Any] | None = None
            if model.quantization != "none":  # a dense model's weights get prepacked
                with _recorded_constants(weights) as made:
                    inductor.aoti_compile_and_package(
                        exported, package_path=str(partial),
                        inductor_configs={**options, **_PACKAGING})
                with suppress(ValueError):  # one chatcli cannot give: weights inside
                    constants, stored = _own_constants(partial, work / "check", made)
                    if stored:
                        _add_constants(partial, stored, work / "stored")
                del made
            if constants is None:
                partial.unlink(missing_ok=True)
                inductor.aoti_compile_and_package(
                    exported, package_path=str(partial),
                    inductor_configs={**options, **_PACKAGING,
                                      "aot_inductor.package_constants_in_so": True})
        os.replace(partial, path)
    except Exception as exc:  # export and inductor raise many kinds; all mean "no package"
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        error = CompiledStepError(f"could not compile the decode step: {first}",
                                  "decode eagerly (the native model)")
        error.disk_full = _out_of_space(exc, path.parent)
        raise error from exc
    finally:
        shutil.rmtree(work, ignore_errors=True)
    remove_unpacked(path)
    key = {**expected_key(model, model_id, weights),
           "inductor": {k: options[k] for k in sorted(options)}, "constants": constants,
           "package_bytes": path.stat().st_size, "package_sha256": _sha256(path)}
    _write_atomically(key_path(path), json.dumps(key, indent=2) + "\n")
    with suppress(OSError):  # the first load is as quick as the later ones (or unpacks)
        _unpack(path, key)
    return key


_SMALL = 4096
"""The most elements a constant inductor makes itself may have (it is kept in the key)."""


def _layout(t: torch.Tensor) -> tuple[Any, ...] | None:
    """Where and how a tensor lies (None for one without plain storage: a prepacked one)."""
    try:
        return (t.device, t.data_ptr(), t.dtype, tuple(t.shape), t.stride())
    except (RuntimeError, NotImplementedError):
        return None


@contextmanager
def _recorded_constants(weights: dict[str, torch.Tensor]
                        ) -> Iterator[dict[str, list[torch.Tensor | str | None]]]:
    """The constants inductor adds to its graphs while compiling, by name: the name of the
    model's weight it is (freezing renames them), else its value (a small one copied),
    None for one without plain storage; the model's weights under their own names left
    out."""
    graph = importlib.import_module("torch._inductor.graph").GraphLowering
    allocate = graph.allocate_non_dup_const_name
    made: dict[str, list[torch.Tensor | str | None]] = {}
    known = {_layout(t): name for name, t in weights.items()}

    def recording(self: Any, name: str | None, data: torch.Tensor) -> str:
        new = allocate(self, name, data)
        if new not in weights:
            layout = _layout(data)
            alias = known.get(layout) if layout is not None else None
            value = alias or (None if layout is None else  # large ones: kept, not copied
                              data.detach().clone() if data.numel() <= _SMALL else data)
            made.setdefault(new, []).append(value)
        return new

    graph.allocate_non_dup_const_name = recording
    try:
        yield made
    finally:
        graph.allocate_non_dup_const_name = allocate


def _own_constants(package: Path, work: Path, made: dict[str, list[torch.Tensor | str | None]]
                   ) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The constants the package needs beyond the model's weights under their own names,
    as the key keeps them: the weight's name for a renamed one, a small one's value, or
    `STORED` for a large one its kernels made (a weight prepacked), which the package
    carries itself (returned too: the package's `CONSTANTS` file). Raises ValueError if
    one was not recorded, has no plain storage, or was recorded differently."""
    with zipfile.ZipFile(package) as archive:
        archive.extractall(work)
    root = next(p for p in work.iterdir() if p.is_dir())
    names = torch._C._aoti.AOTIModelPackageLoader(
        str(root), "model", False, 1, -1).get_constant_fqns()
    own: dict[str, Any] = {}
    stored: dict[str, torch.Tensor] = {}
    for name in names:
        if not name.startswith("w") or not name[1:].isdigit():
            values = made.get(name, [None])
            first = values[0]
            if isinstance(first, str) and all(v == first for v in values):
                own[name] = first
                continue
            if not isinstance(first, torch.Tensor) or not first.is_contiguous() or any(
                    not isinstance(v, torch.Tensor) or not torch.equal(v, first)
                    for v in values):
                raise ValueError(f"the package needs a constant chatcli cannot give it ({name})")
            described = {"dtype": str(first.dtype).removeprefix("torch."),
                         "shape": list(first.shape)}
            if first.numel() <= _SMALL:
                own[name] = {**described, "values": first.flatten().tolist()}
            else:
                own[name] = {**described, "values": STORED}
                stored[name] = first
    return own, stored


STORED = "stored"
"""A constant's `values` in the key when the package carries it in its `CONSTANTS` file."""
CONSTANTS = "chatcli-constants.safetensors"
"""The file, at the package's root, of the large constants its kernels made."""


def _add_constants(package: Path, stored: dict[str, torch.Tensor], work: Path) -> None:
    """Put `stored` into the package, as its `CONSTANTS` file at the archive's root."""
    from safetensors.torch import save_file

    work.mkdir(parents=True, exist_ok=True)
    save_file({name: t.contiguous() for name, t in stored.items()}, str(work / CONSTANTS))
    with zipfile.ZipFile(package, "a") as archive:
        root = PurePosixPath(archive.namelist()[0]).parts[0]
        archive.write(work / CONSTANTS, f"{root}/{CONSTANTS}")


def weights_digest(weights: dict[str, torch.Tensor]) -> str:
    """A digest of the step's weights' names, dtypes, shapes and strides (what a package
    built without them assumes of the tensors it is handed)."""
    digest = hashlib.sha256()
    for name in sorted(weights):
        t = weights[name]
        digest.update(f"{name}:{t.dtype}:{tuple(t.shape)}:{t.stride()}\n".encode())
    return digest.hexdigest()[:32]


def _constants(key: dict[str, Any], weights: dict[str, torch.Tensor], folder: Path
               ) -> dict[str, torch.Tensor]:
    """The key's own constants as tensors: a renamed weight is the weight itself, a stored
    one read from the package's `CONSTANTS` file (checked against the key)."""
    file: dict[str, torch.Tensor] = {}
    if any(isinstance(c, dict) and c["values"] == STORED for c in key["constants"].values()):
        from safetensors.torch import load_file

        file = load_file(str(folder / CONSTANTS))
    out = {}
    for name, c in key["constants"].items():
        if isinstance(c, str):
            out[name] = weights[c]
            continue
        dtype = getattr(torch, c["dtype"])
        if c["values"] == STORED:
            out[name] = file[name]
            if out[name].dtype != dtype or list(out[name].shape) != c["shape"]:
                raise ValueError(f"{CONSTANTS} holds another {name}")
        else:
            out[name] = torch.tensor(c["values"], dtype=dtype).view(c["shape"])
    return out


# A build that fails with less than this free beside it ran out of space: the compiler's
# and the package writer's errors ("C++ compile error", "enforce fail") do not say so.
_NEARLY_FULL = 16 << 20


def _out_of_space(exc: BaseException, folder: Path) -> bool:
    """Whether a failed build ran out of disk space in `folder` (checked before the
    build's files are removed): an ENOSPC anywhere in the exception's chain or text, or
    next to nothing left free."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if "No space left on device" in str(seen) or "Disk quota exceeded" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    try:
        return shutil.disk_usage(folder).free < _NEARLY_FULL
    except OSError:
        return False


@contextmanager
def _quiet() -> Iterator[None]:
    """No library warnings (inductor's deprecation notices) while building; the tables
    autotuning prints are switched off by `_no_autotune_tables` and `_PACKAGING`."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _no_autotune_tables() -> None:
    """Inductor writes each autotuned kernel's timings to stderr (its module-level
    `PRINT_AUTOTUNE`, not a config option): off, for this process."""
    select = importlib.import_module("torch._inductor.select_algorithm")
    select.PRINT_AUTOTUNE = False


@contextmanager
def _private_inductor_cache(folder: Path) -> Iterator[None]:
    """Inductor's cache (compiled kernels, ISA probes: hundreds of MB) in `folder`, not in
    the temp folder, for the duration; the caller removes `folder`."""
    saved = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(folder)
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("TORCHINDUCTOR_CACHE_DIR", None)
        else:
            os.environ["TORCHINDUCTOR_CACHE_DIR"] = saved


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _write_atomically(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# -- unpacking -------------------------------------------------------------------------------
def unpacked_path(path: Path) -> Path:
    """Where the package `path` is unpacked, once: the folder `<path>.unpacked` beside it
    (its stamp.json records the package's digest, size and mtime and each file's size
    and mtime; the package's files lie in a subfolder named by the digest)."""
    return path.with_name(path.name + ".unpacked")


def remove_unpacked(path: Path) -> None:
    """Remove the package's unpacked folder and any partial one left by a killed process."""
    target = unpacked_path(path)
    for folder in (target, *path.parent.glob(f".{target.name}-*")):
        shutil.rmtree(folder, ignore_errors=True)


def _stat(path: Path) -> list[int]:
    info = path.stat()
    return [info.st_size, info.st_mtime_ns]


def _unpacked(path: Path, key: dict[str, Any]) -> Path | None:
    """The folder of the package's files if its unpacked copy is whole (the stamp matches
    the key's digest, the package's size and mtime, and every file's); else None."""
    target = unpacked_path(path)
    try:
        stamp = json.loads((target / "stamp.json").read_text())
        if stamp["sha256"] != key["package_sha256"] or stamp["package"] != _stat(path):
            return None
        for name, size_mtime in stamp["files"].items():
            if _stat(target / name) != size_mtime:
                return None
        return target / stamp["sha256"][:16]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def _unpack(path: Path, key: dict[str, Any]) -> Path | str:
    """Unpack the package beside it (into a partial folder, then renamed), if its digest is
    the key's; the folder of its files, or why not."""
    digest = key["package_sha256"]
    if _sha256(path) != digest:
        remove_unpacked(path)
        return (f"the compiled decode step {path} is damaged (its content differs from "
                "what was built)")
    target = unpacked_path(path)
    work = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=path.parent))
    stale: Path | None = None
    try:
        files = work / digest[:16]
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                parts = PurePosixPath(info.filename).parts[1:]  # below the archive's root
                if info.is_dir() or not parts:
                    continue
                if ".." in parts or PurePosixPath(info.filename).is_absolute():
                    raise ValueError(f"unexpected member {info.filename}")
                dest = files.joinpath(*parts)
                dest.parent.mkdir(parents=True, exist_ok=True)
                with archive.open(info) as source, dest.open("wb") as out:
                    shutil.copyfileobj(source, out, 1 << 20)  # checks each member's CRC
        stamp = {"sha256": digest, "package": _stat(path),
                 "files": {f.relative_to(work).as_posix(): _stat(f)
                           for f in sorted(files.rglob("*")) if f.is_file()}}
        (work / "stamp.json").write_text(json.dumps(stamp, indent=1) + "\n")
        if target.exists():  # a stale copy: set it aside (renamed at once), then remove it
            stale = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=path.parent))
            os.replace(target, stale / "old")
        os.replace(work, target)
    except Exception as exc:  # a damaged zip, a full disk, ...: all mean "eager"
        shutil.rmtree(work, ignore_errors=True)
        unpacked = _unpacked(path, key)  # another process may have unpacked it meanwhile
        if unpacked is not None:
            return unpacked
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return f"the compiled decode step {path} does not load ({first})"
    finally:
        if stale is not None:
            shutil.rmtree(stale, ignore_errors=True)
    return target / digest[:16]


# -- loading ---------------------------------------------------------------------------------
@dataclass
class CompiledStep:
    """A loaded package and the key it was built with."""

    run: Callable[..., Any]
    key: dict[str, Any] = field(default_factory=dict)
    constants: dict[str, torch.Tensor] = field(default_factory=dict)
    """The tensors the package computes with (not copied: kept alive here)."""


def load_step(model: NativeCausalLM, path: Path, model_id: str) -> CompiledStep | str:
    """The package at `path`, if its key matches `model` here and now; else why not.

    The package is unpacked beside it on its first load (its digest checked against the
    key's) and loaded from there afterwards, while its size and mtime and the unpacked
    files' stay as recorded: nothing is written to the temp folder."""
    path = Path(path)
    if not path.exists():
        return f"no compiled decode step at {path}"
    if not path.is_file():
        return f"the compiled decode step {path} is not a file"
    try:
        key = json.loads(key_path(path).read_text())
        size = int(key["package_bytes"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return f"the compiled decode step's key {key_path(path)} is unreadable ({exc})"
    weights = _weights(model)
    stale = stale_fields(key, expected_key(model, model_id, weights))
    if stale:
        return f"the compiled decode step is stale ({', '.join(stale)} changed)"
    if not isinstance(key.get("package_sha256"), str):
        return f"the compiled decode step's key {key_path(path)} is unreadable (no digest)"
    if path.stat().st_size != size:
        return (f"the compiled decode step {path} is corrupt ({path.stat().st_size} bytes, "
                f"built as {size})")
    try:
        folder = _unpacked(path, key) or _unpack(path, key)
        if isinstance(folder, str):
            return folder
        # torch's loader over an unpacked package: it extracts nothing (no temp folder)
        loader = torch._C._aoti.AOTIModelPackageLoader(str(folder), "model", False, 1, -1)
        constants: dict[str, torch.Tensor] = {}
        if key["constants"] is not None:  # else the package holds its weights itself
            constants = {**weights, **_constants(key, weights, folder)}
            # the model's own tensors, not copies (user-managed): they outlive the loader,
            # which `CompiledStep` keeps with them
            loader.load_constants({name: constants[name]
                                   for name in loader.get_constant_fqns()}, False, True, True)
    except Exception as exc:  # unreadable, a missing symbol, ...: all mean "eager"
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return f"the compiled decode step {path} does not load ({first})"

    def run(*inputs: torch.Tensor) -> list[torch.Tensor]:
        return loader.run(list(inputs))

    return CompiledStep(run, key, constants)


# -- the language model ----------------------------------------------------------------------
INITIAL_POSITIONS = 256
"""Room a fresh cache starts with (at least the prompt's); it doubles when full."""


class CompiledCache:
    """A cache of `CompiledLanguageModel`: one row in position-major buffers (what the
    compiled step reads; they double when full) until it must hold several rows, then an
    eager `KVCache`. `inner` is what the eager forward writes: a `StaticKVCache` over
    per-layer views of the buffers, or the `KVCache`."""

    croppable = True

    def __init__(self, inner: StaticKVCache | KVCache, keys: torch.Tensor | None = None,
                 values: torch.Tensor | None = None) -> None:
        self.inner = inner
        self.keys, self.values = keys, values  # the buffers, None once eager

    @classmethod
    def allocate(cls, model: NativeCausalLM, positions: int) -> CompiledCache:
        keys, values = _buffers(model, positions)
        inner = StaticKVCache(_layer_views(keys), _layer_views(values), positions)
        return cls(inner, keys, values)

    @property
    def static(self) -> bool:
        return self.keys is not None

    def __len__(self) -> int:
        return len(self.inner)

    def reserve(self, positions: int) -> None:
        """Room for `positions` positions in the buffers (doubling; cached ones kept)."""
        if self.keys is None or self.values is None or positions <= self.keys.shape[0]:
            return
        size = self.keys.shape[0]
        while size < positions:
            size *= 2
        length = len(self)
        with torch.inference_mode():
            grown = []
            for old in (self.keys, self.values):
                new = old.new_empty((size, *old.shape[1:]))
                new[:length] = old[:length]
                grown.append(new)
        self.keys, self.values = grown
        static = self.inner
        assert isinstance(static, StaticKVCache)
        static.keys, static.values = _layer_views(self.keys), _layer_views(self.values)
        static.max_len = size

    def make_eager(self) -> None:
        """Move into a `KVCache` that grows as eager decoding needs (a copy of the rows)."""
        if not self.static:
            return
        static = self.inner
        assert isinstance(static, StaticKVCache)
        eager = KVCache(len(static.keys))
        with torch.inference_mode():
            eager.keys = [k[:, :, : static.length].contiguous() for k in static.keys]
            eager.values = [v[:, :, : static.length].contiguous() for v in static.values]
        eager.length = static.length
        self.inner, self.keys, self.values = eager, None, None


class CompiledLanguageModel:
    def __init__(self, model: NativeCausalLM, step: CompiledStep | None,
                 reason: str | None = None) -> None:
        """`step`: the loaded package (None: eager throughout, `reason` says why)."""
        self.model = model
        self.device = model.device
        self.vocab_size = model.vocab_size
        self.step_fn = step
        self.reason = reason
        self._pos = torch.zeros(1, dtype=torch.long, device=model.device)

    @classmethod
    def open(cls, model: NativeCausalLM, path: Path, model_id: str) -> CompiledLanguageModel:
        """Over the package at `path`, or eager (with `reason`) if it cannot serve."""
        loaded = load_step(model, path, model_id)
        if isinstance(loaded, str):
            return cls(model, None, loaded)
        return cls(model, loaded)

    @property
    def compiled(self) -> bool:
        """Whether single-row steps run the package (False after any fallback to eager)."""
        return self.step_fn is not None

    # -- LanguageModel ---------------------------------------------------------------------
    def prefill(self, ids: list[int], cache: CompiledCache | None = None) -> tuple[Any, Any]:
        if cache is None:
            if self.step_fn is not None:
                room = INITIAL_POSITIONS
                while room < len(ids) + 1:
                    room *= 2
                cache = CompiledCache.allocate(self.model, room)
            else:
                cache = CompiledCache(KVCache(len(self.model.layers)))
        cache.reserve(len(cache) + len(ids) + 1)
        input_ids = torch.tensor([ids], dtype=torch.long, device=self.device)
        logits, _ = self.model.forward(input_ids, cache.inner, logits_to_keep=1)
        return logits[:, -1, :], cache

    def extend(self, ids: list[int], cache: CompiledCache) -> tuple[Any, Any]:
        """Several tokens of one row, eagerly (the package is built for one token), into
        the same buffers the compiled step reads."""
        cache.reserve(len(cache) + len(ids) + 1)
        input_ids = torch.tensor([ids], dtype=torch.long, device=self.device)
        logits, _ = self.model.forward(input_ids, cache.inner, logits_to_keep=len(ids))
        return logits[0], cache

    def step(self, tokens: Any, cache: CompiledCache) -> tuple[Any, Any]:
        rows = tokens.numel()
        if cache.static and (rows != 1 or self.step_fn is None):
            cache.make_eager()
        position = len(cache)
        cache.reserve(position + 1)
        if not cache.static or position < MIN_LENGTH:
            logits, _ = self.model.forward(tokens.view(-1, 1), cache.inner, logits_to_keep=1)
            return logits[:, -1, :], cache
        assert self.step_fn is not None and cache.keys is not None and cache.values is not None
        with torch.inference_mode():
            self._pos.fill_(position)
            try:
                logits, new_keys, new_values = self.step_fn.run(
                    tokens.reshape(1, 1).to(self.device, torch.long), self._pos,
                    cache.keys[:position], cache.values[:position])
            except Exception as exc:  # never crash on the package: decode eagerly instead
                first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                self.step_fn, self.reason = None, f"the compiled decode step failed ({first})"
                cache.make_eager()
                return self.step(tokens, cache)
            cache.keys[position] = new_keys
            cache.values[position] = new_values
        cache.inner.length = position + 1
        return logits, cache

    def expand(self, cache: CompiledCache, rows: int) -> None:
        cache.make_eager()  # the package is built for one row: beam search decodes eagerly
        cache.inner.expand(rows)

    def reorder(self, cache: CompiledCache, rows: Any) -> None:
        cache.make_eager()
        cache.inner.reorder(rows)

    def crop(self, cache: CompiledCache, length: int) -> None:
        cache.inner.crop(length)

    def can_crop(self, cache: CompiledCache, length: int) -> bool:
        return 0 <= length <= len(cache)
