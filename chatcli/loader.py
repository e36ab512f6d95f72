"""Turn a `ModelSpec` into a loaded model and tokenizer, ready to generate.

Contract: `load_model(spec, runtime, reporter)` fetches the weights (see
`chatcli.sources`), converts a GGUF file once into a safetensors folder in
chatcli's cache (so later loads take well under a second instead of ~15 s),
loads tokenizer and model with the runtime's device/dtype/threads, and returns a
`LoadedModel`. Two implementations: chatcli's native Llama-family forward pass
and tokenizer (`chatcli.lm.llama`, `chatcli.lm.tokenizer`: bit-identical
results, no transformers import, ~2 s faster start) where they apply, else
transformers' (any architecture). On CUDA the native model decodes through a
static KV cache captured as a CUDA graph (`chatcli.lm.graphs`: captured once at
load, shown as progress; CHATCLI_NO_CUDA_GRAPHS=1 turns it off).
`trust_remote_code` is only ever taken from the alias.

This module knows nothing about prompts, decoding or the terminal; progress is
reported through a `Reporter`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chatcli import paths, sources
from chatcli.errors import ChatcliError, ModelUnavailableError, UsageError
from chatcli.lm.base import LanguageModel
from chatcli.registry import ModelSpec
from chatcli.runtime import Runtime, apply_threads
from chatcli.sources import LocalWeights, Reporter

_DONE = ".chatcli-complete"


@dataclass
class LoadedModel:
    spec: ModelSpec
    lm: LanguageModel
    tokenizer: Any  # transformers tokenizer, or chatcli.lm.tokenizer.ChatTokenizer
    runtime: Runtime
    eos_ids: frozenset[int]
    context_window: int
    load_seconds: float
    generation_config: dict[str, Any] = field(default_factory=dict)
    implementation: str = "transformers"  # or "native"
    folder: Path | None = None


def quiet_transformers() -> None:
    """Silence transformers' warnings and progress bars unless CHATCLI_DEBUG is set."""
    if os.environ.get("CHATCLI_DEBUG"):
        return
    from transformers.utils import logging as tlog

    tlog.set_verbosity_error()
    tlog.disable_progress_bar()
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module="transformers")


def converted_dir(spec: ModelSpec, weights: LocalWeights) -> Path:
    gguf = weights.gguf_path
    assert gguf is not None
    if spec.sha256:
        key = spec.sha256[:32]
    else:
        st = gguf.stat()
        key = hashlib.sha256(f"{gguf.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()
        key = key[:32]
    return paths.cache_dir() / "converted" / key


def is_converted(spec: ModelSpec, weights: LocalWeights) -> bool:
    return (converted_dir(spec, weights) / _DONE).is_file()


def ensure_converted(spec: ModelSpec, weights: LocalWeights, reporter: Reporter) -> Path:
    """A safetensors folder for a GGUF file, converted on first use only."""
    target = converted_dir(spec, weights)
    if (target / _DONE).is_file():
        return target
    message = (
        f"Converting {weights.gguf_file} to safetensors (one time only, about 15 s; "
        "later loads take under a second)"
    )
    with reporter.busy(message):
        _convert(spec, weights, target)
    return target


def _convert(spec: ModelSpec, weights: LocalWeights, target: Path) -> None:
    quiet_transformers()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".convert-", dir=target.parent))
    try:
        kw = {"gguf_file": weights.gguf_file, "trust_remote_code": spec.trust_remote_code}
        tokenizer = AutoTokenizer.from_pretrained(weights.folder, **kw)
        model = AutoModelForCausalLM.from_pretrained(weights.folder, **kw)
        # The GGUF loader leaves quantizer metadata behind that save_pretrained refuses.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / _DONE).write_text(f"converted from {weights.gguf_path}\n")
        shutil.rmtree(target, ignore_errors=True)
        os.replace(tmp, target)
    except Exception as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, ChatcliError):
            raise
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


def local_generation_config(spec: ModelSpec) -> dict[str, Any]:
    """generation_config.json of an alias whose weights are on disk, without loading it."""
    weights = sources.locate(spec)
    if weights is None:
        return {}
    folder = converted_dir(spec, weights) if weights.gguf_file else weights.folder
    return read_json(folder / "generation_config.json")


def eos_ids_of(generation_config: dict[str, Any], tokenizer: Any) -> frozenset[int]:
    """Every id that ends a reply: generation_config's eos ids plus the tokenizer's."""
    ids: set[int] = set()
    for source in (generation_config.get("eos_token_id"), tokenizer.eos_token_id):
        if isinstance(source, int):
            ids.add(source)
        elif source:
            ids.update(int(i) for i in source)
    return frozenset(ids)


