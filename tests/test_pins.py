"""Pinned messages (`Message.pinned`, `Conversation.pin`) and how `chatcli.context.pack` keeps them.

Property tests extend those of tests/test_context.py to conversations with random pins, with the
tiny model's real ChatML template: whenever the system prompt, the pins and the last exchange fit
(the newest user message shortened if need be), every pin is sent; the messages sent are the
kept turns in their original order (the very objects, but the shortened newest message); they
are the pins plus a window of whole exchanges ending with the last one, and the next older
exchange would not fit (the documented rule: the first exchange that does not fit stops the
scan); `ids == render(messages)`; the report agrees; overflows name the pins' tokens and hint
at /unpin. Pins inside the last exchange change nothing but the report's `pinned` column.
A property with a fake, monotone render checks that pins inside the window change nothing
either. Examples with the fake render (1 token per character, 3 per message, 2 for the
generation prompt) give exact numbers: which messages stay, the stop rule, counts of dropped
exchanges, error messages, and the number of renders. Conversation examples check pin/unpin and
that undo, retry and clear take a pin away with its message.
"""

from __future__ import annotations

import math

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from test_context import (  # the packing tests' fake template and real-template fixture
    MARKER,
    Render,
    conversation,
    conversations,
    fake_render,
)

from chatcli.context import Packed, TurnReport, message_tokens, pack, shorten_middle
from chatcli.conversation import Conversation, Message
from chatcli.errors import ContextOverflowError, UsageError
from chatcli.prompt import render_ids
from conftest import Tiny

BUDGET_NOTE = "(context window minus max new tokens)"


@pytest.fixture(scope="module")
def render(tiny_model: Tiny) -> Render:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model.folder)
    return lambda messages: render_ids(tokenizer, messages)


# ---------------------------------------------------------------- the rule, restated

def exchange_starts(conv: Conversation) -> list[int]:
    starts, at = [], 0
    for group in conv.exchanges():
        starts.append(at)
        at += len(group)
    return starts


def pins_before(conv: Conversation, turn: int) -> list[Message]:
    return [m for m in conv.turns[:turn] if m.pinned]


def window(conv: Conversation, first: int) -> list[Message]:
    """The system prompt, the pins before exchange `first`, then every turn from it on."""
    everything = conv.messages()
    head = everything[: len(everything) - len(conv.turns)]
    start = exchange_starts(conv)[first]
    return head + pins_before(conv, start) + conv.turns[start:]


def bare(conv: Conversation) -> list[Message]:
    """`window(last)` with the newest user message shortened to its marker alone."""
    messages = window(conv, len(conv.exchanges()) - 1)
    last = conv.exchanges()[-1]
    at = len(messages) - len(last)
    return [*messages[:at], Message("user", shorten_middle(last[0].content, 0)), *last[1:]]


# ---------------------------------------------------------------- properties, real template


@st.composite
def pinned_conversations(draw: st.DrawFn) -> Conversation:
    conv = draw(conversations())  # the packing tests' conversations, then pins on them
    chance = draw(st.sampled_from([0.0, 0.1, 0.3, 0.7]))
    for i in range(len(conv.turns)):
        if draw(st.floats(0, 1)) < chance:
            conv.pin(i)
    return conv


def budgets(conv: Conversation, render: Render) -> st.SearchStrategy[int]:
    base = len(render(window(conv, len(conv.exchanges()) - 1)))
    full = len(render(conv.messages()))
    least = min(base, len(render(bare(conv))))  # below this nothing fits
    return (
        st.integers(0, full + 5)
        | st.integers(least - 2, max(least, base))  # around shortening
        | st.integers(least - 2, max(least, base))
        | st.integers(base, full + 5)  # dropping older exchanges around the pins
        | st.integers(base, full + 5)
        | st.integers(full - 2, full + 2)  # around keeping everything
    )


