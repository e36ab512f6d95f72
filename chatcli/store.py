"""Conversation history in SQLite.

Contract: `Store` keeps conversations and their messages in one SQLite database,
`paths.data_dir() / "history.db"` unless a path is given. The file is private
(mode 0600, also enforced on an existing file), runs in WAL journal mode with a
busy timeout and foreign keys on, so several chatcli processes can read and write
at once without losing anything. Every write is its own short `BEGIN IMMEDIATE`
transaction, committed before the method returns: a process killed mid-answer
keeps what was saved before. (`synchronous=NORMAL`: a killed process loses
nothing; only a power cut may lose the last commits.) The schema is versioned with
`PRAGMA user_version`; a database from a newer chatcli is refused, not altered.

Messages are kept in `position` order, unique within a conversation. A
conversation's title is always its first user message, on one line and at most
60 characters (`make_title`); it follows undo and clear. A conversation's
`updated` time moves with every change to it. Assistant replies may carry a
`ReplyMeta` (its `params` are stored as JSON, so tuples come back as lists).

An unreadable, corrupt or locked database becomes a `StoreError` that names the
file, with a hint. Knows nothing about models, tokens or the terminal.
"""

from __future__ import annotations

import json
import os
import shlex
import sqlite3
import time
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, cast

from chatcli import paths
from chatcli.conversation import Conversation, Message, Role
from chatcli.errors import ChatcliError

SCHEMA_VERSION = 1
BUSY_TIMEOUT_S = 10.0
TITLE_LENGTH = 60

# One list of statements per schema version: _MIGRATIONS[v] takes version v to v + 1.
_MIGRATIONS: list[list[str]] = [
    [
        """CREATE TABLE conversations (
            id INTEGER PRIMARY KEY,
            title TEXT NOT NULL DEFAULT '',
            model TEXT NOT NULL,
            system TEXT,
            created REAL NOT NULL,
            updated REAL NOT NULL
        )""",
        """CREATE TABLE messages (
            id INTEGER PRIMARY KEY,
            conversation_id INTEGER NOT NULL REFERENCES conversations ON DELETE CASCADE,
            position INTEGER NOT NULL,
            role TEXT NOT NULL,
            content TEXT NOT NULL,
            interrupted INTEGER NOT NULL DEFAULT 0,
            created REAL NOT NULL,
            model TEXT,
            strategy TEXT,
            params TEXT,
            seed INTEGER,
            prompt_tokens INTEGER,
            completion_tokens INTEGER,
            time_to_first_token_s REAL,
            tokens_per_second REAL
        )""",
        "CREATE UNIQUE INDEX messages_order ON messages (conversation_id, position)",
        "CREATE INDEX conversations_updated ON conversations (updated)",
    ],
]
assert len(_MIGRATIONS) == SCHEMA_VERSION

_INFO_SQL = """
    SELECT c.id, c.title, c.model, c.system, c.created, c.updated,
           (SELECT COUNT(*) FROM messages AS m WHERE m.conversation_id = c.id)
    FROM conversations AS c
"""
_MESSAGE_SQL = """
    SELECT id, role, content, interrupted, created, model, strategy, params, seed,
           prompt_tokens, completion_tokens, time_to_first_token_s, tokens_per_second
    FROM messages WHERE conversation_id = ? ORDER BY position
"""


class StoreError(ChatcliError):
    """The history database cannot be used, or names no such conversation."""


@dataclass(frozen=True)
class ReplyMeta:
    """How an assistant reply was produced."""

    model: str
    strategy: str
    params: dict[str, Any]
    seed: int | None
    prompt_tokens: int
    completion_tokens: int
    time_to_first_token_s: float
    tokens_per_second: float


@dataclass(frozen=True)
class StoredMessage:
    id: int
    role: str
    content: str
    interrupted: bool
    created: float
    meta: ReplyMeta | None


@dataclass(frozen=True)
class ConversationInfo:
    id: int
    title: str
    model: str
    system: str | None
    created: float
    updated: float
    messages: int


def history_path() -> Path:
    """Where the history lives by default (honours CHATCLI_HOME)."""
    return paths.data_dir() / "history.db"


def make_title(text: str) -> str:
    """A title from a user message: whitespace collapsed, at most TITLE_LENGTH characters."""
    line = " ".join(text.split())
    if len(line) <= TITLE_LENGTH:
        return line
    return line[: TITLE_LENGTH - 1].rstrip() + "…"


def _now() -> float:
    return time.time()


def _no_conversation(conv_id: int) -> StoreError:
    return StoreError(f"no conversation {conv_id}", "run 'chatcli history list'")


