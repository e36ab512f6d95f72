"""Conversations as trees: `chatcli.branches.Tree`, the history's schema 3, its migration."""

from __future__ import annotations

import shutil
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from chatcli.branches import Tree, where_it_parts
from chatcli.chat.recorder import Recorder
from chatcli.conversation import Conversation, Message
from chatcli.errors import UsageError
from chatcli.store import ConversationChanged, ReplyMeta, Store, StoreError

DATA = Path(__file__).parent / "data"
META = ReplyMeta("m", "greedy", {}, None, 3, 2, 0.1, 9.0)


def texts(tree: Tree) -> list[str]:
    return [m.content for m in tree.messages()]


def U(text: str) -> Message:
    return Message("user", text)


def A(text: str) -> Message:
    return Message("assistant", text)


# -- the tree, in memory ------------------------------------------------------------------
def test_cut_then_add_makes_a_version_and_switch_follows_the_newest_leaf() -> None:
    tree = Tree()
    for m in (U("q1"), A("a1"), U("q2"), A("a2")):
        tree.add(m)
    assert tree.branch_points() == []
    assert tree.cut(3) == [tree.versions(2)[0].children[0]]  # /retry: the answer leaves
    tree.add(A("a2 again"))
    assert texts(tree) == ["q1", "a1", "q2", "a2 again"]
    assert tree.version(3) == (2, 2) and tree.branch_points() == [3]
    assert [n.message.content for n in tree.versions(3)] == ["a2", "a2 again"]

    tree.cut(2)  # /edit 3: a second version of the question, then its answer and more
    tree.add(U("q2 edited"))
    tree.add(A("a2 edited"))
    tree.add(U("q3"))
    assert tree.branch_points() == [2]
    assert tree.version(2) == (2, 2)

    last = tree.switch(2, 1)  # back to the first question: its newest leaf is "a2 again"
    assert last.message.content == "a2 again"
    assert texts(tree) == ["q1", "a1", "q2", "a2 again"]
    assert tree.branch_points() == [2, 3]
    tree.switch(3, 1)
    assert texts(tree) == ["q1", "a1", "q2", "a2"]
    tree.switch(2, 2)
    assert texts(tree) == ["q1", "a1", "q2 edited", "a2 edited", "q3"]
    with pytest.raises(UsageError) as err:
        tree.switch(2, 3)
    assert (err.value.message, err.value.hint) == (
        "there is no version 3 of message 3: it has 2", "/branches lists them")
    assert [n.message.content for n in tree.nodes()] == [
        "q1", "a1", "q2", "a2", "a2 again", "q2 edited", "a2 edited", "q3"]


def test_remove_forgets_a_subtree_and_keeps_the_other_versions() -> None:
    tree = Tree()
    for m in (U("q1"), A("a1")):
        tree.add(m)
    tree.cut(0)
    tree.add(U("q1 edited"))
    tree.add(A("a1 edited"))
    gone = tree.remove(0)  # /undo of the first exchange on this branch
    assert [n.message.content for n in gone] == ["q1 edited", "a1 edited"]
    assert tree.path == [] and [n.message.content for n in tree.nodes()] == ["q1", "a1"]
    assert tree.remove(5) == []


def test_a_deep_tree_is_walked_without_recursion() -> None:
    tree = Tree()
    for n in range(5000):
        tree.add(U(f"q{n}") if n % 2 == 0 else A(f"a{n}"))
    assert len(tree.nodes()) == 5000 and tree.roots[0].newest_leaf() is tree.path[-1]
    assert len(tree.remove(0)) == 5000 and tree.nodes() == []


def test_a_tree_from_the_history_rows(tmp_path: Path) -> None:
    with Store.open(tmp_path / "h.db") as s:
        conv = s.new_conversation("m", None)
        q = s.add_message(conv, U("q"))
        a1 = s.add_message(conv, A("a1"), META)
        a2 = s.add_message(conv, A("a2"), META, parent=q)
        rows, leaf = s.tree(conv)
    assert [(r.id, r.parent_id) for r in rows] == [(q, None), (a1, q), (a2, q)] and leaf == a2
    tree = Tree.from_stored(rows, leaf)
    assert texts(tree) == ["q", "a2"] and [n.id for n in tree.path] == [q, a2]
    assert tree.path[1].meta == META and tree.version(1) == (2, 2)
    tree.add(U("next"))
    assert tree.path[-1].seq > a2  # newer than every stored row
    assert texts(Tree.from_stored(rows, a1)) == ["q", "a1"]
    assert Tree.from_stored(rows, None).path == []


