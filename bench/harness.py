"""What every script in bench/ shares: interleaved rounds, medians, the machine's
conditions, one greedy loop, and writing a section of docs/benchmarks.md.

Contract:
- `interleave(variants, rounds)` runs the variants A, B, C, A, B, C, ... (the order
  `schedule` gives; `alternate=True` reverses it every other round) so that load from
  other work on a shared machine drifts over all of them alike, and returns each
  variant's samples in round order. `median`, `medians` and `ratio` are NaN-aware:
  nothing measured gives NaN, never an exception; `format_ratio` writes "1.23x" or "-".
- `Conditions.observe()` records the CPU model and the load average (1, 5, 15 min) at
  the start; `.finish()` records it at the end; `.describe()` says both in one phrase.
- `greedy(lm, ids, n)` decodes exactly n tokens by argmax over any chatcli
  `LanguageModel` (prefill, then one step per token; EOS is not looked at) and returns
  the tokens and the time of every token. `generate(model, ids, n, **kwargs)` times
  transformers' `generate()` for exactly n tokens the same way (a streamer stamps each
  token). Both report `Decoded`.
- `write_section(path, name, body)` replaces the text between `<!-- name -->` and
  `<!-- /name -->` in place and keeps everything else; a missing section is appended.
  `add_write_options` gives a script `--write PATH` (any file: a scratch copy works
  as well as docs/benchmarks.md) and `--section NAME`; `write_report` honours them.

It knows nothing about chatcli's registry, loading, strategies or CLI, nor about any
particular benchmark. Only the standard library is imported at module level; torch is
imported inside `greedy` (for its default `feed`) and `generate`, so a process that
must never load torch (vs_llamacpp's llama.cpp memory probe) can use it.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

K = TypeVar("K", bound=Hashable)
T = TypeVar("T")

NAN = float("nan")
LoadAverage = tuple[float, float, float]

# ------------------------------------------------------------------ interleaved rounds


def schedule(names: Sequence[K], rounds: int, *, alternate: bool = False) -> list[tuple[int, K]]:
    """(round, name) in the order `interleave` runs them: every name once per round, in
    the given order, reversed in odd rounds when `alternate`."""
    return [(rnd, name) for rnd in range(rounds) for name in _round(names, rnd, alternate)]


def _round(names: Sequence[K], rnd: int, alternate: bool) -> list[K]:
    return list(reversed(names)) if alternate and rnd % 2 else list(names)


def interleave(
    variants: Mapping[K, Callable[[], T]],
    rounds: int,
    *,
    alternate: bool = False,
    skip: Callable[[int, K], bool] | None = None,
    after_round: Callable[[int, dict[K, list[T]]], None] | None = None,
) -> dict[K, list[T]]:
    """Run each variant once per round, interleaved (see `schedule`); its samples in
    round order. `skip(round, name)` leaves a run out (that variant then has fewer
    samples); `after_round(round, samples)` is called after each round (progress)."""
    samples: dict[K, list[T]] = {name: [] for name in variants}
    for rnd in range(rounds):
        for name in _round(list(variants), rnd, alternate):
            if skip is None or not skip(rnd, name):
                samples[name].append(variants[name]())
        if after_round is not None:
            after_round(rnd, samples)
    return samples


# --------------------------------------------------------------------- medians, ratios


def median(values: Iterable[float]) -> float:
    """The median, NaN when there is nothing to take it of."""
    values = list(values)
    return statistics.median(values) if values else NAN


def medians(samples: Mapping[K, Iterable[float]]) -> dict[K, float]:
    return {name: median(values) for name, values in samples.items()}


def ratio(a: float, b: float) -> float:
    """a / b, NaN when either is NaN or b is 0."""
    if math.isnan(a) or math.isnan(b) or b == 0:
        return NAN
    return a / b


def format_ratio(a: float, b: float, digits: int = 2) -> str:
    """a / b as "1.23x", "-" when it cannot be computed."""
    r = ratio(a, b)
    return "-" if math.isnan(r) else f"{r:.{digits}f}x"


def first_difference(a: Sequence[int], b: Sequence[int]) -> int | None:
    """Index of the first token where `a` and `b` differ; None when identical (a shorter
    sequence that is a prefix of the other differs at its length)."""
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


# ------------------------------------------------------------------ machine conditions


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo, else lscpu, else platform)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        for line in out.splitlines():
            if line.startswith("Model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def load_average() -> LoadAverage:
    """The 1, 5 and 15 minute load averages (NaN where the system has none)."""
    try:
        return os.getloadavg()
    except OSError:
        return (NAN, NAN, NAN)


def format_load(load: LoadAverage) -> str:
    return ", ".join(f"{x:.2f}" for x in load)


@dataclass
class Conditions:
    """The machine a run measured on: CPU model, load average at its start and end."""

    cpu: str
    load_start: LoadAverage
    load_end: LoadAverage | None = None

    @classmethod
    def observe(cls) -> Conditions:
        return cls(cpu_model(), load_average())

    def finish(self) -> None:
        self.load_end = load_average()

    def describe(self) -> str:
        text = f"{self.cpu}; load average (1, 5, 15 min) {format_load(self.load_start)} "
        text += "at the start"
        if self.load_end is not None:
            text += f", {format_load(self.load_end)} at the end"
        return text


# ------------------------------------------------------------------------ decoding


@dataclass(frozen=True)
class Decoded:
    """One fixed-length decode: its tokens and when each came.

    Times are seconds from the start of the call. `prefill_s`: the prompt's logits
    returned (NaN where unknown, as for `generate()`; on an accelerator the prefill may
    still be running then: the first token's argmax waits for it). `token_s[i]`: token
    i chosen. `total_s`: the call done."""

    tokens: list[int]
    prefill_s: float
    token_s: list[float] = field(default_factory=list)
    total_s: float = NAN

    @property
    def first_token_s(self) -> float:
        return self.token_s[0] if self.token_s else NAN

    @property
    def step_s(self) -> list[float]:
        """The time of each token after the first (since the one before it)."""
        return [b - a for a, b in zip(self.token_s, self.token_s[1:], strict=False)]

    @property
    def decode_tokens_per_s(self) -> float:
        """Tokens after the first / the time from the first token to the end."""
        if len(self.tokens) < 2:
            return NAN
        return ratio(len(self.tokens) - 1, self.total_s - self.first_token_s)

    @property
    def tokens_per_s(self) -> float:
        """All tokens / the whole call (prefill included)."""
        return ratio(len(self.tokens), self.total_s)


def greedy(lm: Any, ids: list[int], n: int, feed: Callable[[int], Any] | None = None) -> Decoded:
    """Exactly `n` (>= 1) greedy tokens after the prompt `ids` from a chatcli
    `LanguageModel` (`prefill(ids)`, then `step(feed(token), cache)` per token, argmax of
    row 0 each time: `int(...)` waits for the device, as streaming does). `feed` turns a
    token into `step`'s input; by default a one-element torch tensor on `lm.device`.
    Any object with that `prefill`/`step` pair works (logits only need `[0].argmax()`)."""
    to_input = feed if feed is not None else _torch_feed(lm.device)
    start = time.perf_counter()
    logits, cache = lm.prefill(ids)
    prefilled = time.perf_counter()
    tokens = [int(logits[0].argmax())]
    times = [time.perf_counter()]
    for _ in range(n - 1):
        logits, cache = lm.step(to_input(tokens[-1]), cache)
        tokens.append(int(logits[0].argmax()))
        times.append(time.perf_counter())
    return Decoded(tokens, prefilled - start, [t - start for t in times], times[-1] - start)


def _torch_feed(device: Any) -> Callable[[int], Any]:
    import torch

    def feed(token: int) -> Any:
        return torch.tensor([token], device=device)

    return feed


class _Stamps:
    """A transformers streamer that timestamps each put() (the prompt, then each token)."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def put(self, value: Any) -> None:
        self.times.append(time.perf_counter())

    def end(self) -> None:
        pass


def generate(model: Any, ids: list[int], n: int, stream: bool = True, **kwargs: Any) -> Decoded:
    """transformers' `model.generate()` for exactly `n` new tokens after `ids` (kwargs:
    the decoding settings; set `generation_config.eos_token_id = None` beforehand, or
    `min_new_tokens` keeps EOS away). With `stream=False` (beam search, which cannot
    stream) only the tokens and `total_s` are known."""
    import torch

    x = torch.tensor([ids], device=model.device)
    stamps = _Stamps() if stream else None
    start = time.perf_counter()
    out = model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=n,
                         min_new_tokens=n, streamer=stamps, **kwargs)
    end = time.perf_counter()
    token_s = [t - start for t in stamps.times[1:]] if stamps is not None else []
    return Decoded(out[0, len(ids):].tolist(), NAN, token_s, end - start)


