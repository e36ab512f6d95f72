"""The history store (SQLite) and transcripts: exact contents, concurrency, crashes, errors."""

from __future__ import annotations

import json
import os
import shlex
import signal
import sqlite3
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chatcli import store as store_mod
from chatcli import transcript
from chatcli.conversation import Conversation, Message
from chatcli.errors import ChatcliError, UsageError
from chatcli.store import ConversationInfo, ReplyMeta, Store, StoredMessage, StoreError
from chatcli.transcript import TranscriptError
from conftest import time_zone

REPO = Path(__file__).resolve().parents[1]
META = ReplyMeta(
    model="tiny", strategy="sample", params={"temperature": 0.7, "top_k": 40, "stop": ["##"]},
    seed=7, prompt_tokens=12, completion_tokens=5, time_to_first_token_s=0.25,
    tokens_per_second=31.5,
)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The store's clock: 1000.0, 1001.0, ... (the list holds the next value)."""
    now = [1000.0]

    def tick() -> float:
        now[0] += 1.0
        return now[0] - 1.0

    monkeypatch.setattr(store_mod, "_now", tick)
    return now


@pytest.fixture
def utc() -> Iterator[None]:
    with time_zone("UTC"):
        yield


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "data" / "nested" / "history.db"


@pytest.fixture
def store(db: Path) -> Iterator[Store]:
    with Store.open(db) as opened:
        yield opened


def raw(path: Path, sql: str) -> list[tuple[object, ...]]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# -- the file --------------------------------------------------------------------------------
def test_open_creates_the_schema_in_a_private_wal_database(db: Path) -> None:
    with Store.open(db) as s:
        assert mode(db) == 0o600
        assert s._conn.execute("PRAGMA busy_timeout").fetchone() == (10000,)
        assert s._conn.execute("PRAGMA foreign_keys").fetchone() == (1,)
        conv = s.new_conversation("tiny", None)
        s.add_message(conv, Message("user", "hi"))
        wal = db.with_name("history.db-wal")
        assert wal.exists()
        assert mode(wal) == 0o600
    assert raw(db, "PRAGMA journal_mode") == [("wal",)]
    assert raw(db, "PRAGMA user_version") == [(3,)]
    assert [r[1] for r in raw(db, "PRAGMA table_info(conversations)")] == [
        "id", "title", "model", "system", "created", "updated", "leaf_id",
    ]
    assert [r[1] for r in raw(db, "PRAGMA table_info(messages)")] == [
        "id", "conversation_id", "position", "role", "content", "interrupted", "created",
        "model", "strategy", "params", "seed", "prompt_tokens", "completion_tokens",
        "time_to_first_token_s", "tokens_per_second", "pinned", "parent_id",
    ]
    fks = {(fk[2], fk[3], fk[6]) for fk in raw(db, "PRAGMA foreign_key_list(messages)")}
    assert fks == {("conversations", "conversation_id", "CASCADE"),
                   ("messages", "parent_id", "CASCADE")}


def test_an_existing_file_is_made_private_and_reopening_keeps_data(db: Path) -> None:
    db.parent.mkdir(parents=True)
    db.touch()
    db.chmod(0o644)
    with Store.open(db) as s:
        conv = s.new_conversation("tiny", None)
    assert mode(db) == 0o600
    db.chmod(0o644)
    with Store.open(db) as s:
        assert [i.id for i in s.list()] == [conv]
    assert mode(db) == 0o600
    assert raw(db, "PRAGMA user_version") == [(3,)]


def test_default_path_is_in_the_data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHATCLI_HOME", str(tmp_path / "home"))
    with Store.open() as s:
        assert s.path == tmp_path / "home" / "data" / "history.db"
    assert (tmp_path / "home" / "data" / "history.db").is_file()


def test_a_corrupt_database_names_the_file(db: Path) -> None:
    db.parent.mkdir(parents=True)
    db.write_bytes(b"this is not a database\n" * 200)
    with pytest.raises(StoreError) as err:
        Store.open(db)
    q = shlex.quote(str(db))
    assert err.value.message == f"cannot use the history database {db}: file is not a database"
    assert err.value.hint == f"move it aside (mv {q} {q}.bad); chatcli then starts a new history"
    assert err.value.exit_code == 1
    assert isinstance(err.value, ChatcliError)