def check(conv: Conversation, render: Render, budget: int, truncate: bool) -> Packed | None:
    """Pack and check every promise; returns the packing (None when it raised)."""
    everything = conv.messages()
    head = everything[: len(everything) - len(conv.turns)]
    groups = conv.exchanges()
    starts = exchange_starts(conv)
    last = groups[-1]
    last_start = starts[-1]
    counts = message_tokens(everything, render)
    earlier_pins = [i for i in range(last_start) if conv.turns[i].pinned]
    base = len(render(window(conv, len(groups) - 1)))

    try:
        packed = pack(conv, render, budget, truncate=truncate)
    except ContextOverflowError as exc:
        event("raised with pins" if earlier_pins else "raised")
        assert base > budget, "raised although the pins and the newest exchange fit"
        if truncate and last[0].role == "user" and last[0].content:
            assert len(render(bare(conv))) > budget
        assert "--max-new-tokens" in exc.hint and "larger context window" in exc.hint
        assert f"the budget is {budget} tokens {BUDGET_NOTE}" in exc.message
        assert "\n" not in exc.message
        if earlier_pins:
            n = len(earlier_pins)
            pin_tokens = sum(counts[len(head) + i] for i in earlier_pins)
            assert f"{n} pinned message{'' if n == 1 else 's'} ({pin_tokens} tokens)" in (
                exc.message
            )
            assert "/unpin N" in exc.hint
        else:
            assert "pinned" not in exc.message and "/unpin" not in exc.hint
        return None

    assert packed.budget == budget
    assert packed.ids == render(packed.messages)
    assert packed.tokens == len(packed.ids) <= budget
    assert packed.messages[: len(head)] == head

    kept = [r.index for r in packed.report if r.index >= 0 and r.kept]
    sent = packed.messages[len(head) :]
    assert len(sent) == len(kept)
    newest = last_start if last[0].role == "user" else -1
    for message, i in zip(sent, kept, strict=True):  # the kept turns, in order, untouched
        if packed.shortened and i == newest:
            assert message.role == "user" and message.pinned == conv.turns[i].pinned
        else:
            assert message is conv.turns[i]

    # every pin and the last exchange are sent
    assert {i for i, m in enumerate(conv.turns) if m.pinned} <= set(kept)
    assert set(range(last_start, len(conv.turns))) <= set(kept)

    # the rest is a window of whole exchanges ending with the last one
    first = min(g for g in range(len(groups)) if set(range(starts[g], len(conv.turns))) <= {*kept})
    assert set(kept) == {i for i in range(starts[first]) if conv.turns[i].pinned} | set(
        range(starts[first], len(conv.turns))
    )
    if packed.shortened:
        event("shortened with pins" if earlier_pins else "shortened")
        assert base > budget
        assert all(m.pinned for group in groups[first:-1] for m in group)  # nothing else added
        original = last[0].content
        match = MARKER.search(sent[-len(last)].content)
        assert match is not None
        keep = len(original) - int(match.group(1))
        assert sent[-len(last)].content == shorten_middle(original, keep)
        longer = Message("user", shorten_middle(original, keep + 1))
        messages = window(conv, first)
        assert len(render([*messages[: -len(last)], longer, *last[1:]])) > budget  # maximal
    else:
        assert base <= budget
        assert packed.messages == window(conv, first)
        if first > 0:  # maximal: the next older exchange would overflow
            assert not all(m.pinned for m in groups[first - 1])
            assert len(render(window(conv, first - 1))) > budget
            event("dropped around pins" if earlier_pins else "dropped some")
        else:
            event("kept all")

    dropped = sum(1 for g in range(len(groups)) if not set(
        range(starts[g], starts[g] + len(groups[g]))) <= set(kept))
    assert packed.dropped_exchanges == dropped
    assert packed.report == [
        TurnReport(
            -1 if p < len(head) else p - len(head),
            m.role,
            counts[p],
            p < len(head) or p - len(head) in kept,
            packed.shortened and p - len(head) == newest,
            m.pinned and p >= len(head),
        )
        for p, m in enumerate(everything)
    ]
    return packed


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(conv=pinned_conversations(), data=st.data(), truncate=st.sampled_from([True, True, False]))
def test_pack_properties_with_pins(
    render: Render, conv: Conversation, data: st.DataObject, truncate: bool
):
    budget = data.draw(budgets(conv, render), label="budget")
    check(conv, render, budget, truncate)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(conv=pinned_conversations(), data=st.data(), truncate=st.booleans())
