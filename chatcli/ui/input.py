"""Reading what the user types: prompt_toolkit on a terminal, plain lines otherwise.

Contract: `make_reader(history_file)` returns a reader whose `read()` gives one
user entry, or None at end of input (Ctrl-D, or end of piped stdin). On a TTY it
uses prompt_toolkit with persistent input history (every line typed: the file is
made 0600 in a 0700 folder, whatever the umask; a line it cannot write is skipped);
Esc-Enter inserts a newline, and a block that starts with a line of `\"\"\"`
runs until a line that ends with `\"\"\"` (both forms work piped too). `read(default)`
opens the input line holding `default` to be edited (/edit). Ctrl-C at the prompt raises
KeyboardInterrupt for the caller to treat as "clear the line"; whatever ends a read
other than a line or Ctrl-D (Ctrl-C, SIGTERM/SIGHUP) leaves the terminal's attributes
as they were before it. Knows nothing about models or conversations.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import IO, Protocol

FENCE = '"""'


class LineReader(Protocol):
    def read(self, default: str = "") -> str | None: ...


class PlainReader:
    """One entry per line of a non-interactive stream."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream

    def _line(self) -> str | None:
        line = self.stream.readline()
        return None if line == "" else line.rstrip("\n")

    def read(self, default: str = "") -> str | None:
        """The next entry (`default`, text to edit, has no meaning in a stream)."""
        line = self._line()
        if line is None or not line.strip().startswith(FENCE):
            return line
        return _block(line, self._line)


def _block(first: str, more: object) -> str | None:
    """Collect a \"\"\"-fenced block; `more()` returns the next line or None."""
    body = first.strip()[len(FENCE):]
    if body.endswith(FENCE) and body != "":
        return body[: -len(FENCE)]
    lines = [body] if body else []
    while True:
        nxt = more()  # type: ignore[operator]
        if nxt is None:
            return "\n".join(lines)
        if nxt.rstrip().endswith(FENCE):
            lines.append(nxt.rstrip()[: -len(FENCE)])
            return "\n".join(line for line in lines).strip("\n")
        lines.append(nxt)


class PromptReader:
    """prompt_toolkit input with history and multi-line entry."""

    def __init__(self, history_file: Path, prompt: str = "› ") -> None:
        from prompt_toolkit import PromptSession
        from prompt_toolkit.history import FileHistory
        from prompt_toolkit.key_binding import KeyBindings

        from chatcli.paths import make_private_file

        with contextlib.suppress(OSError):  # a read-only folder: lines are not kept
            make_private_file(history_file)
        bindings = KeyBindings()

        @bindings.add("escape", "enter")
        def _newline(event) -> None:  # type: ignore[no-untyped-def]
            event.current_buffer.insert_text("\n")

        self.prompt = prompt
        self.session: PromptSession[str] = PromptSession(
            history=_quiet(FileHistory)(str(history_file)), key_bindings=bindings
        )

    def _line(self, continuation: bool = False, default: str = "") -> str | None:
        saved = _terminal_state()
        try:
            return self.session.prompt("… " if continuation else self.prompt, default=default)
        except EOFError:
            return None
        except BaseException:
            # SIGTERM/SIGHUP (raised as KeyboardInterrupt) can land where prompt_toolkit
            # has not restored the terminal yet: the shell must get it back as it was.
            _restore_terminal(saved)
            raise

    def read(self, default: str = "") -> str | None:
        """The next entry; `default` is put in the input line to be edited (several lines
        edit as one: Esc-Enter adds a newline)."""
        line = self._line(default=default)
        if default:
            return line
        if line is None or not line.strip().startswith(FENCE):
            return line
        return _block(line, lambda: self._line(continuation=True))


def _terminal_state() -> list | None:
    """stdin's terminal attributes (None when it has none)."""
    try:
        import termios

        return termios.tcgetattr(sys.stdin.fileno())
    except Exception:  # no termios, no stdin, not a terminal (termios.error)
        return None


def _restore_terminal(saved: list | None) -> None:
    if saved is None:
        return
    import termios

    with contextlib.suppress(Exception):
        termios.tcsetattr(sys.stdin.fileno(), termios.TCSANOW, saved)


def _quiet(file_history: type) -> type:
    """FileHistory that skips a line it cannot write (full disk, read-only folder)."""

    class QuietFileHistory(file_history):  # type: ignore[misc, valid-type]
        def store_string(self, string: str) -> None:
            with contextlib.suppress(OSError):  # losing it must not end the chat
                super().store_string(string)

    return QuietFileHistory


def make_reader(history_file: Path) -> LineReader:
    stdin = sys.stdin
    if stdin is not None and stdin.isatty() and sys.stdout.isatty():
        return PromptReader(history_file)
    return PlainReader(stdin)
