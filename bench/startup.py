"""Time from command start to the first answer byte, and `chatcli --help` time.

Usage: python bench/startup.py [--runs 5] [-- extra ask args]

Runs `chatcli --help` and `chatcli ask` on the default model (already pulled) as
fresh processes, interleaved, several times and prints the median time to the first
byte on stdout, plus the median wall time of `chatcli --help`. Appends nothing; copy
the table into docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

from harness import Conditions, interleave, median  # bench/ is on sys.path


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
    conditions = Conditions.observe()

    def help_s() -> float:
        t = time.perf_counter()
        subprocess.run([*exe, "--help"], stdout=subprocess.DEVNULL, check=True)
        return time.perf_counter() - t

    def ask() -> tuple[float, float]:
        return first_byte([*exe, "ask", "-n", "16", *args.rest, "What is the capital of France?"])

    res = interleave({"help": help_s, "ask": ask}, args.runs)
    helps = res["help"]
    firsts = [first for first, _ in res["ask"]]
    totals = [total for _, total in res["ask"]]
    conditions.finish()
    print(f"cache: {env_note}; runs: {args.runs} (interleaved); {conditions.describe()}")
    print("| measure | median s | min s | max s |")
    print("|---|---|---|---|")
    for name, v in (("chatcli --help", helps), ("ask: first answer byte", firsts),
                    ("ask: whole command (16 tokens)", totals)):
        print(f"| {name} | {median(v):.2f} | {min(v):.2f} | {max(v):.2f} |")


if __name__ == "__main__":
    main()
