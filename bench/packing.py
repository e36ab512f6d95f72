"""Long conversations: /load and /context, a chat turn's overhead, packing into the window.

Usage: python bench/packing.py [--sizes 1000,3000,10000] [--repeats 5] [--limit 300]
                               [--tree NAME=PATH ...] [--measure open,load,turn,pack]
                               [--prefill-threads N] [--no-prefill]
                               [--write docs/benchmarks.md] [--section packing]

A conversation of N messages (a system prompt, then user messages of 10-80 words and
replies of 40-250 words, alternating, drawn from a fixed word list with a fixed seed) is
counted with the default alias's own tokenizer and chat template (SmolLM2's) and packed
into its 8192-token window minus the default 512 new tokens. Per size, in a fresh
process per checkout (`--tree NAME=PATH`: a checkout of chatcli run with PATH on
PYTHONPATH, e.g. a `git worktree` of the commit before a change; without --tree the
checkout this script is in), each measurement in seconds:

- open: what `chat --conversation ID` does before the first turn besides loading the
  model: the stored conversation read from a scratch history (`Store.load`) and the
  session made over it (its branch tree read from the history);
- load: in a new chat, `/load` of the conversation's JSON export (every message saved
  to the history again), then `/context` (everything counted, a row per message,
  printed to a buffer);
- turn: one chat turn over the opened conversation as `chat` runs it (`add_user`,
  `start_reply`, the answer, `finish_reply`, the history written) with the model
  replaced by one that answers at once (the same 60-token reply every time, without
  computing anything): everything a turn costs besides the model's own work, up to the
  first token of the answer and after its last (the decoding steps between, the same
  for any conversation, are left out). The first turn after opening, then the median
  of --repeats more; with the tokens the model would have prefilled each turn (the
  prompt minus what the prompt cache kept);
- pack: `pack` with the backend's `count`, as `chat` packs, on a backend that has
  counted nothing yet (cold), then on the next turns (a reply and a question added
  each time; warm): the median of --repeats.

A measurement that runs past --limit seconds is stopped and reported as "> limit"; the
rest of that size is not run for that checkout, nor that measurement at larger sizes
(nor any other that packs the whole conversation, where it was one of those). Repeats
stop early where another one would take the measurement past --limit in all (so a
slow checkout gets fewer samples). Then, once, the real default model prefills a prompt
as long as the largest size's packed prompt (in this process, `--prefill-threads`
threads): the model's own time for a turn, which the overhead is compared with. The
report states the CPU and the load average at the start and the end; `--write PATH`
replaces the `packing` section of PATH.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from harness import (  # bench/ is on sys.path
    Conditions,
    add_write_options,
    format_load,
    median,
    write_report,
)

REPO = Path(__file__).resolve().parent.parent
MEASURES = ("open", "load", "turn", "pack")
# The measurements (as reported) that pack the whole conversation: where one of them runs
# too long, all of them would.
PACKING = {"load context", "turn", "pack cold", "pack warm"}
VOCABULARY = (
    "the garden needs water and light while tomatoes grow in warm soil so plant them after "
    "the last frost then add compost every week pick leaves shade roots seeds basil carrots "
    "lettuce beans why how when which could would should really simple schedule pests slugs "
    "aphids bed rows space sun morning evening")
WORDS = tuple(VOCABULARY.split())
WINDOW = 8192


class TooLong(Exception):
    """A measurement ran past the limit."""


def conversation_turns(n: int, seed: int = 0) -> list[tuple[str, str]]:
    """N messages: (role, text), user and assistant alternating."""
    rng = random.Random(seed)
    turns = []
    for i in range(n):
        lo, hi = (10, 80) if i % 2 == 0 else (40, 250)
        text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi)))
        turns.append(("user" if i % 2 == 0 else "assistant", text.capitalize() + "."))
    return turns


# ----------------------------------------------------------------- the child process


class InstantLM:
    """A language model that answers at once, always the same reply (`script`, then
    EOS), whatever the prompt. Counts the prompt tokens it is fed (what a real model
    would prefill)."""

    def __init__(self, vocab_size: int, eos: int, script: list[int]) -> None:
        import torch

        self.device = torch.device("cpu")
        self.vocab_size = vocab_size
        self.script = [*script, eos]
        self.rows = torch.full((len(self.script), vocab_size), -1e4)
        for k, token in enumerate(self.script):
            self.rows[k, token] = 0.0
        self.next = 0
        self.fed = 0

    def _logits(self, rows: int) -> Any:
        k = min(self.next, len(self.script) - 1)
        self.next += 1
        return self.rows[k:k + 1].expand(rows, -1).clone()

    def prefill(self, ids: list[int], cache: Any = None) -> tuple[Any, Any]:
        cache = cache if cache is not None else [0]
        cache[0] += len(ids)
        self.fed += len(ids)
        self.next = 0
        return self._logits(1), cache

    def step(self, tokens: Any, cache: Any) -> tuple[Any, Any]:
        cache[0] += 1
        return self._logits(int(tokens.reshape(-1).shape[0])), cache

    def crop(self, cache: Any, length: int) -> None:
        cache[0] = length

    def can_crop(self, cache: Any, length: int) -> bool:
        return 0 <= length <= cache[0]

    def expand(self, cache: Any, rows: int) -> None:
        pass

    def reorder(self, cache: Any, rows: Any) -> None:
        pass


def _timed(limit: float, run: Callable[[], Any]) -> float:
    """Seconds `run` took; raises TooLong past `limit`."""

    def alarm(signum: int, frame: Any) -> None:
        raise TooLong

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, limit)
    start = time.perf_counter()
    try:
        run()
        return time.perf_counter() - start
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def child(args: argparse.Namespace) -> None:
    """Measure one size with the chatcli on sys.path; one JSON line per measurement."""
    from chatcli.backends.local import LocalBackend
    from chatcli.chat.commands import ChatContext, dispatch
    from chatcli.chat.session import ChatSession, DecodingRequest
    from chatcli.context import pack
    from chatcli.conversation import Conversation, Message
    from chatcli.decoding.registry import strategy_registry
    from chatcli.loader import LoadedModel, open_tokenizer
    from chatcli.registry import ModelSpec
    from chatcli.runtime import Runtime
    from chatcli.store import Store
    from chatcli.transcript import to_json
    from chatcli.ui.console import UI

    def emit(name: str, value: Any, **extra: Any) -> None:
        print(json.dumps({"measure": name, "value": value, **extra}), flush=True)

    folder = Path(args.folder)
    tokenizer = open_tokenizer(folder)
    eos = tokenizer.eos_token_id
    spec = ModelSpec(alias="bench", source="path", path=folder, context_window=WINDOW)

    reply = tokenizer("Sure: " + " ".join(WORDS[:50]) + ".", add_special_tokens=False)
    script = list(reply["input_ids"])

    def backend() -> tuple[Any, InstantLM]:
        lm = InstantLM(len(tokenizer), eos, script)
        loaded = LoadedModel(spec, lm, tokenizer, Runtime("cpu", "float32", None),
                             frozenset({eos}), WINDOW, 0.0, folder=folder)
        return LocalBackend(loaded), lm

    registry = strategy_registry()
    system = "You are a helpful gardening assistant. Answer briefly."
    turns = [Message(role, text) for role, text in conversation_turns(args.child)]
    questions = (f"And what about week {k}? " + " ".join(WORDS[k:k + 30]) for k in range(10**6))
    asked, skip = set(args.measure.split(",")), set(args.skip.split(","))
    limit = args.limit

    def more(samples: list[float]) -> bool:
        """Another repeat: fewer than --repeats so far, and time left for one more
        within --limit (each measurement takes at most about that long in all)."""
        return len(samples) < args.repeats and (
            not samples or sum(samples) + max(samples) <= limit)

    def session_over(conv: Conversation, store: Store, conv_id: int | None,
                     ids: list[int] | None) -> Any:
        return ChatSession(backend()[0], registry, DecodingRequest(), conv, store=store,
                           conversation_id=conv_id, message_ids=ids, warn=lambda text: None)

    def context_of(session: Any) -> Any:
        return ChatContext(session, UI(io.StringIO(), io.StringIO()), answer=lambda *a: None,
                           load_model=lambda alias: None)

    with tempfile.TemporaryDirectory(prefix="chatcli-bench-") as scratch:
        store = Store.open(Path(scratch) / "history.sqlite")
        empty = store.new_conversation("bench", system)
        conv_id, _ = store.fork(empty, "bench", system, [(None, m) for m in turns])
        session_over(Conversation(system), store, None, None)  # imports, before any timing
        current = "open"
        try:
            opened: list[Any] = []

            def open_session() -> None:
                _, conv, ids = store.load(conv_id)
                opened.append(session_over(conv, store, conv_id, ids))

            emit(current, _timed(limit, open_session))
            session = opened[0]
            budget = session.budget

            if "load" in asked and "load" not in skip:  # a new chat, /load, /context
                path = Path(scratch) / "export.json"
                path.write_text(to_json(None, Conversation(system, list(turns))))
                ctx = context_of(session_over(Conversation(), store, None, None))
                current = "load"
                emit(current, _timed(limit, lambda: dispatch(f"/load {path}", ctx)))
                if "load context" not in skip:
                    current = "load context"
                    emit(current, _timed(limit, lambda: dispatch("/context", ctx)))

            if "turn" in asked and "turn" not in skip:  # the conversation opened above
                lm = session.backend.loaded.lm
                current, samples, fed, prompts = "turn", [], [], []
                while more(samples[1:]):
                    before = lm.fed

                    def turn() -> None:
                        start = time.perf_counter()
                        session.add_user(next(questions))
                        gen, _ = session.start_reply()
                        events = iter(gen)
                        next(events)
                        first = time.perf_counter()
                        for _ in events:
                            pass
                        last = time.perf_counter()
                        session.finish_reply(gen)
                        samples.append(first - start + time.perf_counter() - last)

                    _timed(limit, turn)
                    fed.append(lm.fed - before)
                    prompts.append(session.last_packed.tokens)
                emit(current, samples, fed=fed, prompt=prompts)

            if "pack" in asked and "pack cold" not in skip:  # `pack` on a new backend
                counting, _ = backend()
                conv = Conversation(system, list(turns))
                conv.add_user(next(questions))
                packed: list[Any] = []
                current = "pack cold"
                emit(current, _timed(limit, lambda: packed.append(
                    pack(conv, counting.count, budget))))
                current, warm = "pack warm", []
                while more(warm):
                    conv.add_assistant("Sure. " + " ".join(WORDS[:40]))
                    conv.add_user(next(questions))
                    warm.append(_timed(limit, lambda: packed.append(
                        pack(conv, counting.count, budget))))
                emit(current, warm, tokens=len(packed[-1].ids),
                     dropped=packed[-1].dropped_exchanges)
        except TooLong:
            emit(current, math.inf)
        finally:
            store.close()


# ---------------------------------------------------------------- the parent process


def run_child(tree: Path, size: int, args: argparse.Namespace, folder: Path, home: Path,
              skip: set[str]) -> Iterator[dict[str, Any]]:
    env = {**os.environ, "PYTHONPATH": str(tree), "CHATCLI_HOME": str(home)}
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", str(size),
           "--folder", str(folder), "--repeats", str(args.repeats), "--limit", str(args.limit),
           "--measure", args.measure, "--skip", ",".join(sorted(skip))]
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env, cwd=tree) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            yield json.loads(line)
        if proc.wait() != 0:
            raise SystemExit(f"the measurement of {size} messages in {tree} failed")


def commit_of(tree: Path) -> str:
    out = subprocess.run(["git", "-C", str(tree), "rev-parse", "--short", "HEAD"],
                         capture_output=True, text=True, check=False).stdout.strip()
    dirty = subprocess.run(["git", "-C", str(tree), "status", "--porcelain", "chatcli"],
                           capture_output=True, text=True, check=False).stdout.strip()
    return (out or "?") + ("+changes" if dirty else "")


def seconds(value: Any, limit: float) -> str:
    if value is None:
        return "-"
    if isinstance(value, list):
        value = median(value)
    if value == math.inf:
        return f"> {limit:.0f}"
    return f"{value:.3f}" if value < 10 else f"{value:.1f}"


def prefill_seconds(tokens: int, threads: int | None) -> tuple[float, int, str]:
    """The real default model's prefill of a `tokens`-token prompt, once."""
    from chatcli.loader import load_model
    from chatcli.progress import SilentReporter
    from chatcli.registry import load_registry
    from chatcli.runtime import resolve_runtime

    spec = load_registry().resolve(None)
    runtime = resolve_runtime("cpu", "auto", threads, spec.dtype, spec.quantize)
    loaded = load_model(spec, runtime, SilentReporter())
    ids = [100 + (7 * i) % 20000 for i in range(tokens)]
    import torch

    start = time.perf_counter()
    loaded.lm.prefill(ids)
    took = time.perf_counter() - start
    what = (f"{spec.alias}, {loaded.implementation}, {runtime.dtype}"
            f"{'' if runtime.quantize == 'none' else ' ' + runtime.quantize}, "
            f"{torch.get_num_threads()} thread(s)")
    return took, tokens, what


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="1000,3000,10000")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--limit", type=float, default=300.0,
                    help="seconds one measurement may take before it is stopped")
    ap.add_argument("--tree", action="append", default=[], metavar="NAME=PATH")
    ap.add_argument("--measure", default=",".join(MEASURES),
                    help="which of " + ",".join(MEASURES) + " (open always runs)")
    ap.add_argument("--prefill-threads", type=int, default=None)
    ap.add_argument("--no-prefill", action="store_true")
    ap.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--skip", default="", help=argparse.SUPPRESS)
    ap.add_argument("--folder", default=None, help=argparse.SUPPRESS)
    add_write_options(ap, "packing")
    args = ap.parse_args()
    if args.child is not None:
        child(args)
        return

    conditions = Conditions.observe()
    from chatcli import loader, sources
    from chatcli.registry import load_registry

    spec = load_registry().resolve(None)
    weights = sources.locate(spec)
    if weights is None:
        raise SystemExit(f"pull the default model first: chatcli pull {spec.alias}")
    folder = loader.converted_dir(spec, weights) if weights.gguf_file else weights.folder
    trees = [tuple(t.split("=", 1)) for t in args.tree] or [("now", str(REPO))]
    sizes = [int(s) for s in args.sizes.split(",")]
    results: dict[str, dict[int, dict[str, Any]]] = {name: {} for name, _ in trees}
    skip: dict[str, set[str]] = {name: set() for name, _ in trees}
    with tempfile.TemporaryDirectory(prefix="chatcli-bench-home-") as home:
        for size in sizes:
            for name, path in trees:
                for row in run_child(Path(path), size, args, folder, Path(home), skip[name]):
                    print(f"{name} {size}: {row}", file=sys.stderr, flush=True)
                    results[name].setdefault(size, {})[row["measure"]] = row
                    if row["value"] == math.inf:  # larger sizes would take longer still
                        skip[name] |= PACKING if row["measure"] in PACKING else {row["measure"]}
    prefill = None
    if not args.no_prefill:
        longest = max((r["pack warm"]["tokens"] for rs in results.values()
                       for r in rs.values() if "pack warm" in r), default=7600)
        prefill = prefill_seconds(longest, args.prefill_threads)
    conditions.finish()
    body = report(args, trees, sizes, results, prefill, conditions)
    print(body)
    write_report(args, body)


