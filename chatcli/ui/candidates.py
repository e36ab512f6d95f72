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
    def __init__(self, ui: UI) -> None:
        self.console = ui.out_console
        self._newline = True

    def write(self, delta: str, prob: float | None, drafted: bool = False) -> None:
        """`delta` coloured by `prob` (None: not coloured), underlined if `drafted`."""
        from rich.text import Text

        delta = printable(delta)
        if delta:
            style = "" if prob is None else style_for(prob)
            if drafted:
                style = f"{style} underline".strip()
            self.console.print(Text(delta, style=style), end="")
            self._newline = delta.endswith("\n")

    def close(self) -> None:
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

