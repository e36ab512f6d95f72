"""llama.cpp, through its Python binding, as an engine for bench/vs_llamacpp.py.

Contract: `import_llama_cpp()` imports the binding (or ends the script with the command
that installs it) and, on a build that uses AMX, makes every model load with
`use_extra_bufts = False`: it patches `llama_cpp.llama_cpp.llama_model_default_params`,
the low-level function `Llama(...)` really calls, because the AMX-repacked weights
("extra buffer types") crash in decode; it says so on stderr. `LlamaCppEngine` loads a
GGUF and offers the harness's greedy loop what a chatcli `LanguageModel` offers:
`prefill(ids)` (a fresh context each time) and `step(tokens, cache)` with `feed(token)`
as step's input; the logits are a NumPy view of `llama_get_logits_ith(ctx, -1)` (no
copy), shape (1, vocab), so a decode step is one `eval` and one argmax. It also gives
the bytes a decode step reads (the GGUF's tensor data, a tied embedding counted once).
`quantize_gguf` runs `llama_model_quantize` (F32 -> Q8_0, Q4_1, ...) once per file.

It knows nothing about chatcli and never imports torch (the memory probe of
vs_llamacpp measures this engine in a process without it).
"""

from __future__ import annotations

import ctypes
import os
import sys
from pathlib import Path
from typing import Any

INSTALL = ("CMAKE_ARGS=\"-DCMAKE_C_FLAGS='-mno-amx-tile -mno-amx-int8 -mno-amx-bf16' "
           "-DCMAKE_CXX_FLAGS='-mno-amx-tile -mno-amx-int8 -mno-amx-bf16'\" "
           "pip install -c constraints.txt llama-cpp-python==0.3.36")


def import_llama_cpp() -> Any:
    try:
        import llama_cpp
    except ImportError:
        print(f"llama.cpp's Python binding is not installed; install it with `{INSTALL}` "
              "(compiles llama.cpp from source, a few minutes)", file=sys.stderr)
        sys.exit(2)
    low_level = llama_cpp.llama_cpp  # what `Llama(...)` calls
    if "AMX_INT8 = 1" in llama_cpp.llama_print_system_info().decode(errors="replace") and \
            not getattr(low_level.llama_model_default_params, "_without_extra_bufts", False):
        # Built with AMX (-march=native on an Intel Xeon): its AMX-repacked weights
        # ("extra buffer types") crash in decode. Load every model without them.
        default_params = low_level.llama_model_default_params

        def without_extra_bufts() -> Any:
            params = default_params()
            params.use_extra_bufts = False
            return params

        without_extra_bufts._without_extra_bufts = True  # type: ignore[attr-defined]
        low_level.llama_model_default_params = without_extra_bufts
        print("note: this llama.cpp build uses AMX, whose repacked weights crash in decode; "
              "models are loaded with use_extra_bufts = False (rebuild with the flags in "
              f"`{INSTALL}` to keep its other repacking)", file=sys.stderr)
    return llama_cpp


class LlamaCppEngine:
    label = "llama.cpp"

    def __init__(self, gguf: Path, precision: str, threads: int, n_ctx: int) -> None:
        llama_cpp = import_llama_cpp()
        import numpy as np

        self.np, self.lib = np, llama_cpp
        self.gguf = gguf
        self.llm = llama_cpp.Llama(
            model_path=str(gguf), n_ctx=n_ctx, n_batch=n_ctx, n_ubatch=512, n_threads=threads,
            n_threads_batch=threads, logits_all=False, verbose=False,
        )
        self.n_vocab = self.llm.n_vocab()
        self.precision = precision
        self.lm = self  # what the harness's greedy loop drives

    def _logits(self) -> Any:
        ptr = self.lib.llama_get_logits_ith(self.llm.ctx, -1)  # synchronizes
        return self.np.ctypeslib.as_array(ptr, shape=(1, self.n_vocab))

    def prefill(self, ids: list[int], cache: Any = None) -> tuple[Any, None]:
        self.llm.reset()
        self.llm.eval(ids)
        return self._logits(), None

    def step(self, tokens: list[int], cache: Any) -> tuple[Any, None]:
        self.llm.eval(tokens)
        return self._logits(), None

    @staticmethod
    def feed(token: int) -> list[int]:
        return [token]

    def decode_bytes(self) -> int:
        from gguf import GGUFReader

        tensors = {t.name: int(t.n_bytes) for t in GGUFReader(str(self.gguf)).tensors}
        if "output.weight" in tensors:  # untied: the embedding is only looked up
            tensors.pop("token_embd.weight", None)
        return sum(tensors.values())

    def close(self) -> None:
        self.llm.close()


def quantize_gguf(src: Path, ftype_name: str, out: Path, threads: int, log: Any) -> None:
    """`out`: `src` quantized to LLAMA_FTYPE_MOSTLY_<ftype_name>, once."""
    if out.is_file():
        return
    llama_cpp = import_llama_cpp()
    log(f"quantizing {src.name} to {ftype_name}")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{ftype_name}")
    params.nthread = threads
    tmp = out.with_suffix(".tmp")
    saved = os.dup(2)  # llama.cpp logs every tensor on stderr
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            rc = llama_cpp.llama_model_quantize(str(src).encode(), str(tmp).encode(),
                                                ctypes.byref(params))
    finally:
        os.dup2(saved, 2)
        os.close(saved)
    if rc != 0:
        raise SystemExit(f"llama_model_quantize to {ftype_name} failed ({rc})")
    tmp.rename(out)
