"""chatcli's native engine vs llama.cpp on the same weights, per precision class.

Usage: python bench/vs_llamacpp.py [--models smollm2,qwen0.5b] [--rounds 3] [--tokens 64]
                                   [--prefill 128,512,2048] [--long-rounds 1]
                                   [--classes fp32,bf16,int8,int4] [--threads 2]
                                   [--cache-dir ~/.cache/chatcli-bench] [--verbose]
                                   [--write docs/benchmarks.md]

llama.cpp is reached through its Python binding, an optional dev dependency:
    pip install -c constraints.txt llama-cpp-python==0.3.36
(compiles llama.cpp from source, about 4 minutes on this 2-core machine).

Engines. chatcli: `NativeCausalLM.from_folder(folder, dtype)` + `.quantize(mode)`, driven
greedily exactly as chatcli drives it (a prefill forward that returns the last position's
logits, then one forward per token, argmax). llama.cpp: `Llama(...)` fed token ids directly
(`eval`), greedy argmax over `llama_get_logits_ith(ctx, -1)` (a view, no copy), so each
decode step is one forward + one argmax on both sides. Same thread count on both sides
(`torch.set_num_threads(n)`; llama.cpp `n_threads = n_threads_batch = n`).

Precision classes (chatcli / llama.cpp GGUF):
- fp32: float32 weights and activations / F32 (converted from chatcli's folder).
- bf16: bfloat16 / BF16 (converted from chatcli's folder).
- int8: bfloat16 activations + int8 weights, one scale per output row / Q8_0 (blocks of 32
  with one scale each), quantized from the F32 GGUF with `llama_model_quantize`.
- int4: bfloat16 + int4 weights in groups of 32 with a scale and a minimum (asymmetric,
  the same form as GGUF's Q4_1; head kept at int8) / Q4_1. For smollm2 this is the original
  Q4_1 GGUF chatcli's own weights come from (its token embedding / head is Q8_0); for
  qwen0.5b it is quantized from the F32 GGUF.

Models.
- smollm2: the registry's default alias (smollm2-135m): chatcli's converted safetensors folder
  and the source Q4_1 GGUF, through chatcli's own `sources.fetch` / `loader.ensure_converted`.
- qwen0.5b: random weights (seed 0, normal std 0.02, as transformers initializes them) with
  Qwen2.5-0.5B's exact architecture config, saved with `save_pretrained` (fp32 safetensors)
  into the cache dir, with SmolLM2's tokenizer files copied next to it (the hub is not
  reachable). `convert_hf_to_gguf.py` pads the 49152-token vocabulary to the config's
  151936 with [PADn] tokens. Its pre-tokenizer check (a hash of a test string's tokens)
  rejects this folder: with model_type qwen2, transformers' AutoTokenizer loads SmolLM2's
  tokenizer.json through its Qwen2 tokenizer class, which rebuilds the pre-tokenizer, so
  the hash is neither smollm's nor qwen2's. The converter is therefore told the answer
  ("smollm", the pre-tokenizer these tokenizer files really use; it only matters for
  llama.cpp's own tokenization, which this benchmark never uses: both engines get token
  ids). The text the model produces is meaningless; the speed is not.

llama.cpp's `convert_hf_to_gguf.py` is not in the binding's wheel: it is taken (with its
`conversion` package and `gguf-py`) from the binding's sdist, fetched once with
`pip download llama-cpp-python==<installed version> --no-deps --no-binary :all:`. It is run
with one patch (two for qwen0.5b, above): it imports sentencepiece before checking whether
a tokenizer.model exists (these folders have only tokenizer.json); without the
sentencepiece package it then fails instead of falling back to tokenizer.json, so the
patch raises the FileNotFoundError it expects. The installed `gguf` package is used when
its version matches the sdist's gguf-py, else the sdist's gguf-py is put first on
PYTHONPATH. Every generated file lives in the cache dir, keyed by model, so a rerun only
measures.

Measurements, interleaved: every round runs, for each class, each measurement on chatcli
and then at once on llama.cpp (the order alternates between rounds), so that load from other
work on a shared machine drifts over both alike; medians over rounds.
- decode tok/s: after a 32-token prompt, --tokens greedy tokens (EOS ignored); (tokens - 1)
  / the time from the first token to the last (the first comes from the prefill).
- prefill tok/s at each --prefill length: a fixed token sequence (bench/data/english.txt,
  tokenized and repeated), fresh cache each time, until the last position's logits exist.
  Lengths above 512 run only in the first --long-rounds rounds (default 1): a 2048-token
  fp32 prefill of the 0.5B model takes tens of seconds per engine on 2 cores.
- TTFT-128: prefill of the 128-token prompt + the first argmax, in ms.
- peak RSS: each engine/class in its own subprocess (this script with --rss-probe): load,
  prefill 512, decode 32, then VmHWM (Linux carries ru_maxrss over fork + exec, so it
  would include this process's size) and VmRSS. The llama.cpp probe never imports torch.
  chatcli's peak is a load-time peak: the fp32 safetensors are mapped while each tensor is
  converted to the class's dtype (and quantized), so the end figure is shown too.
- memory bandwidth: torch, same thread count, a 512 MiB float32 tensor: `sum()` (read) and
  `copy_` (read + write counted), best of 6 after a warm-up, at the start and at the end.
  Decode ceiling = read bandwidth (the higher of the two measurements) / bytes a decode step
  reads: chatcli, the bytes of every linear (the head included, norms) as stored after
  quantization; llama.cpp, the GGUF tensor data (the tied embedding counted once, as the
  head). KV-cache and activation traffic are left out (a few MiB at these lengths).
Targets (issue #6, default model): decode int8 >= 0.7x llama.cpp Q8_0, decode bf16 >= 0.7x
llama.cpp BF16, prefill-512 bf16 >= 1.0x llama.cpp BF16, TTFT-128 <= llama.cpp's (bf16, int8).
With --write, the output replaces the "vs_llamacpp" section of the file (appended if absent).
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import importlib.metadata as md
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from decode import write_section  # bench/ is on sys.path when run as a script

TEXT = Path(__file__).parent / "data" / "english.txt"
INSTALL = ("CMAKE_ARGS=\"-DCMAKE_C_FLAGS='-mno-amx-tile -mno-amx-int8 -mno-amx-bf16' "
           "-DCMAKE_CXX_FLAGS='-mno-amx-tile -mno-amx-int8 -mno-amx-bf16'\" "
           "pip install -c constraints.txt llama-cpp-python==0.3.36")
DECODE_PROMPT = 32
RSS_PREFILL, RSS_DECODE = 512, 32
ALL_MODELS = ("smollm2", "qwen0.5b")
ALL_CLASSES = ("fp32", "bf16", "int8", "int4")
# class -> (chatcli dtype, chatcli quantize, llama.cpp GGUF type)
CLASSES: dict[str, tuple[str, str, str]] = {
    "fp32": ("float32", "none", "F32"),
    "bf16": ("bfloat16", "none", "BF16"),
    "int8": ("bfloat16", "int8", "Q8_0"),
    "int4": ("bfloat16", "int4", "Q4_1"),
}
QWEN25_05B = {  # Qwen/Qwen2.5-0.5B config.json (architecture fields)
    "architectures": ["Qwen2ForCausalLM"],
    "model_type": "qwen2",
    "hidden_act": "silu",
    "hidden_size": 896,
    "intermediate_size": 4864,
    "num_hidden_layers": 24,
    "num_attention_heads": 14,
    "num_key_value_heads": 2,
    "max_position_embeddings": 32768,
    "max_window_layers": 24,
    "rope_theta": 1000000.0,
    "rms_norm_eps": 1e-6,
    "tie_word_embeddings": True,
    "use_sliding_window": False,
    "sliding_window": 32768,
    "attention_dropout": 0.0,
    "initializer_range": 0.02,
    "vocab_size": 151936,
}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "chat_template.jinja", "vocab.json", "merges.txt")
_PATCHED_CONVERTER = """
import os, runpy, sys
script = sys.argv[1]
sys.argv = sys.argv[1:]
sys.path.insert(0, script.rsplit("/", 1)[0])
import conversion.base as base
for cls in list(vars(base).values()):
    f = getattr(cls, "__dict__", {}).get("_create_vocab_sentencepiece")
    if f is not None:
        def patched(self, _f=f):
            if not (self.dir_model / "tokenizer.model").is_file():
                raise FileNotFoundError("no tokenizer.model")
            return _f(self)
        cls._create_vocab_sentencepiece = patched