def test_a_newer_schema_is_refused_untouched(db: Path) -> None:
    with Store.open(db):
        pass
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA user_version = 9")
    conn.close()
    with pytest.raises(StoreError) as err:
        Store.open(db)
    assert err.value.message == (
        f"the history database {db} has schema version 9; this chatcli knows up to 3"
    )
    assert err.value.hint == "upgrade chatcli, or set CHATCLI_HOME to use another history"
    assert raw(db, "PRAGMA user_version") == [(9,)]


# -- contents --------------------------------------------------------------------------------
def test_round_trip_with_metadata(store: Store, clock: list[float]) -> None:
    conv = store.new_conversation("tiny", "Be brief.")  # t=1000
    u1 = store.add_message(conv, Message("user", "What is 2+2?"))  # 1001
    a1 = store.add_message(conv, Message("assistant", "4."), META)  # 1002
    u2 = store.add_message(conv, Message("user", "And 3+3?"))  # 1003
    a2 = store.add_message(conv, Message("assistant", "Six, bec", interrupted=True))  # 1004

    assert store.messages(conv) == [
        StoredMessage(u1, "user", "What is 2+2?", False, 1001.0, None),
        StoredMessage(a1, "assistant", "4.", False, 1002.0, META, parent_id=u1),
        StoredMessage(u2, "user", "And 3+3?", False, 1003.0, None, parent_id=a1),
        StoredMessage(a2, "assistant", "Six, bec", True, 1004.0, None, parent_id=u2),
    ]
    info = ConversationInfo(conv, "What is 2+2?", "tiny", "Be brief.", 1000.0, 1004.0, 4)
    assert store.info(conv) == info
    assert store.list() == [info]
    assert store.latest() == info
    assert store.load(conv) == (
        info,
        Conversation("Be brief.", [
            Message("user", "What is 2+2?"), Message("assistant", "4."),
            Message("user", "And 3+3?"), Message("assistant", "Six, bec", True),
        ]),
        [u1, a1, u2, a2],
    )
    # params are JSON: a tuple comes back as a list
    a3 = store.add_message(conv, Message("assistant", "x"),
                           ReplyMeta("m", "beam", {"stop": ("a", "b")}, None, 1, 2, 0.5, 3.0))
    assert store.messages(conv)[-1].meta == ReplyMeta("m", "beam", {"stop": ["a", "b"]}, None,
                                                       1, 2, 0.5, 3.0)
    assert raw(store.path, f"SELECT position, params FROM messages WHERE id = {a3}") == [
        (4, '{"stop": ["a", "b"]}'),
    ]


def test_title_is_the_first_user_message_shortened(store: Store) -> None:
    conv = store.new_conversation("tiny", None)
    assert store.info(conv).title == ""
    store.add_message(conv, Message("assistant", "Hello, I am a bot."))
    assert store.info(conv).title == ""
    long = "Tell me\n  about   " + "x" * 100
    store.add_message(conv, Message("user", long))
    store.add_message(conv, Message("user", "second question"))
    title = "Tell me about " + "x" * 45 + "…"
    assert len(title) == 60
    assert store.info(conv).title == title
    assert store_mod.make_title("  short\ttitle \n") == "short title"
    assert store_mod.make_title("y" * 60) == "y" * 60
    assert store_mod.make_title("y" * 61) == "y" * 59 + "…"


def test_undo_retry_and_clear(store: Store, clock: list[float]) -> None:
    conv = store.new_conversation("tiny", None)  # 1000
    ids = [
        store.add_message(conv, Message("user", "first")),  # 1001
        store.add_message(conv, Message("assistant", "one")),
        store.add_message(conv, Message("user", "second")),
        store.add_message(conv, Message("assistant", "two")),  # 1004
    ]
    store.delete_messages([ids[3]])  # /retry: 1005
    _, conv_now, left = store.load(conv)
    assert conv_now.turns == [Message("user", "first"), Message("assistant", "one"),
                              Message("user", "second")]
    assert left == ids[:3]
    assert store.info(conv).updated == 1005.0
    again = store.add_message(conv, Message("assistant", "deux"))
    assert raw(store.path, f"SELECT position FROM messages WHERE id = {again}") == [(3,)]

    store.delete_messages([ids[2]])  # undo the last exchange: what is below goes too
    assert [m.content for m in store.messages(conv)] == ["first", "one"]
    assert store.info(conv).messages == 2
    store.delete_messages([ids[0]])  # the first message: the title follows
    assert store.info(conv).title == ""
    assert store.messages(conv) == []
    store.delete_messages([])
    store.delete_messages([999])

    store.clear_messages(conv)
    info = store.info(conv)
    assert (info.title, info.messages, info.model) == ("", 0, "tiny")
    assert store.messages(conv) == []
    new = store.add_message(conv, Message("user", "fresh start"))
    assert store.load(conv)[2] == [new]
    assert store.info(conv).title == "fresh start"