def test_where_it_parts_skips_what_versions_share() -> None:
    a = "The --shout flag should change the output of greet() to print in capitals."
    b = "The --shout flag should change the output of greet() to capitalize each word."
    assert where_it_parts(a, [b]) == "… of greet() to print in capitals."
    assert where_it_parts(b, [a, "Something else"]) == "… of greet() to capitalize each word."
    assert where_it_parts("Short and alike", ["Short and different"]) == "Short and alike"
    assert where_it_parts(a, []) == a
    assert where_it_parts(a, [a]) == "… in capitals."  # the same text: its end


# -- the history keeps the tree --------------------------------------------------------------
@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store.open(tmp_path / "history.db") as opened:
        yield opened


def test_versions_are_siblings_and_the_leaf_is_the_path(store: Store) -> None:
    conv = store.new_conversation("m", None)
    q1 = store.add_message(conv, U("q1"))
    a1 = store.add_message(conv, A("a1"), META)
    a1b = store.add_message(conv, A("a1b"), META, parent=q1)  # /retry
    assert [m.content for m in store.messages(conv)] == ["q1", "a1b"]
    assert store.load(conv)[2] == [q1, a1b]
    q2 = store.add_message(conv, U("q2"))  # after the leaf
    assert [(m.content, m.parent_id) for m in store.messages(conv)] == [
        ("q1", None), ("a1b", q1), ("q2", a1b)]
    store.set_leaf(conv, a1)  # /switch
    assert [m.content for m in store.messages(conv)] == ["q1", "a1"]
    assert store.info(conv).messages == 4  # every version counts
    rows, leaf = store.tree(conv)
    assert [r.content for r in rows] == ["q1", "a1", "a1b", "q2"] and leaf == a1
    assert (rows[3].parent_id, raw_position(store, q2)) == (a1b, 2)
    store.set_leaf(conv, None)
    assert store.messages(conv) == []
    with pytest.raises(StoreError) as err:
        store.set_leaf(conv, 999)
    assert (err.value.kind, err.value.message) == ("missing", f"conversation {conv} has no "
                                                   "message 999")
    with pytest.raises(StoreError) as err:
        store.add_message(conv, U("x"), parent=999)
    assert err.value.kind == "missing"


def raw_position(store: Store, message_id: int) -> int:
    return int(store._conn.execute("SELECT position FROM messages WHERE id = ?",
                                   (message_id,)).fetchone()[0])


def test_deleting_a_message_takes_its_subtree_and_the_leaf_moves_up(store: Store) -> None:
    conv = store.new_conversation("m", None)
    q1 = store.add_message(conv, U("q1"))
    a1 = store.add_message(conv, A("a1"))
    q2 = store.add_message(conv, U("q2"))
    store.add_message(conv, A("a2"))
    q2b = store.add_message(conv, U("q2b"), parent=a1)  # /edit 3
    a2b = store.add_message(conv, A("a2b"))
    store.delete_messages([q2])  # an off-path version: the path stays
    assert [m.id for m in store.messages(conv)] == [q1, a1, q2b, a2b]
    assert [r.content for r in store.tree(conv)[0]] == ["q1", "a1", "q2b", "a2b"]
    store.delete_messages([q2b])  # /undo: the leaf moves up to a1
    assert [m.id for m in store.messages(conv)] == [q1, a1]
    assert store.tree(conv)[1] == a1
    store.delete_messages([q1])
    assert store.tree(conv) == ([], None)


def test_expect_leaf_refuses_when_another_process_wrote(store: Store) -> None:
    conv = store.new_conversation("m", None)
    q1 = store.add_message(conv, U("q1"), expect_leaf=None)
    a1 = store.add_message(conv, A("a1"), expect_leaf=q1)
    with pytest.raises(ConversationChanged):
        store.add_message(conv, U("late"), expect_leaf=q1)
    assert store.tree(conv)[1] == a1 and store.info(conv).messages == 2
    # the writer then branches from its own parent
    late = store.add_message(conv, U("late"), parent=q1)
    assert [m.id for m in store.messages(conv)][-1] == late