pre = os.environ.get("VS_LLAMACPP_PRE_TOKENIZER")
if pre:
    for cls in list(vars(base).values()):
        if "get_vocab_base_pre" in getattr(cls, "__dict__", {}):
            cls.get_vocab_base_pre = lambda self, tokenizer: pre
runpy.run_path(script, run_name="__main__")
"""


def import_llama_cpp() -> Any:
    try:
        import llama_cpp
    except ImportError:
        print(f"llama.cpp's Python binding is not installed; install it with `{INSTALL}` "
              "(compiles llama.cpp from source, a few minutes)", file=sys.stderr)
        sys.exit(2)
    if "AMX_INT8 = 1" in llama_cpp.llama_print_system_info().decode(errors="replace"):
        # Built with AMX (-march=native on an Intel Xeon): its AMX-repacked weights
        # ("extra buffer types") crash in decode. Load every model without them.
        low_level = llama_cpp.llama_cpp  # what `Llama(...)` calls
        default_params = low_level.llama_model_default_params

        def without_extra_bufts() -> Any:
            params = default_params()
            params.use_extra_bufts = False
            return params

        low_level.llama_model_default_params = without_extra_bufts
        print("note: this llama.cpp build uses AMX, whose repacked weights crash in decode; "
              "models are loaded with use_extra_bufts = False (rebuild with the flags in "
              f"`{INSTALL}` to keep its other repacking)", file=sys.stderr)
    return llama_cpp


# ----------------------------------------------------------------------------- files


@dataclass
class ModelFiles:
    name: str
    folder: Path  # transformers-format fp32 safetensors + tokenizer.json
    ggufs: dict[str, Path] = field(default_factory=dict)  # class -> GGUF
    notes: list[str] = field(default_factory=list)


def cache_root(args: argparse.Namespace) -> Path:
    root = Path(args.cache_dir).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    return root


def _run(cmd: list[str], what: str, env: dict[str, str] | None = None) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode:
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-15:])
        raise SystemExit(f"{what} failed (exit {proc.returncode}):\n{tail}")


def ensure_converter(root: Path, log: Any) -> tuple[Path, dict[str, str]]:
    """llama.cpp's convert_hf_to_gguf.py from the installed binding's sdist, and its env."""
    version = md.version("llama_cpp_python")
    base = root / f"llama.cpp-{version}"
    script = base / "convert_hf_to_gguf.py"
    if not script.is_file():
        log(f"fetching convert_hf_to_gguf.py from the llama-cpp-python {version} sdist")
        with tempfile.TemporaryDirectory() as tmp:
            _run([sys.executable, "-m", "pip", "download", f"llama-cpp-python=={version}",
                  "--no-deps", "--no-binary", ":all:", "-d", tmp, "-q"], "pip download")
            sdist = next(Path(tmp).glob("llama_cpp_python-*.tar.gz"))
            keep = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/")
            with tarfile.open(sdist) as tar:
                members = []
                for m in tar.getmembers():
                    parts = m.name.split("/vendor/llama.cpp/", 1)
                    if len(parts) == 2 and parts[1].startswith(keep) and (m.isfile() or m.isdir()):
                        m.name = parts[1]
                        members.append(m)
                tar.extractall(base, members=members, filter="data")
    env = dict(os.environ)
    vendored = _gguf_py_version(base / "gguf-py" / "pyproject.toml")
    try:
        installed = md.version("gguf")
    except md.PackageNotFoundError:
        installed = None
    if installed != vendored:
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(base / "gguf-py"), env.get("PYTHONPATH")) if p)
    return script, env


def _gguf_py_version(pyproject: Path) -> str | None:
    for line in pyproject.read_text().splitlines():
        if line.startswith("version"):
            return line.split("=", 1)[1].strip().strip('"')
    return None


def convert(converter: tuple[Path, dict[str, str]], folder: Path, outtype: str, out: Path,
            log: Any, pre_tokenizer: str | None = None) -> None:
    if out.is_file():
        return
    log(f"converting {folder.name} to GGUF {outtype}")
    script, env = converter
    if pre_tokenizer:
        env = {**env, "VS_LLAMACPP_PRE_TOKENIZER": pre_tokenizer}
    tmp = out.with_suffix(".tmp")
    _run([sys.executable, "-c", _PATCHED_CONVERTER, str(script), str(folder), "--outtype",
          outtype, "--outfile", str(tmp)], f"convert_hf_to_gguf.py --outtype {outtype}", env)
    tmp.rename(out)


def quantize_gguf(src: Path, ftype_name: str, out: Path, threads: int, log: Any) -> None:
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


def smollm2_sources() -> tuple[Path, Path]:
    """(chatcli's converted folder, the source Q4_1 GGUF) of the default alias."""
    from chatcli import sources
    from chatcli.loader import ensure_converted
    from chatcli.progress import SilentReporter
    from chatcli.registry import load_registry

    spec = load_registry().resolve("smollm2-135m")
    weights = sources.fetch(spec, SilentReporter())
    assert weights.gguf_path is not None
    return ensure_converted(spec, weights, SilentReporter()), weights.gguf_path


def make_qwen_random(target: Path, tokenizer_folder: Path, log: Any) -> Path:
    if (target / ".done").is_file():
        return target
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    log("creating the random-weight model with Qwen2.5-0.5B's config")
    target.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    config = Qwen2Config(**{k: v for k, v in QWEN25_05B.items() if k != "architectures"},
                         bos_token_id=1, eos_token_id=2, pad_token_id=2)
    config.architectures = QWEN25_05B["architectures"]
    model = Qwen2ForCausalLM(config).to(torch.float32).eval()  # std 0.02 normal init
    model.save_pretrained(target, safe_serialization=True)
    for name in TOKENIZER_FILES:
        if (tokenizer_folder / name).is_file():
            shutil.copy(tokenizer_folder / name, target / name)
    (target / ".done").write_text("ok\n")
    return target


def prepare(name: str, classes: list[str], args: argparse.Namespace, log: Any,
            need_ggufs: bool = True) -> ModelFiles:
    root = cache_root(args) / name
    root.mkdir(parents=True, exist_ok=True)
    smol_folder, smol_q41 = smollm2_sources()
    if name == "smollm2":
        files = ModelFiles(name, smol_folder)
    else:
        files = ModelFiles(name, make_qwen_random(root / "hf", smol_folder, log))
    if not need_ggufs:
        for cls in classes:
            files.ggufs[cls] = root / f"{name}-{CLASSES[cls][2]}.gguf"
        if name == "smollm2":
            files.ggufs["int4"] = smol_q41
        return files
    converter = None
    pre = "smollm" if name == "qwen0.5b" else None  # see the module docstring
    need_f32 = any(c in classes for c in ("fp32", "int8")) or (
        "int4" in classes and name != "smollm2")
    f32 = root / f"{name}-F32.gguf"
    if need_f32 or "bf16" in classes:
        converter = ensure_converter(cache_root(args), log)
    if need_f32:
        assert converter is not None
        convert(converter, files.folder, "f32", f32, log, pre)
    for cls in classes:
        kind = CLASSES[cls][2]
        out = root / f"{name}-{kind}.gguf"
        if cls == "fp32":
            out = f32
        elif cls == "bf16":
            assert converter is not None
            convert(converter, files.folder, "bf16", out, log, pre)
        elif cls == "int4" and name == "smollm2":
            out = smol_q41
        else:
            quantize_gguf(f32, kind, out, args.threads, log)
        files.ggufs[cls] = out
    return files


# --------------------------------------------------------------------------- engines


class ChatcliEngine:
    label = "chatcli"

    def __init__(self, folder: Path, cls: str) -> None:
        import torch

        from chatcli.lm.llama import NativeCausalLM

        dtype, mode, _ = CLASSES[cls]
        self.torch = torch
        self.model = NativeCausalLM.from_folder(folder, getattr(torch, dtype))
        self.model.quantize(mode)
        self.precision = f"{dtype.replace('float', 'fp').replace('bfp', 'bf')}" + (
            f" + {mode}" if mode != "none" else "")

    def prefill(self, ids: list[int]) -> tuple[float, float, int]:
        """(seconds to the last position's logits, seconds to the first token, token)."""
        torch = self.torch
        start = time.perf_counter()
        logits, self.cache = self.model.forward(torch.tensor([ids]), None)
        ready = time.perf_counter()
        tok = int(logits[0, -1].argmax())
        return ready - start, time.perf_counter() - start, tok

    def step(self, tok: int) -> int:
        logits, self.cache = self.model.forward(self.torch.tensor([[tok]]), self.cache)
        return int(logits[0, -1].argmax())

    def decode_bytes(self) -> int:
        from chatcli.lm.quant import Dense, Int4Linear, Int8Linear

        def nbytes(lin: Any) -> int:
            if isinstance(lin, Dense):
                tensors = [lin.weight]
            elif isinstance(lin, Int8Linear):
                tensors = [lin.qweight, lin.scales]
            elif isinstance(lin, Int4Linear):
                tensors = [lin.packed, lin.scales_and_zeros]
            else:
                raise TypeError(type(lin))
            if lin.bias is not None:
                tensors.append(lin.bias)
            return sum(t.numel() * t.element_size() for t in tensors)

        m = self.model
        total = nbytes(m.head) + m.norm.numel() * m.norm.element_size()
        for layer in m.layers:
            attn = [layer.qkv] if layer.qkv is not None else [layer.q, layer.k, layer.v]
            mlp = [layer.gate_up] if layer.gate_up is not None else [layer.gate, layer.up]
            total += sum(nbytes(lin) for lin in [*attn, layer.o, *mlp, layer.down])
            total += sum(t.numel() * t.element_size() for t in (layer.input_norm, layer.post_norm))
        return total


class LlamaCppEngine:
    label = "llama.cpp"

    def __init__(self, gguf: Path, cls: str, threads: int, n_ctx: int) -> None:
        llama_cpp = import_llama_cpp()
        import numpy as np

        self.np, self.lib = np, llama_cpp
        self.gguf = gguf
        self.llm = llama_cpp.Llama(
            model_path=str(gguf), n_ctx=n_ctx, n_batch=n_ctx, n_ubatch=512, n_threads=threads,
            n_threads_batch=threads, logits_all=False, verbose=False,
        )
        self.n_vocab = self.llm.n_vocab()
        self.precision = CLASSES[cls][2]

    def _argmax(self) -> int:
        ptr = self.lib.llama_get_logits_ith(self.llm.ctx, -1)
        return int(self.np.ctypeslib.as_array(ptr, shape=(self.n_vocab,)).argmax())

    def prefill(self, ids: list[int]) -> tuple[float, float, int]:
        self.llm.reset()
        start = time.perf_counter()
        self.llm.eval(ids)
        self.lib.llama_get_logits_ith(self.llm.ctx, -1)  # synchronizes
        ready = time.perf_counter()
        tok = self._argmax()
        return ready - start, time.perf_counter() - start, tok

    def step(self, tok: int) -> int:
        self.llm.eval([tok])
        return self._argmax()

    def decode_bytes(self) -> int:
        from gguf import GGUFReader

        tensors = {t.name: int(t.n_bytes) for t in GGUFReader(str(self.gguf)).tensors}
        if "output.weight" in tensors:  # untied: the embedding is only looked up
            tensors.pop("token_embd.weight", None)
        return sum(tensors.values())

    def close(self) -> None:
        self.llm.close()


def load_engine(engine: str, files: ModelFiles, cls: str, threads: int, n_ctx: int) -> Any:
    if engine == "chatcli":
        return ChatcliEngine(files.folder, cls)
    return LlamaCppEngine(files.ggufs[cls], cls, threads, n_ctx)


def greedy(engine: Any, ids: list[int], n: int) -> tuple[float, list[int]]:
    """(decode tok/s over tokens 2..n, the tokens)."""
    _, _, tok = engine.prefill(ids)
    out = [tok]
    start = time.perf_counter()
    for _ in range(n - 1):
        out.append(engine.step(out[-1]))
    return (n - 1) / (time.perf_counter() - start), out


# ------------------------------------------------------------------------ bandwidth


def bandwidth() -> tuple[float, float]:
    """(read GB/s, copy GB/s counting read + write) over a 512 MiB float32 tensor, best of 6."""
    import torch

    src = torch.ones(128 * 1024 * 1024, dtype=torch.float32)
    dst = torch.empty_like(src)
    nbytes = src.numel() * 4
    reads, copies = [], []
    for _ in range(7):
        start = time.perf_counter()
        src.sum()
        reads.append(nbytes / (time.perf_counter() - start) / 1e9)
        start = time.perf_counter()
        dst.copy_(src)
        copies.append(2 * nbytes / (time.perf_counter() - start) / 1e9)
    return max(reads[1:]), max(copies[1:])  # a ceiling: other load only lowers a sample


# ------------------------------------------------------------------------ rss probe


def rss_probe(engine: str, cls: str, model: str, args: argparse.Namespace) -> None:
    files = prepare(model, [cls], args, lambda _m: None, need_ggufs=False)
    ids = prompt_ids(files.folder, RSS_PREFILL)
    if engine == "chatcli":
        import torch

        torch.set_num_threads(args.threads)
    eng = load_engine(engine, files, cls, args.threads, RSS_PREFILL + RSS_DECODE + 16)
    greedy(eng, ids, RSS_DECODE)
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over fork + exec, so a child would
    # report at least the parent's (this benchmark's) resident size.
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines()
                  if line.startswith(("VmHWM:", "VmRSS:")))
    peak = fields.get("VmHWM", str(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)).split()[0]
    print(peak, fields.get("VmRSS", "nan").split()[0])


