"""KV-cache reuse over a 12-turn greedy chat: does it change the answers, and what it saves.

Usage: python bench/chat.py [--model ALIAS] [--precisions bfloat16,float32,int8,int4]
                            [--turns 12] [--max-new-tokens 48] [--rounds 1]
                            [--write docs/benchmarks.md] [--section chat]

One chat session (with reuse, as `chatcli chat` runs) answers the user messages
greedily. At every turn the same packed prompt is also answered cold (a full
prefill on a fresh cache, as a session with `reuse_cache=False` does) before the
session answers it, and then `/retry` answers it again from the cache. Per turn:
the prompt and reused tokens, time to first token cold and with reuse, whether
the reused answer is token-identical to the cold one (else the first differing
position), the largest first-token logit difference, and whether `/retry` repeated
the answer. Comparing on the same prompt (rather than two independent sessions)
keeps one early divergence from making every later turn differ.

Time to first token runs from the start of the turn (packing included) to the
first token; with --rounds N each figure is the median of N rounds (the agreement
figures are deterministic and must be equal across rounds).
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from typing import Any

from harness import (  # bench/ is on sys.path when run as a script
    Conditions,
    add_write_options,
    first_difference,
    format_load,
    median,
    write_report,
)

QUESTIONS = [
    "Hi! Can you help me plan a small vegetable garden?",
    "What vegetables grow well in partial shade?",
    "How often should I water lettuce?",
    "What about tomatoes?",
    "Which pests should I watch out for?",
    "How do I make compost at home?",
    "Can I grow herbs in the same bed?",
    "What is companion planting?",
    "Give me a simple weekly schedule.",
    "How much space does a zucchini plant need?",
    "When should I harvest carrots?",
    "Summarise our plan in three bullet points.",
]


@dataclasses.dataclass
class Turn:
    prompt: int  # packed prompt tokens
    reused: int  # of them, taken from the cache
    ttft_cold: float
    ttft_reuse: float
    cold: list[int]
    answer: list[int]
    retried: list[int]
    retried_old: list[int]  # /retry after the cold answer, without the kept logits
    max_logit_diff: float  # first token: |cold - reused| over the vocabulary
    old_retry_diff: float  # first token: |cold - old /retry|

    @property
    def first_difference(self) -> int | None:
        return first_difference(self.cold, self.answer)


def _timed(gen: Any, start: float) -> float:
    first = None
    for _ in gen:
        if first is None:
            first = time.perf_counter() - start
    return first or 0.0


def run(loaded: Any, turns: int, max_new: int) -> list[Turn]:
    from chatcli.chat.session import ChatSession, DecodingRequest
    from chatcli.decoding.registry import strategy_registry
    from chatcli.generation.prompt_cache import PromptCache
    from chatcli.generation.stream import stream

    registry = strategy_registry()
    session = ChatSession(loaded, registry, DecodingRequest("greedy", {"max_new_tokens": max_new}))
    out = []
    for q in QUESTIONS[:turns]:
        session.add_user(q)
        # cold: a full prefill of the same packed prompt, the session's cache untouched
        start = time.perf_counter()
        packed = session.pack()
        cold = stream(loaded, packed.ids, session.settings, max_new, registry)
        ttft_cold = _timed(cold, start)
        cold_logits = loaded.lm.prefill(packed.ids)[0].float()
        # with reuse, as `chatcli chat` answers
        start = time.perf_counter()
        gen, _ = session.start_reply()
        ttft_reuse = _timed(gen, start)
        prompt_cache = session.backend.cache  # the local backend's PromptCache
        reused_logits = prompt_cache.logits.float()
        reused = prompt_cache.reused
        session.finish_reply(gen)
        # /retry as chatcli runs it: from the cache and the kept logits
        session.retry()
        again, _ = session.start_reply()
        _timed(again, time.perf_counter())
        session.finish_reply(again)
        # /retry after a cold answer without the kept logits (as before they were kept):
        # the prompt's last token prefilled again over the cache of the others
        before = PromptCache(loaded.lm)
        before.prefill(packed.ids)
        before.logits = None
        old = stream(dataclasses.replace(loaded, lm=before), packed.ids, session.settings,
                     max_new, registry)
        _timed(old, time.perf_counter())
        out.append(Turn(packed.tokens, reused, ttft_cold, ttft_reuse, list(cold.token_ids),
                        list(gen.token_ids), list(again.token_ids), list(old.token_ids),
                        float((cold_logits - reused_logits).abs().max()),
                        float((cold_logits - before.logits.float()).abs().max())))
    return out


def section(name: str, runs: list[list[Turn]], threads: int, impl: str) -> list[str]:
    turns = runs[0]
    for other in runs[1:]:
        assert [(t.cold, t.answer, t.retried) for t in other] == \
               [(t.cold, t.answer, t.retried) for t in turns], "answers changed between rounds"
    n = len(turns)

    def med(attr: str, i: int) -> float:
        return median(getattr(r[i], attr) for r in runs)

    agree = sum(t.first_difference is None for t in turns)
    retry = sum(t.retried == t.answer for t in turns)
    old = sum(t.retried_old == t.cold for t in turns)
    saved = sum(med("ttft_cold", i) - med("ttft_reuse", i) for i in range(n))
    cold_total = sum(med("ttft_cold", i) for i in range(n))
    lines = [
        f"#### {name}",
        "",
        f"{threads} threads, implementation {impl}; prompt grows to {turns[-1].prompt} tokens. "
        f"Reused answer token-identical to the cold one: **{agree} of {n} turns**; "
        f"`/retry` repeated the answer: **{retry} of {n}** (without the kept logits, a "
        f"`/retry` after the cold answer repeated it in {old} of {n}); time to first token "
        f"saved by reuse: **{saved:.2f} s of {cold_total:.2f} s** over the chat.",
        "",
        "| turn | prompt tokens | reused | TTFT cold s | TTFT reuse s | reused = cold "
        "| max first-token logit diff | /retry = answer | old /retry = cold (logit diff) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]

    def same(a: list[int], b: list[int]) -> str:
        diff = first_difference(a, b)
        return "yes" if diff is None else f"no, from token {diff + 1} of {len(b)}"

    for i, t in enumerate(turns):
        lines.append(f"| {i + 1} | {t.prompt} | {t.reused} | {med('ttft_cold', i):.3f} | "
                     f"{med('ttft_reuse', i):.3f} | {same(t.answer, t.cold)} | "
                     f"{t.max_logit_diff:.3g} | {same(t.retried, t.answer)} | "
                     f"{same(t.retried_old, t.cold)} ({t.old_retry_diff:.3g}) |")
    lines += [
        "",
        f"TTFT turn {n} / turn 1: cold **{med('ttft_cold', n - 1) / med('ttft_cold', 0):.2f}x**, "
        f"with reuse **{med('ttft_reuse', n - 1) / med('ttft_reuse', 0):.2f}x** (target <= 1.3).",
        "",
    ]
    return lines


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None)
    ap.add_argument("--precisions", default="bfloat16,float32,int8,int4",
                    help="comma-separated: float32, bfloat16, int8, int4 (int8/int4: bf16 "
                         "activations where the CPU has native bf16, as chatcli runs them)")
    ap.add_argument("--turns", type=int, default=12)
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--rounds", type=int, default=1)
    add_write_options(ap, "chat")
    args = ap.parse_args()
    conditions = Conditions.observe()

    import torch

    from chatcli.loader import load_model
    from chatcli.progress import SilentReporter
    from chatcli.registry import load_registry
    from chatcli.runtime import resolve_runtime

    spec = load_registry().resolve(args.model)
    lines = [
        f"`python bench/chat.py --precisions {args.precisions} --turns {args.turns} "
        f"--max-new-tokens {args.max_new_tokens} --rounds {args.rounds}"
        f"{f' --section {args.section}' if args.section != 'chat' else ''}` — model {spec.alias}, "
        f"greedy; {conditions.cpu}; load average (1, 5, 15 min) at the start: "
        f"{format_load(conditions.load_start)}.",
        "",
    ]
    for precision in args.precisions.split(","):
        quantize = precision if precision.startswith("int") else "none"
        dtype = "auto" if quantize != "none" else precision
        runtime = resolve_runtime("cpu", dtype, None, spec.dtype, quantize)
        loaded = load_model(spec, runtime, SilentReporter())
        runs = [run(loaded, args.turns, args.max_new_tokens) for _ in range(args.rounds)]
        name = runtime.dtype if quantize == "none" else f"{quantize} ({runtime.dtype} activations)"
        part = section(name, runs, torch.get_num_threads(), loaded.implementation)
        print("\n".join(part), flush=True)
        lines += part
    conditions.finish()
    assert conditions.load_end is not None
    lines.append(f"Load average at the end: {format_load(conditions.load_end)}.")
    write_report(args, "\n".join(lines))


if __name__ == "__main__":
    main()
