"""SIGTERM and SIGHUP, handled like Ctrl-C; and signals held while a model loads.

Contract: `install()` (called once by the CLI entry point) makes SIGTERM and SIGHUP
raise `Terminated`, a `KeyboardInterrupt`, so that every path that keeps a partial
answer on Ctrl-C keeps it on these too, and the terminal is restored on the way out.
`received()` is the number of the signal that ended the run, if any: libraries that
turn a KeyboardInterrupt into one of their own (click's Abort, asyncio's runner
under prompt_toolkit) lose the exception's type, not this. A second signal while
chatcli unwinds ends the process at once.

`deferred(during)` holds Ctrl-C, SIGTERM and SIGHUP while a step runs that must not
be cut halfway: importing torch and loading a model, where a KeyboardInterrupt raised
inside library code is swallowed (torch importing numpy: the load went on as if
nothing happened) or ends the process with a C++ abort. The signal takes effect when
the block ends, or earlier at a `checkpoint()` the block reaches, as `Interrupted`
(Ctrl-C; `interrupted_during()` then says what was being done) or `Terminated`, also
when the block ended in an error. A second Ctrl-C inside stops at once, a second
SIGTERM/SIGHUP ends the process. Only handlers chatcli owns are held (Python's Ctrl-C
handler, `install()`'s), so an ignored signal stays ignored. Knows nothing about chat
or the terminal.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

from chatcli.errors import Interrupted, Terminated

_NAMES = ("SIGTERM", "SIGHUP")
_received: int | None = None
_pending: int | None = None  # a signal held by `deferred`
_during: str | None = None  # what the active `deferred` block does
_interrupted_during: str | None = None

LOADING = "loading the model"


def _signals() -> list[int]:
    return [getattr(signal, name) for name in _NAMES if hasattr(signal, name)]


def _on_signal(signum: int, frame: FrameType | None) -> None:
    global _received
    _received = signum
    for sig in _signals():
        signal.signal(sig, signal.SIG_DFL)
    raise Terminated(signum)


def install() -> None:
    """Handle SIGTERM and SIGHUP (those left at their default action); a new run (main()
    called again in one process) starts with no load interrupted."""
    global _interrupted_during
    _interrupted_during = None
    for sig in _signals():
        if signal.getsignal(sig) == signal.SIG_DFL:
            signal.signal(sig, _on_signal)


def received() -> int | None:
    return _received


def interrupted_during() -> str | None:
    """What was being done when Ctrl-C stopped a `deferred` step ("loading the model")."""
    return _interrupted_during


def ended_by_signal(exc: BaseException) -> bool:
    """Whether this KeyboardInterrupt (whatever became of its type) is SIGTERM/SIGHUP."""
    return isinstance(exc, Terminated) or _received is not None


def _stop(signum: int, during: str) -> KeyboardInterrupt:
    """The exception a held signal becomes (SIGTERM/SIGHUP leave their default action
    behind, as `_on_signal` does)."""
    global _received, _interrupted_during
    if signum == signal.SIGINT:
        _interrupted_during = during
        return Interrupted(during)
    _received = signum
    for sig in _signals():
        signal.signal(sig, signal.SIG_DFL)
    return Terminated(signum)


def checkpoint() -> None:
    """Inside `deferred`: stop here if a signal arrived (the caller knows this point is
    safe to stop at). Does nothing elsewhere."""
    global _pending
    if _pending is not None and _during is not None:
        signum, _pending = _pending, None
        raise _stop(signum, _during)


def _held(sig: int, handler: Any) -> bool:
    if sig == signal.SIGINT:
        return handler is signal.default_int_handler
    return handler is _on_signal


@contextmanager
def deferred(during: str) -> Iterator[None]:
    """Hold Ctrl-C, SIGTERM and SIGHUP until the block ends (see the module docstring);
    `during` says what the block does, for the message. Nested blocks are one."""
    global _pending, _during
    if _during is not None or threading.current_thread() is not threading.main_thread():
        yield
        return

    def hold(signum: int, frame: FrameType | None) -> None:
        global _pending
        if _pending is None:
            _pending = signum
            return
        _pending = None  # a second signal: stop now
        if signum == signal.SIGINT:
            signal.signal(signum, signal.default_int_handler)
            raise _stop(signum, during)
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)

    saved = {}
    for sig in [signal.SIGINT, *_signals()]:
        handler = signal.getsignal(sig)
        if _held(sig, handler):
            saved[sig] = handler
            signal.signal(sig, hold)
    _pending, _during = None, during

    def release() -> int | None:
        global _pending, _during
        for sig, handler in saved.items():
            if signal.getsignal(sig) is hold:
                signal.signal(sig, handler)
        signum, _pending, _during = _pending, None, None
        return signum

    try:
        yield
    except BaseException as exc:
        signum = release()
        if signum is not None and not isinstance(exc, KeyboardInterrupt):
            raise _stop(signum, during) from exc
        raise
    signum = release()
    if signum is not None:
        raise _stop(signum, during)