def test_pins_in_the_last_exchange_change_only_the_report(
    render: Render, conv: Conversation, data: st.DataObject, truncate: bool
):
    plain = Conversation(conv.system, [Message(m.role, m.content, m.interrupted)
                                       for m in conv.turns])
    last_start = exchange_starts(plain)[-1]
    for i in range(last_start, len(plain.turns)):
        if data.draw(st.booleans()):
            plain.pin(i)
    budget = data.draw(budgets(plain, render), label="budget")
    unpinned = Conversation(conv.system, [Message(m.role, m.content, m.interrupted)
                                          for m in conv.turns])
    try:
        packed = pack(plain, render, budget, truncate=truncate)
    except ContextOverflowError as exc:
        with pytest.raises(ContextOverflowError) as again:
            pack(unpinned, render, budget, truncate=truncate)
        assert (again.value.message, again.value.hint) == (exc.message, exc.hint)
        return
    reference = pack(unpinned, render, budget, truncate=truncate)
    assert packed.messages == reference.messages
    assert packed.ids == reference.ids
    assert (packed.dropped_exchanges, packed.shortened) == (
        reference.dropped_exchanges, reference.shortened)
    assert [(r.index, r.role, r.tokens, r.kept, r.shortened) for r in packed.report] == [
        (r.index, r.role, r.tokens, r.kept, r.shortened) for r in reference.report
    ]
    assert [r.pinned for r in packed.report] == [
        False if r.index < 0 else plain.turns[r.index].pinned for r in packed.report
    ]


fake_texts = st.text(alphabet="ab", max_size=40)


@settings(max_examples=300, deadline=None)
@given(
    pairs=st.lists(st.tuples(fake_texts, fake_texts), min_size=1, max_size=10),
    system=st.none() | fake_texts,
    data=st.data(),
)
def test_pins_inside_the_window_change_nothing_with_a_monotone_render(
    pairs: list[tuple[str, str]], system: str | None, data: st.DataObject
):
    """Under a render whose length grows with every message added (the fake one), pinning
    messages the window holds anyway changes nothing sent; pins outside it only add."""
    conv = conversation(system, *pairs[:-1], (pairs[-1][0], None))
    budget = data.draw(st.integers(len(fake_render(window(conv, len(pairs) - 1))),
                                   len(fake_render(conv.messages())) + 3), label="budget")
    reference = pack(conv, fake_render, budget)
    kept = [r.index for r in reference.report if r.index >= 0 and r.kept]
    inside = data.draw(st.lists(st.sampled_from(kept), unique=True), label="pins inside")
    for i in inside:
        conv.pin(i)
    packed = check(conv, fake_render, budget, True)
    assert packed is not None
    assert packed.messages == reference.messages and packed.ids == reference.ids

    outside = [i for i in range(len(conv.turns)) if i not in kept]
    more = data.draw(st.lists(st.sampled_from(outside), unique=True) if outside
                     else st.just([]), label="pins outside")
    for i in more:
        conv.pin(i)
    packed = check(conv, fake_render, budget, True)
    if packed is not None and not packed.shortened:
        window_now = [r.index for r in packed.report if r.index >= 0 and r.kept
                      and not conv.turns[r.index].pinned]
        assert set(window_now) <= set(kept)  # the pins take room from the window, never add to it


# ---------------------------------------------------------------- examples, fake render

def ten(*letters: str) -> list[tuple[str, str | None]]:
    """Exchanges of ten-character messages: 'ab' is ('a'*10, 'b'*10), 'g' is unanswered."""
    return [(pair[0] * 10, pair[1] * 10 if len(pair) > 1 else None) for pair in letters]


def test_a_pinned_message_stays_while_the_exchanges_around_it_go():
    # sizes: system 6, four older exchanges of 13+13, newest 13, generation prompt 2
    conv = conversation("sys", *ten("ab", "cd", "ef", "gh", "i"))
    conv.pin(0)  # the oldest user message ("a"*10), not its reply
    packed = pack(conv, fake_render, 6 + 13 + 26 + 13 + 2)  # the pin, one older exchange, newest
    assert packed.messages == [Message("system", "sys"), conv.turns[0], *conv.turns[6:]]
    assert packed.messages[1].pinned
    assert packed.dropped_exchanges == 3
    assert packed.tokens == 6 + 13 + 26 + 13 + 2
    assert [(r.index, r.kept, r.pinned) for r in packed.report] == [
        (-1, True, False), (0, True, True), (1, False, False), (2, False, False),
        (3, False, False), (4, False, False), (5, False, False), (6, True, False),
        (7, True, False), (8, True, False),
    ]

    # without the pin, the same budget keeps the same window (13 more tokens hold no exchange)
    conv.unpin(0)
    assert pack(conv, fake_render, 6 + 13 + 26 + 13 + 2).messages == [
        Message("system", "sys"), *conv.turns[6:]]
    assert pack(conv, fake_render, 6 + 26 + 26 + 13 + 2).messages == [
        Message("system", "sys"), *conv.turns[4:]]