def _database_error(path: Path, exc: sqlite3.Error) -> StoreError:
    text = str(exc)
    if "locked" in text or "busy" in text:
        hint = "another chatcli process kept it busy too long; try again"
    elif "readonly" in text or "read-only" in text:
        hint = f"check the permissions of {path} and its folder"
    elif "full" in text:
        hint = "free some disk space"
    else:
        quoted = shlex.quote(str(path))
        hint = f"move it aside (mv {quoted} {quoted}.bad); chatcli then starts a new history"
    return StoreError(f"cannot use the history database {path}: {text}", hint)


def _create_private(path: Path) -> None:
    """Create the file (and its folders) readable by its owner only; tighten an existing one."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        os.close(fd)
        if (path.stat().st_mode & 0o777) != 0o600:
            os.chmod(path, 0o600)
    except OSError as exc:
        raise StoreError(
            f"cannot open the history database {path}: {exc.strerror or exc}",
            "check the permissions of its folder, or set CHATCLI_HOME to another one",
        ) from exc


def _jsonable(value: object) -> object:
    return str(value)


class Store:
    """Conversations and messages in one SQLite file. Use `Store.open()`."""

    def __init__(self, conn: sqlite3.Connection, path: Path) -> None:
        self._conn = conn
        self.path = path

    # -- opening and closing ---------------------------------------------------
    @classmethod
    def open(cls, path: Path | None = None) -> Store:
        path = Path(path) if path is not None else history_path()
        _create_private(path)
        try:
            conn = sqlite3.connect(str(path), timeout=BUSY_TIMEOUT_S, isolation_level=None)
        except sqlite3.Error as exc:
            raise _database_error(path, exc) from exc
        store = cls(conn, path)
        try:
            store._setup()
        except BaseException:
            conn.close()
            raise
        return store

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _setup(self) -> None:
        conn = self._conn
        with self._errors():
            conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
            conn.execute("PRAGMA foreign_keys = ON")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
        with self._write():
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise StoreError(
                    f"the history database {self.path} has schema version {version}; "
                    f"this chatcli knows up to {SCHEMA_VERSION}",
                    "upgrade chatcli, or set CHATCLI_HOME to use another history",
                )
            for statements in _MIGRATIONS[version:]:
                for statement in statements:
                    conn.execute(statement)
            if version != SCHEMA_VERSION:
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    # -- transactions ------------------------------------------------------------
    @contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except (sqlite3.ProgrammingError, sqlite3.IntegrityError, sqlite3.InterfaceError):
            raise  # bugs in chatcli, not problems with the file
        except sqlite3.DatabaseError as exc:
            raise _database_error(self.path, exc) from exc

    @contextmanager
    def _transaction(self, begin: str) -> Iterator[sqlite3.Connection]:
        with self._errors():
            self._conn.execute(begin)
            try:
                yield self._conn
                self._conn.execute("COMMIT")
            except BaseException:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise

    def _write(self) -> AbstractContextManager[sqlite3.Connection]:
        """A write transaction: takes the write lock at once (waiting up to the busy timeout)."""
        return self._transaction("BEGIN IMMEDIATE")

    def _read(self) -> AbstractContextManager[sqlite3.Connection]:
        """A read transaction: one consistent snapshot; never blocks writers (WAL)."""
        return self._transaction("BEGIN")

    def _require(self, conn: sqlite3.Connection, conv_id: int) -> None:
        if conn.execute("SELECT 1 FROM conversations WHERE id = ?", (conv_id,)).fetchone() is None:
            raise _no_conversation(conv_id)

    def _retitle(self, conn: sqlite3.Connection, conv_id: int, now: float) -> None:
        row = conn.execute(
            "SELECT content FROM messages WHERE conversation_id = ? AND role = 'user' "
            "ORDER BY position LIMIT 1",
            (conv_id,),
        ).fetchone()
        title = make_title(row[0]) if row else ""
        conn.execute(
            "UPDATE conversations SET title = ?, updated = ? WHERE id = ?", (title, now, conv_id)
        )

    # -- writes ------------------------------------------------------------------
    def new_conversation(self, model: str, system: str | None) -> int:
        now = _now()
        with self._write() as conn:
            cur = conn.execute(
                "INSERT INTO conversations (title, model, system, created, updated) "
                "VALUES ('', ?, ?, ?, ?)",
                (model, system or None, now, now),
            )
        return cast(int, cur.lastrowid)

    def set_system(self, conv_id: int, system: str | None) -> None:
        with self._write() as conn:
            cur = conn.execute(
                "UPDATE conversations SET system = ?, updated = ? WHERE id = ?",
                (system or None, _now(), conv_id),
            )
            if cur.rowcount == 0:
                raise _no_conversation(conv_id)

    def add_message(self, conv_id: int, message: Message, meta: ReplyMeta | None = None) -> int:
        """Append a user or assistant message (the system prompt goes to `set_system`)."""
        if message.role not in ("user", "assistant"):
            raise ValueError(f"only user and assistant messages are stored, not {message.role!r}")
        now = _now()
        values: tuple[object, ...] = (None,) * 8
        if meta is not None:
            values = (
                meta.model,
                meta.strategy,
                json.dumps(meta.params, sort_keys=True, default=_jsonable),
                meta.seed,
                meta.prompt_tokens,
                meta.completion_tokens,
                meta.time_to_first_token_s,
                meta.tokens_per_second,
            )
        with self._write() as conn:
            self._require(conn, conv_id)
            cur = conn.execute(
                "INSERT INTO messages (conversation_id, position, role, content, interrupted, "
                "created, model, strategy, params, seed, prompt_tokens, completion_tokens, "
                "time_to_first_token_s, tokens_per_second) "
                "VALUES (?, (SELECT COALESCE(MAX(position) + 1, 0) FROM messages "
                "WHERE conversation_id = ?), ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (conv_id, conv_id, message.role, message.content, int(message.interrupted),
                 now, *values),
            )
            title = make_title(message.content) if message.role == "user" else ""
            conn.execute(
                "UPDATE conversations SET updated = ?, "
                "title = CASE WHEN title = '' THEN ? ELSE title END WHERE id = ?",
                (now, title, conv_id),
            )
        return cast(int, cur.lastrowid)

    def delete_messages(self, message_ids: Sequence[int]) -> None:
        """Remove these messages (unknown ids are ignored), e.g. for /undo and /retry."""
        ids = sorted(set(message_ids))
        if not ids:
            return
        marks = ",".join("?" * len(ids))
        now = _now()
        with self._write() as conn:
            convs = [row[0] for row in conn.execute(
                f"SELECT DISTINCT conversation_id FROM messages WHERE id IN ({marks})", ids
            )]
            conn.execute(f"DELETE FROM messages WHERE id IN ({marks})", ids)
            for conv_id in convs:
                self._retitle(conn, conv_id, now)

    def clear_messages(self, conv_id: int) -> None:
        """Remove every message of a conversation (it keeps its model and system prompt)."""
        with self._write() as conn:
            self._require(conn, conv_id)
            conn.execute("DELETE FROM messages WHERE conversation_id = ?", (conv_id,))
            self._retitle(conn, conv_id, _now())

    def delete(self, conv_id: int) -> None:
        """Remove a conversation and its messages."""
        with self._write() as conn:
            cur = conn.execute("DELETE FROM conversations WHERE id = ?", (conv_id,))
            if cur.rowcount == 0:
                raise _no_conversation(conv_id)

    # -- reads -------------------------------------------------------------------
    def latest(self) -> ConversationInfo | None:
        """The most recently updated conversation, if any."""
        found = self.list(limit=1)
        return found[0] if found else None

    def info(self, conv_id: int) -> ConversationInfo:
        with self._read() as conn:
            return self._info(conn, conv_id)

    def messages(self, conv_id: int) -> list[StoredMessage]:
        with self._read() as conn:
            self._require(conn, conv_id)
            return self._messages(conn, conv_id)

    def load(self, conv_id: int) -> tuple[ConversationInfo, Conversation, list[int]]:
        """The conversation as chat commands use it, with its message ids in order."""
        with self._read() as conn:
            info = self._info(conn, conv_id)
            stored = self._messages(conn, conv_id)
        turns = [Message(cast(Role, m.role), m.content, m.interrupted) for m in stored]
        return info, Conversation(system=info.system, turns=turns), [m.id for m in stored]

    def _info(self, conn: sqlite3.Connection, conv_id: int) -> ConversationInfo:
        row = conn.execute(_INFO_SQL + " WHERE c.id = ?", (conv_id,)).fetchone()
        if row is None:
            raise _no_conversation(conv_id)
        return ConversationInfo(*row)

    def _messages(self, conn: sqlite3.Connection, conv_id: int) -> list[StoredMessage]:
        result = []
        for row in conn.execute(_MESSAGE_SQL, (conv_id,)):
            msg_id, role, content, interrupted, created, model, *rest = row
            meta = None
            if model is not None:
                strategy, params, seed, prompt, completion, ttft, tps = rest
                meta = ReplyMeta(model, strategy, json.loads(params) if params else {}, seed,
                                 prompt, completion, ttft, tps)
            result.append(StoredMessage(msg_id, role, content, bool(interrupted), created, meta))
        return result

    # Defined last: inside the class body, `list` names this method.
    def list(self, limit: int | None = None) -> list[ConversationInfo]:
        """Conversations, most recently updated first."""
        with self._read() as conn:
            rows = conn.execute(
                _INFO_SQL + " ORDER BY c.updated DESC, c.id DESC LIMIT ?",
                (-1 if limit is None else max(limit, 0),),
            ).fetchall()
        return [ConversationInfo(*row) for row in rows]
