"""Turn a `ModelSpec` into a loaded model and tokenizer, ready to generate.

Contract: `load_model(spec, runtime, reporter)` fetches the weights (see
`chatcli.sources`), converts a GGUF file once into a safetensors folder in
chatcli's cache (so later loads take well under a second instead of ~15 s),
loads tokenizer and model with the runtime's device/dtype/threads, and returns a
`LoadedModel`. `trust_remote_code` is only ever taken from the alias.

This module knows nothing about prompts, decoding or the terminal; progress is
reported through a `Reporter`.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chatcli import paths, sources
from chatcli.errors import ChatcliError, ModelUnavailableError
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


def eos_ids_of(model: Any, tokenizer: Any) -> frozenset[int]:
    """Every id that ends a reply: generation_config's eos ids plus the tokenizer's."""
    ids: set[int] = set()
    gen = getattr(model, "generation_config", None)
    for source in (getattr(gen, "eos_token_id", None), tokenizer.eos_token_id):
        if isinstance(source, int):
            ids.add(source)
        elif source:
            ids.update(int(i) for i in source)
    return frozenset(ids)


def load_model(spec: ModelSpec, runtime: Runtime, reporter: Reporter) -> LoadedModel:
    weights = sources.fetch(spec, reporter)
    started = time.perf_counter()
    folder = weights.folder
    if weights.gguf_file:
        folder = ensure_converted(spec, weights, reporter)
    quiet_transformers()
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    apply_threads(runtime)
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
    if spec.chat_template:
        tokenizer.chat_template = spec.chat_template
    ctx = spec.context_window or getattr(model.config, "max_position_embeddings", None) or 2048
    from chatcli.lm.hf import HFLanguageModel

    return LoadedModel(
        spec=spec,
        lm=HFLanguageModel(model),
        tokenizer=tokenizer,
        runtime=runtime,
        eos_ids=eos_ids_of(model, tokenizer),
        context_window=int(ctx),
        load_seconds=time.perf_counter() - started,
        generation_config=model.generation_config.to_diff_dict(),
    )
