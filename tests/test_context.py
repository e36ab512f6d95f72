"""The conversation-history packer (`chatcli.context`).

Property tests run `pack` over random conversations (optional system prompt, up to a dozen
exchanges of random text, the newest user message usually unanswered, random budgets) with the
tiny model's real ChatML template via `chatcli.prompt.render_ids`, and check every promise: the
prompt fits, the system prompt and newest message stay (shortened only when they alone do not
fit), the turns sent are a contiguous suffix made of whole exchanges, nothing more would fit,
`ids == render(messages)`, and the report agrees. Example tests use a fake render (one token per
character plus three per message and two for the generation prompt) for exact numbers:
shortening, error messages, per-message counts and the number of renders.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from chatcli.context import (
    Packed,
    TurnReport,
    message_tokens,
    omission_marker,
    pack,
    shorten_middle,
)
from chatcli.conversation import Conversation, Message
from chatcli.errors import ContextOverflowError
from chatcli.prompt import render_ids
from conftest import Tiny

Render = Callable[[list[Message]], list[int]]
ROLE_IDS = {"system": 11, "user": 12, "assistant": 13}
MARKER = re.compile(r"\n\[… (\d+) characters omitted by chatcli to fit the context window …\]\n")


def fake_render(messages: list[Message]) -> list[int]:
    """1 token per character, 3 per message (start, role, end), 2 for the generation prompt."""
    ids: list[int] = []
    for message in messages:
        ids += [1, ROLE_IDS[message.role], *map(ord, message.content), 2]
    return [*ids, 1, ROLE_IDS["assistant"]]


def conversation(system: str | None, *pairs: tuple[str, str | None]) -> Conversation:
    conv = Conversation(system)
    for user, reply in pairs:
        conv.add_user(user)
        if reply is not None:
            conv.add_assistant(reply)
    return conv


@pytest.fixture(scope="module")
def render(tiny_model: Tiny) -> Render:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model.folder)
    return lambda messages: render_ids(tokenizer, messages)


# ---------------------------------------------------------------- properties, real template

texts = st.text(max_size=60) | st.text(alphabet="abc xyz.\n", max_size=300)


@st.composite
def conversations(draw: st.DrawFn) -> Conversation:
    system = draw(st.none() | texts)
    earlier = draw(st.lists(st.tuples(texts, texts, st.booleans()), max_size=11))
    conv = Conversation(system)
    for user, reply, interrupted in earlier:
        conv.add_user(user)
        conv.add_assistant(reply, interrupted)
    long = st.text(min_size=80, max_size=200) | st.text(
        alphabet="hello world\n", min_size=100, max_size=800
    )
    conv.add_user(draw(texts if draw(st.integers(0, 3)) == 0 else long))  # long, mostly
    if draw(st.integers(0, 5)) == 0:  # now and then the newest message already has its answer
        conv.add_assistant(draw(texts))
    return conv


def flat(groups: list[list[Message]]) -> list[Message]:
    return [m for group in groups for m in group]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(conv=conversations(), data=st.data(), truncate=st.sampled_from([True, True, False]))
def test_pack_properties(render: Render, conv: Conversation, data: st.DataObject, truncate: bool):
    everything = conv.messages()
    head = everything[: len(everything) - len(conv.turns)]
    groups = conv.exchanges()
    last = groups[-1]
    base = render(head + last)
    full = len(render(everything))
    bare = [*head, Message("user", shorten_middle(last[0].content, 0)), *last[1:]]
    least = min(len(base), len(render(bare)))  # below this nothing fits
    budget = data.draw(
        st.integers(0, full + 5)
        | st.integers(least - 2, max(least, len(base)))  # around shortening
        | st.integers(least - 2, max(least, len(base)))
        | st.integers(len(base), full + 5)  # dropping older exchanges
        | st.integers(full - 2, full + 2),  # around keeping everything
        label="budget",
    )

    try:
        packed = pack(conv, render, budget, truncate=truncate)
    except ContextOverflowError as exc:
        event("raised")
        assert len(base) > budget, "raised although the newest exchange fits"
        assert "--max-new-tokens" in exc.hint and "larger context window" in exc.hint
        if truncate and last[0].content:
            assert len(render(bare)) > budget
        return

    if packed.shortened:
        event("shortened")
    else:
        event("dropped some" if packed.dropped_exchanges else "kept all")
    assert packed.budget == budget
    assert packed.ids == render(packed.messages)
    assert packed.tokens == len(packed.ids) <= budget

    sent = packed.messages[len(head) :]
    assert packed.messages[: len(head)] == head
    kept_groups = len(groups) - packed.dropped_exchanges
    assert 1 <= kept_groups <= len(groups)
    expected = flat(groups[len(groups) - kept_groups :])
    assert len(sent) == len(expected) == len(packed.messages) - len(head)
    assert sent[: len(sent) - len(last)] == expected[: len(sent) - len(last)]
    assert sent[len(sent) - len(last) + 1 :] == last[1:]  # the reply to the newest, if any

    newest = sent[len(sent) - len(last)]
    if packed.shortened:
        assert len(base) > budget
        assert kept_groups == 1
        original = last[0].content
        match = MARKER.search(newest.content)
        assert match is not None
        keep = len(original) - int(match.group(1))
        assert newest.content == shorten_middle(original, keep)
        longer = Message("user", shorten_middle(original, keep + 1))
        assert len(render([*head, longer, *last[1:]])) > budget  # maximal within a character
    else:
        assert len(base) <= budget
        assert newest == last[0]
        if kept_groups < len(groups):  # maximal: the next older exchange would overflow
            assert len(render(head + flat(groups[len(groups) - kept_groups - 1 :]))) > budget

    counts = message_tokens(everything, render)
    assert sum(counts) == len(render(everything))
    first_kept = len(conv.turns) - len(sent)
    assert packed.report == [
        TurnReport(
            -1 if i < len(head) else i - len(head),
            m.role,
            counts[i],
            i < len(head) or i - len(head) >= first_kept,
            packed.shortened and i - len(head) == len(conv.turns) - len(last),
        )
        for i, m in enumerate(everything)
    ]


@settings(max_examples=40, deadline=None)
@given(conv=conversations())
def test_message_tokens_sum_to_the_whole_prompt(render: Render, conv: Conversation):
    messages = conv.messages()
    counts = message_tokens(messages, render)
    assert len(counts) == len(messages)
    assert sum(counts) == len(render(messages))


# ---------------------------------------------------------------- examples, fake render


def test_fake_render_counts():
    conv = conversation("abcd", ("hello", "hi"), ("what?", None))
    # 4+3+2 (the first message carries the generation prompt), then 5+3, 2+3, 5+3.
    assert message_tokens(conv.messages(), fake_render) == [9, 8, 5, 8]
    assert sum(message_tokens(conv.messages(), fake_render)) == len(fake_render(conv.messages()))
    assert message_tokens([], fake_render) == []


def test_everything_fits():
    conv = conversation("sys", ("a" * 10, "b" * 10), ("c" * 10, None))
    packed = pack(conv, fake_render, 1000)
    assert packed.messages == conv.messages()
    assert packed.ids == fake_render(conv.messages())
    assert packed.tokens == 6 + 13 + 13 + 13 + 2
    assert packed.dropped_exchanges == 0
    assert not packed.shortened
    assert packed.report == [
        TurnReport(-1, "system", 8, True),
        TurnReport(0, "user", 13, True),
        TurnReport(1, "assistant", 13, True),
        TurnReport(2, "user", 13, True),
    ]


def test_drops_oldest_whole_exchanges_and_keeps_a_contiguous_suffix():
    # sizes: system 6, three older exchanges of 13+13, newest 13, generation prompt 2
    conv = conversation(
        "sys", ("a" * 10, "b" * 10), ("c" * 10, "d" * 10), ("e" * 10, "f" * 10), ("g" * 10, None)
    )
    assert len(fake_render(conv.messages())) == 6 + 26 * 3 + 13 + 2
    packed = pack(conv, fake_render, 6 + 26 + 26 + 13 + 2)  # room for two of the three older
    assert packed.messages == [Message("system", "sys"), *conv.turns[2:]]
    assert packed.dropped_exchanges == 1
    assert packed.tokens == 6 + 26 + 26 + 13 + 2
    assert [row.kept for row in packed.report] == [True, False, False, True, True, True, True, True]

    # a huge middle exchange drops the small one before it too
    conv = conversation("sys", ("a", "b"), ("c" * 300, "d"), ("e", "f"), ("g", None))
    packed = pack(conv, fake_render, 100)
    assert packed.messages == [Message("system", "sys"), *conv.turns[4:]]
    assert packed.dropped_exchanges == 2


def test_last_turn_an_answer_keeps_the_last_exchange():
    conv = conversation(None, ("a" * 10, "b" * 10), ("c" * 10, "d" * 10))
    packed = pack(conv, fake_render, 13 + 13 + 2)
    assert packed.messages == conv.turns[2:]
    assert packed.dropped_exchanges == 1
    assert not packed.shortened

    assert pack(conv, fake_render, 13 * 4 + 2).messages == conv.turns
    assert pack(conv, fake_render, 13 * 4 + 1).messages == conv.turns[2:]


def test_last_exchange_answered_but_too_long_shortens_the_user_message_only():
    conv = conversation(None, ("x", "y"), ("u" * 500, "reply"))
    packed = pack(conv, fake_render, 200)
    assert packed.shortened
    assert packed.dropped_exchanges == 1
    user, reply = packed.messages
    assert reply == Message("assistant", "reply")
    assert MARKER.search(user.content)
    assert packed.tokens <= 200
    assert packed.report[2] == TurnReport(2, "user", 503, True, True)
    assert packed.report[3] == TurnReport(3, "assistant", 8, True, False)


def test_shortening_keeps_start_and_end_and_is_maximal():
    text = "START-" + "x" * 2000 + "-END"
    conv = conversation("sys", ("old", "older"), (text, None))
    budget = 300
    packed = pack(conv, fake_render, budget)
    assert packed.shortened
    assert packed.dropped_exchanges == 1
    system, user = packed.messages
    assert system == Message("system", "sys")
    assert user.content.startswith("START-x") and user.content.endswith("x-END")
    match = MARKER.search(user.content)
    assert match is not None
    keep = len(text) - int(match.group(1))
    assert user.content == shorten_middle(text, keep)
    assert packed.ids == fake_render(packed.messages)
    assert packed.tokens <= budget

    def tokens(k: int) -> int:
        return len(fake_render([system, Message("user", shorten_middle(text, k))]))

    # the fake render is monotone in k, so the binary search finds the true maximum
    assert keep == max(k for k in range(len(text)) if tokens(k) <= budget)
    assert tokens(keep + 1) > budget
    assert [(r.index, r.kept, r.shortened) for r in packed.report] == [
        (-1, True, False),
        (0, False, False),
        (1, False, False),
        (2, True, True),
    ]


def test_shorten_middle():
    assert shorten_middle("abcdef", 6) == "abcdef"
    assert shorten_middle("abcdef", 10) == "abcdef"
    assert shorten_middle("abcdef", 3) == "ab" + omission_marker(3) + "f"
    assert shorten_middle("abcdef", 0) == omission_marker(6)
    assert omission_marker(7) == (
        "\n[… 7 characters omitted by chatcli to fit the context window …]\n"
    )


def test_no_truncation_raises_with_both_counts():
    conv = conversation(None, ("x" * 100, None))
    with pytest.raises(ContextOverflowError) as info:
        pack(conv, fake_render, 50, truncate=False)
    assert info.value.message == (
        "the newest message needs 105 tokens but the budget is 50 tokens "
        "(context window minus max new tokens)"
    )
    assert "--max-new-tokens" in info.value.hint
    assert "larger context window" in info.value.hint

    conv = conversation("s" * 10, ("x" * 100, None))
    with pytest.raises(ContextOverflowError) as info:
        pack(conv, fake_render, 50, truncate=False)
    assert info.value.message == (
        "the system prompt and the newest message need 118 tokens but the budget is 50 tokens "
        "(context window minus max new tokens)"
    )

    # it fits: no error, nothing shortened
    assert not pack(conv, fake_render, 118, truncate=False).shortened


def test_no_room_even_for_the_marker():
    conv = conversation("s" * 100, ("x" * 100, None))
    marker_only = 103 + 3 + len(omission_marker(100)) + 2
    with pytest.raises(ContextOverflowError) as info:
        pack(conv, fake_render, marker_only - 1)
    assert info.value.message == (
        f"the newest message does not fit even when shortened: the prompt needs at least "
        f"{marker_only} tokens but the budget is {marker_only - 1} tokens "
        "(context window minus max new tokens)"
    )
    assert "--max-new-tokens" in info.value.hint
    packed = pack(conv, fake_render, marker_only)
    # keeping one character costs nothing: the count in the marker loses a digit
    assert packed.messages[1].content == "x" + omission_marker(99)
    assert packed.tokens == marker_only

    with pytest.raises(ContextOverflowError):
        pack(conversation(None, ("x", None)), fake_render, 0)
    with pytest.raises(ContextOverflowError, match="nothing to shorten"):
        pack(conversation(None, ("", None)), fake_render, 4)


def test_nothing_to_shorten_without_a_user_message():
    conv = Conversation(None, [Message("assistant", "a" * 50)])
    with pytest.raises(ContextOverflowError, match="nothing to shorten"):
        pack(conv, fake_render, 20)
    assert pack(conv, fake_render, 55).messages == conv.turns


def test_empty_conversation():
    packed = pack(Conversation("sys"), fake_render, 8)
    assert packed == Packed(
        [Message("system", "sys")], fake_render([Message("system", "sys")]), 8, 0, False,
        [TurnReport(-1, "system", 8, True)],
    )  # fmt: skip
    with pytest.raises(ContextOverflowError, match="the system prompt needs 8 tokens"):
        pack(Conversation("sys"), fake_render, 7)
    assert pack(Conversation(), fake_render, 2).messages == []


def test_interrupted_replies_pass_through_unchanged():
    conv = Conversation("sys")
    conv.add_user("q")
    conv.add_assistant("partial", interrupted=True)
    conv.add_user("again")
    packed = pack(conv, fake_render, 1000)
    assert packed.messages[2] is conv.turns[1]
    assert packed.messages[2].interrupted


def test_render_calls_are_linear_in_exchanges_plus_log_for_shortening():
    calls = 0

    def counting(messages: list[Message]) -> list[int]:
        nonlocal calls
        calls += 1
        return fake_render(messages)

    pairs = [(f"question {i}", f"answer {i}") for i in range(30)]
    conv = conversation("sys", *pairs, ("y" * 10_000, None))
    messages = len(conv.messages())
    pack(conv, counting, 500)
    assert calls <= messages + 1 + math.ceil(math.log2(10_000)) + 1
    calls = 0
    conv = conversation("sys", *pairs, ("short", None))
    pack(conv, counting, 200)
    assert calls <= messages + len(conv.exchanges()) + 1
