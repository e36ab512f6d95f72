"""chatcli reading GGUF files at their stored precision against llama.cpp on the same
files, for random-weight models of bigger shapes.

Usage: python bench/gguf_shapes.py [--shapes smollm2-360m,smollm2-1.7b,qwen2.5-0.5b,qwen3-0.6b]
           [--types Q4_K_M,Q4_0,Q8_0] [--rounds 3] [--tokens 64] [--threads 2]
           [--compiled [--quick]] [--cache-dir ~/.cache/chatcli-bench] [--files-only]
           [--write docs/benchmarks.md] [--section gguf_shapes]

The files (bench/gguf_shapes_files.py): per shape, random weights (seed 0) with the real
model's architecture config and SmolLM2's tokenizer, converted to an F16 GGUF by
llama.cpp's own converter and quantized to each type by llama.cpp's own quantizer;
made once under --cache-dir (minutes for the 1.7B shape), reused by later runs;
--files-only makes them (and with --compiled the compiled steps) and measures nothing.

Per (shape, type), in one process, interleaved rounds (each runs every engine, the order
reversed every other round; medians), decode tokens/s after a 32-token prompt:
- chatcli gguf: the file's quantized blocks read as stored into chatcli's linears
  (chatcli/lm/gguf_weights.py), bf16 activations, eager;
- with --compiled, chatcli gguf compiled: the same model through its compiled decode
  step, built once per file into --cache-dir, in a process of its own before any
  measuring (autotuned as `chatcli compile`; --quick builds without autotuning,
  compiled.TEST_OPTIONS, into other files: trials only);
- llama.cpp on the same file.
Per row: the ratio to llama.cpp on the same file and to llama.cpp's fastest type of the
same shape (of the types run); each engine alone in a fresh process, the resident memory
loading and decoding 16 tokens added (VmRSS, and the peak VmHWM, less VmRSS before
loading) and that over the file's size; the fraction of the machine's memory bandwidth
the decode reaches: bytes a token reads (the file's tensor data, a tied embedding counted
once: llama.cpp's `decode_bytes`, the same figure for every engine) x tokens/s / the
streaming-read bandwidth with the same threads (bench/bandwidth.py: the best of five
torch sums over 1 GiB of float32), measured before and after the rounds, the higher
of the two used (other load only lowers it).
"""

from __future__ import annotations

import argparse
import gc
import importlib.metadata as md
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from bandwidth import read_bandwidth
from engine_llamacpp import LlamaCppEngine, import_llama_cpp
from gguf_shapes_files import SHAPES, ShapeFiles, disk_bytes, prepare
from harness import (  # bench/ is on sys.path when run as a script
    Conditions,
    add_write_options,
    format_ratio,
    greedy,
    interleave,
    median,
    memory_added,
    process_memory_kib,
    ratio,
    run_probe,
    write_report,
)

TEXT = Path(__file__).parent / "data" / "english.txt"
DECODE_PROMPT = 32
PROBE_TOKENS = 16
DEFAULT_TYPES = ("Q4_K_M", "Q4_0", "Q8_0")
LLAMA = "llama.cpp"
EAGER, COMPILED = "chatcli gguf", "chatcli gguf compiled"
MIB = 2**20


def parse_list(text: str, allowed: list[str] | None, what: str) -> list[str]:
    items = [t.strip() for t in text.split(",") if t.strip()]
    bad = [t for t in items if allowed is not None and t not in allowed]
    if not items or bad:
        raise SystemExit(f"unknown {what}: {', '.join(bad) or '(none given)'}; "
                         f"choose from {', '.join(allowed or [])}")
    return items


