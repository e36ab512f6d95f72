"""Quality guard for `--quantize`: perplexity and greedy agreement against bf16.

Usage: python bench/quality.py [--model ALIAS] [--dtype bfloat16] [--tokens 64]
                               [--window 512] [--prompts 20] [--write docs/benchmarks.md]

For each of none / int8 / int4 on the same converted weights, and int8 / int4 through
the compiled decode step (`chatcli compile`, `chatcli compile --quantize int8`: the
package in chatcli's cache; a mode whose package is missing or stale is reported as not
built), it reports
- the perplexity of chatcli's native forward pass on `bench/data/english.txt` (a fixed
  English text kept in the repository), scored in non-overlapping windows of --window
  tokens, every token after the first of a window predicted from the ones before it
  (compiled modes: one decode step per token, as answers are made, so the package's
  logits are what is scored);
- over 20 fixed chat prompts, the fraction of the first --tokens greedy tokens equal
  (position by position) to the unquantized model's, and the mean length of the common
  prefix.
Targets (issues #6, #13): int8 perplexity within 1 % of bf16's, int4 within 5 %,
compiled or not.
With --write, the table replaces the "quality" section of the file.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import statistics
import time
from pathlib import Path
from typing import Any

from harness import (  # bench/ is on sys.path when run as a script
    Conditions,
    add_write_options,
    first_difference,
    greedy,
    write_report,
)

TEXT = Path(__file__).parent / "data" / "english.txt"
MODES = ("none", "int8", "int4", "int8+compiled", "int4+compiled")
TARGETS = {"int8": 0.01, "int4": 0.05, "int8+compiled": 0.01, "int4+compiled": 0.05}

PROMPTS = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "Explain what a hash table is in two sentences.",
    "Give me three tips for learning to cook.",
    "What is the difference between weather and climate?",
    "Write a short poem about autumn leaves.",
    "How do plants make their food?",
    "Summarize the plot of Romeo and Juliet.",
    "What are the benefits of regular exercise?",
    "Explain recursion to a ten-year-old.",
    "Write a polite email declining a meeting.",
    "Why is the sky blue?",
    "List five animals that live in the ocean.",
    "What does a compiler do?",
    "Describe a sunset in one paragraph.",
    "How can I improve my sleep?",
    "What is photosynthesis?",
    "Write a limerick about a cat.",
    "What is the Pythagorean theorem?",
    "Give me a recipe idea for dinner with rice and beans.",
]


def perplexity(model: Any, ids: list[int], window: int) -> float:
    import torch

    nll, count = 0.0, 0
    for start in range(0, len(ids) - 1, window):
        chunk = ids[start:start + window]
        if len(chunk) < 2:
            break
        logits, _ = model.forward(torch.tensor([chunk]), None, logits_to_keep=0)
        logprobs = torch.log_softmax(logits[0, :-1].float(), dim=-1)
        target = torch.tensor(chunk[1:])
        nll -= float(logprobs.gather(-1, target[:, None]).sum())
        count += len(chunk) - 1
    return math.exp(nll / count)


def stepwise_perplexity(lm: Any, ids: list[int], window: int) -> float:
    """As `perplexity`, but each window is fed one token per decode step (`lm` a chatcli
    `LanguageModel`), so that the step that makes answers is the one scored."""
    import torch

    nll, count = 0.0, 0
    for start in range(0, len(ids) - 1, window):
        chunk = ids[start:start + window]
        if len(chunk) < 2:
            break
        logits, cache = lm.prefill(chunk[:1])
        for i, target in enumerate(chunk[1:], start=1):
            nll -= float(torch.log_softmax(logits.float().view(-1), dim=-1)[target])
            count += 1
            if i < len(chunk) - 1:
                logits, cache = lm.step(torch.tensor([target]), cache)
    return math.exp(nll / count)


def agreement(a: list[list[int]], b: list[list[int]]) -> tuple[float, float]:
    """(fraction of positions with equal tokens, mean common-prefix length)."""
    equal = sum(x == y for ra, rb in zip(a, b, strict=True) for x, y in zip(ra, rb, strict=True))
    total = sum(len(r) for r in a)
    prefixes = []
    for ra, rb in zip(a, b, strict=True):
        k = first_difference(ra, rb)
        prefixes.append(len(ra) if k is None else k)
    return equal / total, statistics.mean(prefixes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--window", type=int, default=512)
    parser.add_argument("--prompts", type=int, default=len(PROMPTS),
                        help="how many of the fixed chat prompts (a quick check: fewer)")
    add_write_options(parser, "quality")
    args = parser.parse_args()
    conditions = Conditions.observe()

    import torch

    from chatcli.lm.compiled import CompiledLanguageModel, folder_fingerprint
    from chatcli.lm.llama import NativeCausalLM
    from chatcli.lm.native import NativeLanguageModel
    from chatcli.loader import compiled_package, load_model
    from chatcli.progress import SilentReporter
    from chatcli.prompt import Message, render_ids
    from chatcli.registry import load_registry
    from chatcli.runtime import resolve_runtime

    spec = load_registry().resolve(args.model)
    runtime = resolve_runtime("cpu", args.dtype, args.threads, spec.dtype)
    loaded = load_model(spec, runtime, SilentReporter())
    tokenizer, folder = loaded.tokenizer, loaded.folder
    dtype = getattr(torch, runtime.dtype)
    text_ids = tokenizer.encode(TEXT.read_text())
    prompts = [render_ids(tokenizer, [Message("user", p)]) for p in PROMPTS[:args.prompts]]

    rows: dict[str, dict[str, Any]] = {}
    answers: dict[str, list[list[int]]] = {}
    for mode in MODES:
        started = time.perf_counter()
        quantize, _, compiled = mode.partition("+")
        model = NativeCausalLM.from_folder(folder, dtype)
        model.quantize(quantize)
        if compiled:
            package = compiled_package(folder, dataclasses.replace(runtime, quantize=quantize))
            lm: Any = CompiledLanguageModel.open(model, package, folder_fingerprint(folder))
            if not lm.compiled:
                print(f"{mode}: not measured ({lm.reason}; run 'chatcli compile "
                      f"{spec.alias} --quantize {quantize}')", flush=True)
                continue
            ppl = stepwise_perplexity(lm, text_ids, args.window)
        else:
            ppl = perplexity(model, text_ids, args.window)
            lm = NativeLanguageModel(model)
        answers[mode] = [greedy(lm, ids, args.tokens).tokens for ids in prompts]
        rows[mode] = {"ppl": ppl, "seconds": time.perf_counter() - started}
        print(f"{mode}: perplexity {ppl:.3f}", flush=True)

    base = rows["none"]["ppl"]
    conditions.finish()
    lines = [
        f"`python bench/quality.py --tokens {args.tokens} --window {args.window}"
        f"{f' --prompts {args.prompts}' if args.prompts != len(PROMPTS) else ''}` — model "
        f"{spec.alias}, {runtime.dtype}, {len(text_ids)} tokens of `bench/data/english.txt`, "
        f"{len(prompts)} chat prompts x {args.tokens} greedy tokens; {conditions.describe()}.",
        "",
        "| quantize | perplexity | vs none | target | greedy tokens equal to none's | "
        "mean common prefix |",
        "|---|---|---|---|---|---|",
    ]
    for mode in MODES:
        if mode not in rows:
            lines.append(f"| {mode} | not built (`chatcli compile`) | | | | |")
            continue
        ppl = rows[mode]["ppl"]
        change = ppl / base - 1
        target = TARGETS.get(mode)
        verdict = "-" if target is None else (
            f"<= {target:.0%}: {'met' if change <= target else 'MISSED'}"
        )
        equal, prefix = agreement(answers[mode], answers["none"])
        lines.append(
            f"| {mode} | {ppl:.3f} | {change:+.2%} | {verdict} | {equal:.1%} | "
            f"{prefix:.1f} / {args.tokens} |"
        )
    body = "\n".join(lines)
    print(body)
    write_report(args, body)


if __name__ == "__main__":
    main()
