"""Start-up of a one-shot answer: first answer byte, last byte, process exit; `--help`.

Usage: python bench/startup.py [--runs 5] [-n 16] [--tree NAME=PATH ...]
                               [--home NAME=PATH ...] [--served NAME ...] [--question TEXT]
                               [--write docs/benchmarks.md] [-- extra ask args]

Runs `chatcli --help` and `chatcli ask -n N --stats QUESTION` on the default model
(already pulled and converted; warm page cache after the first round) as fresh
processes, interleaved over rounds (the order reversed every other round), and reports
medians (min to max) of:
- `--help`: the whole command;
- first answer byte: from the start to the first byte on stdout;
- last byte: to the last byte on stdout or stderr (the `--stats` line);
- exit: to the process's end (`wait()` returns);
- teardown: exit minus last byte, per run — what the process does after its last
  byte is written (the history is committed before the stats line);
- decode as the client sees it: (completion tokens - 1) / (last stdout byte - first
  stdout byte), the tokens from the `--stats` line: the same clock for an answer made
  in the process and one streamed from a resident server.
With several checkouts, a last column per later one gives its difference from the first,
run by run in the same round (median, min to max): load that drifts between rounds
cancels.

Each `--tree NAME=PATH` is a checkout of chatcli (e.g. a `git worktree` of the commit
before a change) run as `python -m chatcli` from PATH with PATH on PYTHONPATH; the
variants are interleaved in every round, so load from other work falls on all alike.
Without `--tree` the checkout this script is in is measured alone. `--home NAME=PATH`
runs the variant NAME with CHATCLI_HOME=PATH (e.g. the same checkout as two variants,
one home with a compiled decode step, one without); the others run with the
environment's. No variant builds the compiled step in the background
(CHATCLI_AUTO_COMPILE=0). `--served NAME` (repeatable) gives the variant NAME a
resident server (`chatcli serve --keep-alive -1` from its tree, with its environment),
started before the rounds, warmed by one answer (the model loaded, its compiled step
with it) and stopped after them; the other variants run with CHATCLI_SERVER=off, so
that they load in-process as without a server. The header states
the CPU and the load average at the start and end. Each tree's chatcli is compiled to
bytecode first (`compileall`), as a pip install does and as the first run of an
editable install leaves it: a shell with PYTHONDONTWRITEBYTECODE=1 would otherwise
make every run compile chatcli's modules from source (about 0.07 s of a served answer
here); `--no-bytecode` measures that case instead. `--write PATH` replaces the
`startup` section of PATH (e.g. docs/benchmarks.md) with the report.
"""

from __future__ import annotations

import argparse
import os
import re
import selectors
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from harness import (  # bench/ is on sys.path
    Conditions,
    add_write_options,
    interleave,
    median,
    write_report,
)

REPO = Path(__file__).resolve().parent.parent
QUESTION = "What is the capital of France?"


@dataclass(frozen=True)
class Run:
    """One `ask` process: seconds from its start."""

    first_byte: float
    last_byte: float
    exit: float
    code: int
    last_out: float = float("nan")  # the last stdout byte
    tokens: int = 0  # completion tokens, from the --stats line

    @property
    def decode_rate(self) -> float:
        """Tokens per second between the first and the last stdout byte."""
        span = self.last_out - self.first_byte
        return (self.tokens - 1) / span if self.tokens > 1 and span > 0 else float("nan")

    @property
    def teardown(self) -> float:
        return self.exit - self.last_byte


