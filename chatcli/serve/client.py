"""The client of the resident server: finding it, and the backend a command opens over it.

Contract: `find_server(ui, no_server)` is the connection a command's local aliases use,
or None (then everything runs in-process, as without a server). `CHATCLI_SERVER` says
when to use one: "use" (the default: when one runs), "start" (start one in the
background when none runs: `chatcli serve` with its log beside the socket) or "off"
(never; as `--no-server`). A socket file that is not this user's (`wire.owner_problem`),
a stale one (nobody answers: it is removed), a server that does not answer its greeting
within `HELLO_TIMEOUT` seconds and a server of another chatcli version are each one
warning line, then the answer is made in-process.

`ServedBackend.open(connection, spec, ui, ...)` asks the server for the alias (loaded
there by the local backend, exactly as in-process) and is then an opened backend with
the local backend's capabilities: every call is one request, every answer a stream of
the server's events as a `chatcli.answer.Generation`. A stream that is not read to its
end (Ctrl-C, an error) closes the connection, which stops the server's generation; the
next request connects again and opens the model again (still loaded there). A server
that goes away mid-answer ends the stream with `ServerGone` (the answer so far is the
caller's to keep, as with a remote server); requests after that say the server is gone.
A request that waits for another one's answer says so on stderr. Tokenizer calls made
while an answer is still to be read (/alt's note names the tokens before the new answer
streams) go over a second connection, leaving the stream as it is.

Imports neither torch nor transformers (the point of it: `python -X importtime`).
Knows nothing about the terminal beyond the `UI` it is handed.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import subprocess
import sys
import time
import weakref
from contextlib import ExitStack, suppress
from pathlib import Path
from typing import Any

from chatcli.answer import Generation, Stats
from chatcli.backends.base import Views
from chatcli.errors import ChatcliError, UsageError
from chatcli.serve import wire

MODES = ("use", "start", "off")
HELLO_TIMEOUT = 5.0
START_TIMEOUT = 20.0
GONE_HINT = ("what was answered so far is kept; ask again: chatcli answers in-process, "
             "or start the server again with chatcli serve")


class VersionMismatch(ChatcliError):
    pass


class Connection:
    """One connection to the server: its greeting done, frames in order."""

    def __init__(self, path: Path, timeout: float | None = HELLO_TIMEOUT) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self.sock.settimeout(timeout)
            with wire.reachable(path) as name:
                self.sock.connect(name)
            wire.send(self.sock, "hello", wire.VERSION, os.getpid())
            reply = wire.recv(self.sock)
            if reply[0] != "hello":
                raise wire.ServerGone("no greeting")
            self.version, self.pid = str(reply[1]), int(reply[2])
            if self.version != wire.VERSION:
                raise VersionMismatch(f"the chatcli server (pid {self.pid}) runs version "
                                      f"{self.version}, and this chatcli is {wire.VERSION}")
            self.sock.settimeout(None)
            _open.add(self)
        except BaseException:
            self.sock.close()
            raise

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        self.sock.close()

    def generation_defaults(self, spec: Any) -> dict[str, Any]:
        """The alias's generation_config as the server reads it before loading."""
        try:
            return dict(self.request(None, "defaults", spec)[1])
        except (OSError, wire.ServerGone) as exc:
            raise wire.ServerGone("the chatcli server is gone", GONE_HINT) from exc

    def request(self, ui: Any, *frame: Any) -> tuple[Any, ...]:
        """Send `frame`; the answer's first frame that is not a note (an "error" raised)."""
        wire.send(self.sock, *frame)
        return self.reply(ui)

    def reply(self, ui: Any) -> tuple[Any, ...]:
        with ExitStack() as busy:
            while True:
                frame = wire.recv(self.sock)
                kind = frame[0]
                if kind == "note" and ui is not None:
                    ui.notify(frame[1])
                elif kind == "warn" and ui is not None:
                    ui.warn(frame[1])
                elif kind == "waiting" and ui is not None:
                    ui.notify(f"{frame[1]} in the chatcli server; waiting")
                elif kind == "busy" and ui is not None:
                    busy.close()
                    busy.enter_context(ui.busy(frame[1]))
                elif kind == "idle":
                    busy.close()
                elif kind == "error":
                    wire.raise_error(frame)
                elif kind not in ("note", "warn", "waiting", "busy"):
                    return frame


