"""Measure decode speed for torch thread counts and dtypes, idle and under load.

Usage: python bench/threads.py MODEL_DIR [--rounds 3] [--tokens 48]

MODEL_DIR is a transformers folder (e.g. chatcli's converted cache of the
default model). "Under load" runs one busy-looping process beside the
benchmark, as another program on a 2-core laptop would. Prints one table row
per (load, dtype, threads) with the median decode tokens/s over the rounds.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import time


def _spin(stop) -> None:  # pragma: no cover - helper process
    x = 0
    while not stop.is_set():
        for _ in range(100_000):
            x += 1


def _decode_tps(model, ids, tokens: int) -> float:
    import torch

    with torch.inference_mode():
        out = model(ids, use_cache=True)
        past = out.past_key_values
        nxt = out.logits[:, -1:].argmax(-1)
        t = time.perf_counter()
        for _ in range(tokens):
            out = model(nxt, past_key_values=past, use_cache=True)
            past = out.past_key_values
            nxt = out.logits[:, -1:].argmax(-1)
        return tokens / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model_dir")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--tokens", type=int, default=48)
    args = ap.parse_args()
    import torch
    from transformers import AutoModelForCausalLM

    models = {
        dt: AutoModelForCausalLM.from_pretrained(args.model_dir, dtype=dt).eval()
        for dt in (torch.float32, torch.bfloat16)
    }
    ids = torch.randint(100, 1000, (1, 64))
    rows = []
    for load in ("idle", "1 busy process"):
        stop = mp.Event()
        proc = None
        if load != "idle":
            proc = mp.Process(target=_spin, args=(stop,), daemon=True)
            proc.start()
        try:
            for dt, model in models.items():
                res: dict[int, list[float]] = {1: [], 2: []}
                for _ in range(args.rounds):
                    for n in (1, 2):  # interleaved
                        torch.set_num_threads(n)
                        res[n].append(_decode_tps(model, ids, args.tokens))
                for n, v in res.items():
                    rows.append((load, str(dt).removeprefix("torch."), n, statistics.median(v)))
        finally:
            stop.set()
            if proc is not None:
                proc.join()
    print("| load | dtype | threads | decode tok/s (median) |")
    print("|---|---|---|---|")
    for r in rows:
        print(f"| {r[0]} | {r[1]} | {r[2]} | {r[3]:.1f} |")


if __name__ == "__main__":
    main()
