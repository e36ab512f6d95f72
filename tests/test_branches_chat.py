"""Branches in chat (issue 15): /edit, /retry, /branches, /switch on the tiny model; the
prompt cache across a switch; what the history keeps; `chat -c` back on the same path."""

from __future__ import annotations

import json
from pathlib import Path

from test_cache_reuse import _loaded, _session

from chatcli.attachments import Attachment, describe, render
from chatcli.chat.commands import _one_line
from chatcli.chat.session import ChatSession, DecodingRequest
from chatcli.conversation import Conversation, Message
from chatcli.decoding.registry import strategy_registry
from chatcli.errors import UsageError
from chatcli.store import Store
from chatcli.ui.answer import printable
from conftest import answer_ids, run_cli


def shared_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def test_a_switch_reuses_the_shared_prefix_and_answers_exactly(home: Path) -> None:
    loaded = _loaded(home, "float32")
    session, spy = _session(loaded)
    session.add_user("Hello there")
    answer_ids(session)
    session.add_user("What now?")
    answer_ids(session)
    assert session.editable(3) == (2, "What now?")
    session.edit(2, "Something else entirely")
    answer_ids(session)
    cached = list(session.last_packed.ids)  # type: ignore[union-attr]
    assert session.tree.branch_points() == [2]

    session.switch(2, 1)
    assert session.conversation.turns[2].content == "What now?"
    assert session.last_generation is None  # /alt has no last answer to explore now
    spy.fed = []
    session.add_user("More")
    ids = answer_ids(session)
    prompt = list(session.last_packed.ids)  # type: ignore[union-attr]
    shared = shared_prefix(cached, prompt)
    assert 0 < shared < len(prompt)
    assert session.cache.reused == shared and spy.fed == [len(prompt) - shared]

    # the same conversation answered from a cold cache: the same tokens, unless the
    # suffix prefill's last-bit rounding (README: about 3e-5 in float32, any CPU) met a
    # near-tie of the cold run's top two logits
    fresh, cold_spy = _session(loaded)
    fresh.conversation = Conversation(None, list(session.conversation.turns[:-1]))
    fresh.recorder.conversation = fresh.conversation
    for message in session.conversation.turns[:-1]:
        fresh.recorder.tree.add(message)
    cold = answer_ids(fresh)
    if cold != ids:
        step = shared_prefix(cold, ids)
        top = cold_spy.logits[step].float().flatten().topk(2).values
        assert float(top[0] - top[1]) < 1e-3, (step, cold, ids)


def test_retry_edit_and_switch_keep_every_version(home: Path) -> None:
    session = ChatSession(_loaded(home, "float32"), strategy_registry(),
                          DecodingRequest("greedy", {"max_new_tokens": 4}))
    with_file = Attachment("notes.txt", "a note\n", 7, "0" * 64)
    session.add_user(render([with_file], "Summarize"), describe([with_file]), pinned=True)
    answer_ids(session)
    first = session.conversation.turns[1]
    assert session.retry() is not None
    answer_ids(session)
    tree = session.tree
    assert [n.message for n in tree.versions(1)] == [first, session.conversation.turns[1]]
    assert tree.version(1) == (2, 2) and session.branch_point() == 1

    # /edit keeps the attached file and the pin; only the words change
    assert session.editable(None) == (0, "Summarize")
    session.edit(0, "Shorten it")
    edited = session.conversation.turns[0]
    assert edited.content == render([with_file], "Shorten it") and edited.pinned
    assert session.tree.path[0].attachments == tuple(describe([with_file]))
    answer_ids(session)
    edited_answer = session.conversation.turns[1]
    assert session.branch_point() == 0 and len(session.tree.nodes()) == 5
    session.switch(0, 1)  # back to the first question, on to its newest answer
    assert [m.content for m in session.conversation.turns] == [
        render([with_file], "Summarize"), tree.versions(1)[1].message.content]

    for call, message, hint in [
        (lambda: session.editable(2), "message 2 is the model's answer; /edit changes your "
         "messages", "/retry answers again, /alt changes a token"),
        (lambda: session.editable(7), "there is no message 7: the conversation has 2 "
         "messages", "/context lists the messages with their numbers"),
        (lambda: session.branch_point(3), "there is no message 3: the conversation has 2 "
         "messages", "/context lists the messages with their numbers"),
        (lambda: session.switch(1, 3), "there is no version 3 of message 2: it has 2",
         "/branches lists them"),
    ]:
        try:
            call()
        except UsageError as exc:
            assert (exc.message, exc.hint) == (message, hint)
        else:
            raise AssertionError(f"no error: {message}")
    session.undo()  # the last exchange goes for good, with its versions
    assert session.conversation.turns == []
    assert [n.message for n in session.tree.nodes()] == [edited, edited_answer]
    clear = ChatSession(_loaded(home, "float32"), strategy_registry(),
                        DecodingRequest("greedy", {"max_new_tokens": 4}))
    clear.add_user("x")
    try:
        clear.branch_point()
    except UsageError as exc:
        assert (exc.message, exc.hint) == ("this conversation has no branches yet",
                                           "/retry, /edit N and /alt STEP RANK make them")


