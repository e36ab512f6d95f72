"""The screen a person sees equals the answer chatcli saved: every word, in order, once.

The real `chatcli` runs in a pseudo-terminal; its output goes through a terminal
emulator (pyte), and the emulated screen plus scrollback is compared word for word
with the reply stored in the history. The answers come from a scripted server (long
Markdown: paragraphs, lists, a heading, code blocks), streamed word by word.
"""

from __future__ import annotations

import json
import re
import signal
import termios
from pathlib import Path

import pytest

from conftest import run_cli
from screen import Terminal, add_script_alias, script_server, words


def paragraph(n: int, length: int) -> str:
    return " ".join(f"p{n}w{i}" for i in range(length)) + "."


LONG = "\n\n".join([
    "Once upon a time " + paragraph(1, 70),
    paragraph(2, 55) + " " + paragraph(3, 30),
    "# Baking notes\n\n- " + "\n- ".join(f"item{i} " + paragraph(10 + i, 6) for i in range(5)),
    "1. first " + paragraph(20, 8) + "\n2. second " + paragraph(21, 8),
    "```python\n" + "\n".join(f"def f{i}(x):\n    return x + {i}" for i in range(12)) + "\n```",
    paragraph(4, 90),
    "The **end** of `the` story " + paragraph(5, 12),
])
# A code block taller than the screen, then prose after it.
TALL_CODE = ("Here is code:\n\n```\n" + "\n".join(f"line{i} = {i}" for i in range(60))
             + "\n```\n\nAfter the code " + paragraph(6, 40))

NOTICE = "chatcli: script, greedy decoding; /help for commands, Ctrl-D to leave"


def answer_words(lines: list[str], *printed: str) -> list[str]:
    """The words on the screen, less those of chatcli's own `printed` lines (each once:
    the start-up notice, echoed questions, warnings), wherever the terminal wrapped them."""
    got = words("\n".join(lines))
    for text in printed:
        seq = words(text)
        at = next((i for i in range(len(got)) if got[i : i + len(seq)] == seq), None)
        assert at is not None, f"{text!r} is not on the screen:\n" + "\n".join(lines)
        del got[at : at + len(seq)]
    return got


def saved_replies(home: Path) -> list[dict]:
    import os

    os.environ["CHATCLI_HOME"] = str(home)
    result = run_cli(["history", "export", "1", "--format", "json"])
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    return [m for m in data["messages"] if m["role"] == "assistant"]


@pytest.fixture
def scripted(home: Path):  # type: ignore[no-untyped-def]
    with script_server(LONG) as server:
        add_script_alias(home, server)
        yield server


@pytest.mark.parametrize("columns", [40, 80, 200])
def test_ask_leaves_the_whole_answer_on_screen(home: Path, scripted, columns: int) -> None:
    term = Terminal(home, ["ask", "-m", "script", "Tell a long story"], columns=columns)
    assert term.finish() == 0
    (reply,) = saved_replies(home)
    assert reply["content"] == LONG
    assert answer_words(term.lines()) == words(LONG)
    assert not term.cursor_hidden


@pytest.mark.parametrize("columns", [40, 80, 200])
def test_chat_leaves_every_answer_on_screen(home: Path, scripted, columns: int) -> None:
    term = Terminal(home, ["chat", "-m", "script"], columns=columns, lines=30)
    term.wait_for("Ctrl-D to leave")
    term.wait_for(lambda t: t.rstrip().endswith("›"))
    term.send_line("First question")
    term.wait_for(lambda t: t.count("›") >= 2 and t.rstrip().endswith("›"))
    term.send_line("Second question")
    term.wait_for(lambda t: t.count("›") >= 3 and t.rstrip().endswith("›"))
    term.child.sendeof()
    assert term.finish() == 0
    replies = saved_replies(home)
    assert [r["content"] for r in replies] == [LONG, LONG]
    assert answer_words(term.lines(), NOTICE, "First question", "Second question") == words(
        LONG + "\n" + LONG)


