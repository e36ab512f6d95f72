"""Strategies side by side: one answer per strategy with its figures.

Contract: `show_comparison(ui, results)` prints each result (name, answer,
completion tokens, sequence log-probability, mean per-token entropy, time,
tokens/s, first step where it diverges from the first answer; under a constraint the
mean probability per step it removed, and "incomplete" where it was not satisfied): columns when the
terminal is wide enough for all of them (>= 38 columns each), stacked panels
otherwise, and plain sections when stdout is not a terminal. Knows nothing about
models or decoding.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from chatcli.ui.answer import printable
from chatcli.ui.console import UI

MIN_COLUMN = 38


def figures(r: dict[str, Any]) -> str:
    entropy = "-" if r["mean_entropy"] is None else f"{r['mean_entropy']:.2f}"
    logprob = "-" if r["logprob"] is None else f"{r['logprob']:.2f}"
    diverges = r["diverges_at"]
    where = "-" if diverges is None else f"step {diverges}"
    shape = ""
    if r.get("mean_removed") is not None:
        shape = f"removed {r['mean_removed']:.2f} · "
    if r.get("constraint_satisfied") is False:
        shape += "incomplete · "
    if r.get("parts_at") is not None:
        shape += f"parts from its answer at step {r['parts_at']} · "
    return (f"{r['completion_tokens']} tokens · log-prob {logprob} · "
            f"entropy {entropy} · {shape}{r['seconds']:.2f} s · "
            f"{r['tokens_per_second']:.1f} tok/s · diverges: {where}")


def show_comparison(ui: UI, results: Sequence[dict[str, Any]]) -> None:
    if not ui.out_tty:
        for r in results:
            ui.print_raw(f"== {r['label']} ==")
            ui.print_raw(r["text"])
            ui.print_raw(figures(r))
            ui.print_raw("")
        return
    from rich.columns import Columns
    from rich.console import Group
    from rich.panel import Panel
    from rich.text import Text

    width = ui.out_console.size.width
    panels = [
        Panel(Group(Text(printable(r["text"])), Text(""), Text(figures(r), style="dim")),
              title=Text(r["label"], style="bold"), title_align="left")
        for r in results
    ]
    if width >= MIN_COLUMN * len(results):
        column = width // len(results) - 1
        for p in panels:
            p.width = column
        ui.print(Columns(panels, equal=True, expand=False))
    else:
        for p in panels:
            ui.print(p)
