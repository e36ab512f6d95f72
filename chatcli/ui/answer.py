"""Writers that show an answer while it streams.

Contract: `write(delta)` shows more text as soon as it arrives; `close()` ends
the answer with a newline. `PlainWriter` writes raw text and flushes each delta
(for pipes, files and dumb terminals); `MarkdownWriter` renders the growing
answer as rich Markdown, redrawing only its unfinished last block, so that what
stays on the screen is the whole answer, once, in order, however long it is.
Knows nothing about models.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
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
    """Live Markdown: the growing answer re-rendered at most `fps` times a second.

    Only the unfinished end of the answer is live, in a transient `rich.live.Live`
    kept shorter than the screen (so that its redraws can always reach its first
    row). A finished block (up to the last blank line outside a code fence) replaces
    the live view and is printed once, for good, as plain output; a block that would
    outgrow the screen is printed up to its last line break (or space), and a code
    block cut that way goes on under its own fence line. Nothing printed for good is
    ever moved over or erased, so every word of the answer ends up on the screen
    once, in order. When the terminal's width changes mid-answer, the live part is
    printed for good at once (up to its last space), so that little is redrawn at the
    new width. Drawing runs with Ctrl-C, SIGTERM and SIGHUP deferred to its end: an
    interrupt never leaves a half-drawn frame behind.
    """

    def __init__(self, console: Any, fps: float = 15.0, style: str = "none") -> None:
        self.console = console
        self.style = style  # e.g. "dim": a reasoning model's thinking
        self.text = ""
        self._done = 0  # text[:_done] is on the screen for good
        self._prefix = ""  # the fence line of a code block that a commit cut
        self._gap = False  # a blank line is due before the next block
        self._interval = 1.0 / fps
        self._last = 0.0
        self._live: Any = None
        self._width = console.size.width
        self._echo = EchoOff()

    def _markdown(self, text: str) -> Any:
        from rich.markdown import Markdown

        return Markdown(text, style=self.style)

    def _rows(self, text: str) -> int:
        """The terminal rows `text` takes, rendered as Markdown at today's width."""
        return len(self.console.render_lines(self._markdown(text), pad=False))

    def _commit_point(self) -> int:
        """Where the finished part of the live text ends (`_done` when nothing is)."""
        end = len(self.text)
        while (cut := self.text.rfind("\n\n", self._done, end)) > self._done:
            if not fence_opener(self.text, cut + 2):
                return cut + 2
            end = cut + 1
        if self._rows(self._prefix + self.text[self._done :]) <= max(
            3, self.console.size.height - 3
        ):
            return self._done
        return self._break_point()

    def _break_point(self) -> int:
        """The end of the live text's last whole line (else word)."""
        for sep in ("\n", " "):
            at = self.text.rfind(sep, self._done)
            if at > self._done:
                return at + 1
        return self._done

    def _show(self, text: str) -> None:
        if self._live is None:
            from rich.live import Live

            self._blank_line()
            self._live = Live(console=self.console, auto_refresh=False,
                              vertical_overflow="visible", transient=True)
            self._live.start()
        self._live.update(self._markdown(text), refresh=True)

    def _blank_line(self) -> None:
        if self._gap:
            self.console.line()
            self._gap = False

    def _commit(self, point: int) -> None:
        """Print `text[_done:point]` for good, in place of the live view."""
        if self._live is not None:
            self._live.stop()  # transient: its rows are erased, the cursor is back on top
            self._live = None
        self._blank_line()
        block = self.text[self._done : point]
        self.console.print(self._markdown(self._prefix + block))
        self._gap = block.endswith("\n\n")
        self._prefix = fence_opener(self.text, point)
        self._done = point

    def _refresh(self, final: bool = False) -> None:
        with deferred_signals():
            width = self.console.size.width
            if width != self._width:  # resized: commit, so that little is redrawn
                self._width = width
                point = self._break_point()
                if point > self._done:
                    self._commit(point)
            while (point := len(self.text) if final else self._commit_point()) > self._done:
                self._commit(point)
            if self._done < len(self.text):  # (never when final: all of it is committed)
                self._show(self._prefix + self.text[self._done :])

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
        try:
            self._refresh(final=True)
        finally:
            self._echo.restore()


class EchoOff:
    """Keystrokes are not echoed while an answer is drawn (restored by `restore()`).

    An echoed `^C` or typed-ahead text would move the cursor under a live view and
    make its next redraw miss a row. What is typed stays in the input queue for the
    next prompt. Does nothing when stdin is not a terminal, or when chatcli is not in
    its foreground (changing it from the background would stop chatcli).
    """

    def __init__(self) -> None:
        self._saved: list[Any] | None = None
        try:
            import termios

            fd = sys.stdin.fileno()
            if not os.isatty(fd) or os.tcgetpgrp(fd) != os.getpgrp():
                return  # not a terminal, or chatcli runs in the background (SIGTTOU)
            saved = termios.tcgetattr(fd)
            quiet = list(saved)
            quiet[3] &= ~(termios.ECHO | getattr(termios, "ECHOCTL", 0))
            termios.tcsetattr(fd, termios.TCSANOW, quiet)
            self._saved, self._fd = saved, fd
        except (ImportError, OSError, ValueError, AttributeError):
            self._saved = None

    def restore(self) -> None:
        if self._saved is None:
            return
        import termios

        with suppress(OSError, termios.error):
            termios.tcsetattr(self._fd, termios.TCSANOW, self._saved)
        self._saved = None


def fence_opener(text: str, end: int) -> str:
    """The fence line (with its newline) of a code block still open at `text[end]`."""
    opener = ""
    for line in text[:end].splitlines(keepends=True):
        if line.lstrip().startswith(("```", "~~~")):
            opener = "" if opener else line.rstrip("\n") + "\n"
    return opener


_DEFERRED = ("SIGINT", "SIGTERM", "SIGHUP")


@contextmanager
def deferred_signals() -> Iterator[None]:
    """Hold Ctrl-C, SIGTERM and SIGHUP until the block ends, then deliver them.

    A terminal frame is drawn whole or not at all. Outside the main thread (where
    handlers cannot be set) the block runs as it is.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    saved = {}
    for name in _DEFERRED:
        num = getattr(signal, name, None)
        if num is not None:
            saved[num] = signal.signal(num, lambda n, _f: caught.append(n))
    try:
        yield
    finally:
        for num, handler in saved.items():
            signal.signal(num, handler)
        for num in dict.fromkeys(caught):
            handler = saved[num]
            if callable(handler):
                handler(num, None)
            elif handler == signal.SIG_DFL:
                os.kill(os.getpid(), num)
