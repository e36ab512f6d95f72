"""Showing what the model weighed: answers coloured by probability, per-step tables.

Contract: `ColouredWriter` streams an answer with each token coloured by the
probability the strategy gave it (green likely … red unlikely) on a terminal;
`show_table(ui, events, token_text)` prints one row per generated token: the chosen
token, its probability, the top-K of the model's raw distribution and of the
distribution the strategy drew from (after penalties, temperature, top-k, top-p,
min-p, typical), labelled; under a constraint (--schema, --regex, ...) a column of
the probability the constraint removed, and the model's top-k it removed marked `✗`.
`token_records` is the same for --json (`removed_mass`, `removed` per candidate).
Knows nothing about models or decoding.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

from chatcli.ui.answer import printable
from chatcli.ui.console import UI

TokenText = Callable[[int], str]


def style_for(p: float) -> str:
    if p >= 0.9:
        return "green"
    if p >= 0.5:
        return "yellow"
    if p >= 0.2:
        return "dark_orange"
    return "red"


class ColouredWriter:
    """An answer as plain text, each piece in its own style, wrapped at words.

    A word is held until the whitespace after it (or `close`) shows where it ends, then
    written on the current line if it fits, else on the next (a space at the break is
    left out); a word wider than the terminal is cut by the terminal. What `write` was
    given is queued first and `close` writes what is left: a Ctrl-C while a delta was
    being written loses none of it."""

    def __init__(self, ui: UI) -> None:
        self.console = ui.out_console
        self.width = max(self.console.width, 1)
        self.column = 0
        self.queue: list[list[str]] = []  # [text not yet laid out, its style]
        self.word: list[tuple[str, str]] = []  # the unfinished word's pieces, styled
        self._newline = True

    def write(self, delta: str, prob: float | None, drafted: bool = False) -> None:
        """`delta` coloured by `prob` (None: not coloured), underlined if `drafted`."""
        style = "" if prob is None else style_for(prob)
        if drafted:
            style = f"{style} underline".strip()
        self.queue.append([printable(delta), style])
        self._lay_out()

    def _lay_out(self) -> None:
        while self.queue:
            head = self.queue[0]
            text, style = head
            if not text:
                self.queue.pop(0)
                continue
            cut = next((i for i, c in enumerate(text) if c.isspace()), len(text))
            if cut:  # a piece of a word
                self.word.append((text[:cut], style))
                head[0] = text[cut:]
                continue
            head[0] = text[1:]
            self._end_word()
            if text[0] == "\n" or self.column >= self.width:  # (a space there: the break)
                self._put("\n", "")
                self.column = 0
            else:
                self._put(text[0], style)
                self.column += 1

    def _end_word(self) -> None:
        from rich.cells import cell_len
        from rich.text import Text

        word, self.word = self.word, []
        if not word:
            return
        size = sum(cell_len(text) for text, _ in word)
        if self.column and self.column + size > self.width:
            self._put("\n", "")
            self.column = 0
        end = self.column + size
        self.column = end if end <= self.width else end % self.width
        self.console.print(Text.assemble(*word), end="")
        self._newline = False

    def _put(self, text: str, style: str) -> None:
        from rich.text import Text

        self.console.print(Text(text, style=style), end="")
        self._newline = text.endswith("\n")

    def close(self) -> None:
        self._lay_out()
        self._end_word()
        if not self._newline:
            self.console.print()


def shown(text: str) -> str:
    """A token's text made visible: quotes, escapes for whitespace and control bytes."""
    return repr(text)


def _top(pairs: Sequence[tuple[int, float]], token_text: TokenText,
         removed: Sequence[int] = ()) -> str:
    return "  ".join(f"{'✗' if i in removed else ''}{shown(token_text(i))} {p:.3f}"
                     for i, p in pairs)


def show_table(ui: UI, events: Sequence[Any], token_text: TokenText) -> None:
    from chatcli.ui.tables import show_table as table

    rows = []
    constrained = any(e.candidates is not None and e.candidates.removed_mass is not None
                      for e in events)
    for n, e in enumerate(events, start=1):
        c = e.candidates
        if c is None:
            continue
        row = [str(n), shown(token_text(e.token_id)), f"{c.chosen_prob:.3f}",
               f"{math.exp(e.logprob):.3f}", f"{c.entropy:.2f}"]
        if constrained:
            row.append("-" if c.removed_mass is None else f"{c.removed_mass:.3f}")
        rows.append([*row, _top(c.raw, token_text, c.removed), _top(c.drawn_from, token_text)])
    if not rows:  # a server that ignored the request for log-probabilities
        ui.warn("no per-token candidates came back (the server returned no log-probabilities)")
        return
    removed = ["removed"] if constrained else []
    table(ui, ["step", "token", "p (drawn)", "p (model)", "entropy", *removed,
               "model top-k" + (" (✗ removed)" if constrained else ""), "drawn-from top-k"],
          rows)


def token_records(events: Sequence[Any], token_text: TokenText,
                  ids: bool = True) -> list[dict[str, Any]]:
    """`ids`: the backend gives vocabulary ids (its `token_ids` capability); without, a
    token is known by its text alone and its "id" is null."""

    def _id(token_id: int) -> int | None:
        return token_id if ids else None

    out = []
    for e in events:
        c = e.candidates
        record: dict[str, Any] = {"id": _id(e.token_id), "text": token_text(e.token_id),
                                  "logprob": e.logprob}
        if getattr(e, "drafted", False):  # --speculate: drafted, and accepted
            record["drafted"] = True
        if c is not None:
            record["entropy"] = c.entropy
            record["probability_drawn"] = c.chosen_prob
            record["top_model"] = [{"id": _id(i), "text": token_text(i), "p": p}
                                   for i, p in c.raw]
            if c.removed_mass is not None:
                record["removed_mass"] = c.removed_mass
                for entry, (i, _) in zip(record["top_model"], c.raw, strict=True):
                    entry["removed"] = i in c.removed
            record["top_drawn_from"] = [
                {"id": _id(i), "text": token_text(i), "p": p} for i, p in c.drawn_from
            ]
        out.append(record)
    return out

