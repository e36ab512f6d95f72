"""What loading the compiled decode step adds to a start: the default model's
`load_model` in fresh processes, with and without its package.

Usage: python bench/compiled_load.py --with HOME --without HOME [--runs 9]
                                     [--write docs/benchmarks.md]

HOME (`--with`) is a CHATCLI_HOME whose cache holds the default model and its package
(`chatcli compile`), already unpacked by an earlier load; the `--without` one the same
model without the package (e.g. its `converted`, `pypi` and `quantized` cache folders as
links to the first's). Each sample is a fresh process that imports torch and chatcli,
then times `chatcli.loader.load_model` alone (weights, tokenizer, quantized cache and,
with the package, `CompiledLanguageModel.open`), in wall and CPU seconds (the CPU time
depends less on other processes' load): the whole-process start-up
(bench/startup.py) shows the same difference, buried in import and answer times that
vary more on a shared machine. Rounds interleave the two; the report gives medians (min
to max) and the median of the paired differences, per round.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from harness import Conditions, add_write_options, interleave, median, write_report

REPO = Path(__file__).resolve().parent.parent
CHILD = """
import time
import torch  # noqa: F401  (imported before the clock starts, in both)
from chatcli.backends.local import LocalBackend
from chatcli.loader import load_model
from chatcli.progress import SilentReporter
from chatcli.registry import load_registry
spec = load_registry().resolve(None)
runtime = LocalBackend.runtime_for(spec, "cpu", "auto", None, None)
start, cpu = time.perf_counter(), time.process_time()
loaded = load_model(spec, runtime, SilentReporter())
print(time.perf_counter() - start, time.process_time() - cpu,
      getattr(loaded.lm, "compiled", False))
"""


def load_seconds(home: Path, compiled: bool) -> tuple[float, float]:
    """(wall seconds, CPU seconds of all the process's threads) of one `load_model`."""
    env = {**os.environ, "CHATCLI_HOME": str(home), "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True,
                         env=env, cwd=REPO, check=True).stdout.split()
    if out[2] != str(compiled):
        sys.exit(f"{home}: the model loaded {'eagerly' if compiled else 'compiled'}")
    return float(out[0]), float(out[1])


def spread(values: list[float]) -> str:
    return f"{median(values):.3f} ({min(values):.3f} to {max(values):.3f})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--with", dest="with_home", type=Path, required=True, metavar="HOME")
    ap.add_argument("--without", type=Path, required=True, metavar="HOME")
    ap.add_argument("--runs", type=int, default=9)
    add_write_options(ap, "compiled-load")
    args = ap.parse_args()
    conditions = Conditions.observe()
    res = interleave({"without": lambda: load_seconds(args.without, False),
                      "with": lambda: load_seconds(args.with_home, True)},
                     args.runs, alternate=True)
    conditions.finish()
    rows = []
    for label, i in (("wall", 0), ("CPU (all threads)", 1)):
        without = [sample[i] for sample in res["without"]]
        with_ = [sample[i] for sample in res["with"]]
        paired = [a - b for a, b in zip(with_, without, strict=True)]
        rows.append(f"| {label} | {spread(without)} | {spread(with_)} | {spread(paired)} |")
    body = "\n".join([
        f"`python bench/compiled_load.py --runs {args.runs}`: `load_model` of the default "
        f"model in fresh processes; {args.runs} interleaved rounds; median (min to max) "
        f"seconds; {conditions.describe()}.",
        "",
        "| seconds | without the package | with it | with - without, same round |",
        "|---|---|---|---|",
        *rows,
    ])
    print(body)
    write_report(args, body)


if __name__ == "__main__":
    main()
