"""What a person sees when an answer is cut by the token limit, and when a /read blocks.

The real `chatcli` runs in a pseudo-terminal read through a terminal emulator
(tests/screen.py), against a scripted server. An answer that ends with finish reason
"length" is followed by one line saying so, on a terminal only: piped output stays the
answer itself. Ctrl-C on a `/read` of a FIFO that no one writes cancels that `/read`
alone; the chat goes on.
"""

from __future__ import annotations

import json
import os
import termios
import time
from pathlib import Path

import pytest

from conftest import run_cli
from screen import Terminal, add_script_alias, script_server, words

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


def test_ctrl_c_on_a_blocked_read_cancels_the_read_alone(home: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch
                                                         ) -> None:
    monkeypatch.chdir(tmp_path)  # chatcli starts there: /read names the FIFO briefly
    fifo = "pipe"
    os.mkfifo(fifo)  # no one writes it: opening it for reading blocks
    with script_server("Hello back.") as server:
        add_script_alias(home, server)
        term = Terminal(home, ["chat", "-m", "script"], columns=100, lines=30)
        term.wait_for(lambda t: t.rstrip().endswith("›"))
        term.send_line(f"/read {fifo}")
        term.wait_for(f"/read {fifo}")
        # the input line has given the terminal back (Ctrl-C is a signal again) once it
        # has left the prompt; then chatcli blocks in open()
        deadline = time.monotonic() + 30
        while not termios.tcgetattr(term.child.child_fd)[3] & termios.ISIG:
            assert time.monotonic() < deadline, "the prompt never gave the terminal back"
            term.pump(0.05)
        time.sleep(0.5)
        term.child.sendintr()
        term.wait_for(f"warning: /read {fifo} cancelled (Ctrl-C): nothing attached")
        term.wait_for(lambda t: t.rstrip().endswith("›"))
        term.send_line("Hi")
        term.wait_for("Hello back.")
        term.wait_for(lambda t: t.rstrip().endswith("›"))
        term.child.sendeof()
        assert term.finish() == 0
    lines = term.lines()
    # one line (after the ^C the terminal may echo), and the chat went on
    cancelled = [line.removeprefix("^C") for line in lines if "cancelled" in line]
    assert cancelled == ["warning: /read pipe cancelled (Ctrl-C): nothing attached"]
    assert [(m["role"], m["content"]) for m in saved(home)] == [
        ("user", "Hi"), ("assistant", "Hello back.")]  # nothing was attached to "Hi"
    assert words("\n".join(lines)).count("Hello") == 1
