"""Nothing the user wrote is lost: the history store under faults.

A full disk, a read-only history, a lock held past the timeout, two processes on
one conversation, a umask of 000. Faults are injected at the sqlite3 boundary (a
connection whose statements raise sqlite3's own error, with its error code), or
made real: a small tmpfs in a user namespace for a full disk, `chattr +i` for a
read-only file or folder (the tests run as root, whom file modes do not stop).
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from chatcli.conversation import Message
from chatcli.store import Store
from conftest import Tiny, printed

REPO = Path(__file__).resolve().parents[1]
KEPT = "chatcli keeps the conversation in memory and tries again on every turn"
FULL = "the disk is full; free some disk space, or set CHATCLI_HOME to a folder on another disk"


def db_path(home: Path) -> Path:
    return home / "data" / "history.db"


def rows(home: Path) -> list[tuple[int, str, str, int]]:
    """(conversation, role, content, interrupted) of every stored message, in order."""
    conn = sqlite3.connect(db_path(home))
    try:
        return conn.execute(
            "SELECT conversation_id, role, content, interrupted FROM messages "
            "ORDER BY conversation_id, position"
        ).fetchall()
    finally:
        conn.close()


# -- faults at the sqlite3 boundary ---------------------------------------------------------
def sqlite_error(message: str, name: str, code: int) -> sqlite3.OperationalError:
    """sqlite3's own error, as the C library would raise it."""
    error = sqlite3.OperationalError(message)
    error.sqlite_errorname = name  # type: ignore[attr-defined]
    error.sqlite_errorcode = code  # type: ignore[attr-defined]
    return error


class Fault:
    """Statements starting with `sql` raise `error`, `times` times (None: always)."""

    def __init__(self, sql: str, error: sqlite3.Error, times: int | None = None) -> None:
        self.sql, self.error, self.times = sql, error, times
        self.hits = 0

    def check(self, sql: str) -> None:
        if sql.lstrip().startswith(self.sql) and (self.times is None or self.hits < self.times):
            self.hits += 1
            raise self.error


class FaultyConnection:
    def __init__(self, conn: sqlite3.Connection, fault: Fault) -> None:
        self._conn, self._fault = conn, fault

    def execute(self, sql: str, *args: Any) -> sqlite3.Cursor:
        self._fault.check(sql)
        return self._conn.execute(sql, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)


@pytest.fixture
def inject(monkeypatch: pytest.MonkeyPatch) -> Any:
    """inject(fault): every history connection opened from now on suffers it."""
    real = sqlite3.connect

    def install(fault: Fault) -> Fault:
        def connect(*args: Any, **kwargs: Any) -> Any:
            return FaultyConnection(real(*args, **kwargs), fault)

        monkeypatch.setattr(sqlite3, "connect", connect)
        return fault

    return install


def disk_full(times: int | None = None) -> Fault:
    full = sqlite_error("database or disk is full", "SQLITE_FULL", 13)
    return Fault("INSERT INTO messages", full, times)


# -- item 12: say what is wrong --------------------------------------------------------------
def test_a_full_disk_is_named_not_called_corrupt(cli, home: Path, inject: Any) -> None:
    with Store.open() as s:
        conv = s.new_conversation("tiny", None)
        s.add_message(conv, Message("user", "hello"))
    db = db_path(home)
    # What sqlite says when the disk holding a WAL database is full (its -shm cannot grow).
    inject(Fault("PRAGMA journal_mode", sqlite_error("disk I/O error", "SQLITE_IOERR_SHMSIZE",
                                                      4874)))
    statvfs = os.statvfs(db.parent)
    full = os.statvfs_result((*statvfs[:4], 0, 0, *statvfs[6:]))  # no block free
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(os, "statvfs", lambda path: full)
        result = cli(["history", "rm", str(conv)])
    assert (result.exit_code, result.stdout) == (1, "")
    assert result.stderr == (
        f"error: cannot write the history database {db}: the disk is full; hint: free some "
        "disk space, or set CHATCLI_HOME to a folder on another disk\n"
    )


def test_sqlite_full_and_readonly_name_the_problem(tmp_path: Path, inject: Any) -> None:
    from chatcli.store import StoreError

    db = tmp_path / "history.db"
    Store.open(db).close()
    inject(Fault("BEGIN IMMEDIATE", sqlite_error("attempt to write a readonly database",
                                                 "SQLITE_READONLY", 8)))
    with pytest.raises(StoreError) as err:
        Store.open(db)
    assert err.value.message == (
        f"cannot write the history database {db}: the file or its folder is read-only"
    )
    assert err.value.hint == ("make both writable by you, or set CHATCLI_HOME to another "
                              "folder; 'chatcli history list' and 'show' still work")
    assert err.value.kind == "readonly"


