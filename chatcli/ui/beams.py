"""Why a search picked what it picked: hypotheses and pruned beams.

Contract: `show_beams(ui, title, score, hypotheses, pruned)` prints the returned
hypotheses with their scores (`score` says what a score is, e.g. "log-prob /
length^1.0") and raw log-probabilities, and every pruned beam with the step at which
it left the search, under `title` (how the strategy searched): a rich tree on a
terminal, indented plain text otherwise. Knows nothing about models or strategies:
hypotheses and beams are read through the small protocols below.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from chatcli.ui.console import UI


class Hypothesis(Protocol):
    text: str
    token_ids: list[int]
    score: float
    logprob: float
    finished: bool


class Pruned(Protocol):
    step: int
    score: float
    text: str


def _lines(hypotheses: Sequence[Hypothesis], pruned: Sequence[Pruned]
           ) -> tuple[list[str], list[str]]:
    hyps = [
        f"#{n} score {h.score:.4f} (raw log-prob {h.logprob:.3f}, "
        f"{len(h.token_ids)} tokens, {'finished' if h.finished else 'cut at the limit'}):"
        f" {h.text!r}"
        for n, h in enumerate(hypotheses, start=1)
    ]
    cut = [f"step {p.step}: running score {p.score:.3f}: {p.text!r}" for p in pruned]
    return hyps, cut


def show_beams(ui: UI, title: str, score: str, hypotheses: Sequence[Hypothesis],
               pruned: Sequence[Pruned]) -> None:
    hyps, cut = _lines(hypotheses, pruned)
    if ui.out_tty:
        from rich.text import Text
        from rich.tree import Tree

        tree = Tree(Text(title, style="bold"))
        branch = tree.add(Text("hypotheses (best first" + (f", score = {score})" if score
                                                          else ")")))
        for line in hyps:
            branch.add(Text(line))
        gone = tree.add(Text(f"pruned beams ({len(cut)})"))
        for line in cut:
            gone.add(Text(line, style="dim"))
        ui.print(tree)
        return
    ui.print(title)
    ui.print("hypotheses (best first):")
    for line in hyps:
        ui.print(f"  {line}")
    ui.print(f"pruned beams ({len(cut)}):")
    for line in cut:
        ui.print(f"  {line}")