def test_set_system_and_empty_system(store: Store) -> None:
    conv = store.new_conversation("tiny", "")
    assert store.info(conv).system is None
    store.set_system(conv, "Answer in French.")
    assert store.load(conv)[1].system == "Answer in French."
    store.set_system(conv, None)
    assert store.info(conv).system is None


def test_latest_list_order_and_limit(store: Store, clock: list[float]) -> None:
    assert store.latest() is None
    assert store.list() == []
    one = store.new_conversation("a", None)  # 1000
    two = store.new_conversation("b", None)  # 1001
    assert [i.id for i in store.list()] == [two, one]
    assert store.latest() is not None and store.latest().id == two  # type: ignore[union-attr]
    store.add_message(one, Message("user", "bump"))  # 1002
    assert [i.id for i in store.list()] == [one, two]
    assert [i.id for i in store.list(limit=1)] == [one]
    assert [(i.id, i.messages) for i in store.list()] == [(one, 1), (two, 0)]


def test_delete_cascades_to_messages(store: Store) -> None:
    keep = store.new_conversation("tiny", None)
    gone = store.new_conversation("tiny", None)
    store.add_message(keep, Message("user", "keep me"))
    store.add_message(gone, Message("user", "drop me"))
    store.delete(gone)
    assert [i.id for i in store.list()] == [keep]
    assert raw(store.path, "SELECT content FROM messages") == [("keep me",)]


@pytest.mark.parametrize(
    "call",
    [
        lambda s: s.info(42),
        lambda s: s.messages(42),
        lambda s: s.load(42),
        lambda s: s.delete(42),
        lambda s: s.set_system(42, "x"),
        lambda s: s.clear_messages(42),
        lambda s: s.add_message(42, Message("user", "x")),
    ],
    ids=["info", "messages", "load", "delete", "set_system", "clear", "add_message"],
)
def test_unknown_conversation(store: Store, call) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(StoreError) as err:
        call(store)
    assert str(err.value) == "no conversation 42"
    assert err.value.hint == "run 'chatcli history list'"
    assert err.value.exit_code == 1
    assert raw(store.path, "SELECT COUNT(*) FROM messages") == [(0,)]


def test_system_messages_are_not_stored_as_turns(store: Store) -> None:
    conv = store.new_conversation("tiny", None)
    with pytest.raises(ValueError, match="only user and assistant"):
        store.add_message(conv, Message("system", "x"))


# -- several processes -------------------------------------------------------------------------
WRITER = """
import sys, time
from pathlib import Path
from chatcli.store import Store
from chatcli.conversation import Message
path, conv, tag, count, go = sys.argv[1:]
with Store.open(Path(path)) as s:
    conv = int(conv) if conv != "new" else s.new_conversation(tag, None)
    print("ready", flush=True)
    while not Path(go).exists():
        time.sleep(0.001)
    for i in range(int(count)):
        s.add_message(conv, Message("user", f"{tag} {i}"))
print("done", flush=True)
"""


def _spawn(*args: object) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, "-c", WRITER, *map(str, args)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO,
    )


def _race(procs: list[subprocess.Popen[str]], go: Path) -> None:
    for p in procs:
        assert p.stdout is not None
        assert p.stdout.readline() == "ready\n", p.stderr.read() if p.stderr else ""
    go.touch()
    for p in procs:
        out, err = p.communicate(timeout=60)
        assert (p.returncode, out, err) == (0, "done\n", "")


