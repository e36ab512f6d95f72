"""Writers that show an answer while it streams.

Contract: `write(delta)` shows more text as soon as it arrives; `close()` ends
the answer with a newline. `PlainWriter` writes raw text and flushes each delta
(for pipes and files); `MarkdownWriter` re-renders the growing answer as rich
Markdown in a `Live` view with `vertical_overflow="visible"`, so long answers
are never cut. Knows nothing about models.
"""

from __future__ import annotations

import time
from typing import IO, Any, Protocol

from chatcli.errors import OutputClosed


class AnswerWriter(Protocol):
    def write(self, delta: str) -> None: ...
    def close(self) -> None: ...


class PlainWriter:
    def __init__(self, out: IO[str]) -> None:
        self.out = out
        self._ends_with_newline = True

    def write(self, delta: str) -> None:
        if delta:
            try:
                self.out.write(delta)
                self.out.flush()
            except BrokenPipeError as exc:
                raise OutputClosed from exc
            self._ends_with_newline = delta.endswith("\n")

    def close(self) -> None:
        try:
            if not self._ends_with_newline:
                self.out.write("\n")
            self.out.flush()
        except BrokenPipeError as exc:
            raise OutputClosed from exc


class MarkdownWriter:
    """Live Markdown, re-rendered at most `fps` times a second."""

    def __init__(self, console: Any, fps: float = 15.0) -> None:
        from rich.live import Live

        self.console = console
        self.text = ""
        self._interval = 1.0 / fps
        self._last = 0.0
        self._live = Live(
            console=console,
            auto_refresh=False,
            vertical_overflow="visible",
            transient=False,
        )
        self._live.start()

    def _render(self) -> Any:
        from rich.markdown import Markdown

        return Markdown(self.text)

    def write(self, delta: str) -> None:
        if not delta:
            return
        self.text += delta
        now = time.monotonic()
        if now - self._last >= self._interval:
            self._last = now
            self._live.update(self._render(), refresh=True)

    def close(self) -> None:
        self._live.update(self._render(), refresh=True)
        self._live.stop()