def test_a_code_block_taller_than_the_screen(home: Path) -> None:
    with script_server(TALL_CODE) as server:
        add_script_alias(home, server)
        term = Terminal(home, ["ask", "-m", "script", "Code"], columns=60, lines=20)
        assert term.finish() == 0
    assert answer_words(term.lines()) == words(TALL_CODE)


@pytest.mark.parametrize("env", [{"NO_COLOR": "1"}, {"TERM": "dumb"}])
def test_no_color_and_dumb_terminals(home: Path, scripted, env: dict[str, str]) -> None:
    term = Terminal(home, ["ask", "-m", "script", "Story"], columns=80, env=env)
    assert term.finish() == 0
    if env.get("TERM") == "dumb":  # plain text streamed as it comes, nothing else
        assert term.raw.decode().replace("\r\n", "\n") == LONG + "\n"
    else:
        assert answer_words(term.lines()) == words(LONG)


def test_ctrl_c_mid_answer_leaves_the_partial_answer_once(home: Path) -> None:
    with script_server(LONG, pace=0.02) as server:
        add_script_alias(home, server)
        term = Terminal(home, ["chat", "-m", "script"], columns=80, lines=30)
        term.wait_for(lambda t: t.rstrip().endswith("›"))
        term.send_line("Go")
        term.wait_words(120)
        term.child.sendintr()
        term.wait_for("answer interrupted; the partial reply is kept in the history")
        term.wait_for(lambda t: t.rstrip().endswith("›"))
        term.child.sendeof()
        assert term.finish() == 0
    (reply,) = saved_replies(home)
    assert reply["interrupted"] and 0 < len(reply["content"]) < len(LONG)
    lines = term.lines()
    warning = next(i for i, line in enumerate(lines) if "answer interrupted" in line)
    assert answer_words(lines[:warning], NOTICE, "Go") == words(reply["content"])


@pytest.mark.parametrize("new_columns", [120, 50])
def test_resizing_mid_answer(home: Path, new_columns: int) -> None:
    with script_server(LONG, pace=0.01) as server:
        add_script_alias(home, server)
        term = Terminal(home, ["ask", "-m", "script", "Story"], columns=80)
        term.wait_words(100)
        term.resize(new_columns)
        shown_before = len(words(term.text()))
        assert term.finish() == 0
    got = answer_words(term.lines())
    if new_columns > 80:  # nothing on the screen was cut: all of it, once
        assert got == words(LONG)
    else:  # the emulator (like xterm) crops rows that no longer fit: what follows is whole
        unique = [w for w in got if re.fullmatch(r"p\d+w\d+", w)]
        assert len(unique) == len(set(unique))  # no word twice
        tail = words(LONG)[shown_before + 20:]
        assert got[-len(tail):] == tail


def sane(attrs: list | None) -> bool:
    """Echo and line editing on: the shell after chatcli gets a usable terminal."""
    return attrs is not None and bool(attrs[3] & termios.ECHO and attrs[3] & termios.ICANON)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_terminated_mid_answer_keeps_the_reply_and_the_terminal(home: Path,
                                                                sig: signal.Signals) -> None:
    with script_server(LONG, pace=0.02) as server:
        add_script_alias(home, server)
        term = Terminal(home, ["chat", "-m", "script"], columns=80, lines=30)
        term.wait_for(lambda t: t.rstrip().endswith("›"))
        term.send_line("Go")
        term.wait_words(80)
        assert term.cursor_hidden  # the live answer hides the cursor while it draws
        term.child.kill(sig)
        assert term.finish() == 128 + sig
    assert not term.cursor_hidden
    assert sane(term.final_termios)
    (reply,) = saved_replies(home)
    assert reply["interrupted"] and reply["content"]
    assert answer_words(term.lines(), NOTICE, "Go") == words(reply["content"])


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_terminated_at_the_prompt_restores_the_terminal(home: Path, scripted,
                                                        sig: signal.Signals) -> None:
    term = Terminal(home, ["chat", "-m", "script"], columns=80)
    term.wait_for(lambda t: t.rstrip().endswith("›"))
    term.child.send("half a thought")
    term.wait_for("half a thought")
    term.child.kill(sig)
    assert term.finish() == 128 + sig
    assert not term.cursor_hidden
    assert sane(term.final_termios)
