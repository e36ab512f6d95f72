"""Fit a conversation into the context window, counted exactly with the chat template.

Contract: `pack(conversation, render, budget)` chooses what is sent to the model and
reports what it kept and dropped. `render(messages)` must return the exact prompt
token ids for a list of messages: the model's chat template with the generation
prompt appended (as `chatcli.prompt.render_ids` does). `budget` is the context
window minus the tokens reserved for the answer; the caller computes it.

Rules, in order:

* The system prompt, every pinned message (`Message.pinned`, see
  `chatcli.conversation`) and the last exchange (normally the newest user message,
  still awaiting its answer; when the conversation ends with a reply, that user
  message together with its reply) always stay. A pin is never dropped: when
  these do not fit, the only relief is shortening the newest user message (next
  rules) and otherwise `ContextOverflowError` is raised.
* Older exchanges (a user message with its reply, see `Conversation.exchanges`)
  are added newest first while the whole rendered prompt fits the budget. They
  are kept or dropped whole, except that a pinned message of a dropped exchange
  stays (pinning a user message keeps that message, not its reply). The first
  exchange that does not fit stops the scan and drops everything older too (but
  the pins): the turns sent are a contiguous suffix of the history (a *window*)
  plus the pinned messages before it, all in their original order. "Maximal"
  means exactly that: the next older exchange, added to the window, would not
  fit; a smaller exchange further back is not tried, so the history sent has no
  holes other than around pins. An exchange whose messages are all pinned adds
  nothing, so it never stops the scan. Without pins this is a contiguous suffix,
  as it always was.
* When the system prompt, the pins and the last exchange alone exceed the
  budget, the newest user message (pinned or not; no other message is ever
  shortened) is shortened in the middle (its start and end kept, an omission
  marker between them) to the longest version that fits beside them, found by
  binary search on characters with a render per candidate; with
  `truncate=False` a `ContextOverflowError` is raised instead. When not even the
  marker alone fits, `ContextOverflowError` is raised either way. When pins
  before the last exchange are involved, the error says how many tokens they
  take and hints at `/unpin N`.

Every count is exactly the length of an actual `render` of the candidate (the
pins' token count in an error message is the sum of their `message_tokens` rows,
as `/context` shows them). With a plain `render`, each count is such a render:
`render` is called once per message for the report, once per exchange scanned for
the packing, plus O(log length) times for shortening; that is quadratic in the
length of the conversation, since every render tokenizes the whole prompt.

A `render` that is also a `Measure` (`chatcli.prompt.PromptCounter`, the remote
backend's estimate) can say how many tokens each message adds when appended
(`sizes`, counted once per message and remembered) and how long a prompt is from
its first message and that sum (`length`); whenever `sizes` answers, the counts
come from those numbers and prefix sums instead, in time linear in the number of
messages, and are the same numbers. The packing then still renders the prompt it
sends (its `ids`) and, when older exchanges are dropped, the next older candidate
that did not fit; should either length differ from the sums, the packing is done
again by rendering, as above. Shortening always renders.

This module knows nothing about tokenizers, models, the terminal or storage: the
template lives behind `render`, and presenting the report is the caller's job.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from chatcli.conversation import Conversation, Message
from chatcli.errors import ContextOverflowError

Render = Callable[[list[Message]], list[int]]


@runtime_checkable
class Measure(Protocol):
    """A `Render` that counts each message once (see the module docstring).

    Whenever `sizes(messages)` is not None, for every non-empty list `L` of those
    messages (any of them, in any order), `len(self(L)) == self.length(L[0],
    sum(self.sizes(L)))`, and `length` does not decrease as `total` grows.
    """

    def __call__(self, messages: list[Message]) -> list[int]: ...

    def sizes(self, messages: Sequence[Message]) -> list[int] | None: ...

    def length(self, first: Message, total: int) -> int: ...


BUDGET_NOTE = "(context window minus max new tokens)"
HINT = (
    "lower --max-new-tokens, shorten the message or the system prompt, "
    "or choose a model with a larger context window (-m)"
)
PIN_HINT = (
    "unpin a message (/unpin N; /context numbers them), lower --max-new-tokens, "
    "shorten the message, or choose a model with a larger context window (-m)"
)


@dataclass(frozen=True)
class TurnReport:
    """One message of the conversation and what became of it.

    `index` is the position in `conversation.turns` (-1 for the system prompt);
    `tokens` is the message's own count from `message_tokens` over the whole
    conversation (for a shortened message: its original, unshortened count);
    `pinned` is the message's pin (always False for the system prompt).
    """

    index: int
    role: str
    tokens: int
    kept: bool
    shortened: bool = False
    pinned: bool = False


@dataclass(frozen=True)
class Packed:
    """What is sent: the system prompt (if any), the pinned turns before the window and
    the window (a contiguous suffix of the turns), in their original order.

    `dropped_exchanges` counts the exchanges with at least one message not sent (an
    exchange left out of the window whose messages are all pinned is not counted).
    """

    messages: list[Message]
    ids: list[int]
    budget: int
    dropped_exchanges: int
    shortened: bool
    report: list[TurnReport]

    @property
    def tokens(self) -> int:
        return len(self.ids)


def omission_marker(omitted: int) -> str:
    """The visible note put where characters were cut out of a message."""
    return f"\n[… {omitted} characters omitted by chatcli to fit the context window …]\n"


def shorten_middle(text: str, keep: int) -> str:
    """`text` with only `keep` characters left: its start and end around an omission marker.

    The start gets the extra character when `keep` is odd. `keep >= len(text)`
    returns `text` unchanged.
    """
    if keep >= len(text):
        return text
    keep = max(keep, 0)
    head = keep - keep // 2
    tail = keep // 2
    return text[:head] + omission_marker(len(text) - keep) + text[len(text) - tail :]


def message_tokens(messages: list[Message], render: Render) -> list[int]:
    """Each message's own token count under the template; the counts sum to `len(render(messages))`.

    For i >= 1, `counts[i] = len(render(messages[:i+1])) - len(render(messages[:i]))`:
    how much the prompt grows when message i is appended. Both renders end with the
    generation prompt, so it cancels out of the difference. `counts[0]` is
    `len(render(messages[:1]))`: the first message also carries the template's fixed
    cost, i.e. whatever it renders around the messages (a BOS token, a default
    system prompt) plus the generation prompt appended at the end. The counts
    therefore telescope to exactly `len(render(messages))`. `render([])` is never
    called (many templates reject an empty list). A template that merges tokens
    across a message boundary, or renders a message differently by position, makes
    a count differ from rendering that message alone; the total stays exact.
    Costs `len(messages)` renders; `[]` for no messages. With a `Measure` whose
    `sizes` answers, the same counts come from the sizes, without rendering.
    """
    sizes = _sizes(render, messages)
    if sizes is not None:
        assert isinstance(render, Measure)
        return _counts(render, messages, sizes)
    return _rendered_counts(messages, render)


def _rendered_counts(messages: list[Message], render: Render) -> list[int]:
    """`message_tokens` by rendering every prefix."""
    counts: list[int] = []
    previous = 0
    for i in range(len(messages)):
        length = len(render(messages[: i + 1]))
        counts.append(length - previous)
        previous = length
    return counts


def part_tokens(messages: list[Message], index: int, cuts: list[int], render: Render
                ) -> list[int]:
    """The token counts of the parts of message `index` cut at the character offsets
    `cuts` (increasing): `len(cuts) + 1` counts that sum to exactly that message's count in
    `message_tokens(messages, render)`, each how much the prompt grows as the message is
    appended up to the next cut (the first part of message 0 also carries the template's
    fixed cost). Costs `len(cuts) + 2` renders, or none with a `Measure` whose `sizes`
    answers (each part is then counted alone)."""
    message = messages[index]
    parts = [Message(message.role, message.content[:cut], message.interrupted)
             for cut in [*cuts, len(message.content)]]
    sizes = _sizes(render, [*messages[:index], *parts])
    if sizes is not None:
        assert isinstance(render, Measure)
        before = sum(sizes[:index])
        lengths = [render.length(messages[0] if index > 0 else part, before + size)
                   for part, size in zip(parts, sizes[index:], strict=True)]
        start = render.length(messages[0], before) if index > 0 else 0
        return [b - a for a, b in zip([start, *lengths], lengths, strict=False)]
    before = len(render(messages[:index])) if index > 0 else 0
    counts: list[int] = []
    previous = before
    for cut in [*cuts, len(message.content)]:
        part = Message(message.role, message.content[:cut], message.interrupted)
        length = len(render([*messages[:index], part]))
        counts.append(length - previous)
        previous = length
    return counts


def pack(
    conversation: Conversation, render: Render, budget: int, *, truncate: bool = True
) -> Packed:
    """Fit `conversation` into `budget` prompt tokens (see the module docstring for the rules).

    Raises `ContextOverflowError` when the system prompt, the pinned messages and
    the last exchange do not fit and `truncate` is False, or when they do not fit
    even with the newest user message shortened to nothing but its omission marker
    (also when the last exchange has no user message to shorten). Pins are never
    dropped to make room.
    """
    all_messages = conversation.messages()
    sizes = _sizes(render, all_messages) if conversation.turns else None
    if sizes is not None:
        assert isinstance(render, Measure)
        packed = _pack_measured(conversation, render, budget, truncate, all_messages, sizes)
        if packed is not None:
            return packed
    return _pack_rendered(conversation, render, budget, truncate, all_messages)


def _sizes(render: Render, messages: Sequence[Message]) -> list[int] | None:
    """The `Measure` sizes of `messages`, or None (a plain render, or no shortcut)."""
    if not messages or not isinstance(render, Measure):
        return None
    return render.sizes(messages)


def _counts(measure: Measure, messages: Sequence[Message], sizes: list[int]) -> list[int]:
    """`message_tokens` from the sizes: each prefix's length, differenced."""
    counts: list[int] = []
    previous = total = 0
    for size in sizes:
        total += size
        length = measure.length(messages[0], total)
        counts.append(length - previous)
        previous = length
    return counts