# ------------------------------------------------------------------- docs/benchmarks.md

DOCS = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"


def write_section(path: Path, name: str, body: str) -> None:
    """Replace the text between <!-- name --> and <!-- /name --> in path (the markers
    kept, every other section untouched); append the section when it is not there."""
    start, end = f"<!-- {name} -->", f"<!-- /{name} -->"
    text = path.read_text() if path.exists() else ""
    block = f"{start}\n{body}\n{end}"
    if start in text and end in text:
        text = text[: text.index(start)] + block + text[text.index(end) + len(end):]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    path.write_text(text)


def add_write_options(parser: argparse.ArgumentParser, section: str) -> None:
    """`--write PATH` (the report replaces its section there; e.g. docs/benchmarks.md, or
    a scratch copy of it) and `--section NAME` (default `section`)."""
    parser.add_argument("--write", type=Path, default=None, metavar="PATH",
                        help=f"replace the report's section in PATH (e.g. {DOCS.parent.name}/"
                             f"{DOCS.name}, or a scratch copy)")
    parser.add_argument("--section", default=section,
                        help=f"the <!-- NAME --> section to replace (default {section})")


def write_report(args: argparse.Namespace, body: str) -> None:
    """Write `body` into the section `args.section` of `args.write`, when given."""
    if args.write is not None:
        write_section(args.write, args.section, body)