SCRIPT = """Hello there
What now?
/edit 3
Something else
/branches
/switch 1
/retry
/branches
/switch 3
/edit 2
/edit 1

/branches 2
/switch
/switch x
/edit 9
"""


def test_piped_chat_branches_and_resumes_on_the_same_path(cli, home: Path) -> None:
    result = run_cli(["chat", "-n", "6"], input=SCRIPT)
    assert result.exit_code == 0, result.stderr
    with Store.open(home / "data" / "history.db", readonly=True) as store:
        rows, leaf = store.tree(1)
        path = store.messages(1)
    a1, a2, b2, a2b = (r.content for r in rows if r.role == "assistant")
    assert [(r.role, r.content, r.parent_id) for r in rows] == [
        ("user", "Hello there", None), ("assistant", a1, 1),
        ("user", "What now?", 2), ("assistant", a2, 3),
        ("user", "Something else", 2), ("assistant", b2, 5),
        ("assistant", a2b, 3),
    ]
    assert leaf == 7 and [m.id for m in path] == [1, 2, 3, 7]
    out = result.stdout.splitlines()
    assert out == [
        *a1.splitlines(), *a2.splitlines(), *b2.splitlines(),
        "message 3 (your message) has 2 versions; /switch K goes to one:",
        "  1. What now?  (4 messages)",
        "* 2. Something else  (4 messages)",
        "> What now?", *a2.splitlines(),  # /switch 1 shows the branch from message 3 on
        *a2b.splitlines(),
        "message 4 (the answer) has 2 versions; /switch K goes to one:",
        f"  1. {_one_line(' '.join(printable(a2).split()), 60)}  (4 messages)",
        "* 2. (the same text as 1)  (4 messages)",  # greedy: /retry gives the same answer
    ]
    assert a2b == a2
    assert result.stderr.splitlines() == [
        "chatcli: editing message 3: the next line replaces it; an empty line leaves it as it "
        "is; the old version and its answers stay as a branch (/branches)",
        "chatcli: now on version 1 of message 3; the conversation has 4 messages:",
        "chatcli: the previous answer stays as a branch (/branches)",
        "error: there is no version 3 of message 4: it has 2; hint: /branches lists them",
        "error: message 2 is the model's answer; /edit changes your messages; hint: /retry "
        "answers again, /alt changes a token",
        "chatcli: editing message 1: the next line replaces it; an empty line leaves it as it "
        "is; the old version and its answers stay as a branch (/branches)",
        "chatcli: message 1 is unchanged",
        "chatcli: message 2 (the answer) has one version; /retry and /alt make others",
        "error: /switch needs a version number; hint: /branches lists the versions",
        "error: /switch x: expected a version number; hint: /branches lists them",
        "error: there is no message 9: the conversation has 4 messages; hint: /context lists "
        "the messages with their numbers",
    ]

    # chat -c continues on that path, with every version still there
    again = run_cli(["chat", "-c", "-n", "6"], input="/branches 3\n/switch 2\nGo on\n")
    assert again.exit_code == 0, again.stderr
    assert again.stdout.splitlines()[:4] == ["> Hello there", *a1.splitlines(), "> What now?",
                                             *a2b.splitlines()][:4]
    assert "* 1. What now?  (4 messages)" in again.stdout
    assert "chatcli: now on version 2 of message 3; the conversation has 4 messages:" in \
        again.stderr
    exported = json.loads(run_cli(["history", "export", "1", "--format", "json"]).stdout)
    assert [m["content"] for m in exported["messages"]][:4] == [
        "Hello there", a1, "Something else", b2]
    assert exported["messages"][4]["content"] == "Go on"
    assert exported["messages"][4]["parent"] == 6  # under the answer it switched to
    assert len(exported["tree"]) == 9 and exported["leaf"] == 9


def test_chat_lists_the_branch_commands(cli) -> None:
    result = run_cli(["chat", "-n", "4"], input="/help\n")
    lines = result.stdout.splitlines()
    assert "/edit [N]       change your message N (default: the last) and answer it; the old " \
        "one stays a branch" in lines
    assert "/branches [N]   the versions of message N (default: the last that has several)" \
        in lines
    assert "/switch K       go to version K of the message /branches listed" in lines
    assert "/retry          answer the last message again (the old answer stays a branch)" \
        in lines


def test_a_session_without_history_still_branches(home: Path) -> None:
    session = ChatSession(_loaded(home, "float32"), strategy_registry(),
                          DecodingRequest("greedy", {"max_new_tokens": 3}))
    assert not session.recorder.enabled
    session.add_user("a")
    answer_ids(session)
    session.edit(0, "b")
    answer_ids(session)
    session.switch(0, 1)
    assert session.conversation.turns[0] == Message("user", "a")
    assert session.message_ids == [None, None]  # nothing saved: the tree is in memory