def load_model(
    spec: ModelSpec, runtime: Runtime, reporter: Reporter, implementation: str | None = None
) -> LoadedModel:
    """Load an alias. `implementation` (default: the alias's, else "auto") picks the forward pass:
    chatcli's native Llama-family one where it applies (CPU or CUDA, llama/qwen2
    architectures, a tokenizer.json that loads identically without transformers), else
    transformers'."""
    weights = sources.fetch(spec, reporter)
    started = time.perf_counter()
    folder = weights.folder
    if weights.gguf_file:
        folder = ensure_converted(spec, weights, reporter)
    impl = implementation or spec.implementation
    config = read_json(folder / "config.json")
    generation_config = read_json(folder / "generation_config.json")
    apply_threads(runtime)
    ctx = spec.context_window or config.get("max_position_embeddings") or 2048
    if impl == "native" or (impl == "auto" and _native_applies(spec, runtime, folder, config)):
        lm, tokenizer = _load_native(spec, runtime, folder, int(ctx), reporter)
        impl = "native"
    else:
        _refuse_quantize(spec, runtime, "it runs on transformers' implementation")
        lm, tokenizer = _load_transformers(spec, runtime, folder)
        impl = "transformers"
    if spec.chat_template:
        tokenizer.chat_template = spec.chat_template
    return LoadedModel(
        spec=spec,
        lm=lm,
        tokenizer=tokenizer,
        runtime=runtime,
        eos_ids=eos_ids_of(generation_config, tokenizer),
        context_window=int(ctx),
        load_seconds=time.perf_counter() - started,
        generation_config=generation_config,
        implementation=impl,
        folder=folder,
    )


def _native_applies(
    spec: ModelSpec, runtime: Runtime, folder: Path, config: dict[str, Any]
) -> bool:
    if spec.trust_remote_code or runtime.device not in ("cpu", "cuda"):
        return False
    from chatcli.lm import llama, tokenizer

    return llama.supports(config) and tokenizer.supports(folder)


def _load_native(
    spec: ModelSpec, runtime: Runtime, folder: Path, context_window: int, reporter: Reporter
) -> tuple[Any, Any]:
    import torch

    from chatcli.lm import graphs
    from chatcli.lm.llama import NativeCausalLM
    from chatcli.lm.native import NativeLanguageModel
    from chatcli.lm.quant import supported
    from chatcli.lm.tokenizer import ChatTokenizer

    dtype = getattr(torch, runtime.dtype)
    why_not = supported(runtime.quantize, torch.device(runtime.device), dtype)
    if why_not:
        _refuse_quantize(spec, runtime, why_not)
    try:
        tokenizer = ChatTokenizer.from_folder(folder)
        model = NativeCausalLM.from_folder(folder, dtype, runtime.device)
    except (OSError, ValueError, KeyError) as exc:
        raise ModelUnavailableError(
            f"model '{spec.alias}': cannot load from {folder}: {exc}".splitlines()[0],
            f'set implementation = "transformers" for [models.{spec.alias}] in {spec.origin}',
        ) from exc
    if runtime.quantize != "none":
        _quantize_cached(model, runtime, folder, reporter)
    if graphs.wanted(runtime.device):
        graphed = graphs.GraphedLanguageModel(model, context_window, reporter)
        graphed.warm_up()
        return graphed, tokenizer
    return NativeLanguageModel(model), tokenizer


def _quantize_cached(model: Any, runtime: Runtime, folder: Path, reporter: Reporter) -> None:
    """Quantize `model` once per weights/mode/dtype/torch version; later loads read the
    result from chatcli's cache (quantizing a 135M model takes 1.5-2.5 s, reading it
    ~0.1 s). A damaged cache file is quantized again and rewritten."""
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
    except OSError:  # a read-only cache only costs the next load its time
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)


def _refuse_quantize(spec: ModelSpec, runtime: Runtime, why: str) -> None:
    """Quantized layers exist only in chatcli's native CPU forward pass."""
    if runtime.quantize == "none":
        return
    where = f" (set by [models.{spec.alias}] in {spec.origin})" if spec.quantize != "none" else ""
    raise UsageError(
        f"--quantize {runtime.quantize} is not available for '{spec.alias}'{where}: {why}",
        "use --quantize none, or run on the CPU with the native implementation",
    )


def _load_transformers(spec: ModelSpec, runtime: Runtime, folder: Path) -> tuple[Any, Any]:
    quiet_transformers()
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from chatcli.lm.hf import HFLanguageModel

    kw = {"trust_remote_code": spec.trust_remote_code}
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, **kw)
        model = AutoModelForCausalLM.from_pretrained(
            folder, dtype=getattr(torch, runtime.dtype), **kw
        )
    except (OSError, ValueError) as exc:
        raise ModelUnavailableError(
            f"model '{spec.alias}': cannot load from {folder}: {exc}".splitlines()[0],
            "check that the folder holds a transformers model (config.json, weights, tokenizer)",
        ) from exc
    model.to(runtime.device).eval()
    return HFLanguageModel(model), tokenizer
