"""Time to first token per turn over a 12-turn chat, with and without KV-cache reuse.

Usage: python bench/chat.py [--model ALIAS] [--turns 12] [--max-new-tokens 48]
                            [--rounds 3] [--write docs/benchmarks.md]

Both variants answer the same user messages greedily, so they produce the same
conversation (the script checks that the replies are identical). Time to first
token is measured from the moment the turn starts (packing the history included)
to the first generated token. Rounds alternate the two variants; medians per turn.
Target: with reuse, turn 12 <= 1.3x turn 1.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from decode import write_section

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


def run(loaded, turns: int, max_new: int, reuse: bool) -> tuple[list[float], list[str], int]:  # type: ignore[no-untyped-def]
    from chatcli.chat.session import ChatSession, DecodingRequest
    from chatcli.decoding.registry import strategy_registry

    session = ChatSession(loaded, strategy_registry(),
                          DecodingRequest("greedy", {"max_new_tokens": max_new}),
                          reuse_cache=reuse)
    ttfts, replies = [], []
    for q in QUESTIONS[:turns]:
        session.add_user(q)
        start = time.perf_counter()
        gen, _ = session.start_reply()
        first = None
        for _ in gen:
            if first is None:
                first = time.perf_counter() - start
        ttfts.append(first or 0.0)
        replies.append(gen.text)
        session.finish_reply(gen)
    assert session.last_packed is not None
    return ttfts, replies, session.last_packed.tokens


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None)
    ap.add_argument("--turns", type=int, default=12)
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--write", type=Path, default=None)
    args = ap.parse_args()

    import torch

    from chatcli.loader import load_model
    from chatcli.registry import load_registry
    from chatcli.runtime import resolve_runtime
    from chatcli.sources import SilentReporter

    spec = load_registry().resolve(args.model)
    runtime = resolve_runtime("cpu", "auto", None, spec.dtype)
    loaded = load_model(spec, runtime, SilentReporter())
    times: dict[bool, list[list[float]]] = {True: [], False: []}
    replies: dict[bool, list[str]] = {}
    final_tokens = 0
    for _ in range(args.rounds):
        for reuse in (False, True):
            t, r, final_tokens = run(loaded, args.turns, args.max_new_tokens, reuse)
            times[reuse].append(t)
            replies[reuse] = r
    same = replies[True] == replies[False]
    med = {k: [statistics.median(x[i] for x in v) for i in range(args.turns)]
           for k, v in times.items()}
    lines = [
        f"`python bench/chat.py --turns {args.turns} --max-new-tokens {args.max_new_tokens} "
        f"--rounds {args.rounds}` — model {spec.alias}, {runtime.dtype}, "
        f"{torch.get_num_threads()} threads, implementation {loaded.implementation}; greedy; "
        f"prompt grows to {final_tokens} tokens; medians of {args.rounds} alternating rounds; "
        f"replies identical with and without reuse: {'yes' if same else 'NO'}.",
        "",
        "| turn | TTFT re-encoding s | TTFT with reuse s |",
        "|---|---|---|",
    ]
    for i in range(args.turns):
        lines.append(f"| {i + 1} | {med[False][i]:.3f} | {med[True][i]:.3f} |")
    lines += [
        "",
        f"- re-encoding: turn {args.turns} / turn 1 = **{med[False][-1] / med[False][0]:.2f}x**",
        f"- with reuse: turn {args.turns} / turn 1 = **{med[True][-1] / med[True][0]:.2f}x** "
        "(target <= 1.3)",
    ]
    report = "\n".join(lines)
    print(report)
    if args.write:
        write_section(args.write, "chat", report)


if __name__ == "__main__":
    main()