def mode() -> str:
    value = os.environ.get("CHATCLI_SERVER", "use").strip().lower() or "use"
    if value not in MODES:
        raise UsageError(f"CHATCLI_SERVER={value}: expected one of {', '.join(MODES)}",
                         "use (the default: the server when it runs), start (start it when "
                         "none runs) or off")
    return value


def find_server(ui: Any, no_server: bool = False) -> Connection | None:
    """The server to answer with, or None: in-process (see the module)."""
    how = mode()
    if no_server or how == "off":
        return None
    path = wire.socket_path()
    problem = wire.owner_problem(path)
    if problem == "missing":
        return start_server(ui, path) if how == "start" else None
    if problem is not None:
        ui.warn(f"not using the chatcli server: {problem}; answering in-process")
        return None
    try:
        return Connection(path)
    except (ConnectionRefusedError, FileNotFoundError, wire.ServerGone):
        with suppress(OSError):
            path.unlink()
        if how == "start":
            return start_server(ui, path)
        ui.warn(f"no chatcli server answers at {path} (a stale socket, removed); "
                "answering in-process")
    except TimeoutError:
        ui.warn(f"the chatcli server at {path} does not answer; answering in-process")
    except VersionMismatch as exc:
        ui.warn(f"{exc.message}; answering in-process (restart it: chatcli serve --stop, "
                "then chatcli serve)")
    except OSError as exc:
        ui.warn(f"cannot reach the chatcli server at {path}: {exc.strerror or exc}; "
                "answering in-process")
    return None


def start_server(ui: Any, path: Path) -> Connection | None:
    """Start `chatcli serve` in the background (CHATCLI_SERVER=start) and connect."""
    log = wire.log_path()
    try:
        from chatcli import paths

        paths.make_private_dir(log.parent)
        with open(log, "a", encoding="utf-8") as out:
            child = subprocess.Popen([sys.executable, "-m", "chatcli", "serve"],
                                     stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                     start_new_session=True, close_fds=True)
    except OSError as exc:
        ui.warn(f"could not start the chatcli server: {exc.strerror or exc}; answering "
                "in-process")
        return None
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if child.poll() is not None:
            ui.warn(f"the chatcli server did not start (exit code {child.returncode}; "
                    f"its log: {log}); answering in-process")
            return None
        if wire.owner_problem(path) is None:
            try:
                conn = Connection(path)
            except (OSError, ChatcliError):
                pass
            else:
                ui.notify(f"started the chatcli server (pid {conn.pid}; it keeps models "
                          "loaded; chatcli serve --stop ends it)")
                return conn
        time.sleep(0.02)
    ui.warn(f"the chatcli server did not answer within {START_TIMEOUT:.0f} s (its log: "
            f"{log}); answering in-process")
    return None


def stop_server(timeout: float = 10.0) -> int | None:
    """Ask the server to stop; its pid, or None when none runs."""
    path = wire.socket_path()
    if wire.owner_problem(path) is not None:
        return None
    try:
        conn = Connection(path)
    except (OSError, ChatcliError):
        return None
    with conn:
        conn.request(None, "stop")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and path.exists():
        time.sleep(0.02)
    return conn.pid


def server_status() -> dict[str, Any] | None:
    path = wire.socket_path()
    if wire.owner_problem(path) is not None:
        return None
    try:
        conn = Connection(path)
    except (OSError, ChatcliError):
        return None
    with conn:
        return dict(conn.request(None, "status")[1])


def _sendable(settings: Any) -> Any:
    """Settings without their capabilities (a strategy's may hold a function); the server
    puts the strategy's back."""
    from chatcli.decoding.base import DEFAULT_CAPABILITIES

    return dataclasses.replace(settings, capabilities=DEFAULT_CAPABILITIES)


_open: weakref.WeakSet[Any] = weakref.WeakSet()  # connections and backends to close


