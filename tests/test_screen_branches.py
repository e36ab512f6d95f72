"""What a person sees of branches in `chatcli chat`: /edit, /retry, /branches, /switch and
`chat -c`, the real chatcli driven in a pty and read through a terminal emulator
(tests/screen.py), narrow and wide, on the tiny test model; what the history saved is
compared with what the screen showed.

/edit puts the old message in the input line: the test reads it there before typing, then
changes it with key presses (backspaces and typing; Ctrl-U to empty it) as a person would.
The /retry is answered with fewer new tokens, so that its answer differs from the first
(greedy decoding would repeat it word for word) and the screen shows which one is current.
The tiny model's answers hold control characters, which a live answer never shows: `flat`
drops them (with white space, where the terminal wraps) before a comparison. The last
test checks that the /branches listing and `history show --tree` never write them either.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from conftest import run_cli
from screen import Terminal

PROMPT = "›"
BACKSPACE, CTRL_U = "\x7f", "\x15"
CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def flat(text: str) -> str:
    """`text` as the screen shows it, without its white space (a wrapped line compares
    equal to the line) and without control characters."""
    return re.sub(r"\s+", "", CONTROL.sub("", text))


class Chat:
    """`chatcli chat` in a pty, typed into as a person does; each entry gives back what
    chatcli printed for it."""

    def __init__(self, home: Path, args: list[str], columns: int) -> None:
        self.term = Terminal(home, ["chat", "-n", "8", *args], columns=columns, lines=40)
        # answer cursor position requests as a terminal does (pyte hands its reports to
        # `write_process_input`): else prompt_toolkit, left waiting at a prompt for over
        # 2 s, prints "WARNING: your terminal doesn't support cursor position requests"
        self.term.screen.write_process_input = self.term.child.send  # type: ignore[method-assign]
        self.term.wait_for(self.idle(0))

    def prompts(self) -> list[int]:
        """The rows that start with the prompt (an entry, or the empty input line)."""
        return [i for i, line in enumerate(self.term.lines()) if line.startswith(PROMPT)]

    def idle(self, count: int) -> Callable[[str], bool]:
        """The screen shows an empty input line after more than `count` prompts."""
        def test(text: str) -> bool:
            lines = text.splitlines()
            return (bool(lines) and lines[-1] == PROMPT
                    and sum(line.startswith(PROMPT) for line in lines) > count)
        return test

    def type(self, keys: str) -> list[str]:
        """Type `keys` (ending with Enter) into the input line; the rows printed after the
        entry, up to the next empty input line."""
        before = self.prompts()
        self.term.child.send(keys)
        self.term.wait_for(self.idle(len(before)))
        return self.term.lines()[before[-1] + 1: self.prompts()[len(before)]]

    def send(self, line: str) -> list[str]:
        return self.type(line + "\r")

    def opens(self, command: str, draft: str) -> list[str]:
        """Send `command` (an /edit) and wait until the input line holds `draft`, typed by
        no one: the rows printed between."""
        before = self.prompts()
        self.term.send_line(command)
        self.term.wait_for(lambda t: t.splitlines()[-1] == f"{PROMPT} {draft}"
                           and sum(r.startswith(PROMPT) for r in t.splitlines()) > len(before))
        return self.term.lines()[before[-1] + 1: -1]

    def leave(self) -> None:
        self.term.child.sendeof()
        assert self.term.finish() == 0


def export(home: Path) -> dict[str, Any]:
    """Conversation 1 as `chatcli history export 1 --format json` writes it."""
    result = run_cli(["history", "export", "1", "--format", "json"])
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


def listing(rows: list[str], number: int, role: str, lengths: list[int],
            current: int) -> list[str]:
    """The texts a /branches listing of message `number` shows for its versions (flat,
    " …" dropped), checking its header, the numbers 1.., `*` on `current` alone and the
    length of each version's branch in messages."""
    versions = "".join(rf"({'[*]' if k == current else ''}){k}\.(.*?)\({n}messages?\)"
                       for k, n in enumerate(lengths, start=1))
    head = flat(f"message {number} ({role}) has {len(lengths)} versions; "
                "/switch K goes to one:")
    found = re.fullmatch(re.escape(head) + versions, flat("\n".join(rows)), flags=re.S)
    assert found, "\n".join(rows)
    return [text.removesuffix("…") for text in found.groups()[1::2]]


def answer_shown(rows: list[str], reply: dict[str, Any], limit: int) -> str:
    """The rows printed for an answer, flat, less the line that follows an answer the
    token limit stopped: it is there exactly when the reply has `limit` tokens."""
    note = flat(f"(stopped at the {limit}-token limit: -n, or /set max_new_tokens N)")
    shown = flat("".join(rows))
    assert shown.endswith(note) == (reply["meta"]["completion_tokens"] == limit), shown
    return shown.removesuffix(note)


def begins(shown: str, content: str) -> bool:
    """A /branches text is the start of the message's first line."""
    first = next(line for line in CONTROL.sub("", content).splitlines() if line.strip())
    return bool(shown) and flat(first).startswith(shown)