def timed_run(cmd: list[str], env: dict[str, str], cwd: Path) -> Run:
    """Run `cmd`, stamping the first stdout byte, the last byte on either stream and
    the process's end."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, env=env, cwd=cwd)
    assert proc.stdout is not None and proc.stderr is not None
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ, "out")
    sel.register(proc.stderr, selectors.EVENT_READ, "err")
    first = last = last_out = float("nan")
    err = b""
    open_streams = 2
    while open_streams:
        for key, _ in sel.select():
            chunk = os.read(key.fileobj.fileno(), 65536)  # type: ignore[union-attr]
            now = time.perf_counter() - start
            if not chunk:
                sel.unregister(key.fileobj)
                open_streams -= 1
                continue
            if key.data == "out" and first != first:  # still NaN
                first = now
            if key.data == "out":
                last_out = now
            else:
                err += chunk
            last = now
    code = proc.wait()
    end = time.perf_counter() - start
    sel.close()
    found = re.search(rb"completion_tokens=(\d+)", err)
    return Run(first, last, end, code, last_out, int(found.group(1)) if found else 0)


def start_server(exe: list[str], env: dict[str, str], tree: Path,
                 ask_args: list[str]) -> subprocess.Popen[bytes]:
    """`chatcli serve` for a variant, its model loaded by one answer."""
    server = subprocess.Popen([*exe, "serve", "--keep-alive", "-1"], env=env, cwd=tree,
                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while True:
        status = subprocess.run([*exe, "serve", "--status", "--json"], env=env, cwd=tree,
                                capture_output=True, text=True)
        if status.stdout.strip() not in ("", "null"):
            break
        if time.monotonic() > deadline or server.poll() is not None:
            server.kill()
            sys.exit(f"{tree}: chatcli serve did not start")
        time.sleep(0.2)
    subprocess.run([*exe, *ask_args], env=env, cwd=tree, check=True, capture_output=True)
    return server


def tree_env(tree: Path) -> dict[str, str]:
    # no background build of the compiled step: it would turn a variant into another
    # halfway through the rounds (bench/autocompile.py measures that)
    return {**os.environ, "PYTHONPATH": str(tree), "CHATCLI_AUTO_COMPILE": "0"}


def check_tree(tree: Path) -> None:
    """`python -m chatcli` from `tree` must run that tree's chatcli."""
    out = subprocess.run([sys.executable, "-c", "import chatcli; print(chatcli.__file__)"],
                         capture_output=True, text=True, check=True, env=tree_env(tree),
                         cwd=tree).stdout.strip()
    if not Path(out).resolve().is_relative_to(tree.resolve()):
        sys.exit(f"{tree}: python imports chatcli from {out}, not from this tree")


def compile_tree(tree: Path) -> None:
    """chatcli's bytecode in `tree` (its __pycache__ folders, which git ignores)."""
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(tree / "chatcli")],
                   check=True, stdout=subprocess.DEVNULL)


def parse_tree(text: str) -> tuple[str, Path]:
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"expected NAME=PATH, got {text!r}")
    return name, Path(path)


