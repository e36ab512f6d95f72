"""Why beam search picked what it picked: hypotheses and pruned beams.

Contract: `show_beams(ui, params, hypotheses, pruned)` prints the returned
hypotheses with length-normalised and raw scores, and every pruned beam with the
step at which it left the search: a rich tree on a terminal, indented plain text
otherwise. Knows nothing about models.
"""

from __future__ import annotations

from typing import Any

from chatcli.ui.console import UI


def _lines(params: Any, hypotheses: list[dict[str, Any]], pruned: list[dict[str, Any]],
           ) -> tuple[str, list[str], list[str]]:
    title = (f"beam search: {params.num_beams} beams, length penalty {params.length_penalty}, "
             f"early stopping {params.early_stopping}")
    hyps = [
        f"#{n} score {h['score']:.4f} (raw log-prob {h['logprob']:.3f}, "
        f"{len(h['token_ids'])} tokens, {'finished' if h['finished'] else 'cut at the limit'}):"
        f" {h['text']!r}"
        for n, h in enumerate(hypotheses, start=1)
    ]
    cut = [f"step {p['step']}: running score {p['score']:.3f}: {p['text']!r}" for p in pruned]
    return title, hyps, cut


def show_beams(ui: UI, params: Any, hypotheses: list[dict[str, Any]],
               pruned: list[dict[str, Any]]) -> None:
    title, hyps, cut = _lines(params, hypotheses, pruned)
    if ui.out_tty:
        from rich.text import Text
        from rich.tree import Tree

        tree = Tree(Text(title, style="bold"))
        branch = tree.add(Text(f"hypotheses (best first, score = log-prob / length^"
                               f"{params.length_penalty})"))
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