def test_a_disk_io_error_never_advises_moving_the_file(tmp_path: Path, inject: Any) -> None:
    from chatcli.store import StoreError

    db = tmp_path / "history.db"
    Store.open(db).close()
    inject(Fault("PRAGMA journal_mode", sqlite_error("disk I/O error", "SQLITE_IOERR_READ", 266)))
    with pytest.raises(StoreError) as err:
        Store.open(db)
    assert err.value.message == f"cannot use the history database {db}: disk I/O error"
    assert err.value.hint == ("check the disk that holds it (free space, permissions); "
                              "chatcli changed nothing")


@contextmanager
def read_only(*paths: Path) -> Iterator[None]:
    """Make files and folders read-only, for root too: chmod a-w, and `chattr +i` as root
    (root ignores file modes; an immutable file or folder refuses even root's writes)."""
    modes = {p: stat.S_IMODE(p.stat().st_mode) for p in paths}
    for p in paths:
        p.chmod(modes[p] & 0o555)
    immutable = os.geteuid() == 0
    try:
        if immutable:
            chattr = shutil.which("chattr")
            if chattr is None:
                pytest.skip("running as root without chattr: cannot make a file read-only")
            done = subprocess.run([chattr, "+i", *map(str, paths)], capture_output=True)
            if done.returncode != 0:
                pytest.skip(f"chattr +i does not work here: {done.stderr.decode().strip()}")
        yield
    finally:
        if immutable:
            subprocess.run([shutil.which("chattr") or "chattr", "-i", *map(str, paths)],
                           capture_output=True)
        for p in paths:
            p.chmod(modes[p])


@pytest.mark.parametrize("what", ["file", "folder"])
def test_a_read_only_history_can_be_listed_shown_and_exported(cli, home: Path,
                                                               what: str) -> None:
    with Store.open() as s:
        conv = s.new_conversation("tiny", None)
        s.add_message(conv, Message("user", "What is 2+2?"))
        s.add_message(conv, Message("assistant", "4."))
    db = db_path(home)
    before = sorted(p.name for p in db.parent.iterdir())
    with read_only(db if what == "file" else db.parent):
        listed = cli(["history", "list"])
        shown = cli(["history", "show", str(conv)])
        exported = cli(["history", "export", str(conv), "--format", "json"])
        removed = cli(["history", "rm", str(conv)])
    assert (listed.exit_code, listed.stderr) == (0, "")
    assert "What is 2+2?" in listed.stdout
    assert (shown.exit_code, shown.stderr) == (0, "")
    assert "## User\n\nWhat is 2+2?\n\n## Assistant\n\n4.\n" in shown.stdout
    assert exported.exit_code == 0
    assert [m["content"] for m in json.loads(exported.stdout)["messages"]] == ["What is 2+2?",
                                                                               "4."]
    # Writing is refused with the right words, and nothing was lost or changed.
    assert removed.exit_code == 1
    assert removed.stderr.startswith(f"error: cannot write the history database {db}: ")
    assert "move it aside" not in removed.stderr
    if what == "folder":
        assert sorted(p.name for p in db.parent.iterdir()) == before
    assert [r[2] for r in rows(home)] == ["What is 2+2?", "4."]


def test_reading_a_missing_history_creates_nothing(cli, home: Path) -> None:
    result = cli(["history", "list"])
    assert (result.exit_code, result.stdout, result.stderr) == (0, "", "no conversations yet\n")
    assert not (home / "data").exists()


# -- item 10: a failed write loses nothing ---------------------------------------------------
def recovery_files(home: Path) -> list[Path]:
    return sorted((home / "data").glob("chatcli-unsaved-*.json"))


def test_chat_goes_on_when_writes_fail_and_saves_them_later(cli, home: Path,
                                                             inject: Any) -> None:
    Store.open().close()
    fault = inject(disk_full(times=2))  # the first two messages cannot be written
    result = cli(["chat", "-n", "4"], input="one\ntwo\nthree\n")
    assert result.exit_code == 0, result.stderr
    db = db_path(home)
    assert result.stderr == (
        f"warning: cannot write the history database {db}: {FULL}; {KEPT}\n"
        "warning: the history works again; the waiting messages are saved\n"
    )
    assert fault.hits == 2
    stored = rows(home)
    assert [(r[0], r[1]) for r in stored] == [(1, "user"), (1, "assistant")] * 3
    assert [r[2] for r in stored if r[1] == "user"] == ["one", "two", "three"]
    assert recovery_files(home) == []