def test_fork_copies_the_path_as_a_chain(store: Store) -> None:
    conv = store.new_conversation("m", None)
    q1 = store.add_message(conv, U("q1"))
    a1 = store.add_message(conv, A("a1"), META)
    new, ids = store.fork(conv, "m", None, [(q1, U("q1")), (a1, A("a1")), (None, U("q2"))])
    rows, leaf = store.tree(new)
    assert [(r.content, r.parent_id) for r in rows] == [
        ("q1", None), ("a1", ids[0]), ("q2", ids[1])]
    assert leaf == ids[2] and rows[1].meta == META


# -- migration from the current release's history -------------------------------------------
def snapshot(db: Path) -> dict[int, list[tuple[object, ...]]]:
    conn = sqlite3.connect(db)
    try:
        found: dict[int, list[tuple[object, ...]]] = {}
        for row in conn.execute(
            "SELECT conversation_id, id, role, content, interrupted, created, model, strategy, "
            "params, seed, prompt_tokens, completion_tokens, time_to_first_token_s, "
            "tokens_per_second, pinned FROM messages ORDER BY conversation_id, position, id"
        ):
            found.setdefault(int(row[0]), []).append(row[1:])
        return found
    finally:
        conn.close()


def version(db: Path) -> int:
    conn = sqlite3.connect(db)
    try:
        return int(conn.execute("PRAGMA user_version").fetchone()[0])
    finally:
        conn.close()


def test_a_version_2_history_is_read_as_it_is_and_migrated_on_write(tmp_path: Path) -> None:
    # tests/data/history-v2.db was written by chatcli's store at schema version 2 (pins,
    # attachments, an interrupted reply, an undone exchange, an empty conversation)
    db = tmp_path / "history.db"
    shutil.copy(DATA / "history-v2.db", db)
    before = snapshot(db)
    assert version(db) == 2 and sorted(before) == [1, 2]
    with Store.open(db, readonly=True) as s:  # read only: no migration
        for conv_id, rows in before.items():
            stored = s.messages(conv_id)
            assert [m.id for m in stored] == [r[0] for r in rows]
            assert [m.parent_id for m in stored] == [None, *[r[0] for r in rows[:-1]]]
        _, leaf = s.tree(1)
        assert leaf == before[1][-1][0]
        assert [c.id for c in s.list()] == [3, 2, 1]
    assert version(db) == 2

    with Store.open(db) as s:
        assert version(db) == 3
        for conv_id, rows in before.items():
            stored, leaf = s.tree(conv_id)
            assert [m.id for m in stored] == [r[0] for r in rows]
            assert [m.parent_id for m in stored] == [None, *[r[0] for r in rows[:-1]]]
            assert leaf == rows[-1][0]
            assert [m.id for m in s.messages(conv_id)] == [r[0] for r in rows]
        path = s.messages(1)
        assert [(m.role, m.content, m.pinned, m.interrupted) for m in path] == [
            ("user", "What is the capital of France?", False, False),
            ("assistant", "Paris.", False, False),
            ("user", "And of Spain?", True, False),
            ("assistant", "Madr", False, True),
        ]
        assert path[1].meta is not None and path[1].meta.params["stop"] == ["\n\n"]
        assert s.messages(2)[0].attachments[0]["path"] == "a.txt"
        assert s.tree(3) == ([], None)
        s.delete_messages([s.messages(2)[2].id])  # undo: the title is the words, not the file
        assert s.info(2).title == "Summarize a.txt"
        # the migrated history branches like a new one
        again = s.add_message(1, A("Madrid."), META, parent=path[2].id)
        assert [m.id for m in s.messages(1)] == [*[m.id for m in path[:3]], again]
        assert len(s.tree(1)[0]) == 5
    assert snapshot(db)[1][:4] == before[1] and snapshot(db)[2] == before[2][:2]


def test_migration_follows_positions_with_gaps(tmp_path: Path) -> None:
    db = tmp_path / "history.db"
    shutil.copy(DATA / "history-v2.db", db)
    conn = sqlite3.connect(db)
    conn.execute("UPDATE messages SET position = position * 10 WHERE conversation_id = 2")
    conn.commit()
    conn.close()
    with Store.open(db) as s:
        rows, leaf = s.tree(2)
        assert [m.parent_id for m in rows] == [None, *[m.id for m in rows[:-1]]]
        assert [m.id for m in s.messages(2)] == [m.id for m in rows] and leaf == rows[-1].id