def test_a_pinned_reply_stays_without_its_question():
    conv = conversation(None, *ten("ab", "cd", "e"))
    conv.pin(1)
    packed = pack(conv, fake_render, 13 + 13 + 2)
    assert packed.messages == [conv.turns[1], conv.turns[4]]
    assert [m.role for m in packed.messages] == ["assistant", "user"]
    assert packed.dropped_exchanges == 2
    assert pack(conv, fake_render, 13 * 4 + 2).messages == [conv.turns[1], *conv.turns[2:]]


def test_the_first_exchange_that_does_not_fit_stops_the_scan_but_not_the_pins():
    conv = conversation("sys", ("a", "b"), ("c", "d"), ("e" * 300, "f"), ("g", "h"), ("i", None))
    conv.pin(0)
    packed = pack(conv, fake_render, 100)
    # ("e"*300, "f") does not fit: ("c", "d") is not tried; the pinned "a" stays
    assert packed.messages == [Message("system", "sys"), conv.turns[0], *conv.turns[6:]]
    assert packed.dropped_exchanges == 3


def test_an_exchange_pinned_whole_is_never_dropped_and_does_not_stop_the_scan():
    conv = conversation("sys", ("a", "b"), ("c", "d"), ("e" * 300, "f"), ("g", None))
    conv.pin(2)
    conv.pin(3)
    packed = pack(conv, fake_render, 100)
    assert packed.messages == [Message("system", "sys"), *conv.turns[2:4], conv.turns[6]]
    assert packed.dropped_exchanges == 2  # ("a", "b") and the huge one; ("c", "d") is all there

    conv = conversation("sys", ("a", "b"), ("c" * 300, "d"), ("e", None))
    conv.pin(2)
    conv.pin(3)
    packed = pack(conv, fake_render, len(fake_render(conv.messages())))
    assert packed.messages == conv.messages()
    assert packed.dropped_exchanges == 0


def test_pins_that_do_not_fit_are_refused_never_dropped():
    conv = conversation("s" * 10, ("p" * 100, "r"), ("x" * 100, None))
    conv.pin(0)
    with pytest.raises(ContextOverflowError) as info:
        pack(conv, fake_render, 200, truncate=False)
    assert info.value.message == (
        "the system prompt, 1 pinned message (103 tokens) and the newest message need 221 "
        f"tokens but the budget is 200 tokens {BUDGET_NOTE}"
    )
    assert "/unpin N" in info.value.hint and "--max-new-tokens" in info.value.hint

    # with truncation, the newest message is shortened to fit beside the pin
    packed = pack(conv, fake_render, 200)
    assert packed.shortened
    _, pinned, newest = packed.messages
    assert pinned is conv.turns[0] and pinned.content == "p" * 100
    assert MARKER.search(newest.content) and packed.tokens <= 200
    assert packed.dropped_exchanges == 1  # the pinned message's reply went
    assert [(r.index, r.kept, r.shortened, r.pinned) for r in packed.report] == [
        (-1, True, False, False), (0, True, False, True), (1, False, False, False),
        (2, True, True, False),
    ]

    # ... unless not even the omission marker fits beside it
    conv.pin(1)
    marker_only = 13 + 103 + 4 + 3 + len(shorten_middle("x" * 100, 0)) + 2
    with pytest.raises(ContextOverflowError) as info:
        pack(conv, fake_render, marker_only - 1)
    assert info.value.message == (
        "the newest message does not fit even when shortened beside 2 pinned messages "
        f"(107 tokens): the prompt needs at least {marker_only} tokens but the budget is "
        f"{marker_only - 1} tokens {BUDGET_NOTE}"
    )
    assert "/unpin N" in info.value.hint
    assert pack(conv, fake_render, marker_only).messages[1:3] == conv.turns[:2]

    # no system prompt: the message says so; the first message's count, as /context shows
    # it, carries the template's fixed cost (here the generation prompt's 2 tokens)
    conv = conversation(None, ("p" * 100, "r"), ("x" * 100, None))
    conv.pin(0)
    with pytest.raises(ContextOverflowError, match=r"^1 pinned message \(105 tokens\) and the "):
        pack(conv, fake_render, 200, truncate=False)