def test_chat_writes_a_recovery_file_when_the_history_never_works(cli, home: Path,
                                                                   inject: Any) -> None:
    Store.open().close()
    fault = inject(disk_full())
    result = cli(["chat", "-n", "4"], input="one\ntwo\n")
    assert result.exit_code == 0, result.stderr
    [saved] = recovery_files(home)
    assert stat.S_IMODE(saved.stat().st_mode) == 0o600
    db = db_path(home)
    assert result.stderr == (
        f"warning: cannot write the history database {db}: {FULL}; {KEPT}\n"
        f"warning: 4 message(s) could not be saved in the history; the whole conversation is "
        f"in {saved} (chatcli chat, then /load {saved})\n"
    )
    doc = json.loads(saved.read_text())
    assert doc["model"] == "tiny"
    assert [(m["role"], m["content"]) for m in doc["messages"]][0::2] == [("user", "one"),
                                                                          ("user", "two")]
    answers = [m["content"] for m in doc["messages"][1::2]]
    assert result.stdout == printed(answers[0]) + printed(answers[1])
    assert rows(home) == []
    # Once the disk has room again, the file loads back into a chat and into the history.
    fault.times = fault.hits
    loaded = cli(["chat", "-n", "1"], input=f"/load {saved}\n")
    assert (loaded.exit_code, loaded.stderr) == (0, f"chatcli: loaded 4 messages from {saved}\n")
    assert [(r[1], r[2]) for r in rows(home)] == [(m["role"], m["content"])
                                                  for m in doc["messages"]]
    assert recovery_files(home) == [saved]


def test_recovery_files_never_overwrite_each_other(tmp_path: Path) -> None:
    from chatcli import transcript
    from chatcli.conversation import Conversation

    saved = [transcript.save_recovery([tmp_path], "tiny",
                                      Conversation(None, [Message("user", f"n{n}")]))
             for n in range(3)]
    assert len(set(saved)) == 3
    assert [json.loads(p.read_text())["messages"][0]["content"] for p in saved] == [
        "n0", "n1", "n2"]


def test_a_history_locked_past_the_timeout_does_not_end_the_chat(cli, home: Path,
                                                                 inject: Any) -> None:
    Store.open().close()
    inject(Fault("BEGIN IMMEDIATE", sqlite_error("database is locked", "SQLITE_BUSY", 5),
                 times=3))
    result = cli(["chat", "-n", "2"], input="one\ntwo\n")
    assert result.exit_code == 0, result.stderr
    assert result.stderr.splitlines()[0] == (
        f"warning: cannot use the history database {db_path(home)}: database is locked; another "
        f"chatcli process kept it busy too long; try again; {KEPT}"
    )
    assert [r[2] for r in rows(home) if r[1] == "user"] == ["one", "two"]


