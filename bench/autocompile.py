"""The compiled decode step built in the background: what it costs the answer the user
waits for, and what it gives the next one.

Usage: python bench/autocompile.py [--rounds 7] [--spawns 15] [-n 64]
                                   [--write docs/benchmarks.md]

On the default model (CHATCLI_HOME as set, the model pulled; the compiled step of its
default mode is removed first, so that the runs start from a machine without one):
1. spawn: in one process with the model loaded, `chatcli.autocompile.after_answer`
   timed `--spawns` times, each builder it starts stopped at once (SIGKILL to its
   group, its files removed): what an answer pays after its last byte (the first call
   also imports what it needs; reported apart).
2. ask: fresh `chatcli ask -n N --stats` processes in interleaved rounds, `off`
   (CHATCLI_AUTO_COMPILE=0) and `spawn` (a build started after the answer, stopped
   after the round): the last byte on stdout/stderr, the process's end, and the time
   between them (where the build is started: the rest of the process is the same).
3. during: `off` answers while a real background build runs (autotuned, as users get
   it; started by one more `spawn` answer), as many rounds as it lasts (at most
   `--rounds`), against the `off` answers of 2.
4. after: once the build is done (its wall time, and its process's peak resident
   memory as last seen between answers, noted), answers with the package:
   decode tokens/s (`--stats`) and the whole process, against the eager answers of 2.

The header states the CPU and the load average at the start and the end; `--write
PATH` replaces the `autocompile` section of PATH with the report.
"""

from __future__ import annotations

import argparse
import os
import re
import selectors
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness import (  # bench/ is on sys.path
    Conditions,
    add_write_options,
    interleave,
    median,
    write_report,
)

REPO = Path(__file__).resolve().parent.parent
QUESTION = "Write a short story about a lighthouse keeper."


@dataclass(frozen=True)
class Run:
    """One `ask` process: seconds from its start, and its decode speed."""

    last_byte: float
    exit: float
    tokens_per_s: float
    implementation: str


def timed_ask(args: list[str], env: dict[str, str]) -> Run:
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "chatcli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, env=env,
                            cwd=REPO)
    assert proc.stdout is not None and proc.stderr is not None
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ, "out")
    sel.register(proc.stderr, selectors.EVENT_READ, "err")
    last, err, open_streams = float("nan"), b"", 2
    while open_streams:
        for key, _ in sel.select():
            chunk = os.read(key.fileobj.fileno(), 65536)  # type: ignore[union-attr]
            if not chunk:
                sel.unregister(key.fileobj)
                open_streams -= 1
                continue
            last = time.perf_counter() - start
            if key.data == "err":
                err += chunk
    code = proc.wait()
    end = time.perf_counter() - start
    sel.close()
    stats = err.decode().strip().splitlines()[-1] if err.strip() else ""
    if code != 0 or not stats.startswith("stats: "):
        sys.exit(f"chatcli {' '.join(args)} exited with {code}: {err.decode()}")
    speed = re.search(r"tokens_per_second=([\d.]+)", stats)
    impl = re.search(r"implementation=(\S+)", stats)
    return Run(last, end, float(speed.group(1)) if speed else float("nan"),
               impl.group(1) if impl else "?")


def default_package() -> tuple[Path, Any, Any]:
    """The default model's package in its default mode, its folder and runtime."""
    from chatcli import sources
    from chatcli.loader import compiled_package, converted_dir
    from chatcli.registry import load_registry
    from chatcli.runtime import resolve_runtime

    spec = load_registry().resolve(None)
    weights = sources.locate(spec)
    if weights is None:
        sys.exit(f"pull the default model first: chatcli pull {spec.alias}")
    folder = converted_dir(spec, weights) if weights.gguf_file else weights.folder
    runtime = resolve_runtime("cpu", "auto", None, spec.dtype, None, spec.quantize)
    return compiled_package(folder, runtime), folder, runtime