def _pack_rendered(
    conversation: Conversation, render: Render, budget: int, truncate: bool,
    all_messages: list[Message],
) -> Packed:
    """`pack` with every count a render."""
    head = all_messages[: len(all_messages) - len(conversation.turns)]
    groups = conversation.exchanges()
    counts = _rendered_counts(all_messages, render)

    if not groups:
        ids = render(head)
        if len(ids) > budget:
            raise ContextOverflowError(
                f"the system prompt needs {len(ids)} tokens but the budget is {budget} tokens "
                f"{BUDGET_NOTE}",
                HINT,
            )
        report = _report(all_messages, head, counts, set(), False)
        return Packed(head, ids, budget, 0, False, report)

    # Turn index of each exchange's first message.
    starts = [0]
    for group in groups[:-1]:
        starts.append(starts[-1] + len(group))

    def window(first: int) -> tuple[list[Message], set[int]]:
        """System prompt, the pins before exchange `first`, then exchanges `first`..."""
        before = [i for i in range(starts[first]) if conversation.turns[i].pinned]
        kept = set(before) | set(range(starts[first], len(conversation.turns)))
        return head + [conversation.turns[i] for i in sorted(kept)], kept

    first = len(groups) - 1
    messages, kept = window(first)
    ids = render(messages)
    shortened = False
    if len(ids) > budget:
        pins = [i for i in range(starts[first]) if conversation.turns[i].pinned]
        pin_tokens = sum(counts[len(head) + i] for i in pins)
        messages, ids = _shorten(
            messages[: len(messages) - len(groups[-1])], groups[-1], ids, render, budget,
            truncate, bool(head), len(pins), pin_tokens,
        )
        shortened = True
    else:
        while first > 0:
            if all(m.pinned for m in groups[first - 1]):  # nothing to add: it is all there
                first -= 1
                kept = window(first)[1]
                continue
            candidate, candidate_kept = window(first - 1)
            candidate_ids = render(candidate)
            if len(candidate_ids) > budget:
                break
            first -= 1
            messages, ids, kept = candidate, candidate_ids, candidate_kept

    dropped = sum(
        1 for g, group in enumerate(groups)
        if any(starts[g] + j not in kept for j in range(len(group)))
    )
    report = _report(all_messages, head, counts, kept, shortened)
    return Packed(messages, ids, budget, dropped, shortened, report)


