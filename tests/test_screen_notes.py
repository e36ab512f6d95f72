"""What a person sees when an answer is cut by the token limit.

The real `chatcli` runs in a pseudo-terminal read through a terminal emulator
(tests/screen.py), against a scripted server. An answer that ends with finish reason
"length" is followed by one line saying so, on a terminal only: piped output stays the
answer itself.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from conftest import run_cli
from screen import Terminal, add_script_alias, script_server

ANSWER = "The story begins on a cold night, when the"  # cut mid-sentence


def saved(home: Path) -> list[dict]:
    os.environ["CHATCLI_HOME"] = str(home)
    result = run_cli(["history", "export", "1", "--format", "json"])
    assert result.exit_code == 0, result.stderr
    return list(json.loads(result.stdout)["messages"])


@pytest.fixture
def cut_short(home: Path):  # type: ignore[no-untyped-def]
    with script_server(ANSWER, finish="length") as server:
        add_script_alias(home, server)
        yield server


def test_ask_on_a_terminal_says_the_token_limit_stopped_the_answer(home: Path,
                                                                    cut_short) -> None:
    term = Terminal(home, ["ask", "-m", "script", "-n", "40", "Tell a story"], columns=80)
    assert term.finish() == 0
    assert term.lines() == [ANSWER, "(stopped at the 40-token limit: -n)"]


def test_chat_on_a_terminal_says_the_token_limit_stopped_the_answer(home: Path,
                                                                     cut_short) -> None:
    term = Terminal(home, ["chat", "-m", "script", "-n", "40"], columns=80, lines=30)
    term.wait_for(lambda t: t.rstrip().endswith("›"))
    term.send_line("Tell a story")
    term.wait_for(lambda t: t.count("›") >= 2 and t.rstrip().endswith("›"))
    term.child.sendeof()
    assert term.finish() == 0
    lines = term.lines()
    at = lines.index(ANSWER)
    assert lines[at + 1] == "(stopped at the 40-token limit: -n, or /set max_new_tokens N)"


def test_piped_output_is_the_answer_alone(home: Path, cut_short) -> None:
    result = run_cli(["ask", "-m", "script", "-n", "40", "Tell a story"])
    assert (result.exit_code, result.stdout, result.stderr) == (0, ANSWER + "\n", "")
    chat = run_cli(["chat", "-m", "script", "-n", "40"], input="Tell a story\n")
    assert (chat.exit_code, chat.stdout, chat.stderr) == (0, ANSWER + "\n", "")
    as_json = json.loads(run_cli(["ask", "-m", "script", "-n", "40", "--json", "Hi"]).stdout)
    assert as_json["finish_reason"] == "length"


def test_an_answer_that_ends_by_itself_gets_no_note(home: Path) -> None:
    with script_server(ANSWER + " wind blew.") as server:
        add_script_alias(home, server)
        term = Terminal(home, ["ask", "-m", "script", "-n", "40", "Tell a story"], columns=80)
        assert term.finish() == 0
    assert term.lines() == [ANSWER + " wind blew."]
