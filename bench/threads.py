"""Measure decode speed for torch thread counts and dtypes, idle and under load.

Usage: python bench/threads.py MODEL_DIR [--rounds 3] [--tokens 48]

MODEL_DIR is a transformers folder (e.g. chatcli's converted cache of the
default model), run through transformers (chatcli's `HFLanguageModel`) with the
harness's greedy loop. "Under load" runs one busy-looping process beside the
benchmark, as another program on a 2-core laptop would. Prints one table row
per (load, dtype, threads) with the median decode tokens/s over the rounds
(1 and 2 threads interleaved).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
from typing import Any

from harness import Conditions, greedy, interleave, median  # bench/ is on sys.path

THREADS = (1, 2)


def _spin(stop: Any) -> None:  # pragma: no cover - helper process
    x = 0
    while not stop.is_set():
        for _ in range(100_000):
            x += 1


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model_dir")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--tokens", type=int, default=48)
    args = ap.parse_args()
    conditions = Conditions.observe()
    import torch
    from transformers import AutoModelForCausalLM

    from chatcli.lm.hf import HFLanguageModel

    models = {
        dt: HFLanguageModel(AutoModelForCausalLM.from_pretrained(args.model_dir, dtype=dt).eval())
        for dt in (torch.float32, torch.bfloat16)
    }
    ids = torch.randint(100, 1000, (64,)).tolist()

    def decode_tps(lm: Any, threads: int) -> float:
        torch.set_num_threads(threads)
        return greedy(lm, ids, args.tokens + 1).decode_tokens_per_s

    rows = []
    for load in ("idle", "1 busy process"):
        stop = mp.Event()
        proc = None
        if load != "idle":
            proc = mp.Process(target=_spin, args=(stop,), daemon=True)
            proc.start()
        try:
            for dt, lm in models.items():
                res = interleave({n: lambda lm=lm, n=n: decode_tps(lm, n) for n in THREADS},
                                 args.rounds)
                for n, v in res.items():
                    rows.append((load, str(dt).removeprefix("torch."), n, median(v)))
        finally:
            stop.set()
            if proc is not None:
                proc.join()
    conditions.finish()
    print(f"{conditions.describe()}; {args.tokens} greedy tokens after a 64-token prompt, "
          f"medians of {args.rounds} interleaved rounds")
    print("| load | dtype | threads | decode tok/s (median) |")
    print("|---|---|---|---|")
    for r in rows:
        print(f"| {r[0]} | {r[1]} | {r[2]} | {r[3]:.1f} |")


if __name__ == "__main__":
    main()
