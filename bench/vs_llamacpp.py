"""chatcli's native engine vs llama.cpp on the same weights, per precision class.

Usage: python bench/vs_llamacpp.py [--models smollm2,qwen0.5b] [--rounds 3] [--tokens 64]
                                   [--prefill 128,512,2048] [--long-rounds 1]
                                   [--classes fp32,bf16,int8,int4] [--threads 2]
                                   [--cache-dir ~/.cache/chatcli-bench] [--verbose]
                                   [--write docs/benchmarks.md] [--section vs_llamacpp]

llama.cpp is reached through its Python binding, an optional dev dependency:
    pip install -c constraints.txt llama-cpp-python==0.3.36

What is measured and how (engines, precision classes, models, the GGUF conversion,
each figure, the targets) is written in docs/benchmarks.md, "chatcli vs llama.cpp".
This module is the driver and the report: the engines are bench/engine_chatcli.py and
bench/engine_llamacpp.py, the weights bench/vs_llamacpp_files.py (with
bench/gguf_converter.py), the rounds, greedy loop and medians bench/harness.py.
With --write, the output replaces the "vs_llamacpp" section of the file (appended if
absent). What `chatcli ask` runs by default (int4 through the compiled decode step)
against llama.cpp's fastest <= 8-bit variant, and the exact mode against BF16, is
bench/vs_llamacpp_default.py.
"""

from __future__ import annotations

import argparse
import gc
import importlib.metadata as md
import resource
import subprocess
import sys
import time
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
from vs_llamacpp_files import MODELS, ModelFiles, prepare

TEXT = Path(__file__).parent / "data" / "english.txt"
DECODE_PROMPT = 32
RSS_PREFILL, RSS_DECODE = 512, 32
ENGINES = ("chatcli", "llama.cpp")
ALL_CLASSES = ("fp32", "bf16", "int8", "int4")
# class -> (chatcli dtype, chatcli quantize, llama.cpp GGUF type)
CLASSES: dict[str, tuple[str, str, str]] = {
    "fp32": ("float32", "none", "F32"),
    "bf16": ("bfloat16", "none", "BF16"),
    "int8": ("bfloat16", "int8", "Q8_0"),
    "int4": ("bfloat16", "int4", "Q4_1"),
}


def cache_root(args: argparse.Namespace) -> Path:
    root = Path(args.cache_dir).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    return root


def prepare_model(name: str, classes: list[str], args: argparse.Namespace, log: Any,
                  need_ggufs: bool = True) -> ModelFiles:
    kinds = [CLASSES[cls][2] for cls in classes]
    return prepare(name, kinds, cache_root(args), args.threads, log, need_ggufs)


def load_engine(engine: str, files: ModelFiles, cls: str, threads: int, n_ctx: int) -> Any:
    dtype, quantize, kind = CLASSES[cls]
    if engine == "chatcli":
        return ChatcliEngine(files.folder, dtype, quantize)
    return LlamaCppEngine(files.ggufs[kind], kind, threads, n_ctx)


def decode(engine: Any, ids: list[int], n: int) -> Any:
    """The harness's greedy loop over either engine."""
    return greedy(engine.lm, ids, n, feed=engine.feed)


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
    files = prepare_model(model, [cls], args, lambda _m: None, need_ggufs=False)
    ids = prompt_ids(files.folder, RSS_PREFILL)
    if engine == "chatcli":
        import torch

        torch.set_num_threads(args.threads)
    eng = load_engine(engine, files, cls, args.threads, RSS_PREFILL + RSS_DECODE + 16)
    decode(eng, ids, RSS_DECODE)
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
    ids = _tokenizer(folder).encode(TEXT.read_text()).ids
    while len(ids) < n:
        ids = ids + ids
    return ids[:n]


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
        for name in ENGINES:
            log(f"{files.name}: loading {name} {cls}")
            eng = load_engine(name, files, cls, args.threads, n_ctx)
            engines[(cls, name)] = eng
            decode(eng, decode_prompt, 4)  # warm-up
            decode(eng, long_ids[:128], 1)
        outs = [decode(engines[(cls, n)], decode_prompt, 16).tokens for n in ENGINES]
        same = sum(a == b for a, b in zip(*outs, strict=True))
        res["agreement"][cls] = (same, len(outs[0]), outs)
        if args.verbose:
            tok = _tokenizer(files.folder)
            for n, o in zip(ENGINES, outs, strict=True):
                log(f"  {cls} {n:9s} greedy: {tok.decode(o)!r}")

    # Each measurement on both engines back to back (shared-machine drift hits both),
    # the order reversed every other round; prefills above 512 only in --long-rounds.
    measurements: dict[str, Any] = {
        "decode": lambda e: decode(e, decode_prompt, args.tokens).decode_tokens_per_s,
        "ttft": lambda e: decode(e, long_ids[:128], 1).first_token_s * 1000,
    }
    for n in lengths:
        measurements[f"prefill{n}"] = lambda e, n=n: n / decode(e, long_ids[:n], 1).prefill_s
    variants = {(cls, key, name): (lambda fn=fn, eng=engines[(cls, name)]: fn(eng))
                for cls in classes for key, fn in measurements.items() for name in ENGINES}
    long_keys = {f"prefill{n}" for n in lengths if n > 512}
    samples = interleave(
        variants, args.rounds, alternate=True,
        skip=lambda rnd, v: v[1] in long_keys and rnd >= args.long_rounds,
        after_round=lambda rnd, s: log(f"{files.name}: round {rnd + 1}/{args.rounds} done, "
                                       f"{decode_summary(s)}"))
    for cls in classes:
        row: dict[str, Any] = {}
        for name in ENGINES:
            eng = engines[(cls, name)]
            row[name] = {key: median(samples[(cls, key, name)]) for key in measurements}
            row[name]["bytes"] = eng.decode_bytes()
            row[name]["precision"] = eng.precision
        res["classes"][cls] = row
    for eng in engines.values():
        eng.close()
    engines.clear()
    gc.collect()
    for cls in classes:
        for name in ENGINES:
            log(f"{files.name}: peak RSS probe {name} {cls}")
            peak, end = peak_rss_mib(name, cls, files.name, args)
            res["classes"][cls][name].update(rss=peak, rss_end=end)
    res["lengths"] = lengths
    return res