def close_all() -> None:
    """Close every connection this process opened (a command's end: the server then
    counts the model as unused and its keep-alive starts)."""
    for item in list(_open):
        item.close()


class _Measure:
    """The server's token counter as a `chatcli.context.Measure`."""

    def __init__(self, backend: ServedBackend, prefix: str) -> None:
        self.backend, self.prefix = backend, prefix

    def __call__(self, messages: list[Any]) -> list[int]:
        return list(self.backend._call(self.prefix, list(messages)))

    def sizes(self, messages: Any) -> list[int] | None:
        return self.backend._call(f"{self.prefix}_sizes", list(messages))

    def length(self, first: Any, total: int) -> int:
        return int(self.backend._call(f"{self.prefix}_length", first, total))


class ServedBackend:
    """An alias answered by the resident server (see the module)."""

    approximate = False

    @classmethod
    def open(cls, connection: Connection, spec: Any, ui: Any, device: str = "auto",
             dtype: str = "auto", threads: int | None = None,
             quantize: str | None = None) -> ServedBackend:
        backend = cls(connection, spec, ui, (device, dtype, threads, quantize))
        backend._open()
        return backend

    def __init__(self, connection: Connection, spec: Any, ui: Any,
                 runtime: tuple[Any, ...]) -> None:
        from chatcli.backends.local import CAPABILITIES

        self.conn: Connection | None = connection
        self.path = connection.path
        self.ui = ui
        self.requested_spec = spec
        self.runtime_flags = runtime
        self.capabilities = CAPABILITIES
        self.handle = 0
        self._streaming = False  # a stream not read to its end: the connection is dropped
        self._reused = 0
        self._side: tuple[Connection, int] | None = None  # see `_side_call`
        _open.add(self)
        self.count = _Measure(self, "count")
        self.raw_count = _Measure(self, "raw_count")

    # -- the connection ------------------------------------------------------------------
    def _connection(self) -> Connection:
        if self._streaming and self.conn is not None:  # an answer left half read
            self.conn.close()
            self.conn = None
        self._streaming = False
        if self.conn is None:
            try:
                self.conn = Connection(self.path)
            except (OSError, wire.ServerGone) as exc:
                raise wire.ServerGone("the chatcli server is gone", GONE_HINT) from exc
            self._open()
        return self.conn

    def _ask(self, conn: Connection, *frame: Any,
             gone: str = "the chatcli server went away") -> tuple[Any, ...]:
        """`conn.request(...)`; a connection that fails drops every connection of this
        backend and raises `ServerGone` saying `gone`."""
        try:
            return conn.request(self.ui, *frame)
        except (OSError, wire.ServerGone) as exc:
            self._drop()
            raise wire.ServerGone(gone, GONE_HINT) from exc

    def _open(self) -> None:
        assert self.conn is not None
        frame = self._ask(self.conn, "open", self.requested_spec, *self.runtime_flags,
                          gone="the chatcli server went away while opening "
                          f"{self.requested_spec.alias}")
        self.handle, info = int(frame[1]), frame[2]
        self.spec = info["spec"]
        self.context_window = int(info["context_window"])
        self.generation_config = dict(info["generation_config"])
        self.vocab_size = int(info["vocab_size"])
        self.has_chat_template = bool(info["has_chat_template"])
        self.thinking = info["thinking"]
        self.implementation = f"{info['implementation']} (chatcli serve)"
        self.implementation_name = str(info["implementation_name"])
        self.implementation_note = str(info["implementation_note"])

    def _drop(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None
        if self._side is not None:
            self._side[0].close()
            self._side = None

    def _call(self, method: str, *args: Any) -> Any:
        if self._streaming and method in wire.FREE_CALLS:  # beside the answer not read yet
            return self._side_call(method, *args)
        return self._ask(self._connection(), "call", self.handle, method, *args)[1]

    def _side_call(self, method: str, *args: Any) -> Any:
        """A tokenizer call while this backend's answer is still streaming: on a second
        connection, so that the answer's stream stays as it is."""
        if self._side is None:
            try:
                side = Connection(self.path)
            except (OSError, wire.ServerGone) as exc:
                raise wire.ServerGone("the chatcli server went away", GONE_HINT) from exc
            self._side = (side, -1)  # held already: a failed open closes it (`_drop`)
            frame = self._ask(side, "open", self.requested_spec, *self.runtime_flags)
            self._side = (side, int(frame[1]))
        side, handle = self._side
        return self._ask(side, "call", handle, method, *args)[1]

    def close(self) -> None:
        self._drop()

    # -- what is known of the model: `_open` sets spec, context_window,
    # generation_config, vocab_size, has_chat_template and implementation*
    @property
    def reused(self) -> int:
        """Prompt tokens the last answer did not recompute (as its events said: no request,
        so that an answer the server's end cut short is still recorded)."""
        return self._reused

    # -- requests ------------------------------------------------------------------------
    def check(self, settings: Any, views: Views, constraint: Any = None) -> None:
        self._call("check", _sendable(settings), views, constraint)

    def invalidate(self) -> None:
        """Forget the prompt cache; without a connection (an answer cut short dropped it)
        there is nothing to ask: the server forgets it when a client goes away."""
        if self.conn is None or self._streaming:
            self._drop()
            self._streaming = False
            return
        self._call("invalidate")

    def token_text(self, token_id: int) -> str:
        return str(self._call("token_text", token_id))

    def prompt_text(self, messages: list[Any]) -> tuple[str, str | None]:
        text, note = self._call("prompt_text", list(messages))
        return str(text), note

    def attention(self, packed: Any, answer_ids: list[int], raw: bool = False) -> Any:
        return self._call("attention", packed, list(answer_ids), raw)

    def distributions(self, packed: Any, answer_ids: list[int], k: int,
                      constraint: Any = None) -> Any:
        return self._call("distributions", packed, list(answer_ids), k, constraint)

    def stream(self, packed: Any, settings: Any, max_new_tokens: int, views: Views,
               strategies: Any = None, constraint: Any = None, raw: bool = False) -> Generation:
        _, gen = self._start(settings, constraint, "stream", packed, _sendable(settings),
                             max_new_tokens, views, constraint, raw)
        return gen

    def alternative(self, packed: Any, settings: Any, max_new_tokens: int, views: Views,
                    answer_ids: list[int], step: int, rank: int, strategies: Any = None,
                    constraint: Any = None) -> tuple[Any, Generation]:
        return self._start(settings, constraint, "alternative", packed, _sendable(settings),
                           max_new_tokens, views, list(answer_ids), step, rank, constraint)

    def _start(self, settings: Any, constraint: Any, op: str,
               *args: Any) -> tuple[Any, Generation]:
        """Send the request and wait until the server started it (its refusals are raised
        here, as the local backend raises them when a stream is made)."""
        conn = self._connection()
        frame = self._ask(conn, op, self.handle, *args)
        gen = Generation(iter(()), Stats(prompt_tokens=len(args[0].ids)), settings,
                         constraint=constraint)
        gen._events = self._events(conn, gen)
        self._streaming = True
        return frame[1], gen

    def _events(self, conn: Connection, gen: Generation) -> Any:
        try:
            while True:
                try:
                    frame = conn.reply(self.ui)
                except (OSError, wire.ServerGone) as exc:
                    self._drop()
                    raise wire.ServerGone("the chatcli server stopped mid-answer",
                                          GONE_HINT) from exc
                kind = frame[0]
                if kind == "end":
                    _set_stats(gen.stats, frame[1])
                    self._streaming = False
                    return
                if kind != "event":
                    continue
                event, stats, found, self._reused = frame[1], frame[2], frame[3], frame[4]
                _set_stats(gen.stats, stats)
                if found is not None:
                    gen.hypotheses, gen.pruned, gen.search, gen.constraint_satisfied = found
                if event.finish_reason is not None:
                    self._streaming = False  # the answer is complete: nothing follows
                yield event
                if event.finish_reason is not None:
                    return
        finally:
            if self._streaming and self.conn is conn:  # not read to its end: stop it
                self._drop()
                self._streaming = False


def _set_stats(stats: Stats, values: tuple[Any, ...]) -> None:
    for f, value in zip(dataclasses.fields(stats), values, strict=True):
        setattr(stats, f.name, value)
