"""Progress of long operations (downloads, conversions, loads), reported to whoever shows it.

Contract: `Reporter` is the protocol a long operation is given: `notify(message)`
says one thing that happened, `warn(message)` one thing that went wrong but did not
stop it, `busy(message)` is a context manager around a step that takes a while. The
UI implements it (`chatcli.ui.console.UI`); `SilentReporter` reports nothing, for
callers without a terminal (tests, benchmarks, defaults).

Knows nothing about models, files or the terminal, and imports nothing from chatcli,
so that any layer (weights on disk, the language models) can report progress.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import Protocol


class Reporter(Protocol):
    """Where long operations report progress (the UI implements it)."""

    def notify(self, message: str) -> None: ...
    def warn(self, message: str) -> None: ...
    def busy(self, message: str) -> AbstractContextManager[None]: ...


class SilentReporter:
    """A `Reporter` that reports nothing."""

    def notify(self, message: str) -> None:
        return None

    def warn(self, message: str) -> None:
        return None

    def busy(self, message: str) -> AbstractContextManager[None]:
        return nullcontext()