def decode_summary(samples: dict[tuple[str, str, str], list[float]]) -> str:
    return ", ".join(f"{cls}/{name} {s[-1]:.1f} tok/s"
                     for (cls, key, name), s in samples.items() if key == "decode" and s)


def _tokenizer(folder: Path) -> Any:
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(folder / "tokenizer.json"))


# --------------------------------------------------------------------------- output


def f1(v: float) -> str:
    return "-" if v != v else f"{v:.1f}"


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
            f"{f1(g['decode'])} | {format_ratio(c['decode'], g['decode'])} | "
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
            cells.append(f"{f1(c[k])} | {f1(g[k])} | {format_ratio(c[k], g[k])}")
        out.append(f"| {cls} | " + " | ".join(cells) +
                   f" | {f1(c['ttft'])} | {f1(g['ttft'])} | {format_ratio(c['ttft'], g['ttft'])} |")
    out += ["", f"Resident memory (own process: load, prefill {RSS_PREFILL}, decode {RSS_DECODE}; "
            "peak, and what is still resident at the end):", "",
            "| class | chatcli peak MiB | llama.cpp peak MiB | peak ratio | chatcli end MiB | "
            "llama.cpp end MiB |", "|---|---|---|---|---|---|"]
    for cls, row in res["classes"].items():
        c, g = row["chatcli"], row["llama.cpp"]
        out.append(f"| {cls} | {c['rss']:.0f} | {g['rss']:.0f} | "
                   f"{format_ratio(c['rss'], g['rss'])} | {c['rss_end']:.0f} | "
                   f"{g['rss_end']:.0f} |")
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
        return ratio(rows[cls]["chatcli"].get(key, float("nan")),
                     rows[cls]["llama.cpp"].get(key, float("nan")))

    line("decode, chatcli int8 / llama.cpp Q8_0", r("int8", "decode"), 0.7, True)
    line("decode, chatcli bf16 / llama.cpp BF16", r("bf16", "decode"), 0.7, True)
    line("prefill 512, chatcli bf16 / llama.cpp BF16", r("bf16", "prefill512"), 1.0, True)
    for cls in ("bf16", "int8"):
        line(f"TTFT-128 ({cls}), chatcli / llama.cpp", r(cls, "ttft"), 1.0, False)
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--classes", default=",".join(ALL_CLASSES))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--prefill", default="128,512,2048")
    parser.add_argument("--long-rounds", type=int, default=1,
                        help="rounds that measure prefill lengths above 512")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cache-dir", default="~/.cache/chatcli-bench")
    parser.add_argument("--verbose", action="store_true")
    add_write_options(parser, "vs_llamacpp")
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
        if m not in MODELS:
            parser.error(f"unknown model {m!r}; choose from {', '.join(MODELS)}")
    for c in classes:
        if c not in CLASSES:
            parser.error(f"unknown class {c!r}; choose from {', '.join(ALL_CLASSES)}")

    started = time.perf_counter()
    conditions = Conditions.observe()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - started:6.1f}s] {msg}", file=sys.stderr, flush=True)

    import torch

    torch.set_num_threads(args.threads)
    all_files = {m: prepare_model(m, classes, args, log) for m in models}
    bw_start = bandwidth()
    log(f"memory bandwidth: read {bw_start[0]:.1f} GB/s, copy {bw_start[1]:.1f} GB/s")
    results = {}
    for m in models:
        results[m] = run_model(all_files[m], classes, args, log)
    bw_end = bandwidth()
    log(f"memory bandwidth: read {bw_end[0]:.1f} GB/s, copy {bw_end[1]:.1f} GB/s")
    bw = max(bw_start[0], bw_end[0])
    conditions.finish()

    cmd = "python bench/vs_llamacpp.py " + " ".join(sys.argv[1:])
    lines = [
        f"`{cmd.strip()}` — {args.threads} threads on both sides, torch "
        f"{torch.__version__}, llama-cpp-python {md.version('llama_cpp_python')}, "
        f"{args.rounds} interleaved rounds (medians), decode {args.tokens} tokens; prefill "
        f"lengths above 512 measured in {min(args.long_rounds, args.rounds)} round(s); "
        f"{conditions.describe()}.",
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
    write_report(args, body)
    log(f"total {time.perf_counter() - started:.0f}s")


if __name__ == "__main__":
    main()