def spread(values: list[float]) -> str:
    return f"{median(values):.2f} ({min(values):.2f} to {max(values):.2f})" if values else "-"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("-n", type=int, default=16, help="answer tokens (default 16)")
    ap.add_argument("--tree", type=parse_tree, action="append", default=[],
                    metavar="NAME=PATH", help="a chatcli checkout to measure (repeatable)")
    ap.add_argument("--home", type=parse_tree, action="append", default=[],
                    metavar="NAME=PATH", help="CHATCLI_HOME of the variant NAME (repeatable)")
    ap.add_argument("--served", action="append", default=[], metavar="NAME",
                    help="the variant NAME answers through a resident chatcli serve")
    ap.add_argument("--question", default=QUESTION, help=f"the question (default {QUESTION!r})")
    ap.add_argument("--no-bytecode", action="store_true",
                    help="leave chatcli's modules uncompiled (see the module)")
    add_write_options(ap, "startup")
    ap.add_argument("rest", nargs="*", help="extra `chatcli ask` arguments")
    args = ap.parse_args()
    trees: list[tuple[str, Path]] = args.tree or [("this checkout", REPO)]
    for _, tree in trees:
        check_tree(tree)
        if not args.no_bytecode:
            compile_tree(tree)
    homes = dict(args.home)
    unknown = (set(homes) | set(args.served)) - {name for name, _ in trees}
    if unknown:
        sys.exit(f"--home or --served names no --tree: {', '.join(sorted(unknown))}")
    env_note = os.environ.get("CHATCLI_HOME", "default cache")
    if homes:
        env_note = f"its own CHATCLI_HOME for {', '.join(homes)} (--home), else {env_note}"
    ask_args = ["ask", "-n", str(args.n), "--stats", *args.rest, args.question]
    conditions = Conditions.observe()

    variants = {}
    servers: list[subprocess.Popen[bytes]] = []
    for name, tree in trees:
        exe = [sys.executable, "-m", "chatcli"]
        env = tree_env(tree)
        if name in homes:
            env["CHATCLI_HOME"] = str(homes[name])
        env["CHATCLI_SERVER"] = "use" if name in args.served else "off"
        if name in args.served:
            servers.append(start_server(exe, env, tree, ask_args))

        def help_s(exe: list[str] = exe, tree: Path = tree, env: dict[str, str] = env
                   ) -> float:
            t = time.perf_counter()
            subprocess.run([*exe, "--help"], stdout=subprocess.DEVNULL, check=True,
                           env=env, cwd=tree)
            return time.perf_counter() - t

        def ask(exe: list[str] = exe, tree: Path = tree, env: dict[str, str] = env) -> Run:
            run = timed_run([*exe, *ask_args], env, tree)
            if run.code != 0:
                sys.exit(f"{tree}: chatcli {' '.join(ask_args)} exited with {run.code}")
            return run

        variants[(name, "help")] = help_s
        variants[(name, "ask")] = ask
    try:
        res = interleave(variants, args.runs, alternate=True)
    finally:
        for server in servers:
            server.terminate()
            server.wait(timeout=60)
    conditions.finish()

    names = [name for name, _ in trees]
    base, others = names[0], names[1:]
    helps = {n: [float(x) for x in res[(n, "help")]] for n in names}
    asks = {n: [r for r in res[(n, "ask")] if isinstance(r, Run)] for n in names}

    def cells(samples: dict[str, list[float]]) -> list[str]:
        # each variant's spread, then each later variant minus the first, paired by round
        return [spread(samples[n]) for n in names] + [
            spread([a - b for a, b in zip(samples[n], samples[base], strict=True)])
            for n in others]

    rows: list[tuple[str, list[str]]] = [("`chatcli --help`", cells(helps))]
    for label, get in (("first answer byte", lambda r: r.first_byte),
                       ("last byte (`--stats` line)", lambda r: r.last_byte),
                       ("process exit (whole command)", lambda r: r.exit),
                       ("teardown: exit - last byte", lambda r: r.teardown),
                       *([("decode tok/s as the client sees it", lambda r: r.decode_rate)]
                         if args.n > 1 else [])):
        rows.append((f"`ask -n {args.n}`: {label}",
                     cells({n: [get(r) for r in asks[n]] for n in names})))
    columns = [*names, *[f"{n} - {base}, same round" for n in others]]
    lines = [
        f"`python bench/startup.py --runs {args.runs} -n {args.n}"
        + "".join(f" --tree {n}=…" for n in (args.tree and names) or [])
        + "".join(f" --home {n}=…" for n in homes)
        + "".join(f" --served {n!r}" for n in args.served)
        + (f" --question {args.question!r}" if args.question != QUESTION else "")
        + (" --no-bytecode" if args.no_bytecode else "")
        + f"`: fresh processes, `chatcli ask -n {args.n} --stats \"{args.question}\"`, cache: "
        f"{env_note}; chatcli's modules {'not ' if args.no_bytecode else ''}compiled to "
        f"bytecode beforehand; {args.runs} interleaved rounds; median (min to max) seconds "
        f"from the command's start; {conditions.describe()}.",
        "",
        "| measure | " + " | ".join(columns) + " |",
        "|---" * (len(columns) + 1) + "|",
        *[f"| {label} | " + " | ".join(cells) + " |" for label, cells in rows],
    ]
    body = "\n".join(lines)
    print(body)
    write_report(args, body)


if __name__ == "__main__":
    main()
