"""Where the resident server listens and how its two ends talk.

Contract: `socket_path()` is the server's Unix socket: `$XDG_RUNTIME_DIR/chatcli/` when
that variable names a folder, else chatcli's cache folder (`run/`), so that each
CHATCLI_HOME (and each test) has its own server; the folder is made 0700 and the socket
0600. Socket paths past the kernel's 107-byte limit are reached through the folder's
descriptor (`/proc/self/fd/N/NAME`), so a deep home works too. `owner_problem(path)`
says why a file there must not be trusted (another user's, not a socket).

Frames: a 4-byte big-endian length, then one pickled tuple whose first item names it
(`send`, `recv`). Pickle is safe here only because both ends are the same user: the
folder is private, the socket 0600, the client checks the socket's owner before
connecting and the server checks its peer's uid (`peer`). `recv` raises
`ServerGone` when the other end closed or the bytes do not read as a frame.
`VERSION` is what both ends compare in their greeting: chatcli's version and this
protocol's.

Knows nothing about models, backends or the terminal.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import socket
import stat
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from chatcli import __version__
from chatcli.errors import BackendGone, ChatcliError

PROTOCOL = 3  # 3: Stats.speculation, StepEvent.drafted
VERSION = f"{__version__}/{PROTOCOL}"
# Calls that read the tokenizer only: answered at once, even while the model answers
# (the client asks them beside a stream it has not read yet, e.g. /alt's note).
FREE_CALLS = frozenset({"count", "count_sizes", "count_length", "raw_count", "raw_count_sizes",
                        "raw_count_length", "token_text", "prompt_text", "check"})
_HEADER = struct.Struct(">I")
_MAX_FRAME = 1 << 30


class ServerGone(BackendGone):
    """The server closed the connection (it stopped, or it was killed)."""


def socket_path() -> Path:
    """The socket of the server for this user and chatcli home."""
    from chatcli import paths

    runtime = os.environ.get("XDG_RUNTIME_DIR", "")
    if runtime and Path(runtime).is_dir():
        home = hashlib.sha256(str(paths.cache_dir()).encode()).hexdigest()[:12]
        return Path(runtime) / "chatcli" / f"serve-{home}.sock"
    return paths.cache_dir() / "run" / "serve.sock"


def log_path() -> Path:
    """Where an automatically started server writes its log: beside its socket."""
    return socket_path().with_suffix(".log")


@contextmanager
def reachable(path: Path) -> Iterator[str]:
    """`path` as a name `bind`/`connect` accept (a long one through its folder's fd)."""
    if len(os.fsencode(str(path))) < 100:
        yield str(path)
        return
    fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        yield f"/proc/self/fd/{fd}/{path.name}"
    finally:
        os.close(fd)


def owner_problem(path: Path) -> str | None:
    """Why the file at `path` is not a server socket of this user (None: it is one)."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return "missing"
    if not stat.S_ISSOCK(info.st_mode):
        return f"{path} is not a socket"
    if info.st_uid != os.getuid():
        return f"{path} belongs to user id {info.st_uid}, not to you ({os.getuid()})"
    if info.st_mode & 0o077:
        return f"{path} can be opened by other users (mode {stat.S_IMODE(info.st_mode):o})"
    return None


def peer(sock: socket.socket) -> tuple[int, int] | None:
    """(process id, user id) of the process at the other end of `sock` (None where
    unknown)."""
    if not hasattr(socket, "SO_PEERCRED"):
        return None
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, _ = struct.unpack("3i", creds)
    return int(pid), int(uid)


def send(sock: socket.socket, *message: Any) -> None:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    sock.sendall(_HEADER.pack(len(data)) + data)


def _exactly(sock: socket.socket, n: int) -> bytes:
    chunks, left = [], n
    while left:
        chunk = sock.recv(min(left, 1 << 20))
        if not chunk:
            raise ServerGone("the connection closed")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def recv(sock: socket.socket) -> tuple[Any, ...]:
    (size,) = _HEADER.unpack(_exactly(sock, _HEADER.size))
    if size > _MAX_FRAME:
        raise ServerGone(f"a frame of {size} bytes: not chatcli's protocol")
    try:
        message = pickle.loads(_exactly(sock, size))
    except ServerGone:
        raise
    except Exception as exc:  # bytes that are not a frame of this protocol
        raise ServerGone(f"an unreadable frame ({type(exc).__name__})") from None
    if not isinstance(message, tuple) or not message or not isinstance(message[0], str):
        raise ServerGone("a frame that is not chatcli's protocol")
    return message


def error_frame(exc: ChatcliError) -> tuple[Any, ...]:
    """A `ChatcliError` as a frame's fields: its class, message, hint and exit code."""
    return ("error", type(exc), exc.message, exc.hint, exc.exit_code)


def raise_error(frame: tuple[Any, ...]) -> None:
    """Raise the `ChatcliError` an "error" frame carries, as the server raised it."""
    _, cls, message, hint, code = frame
    if not (isinstance(cls, type) and issubclass(cls, ChatcliError)):
        cls = ChatcliError
    exc = cls.__new__(cls)
    ChatcliError.__init__(exc, message, hint, exit_code=code)
    raise exc