def test_ask_saves_the_question_before_loading_the_model(cli, home: Path,
                                                         tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{}")
    with (home / "models.toml").open("a") as f:
        f.write(f'\n[models.broken]\nsource = "path"\npath = "{broken}"\n')
    result = cli(["ask", "-m", "broken", "please remember this"])
    assert result.exit_code == 1
    assert result.stderr.startswith("error: ")
    assert rows(home) == [(1, "user", "please remember this", 0)]
    with Store.open() as s:
        info = s.latest()
        assert info is not None and (info.model, info.title) == ("broken",
                                                                 "please remember this")


def test_ask_answers_when_the_history_cannot_be_written(cli, home: Path, tiny_model: Tiny,
                                                        inject: Any) -> None:
    Store.open().close()
    inject(disk_full())
    result = cli(["ask", "-n", "5", "Hello"])
    assert result.exit_code == 0, result.stderr
    [saved] = recovery_files(home)
    db = db_path(home)
    assert result.stderr == (
        f"warning: cannot write the history database {db}: {FULL}; {KEPT}\n"
        f"warning: 2 message(s) could not be saved in the history; the whole conversation is "
        f"in {saved} (chatcli chat, then /load {saved})\n"
    )
    doc = json.loads(saved.read_text())
    assert [m["role"] for m in doc["messages"]] == ["user", "assistant"]
    assert doc["messages"][0]["content"] == "Hello"
    assert result.stdout == printed(doc["messages"][1]["content"])
    assert doc["messages"][1]["meta"]["completion_tokens"] <= 5


def test_the_recovery_file_goes_to_the_temp_folder_when_the_data_folder_is_read_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from chatcli import transcript
    from chatcli.conversation import Conversation

    conv = Conversation(None, [Message("user", "keep me")])
    data = tmp_path / "data"
    data.mkdir()
    temp = tmp_path / "temp"
    temp.mkdir()
    with read_only(data):
        path = transcript.save_recovery([data, temp], "tiny", conv)
    assert path.parent == temp
    assert json.loads(path.read_text())["messages"][0]["content"] == "keep me"


# -- item 13: two processes on one conversation ------------------------------------------------
# Runs chatcli's real entry point in its own process; `Store.load` (reading the conversation
# to continue) or `open_model` (loading the model) waits at a gate: it touches NAME.ready
# and goes on once NAME exists.
GATED = """
import sys, time
from pathlib import Path
gate, where, *argv = sys.argv[1:]
def gated(real):
    def wait(*args, **kwargs):
        result = real(*args, **kwargs) if where == "load" else None
        Path(gate + ".ready").touch()
        while not Path(gate).exists():
            time.sleep(0.005)
        return result if where == "load" else real(*args, **kwargs)
    return wait
if where == "load":
    from chatcli.store import Store
    Store.load = gated(Store.load)
elif where == "model":
    from chatcli.cli import common
    common.open_model = gated(common.open_model)
from chatcli.cli.app import main
main(argv)
"""


def gated_ask(gate: Path, where: str, question: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, "-c", GATED, str(gate), where, "ask", "-c", "-n", "3", question],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO,
    )


def wait_for(path: Path, proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 120
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.01)


def alternate(turns: list[tuple[int, str, str, int]]) -> bool:
    return [t[1] for t in turns] == ["user", "assistant"] * (len(turns) // 2)


def conversations(home: Path) -> dict[int, list[tuple[str, str]]]:
    found: dict[int, list[tuple[str, str]]] = {}
    for conv, role, content, _ in rows(home):
        found.setdefault(conv, []).append((role, content))
    return found


@pytest.fixture
def started(cli, home: Path) -> list[tuple[str, str]]:
    first = cli(["ask", "-n", "3", "first question"])
    assert first.exit_code == 0, first.stderr
    return conversations(home)[1]


def leaves(home: Path, conv: int) -> tuple[list[list[tuple[str, str]]], list[tuple[str, str]]]:
    """Every branch of a conversation (root to leaf; ordered by where they part, the version
    made first first) and its current path."""
    from chatcli.branches import Tree
    from chatcli.store import Store

    with Store.open(db_path(home), readonly=True) as store:
        tree = Tree.from_stored(*store.tree(conv))
    ends = [n for n in tree.nodes() if not n.children]
    paths = []
    for end in ends:
        path, node = [], end
        while node is not None:
            path.append((node.seq, (node.message.role, node.message.content)))
            node = node.parent
        paths.append(path[::-1])
    paths.sort(key=lambda p: [seq for seq, _ in p])
    return [[m for _, m in p] for p in paths], [(m.role, m.content) for m in tree.messages()]


def test_ask_c_while_another_ask_c_answers_becomes_a_branch(
    home: Path, tmp_path: Path, started: list[tuple[str, str]]
) -> None:
    gate = tmp_path / "go"
    a = gated_ask(gate, "model", "question A")  # saved, then waits while "loading"
    wait_for(tmp_path / "go.ready", a)
    b = gated_ask(tmp_path / "never", "none", "question B")  # runs through meanwhile
    b_out, b_err = b.communicate(timeout=120)
    gate.touch()
    a_out, a_err = a.communicate(timeout=120)
    assert (a.returncode, a_err) == (0, "")
    assert b.returncode == 0, b_err
    assert b_err == (
        "warning: conversation 1 is being answered by another chatcli process; this exchange "
        "is saved as a new branch of it, beside the question being answered ('chatcli history "
        "show --tree 1' shows them all)\n"
    )
    assert sorted(conversations(home)) == [1]  # one conversation, two branches
    branches, path = leaves(home, 1)
    a_branch = [*started, ("user", "question A"), ("assistant", a_out.rstrip("\n"))]
    b_branch = [*started, ("user", "question B"), ("assistant", b_out.rstrip("\n"))]
    assert branches == [a_branch, b_branch]
    assert path == a_branch  # the last answer written ends the path chat -c continues


def test_two_ask_c_reading_at_once_become_two_branches(
    home: Path, tmp_path: Path, started: list[tuple[str, str]]
) -> None:
    procs = [gated_ask(tmp_path / f"go{n}", "load", f"question {n}") for n in range(2)]
    for n, proc in enumerate(procs):
        wait_for(tmp_path / f"go{n}.ready", proc)  # both have read conversation 1
    for n in range(2):
        (tmp_path / f"go{n}").touch()
    results = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], results
    assert sorted(conversations(home)) == [1], results
    branches, _ = leaves(home, 1)
    assert len(branches) == 2, (branches, results)
    for turns in branches:
        assert [r for r, _ in turns] == ["user", "assistant"] * 2  # never interleaved
        assert turns[:2] == started
    asked = {turns[2][1]: n for n, turns in enumerate(branches)}
    assert sorted(asked) == ["question 0", "question 1"]
    second = next(n for n in range(2) if asked[f"question {n}"] == 1)  # wrote second
    out, err = results[second]
    assert err.startswith("warning: conversation 1 ")
    assert err.endswith("; this exchange is saved as a new branch of it ('chatcli history show "
                        "--tree 1' shows them all)\n")
    assert branches[1][3] == ("assistant", out.rstrip("\n"))
    assert results[1 - second][1] == ""