def report(args: argparse.Namespace, trees: list[Any], sizes: list[int],
           results: dict[str, dict[int, dict[str, Any]]],
           prefill: tuple[float, int, str] | None, conditions: Conditions) -> str:
    limit = args.limit
    names = [name for name, _ in trees]
    assert conditions.load_end is not None
    lines = [
        f"`python bench/packing.py --sizes {args.sizes} --repeats {args.repeats} "
        f"--limit {limit:.0f}" + "".join(f" --tree {n}=…" for n in names)
        + (f" --measure {args.measure}" if args.measure != ",".join(MEASURES) else "")
        + f"` — {conditions.cpu}; load average (1, 5, 15 min) "
        f"{format_load(conditions.load_start)} at the start, "
        f"{format_load(conditions.load_end)} at the end. "
        + "; ".join(f"{name}: {commit_of(Path(path))}" for name, path in trees) + ".",
        "",
        "Seconds; turn: next and pack warm are medians of up to --repeats samples. `> N`: "
        "stopped after N s; `-`: not run (not asked for, or stopped at a smaller size or "
        "earlier in this one).",
        "",
    ]
    header = ["messages", "checkout", "open", "/load", "/context after /load",
              "turn: first", "turn: next", "tokens prefilled, turn by turn", "pack cold",
              "pack warm"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for size in sizes:
        for name in names:
            row = results[name].get(size, {})

            def get(measure: str, key: str = "value", row: dict[str, Any] = row) -> Any:
                cell = row.get(measure)
                return None if cell is None else cell.get(key)

            turn = get("turn")
            fed = get("turn", "fed")
            listed = isinstance(turn, list)
            cells = [
                str(size), name, seconds(get("open"), limit), seconds(get("load"), limit),
                seconds(get("load context"), limit),
                seconds(turn[0] if listed else turn, limit),
                seconds(turn[1:] if listed and len(turn) > 1 else turn, limit),
                ", ".join(map(str, fed)) if fed else "-",
                seconds(get("pack cold"), limit), seconds(get("pack warm"), limit),
            ]
            lines.append("| " + " | ".join(cells) + " |")
    if prefill is not None:
        took, tokens, what = prefill
        lines += ["", f"The model's own prefill of a {tokens}-token prompt ({what}): "
                      f"**{took:.1f} s**. A turn's overhead beyond it (turn: next / prefill):"]
        for name in names:
            parts = []
            for size in sizes:
                turn = results[name].get(size, {}).get("turn", {}).get("value")
                if isinstance(turn, list) and len(turn) > 1:
                    parts.append(f"{size} messages {100 * median(turn[1:]) / took:.2f} %")
            if parts:
                lines.append(f"- {name}: " + ", ".join(parts) + ".")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