@pytest.mark.parametrize("columns", [50, 120])
def test_edit_retry_branches_switch_and_resume(home: Path, columns: int) -> None:
    chat = Chat(home, [], columns)
    assert "Ctrl-D to leave" in chat.term.text()
    # 1. two messages, each answered
    first = chat.send("Hello there")
    second = chat.send("What now?")

    # 2. /edit 1 opens the old words in the input line; backspaces and typing change them
    note = chat.opens("/edit 1", "Hello there")
    assert flat("".join(note)) == flat(
        "chatcli: editing message 1: change it and press Enter; an empty line or Ctrl-C "
        "leaves it as it is; the old version and its answers stay as a branch (/branches)")
    edited = chat.type(BACKSPACE * len("there") + "there again\r")
    assert chat.term.lines()[chat.prompts()[-2]] == f"{PROMPT} Hello there again"

    # 3. /retry (fewer new tokens: another answer) keeps the old answer as a branch
    assert chat.send("/set max_new_tokens 3") == ["chatcli: max_new_tokens = 3"]
    retried = chat.send("/retry")
    kept = flat("chatcli: the previous answer stays as a branch (/branches)")
    assert flat("".join(retried)).startswith(kept)
    answers = chat.send("/branches")
    answers_shown = listing(answers, 2, "the answer", [2, 2], current=2)

    # 4. /switch 1 shows the first answer again; /branches 1 lists both first messages
    switched = chat.send("/switch 1")
    messages = chat.send("/branches 1")
    assert listing(messages, 1, "your message", [4, 2], current=2) == [
        "Hellothere", "Hellothereagain"]

    # 5. /edit left with Ctrl-C, or with the line emptied (Ctrl-U, Enter): unchanged,
    # nothing answered
    for leave in (chat.term.child.sendintr, lambda: chat.term.child.send(CTRL_U + "\r")):
        assert flat("".join(chat.opens("/edit", "Hello there again"))).startswith(
            flat("chatcli: editing message 1:"))
        count = len(chat.prompts())
        leave()
        chat.term.wait_for(chat.idle(count))
        assert chat.term.lines()[chat.prompts()[-2] + 1:] == [
            "chatcli: message 1 is unchanged", PROMPT]

    # 6. Ctrl-D; the history holds the path shown and every version, with its parent
    chat.leave()
    saved = export(home)
    tree, path = saved["tree"], saved["messages"]
    assert [(m["role"], m["content"]) for m in tree if m["role"] == "user"] == [
        ("user", "Hello there"), ("user", "What now?"), ("user", "Hello there again")]
    assert [m["role"] for m in tree] == ["user", "assistant"] * 2 + ["user"] + [
        "assistant"] * 2
    ids = [m["id"] for m in tree]
    assert [m["parent"] for m in tree] == [None, ids[0], ids[1], ids[2], None, ids[4], ids[4]]
    assert [m["id"] for m in path] == [ids[4], ids[5]] and saved["leaf"] == ids[5]
    assert [m["content"] for m in path] == ["Hello there again", tree[5]["content"]]
    # every answer as it was shown
    assert answer_shown(first, tree[1], 8) == flat(tree[1]["content"])
    assert answer_shown(second, tree[3], 8) == flat(tree[3]["content"])
    assert answer_shown(edited, tree[5], 8) == flat(tree[5]["content"])
    assert answer_shown(retried, tree[6], 3) == kept + flat(tree[6]["content"])
    assert flat(tree[5]["content"]) != flat(tree[6]["content"])
    assert begins(answers_shown[0], tree[5]["content"])
    assert begins(answers_shown[1], tree[6]["content"])
    # the path after /switch 1 is what the screen showed
    assert flat("".join(switched)) == flat(
        "chatcli: now on version 1 of message 2; the conversation has 2 messages:"
    ) + flat(path[1]["content"])

    # 7. chat -c shows the path switched to and the same versions; /switch 2 and a new
    # message, answered after the second answer
    chat = Chat(home, ["-c"], columns)
    assert flat(chat.term.text()) == flat(
        "chatcli: continuing conversation 1 (2 messages)\n> Hello there again\n"
        + path[1]["content"] + "\n" + PROMPT)
    assert chat.send("/branches 1") == messages
    assert listing(chat.send("/branches"), 2, "the answer", [2, 2], current=1) == \
        answers_shown
    assert flat("".join(chat.send("/switch 2"))) == flat(
        "chatcli: now on version 2 of message 2; the conversation has 2 messages:"
    ) + flat(tree[6]["content"])
    more = chat.send("And more")
    chat.leave()
    resumed = export(home)
    assert resumed["tree"][:7] == tree
    added = resumed["tree"][7:]
    assert [(m["role"], m["parent"]) for m in added] == [
        ("user", ids[6]), ("assistant", added[0]["id"])]
    assert added[0]["content"] == "And more"
    assert answer_shown(more, added[1], 8) == flat(added[1]["content"])
    assert [m["id"] for m in resumed["messages"]] == [ids[4], ids[6], *(m["id"] for m in added)]
    assert resumed["leaf"] == added[1]["id"]


def written_controls(raw: bytes) -> list[str]:
    """The control characters in terminal output `raw`, less its CSI sequences (styles,
    cursor moves) and line ends."""
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", raw.decode("utf-8", "replace"))
    return [c for c in CONTROL.findall(text) if c not in "\r\n"]


# The answer of the tiny model to "Hello world" starts with U+0013; the live answer drops
# it (chatcli.ui.answer.printable), and so do these listings.
@pytest.mark.parametrize("where", ["/branches", "history show --tree"])
def test_an_answer_s_control_characters_never_reach_the_terminal(home: Path,
                                                                 where: str) -> None:
    chat = Chat(home, [], 80)
    chat.send("Hello world")
    chat.send("/retry")
    assert CONTROL.search(export(home)["tree"][1]["content"])  # what is at stake
    start = len(chat.term.raw)
    chat.send("/branches")
    listed = chat.term.raw[start:].split(b"goes to one:", 1)[1].split(b"\x1b[6n", 1)[0]
    chat.leave()
    if where == "history show --tree":
        term = Terminal(home, ["history", "show", "--tree", "1"], columns=80)
        assert term.finish() == 0
        listed = term.raw
    assert written_controls(listed) == []