# -- item 14: what the user typed is private --------------------------------------------------
UMASK_000 = """
import os, sys
from pathlib import Path
os.umask(0)
from chatcli.store import Store
from chatcli.ui.input import PromptReader
data = Path(sys.argv[1])
with Store.open(data / "history.db") as s:
    s.add_message(s.new_conversation("tiny", None), __import__("chatcli.conversation",
                  fromlist=["Message"]).Message("user", "a secret"))
    assert s.claim(1)  # the lock file of conversations being answered
    reader = PromptReader(data / "input_history")
    reader.session.history.store_string("a secret line")
    print(sorted(f"{p.name} {oct(p.stat().st_mode & 0o777)}" for p in data.iterdir()))
print(oct(data.stat().st_mode & 0o777))
"""


@pytest.mark.parametrize("existing", [False, True])
def test_history_and_typed_lines_are_private_under_umask_000(tmp_path: Path,
                                                             existing: bool) -> None:
    data = tmp_path / "data"
    if existing:  # an older chatcli left them readable by all
        data.mkdir(mode=0o755)
        data.chmod(0o755)
        (data / "input_history").write_text("\n# old\n+hello\n")
        (data / "input_history").chmod(0o644)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", UMASK_000, str(data)], capture_output=True,
                          text=True, env=env, cwd=REPO, stdin=subprocess.DEVNULL, timeout=60)
    assert done.returncode == 0, done.stderr
    files, folder = done.stdout.splitlines()
    assert files == str(["history.db 0o600", "history.db-answering 0o600",
                         "history.db-shm 0o600", "history.db-wal 0o600",
                         "input_history 0o600"])
    assert folder == "0o700"
    assert "+a secret line" in (data / "input_history").read_text()


@pytest.mark.parametrize("command", [["ask", "-n", "2", "hi"], ["chat", "-n", "2"],
                                     ["history", "list"]])
def test_a_history_left_readable_by_all_is_made_private(cli, home: Path,
                                                         command: list[str]) -> None:
    """A history.db (and the files beside it) that became 0666 is 0600 again once chatcli
    opens it, to write or only to read (SQLite makes a new -wal or -shm with the
    database's mode)."""
    assert cli(["ask", "-n", "2", "first"]).exit_code == 0
    data = db_path(home).parent
    holder = sqlite3.connect(db_path(home))  # another reader keeps the -wal and -shm there
    try:
        holder.execute("SELECT COUNT(*) FROM messages").fetchall()
        names = sorted(p.name for p in data.iterdir())
        assert names == ["history.db", "history.db-answering", "history.db-shm",
                         "history.db-wal"]
        for name in names:
            (data / name).chmod(0o666)
        result = cli(command, input="hello\n")
        assert result.exit_code == 0, result.stderr
        assert {p.name: oct(stat.S_IMODE(p.stat().st_mode)) for p in data.iterdir()} == {
            name: "0o600" for name in names}
    finally:
        holder.close()
