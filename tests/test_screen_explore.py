"""What a person sees of /alt and of a constraint's candidates table: the real `chatcli chat`
in a pty, read through a terminal emulator (tests/screen.py), narrow and wide, on the tiny
test model; what is saved is compared with what is shown."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from conftest import run_cli
from screen import Terminal


def replies(home: Path) -> list[str]:
    import os

    os.environ["CHATCLI_HOME"] = str(home)
    result = run_cli(["history", "export", "1", "--format", "json"])
    assert result.exit_code == 0, result.stderr
    return [m["content"] for m in json.loads(result.stdout)["messages"]
            if m["role"] == "assistant"]


def flat(text: str) -> str:
    """Text without its white space: a wrapped line compares equal to the line."""
    return re.sub(r"\s+", "", text)


def prompt_count(text: str) -> int:
    return len(re.findall(r"^› ?", text, flags=re.M))


@pytest.mark.parametrize("columns", [50, 120])
def test_alt_table_keeps_each_candidate_whole(home: Path, columns: int) -> None:
    term = Terminal(home, ["chat", "-n", "8"], columns=columns, lines=60)
    term.wait_for("Ctrl-D to leave")
    term.send_line("Hello there")
    term.wait_for(lambda t: prompt_count(t) >= 2 and t.rstrip().endswith("›"))
    term.send_line("/alt")
    term.wait_for("/alt STEP RANK takes another token")
    screen = "\n".join(term.lines())
    # every candidate "N. 'token' p" stands whole on one line, ranks 1..5 per listed step
    ranks = re.findall(r"(?<![\d.])([1-5])\. (['\"]).*?\2 (\d\.\d{3})", screen)
    assert len(ranks) == 25 and [r for r, _, _ in ranks] == list("12345") * 5
    term.send_line("/alt 2 2")
    note = flat("the previous answer stays as a branch (/branches)")  # lines may wrap in it
    term.wait_for(lambda t: note in flat(t))
    term.wait_for(lambda t: t.rstrip().endswith("›") and note in flat(t.split("›")[-2]))
    term.child.sendeof()
    assert term.finish() == 0
    (saved,) = replies(home)  # the alternative is the current path's answer
    tail = flat("\n".join(term.lines())).split(note, 1)[1]
    assert flat(saved) in tail


def test_constraint_candidates_table_on_a_terminal(home: Path) -> None:
    term = Terminal(home, ["chat", "-n", "6", "--choice", "yes,no"], columns=100, lines=40)
    term.wait_for("Ctrl-D to leave")
    term.send_line("/candidates 3")
    term.send_line("Is it?")
    term.wait_for(lambda t: "removed" in t and t.rstrip().endswith("›"))
    term.child.sendeof()
    assert term.finish() == 0
    screen = "\n".join(term.lines())
    header = next(line for line in term.lines() if "removed" in line and "step" in line)
    assert re.search(r"step\s*┃\s*token\s*┃.*entropy\s*┃\s*removed\s*┃", header)
    assert "✗" in screen  # the model's top tokens the choice removed
    (saved,) = replies(home)
    assert saved in ("yes", "no") and saved in screen