def test_two_processes_writing_at_once_lose_nothing(db: Path, tmp_path: Path) -> None:
    with Store.open(db) as s:
        conv = s.new_conversation("tiny", None)
    go = tmp_path / "go"
    _race([_spawn(db, conv, tag, 200, go) for tag in ("A", "B")], go)

    assert raw(db, "PRAGMA integrity_check") == [("ok",)]
    rows = raw(db, f"SELECT position, content FROM messages WHERE conversation_id = {conv} "
                   "ORDER BY position")
    assert len(rows) == 400
    assert [r[0] for r in rows] == list(range(400))  # unique, no gaps
    for tag in ("A", "B"):
        assert [r[1] for r in rows if str(r[1]).startswith(tag)] == [
            f"{tag} {i}" for i in range(200)
        ]
    with Store.open(db) as s:
        assert s.info(conv).messages == 400


def test_processes_creating_a_fresh_database_at_once(db: Path, tmp_path: Path) -> None:
    go = tmp_path / "go"
    _race([_spawn(db, "new", f"P{n}", 20, go) for n in range(4)], go)
    assert raw(db, "PRAGMA integrity_check") == [("ok",)]
    assert raw(db, "PRAGMA journal_mode") == [("wal",)]
    with Store.open(db) as s:
        infos = s.list()
        assert sorted(i.model for i in infos) == ["P0", "P1", "P2", "P3"]
        for info in infos:
            assert [m.content for m in s.messages(info.id)] == [
                f"{info.model} {i}" for i in range(20)
            ]


KILLED = """
import sys, time
from pathlib import Path
from chatcli.store import Store
from chatcli.conversation import Message
s = Store.open(Path(sys.argv[1]))
conv = s.new_conversation("tiny", None)
s.add_message(conv, Message("user", "please remember this"))
print(conv, flush=True)
time.sleep(60)  # "generating the answer" when the process is killed
"""


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_a_killed_process_keeps_the_user_message(db: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", KILLED, str(db)], stdout=subprocess.PIPE,
                            text=True, env=env, cwd=REPO)
    assert proc.stdout is not None
    conv = int(proc.stdout.readline())
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    assert proc.returncode == -signal.SIGKILL
    with Store.open(db) as s:
        assert [(m.role, m.content) for m in s.messages(conv)] == [
            ("user", "please remember this"),
        ]
        assert s.latest() is not None and s.latest().title == "please remember this"  # type: ignore[union-attr]


# -- transcripts -------------------------------------------------------------------------------
CONV = Conversation("Be brief.", [
    Message("user", "What is 2+2?"),
    Message("assistant", "4."),
    Message("user", "And 3+3?"),
    Message("assistant", "Six, bec", interrupted=True),
])
METAS = [None, META, None, None]
INFO = ConversationInfo(3, "What is 2+2?", "tiny", "Be brief.", 1_700_000_000.0,
                        1_700_000_090.0, 4)
MARKDOWN = """\
# What is 2+2?

- conversation: 3
- model: tiny
- started: 2023-11-14 22:13
- updated: 2023-11-14 22:14

## System

Be brief.

## User

What is 2+2?

## Assistant

4.

*tiny · sample (stop=['##'], temperature=0.7, top_k=40) · seed 7 · 12 prompt + 5 completion \
tokens · first token 0.25 s · 31.5 tokens/s*

## User

And 3+3?

## Assistant

Six, bec

*(interrupted)*
"""


def test_markdown_exact(utc: None) -> None:
    assert transcript.to_markdown(INFO, CONV, METAS) == MARKDOWN


def test_markdown_without_info_or_messages() -> None:
    conv = Conversation(None, [Message("user", "hi\n"), Message("assistant", "")])
    assert transcript.to_markdown(None, conv) == (
        "# hi\n\n## User\n\nhi\n\n## Assistant\n\n*(empty)*\n"
    )
    assert transcript.to_markdown(None, Conversation()) == (
        "# Conversation\n\n*(no messages)*\n"
    )


