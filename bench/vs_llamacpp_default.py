"""The default answer and the exact mode against llama.cpp's variants of the default model.

Usage: python bench/vs_llamacpp_default.py [--rounds 5] [--tokens 64] [--threads 2]
           [--lineup NAME,...] [--cache-dir ~/.cache/chatcli-bench]
           [--write docs/benchmarks.md] [--section vs_llamacpp_default]

Issue #13's comparison, in one process, interleaved (each round runs every engine, the
order reversed every other round; medians): what `chatcli ask` runs with no flags —
bf16 + int4 through the compiled decode step (`chatcli compile`) — and the other chatcli
modes, against llama.cpp on the same weights at every precision a user would pick
instead: the model's own Q4_1 GGUF, Q4_0 and Q8_0 made from the F32 conversion with
llama.cpp's own quantizer, and BF16. It reports decode tokens/s after a 32-token prompt
and the time to the first token of a 128-token prompt, and the verdicts:
- default answer ÷ llama.cpp's *fastest* ≤ 8-bit variant (target ≥ 1.0);
- exact mode (`--quantize none`, bit-identical to transformers; bf16 and fp32) ÷
  llama.cpp BF16 (target ≥ 0.7);
- TTFT-128 per precision class, chatcli ÷ llama.cpp (target ≤ 1.0).
The compiled packages must exist: `chatcli compile` and `chatcli compile --quantize
int8` (the script says so otherwise). Engines and weights: bench/engine_chatcli.py,
bench/engine_llamacpp.py, bench/vs_llamacpp_files.py.
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from engine_chatcli import ChatcliEngine
from engine_llamacpp import LlamaCppEngine, import_llama_cpp
from harness import (  # bench/ is on sys.path when run as a script
    Conditions,
    add_write_options,
    format_ratio,
    greedy,
    interleave,
    median,
    ratio,
    write_report,
)
from vs_llamacpp_files import prepare

TEXT = Path(__file__).parent / "data" / "english.txt"
DECODE_PROMPT = 32
# name -> (what it is, class, engine factory arguments)
LINEUP: dict[str, tuple[str, str, tuple[Any, ...]]] = {
    "chatcli default": ("bf16 + int4, compiled step (`chatcli ask`)", "int4",
                        ("chatcli", "bfloat16", "int4", True)),
    "chatcli int4 eager": ("bf16 + int4, no compiled step", "int4",
                           ("chatcli", "bfloat16", "int4", False)),
    "chatcli int8": ("bf16 + int8, compiled step", "int8", ("chatcli", "bfloat16", "int8", True)),
    "chatcli exact bf16": ("`--quantize none --dtype bfloat16`", "bf16",
                           ("chatcli", "bfloat16", "none", False)),
    "chatcli exact fp32": ("`--quantize none --dtype float32`", "fp32",
                           ("chatcli", "float32", "none", False)),
    "llama.cpp Q4_1": ("the model's own GGUF", "int4", ("llama.cpp", "Q4_1")),
    "llama.cpp Q4_0": ("requantized by llama.cpp", "int4", ("llama.cpp", "Q4_0")),
    "llama.cpp Q8_0": ("requantized by llama.cpp", "int8", ("llama.cpp", "Q8_0")),
    "llama.cpp BF16": ("converted by llama.cpp", "bf16", ("llama.cpp", "BF16")),
}
LOW_BIT = ("llama.cpp Q4_1", "llama.cpp Q4_0", "llama.cpp Q8_0")


def prompt_ids(folder: Path, n: int) -> list[int]:
    from tokenizers import Tokenizer

    ids = Tokenizer.from_file(str(folder / "tokenizer.json")).encode(TEXT.read_text()).ids
    while len(ids) < n:
        ids = ids + ids
    return ids[:n]


def load(args: tuple[Any, ...], files: Any, threads: int, n_ctx: int) -> Any:
    if args[0] == "chatcli":
        return ChatcliEngine(files.folder, *args[1:])
    return LlamaCppEngine(files.ggufs[args[1]], args[1], threads, n_ctx)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--lineup", default=",".join(LINEUP))
    parser.add_argument("--cache-dir", default="~/.cache/chatcli-bench")
    add_write_options(parser, "vs_llamacpp_default")
    args = parser.parse_args()
    names = [n for n in args.lineup.split(",") if n]
    for n in names:
        if n not in LINEUP:
            parser.error(f"unknown engine {n!r}; choose from {', '.join(LINEUP)}")
    import_llama_cpp()
    started = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - started:6.1f}s] {msg}", file=sys.stderr, flush=True)

    import torch

    torch.set_num_threads(args.threads)
    kinds = sorted({LINEUP[n][2][1] for n in names if LINEUP[n][2][0] == "llama.cpp"})
    root = Path(args.cache_dir).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    files = prepare("smollm2", kinds, root, args.threads, log)
    conditions = Conditions.observe()
    ids128 = prompt_ids(files.folder, 128)
    prompt = ids128[:DECODE_PROMPT]
    n_ctx = 256
    engines = {}
    for n in names:
        log(f"loading {n}")
        engines[n] = eng = load(LINEUP[n][2], files, args.threads, n_ctx)
        greedy(eng.lm, prompt, 8, feed=eng.feed)  # warm-up (a package's first call loads it)
        greedy(eng.lm, ids128, 1, feed=eng.feed)

    measures: dict[str, Callable[[Any], float]] = {
        "decode": lambda e: greedy(e.lm, prompt, args.tokens, feed=e.feed).decode_tokens_per_s,
        "ttft": lambda e: greedy(e.lm, ids128, 1, feed=e.feed).first_token_s * 1000,
    }
    variants = {(n, key): (lambda fn=fn, e=engines[n]: fn(e))
                for n in names for key, fn in measures.items()}
    samples = interleave(variants, args.rounds, alternate=True,
                         after_round=lambda rnd, s: log(f"round {rnd + 1}/{args.rounds} done"))
    conditions.finish()
    res = {n: {key: median(samples[(n, key)]) for key in measures} for n in names}
    for n in names:
        log(f"{n}: decode {res[n]['decode']:.1f} tok/s, TTFT-128 {res[n]['ttft']:.1f} ms")

    cmd = "python bench/vs_llamacpp_default.py " + " ".join(sys.argv[1:])
    lines = [
        f"`{cmd.strip()}` — SmolLM2-135M-Instruct, {args.threads} threads on both sides, "
        f"torch {torch.__version__}, llama-cpp-python {md.version('llama_cpp_python')}, "
        f"{args.rounds} interleaved rounds (medians), decode {args.tokens} tokens after a "
        f"{DECODE_PROMPT}-token prompt; {conditions.describe()}.", "",
        "| engine | what | class | decode tok/s | TTFT-128 ms |", "|---|---|---|---|---|"]
    for n in names:
        what, cls, _ = LINEUP[n]
        lines.append(f"| {n} | {what} | {cls} | {res[n]['decode']:.1f} | {res[n]['ttft']:.1f} |")
    lines += ["", "Verdicts:", ""]

    def verdict(text: str, value: float, target: float, higher: bool) -> None:
        if value != value:
            lines.append(f"- {text}: not measured")
            return
        ok = value >= target if higher else value <= target
        lines.append(f"- {text}: **{value:.2f}x** (target {'>=' if higher else '<='} "
                     f"{target}): {'met' if ok else 'MISSED'}")

    low = [n for n in LOW_BIT if n in res]
    if "chatcli default" in res and low:
        best = max(low, key=lambda n: res[n]["decode"])
        verdict(f"decode, chatcli default / fastest llama.cpp <= 8-bit ({best})",
                ratio(res["chatcli default"]["decode"], res[best]["decode"]), 1.0, True)
    for exact in ("chatcli exact bf16", "chatcli exact fp32"):
        if exact in res and "llama.cpp BF16" in res:
            verdict(f"decode, {exact} / llama.cpp BF16",
                    ratio(res[exact]["decode"], res["llama.cpp BF16"]["decode"]), 0.7, True)
    for ours, theirs in (("chatcli default", "llama.cpp Q4_1"), ("chatcli int8", "llama.cpp Q8_0"),
                         ("chatcli exact bf16", "llama.cpp BF16")):
        if ours in res and theirs in res:
            verdict(f"TTFT-128, {ours} / {theirs}",
                    ratio(res[ours]["ttft"], res[theirs]["ttft"]), 1.0, False)
    if "chatcli default" in res and "chatcli int4 eager" in res:
        gain = format_ratio(res["chatcli default"]["decode"], res["chatcli int4 eager"]["decode"])
        lines.append(f"- the compiled step's gain: default / int4 eager decode {gain}")
    body = "\n".join(lines)
    print(body)
    write_report(args, body)
    log(f"total {time.perf_counter() - started:.0f}s")


if __name__ == "__main__":
    main()
