"""Cost of the transparency views when they are off: decode speed vs the code before them.

Usage: python bench/views_overhead.py [--rev 15275d9] [--tokens 64] [--rounds 7] [--threads 2]

Loads `chatcli/decoding/loop.py` as it was at --rev (before --show-candidates existed)
next to the current one, and runs greedy decoding with each over the same loaded
default model, interleaved; prints median decode tokens/s and the ratio
(target: current / before >= 0.98).
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from harness import Conditions, interleave, medians, ratio  # bench/ is on sys.path


def load_old_loop(rev: str):  # type: ignore[no-untyped-def]
    source = subprocess.run(["git", "show", f"{rev}:chatcli/decoding/loop.py"], check=True,
                            capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp()) / "old_loop.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("old_loop", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rev", default="15275d9")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    conditions = Conditions.observe()

    from chatcli.decoding import loop as new_loop
    from chatcli.decoding.base import DecodeContext
    from chatcli.loader import load_model
    from chatcli.progress import SilentReporter
    from chatcli.prompt import Message, render_ids
    from chatcli.registry import load_registry
    from chatcli.runtime import resolve_runtime

    old_loop = load_old_loop(args.rev)
    spec = load_registry().resolve(None)
    loaded = load_model(spec, resolve_runtime("cpu", "auto", args.threads, spec.dtype),
                        SilentReporter())
    ids = render_ids(loaded.tokenizer, [Message("user", "Tell me a story.")])

    def run(module) -> float:  # type: ignore[no-untyped-def]
        ctx = DecodeContext(max_new_tokens=args.tokens, eos_ids=frozenset())
        steps = module.token_loop(loaded.lm, ids, lambda s: int(s[0].argmax()), ctx)
        next(steps)
        start = time.perf_counter()
        n = sum(1 for _ in steps)
        return n / (time.perf_counter() - start)

    run(new_loop), run(old_loop)
    med = medians(interleave({"before": lambda: run(old_loop),
                              "now (views off)": lambda: run(new_loop)}, args.rounds))
    conditions.finish()
    print(f"`python bench/views_overhead.py --rev {args.rev} --rounds {args.rounds}` — "
          f"{spec.alias}, {loaded.runtime.dtype}, {args.threads} threads, greedy, "
          f"{args.tokens} tokens; {conditions.describe()}; medians")
    for k, v in med.items():
        print(f"- {k}: {v:.1f} tok/s")
    print(f"- ratio now / before: **{ratio(med['now (views off)'], med['before']):.3f}** "
          "(target >= 0.98)")


if __name__ == "__main__":
    sys.exit(main())