def _pack_measured(
    conversation: Conversation, measure: Measure, budget: int, truncate: bool,
    all_messages: list[Message], sizes: list[int],
) -> Packed | None:
    """`pack` with the counts from `sizes` and prefix sums: the same packing as
    `_pack_rendered`, in linear time. Renders the prompt sent and, when exchanges are
    dropped, the next older candidate; None when either length disagrees with the
    sums (then the caller renders everything)."""
    turns = conversation.turns
    head = all_messages[: len(all_messages) - len(turns)]
    groups = conversation.exchanges()
    counts = _counts(measure, all_messages, sizes)
    turn_sizes = sizes[len(head):]
    head_total = sum(sizes[: len(head)])

    starts = [0]
    for group in groups[:-1]:
        starts.append(starts[-1] + len(group))
    # after[i]: the sizes of turns i.. ; pinned[i]: the sizes of the pinned turns before i
    after = [0] * (len(turns) + 1)
    for i in range(len(turns) - 1, -1, -1):
        after[i] = after[i + 1] + turn_sizes[i]
    pinned = [0] * (len(turns) + 1)
    first_pin = None
    for i, message in enumerate(turns):
        pinned[i + 1] = pinned[i] + (turn_sizes[i] if message.pinned else 0)
        if message.pinned and first_pin is None:
            first_pin = i

    def length(g: int) -> int:
        """The prompt length of the window from exchange `g` (see `_pack_rendered`)."""
        start = starts[g]
        if head:
            opening = head[0]
        elif first_pin is not None and first_pin < start:
            opening = turns[first_pin]
        else:
            opening = turns[start]
        return measure.length(opening, head_total + pinned[start] + after[start])

    def window(g: int) -> tuple[list[Message], set[int]]:
        before = [i for i in range(starts[g]) if turns[i].pinned]
        kept = set(before) | set(range(starts[g], len(turns)))
        return head + [turns[i] for i in sorted(kept)], kept

    first = len(groups) - 1
    shortened = False
    if length(first) > budget:
        messages, kept = window(first)
        ids = measure(messages)
        if len(ids) != length(first):
            return None
        pins = [i for i in range(starts[first]) if turns[i].pinned]
        pin_tokens = sum(counts[len(head) + i] for i in pins)
        messages, ids = _shorten(
            messages[: len(messages) - len(groups[-1])], groups[-1], ids, measure, budget,
            truncate, bool(head), len(pins), pin_tokens,
        )
        shortened = True
    else:
        rejected = None
        while first > 0:
            if all(m.pinned for m in groups[first - 1]):  # nothing to add: it is all there
                first -= 1
                continue
            if length(first - 1) > budget:
                rejected = first - 1
                break
            first -= 1
        messages, kept = window(first)
        ids = measure(messages)
        if len(ids) != length(first):
            return None
        if rejected is not None and len(measure(window(rejected)[0])) <= budget:
            return None

    dropped = sum(
        1 for g, group in enumerate(groups)
        if any(starts[g] + j not in kept for j in range(len(group)))
    )
    report = _report(all_messages, head, counts, kept, shortened)
    return Packed(messages, ids, budget, dropped, shortened, report)