def check_types(types: list[str]) -> None:
    llama_cpp = import_llama_cpp()
    bad = [t for t in types if not hasattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{t}")]
    if bad:
        raise SystemExit(f"llama.cpp's quantizer has no type {', '.join(bad)}; use names "
                         "such as Q4_K_M, Q4_0, Q8_0, Q5_K_M, Q6_K (LLAMA_FTYPE_MOSTLY_<TYPE>)")


def shape_files(shape: str, types: list[str], args: argparse.Namespace, log: Any,
                need_ggufs: bool = True) -> ShapeFiles:
    root = Path(args.cache_dir).expanduser()
    return prepare(shape, types, root, args.threads, log, need_ggufs)


def package(files: ShapeFiles, kind: str, quick: bool) -> Path:
    """Where the compiled step of the `kind` file lives (the quick one apart)."""
    suffix = "-quick" if quick else ""
    return files.folder.parent / "compiled" / f"{files.shape}-{kind}{suffix}.pt2"


def load(name: str, files: ShapeFiles, kind: str, args: argparse.Namespace,
         log: Any = None) -> Any:
    """An engine for the greedy loop; the compiled step is built here when `log` is given
    (`build_step`'s process) and its package does not serve this model, torch and CPU."""
    gguf = files.ggufs[kind]
    if name == LLAMA:
        return LlamaCppEngine(gguf, kind, args.threads, 512)
    import torch

    from chatcli import paths
    from chatcli.lm import block_kernels, gguf_weights
    from chatcli.lm.native import NativeLanguageModel

    block_kernels.use_folder(paths.cache_dir() / "kernels")  # as the loader does

    model = gguf_weights.load_model(gguf, files.config, torch.bfloat16)
    if name == EAGER:
        return SimpleNamespace(lm=NativeLanguageModel(model), feed=None)
    from chatcli.lm import compiled
    from chatcli.loader import weights_id

    path, model_id = package(files, kind, args.quick), weights_id(files.folder, gguf)
    lm = compiled.CompiledLanguageModel.open(model, path, model_id)
    if not lm.compiled and log is not None:
        log(f"building the compiled step of {gguf.name} ({lm.reason})")
        start = time.perf_counter()
        options = compiled.TEST_OPTIONS if args.quick else compiled.AUTOTUNE_OPTIONS
        compiled.build(model, path, model_id=model_id, options=options)
        files.record(f"compile {kind}{' quick' if args.quick else ''}",
                     time.perf_counter() - start)
        lm = compiled.CompiledLanguageModel.open(model, path, model_id)
    if not lm.compiled:
        raise SystemExit(f"{gguf.name}: the compiled step does not load: {lm.reason}")
    return SimpleNamespace(lm=lm, feed=None)


def build_step(shape: str, kind: str, args: argparse.Namespace, log: Any) -> None:
    """The compiled step of the `kind` file, built unless it serves already, in a process
    of its own: the measuring process then holds none of the compiler's state, threads or
    memory."""
    cmd = [sys.executable, __file__, "--build-step", "--shapes", shape, "--types", kind,
           "--threads", str(args.threads), "--cache-dir", str(args.cache_dir)]
    out = subprocess.run(cmd + (["--quick"] if args.quick else []), text=True, check=False,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    for line in out.stderr.splitlines():
        log(line)
    if out.returncode != 0:
        raise SystemExit(f"building the compiled step of {shape} {kind} failed")


def prompt_ids(files: ShapeFiles, n: int) -> list[int]:
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(files.folder / "tokenizer.json"))
    ids = tokenizer.encode(TEXT.read_text()).ids
    while len(ids) < n:
        ids = ids + ids
    return ids[:n]


def probe(name: str, shape: str, kind: str, args: argparse.Namespace) -> None:
    """In a process of its own: resident memory before loading (everything imported) and
    after loading and decoding. llama.cpp's process never imports torch."""
    if name != LLAMA:
        import torch

        import chatcli.lm.compiled
        import chatcli.lm.gguf_weights
        import chatcli.lm.native  # noqa: F401

        torch.set_num_threads(args.threads)
    files = shape_files(shape, [kind], args, None, need_ggufs=False)
    prompt = prompt_ids(files, DECODE_PROMPT)
    before = process_memory_kib()
    engine = load(name, files, kind, args)
    greedy(engine.lm, prompt, PROBE_TOKENS, feed=engine.feed)
    after = process_memory_kib()
    print(json.dumps({"before_kib": before, "memory_kib": after,
                      "torch_imported": "torch" in sys.modules}))


def probe_alone(name: str, shape: str, kind: str, args: argparse.Namespace
                ) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--probe", name, "--shapes", shape, "--types", kind,
           "--threads", str(args.threads), "--cache-dir", str(args.cache_dir)]
    return run_probe(cmd + (["--quick"] if args.quick else []), f"{name} {shape} {kind}")


