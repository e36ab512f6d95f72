"""Time from command start to the first answer byte, and `chatcli --help` time.

Usage: python bench/startup.py [--runs 5] [-- extra ask args]

Runs `chatcli ask` on the default model (already pulled) as a fresh process
several times and prints the median time to the first byte on stdout, plus the
median wall time of `chatcli --help`. Appends nothing; copy the table into
docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time


def first_byte(cmd: list[str]) -> tuple[float, float]:
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert proc.stdout is not None
    proc.stdout.read(1)
    first = time.perf_counter() - start
    proc.stdout.read()
    proc.wait()
    return first, time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("rest", nargs="*")
    args = ap.parse_args()
    exe = [sys.executable, "-m", "chatcli"]
    env_note = os.environ.get("CHATCLI_HOME", "default cache")
    helps = []
    for _ in range(args.runs):
        t = time.perf_counter()
        subprocess.run([*exe, "--help"], stdout=subprocess.DEVNULL, check=True)
        helps.append(time.perf_counter() - t)
    firsts, totals = [], []
    for _ in range(args.runs):
        f, tot = first_byte([*exe, "ask", "-n", "16", *args.rest, "What is the capital of France?"])
        firsts.append(f)
        totals.append(tot)
    print(f"cache: {env_note}; runs: {args.runs}")
    print("| measure | median s | min s | max s |")
    print("|---|---|---|---|")
    for name, v in (("chatcli --help", helps), ("ask: first answer byte", firsts),
                    ("ask: whole command (16 tokens)", totals)):
        print(f"| {name} | {statistics.median(v):.2f} | {min(v):.2f} | {max(v):.2f} |")


if __name__ == "__main__":
    main()