def test_json_format_and_round_trip() -> None:
    text = transcript.to_json(INFO, CONV, METAS)
    assert text.endswith("}\n")
    assert json.loads(text) == {
        "chatcli": 1,
        "model": "tiny",
        "system": "Be brief.",
        "messages": [
            {"role": "user", "content": "What is 2+2?", "interrupted": False},
            {"role": "assistant", "content": "4.", "interrupted": False, "meta": {
                "model": "tiny", "strategy": "sample",
                "params": {"temperature": 0.7, "top_k": 40, "stop": ["##"]}, "seed": 7,
                "prompt_tokens": 12, "completion_tokens": 5, "time_to_first_token_s": 0.25,
                "tokens_per_second": 31.5,
            }},
            {"role": "user", "content": "And 3+3?", "interrupted": False},
            {"role": "assistant", "content": "Six, bec", "interrupted": True},
        ],
    }
    assert transcript.from_json(text) == CONV
    assert json.loads(transcript.to_json(None, Conversation())) == {
        "chatcli": 1, "model": None, "system": None, "messages": [],
    }
    # "interrupted" may be left out; unknown keys are ignored
    assert transcript.from_json(
        '{"chatcli": 1, "extra": 1, "messages": [{"role": "user", "content": "hi", "x": 2}]}'
    ) == Conversation(None, [Message("user", "hi")])


_text = st.text(st.characters(codec="utf-8"), max_size=40)


@settings(max_examples=60, deadline=None)
@given(
    system=st.none() | _text.filter(bool),
    turns=st.lists(st.builds(Message, st.sampled_from(["user", "assistant"]), _text,
                             st.booleans()), max_size=6),
)
def test_json_round_trip_any_conversation(system: str | None, turns: list[Message]) -> None:
    conv = Conversation(system, turns)
    assert transcript.from_json(transcript.to_json(None, conv)) == conv


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{oops", "x.json is not valid JSON: Expecting property name enclosed in double quotes "
                  "(line 1, column 2)"),
        ("[1, 2]", 'x.json is not a chatcli transcript (no "chatcli" key)'),
        ('{"messages": []}', 'x.json is not a chatcli transcript (no "chatcli" key)'),
        ('{"chatcli": "1", "messages": []}', 'x.json: "chatcli" must be 1'),
        ('{"chatcli": true, "messages": []}', 'x.json: "chatcli" must be 1'),
        ('{"chatcli": 1}', 'x.json: "messages" must be a list'),
        ('{"chatcli": 1, "system": 5, "messages": []}', 'x.json: "system" must be text or null'),
        ('{"chatcli": 1, "messages": ["hi"]}', "x.json: message 1 is not an object"),
        ('{"chatcli": 1, "messages": [{"role": "user", "content": "a"}, '
         '{"role": "system", "content": "b"}]}',
         'x.json: message 2 has role "system"; expected "user" or "assistant"'),
        ('{"chatcli": 1, "messages": [{"role": "user"}]}',
         'x.json: message 1 has no text "content"'),
        ('{"chatcli": 1, "messages": [{"role": "user", "content": "a", "interrupted": 1}]}',
         'x.json: message 1: "interrupted" must be true or false'),
    ],
)
def test_from_json_errors(text: str, message: str) -> None:
    with pytest.raises(TranscriptError) as err:
        transcript.from_json(text, source="x.json")
    assert err.value.message == message
    assert err.value.hint == (
        "expected a JSON object like 'chatcli history export ID --format json' writes"
    )
    assert err.value.exit_code == 1


def test_from_json_newer_version() -> None:
    with pytest.raises(TranscriptError) as err:
        transcript.from_json('{"chatcli": 2, "messages": []}')
    assert err.value.message == (
        "the transcript is a version 2 transcript; this chatcli reads version 1"
    )
    assert err.value.hint == "upgrade chatcli"


def test_save_and_load_files(tmp_path: Path, utc: None) -> None:
    transcript.save(tmp_path / "chat.json", INFO, CONV, METAS)
    transcript.save(tmp_path / "chat.MD", INFO, CONV, METAS)
    transcript.save(tmp_path / "chat.markdown", None, CONV)
    assert (tmp_path / "chat.json").read_text() == transcript.to_json(INFO, CONV, METAS)
    assert (tmp_path / "chat.MD").read_text() == MARKDOWN
    assert (tmp_path / "chat.markdown").read_text() == transcript.to_markdown(None, CONV)
    assert transcript.load(tmp_path / "chat.json") == CONV


