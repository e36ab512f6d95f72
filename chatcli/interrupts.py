"""SIGTERM and SIGHUP, handled like Ctrl-C.

Contract: `install()` (called once by the CLI entry point) makes SIGTERM and SIGHUP
raise `Terminated`, a `KeyboardInterrupt`, so that every path that keeps a partial
answer on Ctrl-C keeps it on these too, and the terminal is restored on the way out.
`received()` is the number of the signal that ended the run, if any: libraries that
turn a KeyboardInterrupt into one of their own (click's Abort, asyncio's runner
under prompt_toolkit) lose the exception's type, not this. A second signal while
chatcli unwinds ends the process at once. Knows nothing about chat or the terminal.
"""

from __future__ import annotations

import signal
from types import FrameType

from chatcli.errors import Terminated

_NAMES = ("SIGTERM", "SIGHUP")
_received: int | None = None


def _signals() -> list[int]:
    return [getattr(signal, name) for name in _NAMES if hasattr(signal, name)]


def _on_signal(signum: int, frame: FrameType | None) -> None:
    global _received
    _received = signum
    for sig in _signals():
        signal.signal(sig, signal.SIG_DFL)
    raise Terminated(signum)


def install() -> None:
    """Handle SIGTERM and SIGHUP (those left at their default action)."""
    for sig in _signals():
        if signal.getsignal(sig) == signal.SIG_DFL:
            signal.signal(sig, _on_signal)


def received() -> int | None:
    return _received


def ended_by_signal(exc: BaseException) -> bool:
    """Whether this KeyboardInterrupt (whatever became of its type) is SIGTERM/SIGHUP."""
    return isinstance(exc, Terminated) or _received is not None