def remove_package(package: Path) -> None:
    from chatcli import autocompile
    from chatcli.lm.compiled import key_path, remove_unpacked

    for path in (package, key_path(package), autocompile.state_path(package),
                 autocompile.log_path(package), autocompile.lock_path(package)):
        path.unlink(missing_ok=True)
    remove_unpacked(package)
    autocompile.remove_leftovers(package)


def stop_builder(package: Path, timeout: float = 10.0) -> bool:
    """Stop the background build of `package` as soon as it holds its lock; its files go.
    False when none started within `timeout`."""
    from chatcli import autocompile

    deadline = time.monotonic() + timeout
    held = autocompile.holder(package)
    while held is None or held[0] == 0:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
        held = autocompile.holder(package)
    os.killpg(held[0], signal.SIGKILL)
    while autocompile.holder(package) is not None:
        time.sleep(0.02)
    remove_package(package)
    return True


def peak_rss_kb(pid: int) -> int:
    """The peak resident memory of process `pid` so far (VmHWM), 0 if unknown."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def spread(values: list[float], digits: int = 2) -> str:
    if not values:
        return "-"
    return (f"{median(values):.{digits}f} ({min(values):.{digits}f} to "
            f"{max(values):.{digits}f})")


def measure_spawn(tries: int, package: Path) -> list[float]:
    """Milliseconds `after_answer` takes with the default model loaded (it starts a build)."""
    from chatcli import autocompile
    from chatcli.backends.local import LocalBackend
    from chatcli.loader import load_model
    from chatcli.progress import SilentReporter
    from chatcli.registry import load_registry
    from chatcli.runtime import resolve_runtime

    spec = load_registry().resolve(None)
    runtime = resolve_runtime("cpu", "auto", None, spec.dtype, None, spec.quantize)
    backend = LocalBackend(load_model(spec, runtime, SilentReporter()))
    times = []
    for _ in range(tries):
        autocompile._considered.clear()
        started = time.perf_counter()
        autocompile.after_answer(backend)
        times.append((time.perf_counter() - started) * 1000)
        if not stop_builder(package):
            sys.exit("after_answer started no build")
    return times


def real_build(ask_args: list[str], on: dict[str, str], off: dict[str, str], package: Path,
               rounds: int) -> tuple[list[Run], float, int, list[Run]]:
    """3 and 4: a real build started by an answer, answers while it runs, its wall time
    and its process's peak resident memory (kB), then answers with the package."""
    from chatcli import autocompile

    started = time.perf_counter()
    timed_ask(ask_args, on)
    deadline = time.monotonic() + 10
    while autocompile.holder(package) is None and not package.exists():
        if time.monotonic() > deadline:
            sys.exit("the answer started no build")
        time.sleep(0.02)
    during: list[Run] = []
    peak_kb = 0
    while (held := autocompile.holder(package)) is not None:
        peak_kb = max(peak_kb, peak_rss_kb(held[0]))
        if len(during) < rounds:
            during.append(timed_ask(ask_args, off))
        else:
            time.sleep(0.5)
    build_s = time.perf_counter() - started
    state = autocompile.read_state(package)
    if not package.exists():
        sys.exit(f"the background build failed: {state}")
    after = [timed_ask(ask_args, off) for _ in range(rounds)]
    return during, build_s, peak_kb, after


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--spawns", type=int, default=15)
    ap.add_argument("-n", type=int, default=64, help="answer tokens (default 64)")
    ap.add_argument("--no-build", action="store_true",
                    help="measure 1 and 2 only (no real build: minutes quicker)")
    add_write_options(ap, "autocompile")
    args = ap.parse_args()
    package, _, runtime = default_package()
    remove_package(package)
    conditions = Conditions.observe()
    ask_args = ["ask", "-n", str(args.n), "--stats", QUESTION]
    base = {k: v for k, v in os.environ.items() if k != "TORCHINDUCTOR_CACHE_DIR"}
    base["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), base.get("PYTHONPATH")) if p)
    off = {**base, "CHATCLI_AUTO_COMPILE": "0"}
    on = {**base, "CHATCLI_AUTO_COMPILE": "1"}
    timed_ask(ask_args, off)  # warm: converted, quantized, page cache

    spawn_ms = measure_spawn(args.spawns, package)

    def spawning() -> Run:
        run = timed_ask(ask_args, on)
        if not stop_builder(package):
            sys.exit("the answer started no build")
        return run

    runs = interleave({"off": lambda: timed_ask(ask_args, off), "spawn": spawning},
                      args.rounds, alternate=True)
    build = None if args.no_build else real_build(ask_args, on, off, package, args.rounds)
    conditions.finish()

    paired = [s.exit - o.exit for s, o in zip(runs["spawn"], runs["off"], strict=True)]
    after_last = [(s.exit - s.last_byte) - (o.exit - o.last_byte)
                  for s, o in zip(runs["spawn"], runs["off"], strict=True)]
    lines = [
        f"`python bench/autocompile.py --rounds {args.rounds} --spawns {args.spawns} "
        f"-n {args.n}{' --no-build' if args.no_build else ''}`: the default model "
        f"({runtime.dtype}/{runtime.quantize}), fresh "
        f"`chatcli ask -n {args.n} --stats` processes; median (min to max); "
        f"{conditions.describe()}.",
        "",
        "| measure | value |",
        "|---|---|",
        f"| `after_answer` (decide and start the build), ms: the process's first | "
        f"{spawn_ms[0]:.1f} |",
        f"| `after_answer`, ms: the {args.spawns - 1} tries after it | "
        f"{spread(spawn_ms[1:], 1)} |",
        f"| ask, no build (`CHATCLI_AUTO_COMPILE=0`): last byte, s | "
        f"{spread([r.last_byte for r in runs['off']])} |",
        f"| ask, starting a build: last byte, s | "
        f"{spread([r.last_byte for r in runs['spawn']])} |",
        f"| ask, no build: process exit, s | {spread([r.exit for r in runs['off']])} |",
        f"| ask, starting a build: process exit, s | "
        f"{spread([r.exit for r in runs['spawn']])} |",
        f"| starting a build - no build, process exit, same round, s | {spread(paired)} |",
        f"| ask, no build: after the last byte (exit - last byte), s | "
        f"{spread([r.exit - r.last_byte for r in runs['off']], 3)} |",
        f"| ask, starting a build: after the last byte, s | "
        f"{spread([r.exit - r.last_byte for r in runs['spawn']], 3)} |",
        f"| after the last byte, starting a build - no build, same round, s | "
        f"{spread(after_last, 3)} |",
        f"| first answer, eager ({runs['off'][0].implementation}): decode tok/s | "
        f"{spread([r.tokens_per_s for r in runs['off']], 1)} |",
    ]
    if build is not None:
        during, build_s, peak_kb, after = build
        lines += [
            f"| ask while a build runs ({len(during)} answers): process exit, s | "
            f"{spread([r.exit for r in during])} |",
            f"| ask while a build runs: decode tok/s | "
            f"{spread([r.tokens_per_s for r in during], 1)} |",
            f"| the background build (autotuned), wall s, from the answer that started it | "
            f"{build_s:.0f} |",
            f"| the background build: its process's peak resident memory (last seen), MB | "
            f"{peak_kb / 1024:.0f} |",
            f"| next answers, with the package ({after[0].implementation}): decode tok/s | "
            f"{spread([r.tokens_per_s for r in after], 1)} |",
            f"| next answers, with the package: process exit, s | "
            f"{spread([r.exit for r in after])} |",
        ]
    body = "\n".join(lines)
    print(body)
    write_report(args, body)


if __name__ == "__main__":
    main()
