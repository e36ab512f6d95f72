"""A chat session over a long conversation: what a turn, /load and /context cost besides
packing (tests/test_packing_counts.py), and the prompt cache across a drop.

/load of a long transcript saves every message, in order, with one pass over the branch
tree (it used to walk and sort the whole tree once per message); the messages end up in
the history exactly as before. When packing drops the oldest exchange, the prompt cache
keeps what the new prompt shares with the last one: the system prompt and the pinned
messages before the window, and the answer is the one a cold prefill gives. A session's
packing counts each message once across turns (the local backend's `count` is a
`PromptCounter`) and agrees with rendering.
"""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path
from typing import Any

import pytest

from chatcli.branches import Tree
from chatcli.chat.commands import ChatContext, dispatch
from chatcli.chat.session import ChatSession, DecodingRequest
from chatcli.context import pack
from chatcli.conversation import Conversation
from chatcli.decoding.registry import strategy_registry
from chatcli.loader import load_model
from chatcli.progress import SilentReporter
from chatcli.prompt import PromptCounter, render_ids
from chatcli.registry import load_registry
from chatcli.runtime import Runtime
from chatcli.store import Store
from chatcli.transcript import to_json
from chatcli.ui.console import UI


def session_over(home: Path, window: int, conversation: Conversation | None = None,
                 store: Store | None = None, reuse: bool = True) -> ChatSession:
    spec = dataclasses.replace(load_registry().resolve("tiny"), context_window=window)
    loaded = load_model(spec, Runtime("cpu", "float32", 1), SilentReporter())
    return ChatSession(loaded, strategy_registry(),
                       DecodingRequest("greedy", {"max_new_tokens": 8}), conversation,
                       store=store, reuse_cache=reuse)


def transcript_of(n: int) -> Conversation:
    conv = Conversation("Be brief.")
    for i in range(n // 2):
        conv.add_user(f"question {i}: the quick brown fox?")
        conv.add_assistant(f"answer {i}: Paris.")
    return conv


def test_load_saves_a_long_transcript_in_one_pass(home: Path, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    store = Store.open(tmp_path / "history.sqlite")
    session = session_over(home, 256, store=store)
    path = tmp_path / "long.json"
    loaded = transcript_of(600)
    path.write_text(to_json(None, loaded))
    walks = 0
    nodes = Tree.nodes

    def counted(tree: Tree) -> list[Any]:
        nonlocal walks
        walks += 1
        return nodes(tree)

    monkeypatch.setattr(Tree, "nodes", counted)
    out, err = io.StringIO(), io.StringIO()
    ctx = ChatContext(session, UI(out, err), answer=lambda *a: None,
                      load_model=lambda alias: None)
    dispatch(f"/load {path}", ctx)
    assert err.getvalue() == f"chatcli: loaded 600 messages from {path}\n"
    assert walks <= 3  # the old conversation's flush, then one for all 600 messages
    info, stored, ids = store.load(session.conversation_id)
    assert stored == loaded and stored.system == "Be brief."
    assert ids == session.message_ids and len(set(ids)) == 600
    assert info.title == "question 0: the quick brown fox?"
    store.close()


def test_a_drop_keeps_the_system_prompt_and_pins_in_the_prompt_cache(home: Path) -> None:
    """Every turn here drops the oldest unpinned exchange: the prompt then changes right
    after the system prompt and the pinned message, and the cache keeps exactly those."""
    answers: dict[bool, list[list[int]]] = {}
    for reuse in (True, False):
        session = session_over(home, 200, reuse=reuse)
        session.set_system("You answer briefly.")
        session.add_user("Remember: the fox is quick.", pinned=True)
        tokenizer = session.backend.tokenizer
        kept = render_ids(tokenizer, session.conversation.messages(), False)
        replies, reused, dropped = [], [], []
        for i in range(9):
            if i:
                session.add_user(f"Question {i}: what about the brown dog and the lazy cat?")
            gen, _ = session.start_reply()
            for _ in gen:
                pass
            session.finish_reply(gen)
            replies.append(gen.token_ids)
            reused.append(session.cache.reused)
            dropped.append(session.last_packed.dropped_exchanges)
            assert session.last_packed.messages[:2] == session.conversation.messages()[:2]
        answers[reuse] = replies
        if reuse:
            drops = [i for i in range(1, 9) if dropped[i] > dropped[i - 1]]
            assert len(drops) >= 3
            for i in drops:  # a new drop: the system prompt and the pin stay cached
                assert reused[i] >= len(kept)
    assert answers[True] == answers[False]


def test_a_sessions_packing_counts_each_message_once(home: Path) -> None:
    session = session_over(home, 256, transcript_of(400))
    counter = session.render
    assert isinstance(counter, PromptCounter) and session.backend.count is counter
    session.add_user("One more question?")
    first = session.pack()
    plain = pack(session.conversation, lambda m: render_ids(session.backend.tokenizer, m),
                 session.budget)
    assert (first.messages, first.ids, first.report, first.dropped_exchanges) == (
        plain.messages, plain.ids, plain.report, plain.dropped_exchanges)
    assert first.dropped_exchanges > 190  # of 201
    counted = len(counter._sizes)
    assert counted == len({(m.role, m.content) for m in session.conversation.messages()})
    session.conversation.add_assistant("Sure.")
    session.add_user("And another?")
    again = session.pack()
    assert len(counter._sizes) == counted + 2  # only the two new messages were counted
    assert again.ids == render_ids(session.backend.tokenizer, again.messages)


def test_a_long_conversation_opens_and_shows_context(home: Path, tiny_model: Any) -> None:
    """`chat --conversation ID` over 2,000 stored messages: /context lists every one, with
    the counts and the packing that rendering gives."""
    from chatcli.loader import open_tokenizer
    from conftest import run_cli

    store = Store.open()
    conv = transcript_of(2000)
    conv_id = store.new_conversation("tiny", conv.system)
    conv_id, _ = store.fork(conv_id, "tiny", conv.system, [(None, m) for m in conv.turns])
    store.close()
    result = run_cli(["chat", "--conversation", str(conv_id), "-n", "2"],
                     input="/context\n")
    assert result.exit_code == 0, result.stderr
    expected = pack(conv, PromptCounter(open_tokenizer(tiny_model.folder)), 256 - 2)
    assert 990 < expected.dropped_exchanges < 1000
    lines = result.stdout.splitlines()
    assert lines[-1] == (f"prompt {expected.tokens} of 254 tokens (context window 256 - max "
                         f"new tokens 2); {expected.dropped_exchanges} exchange(s) dropped")
    rows = [line.split() for line in lines[-2 - len(expected.report):-1]]
    assert rows[0] == ["turn", "role", "tokens", "status"]
    assert rows[1:] == [
        ["system" if r.index < 0 else str(r.index + 1), r.role, str(r.tokens),
         "kept" if r.kept else "dropped"] for r in expected.report]