def tensor_types(path: Path) -> str:
    from chatcli.lm import block_kernels
    from chatcli.lm.gguf_file import read_header, runs_as

    blocks = block_kernels.unavailable(build=False) is None

    return "; ".join(runs_as(read_header(path), blocks=blocks))


def build_table(files: dict[str, ShapeFiles]) -> list[str]:
    """How long each shape's files took to make, and the disk its folder takes."""
    lines = ["| shape | files built (s) | disk MiB |", "|---|---|---|"]
    for shape, made in files.items():
        steps = ", ".join(f"{step} {s:.0f}" for step, s in made.build_s.items())
        lines.append(f"| {shape} | {steps or '-'} | "
                     f"{disk_bytes(made.folder.parent) / MIB:.0f} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default=",".join(SHAPES))
    parser.add_argument("--types", default=",".join(DEFAULT_TYPES))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--compiled", action="store_true",
                        help="measure chatcli's compiled decode step too (built once per file)")
    parser.add_argument("--quick", action="store_true",
                        help="compiled steps without autotuning (for trials)")
    parser.add_argument("--cache-dir", default="~/.cache/chatcli-bench")
    parser.add_argument("--files-only", action="store_true",
                        help="make the files (and with --compiled the compiled steps), "
                             "say how long that took, measure nothing")
    parser.add_argument("--probe", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--build-step", action="store_true", help=argparse.SUPPRESS)
    add_write_options(parser, "gguf_shapes")
    args = parser.parse_args()
    shapes = parse_list(args.shapes, list(SHAPES), "shape")
    types = parse_list(args.types, None, "type")
    check_types(types)
    if args.probe:
        probe(args.probe, shapes[0], types[0], args)
        return
    if args.build_step:
        import torch

        torch.set_num_threads(args.threads)
        files = shape_files(shapes[0], types, args, None, need_ggufs=False)
        load(COMPILED, files, types[0], args, lambda msg: print(msg, file=sys.stderr))
        return
    started = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - started:6.1f}s] {msg}", file=sys.stderr, flush=True)

    import torch

    torch.set_num_threads(args.threads)
    names = [EAGER] + ([COMPILED] if args.compiled else []) + [LLAMA]
    files = {s: shape_files(s, types, args, log) for s in shapes}
    for shape in shapes if args.compiled else []:
        for kind in types:
            build_step(shape, kind, args, log)
    if args.files_only:
        print("\n".join(build_table(files)))
        return
    conditions = Conditions.observe()
    bandwidth_start = read_bandwidth(args.threads)
    log(f"streaming read: {bandwidth_start:.1f} GB/s with {args.threads} threads")
    decode: dict[tuple[str, str, str], float] = {}
    read: dict[tuple[str, str], int] = {}  # bytes a token reads
    for shape in shapes:
        prompt = prompt_ids(files[shape], DECODE_PROMPT)
        for kind in types:
            engines = {}
            for n in names:
                log(f"loading {n} {shape} {kind}")
                engines[n] = eng = load(n, files[shape], kind, args)
                greedy(eng.lm, prompt, 8, feed=eng.feed)  # warm-up
            read[shape, kind] = engines[LLAMA].decode_bytes()
            variants = {n: (lambda e=engines[n], p=prompt: greedy(
                e.lm, p, args.tokens, feed=e.feed).decode_tokens_per_s)
                        for n in names}
            samples = interleave(variants, args.rounds, alternate=True)
            for n in names:
                decode[shape, kind, n] = median(samples[n])
                log(f"{shape} {kind} {n}: decode {decode[shape, kind, n]:.1f} tok/s")
            engines[LLAMA].close()
            engines.clear()
            gc.collect()
    conditions.finish()
    bandwidth_end = read_bandwidth(args.threads)
    bandwidth = max(bandwidth_start, bandwidth_end)  # other load only lowers it
    log(f"streaming read: {bandwidth_end:.1f} GB/s with {args.threads} threads")
    probes = {}
    for shape in shapes:
        for kind in types:
            for n in names:
                log(f"probing {n} {shape} {kind} alone")
                probes[shape, kind, n] = probe_alone(n, shape, kind, args)

    cmd = "python bench/gguf_shapes.py " + " ".join(sys.argv[1:])
    compiled_words = (" (the compiled steps built without autotuning: --quick)"
                      if args.compiled and args.quick else "")
    lines = [
        f"`{cmd.strip()}` — {args.threads} threads on both sides, torch {torch.__version__}, "
        f"llama-cpp-python {md.version('llama_cpp_python')}, {args.rounds} interleaved rounds "
        f"(medians), decode {args.tokens} tokens after a {DECODE_PROMPT}-token prompt"
        f"{compiled_words}; streaming read {bandwidth_start:.1f} GB/s before the rounds, "
        f"{bandwidth_end:.1f} after ({args.threads} threads; the higher is used); "
        f"{conditions.describe()}.",
        "",
        "| shape | type | file MiB | engine | decode tok/s | vs llama.cpp same file | "
        "vs llama.cpp fastest | model RSS MiB | RSS / file | load peak MiB | "
        "MiB read / token | of bandwidth |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    best: dict[str, tuple[float, str]] = {}
    for shape in shapes:
        fastest = max(types, key=lambda k: decode[shape, k, LLAMA])
        top = decode[shape, fastest, LLAMA]
        for kind in types:
            size = files[shape].ggufs[kind].stat().st_size
            for n in names:
                tps = decode[shape, kind, n]
                rss, peak = memory_added(probes[shape, kind, n])
                share = ratio(read[shape, kind] * tps, bandwidth * 1e9)
                if n != LLAMA and (shape not in best or tps > best[shape][0]):
                    best[shape] = (tps, f"{n} {kind}")
                lines.append(
                    f"| {shape} | {kind} | {size / MIB:.0f} | {n} | {tps:.1f} | "
                    f"{format_ratio(tps, decode[shape, kind, LLAMA])} | "
                    f"{format_ratio(tps, top)} ({fastest}) | {rss / MIB:.0f} | "
                    f"{rss / size:.2f} | {peak / MIB:.0f} | {read[shape, kind] / MIB:.0f} | "
                    f"{share:.0%} |")
    lines += [
        "",
        "Model RSS: the resident memory of a process running that engine alone after "
        f"loading and decoding {PROBE_TOKENS} tokens, less what it held before loading "
        "(imports done); load peak: the highest resident memory, less the same. MiB read / "
        "token: the file's tensor data, a tied embedding counted once (the same figure for "
        "every engine of a file); of bandwidth: that x tok/s / the streaming read. "
        "Weights: random (seed 0) with each real model's architecture config and SmolLM2's "
        "tokenizer; llama.cpp's converter (F16) and quantizer (bench/gguf_shapes_files.py).",
        "",
        "Best chatcli engine per shape against llama.cpp's fastest type (target >= 1.0x):"]
    for shape in shapes:
        fastest = max(types, key=lambda k: decode[shape, k, LLAMA])
        tps, what = best[shape]
        lines.append(f"- {shape}: {what} {tps:.1f} tok/s = "
                     f"{format_ratio(tps, decode[shape, fastest, LLAMA])} llama.cpp {fastest} "
                     f"({decode[shape, fastest, LLAMA]:.1f})")
    lines += ["", "What each file holds and what chatcli runs it as:"]
    for shape in shapes:
        for kind in types:
            lines.append(f"- {shape} {kind}: {tensor_types(files[shape].ggufs[kind])}")
    lines += ["", *build_table(files)]
    body = "\n".join(lines)
    print(body)
    write_report(args, body)
    log(f"total {time.perf_counter() - started:.0f}s")


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