def test_a_pinned_newest_message_may_be_shortened_and_keeps_its_pin():
    conv = conversation(None, ("old", "older"))
    conv.add_user("START-" + "x" * 500 + "-END", pinned=True)
    packed = pack(conv, fake_render, 100)
    assert packed.shortened
    (newest,) = packed.messages
    assert newest.pinned and newest.content.startswith("START-") and MARKER.search(newest.content)
    assert packed.report[-1] == TurnReport(2, "user", 513, True, True, True)
    # only pins in the last exchange: the error is the usual one
    with pytest.raises(ContextOverflowError) as info:
        pack(conv, fake_render, 100, truncate=False)
    assert info.value.message.startswith("the newest message needs 515 tokens")
    assert "/unpin" not in info.value.hint


def test_render_calls_stay_linear_with_pins():
    calls = 0

    def counting(messages: list[Message]) -> list[int]:
        nonlocal calls
        calls += 1
        return fake_render(messages)

    pairs = [(f"question {i}", f"answer {i}") for i in range(30)]
    conv = conversation("sys", *pairs, ("short", None))
    for i in range(0, 60, 7):
        conv.pin(i)
    pack(conv, counting, 400)
    assert calls <= len(conv.messages()) + len(conv.exchanges()) + 1
    calls = 0
    conv = conversation("sys", *pairs, ("y" * 10_000, None))
    conv.pin(3)
    pack(conv, counting, 500)
    assert calls <= len(conv.messages()) + 1 + math.ceil(math.log2(10_000)) + 1


# ---------------------------------------------------------------- the conversation's pins

def test_pin_and_unpin():
    conv = conversation("sys", ("q1", "a1"), ("q2", None))
    original = conv.turns[1]
    pinned = conv.pin(1)
    assert pinned.pinned and not original.pinned
    assert conv.turns[1] is pinned
    assert pinned == original and hash(pinned) == hash(original)  # equality ignores the pin
    assert pinned.as_dict() == {"role": "assistant", "content": "a1"}
    assert conv.pinned_indices() == [1]
    assert conv.pin(1) is pinned  # twice is harmless
    conv.pin(0)
    assert conv.pinned_indices() == [0, 1]
    assert not conv.unpin(1).pinned
    assert conv.pinned_indices() == [0]
    assert not conv.unpin(2).pinned  # unpinning an unpinned message is harmless

    for bad in (3, -1):
        with pytest.raises(UsageError) as info:
            conv.pin(bad)
    assert info.value.message == "there is no message 0: the conversation has 3 messages"
    assert "/context" in info.value.hint
    with pytest.raises(UsageError, match=r"has 1 message$"):
        conversation(None, ("q", None)).unpin(5)


def test_pins_keep_the_other_fields():
    conv = Conversation()
    conv.add_user("q", pinned=True)
    conv.add_assistant("partial", interrupted=True)
    reply = conv.pin(1)
    assert reply.interrupted and reply.pinned and conv.turns[0].pinned
    assert Message("user", "q", pinned=True) == Message("user", "q")


def test_undo_retry_and_clear_take_the_pin_with_the_message():
    conv = conversation(None, ("q1", "a1"), ("q2", "a2"))
    conv.pin(0)
    conv.pin(2)
    conv.pin(3)
    assert conv.retry() is conv.turns[2]  # the pinned reply goes with its pin
    assert conv.pinned_indices() == [0, 2]  # the question keeps its own
    conv.add_assistant("a2 again")
    assert conv.pinned_indices() == [0, 2]  # a new reply is not pinned
    assert [m.content for m in conv.undo()] == ["q2", "a2 again"]
    assert conv.pinned_indices() == [0]
    conv.add_user("q3")
    assert conv.pinned_indices() == [0]  # nothing moved onto the new message
    conv.clear()
    assert conv.pinned_indices() == []


def test_copied_turns_keep_their_pins():
    conv = conversation("sys", ("q1", "a1"), ("q2", None))
    conv.pin(1)
    copy = Conversation(conv.system)
    for message in conv.turns:
        copy.turns.append(message)
    assert copy.pinned_indices() == [1]
    assert copy == conv