def _shorten(
    head: list[Message],
    last: list[Message],
    full_ids: list[int],
    render: Render,
    budget: int,
    truncate: bool,
    system: bool,
    pins: int,
    pin_tokens: int,
) -> tuple[list[Message], list[int]]:
    """`head` (the system prompt and the pins before the last exchange) and the last
    exchange with its user message cut to the longest fit.

    `pins` is how many pinned messages `head` holds, `pin_tokens` their count.
    """
    hint = PIN_HINT if pins else HINT
    if pins:
        pinned = f"{pins} pinned message{'' if pins == 1 else 's'} ({pin_tokens} tokens)"
        who = ("the system prompt, " if system else "") + pinned + " and the newest message need"
    elif system:
        who = "the system prompt and the newest message need"
    else:
        who = "the newest message needs"
    if not truncate:
        raise ContextOverflowError(
            f"{who} {len(full_ids)} tokens but the budget is {budget} tokens {BUDGET_NOTE}", hint
        )
    user = last[0]
    if user.role != "user" or not user.content:
        raise ContextOverflowError(
            f"{who} {len(full_ids)} tokens but the budget is {budget} tokens {BUDGET_NOTE}, "
            "and there is nothing to shorten",
            hint,
        )
    text = user.content

    def attempt(keep: int) -> tuple[list[Message], list[int]]:
        shorter = Message("user", shorten_middle(text, keep), user.interrupted, user.pinned)
        candidate = [*head, shorter, *last[1:]]
        return candidate, render(candidate)

    best = attempt(0)
    if len(best[1]) > budget:
        beside = f" beside {pinned}" if pins else ""
        raise ContextOverflowError(
            f"the newest message does not fit even when shortened{beside}: the prompt needs at "
            f"least {len(best[1])} tokens but the budget is {budget} tokens {BUDGET_NOTE}",
            hint,
        )
    # Invariant: keeping `low` characters fits, keeping `high` does not (the full text).
    low, high = 0, len(text)
    while high - low > 1:
        middle = (low + high) // 2
        candidate = attempt(middle)
        if len(candidate[1]) <= budget:
            low, best = middle, candidate
        else:
            high = middle
    return best


def _report(
    all_messages: list[Message],
    head: list[Message],
    counts: list[int],
    kept: set[int],
    shortened: bool,
) -> list[TurnReport]:
    rows: list[TurnReport] = []
    newest_user = max(
        (i for i, m in enumerate(all_messages[len(head) :]) if m.role == "user"), default=-1
    )
    for position, (message, tokens) in enumerate(zip(all_messages, counts, strict=True)):
        index = position - len(head)
        if index < 0:
            rows.append(TurnReport(-1, message.role, tokens, True))
            continue
        cut = shortened and index == newest_user
        rows.append(TurnReport(index, message.role, tokens, index in kept, cut, message.pinned))
    return rows
