"""Running one call: only with consent, within a time limit, its result capped.

Contract: `Consent(allow_all, allowed, ask)` decides whether a call runs: every call with
`allow_all` (--allow-tools), a tool named in `allowed` (--allow-tool NAME), else `ask(name,
arguments)` (the UI's question on a terminal: "y", "n" or "a" for always this tool,
remembered for the run; Ctrl-C there is no, SIGTERM and SIGHUP go on up); without `ask`
(not a terminal) nothing else runs. `run(tool,
arguments, timeout, cap)` calls the function in a thread of its own and returns a
`CallRecord`: the result as text (JSON where the value is JSON, else `str()`), cut to
`cap` characters with a note; or the error the model reads instead: the function's
exception (`ValueError: ...`, never a traceback), a time-out (the thread is left to
finish on its own), arguments it does not take. What the function prints is kept off
chatcli's own output.

Knows nothing about models, prompts or the terminal.
"""

from __future__ import annotations

import contextlib
import io
import json
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class CallRecord:
    name: str
    arguments: dict[str, Any]
    allowed: bool
    result: str | None = None
    error: str | None = None
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Consent:
    allow_all: bool = False
    allowed: set[str] = field(default_factory=set)
    ask: Callable[[str, dict[str, Any]], str] | None = None

    def __call__(self, name: str, arguments: dict[str, Any]) -> bool:
        if self.allow_all or name in self.allowed:
            return True
        if self.ask is None:
            return False
        from chatcli.interrupts import ended_by_signal

        try:
            answer = self.ask(name, arguments)
        except KeyboardInterrupt as exc:  # Ctrl-C at the question: no (SIGTERM: leave)
            if ended_by_signal(exc):
                raise
            return False
        if answer == "a":
            self.allowed.add(name)
        return answer in ("y", "a")


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    try:
        return json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        return str(value)


def run(tool: Any, arguments: dict[str, Any], timeout: float, cap: int) -> CallRecord:
    """Call `tool` with `arguments` (see the module)."""
    record = CallRecord(tool.name, arguments, True)
    box: dict[str, Any] = {}

    def call() -> None:
        try:
            box["value"] = tool.call(**arguments)
        except BaseException as exc:  # the model reads it; chatcli goes on
            box["error"] = f"{type(exc).__name__}: {exc}"

    start = time.perf_counter()
    captured = io.StringIO()
    with contextlib.redirect_stdout(captured), contextlib.redirect_stderr(captured):
        worker = threading.Thread(target=call, daemon=True, name=f"tool {tool.name}")
        worker.start()
        worker.join(timeout)
    record.seconds = round(time.perf_counter() - start, 3)
    if worker.is_alive():
        record.error = f"timed out after {timeout:g} s"
    elif "error" in box:
        record.error = box["error"]
    else:
        text = _text(box.get("value"))
        if len(text) > cap:
            text = text[:cap] + f" [cut: {len(text)} characters, the first {cap} kept]"
        record.result = text
    return record
