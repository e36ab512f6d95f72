"""chatcli's decoding engine vs transformers' generate(), side by side.

Usage: python bench/decode.py [--model ALIAS] [--tokens 64] [--rounds 5] [--threads N]
                              [--dtype bfloat16] [--write docs/benchmarks.md] [--section decode]

Same weights, same dtype, same thread count, interleaved rounds, medians. For
greedy, sampling (temperature 0.7, top-p 0.9) and beam 4 it reports decode
tokens/s and time to first token for both, and the ratios the targets are stated
in: chatcli greedy decode / generate() greedy decode (>= 1.0), chatcli sampling
decode / chatcli greedy decode (>= 0.95), chatcli beam-4 time per token / chatcli
greedy time per token (<= 2.0). EOS is disabled so every run produces exactly
--tokens tokens. With --write, the table replaces the "decode" section of the file
(bench/harness.py: `--write` takes any path, e.g. a scratch copy).
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from typing import Any

from harness import (  # bench/ is on sys.path when run as a script
    Conditions,
    Decoded,
    add_write_options,
    format_ratio,
    generate,
    interleave,
    median,
    write_report,
)

PROMPT = "Write a short story about a robot who learns to paint."
MODES = ("greedy", "sample", "beam")


def run_generate(model: Any, ids: list[int], n: int, mode: str) -> tuple[float, float]:
    """(time to first token, decode tok/s) of transformers' generate()."""
    kw: dict[str, Any] = {"do_sample": False}
    if mode == "sample":
        kw = {"do_sample": True, "temperature": 0.7, "top_p": 0.9, "top_k": 0}
    elif mode == "beam":
        kw = {"do_sample": False, "num_beams": 4, "early_stopping": False}
    out: Decoded = generate(model, ids, n, stream=mode != "beam", **kw)
    if mode == "beam":
        return float("nan"), out.tokens_per_s
    return out.first_token_s, out.decode_tokens_per_s


def run_chatcli(loaded: Any, ids: list[int], n: int, mode: str) -> tuple[float, float]:
    from chatcli.decoding.registry import strategy_registry
    from chatcli.decoding.settings import resolve_settings
    from chatcli.generation.stream import complete

    flags: dict[str, Any] = {"seed": 0}
    if mode == "sample":
        flags.update(temperature=0.7, top_p=0.9)
    elif mode == "beam":
        flags["num_beams"] = 4
    settings = resolve_settings(strategy_registry(), strategy=mode, flags=flags)
    start = time.perf_counter()
    gen = complete(loaded, ids, settings, n)
    end = time.perf_counter()
    assert gen.stats.completion_tokens == n, gen.stats
    if mode == "beam":
        return float("nan"), n / (end - start)
    return gen.stats.time_to_first_token_s, gen.stats.decode_tokens_per_s


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--dtype", default="auto")
    add_write_options(ap, "decode")
    args = ap.parse_args()
    conditions = Conditions.observe()

    import torch
    from transformers import AutoModelForCausalLM

    from chatcli.loader import load_model
    from chatcli.progress import SilentReporter
    from chatcli.prompt import Message, render_ids
    from chatcli.registry import load_registry
    from chatcli.runtime import resolve_runtime

    spec = load_registry().resolve(args.model)
    runtime = resolve_runtime("cpu", args.dtype, args.threads, spec.dtype)
    loaded = load_model(spec, runtime, SilentReporter())
    loaded = dataclasses.replace(loaded, eos_ids=frozenset())  # fixed-length runs
    folder = loaded.folder
    ref = AutoModelForCausalLM.from_pretrained(folder, dtype=getattr(torch, runtime.dtype)).eval()
    ref.generation_config.eos_token_id = None
    ids = render_ids(loaded.tokenizer, [Message("user", PROMPT)])
    n = args.tokens

    for mode in MODES:  # warm-up
        run_chatcli(loaded, ids, 4, mode)
        run_generate(ref, ids, 4, mode)
    variants = {}
    for mode in MODES:
        variants[("generate()", mode)] = lambda mode=mode: run_generate(ref, ids, n, mode)
        variants[("chatcli", mode)] = lambda mode=mode: run_chatcli(loaded, ids, n, mode)
    results = interleave(variants, args.rounds)
    conditions.finish()

    def med(who: str, mode: str, i: int) -> float:
        return median(r[i] for r in results[(who, mode)])

    lines = [
        f"`python bench/decode.py --rounds {args.rounds} --tokens {n}"
        f"{f' --threads {args.threads}' if args.threads else ''}` — model {spec.alias}, "
        f"{runtime.dtype}, {torch.get_num_threads()} threads, implementation "
        f"{loaded.implementation}, prompt {len(ids)} tokens; {conditions.describe()}; "
        f"medians of {args.rounds} interleaved rounds.",
        "",
        "| strategy | generate() tok/s | chatcli tok/s | chatcli / generate() | "
        "generate() TTFT s | chatcli TTFT s |",
        "|---|---|---|---|---|---|",
    ]
    for mode in MODES:
        g, c = med("generate()", mode, 1), med("chatcli", mode, 1)
        gt, ct = med("generate()", mode, 0), med("chatcli", mode, 0)
        label = "beam 4 (tokens / total s)" if mode == "beam" else mode
        fmt = (lambda v: "-" if v != v else f"{v:.3f}")  # noqa: E731 - nan for beam
        lines.append(f"| {label} | {g:.1f} | {c:.1f} | {format_ratio(c, g)} | {fmt(gt)} | "
                     f"{fmt(ct)} |")
    greedy = med("chatcli", "greedy", 1)
    lines += [
        "",
        f"- chatcli greedy / generate() greedy: "
        f"**{format_ratio(greedy, med('generate()', 'greedy', 1))}** (target >= 1.0)",
        f"- chatcli sampling / chatcli greedy: "
        f"**{format_ratio(med('chatcli', 'sample', 1), greedy)}** (target >= 0.95)",
        f"- chatcli beam-4 time per token / greedy: "
        f"**{format_ratio(greedy, med('chatcli', 'beam', 1))}** (target <= 2.0)",
    ]
    report = "\n".join(lines)
    print(report)
    write_report(args, report)


if __name__ == "__main__":
    main()
