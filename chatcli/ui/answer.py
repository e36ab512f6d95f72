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


_CONTROL = dict.fromkeys(c for c in range(32) if c not in (9, 10))
_CONTROL[127] = None


def printable(text: str) -> str:
    """Drop control characters (a model must not drive the terminal with escapes)."""
    return text.translate(_CONTROL)


class MarkdownWriter:
    """Live Markdown, re-rendered at most `fps` times a second.

    Finished blocks (up to the last blank line outside a code fence; or, once the
    live part would outgrow the screen, up to its last line break or space) are
    printed once and leave the live view, so each refresh stays small however long
    the answer gets.
    """

    def __init__(self, console: Any, fps: float = 15.0) -> None:
        from rich.live import Live

        self.console = console
        self.text = ""
        self._done = 0  # text[:_done] is printed for good
        self._interval = 1.0 / fps
        self._last = 0.0
        self._live = Live(
            console=console,
            auto_refresh=False,
            vertical_overflow="visible",
            transient=False,
        )
        self._live.start()

    @staticmethod
    def _markdown(text: str) -> Any:
        from rich.markdown import Markdown

        return Markdown(text)

    def _commit_point(self) -> int:
        tail = self.text[self._done :]
        cut = tail.rfind("\n\n")
        if cut > 0 and (self.text[: self._done + cut].count("```") % 2 == 0):
            return self._done + cut + 2
        rows = max(4, self.console.size.height - 4)
        if tail.count("\n") > rows:
            return self._done + tail.rfind("\n") + 1
        if len(tail) > rows * max(20, self.console.size.width):  # one long wrapped paragraph
            space = max(tail.rfind(" "), tail.rfind("\n"))
            return self._done + (space + 1 if space > 0 else len(tail))
        return self._done

    def _refresh(self) -> None:
        point = self._commit_point()
        if point > self._done:
            self._live.update(self._markdown(self.text[self._done : point]), refresh=True)
            self._live.stop()
            self._done = point
            self._live.start()
        self._live.update(self._markdown(self.text[self._done :]), refresh=True)

    def write(self, delta: str) -> None:
        delta = printable(delta)
        if not delta:
            return
        self.text += delta
        now = time.monotonic()
        if now - self._last >= self._interval:
            self._last = now
            self._refresh()

    def close(self) -> None:
        self._refresh()
        self._live.stop()