# -- probes: one engine alone in a fresh process --------------------------------------------
def process_memory_kib() -> dict[str, int]:
    """This process's VmRSS, VmHWM, RssFile and RssAnon (KiB), from /proc/self/status,
    after handing memory already freed back to the system (glibc's `malloc_trim`, as the
    GGUF loader does after loading: without it a reading before loading counts garbage
    the load then returns, and the difference undercounts, even below zero)."""
    import contextlib
    import ctypes
    import ctypes.util

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)
    status = Path("/proc/self/status").read_text().splitlines()
    return {line.split(":")[0]: int(line.split()[1]) for line in status
            if line.startswith(("VmRSS", "VmHWM", "RssFile", "RssAnon"))}


def run_probe(argv: list[str], what: str, timeout: int = 1800) -> dict[str, Any]:
    """Run `argv` (a script in its own --probe mode) and read the JSON its last stdout line
    holds; a failure ends the script, naming `what` with the probe's last stderr."""
    import json

    out = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=timeout)
    if out.returncode != 0:
        raise SystemExit(f"probe {what} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def memory_added(probe: Mapping[str, Any]) -> tuple[int, int]:
    """(bytes resident after loading and decoding, the peak) less what the probe held
    before loading, from its "before_kib" and "memory_kib" (`process_memory_kib`)."""
    before, after = probe["before_kib"], probe["memory_kib"]
    return (after["VmRSS"] - before["VmRSS"]) * 1024, (after["VmHWM"] - before["VmRSS"]) * 1024


def agreement(answers: Sequence[Sequence[int]], reference: Sequence[Sequence[int]]
              ) -> tuple[list[int], int]:
    """Per prompt, how many first tokens equal the reference's; and how many are equal
    throughout."""
    prefixes = [len(t) if (d := first_difference(t, r)) is None else d
                for t, r in zip(answers, reference, strict=True)]
    return prefixes, sum(p == len(t) for p, t in zip(prefixes, answers, strict=True))


def decode_rounds(load: Callable[[str], Any], names: Sequence[str], prompt: list[int],
                  tokens: int, rounds: int, log: Callable[[str], None]) -> dict[str, float]:
    """Each engine `load(name)` gives (with `.lm` and `.feed`) loaded and warmed up, then
    `rounds` interleaved rounds (the order reversed every other round) of greedy decode
    of `tokens` after `prompt`; the median decode tokens/s of each. The engines are let
    go at the end."""
    engines = {}
    for name in names:
        log(f"loading {name}")
        engines[name] = engine = load(name)
        greedy(engine.lm, prompt, 8, feed=engine.feed)  # warm-up
    variants = {name: (lambda e=engines[name]: greedy(e.lm, prompt, tokens,
                                                      feed=e.feed).decode_tokens_per_s)
                for name in names}
    samples = interleave(variants, rounds, alternate=True,
                         after_round=lambda rnd, s: log(f"round {rnd + 1}/{rounds} done"))
    engines.clear()
    decode = {name: median(samples[name]) for name in names}
    for name in names:
        log(f"{name}: decode {decode[name]:.1f} tok/s")
    return decode