# -- the recorder: another process changed or removed what this chat follows ---------------
def recorder_on(path: Path) -> tuple[Recorder, Conversation, list[str]]:
    conv = Conversation()
    warnings: list[str] = []
    return Recorder(Store.open(path), conv, alias=lambda: "m", warn=warnings.append), conv, \
        warnings


def say(rec: Recorder, conv: Conversation, message: Message) -> None:
    conv.turns.append(message)
    rec.added(META if message.role == "assistant" else None)


def test_a_write_after_another_process_wrote_is_a_branch(tmp_path: Path) -> None:
    rec, conv, warnings = recorder_on(tmp_path / "h.db")
    say(rec, conv, U("q1"))
    say(rec, conv, A("a1"))
    with Store.open(tmp_path / "h.db") as other:  # another chatcli adds an exchange
        other.add_message(1, U("theirs"))
        other.add_message(1, A("their answer"))
    say(rec, conv, U("mine"))
    say(rec, conv, A("my answer"))
    assert warnings == [
        "conversation 1 was changed by another chatcli process since this one read it; this "
        "exchange is saved as a new branch of it ('chatcli history show --tree 1' shows them "
        "all)"]
    rows, leaf = rec.store.tree(1)  # type: ignore[union-attr]
    assert [(r.content, r.parent_id) for r in rows] == [
        ("q1", None), ("a1", 1), ("theirs", 2), ("their answer", 3), ("mine", 2),
        ("my answer", 5)]
    assert leaf == 6 and rec.ids == [1, 2, 5, 6]
    rec.close()


def test_a_removed_conversation_or_parent_moves_the_chat_to_a_copy(tmp_path: Path) -> None:
    rec, conv, warnings = recorder_on(tmp_path / "h.db")
    say(rec, conv, U("q1"))
    say(rec, conv, A("a1"))
    with Store.open(tmp_path / "h.db") as other:  # another chatcli's /undo removes a1's turn
        other.delete_messages([1])
    say(rec, conv, U("q2"))
    assert warnings[-1] == (
        "conversation 1 was changed by another chatcli process since this one read it; this "
        "exchange is saved as a new conversation 2, a copy of its first 2 message(s)")
    assert rec.conversation_id == 2
    copy = rec.store.messages(2)  # type: ignore[union-attr]
    assert [(m.content, m.parent_id) for m in copy] == [
        ("q1", None), ("a1", copy[0].id), ("q2", copy[1].id)]
    with Store.open(tmp_path / "h.db") as other:  # `history rm 2`
        other.delete(2)
    say(rec, conv, A("a2"))
    assert len(warnings) == 2 and warnings[-1].endswith("a copy of its first 3 message(s)")
    assert [m.content for m in rec.store.messages(rec.conversation_id)] == [  # type: ignore
        "q1", "a1", "q2", "a2"]
    rec.close()


def test_an_unsaved_version_whose_message_was_removed_is_dropped_with_a_warning(
        tmp_path: Path) -> None:
    rec, conv, warnings = recorder_on(tmp_path / "h.db")
    say(rec, conv, U("q1"))
    say(rec, conv, A("a1"))
    say(rec, conv, U("q2"))
    say(rec, conv, A("a2"))
    store = rec.store
    rec.store, rec.path = None, None  # the history off for a while: versions wait in memory
    rec.cut(1)  # /retry
    say(rec, conv, A("a2 again"))
    rec.cut(2)  # /edit 3
    say(rec, conv, U("q2 edited"))
    rec.store, rec.path = store, tmp_path / "h.db"
    with Store.open(tmp_path / "h.db") as other:
        other.delete_messages([3])  # q2 goes, and with it the place "a2 again" hangs from
    assert rec.flush()
    assert warnings == [
        "conversation 1 was changed by another chatcli process: a version of one of its "
        "messages could not be saved, the message it follows is gone"]
    rows, leaf = store.tree(1)  # type: ignore[union-attr]
    assert [(r.content, r.parent_id) for r in rows] == [
        ("q1", None), ("a1", 1), ("q2 edited", 2)]
    assert leaf == rows[-1].id and [n.message.content for n in rec.tree.nodes()] == [
        "q1", "a1", "q2", "a2", "q2 edited"]  # what the other process removed, it keeps
    rec.close()