def peak_rss_mib(engine: str, cls: str, model: str,
                 args: argparse.Namespace) -> tuple[float, float]:
    """(peak RSS, RSS at the end) in MiB of a probe process."""
    cmd = [sys.executable, __file__, "--rss-probe", engine, cls, model,
           "--threads", str(args.threads), "--cache-dir", str(args.cache_dir)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        print(f"rss probe {engine} {cls} {model} failed: {proc.stderr[-500:]}", file=sys.stderr)
        return float("nan"), float("nan")
    peak, end = proc.stdout.split()[-2:]
    return int(peak) / 1024, float(end) / 1024  # KiB


# --------------------------------------------------------------------------- driver


def prompt_ids(folder: Path, n: int) -> list[int]:
    from tokenizers import Tokenizer

    ids = Tokenizer.from_file(str(folder / "tokenizer.json")).encode(TEXT.read_text()).ids
    while len(ids) < n:
        ids = ids + ids
    return ids[:n]


def med(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def run_model(files: ModelFiles, classes: list[str], args: argparse.Namespace,
              log: Any) -> dict[str, Any]:
    import torch

    torch.set_num_threads(args.threads)
    lengths = [int(x) for x in args.prefill.split(",") if x]
    n_ctx = max([*lengths, DECODE_PROMPT + args.tokens, 128]) + 16
    long_ids = prompt_ids(files.folder, max([*lengths, 128, DECODE_PROMPT]))
    decode_prompt = long_ids[:DECODE_PROMPT]
    engines: dict[tuple[str, str], Any] = {}
    res: dict[str, Any] = {"classes": {}, "agreement": {}}
    for cls in classes:
        for name in ("chatcli", "llama.cpp"):
            log(f"{files.name}: loading {name} {cls}")
            eng = load_engine(name, files, cls, args.threads, n_ctx)
            engines[(cls, name)] = eng
            greedy(eng, decode_prompt, 4)  # warm-up
            eng.prefill(long_ids[:128])
        outs = [greedy(engines[(cls, n)], decode_prompt, 16)[1] for n in ("chatcli", "llama.cpp")]
        same = sum(a == b for a, b in zip(*outs, strict=True))
        res["agreement"][cls] = (same, len(outs[0]), outs)
        if args.verbose:
            tok = _tokenizer(files.folder)
            for n, o in zip(("chatcli", "llama.cpp"), outs, strict=True):
                log(f"  {cls} {n:9s} greedy: {tok.decode(o)!r}")
    samples: dict[tuple[str, str], dict[str, list[float]]] = {}

    def measure(cls: str, order: tuple[str, ...], key: str, fn: Any) -> None:
        for name in order:  # both engines back to back: shared-machine drift hits both
            samples.setdefault((cls, name), {}).setdefault(key, []).append(
                fn(engines[(cls, name)]))

    for rnd in range(args.rounds):
        order = ("chatcli", "llama.cpp") if rnd % 2 == 0 else ("llama.cpp", "chatcli")
        for cls in classes:
            measure(cls, order, "decode",
                    lambda e: greedy(e, decode_prompt, args.tokens)[0])
            measure(cls, order, "ttft", lambda e: e.prefill(long_ids[:128])[1] * 1000)
            for n in lengths:
                if n > 512 and rnd >= args.long_rounds:
                    continue
                measure(cls, order, f"prefill{n}",
                        lambda e, n=n: n / e.prefill(long_ids[:n])[0])
        log(f"{files.name}: round {rnd + 1}/{args.rounds} done, {cls_summary(samples)}")
    for cls in classes:
        row: dict[str, Any] = {}
        for name in ("chatcli", "llama.cpp"):
            eng = engines[(cls, name)]
            s = samples[(cls, name)]
            row[name] = {k: med(v) for k, v in s.items()}
            row[name]["bytes"] = eng.decode_bytes()
            row[name]["precision"] = eng.precision
        res["classes"][cls] = row
    for eng in engines.values():
        if isinstance(eng, LlamaCppEngine):
            eng.close()
    engines.clear()
    gc.collect()
    for cls in classes:
        for name in ("chatcli", "llama.cpp"):
            log(f"{files.name}: peak RSS probe {name} {cls}")
            peak, end = peak_rss_mib(name, cls, files.name, args)
            res["classes"][cls][name].update(rss=peak, rss_end=end)
    res["lengths"] = lengths
    return res


def cls_summary(samples: dict[tuple[str, str], dict[str, list[float]]]) -> str:
    parts = []
    for (cls, name), s in samples.items():
        parts.append(f"{cls}/{name} {s['decode'][-1]:.1f} tok/s")
    return ", ".join(parts)


def _tokenizer(folder: Path) -> Any:
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(folder / "tokenizer.json"))


# --------------------------------------------------------------------------- output


def f1(v: float) -> str:
    return "-" if v != v else f"{v:.1f}"


def ratio(a: float, b: float) -> str:
    return "-" if a != a or b != b or b == 0 else f"{a / b:.2f}x"


def model_tables(name: str, res: dict[str, Any], bw: float) -> list[str]:
    lengths = res["lengths"]
    out = [f"#### {name}", "", "Decode (32-token prompt), and as a fraction of the bandwidth "
           f"ceiling ({bw:.1f} GB/s / bytes read per token):", "",
           "| class | chatcli | llama.cpp | chatcli tok/s | llama.cpp tok/s | chatcli / llama.cpp "
           "| chatcli MiB/token | llama.cpp MiB/token | chatcli % of ceiling | "
           "llama.cpp % of ceiling | greedy tokens equal |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
    for cls, row in res["classes"].items():
        c, g = row["chatcli"], row["llama.cpp"]
        ceil_c, ceil_g = bw * 1e9 / c["bytes"], bw * 1e9 / g["bytes"]
        same, n, _ = res["agreement"][cls]
        out.append(
            f"| {cls} | {c['precision']} | {g['precision']} | {f1(c['decode'])} | "
            f"{f1(g['decode'])} | {ratio(c['decode'], g['decode'])} | "
            f"{c['bytes'] / 2**20:.1f} | {g['bytes'] / 2**20:.1f} | "
            f"{c['decode'] / ceil_c:.0%} | {g['decode'] / ceil_g:.0%} | {same}/{n} |")
    head = "| class | " + " | ".join(
        f"{n} chatcli | {n} llama.cpp | {n} ratio" for n in lengths)
    out += ["", "Prefill tok/s (fresh cache, until the last position's logits) and time to first "
            "token for a 128-token prompt:", "",
            head + " | TTFT-128 chatcli ms | TTFT-128 llama.cpp ms | TTFT ratio |",
            "|---|" + "---|" * (3 * len(lengths) + 3)]
    for cls, row in res["classes"].items():
        c, g = row["chatcli"], row["llama.cpp"]
        cells = []
        for n in lengths:
            k = f"prefill{n}"
            cells.append(f"{f1(c.get(k, float('nan')))} | {f1(g.get(k, float('nan')))} | "
                         f"{ratio(c.get(k, float('nan')), g.get(k, float('nan')))}")
        out.append(f"| {cls} | " + " | ".join(cells) +
                   f" | {f1(c['ttft'])} | {f1(g['ttft'])} | {ratio(c['ttft'], g['ttft'])} |")
    out += ["", f"Resident memory (own process: load, prefill {RSS_PREFILL}, decode {RSS_DECODE}; "
            "peak, and what is still resident at the end):", "",
            "| class | chatcli peak MiB | llama.cpp peak MiB | peak ratio | chatcli end MiB | "
            "llama.cpp end MiB |", "|---|---|---|---|---|---|"]
    for cls, row in res["classes"].items():
        c, g = row["chatcli"], row["llama.cpp"]
        out.append(f"| {cls} | {c['rss']:.0f} | {g['rss']:.0f} | {ratio(c['rss'], g['rss'])} | "
                   f"{c['rss_end']:.0f} | {g['rss_end']:.0f} |")
    return out


def verdicts(res: dict[str, Any]) -> list[str]:
    rows = res["classes"]
    lines = []

    def line(text: str, value: float, target: float, higher: bool) -> None:
        if value != value:
            lines.append(f"- {text}: not measured")
            return
        ok = value >= target if higher else value <= target
        sign = ">=" if higher else "<="
        lines.append(f"- {text}: **{value:.2f}x** (target {sign} {target}): "
                     f"{'met' if ok else 'MISSED'}")

    def r(cls: str, key: str) -> float:
        if cls not in rows:
            return float("nan")
        c, g = rows[cls]["chatcli"].get(key, float("nan")), rows[cls]["llama.cpp"].get(
            key, float("nan"))
        return c / g

    line("decode, chatcli int8 / llama.cpp Q8_0", r("int8", "decode"), 0.7, True)
    line("decode, chatcli bf16 / llama.cpp BF16", r("bf16", "decode"), 0.7, True)
    line("prefill 512, chatcli bf16 / llama.cpp BF16", r("bf16", "prefill512"), 1.0, True)
    for cls in ("bf16", "int8"):
        line(f"TTFT-128 ({cls}), chatcli / llama.cpp", r(cls, "ttft"), 1.0, False)
    return lines


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(ALL_MODELS))
    parser.add_argument("--classes", default=",".join(ALL_CLASSES))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--prefill", default="128,512,2048")
    parser.add_argument("--long-rounds", type=int, default=1,
                        help="rounds that measure prefill lengths above 512")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cache-dir", default="~/.cache/chatcli-bench")
    parser.add_argument("--verbose", action="store_true")
    parser.add_argument("--write", type=Path, default=None)
    parser.add_argument("--rss-probe", nargs=3, metavar=("ENGINE", "CLASS", "MODEL"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rss_probe:
        rss_probe(*args.rss_probe, args)
        return
    import_llama_cpp()
    models = [m for m in args.models.split(",") if m]
    classes = [c for c in args.classes.split(",") if c]
    for m in models:
        if m not in ALL_MODELS:
            parser.error(f"unknown model {m!r}; choose from {', '.join(ALL_MODELS)}")
    for c in classes:
        if c not in CLASSES:
            parser.error(f"unknown class {c!r}; choose from {', '.join(ALL_CLASSES)}")

    started = time.perf_counter()
    load_start = os.getloadavg()[0]

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - started:6.1f}s] {msg}", file=sys.stderr, flush=True)

    import torch

    torch.set_num_threads(args.threads)
    all_files = {m: prepare(m, classes, args, log) for m in models}
    bw_start = bandwidth()
    log(f"memory bandwidth: read {bw_start[0]:.1f} GB/s, copy {bw_start[1]:.1f} GB/s")
    results = {}
    for m in models:
        results[m] = run_model(all_files[m], classes, args, log)
    bw_end = bandwidth()
    log(f"memory bandwidth: read {bw_end[0]:.1f} GB/s, copy {bw_end[1]:.1f} GB/s")
    bw = max(bw_start[0], bw_end[0])

    cmd = "python bench/vs_llamacpp.py " + " ".join(sys.argv[1:])
    lines = [
        f"`{cmd.strip()}` — {cpu_model()}, {args.threads} threads on both sides, torch "
        f"{torch.__version__}, llama-cpp-python {md.version('llama_cpp_python')}, "
        f"{args.rounds} interleaved rounds (medians), decode {args.tokens} tokens; prefill "
        f"lengths above 512 measured in {min(args.long_rounds, args.rounds)} round(s); "
        f"load average {load_start:.2f} at the start, {os.getloadavg()[0]:.2f} at the end.",
        "",
        f"Memory bandwidth (torch, {args.threads} threads, 512 MiB float32, best of 6): read "
        f"{bw_start[0]:.1f} GB/s at the start, {bw_end[0]:.1f} GB/s at the end; copy "
        f"{bw_start[1]:.1f} / {bw_end[1]:.1f} GB/s (read + write). Ceiling uses read "
        f"{bw:.1f} GB/s.",
        "",
    ]
    for m in models:
        lines += [*model_tables(m, results[m], bw), ""]
    if "smollm2" in results:
        lines += ["Targets (smollm2, the default model):", "", *verdicts(results["smollm2"])]
    lines += [
        "",
        "int4 is chatcli's group-32 asymmetric int4 (scale + minimum per group, the form of "
        "GGUF's Q4_1, output head at int8) against Q4_1"
        + (" (smollm2: the original GGUF, token embedding / head Q8_0)" if "smollm2" in models
           else "") + ". llama.cpp runs with the binding's defaults otherwise (flash attention "
        "off, f16 KV cache, mmap); chatcli's KV cache is in the activation dtype.",
    ]
    body = "\n".join(lines)
    print(body)
    if args.write:
        write_section(args.write, "vs_llamacpp", body)
    log(f"total {time.perf_counter() - started:.0f}s")


if __name__ == "__main__":
    main()
