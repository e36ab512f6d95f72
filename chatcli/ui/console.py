"""The terminal: where answers, errors, progress and tables go.

Contract: `UI` is the single owner of stdout/stderr. Answers go to stdout (rich
Markdown on a TTY, plain text otherwise); errors, warnings, progress and stats
go to stderr so that piped output stays clean. Streams are looked up when a UI
is created, never at import time. It knows nothing about models or decoding.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO, Any

from chatcli.errors import OutputClosed
from chatcli.ui.answer import AnswerWriter, MarkdownWriter, PlainWriter


class UI:
    def __init__(self, stdout: IO[str] | None = None, stderr: IO[str] | None = None) -> None:
        self.out = stdout or sys.stdout
        self.err = stderr or sys.stderr
        self.out_tty = _isatty(self.out)
        self.err_tty = _isatty(self.err)
        self._err_console: Any = None
        self._out_console: Any = None

    # -- consoles (rich imported on first use) ---------------------------------
    @property
    def err_console(self) -> Any:
        if self._err_console is None:
            from rich.console import Console

            self._err_console = Console(file=self.err, stderr=True, highlight=False)
        return self._err_console

    @property
    def out_console(self) -> Any:
        if self._out_console is None:
            from rich.console import Console

            self._out_console = Console(file=self.out, highlight=False)
        return self._out_console

    # -- messages on stderr ------------------------------------------------------
    def error(self, message: str, hint: str = "") -> None:
        line = f"error: {message}" + (f"; hint: {hint}" if hint else "")
        self._err_line(line, "bold red")

    def warn(self, message: str) -> None:
        self._err_line(f"warning: {message}", "yellow")

    def notify(self, message: str) -> None:
        """A progress line: what chatcli is doing now."""
        self._err_line(f"chatcli: {message}", "dim")

    def aside(self, message: str) -> None:
        """A dim remark on what was just shown, on a terminal's stderr only (never in a
        pipe or a file: piped output stays exactly the answer and its notes)."""
        if self.err_tty:
            self.err_console.print(message, style="dim", markup=False)

    def _err_line(self, line: str, style: str) -> None:
        if self.err_tty:
            # wrapped at words, as answers are (the terminal would cut words in two)
            self.err_console.print(line, style=style, markup=False)
        else:
            print(line, file=self.err, flush=True)

    @contextmanager
    def busy(self, message: str) -> Iterator[None]:
        """A spinner with elapsed time on a TTY; one progress line otherwise."""
        if not self.err_tty:
            self.notify(message)
            yield
            return
        with self.err_console.status(message, spinner="dots"):
            yield

    # -- stdout --------------------------------------------------------------
    def answer_writer(self, markdown: bool | None = None, style: str = "none") -> AnswerWriter:
        use_md = self.out_tty if markdown is None else markdown
        if use_md and self.out_console.is_dumb_terminal:
            use_md = False  # TERM=dumb: no cursor movement, so stream plain text
        return MarkdownWriter(self.out_console, style=style) if use_md else PlainWriter(self.out)

    def print_json(self, obj: Any) -> None:
        """One line of valid JSON: a NaN or infinite number (a log-probability a server
        did not send) is written as null."""
        try:
            self.out.write(json.dumps(_finite(obj), ensure_ascii=False, allow_nan=False)
                           + "\n")
            self.out.flush()
        except BrokenPipeError as exc:
            raise OutputClosed from exc

    def print_err(self, line: str) -> None:
        print(line, file=self.err, flush=True)

    def print_raw(self, text: str) -> None:
        """Text exactly as it is (no markup, no wrapping), on stdout."""
        try:
            self.out.write(text if text.endswith("\n") else text + "\n")
            self.out.flush()
        except BrokenPipeError as exc:
            raise OutputClosed from exc

    def print(self, renderable: Any) -> None:
        """A rich renderable (table, panel) or a string, on stdout."""
        try:
            if isinstance(renderable, str) and not self.out_tty:
                self.out.write(renderable + "\n")
                self.out.flush()
            else:
                self.out_console.print(renderable)
        except BrokenPipeError as exc:
            raise OutputClosed from exc


def _isatty(stream: IO[str]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def read_piped_stdin(ui: UI) -> str | None:
    """Text piped on stdin, or None when stdin is a terminal.

    Invalid UTF-8 is decoded with replacement characters and a warning.
    """
    stdin = sys.stdin
    if stdin is None or _isatty(stdin):
        return None
    buf = getattr(stdin, "buffer", None)
    data = buf.read() if buf is not None else stdin.read().encode("utf-8", "surrogateescape")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        ui.warn(
            f"stdin is not valid UTF-8 (first bad byte at offset {exc.start}); "
            "invalid bytes were replaced with U+FFFD"
        )
        return data.decode("utf-8", errors="replace")


def _finite(obj: Any) -> Any:
    """`obj` with every non-finite float replaced by None (JSON has no NaN)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj
