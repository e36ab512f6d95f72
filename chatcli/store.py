"""Conversation history in SQLite.

Contract: `Store` keeps conversations and their messages in one SQLite database,
`paths.data_dir() / "history.db"` unless a path is given. The file is private
(mode 0600, also enforced on an existing file and on the -wal, -shm and -answering
files beside it, whenever it is opened), runs in WAL journal mode with a
busy timeout and foreign keys on, so several chatcli processes can read and write
at once without losing anything. Every write is its own short `BEGIN IMMEDIATE`
transaction, committed before the method returns: a process killed mid-answer
keeps what was saved before. (`synchronous=NORMAL`: a killed process loses
nothing; only a power cut may lose the last commits.) The schema is versioned with
`PRAGMA user_version`; a database from a newer chatcli is refused, not altered.

A conversation is a tree of messages (schema version 3): each message names its
parent (None for a first message), siblings are versions of one message (a
retried answer, an edited question), and the conversation's `leaf` ends the
path the user is on. `messages` and `load` give that path, root to leaf; `tree`
gives every message with its parent id (`chatcli.branches.Tree.from_stored`
builds the tree). Appending (`add_message`) adds a child of the leaf, or of a
given `parent`, and moves the leaf to it; `set_leaf` moves it without writing a
message; deleting a message deletes everything below it too, and a leaf that
goes moves up to what is left of its path. A `position` is a message's depth in
the tree. A version-2 history is migrated on the first write: each message's
parent is the one before it, the last one is the leaf. A conversation's title is
always its first user message, on one line and at most 60 characters
(`make_title`); it follows undo and clear. A conversation's
`updated` time moves with every change to it. Assistant replies may carry a
`ReplyMeta` (its `params` are stored as JSON, so tuples come back as lists). A reply
whose params say "raw": true is a text completion (`ask --raw`), not a chat answer:
`is_raw` (and `raw(conv_id)`) says whether a conversation's path holds one.

An unreadable, corrupt or locked database becomes a `StoreError` that names the
file, says what is wrong (`kind`: the disk is full, the file or its file system is
read-only, another process held the lock past the busy timeout, the file is
corrupt) and gives the hint that fits: only a corrupt file is ever to be moved
aside. `Store.open(readonly=True)` only reads: it creates and changes nothing (but
tightens the files' modes where it may), and
works on a read-only file or folder and on a full disk (a missing file reads as an
empty history); its writes raise `StoreError`.

Several processes on one conversation: `add_message(..., expect_leaf=id)` appends
only if, in the same write transaction, the conversation's leaf is still `id`
(`ConversationChanged` otherwise: another process wrote to it, and the caller may
append to its own parent anyway, which makes a branch), and `fork` copies a
conversation's earlier turns into a new one. `claim(conv_id)` marks a conversation as being
answered by this process until `release` (a lock byte in `history.db-answering`
that the system drops when the process dies); `claim` returns False while another
process holds it. Knows nothing about models, tokens or the terminal.
"""

from __future__ import annotations

import errno
import json
import os
import shlex
import sqlite3
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, cast

from chatcli import paths
from chatcli.conversation import Conversation, Message, Role
from chatcli.errors import ChatcliError

SCHEMA_VERSION = 3
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
    # 2: a message can be pinned (kept in the context window while older turns are dropped)
    ["ALTER TABLE messages ADD COLUMN pinned INTEGER NOT NULL DEFAULT 0"],
    # 3: a tree of messages: each names its parent, the conversation its current leaf
    [
        "ALTER TABLE messages ADD COLUMN parent_id INTEGER "
        "REFERENCES messages ON DELETE CASCADE",
        """UPDATE messages SET parent_id = (
            SELECT p.id FROM messages AS p WHERE p.conversation_id = messages.conversation_id
            AND p.position < messages.position ORDER BY p.position DESC LIMIT 1)""",
        "ALTER TABLE conversations ADD COLUMN leaf_id INTEGER",
        """UPDATE conversations SET leaf_id = (
            SELECT m.id FROM messages AS m WHERE m.conversation_id = conversations.id
            ORDER BY m.position DESC LIMIT 1)""",
        "DROP INDEX messages_order",
        "CREATE INDEX messages_order ON messages (conversation_id, position)",
        "CREATE INDEX messages_parent ON messages (parent_id)",
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
           prompt_tokens, completion_tokens, time_to_first_token_s, tokens_per_second, {pinned},
           {parent}
    FROM messages WHERE conversation_id = ? ORDER BY position, id
"""


class StoreError(ChatcliError):
    """The history database cannot be used, or names no such conversation.

    `kind` says why: "full", "readonly", "busy", "io" (the disk failed to write or
    read), "corrupt", "missing" (no such conversation) or "" (a newer schema).
    """

    kind = ""


class ConversationChanged(StoreError):
    """Another process changed the conversation since this one read it."""

    def __init__(self, conv_id: int, busy: bool = False) -> None:
        why = "is being answered by" if busy else "was changed by"
        super().__init__(f"conversation {conv_id} {why} another chatcli process")
        self.conv_id = conv_id
        self.busy = busy


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
    # a user message's attached files: {"path", "size", "sha256"} each (chatcli.attachments)
    attachments: tuple[dict[str, Any], ...] = ()
    pinned: bool = False
    parent_id: int | None = None  # the message it follows (None: a first message)


@dataclass(frozen=True)
class ConversationInfo:
    id: int
    title: str
    model: str
    system: str | None
    created: float
    updated: float
    messages: int


def is_raw(metas: Iterable[ReplyMeta | None]) -> bool:
    """Whether these replies' metadata mark a raw text completion (params "raw": true)."""
    return any(meta is not None and meta.params.get("raw") is True for meta in metas)


def history_path() -> Path:
    """Where the history lives by default (honours CHATCLI_HOME)."""
    return paths.data_dir() / "history.db"


def make_title(text: str) -> str:
    """A title from a user message: whitespace collapsed, at most TITLE_LENGTH characters."""
    line = " ".join(text.split())
    if len(line) <= TITLE_LENGTH:
        return line
    return line[: TITLE_LENGTH - 1].rstrip() + "…"


def _title(content: str, attachments: Sequence[dict[str, Any]]) -> str:
    """A user message's title: its words, not the files attached before them."""
    if not attachments:
        return make_title(content)
    words = content.rsplit("</file>", 1)[-1]
    return make_title(words) or make_title(
        "files: " + ", ".join(str(a.get("path", "")) for a in attachments))


def _now() -> float:
    return time.time()


def _no_conversation(conv_id: int) -> StoreError:
    error = StoreError(f"no conversation {conv_id}", "run 'chatcli history list'")
    error.kind = "missing"
    return error


READS_STILL_WORK = "'chatcli history list' and 'show' still work"
# Less free space than this on the history's disk counts as a full disk.
FULL_BELOW_BYTES = 256 * 1024


def _disk_state(path: Path) -> str:
    """"full" or "readonly-fs" for the file system holding `path`, else ""."""
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        vfs = os.statvfs(folder)
    except (OSError, AttributeError):
        return ""
    if vfs.f_flag & getattr(os, "ST_RDONLY", 1):
        return "readonly-fs"
    if vfs.f_blocks and vfs.f_bavail * vfs.f_frsize < FULL_BELOW_BYTES:  # (/proc has none)
        return "full"
    return ""


def _writable(path: Path) -> bool:
    """Whether this process may write the file and create its -wal and -shm files."""
    return os.access(path.parent, os.W_OK) and (not path.exists() or os.access(path, os.W_OK))


def _typed(kind: str, message: str, hint: str) -> StoreError:
    error = StoreError(message, hint)
    error.kind = kind
    return error


def _write_problem(path: Path, kind: str, readonly_fs: bool = False) -> StoreError:
    """The error for a history that cannot be written: a full disk, a read-only file."""
    where = f"cannot write the history database {path}"
    if kind == "full":
        return _typed("full", f"{where}: the disk is full",
                      "free some disk space, or set CHATCLI_HOME to a folder on another disk")
    if readonly_fs:
        return _typed("readonly", f"{where}: its file system is read-only",
                      f"set CHATCLI_HOME to a writable folder; {READS_STILL_WORK}")
    return _typed("readonly", f"{where}: the file or its folder is read-only",
                  f"make both writable by you, or set CHATCLI_HOME to another folder; "
                  f"{READS_STILL_WORK}")


def _database_error(path: Path, exc: sqlite3.Error) -> StoreError:
    text = str(exc)
    name = str(getattr(exc, "sqlite_errorname", "") or "")
    disk = _disk_state(path)
    if name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")) or (
        not name and ("locked" in text or "busy" in text)
    ):
        return _typed("busy", f"cannot use the history database {path}: {text}",
                      "another chatcli process kept it busy too long; try again")
    if name == "SQLITE_FULL" or (not name and "full" in text) or (
        disk == "full" and name.startswith(("SQLITE_IOERR", "SQLITE_CANTOPEN"))
    ):
        return _write_problem(path, "full")
    if name.startswith("SQLITE_READONLY") or (not name and "readonly" in text) or (
        disk == "readonly-fs" and name.startswith(("SQLITE_IOERR", "SQLITE_CANTOPEN"))
    ) or (name.startswith("SQLITE_CANTOPEN") and not _writable(path)):
        return _write_problem(path, "readonly", readonly_fs=disk == "readonly-fs")
    if name.startswith(("SQLITE_CORRUPT", "SQLITE_NOTADB")) or (
        not name and ("not a database" in text or "malformed" in text)
    ):
        quoted = shlex.quote(str(path))
        return _typed(
            "corrupt", f"cannot use the history database {path}: {text}",
            f"move it aside (mv {quoted} {quoted}.bad); chatcli then starts a new history",
        )
    # A failing disk, a vanished folder, ...: the file itself may be fine; keep it.
    return _typed("io", f"cannot use the history database {path}: {text}",
                  "check the disk that holds it (free space, permissions); chatcli changed "
                  "nothing")


def _os_error(path: Path, exc: OSError) -> StoreError:
    disk = _disk_state(path)
    if exc.errno in (errno.ENOSPC, errno.EDQUOT) or disk == "full":
        return _write_problem(path, "full")
    if exc.errno == errno.EROFS or disk == "readonly-fs":
        return _write_problem(path, "readonly", readonly_fs=True)
    if exc.errno in (errno.EACCES, errno.EPERM):
        return _write_problem(path, "readonly")
    return _typed(
        "io", f"cannot open the history database {path}: {exc.strerror or exc}",
        "check the permissions of its folder, or set CHATCLI_HOME to another one",
    )


SIDE_FILES = ("-wal", "-shm", "-answering")  # SQLite's journal and index, chatcli's locks


def _side_files(path: Path) -> list[Path]:
    return [path.with_name(path.name + suffix) for suffix in SIDE_FILES]


def _create_private(path: Path) -> None:
    """Create the file (and its folders) readable by its owner only; tighten an existing
    one, and the files beside it (SQLite gives a new -wal or -shm the database's mode)."""
    try:
        paths.make_private_dir(path.parent)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        os.close(fd)
        for each in (path, *_side_files(path)):
            paths.tighten(each)
    except OSError as exc:
        raise _os_error(path, exc) from exc


def _tighten_for_reading(path: Path) -> None:
    """Tighten the database and the files beside it where this process may (before a read
    only open makes a -wal and -shm with the database's mode)."""
    for each in (path, *_side_files(path)):
        with suppress(OSError):  # another user's file, a read-only disk: reading still works
            paths.tighten(each)


def _jsonable(value: object) -> object:
    return str(value)


class _Leaf:
    """The conversation's current leaf, as a default `parent` (shown as such in help)."""

    def __repr__(self) -> str:
        return "LEAF"


LEAF = _Leaf()


