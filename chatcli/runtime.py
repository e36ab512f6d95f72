"""Device, dtype and thread choices for running a model.

Contract: `resolve_runtime(device, dtype, threads, spec_dtype, quantize, spec_quantize)`
turns the user's
"auto"-able choices into concrete ones and validates them (`UsageError` names the
option and the valid values). `apply_threads()` configures torch once per process.
torch is imported only inside the functions that need it.

Defaults come from measurements on a 2-core CPU (see docs/benchmarks.md):
bf16 decodes 1.1-1.6x faster than fp32 where the CPU has native bf16
(avx512_bf16 / amx), so "auto" picks it there and fp32 elsewhere.
This module knows nothing about models.toml files or tokenizers.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from functools import cache

from chatcli.errors import UsageError

DEVICES = ("auto", "cpu", "cuda", "mps")
DTYPE_NAMES = ("auto", "float32", "bfloat16", "float16")
QUANTIZE_NAMES = ("none", "int8", "int4", "gguf")


@dataclass(frozen=True)
class Runtime:
    device: str  # "cpu", "cuda", "mps"
    dtype: str  # "float32", "bfloat16", "float16"
    threads: int | None  # torch intra-op threads on CPU; None: chosen by `apply_threads`
    # weight-only quantization of linear layers: none | int8 | int4 | gguf (a GGUF's own)
    quantize: str = "none"
    # Whether `quantize` came from the alias (models.toml) rather than --quantize: an
    # alias's choice applies where quantized layers exist (chatcli's native forward pass
    # on the CPU) and gives way elsewhere; the flag's is refused where it cannot apply.
    quantize_from_alias: bool = False


@cache
def cpu_has_native_bf16() -> bool:
    """True when the CPU computes bf16 natively (avx512_bf16 or AMX)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            flags = f.read()
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


def _cpu_sample() -> tuple[float, float, float] | None:
    """(wall seconds, busy core-seconds of the whole machine, this process's CPU seconds)."""
    try:
        with open("/proc/stat", encoding="ascii") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return time.monotonic(), (sum(fields[:8]) - idle) / hz, time.process_time()


_FIRST_SAMPLE = _cpu_sample()  # taken when chatcli starts, before torch is imported


def other_busy_cores() -> float | None:
    """Cores kept busy by other processes since chatcli started (None if unknown).

    Compares the machine's busy CPU time with this process's own over the
    start-up window (importing torch and transformers, ~1 s).
    """
    now = _cpu_sample()
    if _FIRST_SAMPLE is None or now is None or now[0] - _FIRST_SAMPLE[0] < 0.2:
        return None
    return _others_between(_FIRST_SAMPLE, now)


def _others_between(first: tuple[float, float, float], now: tuple[float, float, float]) -> float:
    """Cores other processes kept busy between two `_cpu_sample`s: the machine's busy time
    less this process's own, over the wall time between them."""
    wall = now[0] - first[0]
    return max(0.0, ((now[1] - first[1]) - (now[2] - first[2])) / wall)


class BusyMeter:
    """Cores other processes kept busy over the last window of at least `window` seconds
    (`others`, None until one has passed; `span`: that window's start and end on
    `time.monotonic()`'s clock), and over the time between the last two ticks
    (`recent`): what a long-running process (the resident server) measures instead of
    its start-up window. `tick()` as often as convenient (every 0.2 s, say)."""

    def __init__(self, window: float = 1.0) -> None:
        import threading

        self.window = window
        self.others: float | None = None
        self.span: tuple[float, float] | None = None
        self.recent: tuple[float, tuple[float, float]] | None = None
        self._last = self._tick = _cpu_sample()
        self._lock = threading.Lock()  # ticks from two threads (a reaper, an answer)

    def tick(self) -> None:
        now = _cpu_sample()
        if now is None:
            return
        with self._lock:
            if self._tick is not None and now[0] - self._tick[0] >= 0.05:
                self.recent = _others_between(self._tick, now), (self._tick[0], now[0])
                self._tick = now
            if self._last is not None and now[0] - self._last[0] >= self.window:
                self.others = _others_between(self._last, now)
                self.span, self._last = (self._last[0], now[0]), now

    def others_besides(self, pid: int | None) -> float | None:
        """What other processes keep busy now, `pid`'s part left out (the command that
        has just asked for an answer: its own start-up is not a neighbour's load): the
        smaller of the last window's figure and the last tick's, so that a neighbour
        that has just ended does not count; each less `pid`'s CPU time spread evenly
        over its life."""
        self.tick()  # the last tick's figure ends now, where the time since allows
        if self.others is None or self.span is None:
            return self.others
        used = process_cpu(pid) if pid is not None else None
        rate, born = (used[0] / max(used[1], 1e-3), time.monotonic() - used[1]) if used \
            else (0.0, 0.0)
        figures = [(self.others, self.span)] + ([self.recent] if self.recent else [])
        return min(max(0.0, others - rate * max(0.0, end - max(start, born)) / (end - start))
                   for others, (start, end) in figures)