def test_save_and_load_errors(tmp_path: Path) -> None:
    with pytest.raises(UsageError) as err:
        transcript.save(tmp_path / "chat.txt", None, CONV)
    assert (err.value.message, err.value.hint, err.value.exit_code) == (
        f"cannot tell the transcript format of {tmp_path / 'chat.txt'}",
        "name the file .md, .markdown or .json", 2,
    )
    assert not (tmp_path / "chat.txt").exists()

    for name in ("chat.md", "chat.txt"):
        with pytest.raises(UsageError) as err:
            transcript.load(tmp_path / name)
        assert (err.value.message, err.value.hint) == (
            f"cannot load {tmp_path / name}: only JSON transcripts (.json) can be loaded",
            "export the conversation with '--format json' and load that file",
        )

    with pytest.raises(TranscriptError) as terr:
        transcript.load(tmp_path / "missing.json")
    assert (terr.value.message, terr.value.hint) == (
        f"cannot read {tmp_path / 'missing.json'}: No such file or directory",
        "check the file's name and permissions",
    )

    with pytest.raises(TranscriptError) as terr:
        transcript.save(tmp_path / "no" / "such" / "dir.json", None, CONV)
    assert terr.value.message == (
        f"cannot write {tmp_path / 'no' / 'such' / 'dir.json'}: No such file or directory"
    )

    bad = tmp_path / "bad.json"
    bad.write_text('{"chatcli": 1, "messages": 3}')
    with pytest.raises(TranscriptError) as terr:
        transcript.load(bad)
    assert terr.value.message == f'{bad}: "messages" must be a list'


V1_SCHEMA = [  # what chatcli wrote before pins (schema version 1), verbatim
    """CREATE TABLE conversations (
        id INTEGER PRIMARY KEY, title TEXT NOT NULL DEFAULT '', model TEXT NOT NULL,
        system TEXT, created REAL NOT NULL, updated REAL NOT NULL)""",
    """CREATE TABLE messages (
        id INTEGER PRIMARY KEY,
        conversation_id INTEGER NOT NULL REFERENCES conversations ON DELETE CASCADE,
        position INTEGER NOT NULL, role TEXT NOT NULL, content TEXT NOT NULL,
        interrupted INTEGER NOT NULL DEFAULT 0, created REAL NOT NULL, model TEXT,
        strategy TEXT, params TEXT, seed INTEGER, prompt_tokens INTEGER,
        completion_tokens INTEGER, time_to_first_token_s REAL, tokens_per_second REAL)""",
    "CREATE UNIQUE INDEX messages_order ON messages (conversation_id, position)",
    "CREATE INDEX conversations_updated ON conversations (updated)",
    "PRAGMA user_version = 1",
]


def _v1_database(db: Path) -> None:
    conn = sqlite3.connect(db)
    for statement in V1_SCHEMA:
        conn.execute(statement)
    conn.execute("INSERT INTO conversations VALUES (1, 'Hi', 'm', 'Be brief.', 1.0, 2.0)")
    conn.execute("INSERT INTO messages (conversation_id, position, role, content, created) "
                 "VALUES (1, 0, 'user', 'Hi', 1.0)")
    conn.execute("INSERT INTO messages (conversation_id, position, role, content, created, "
                 "model, strategy, params, seed, prompt_tokens, completion_tokens, "
                 "time_to_first_token_s, tokens_per_second) VALUES (1, 1, 'assistant', "
                 "'Hello', 2.0, 'm', 'greedy', '{}', 7, 5, 1, 0.1, 10.0)")
    conn.commit()
    conn.close()


def test_a_version_1_history_is_read_as_it_is_and_migrated_on_write(tmp_path: Path) -> None:
    db = tmp_path / "history.db"
    _v1_database(db)
    with Store.open(db, readonly=True) as s:  # read only: no migration, every message
        _, conv, ids = s.load(1)
        assert [(m.role, m.content, m.pinned) for m in conv.turns] == [
            ("user", "Hi", False), ("assistant", "Hello", False)]
        assert conv.system == "Be brief." and ids == [1, 2]
    assert raw(db, "PRAGMA user_version") == [(1,)]
    with Store.open(db) as s:  # opened to write: migrated, nothing lost
        _, conv, ids = s.load(1)
        assert [m.content for m in conv.turns] == ["Hi", "Hello"]
        s.set_pinned(ids[0], True)
        _, conv, _ = s.load(1)
        assert [m.pinned for m in conv.turns] == [True, False]
        assert s.messages(1)[1].meta.seed == 7  # type: ignore[union-attr]
    assert raw(db, "PRAGMA user_version") == [(3,)]
