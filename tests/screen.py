"""What a person sees: the real `chatcli` in a pseudo-terminal, read through an emulator.

`Terminal` runs `python -m chatcli ...` (or a wrapper script that patches chatcli
first) in a pty of a given size and feeds every byte
it prints into pyte's terminal emulator, so a test reads the screen plus its
scrollback as a person would, after every cursor movement and erase. `ScriptServer`
is an OpenAI-compatible server on loopback that streams a scripted answer word by
word (at a chosen pace, so that Ctrl-C, signals and resizes land mid-answer).
`words()` is the comparison: the words of a text in order, Markdown syntax and
rendering decoration (bullets, rules, panel borders) left out.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import termios
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pexpect
import pyte

ROOT = Path(__file__).resolve().parents[1]
_WORD = re.compile(r"\w+")


def words(text: str) -> list[str]:
    """The words of `text`, in order (what must be on the screen, once each).

    Code fence lines are left out: rendered Markdown shows a code block, not its fence
    or language name.
    """
    kept = [line for line in text.splitlines() if not line.lstrip().startswith("```")]
    return _WORD.findall("\n".join(kept))


# -- a scripted OpenAI-compatible server ------------------------------------------------
class ScriptServer:
    """Streams `answer` as chat-completion chunks, one word (with its spacing) per event,
    sleeping `pace` seconds between events, and ends with `finish` as the finish reason
    ("length": as if the token limit cut it). `requests` counts the answers started.
    `reasoning` is streamed first, word by word, as `reasoning_content` deltas (a server
    that parses a reasoning model's thinking out of its answer, as llama.cpp's and vLLM's
    reasoning parsers do)."""

    def __init__(self, answer: str = "", pace: float = 0.002, finish: str = "stop",
                 reasoning: str = "") -> None:
        self.answer = answer
        self.reasoning = reasoning
        self.pace = pace
        self.finish = finish
        self.requests = 0
        self._server = _Server(("127.0.0.1", 0), _handler(self))
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/v1"

    def chunks(self) -> list[str]:
        return re.findall(r"\S+\s*|\s+", self.answer)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that hangs up mid-answer is expected here


def _handler(script: ScriptServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            body = json.dumps({"object": "list", "data": [{"id": "script"}]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            script.requests += 1
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Connection", "close")
            self.end_headers()

            def event(delta: dict[str, Any], finish: str | None = None) -> None:
                chunk = {"object": "chat.completion.chunk", "model": "script",
                         "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
                self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                self.wfile.flush()

            event({"role": "assistant"})
            for piece in re.findall(r"\S+\s*|\s+", script.reasoning):
                time.sleep(script.pace)
                event({"reasoning_content": piece})
            for piece in script.chunks():
                time.sleep(script.pace)
                event({"content": piece})
            event({}, script.finish)
            self.wfile.write(b"data: [DONE]\n\n")
            self.wfile.flush()

    return Handler


@contextmanager
def script_server(answer: str = "", pace: float = 0.002,
                  finish: str = "stop", reasoning: str = "") -> Iterator[ScriptServer]:
    server = ScriptServer(answer, pace, finish, reasoning)
    try:
        yield server
    finally:
        server.close()


def add_script_alias(home: Path, server: ScriptServer, alias: str = "script") -> None:
    """A models.toml alias for the scripted server (exact packing is not at stake here)."""
    with (home / "models.toml").open("a") as f:
        f.write(f'\n[models.{alias}]\nbackend = "openai"\nbase_url = "{server.url}"\n'
                'model = "script"\ncontext_window = 32768\n')


# -- the terminal ------------------------------------------------------------------
def default_signals() -> None:
    """In the child before chatcli starts: SIGINT, SIGHUP and SIGTERM at their default
    action.

    chatcli keeps a signal its parent ignores ignored (`nohup` sets SIGHUP so, a
    non-interactive shell sets SIGINT so for a command it starts with `&`, and the child
    inherits them); the tests that send those signals must not depend on how pytest
    itself was started."""
    for sig in (signal.SIGINT, signal.SIGHUP, signal.SIGTERM):
        signal.signal(sig, signal.SIG_DFL)


class Terminal:
    """The real chatcli in a pty of `columns` x `lines`, its output fed into pyte."""

    def __init__(self, home: Path, args: list[str], columns: int = 80, lines: int = 24,
                 env: dict[str, str] | None = None, python: list[str] | None = None) -> None:
        """`python`: what the interpreter runs instead of `-m chatcli` (a wrapper script
        that patches chatcli first, e.g. `["-c", SCRIPT]`), before `args`."""
        environ = {k: v for k, v in os.environ.items()
                   if k not in ("COLUMNS", "LINES", "NO_COLOR", "CHATCLI_DEBUG")}
        environ.update(CHATCLI_HOME=str(home), TERM="xterm-256color", PYTHONPATH=str(ROOT))
        environ.update(env or {})
        self.screen = pyte.HistoryScreen(columns, lines, history=100_000)
        self.stream = pyte.ByteStream(self.screen)
        self.raw = b""
        self.final_termios: list[Any] | None = None
        self.child = pexpect.spawn(sys.executable, [*(python or ["-m", "chatcli"]), *args],
                                   env=environ, timeout=60, dimensions=(lines, columns),
                                   preexec_fn=default_signals)

    # -- output ----------------------------------------------------------------------
    def pump(self, seconds: float = 0.05) -> bool:
        """Feed what chatcli printed within `seconds` into the screen; False at EOF."""
        try:
            data = self.child.read_nonblocking(65536, timeout=seconds)
        except pexpect.TIMEOUT:
            return True
        except pexpect.EOF:
            return False
        self.raw += data
        self.stream.feed(data)
        return True

    def wait_for(self, found: Callable[[str], bool] | str, timeout: float = 60) -> None:
        """Pump output until `found(screen text)` (or the text contains `found`)."""
        test = (lambda t: found in t) if isinstance(found, str) else found
        deadline = time.monotonic() + timeout
        while not test(self.text()):
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting; the screen shows:\n{self.text()}")
            if not self.pump():
                if test(self.text()):
                    return
                raise AssertionError(f"chatcli ended first; the screen shows:\n{self.text()}")

    def wait_words(self, count: int, timeout: float = 60) -> None:
        self.wait_for(lambda t: len(words(t)) >= count, timeout)

    def finish(self, timeout: float = 60) -> int:
        """Read to the end of output; the exit status (128 + N when killed by signal N)."""
        deadline = time.monotonic() + timeout
        while self.pump():
            if time.monotonic() > deadline:
                self.child.terminate(force=True)
                raise AssertionError(f"chatcli did not end; the screen shows:\n{self.text()}")
        try:  # the terminal as the next program (the shell) will find it
            self.final_termios = termios.tcgetattr(self.child.child_fd)
        except termios.error:
            self.final_termios = None
        self.child.close()
        if self.child.signalstatus is not None:
            return 128 + self.child.signalstatus
        return int(self.child.exitstatus or 0)

    # -- input -----------------------------------------------------------------------
    def send_line(self, line: str) -> None:
        self.child.send(line + "\r")

    def resize(self, columns: int, lines: int | None = None) -> None:
        lines = lines or self.screen.lines
        self.screen.resize(lines, columns)
        self.child.setwinsize(lines, columns)

    # -- the screen ------------------------------------------------------------------
    def lines(self) -> list[str]:
        """Scrollback, then the screen; trailing blank rows dropped."""
        def row(line: Any) -> str:
            return "".join(line[x].data for x in range(max(line.keys(), default=-1) + 1))

        rows = [row(line).rstrip() for line in self.screen.history.top]
        rows += [r.rstrip() for r in self.screen.display]
        while rows and not rows[-1]:
            rows.pop()
        return rows

    def text(self) -> str:
        return "\n".join(self.lines())

    @property
    def cursor_hidden(self) -> bool:
        return bool(self.screen.cursor.hidden)
