"""Answers on the screen: streamed as they come, their figures, their attention, past turns.

Contract: `stream_answer(ui, events, shown)` shows each event's text as soon as it
arrives and appends the event to `shown` (so that a caller that is interrupted still
has what was shown): coloured by probability on a terminal when `coloured` (plain text
otherwise), Markdown on a terminal else, nothing when `quiet` (--json). The writer is
always closed, whatever ends the stream; Ctrl-C, SIGTERM/SIGHUP (a KeyboardInterrupt)
or a server that stopped sending reach the caller unchanged, and the caller keeps the
partial reply. `stopped_note` is the line that says an answer ends where the token
limit cut it (shown dim on a terminal: `UI.aside`). `stats_line` is the figures of one
answer (ask's --stats, chat's /stats); `show_spans` the answer's attention per message
of its prompt;
`show_conversation` a saved conversation, shown again when it is continued.
Knows nothing about models, decoding or chat: events, figures, spans and
conversations are read through the small protocols below.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol

from chatcli.ui.console import UI


class Event(Protocol):
    """One streamed piece of an answer (a token, or a server's chunk)."""

    text: str
    thinking: str  # what a reasoning model thought in this piece ("" for the answer)
    candidates: Any  # None, or what was weighed: `chosen_prob` is the token's probability
    drafted: bool  # --speculate: a drafted token the model accepted


class ThinkingShown:
    """A reasoning model's thinking, before its answer: dim Markdown under a dim
    "Thinking" line on a terminal, closed by a dim rule; in a pipe (asked for with
    --show-thinking) between `<think>` and `</think>` lines, as the model wrote it."""

    def __init__(self, ui: UI) -> None:
        self.ui = ui
        self.writer: Any = None
        self.closed = False

    def write(self, delta: str) -> None:
        if self.closed or not delta:
            return
        if self.writer is None:
            if self.ui.out_tty:
                self.ui.out_console.print("Thinking", style="dim italic")
                self.writer = self.ui.answer_writer(style="dim")
            else:
                from chatcli.ui.answer import PlainWriter

                self.writer = PlainWriter(self.ui.out)
                self.writer.write("<think>\n")
        self.writer.write(delta)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.writer is None:
            return
        self.writer.close()
        if self.ui.out_tty:
            self.ui.out_console.rule(style="dim")
        else:
            self.writer.write("</think>\n\n")


class Figures(Protocol):
    prompt_tokens: int
    time_to_first_token_s: float
    decode_tokens_per_s: float
    finish_reason: str | None


class Decoding(Protocol):
    strategy: str
    seed: int | None


class Span(Protocol):
    """A message of the prompt and the attention the answer paid to it."""

    label: str
    index: int | None  # None: not a message (e.g. the template's own tokens)
    start: int
    end: int
    attention: float


class Turn(Protocol):
    role: str
    content: str
    interrupted: bool


class Shown(Protocol):
    system: str | None
    turns: Sequence[Turn]


def stream_answer(ui: UI, events: Iterable[Event], shown: list[Any], *,
                  coloured: bool = False, quiet: bool = False, thinking: bool = True,
                  drafts: bool = False) -> None:
    """Show the answer while `events` streams; every event is appended to `shown`.
    `thinking`: show what a reasoning model thinks before it answers (`ThinkingShown`).
    On a terminal, `coloured` colours each token by its probability and `drafts`
    (--speculate) underlines the drafted tokens the model accepted: both as plain text,
    token by token (Markdown would lose the marks)."""
    if quiet:
        shown.extend(events)
        return
    thought = ThinkingShown(ui) if thinking else None
    if (coloured or drafts) and ui.out_tty:
        from chatcli.ui.candidates import ColouredWriter

        colours = ColouredWriter(ui)

        def write(e: Event) -> None:
            prob = e.candidates.chosen_prob if coloured and e.candidates else None
            colours.write(e.text, prob, drafts and getattr(e, "drafted", False))

        close: Callable[[], None] = colours.close
    else:
        writer = ui.answer_writer(markdown=False if coloured else None)

        def write(e: Event) -> None:
            writer.write(e.text)

        close = writer.close
    try:
        for event in events:
            shown.append(event)
            if thought is not None and event.thinking:
                thought.write(event.thinking)
            if event.text and thought is not None:
                thought.close()
            if event.text or not event.thinking:
                write(event)
    finally:
        if thought is not None:
            thought.close()
        close()


def stopped_note(figures: Figures, max_new_tokens: int, room: int, how: str) -> str | None:
    """The line that says an answer ends where the token limit cut it, None when something
    else ended it. The limit was `max_new_tokens` (set by `how`, a flag or a command)
    unless the context window had `room` for fewer tokens after the prompt."""
    if figures.finish_reason != "length":
        return None
    if max_new_tokens <= room:
        return f"(stopped at the {max_new_tokens}-token limit: {how})"
    return f"(stopped at {max(room, 0)} tokens: the context window is full)"


def stats_line(model: str, decoding: Decoding, figures: Figures, completion_tokens: int, *,
               reused: int | None = None, implementation: str | None = None,
               thinking_tokens: int = 0) -> str:
    """The figures of one answer, as `key=value` pairs on one line (a reasoning model's
    thinking and answer tokens apart, where it thought)."""
    parts = [f"model={model}", f"strategy={decoding.strategy}", f"seed={decoding.seed}",
             f"prompt_tokens={figures.prompt_tokens}"]
    if reused is not None:
        parts.append(f"reused_prompt_tokens={reused}")
    parts.append(f"completion_tokens={completion_tokens}")
    if thinking_tokens:
        parts += [f"thinking_tokens={thinking_tokens}",
                  f"answer_tokens={completion_tokens - thinking_tokens}"]
    parts += [
              f"time_to_first_token={figures.time_to_first_token_s:.3f}s",
              f"tokens_per_second={figures.decode_tokens_per_s:.1f}",
              f"finish_reason={figures.finish_reason}"]
    if implementation is not None:
        parts.append(f"implementation={implementation}")
    speculation = getattr(figures, "speculation", None)
    if speculation is not None:
        parts += speculation_parts(speculation)
    return " ".join(parts)


def speculation_parts(s: Any) -> list[str]:
    """--speculate's figures as `key=value` pairs (a `SpeculationStats`)."""

    def figure(x: float | None, form: str) -> str:
        return "-" if x is None else format(x, form)

    return [f"speculate={s.source}", f"drafted={s.drafted}", f"accepted={s.accepted}",
            f"acceptance_rate={figure(s.acceptance, '.2f')}",
            f"mean_accepted_length={figure(s.mean_accepted, '.2f')}",
            f"speed_up_estimate={figure(s.speed_up, '.2f')}x"]


def speculation_note(s: Any) -> str:
    """The line under an answer whose drafted tokens were marked."""
    if not s.drafted:
        return f"(speculate {s.source}: nothing drafted)"
    speed = "" if s.speed_up is None else f"; about {s.speed_up:.2f}x plain decoding"
    return (f"(speculate {s.source}: {s.accepted} of {s.drafted} drafted tokens accepted, "
            f"underlined{speed})")


def show_spans(ui: UI, spans: Sequence[Span]) -> None:
    """The answer's attention per message of its prompt, as a table."""
    from chatcli.ui.tables import show_table

    ui.print("attention of the answer per turn (mean over layers, heads, answer tokens):")
    show_table(ui, ["message", "role", "tokens", "attention"], [
        ["-" if s.index is None else str(s.index + 1), s.label, str(s.end - s.start),
         f"{s.attention:.3f}"] for s in spans
    ])


def show_conversation(ui: UI, conversation: Shown,
                      user_text: Callable[[str], str] = str) -> None:
    """A saved conversation as it was: the system prompt, questions (each as `user_text`
    gives it), answers."""
    if conversation.system:
        ui.print_raw(f"[system] {conversation.system}")
    for message in conversation.turns:
        mark = " (interrupted)" if message.interrupted else ""
        if message.role == "user":
            ui.print_raw(f"> {user_text(message.content)}")
        else:
            writer = ui.answer_writer()
            writer.write(message.content + mark)
            writer.close()