class Store:
    """Conversations and messages in one SQLite file. Use `Store.open()`."""

    def __init__(self, conn: sqlite3.Connection, path: Path, readonly: bool = False) -> None:
        self._conn = conn
        self.path = path
        self.readonly = readonly
        self._lock_fd: int | None = None
        self._claimed: set[int] = set()
        self.version = SCHEMA_VERSION  # an older file read only keeps its own (no migration)

    # -- opening and closing ---------------------------------------------------
    @classmethod
    def open(cls, path: Path | None = None, *, readonly: bool = False) -> Store:
        """Open (creating it if needed) for reading and writing; or only read it."""
        path = Path(path) if path is not None else history_path()
        if readonly:
            return cls._open_readonly(path)
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

    @classmethod
    def _open_readonly(cls, path: Path) -> Store:
        if not path.exists():  # no history yet: an empty one, in memory
            store = cls(sqlite3.connect(":memory:", isolation_level=None), path, readonly=True)
            store._setup()
            return store
        _tighten_for_reading(path)
        # mode=ro needs the -shm file, which a read-only folder or a full disk may not
        # give: then read the file as immutable (exact when no -wal is left over).
        last: StoreError | None = None
        for query in ("mode=ro", "mode=ro&immutable=1"):
            try:
                conn = sqlite3.connect(f"{path.as_uri()}?{query}", uri=True,
                                       timeout=BUSY_TIMEOUT_S, isolation_level=None)
            except sqlite3.Error as exc:
                last = _database_error(path, exc)
                continue
            store = cls(conn, path, readonly=True)
            try:
                store._check_readable()
            except StoreError as exc:
                conn.close()
                if exc.kind == "corrupt" or not exc.kind:
                    raise
                last = exc
                continue
            return store
        assert last is not None
        raise last

    def _check_readable(self) -> None:
        with self._read() as conn:
            conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version == 0 and conn.execute(
                "SELECT COUNT(*) FROM sqlite_master WHERE name = 'conversations'"
            ).fetchone()[0] == 0:
                version = -1  # an empty file: chatcli would create the schema
        if version == -1:
            self._conn.close()
            self._conn = sqlite3.connect(":memory:", isolation_level=None)
            self._setup()
            return
        if version > SCHEMA_VERSION:
            raise self._newer(version)
        self.version = version

    def _newer(self, version: int) -> StoreError:
        return StoreError(
            f"the history database {self.path} has schema version {version}; "
            f"this chatcli knows up to {SCHEMA_VERSION}",
            "upgrade chatcli, or set CHATCLI_HOME to use another history",
        )

    def close(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # drops every claim
            self._lock_fd = None
            self._claimed.clear()
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
            if not self.readonly:
                _set_wal(conn)
                conn.execute("PRAGMA synchronous = NORMAL")
        with self._transaction("BEGIN IMMEDIATE"):
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise self._newer(version)
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
        if self.readonly:
            raise _typed("readonly", f"the history database {self.path} is open only to read",
                         "open it with Store.open() to write")
        return self._transaction("BEGIN IMMEDIATE")

    def _read(self) -> AbstractContextManager[sqlite3.Connection]:
        """A read transaction: one consistent snapshot; never blocks writers (WAL)."""
        return self._transaction("BEGIN")

    def _require(self, conn: sqlite3.Connection, conv_id: int) -> None:
        if conn.execute("SELECT 1 FROM conversations WHERE id = ?", (conv_id,)).fetchone() is None:
            raise _no_conversation(conv_id)

    def _retitle(self, conn: sqlite3.Connection, conv_id: int, now: float) -> None:
        row = conn.execute(
            "SELECT content, params FROM messages WHERE conversation_id = ? AND role = 'user' "
            "ORDER BY position, id LIMIT 1",
            (conv_id,),
        ).fetchone()
        attached = json.loads(row[1]).get("attachments", ()) if row and row[1] else ()
        title = _title(row[0], attached) if row else ""
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

    def add_message(self, conv_id: int, message: Message, meta: ReplyMeta | None = None, *,
                    parent: int | _Leaf | None = LEAF,
                    expect_leaf: int | _Leaf | None = LEAF,
                    attachments: Sequence[dict[str, Any]] = ()) -> int:
        """Append a user or assistant message (the system prompt goes to `set_system`) as
        a child of `parent` (default: the conversation's leaf; None: a first message), and
        make it the leaf. `attachments` (a user message's files: path, size, sha256) are
        kept beside it, in the `params` column a reply uses for its decoding parameters.

        With `expect_leaf`, only if the conversation's leaf is still that message id (None:
        it has none) when the write transaction starts; else `ConversationChanged`. A
        `parent` that is not in the conversation is a `StoreError` of kind "missing".
        """
        if message.role not in ("user", "assistant"):
            raise ValueError(f"only user and assistant messages are stored, not {message.role!r}")
        with self._write() as conn:
            self._require(conn, conv_id)
            leaf = self._leaf(conn, conv_id)
            if not isinstance(expect_leaf, _Leaf) and leaf != expect_leaf:
                raise ConversationChanged(conv_id)
            if isinstance(parent, _Leaf):
                parent = leaf
            elif parent is not None and conn.execute(
                "SELECT 1 FROM messages WHERE id = ? AND conversation_id = ?", (parent, conv_id)
            ).fetchone() is None:
                raise _typed("missing", f"conversation {conv_id} has no message {parent}",
                             "another chatcli process may have removed it")
            return self._insert(conn, conv_id, message, meta, _now(), attachments, parent)

    def _leaf(self, conn: sqlite3.Connection, conv_id: int) -> int | None:
        if self.version < 3:  # an older file, read as it is: its last message
            row = conn.execute("SELECT id FROM messages WHERE conversation_id = ? "
                               "ORDER BY position DESC LIMIT 1", (conv_id,)).fetchone()
        else:
            row = conn.execute("SELECT leaf_id FROM conversations WHERE id = ?",
                               (conv_id,)).fetchone()
        return None if row is None else cast("int | None", row[0])

    def _insert(self, conn: sqlite3.Connection, conv_id: int, message: Message,
                meta: ReplyMeta | None, now: float,
                attachments: Sequence[dict[str, Any]] = (), parent: int | None = None) -> int:
        values: tuple[object, ...] = (None,) * 8
        if meta is None and attachments:
            values = (None, None, json.dumps({"attachments": list(attachments)},
                                             sort_keys=True), *(None,) * 5)
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
        cur = conn.execute(
            "INSERT INTO messages (conversation_id, position, role, content, interrupted, "
            "created, model, strategy, params, seed, prompt_tokens, completion_tokens, "
            "time_to_first_token_s, tokens_per_second, pinned, parent_id) "
            "VALUES (?, COALESCE((SELECT position + 1 FROM messages WHERE id = ?), 0), "
            "?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (conv_id, parent, message.role, message.content, int(message.interrupted),
             now, *values, int(message.pinned), parent),
        )
        new_id = cast(int, cur.lastrowid)
        title = _title(message.content, attachments) if message.role == "user" else ""
        conn.execute(
            "UPDATE conversations SET updated = ?, leaf_id = ?, "
            "title = CASE WHEN title = '' THEN ? ELSE title END WHERE id = ?",
            (now, new_id, title, conv_id),
        )
        return new_id

    def fork(self, conv_id: int, model: str, system: str | None,
             turns: Sequence[tuple[int | None, Message]]) -> tuple[int, list[int]]:
        """A new conversation holding copies of `turns` (id in `conv_id`, message).

        A turn whose id is still in `conv_id` is copied row and all (its reply
        metadata too); one that is gone is written from the message. Returns the new
        conversation's id and its message ids, in one transaction.
        """
        now = _now()
        with self._write() as conn:
            cur = conn.execute(
                "INSERT INTO conversations (title, model, system, created, updated) "
                "VALUES ('', ?, ?, ?, ?)",
                (model, system or None, now, now),
            )
            new_id = cast(int, cur.lastrowid)
            ids: list[int] = []
            for position, (old_id, message) in enumerate(turns):
                parent = ids[-1] if ids else None
                cur = conn.execute(
                    "INSERT INTO messages (conversation_id, position, role, content, "
                    "interrupted, created, model, strategy, params, seed, prompt_tokens, "
                    "completion_tokens, time_to_first_token_s, tokens_per_second, pinned, "
                    "parent_id) "
                    "SELECT ?, ?, role, content, interrupted, created, model, strategy, params, "
                    "seed, prompt_tokens, completion_tokens, time_to_first_token_s, "
                    "tokens_per_second, pinned, ? FROM messages WHERE id = ? AND "
                    "conversation_id = ?",
                    (new_id, position, parent, old_id, conv_id),
                )
                if cur.rowcount == 1:
                    ids.append(cast(int, cur.lastrowid))
                else:
                    ids.append(self._insert(conn, new_id, message, None, now, (), parent))
            conn.execute("UPDATE conversations SET leaf_id = ? WHERE id = ?",
                         (ids[-1] if ids else None, new_id))
            self._retitle(conn, new_id, now)
        return new_id, ids

    # -- which process answers a conversation -----------------------------------
    def _lock_file(self) -> int | None:
        if self._lock_fd is None and not self.readonly:
            try:
                self._lock_fd = os.open(self.path.with_name(self.path.name + "-answering"),
                                        os.O_RDWR | os.O_CREAT, 0o600)
            except OSError:
                return None  # a read-only folder: nobody can write, nobody answers
            with suppress(OSError):  # another user's lock file: it holds locks, no words
                mode = os.fstat(self._lock_fd).st_mode & 0o777
                if mode & 0o077:
                    os.fchmod(self._lock_fd, mode & 0o700)
        return self._lock_fd

    def claim(self, conv_id: int) -> bool:
        """Mark the conversation as answered by this process; False if another one is."""
        if conv_id in self._claimed:
            return True
        fd = self._lock_file()
        if fd is None:
            return True
        try:
            import fcntl
        except ImportError:  # no POSIX locks (Windows): the id check alone guards
            return True
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, conv_id)
        except OSError:
            return False
        self._claimed.add(conv_id)
        return True

    def release(self, conv_id: int) -> None:
        """The answer is saved: another process may continue the conversation."""
        if conv_id not in self._claimed or self._lock_fd is None:
            return
        import fcntl

        fcntl.lockf(self._lock_fd, fcntl.LOCK_UN, 1, conv_id)
        self._claimed.discard(conv_id)

    def set_pinned(self, message_id: int, pinned: bool) -> None:
        """Pin a stored message (or unpin it)."""
        with self._write() as conn:
            conn.execute("UPDATE messages SET pinned = ? WHERE id = ?", (int(pinned), message_id))

    def set_leaf(self, conv_id: int, message_id: int | None) -> None:
        """Move the conversation's current path to end at `message_id` (None: empty)."""
        with self._write() as conn:
            self._require(conn, conv_id)
            if message_id is not None and conn.execute(
                "SELECT 1 FROM messages WHERE id = ? AND conversation_id = ?",
                (message_id, conv_id),
            ).fetchone() is None:
                raise _typed("missing", f"conversation {conv_id} has no message {message_id}",
                             "another chatcli process may have removed it")
            conn.execute("UPDATE conversations SET leaf_id = ?, updated = ? WHERE id = ?",
                         (message_id, _now(), conv_id))

    def delete_messages(self, message_ids: Sequence[int]) -> None:
        """Remove these messages and everything below them (unknown ids are ignored), e.g.
        for /undo. A conversation whose leaf goes ends its path at what is left of it."""
        ids = sorted(set(message_ids))
        if not ids:
            return
        marks = ",".join("?" * len(ids))
        now = _now()
        with self._write() as conn:
            convs = [row[0] for row in conn.execute(
                f"SELECT DISTINCT conversation_id FROM messages WHERE id IN ({marks})", ids
            )]
            leaves = {conv_id: self._path_ids(conn, conv_id) for conv_id in convs}
            conn.execute(f"DELETE FROM messages WHERE id IN ({marks})", ids)
            for conv_id, path in leaves.items():
                gone = set(ids)
                kept = path[:next((i for i, m in enumerate(path) if m in gone), len(path))]
                conn.execute("UPDATE conversations SET leaf_id = ? WHERE id = ?",
                             (kept[-1] if kept else None, conv_id))
                self._retitle(conn, conv_id, now)

    def clear_messages(self, conv_id: int) -> None:
        """Remove every message of a conversation (it keeps its model and system prompt)."""
        with self._write() as conn:
            self._require(conn, conv_id)
            conn.execute("UPDATE conversations SET leaf_id = NULL WHERE id = ?", (conv_id,))
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
        """The conversation's current path, first message to leaf."""
        with self._read() as conn:
            self._require(conn, conv_id)
            return _path(self._messages(conn, conv_id), self._leaf(conn, conv_id))

    def raw(self, conv_id: int) -> bool:
        """Whether the conversation is a raw text completion (see `is_raw`)."""
        return is_raw(m.meta for m in self.messages(conv_id))

    def tree(self, conv_id: int) -> tuple[list[StoredMessage], int | None]:
        """Every message of the conversation (each with its parent id), in the order they
        were written, and the current leaf's id."""
        with self._read() as conn:
            self._require(conn, conv_id)
            rows = sorted(self._messages(conn, conv_id), key=lambda m: m.id)
            return rows, self._leaf(conn, conv_id)

    def _path_ids(self, conn: sqlite3.Connection, conv_id: int) -> list[int]:
        return [m.id for m in _path(self._messages(conn, conv_id), self._leaf(conn, conv_id))]

    def load(self, conv_id: int) -> tuple[ConversationInfo, Conversation, list[int]]:
        """The conversation as chat commands use it, with its message ids in order."""
        with self._read() as conn:
            info = self._info(conn, conv_id)
            stored = _path(self._messages(conn, conv_id), self._leaf(conn, conv_id))
        turns = [Message(cast(Role, m.role), m.content, m.interrupted, m.pinned)
                 for m in stored]
        return info, Conversation(system=info.system, turns=turns), [m.id for m in stored]

    def _info(self, conn: sqlite3.Connection, conv_id: int) -> ConversationInfo:
        row = conn.execute(_INFO_SQL + " WHERE c.id = ?", (conv_id,)).fetchone()
        if row is None:
            raise _no_conversation(conv_id)
        return ConversationInfo(*row)

    def _messages(self, conn: sqlite3.Connection, conv_id: int) -> list[StoredMessage]:
        """Every message, in position order, with its parent (an older file: the one before)."""
        result = []
        pinned_sql = "pinned" if self.version >= 2 else "0 AS pinned"
        parent_sql = "parent_id" if self.version >= 3 else "NULL AS parent_id"
        previous: int | None = None
        for row in conn.execute(_MESSAGE_SQL.format(pinned=pinned_sql, parent=parent_sql),
                                (conv_id,)):
            *row, pinned, parent_id = row
            if self.version < 3:
                parent_id, previous = previous, row[0]
            msg_id, role, content, interrupted, created, model, *rest = row
            meta = None
            strategy, params, seed, prompt, completion, ttft, tps = rest
            if model is not None:
                meta = ReplyMeta(model, strategy, json.loads(params) if params else {}, seed,
                                 prompt, completion, ttft, tps)
            attached: tuple[dict[str, Any], ...] = ()
            if model is None and params:
                attached = tuple(json.loads(params).get("attachments", ()))
            result.append(StoredMessage(msg_id, role, content, bool(interrupted), created, meta,
                                        attached, bool(pinned), parent_id))
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


def _path(rows: Sequence[StoredMessage], leaf: int | None) -> list[StoredMessage]:
    """The messages from the first one down to `leaf`."""
    by_id = {m.id: m for m in rows}
    path: list[StoredMessage] = []
    node = by_id.get(leaf) if leaf is not None else None
    while node is not None:
        path.append(node)
        node = by_id.get(node.parent_id) if node.parent_id is not None else None
    return path[::-1]


def _set_wal(conn: sqlite3.Connection) -> None:
    """Switch to WAL, retried while another process holds the lock: SQLite answers a
    journal-mode change "database is locked" at once, without its busy handler, while
    several processes create a fresh database together."""
    deadline = time.monotonic() + BUSY_TIMEOUT_S
    while True:
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)