def process_cpu(pid: int) -> tuple[float, float] | None:
    """(CPU seconds, age in seconds) of process `pid` (None where unknown)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        with open("/proc/uptime", "rb") as f:
            uptime = float(f.read().split()[0])
        hz = os.sysconf("SC_CLK_TCK")
        return (int(fields[11]) + int(fields[12])) / hz, uptime - int(fields[19]) / hz
    except (OSError, ValueError, IndexError, AttributeError):
        return None


def default_threads(busy: float | None = None) -> int:
    """Intra-op threads: the cores that other processes leave free, at least one.
    `busy`: the cores others keep busy, where the caller measured it (a `BusyMeter`);
    else measured over this process's start-up, else the load average.

    Measured on 2 cores (docs/benchmarks.md): 2 threads decode 1.4x faster than 1
    when the machine is idle, but 2.4x slower than 1 when another process keeps
    one core busy (OpenMP threads spin-wait on each other).
    """
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS
        cores = os.cpu_count() or 1
    if busy is None:
        busy = other_busy_cores()
    if busy is None:
        try:
            busy = os.getloadavg()[0]
        except OSError:  # pragma: no cover
            busy = 0.0
    return max(1, cores - int(busy + 0.5))


def resolve_runtime(
    device: str = "auto", dtype: str = "auto", threads: int | None = None, spec_dtype: str = "auto",
    quantize: str | None = None, spec_quantize: str = "none",
) -> Runtime:
    """`quantize` None means the alias's `spec_quantize` (models.toml), itself "none" by default."""
    check_choices(device, dtype, threads, quantize)
    dev = _pick_device() if device == "auto" else device
    if dev != "cpu":
        _check_device(dev)
    chosen = dtype if dtype != "auto" else spec_dtype
    if chosen == "auto":
        if dev == "cpu":
            chosen = "bfloat16" if cpu_has_native_bf16() else "float32"
        else:
            chosen = "bfloat16" if dev == "cuda" else "float16"
    return Runtime(device=dev, dtype=chosen, threads=threads,
                   quantize=quantize if quantize is not None else spec_quantize,
                   quantize_from_alias=quantize is None and spec_quantize != "none")


def check_choices(device: str = "auto", dtype: str = "auto", threads: int | None = None,
                  quantize: str | None = None) -> None:
    """The choices' spelling, checked without torch (what this machine has is not)."""
    if quantize is not None and quantize not in QUANTIZE_NAMES:
        raise UsageError(
            f"--quantize must be one of {', '.join(QUANTIZE_NAMES)} (got '{quantize}')",
            "use --quantize int8 (smaller and faster, slightly less exact) or none",
        )
    if device not in DEVICES:
        raise UsageError(f"--device must be one of {', '.join(DEVICES)} (got '{device}')",
                         "use --device auto")
    if dtype not in DTYPE_NAMES:
        raise UsageError(f"--dtype must be one of {', '.join(DTYPE_NAMES)} (got '{dtype}')",
                         "use --dtype auto")
    if threads is not None and threads < 1:
        raise UsageError(f"--threads must be at least 1 (got {threads})", "e.g. --threads 1")


def _pick_device() -> str:
    import torch

    if torch.cuda.is_available():
        return "cuda"
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return "mps"
    return "cpu"


def _check_device(dev: str) -> None:
    import torch

    ok = torch.cuda.is_available() if dev == "cuda" else torch.backends.mps.is_available()
    if not ok:
        raise UsageError(f"--device {dev} is not available on this machine",
                         "use --device auto or --device cpu")


def apply_threads(runtime: Runtime) -> int | None:
    """Set torch's intra-op threads: the runtime's, or on CPU `default_threads()`.

    The default is decided here, after torch is imported, so that the measurement
    window covers the import (~1 s) whatever path led here. Returns the count set.
    """
    import torch

    threads = runtime.threads
    if threads is None and runtime.device == "cpu":
        threads = default_threads()
    if threads is not None and torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return threads
