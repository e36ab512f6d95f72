"""`chatcli history show|export` of a conversation with branches: exact output.

A conversation is a tree of versions (a /retry'd answer, an /edit'ed question);
`show` and `export` give the path the user is on with the versions marked, `show
--tree` draws every branch, and a JSON export keeps them all while `/load` still
reads the path.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from chatcli import store as store_mod
from chatcli import transcript
from chatcli.branches import Tree
from chatcli.conversation import Conversation, Message
from chatcli.store import ReplyMeta, Store
from conftest import run_cli, time_zone

DAY1 = 1_700_000_000.0  # 2023-11-14 22:13:20 UTC
META = ReplyMeta("tiny", "greedy", {}, None, 9, 2, 0.5, 12.25)
META_LINE = "*tiny · greedy · 9 prompt + 2 completion tokens · first token 0.50 s · 12.2 tokens/s*"
META_JSON = {"model": "tiny", "strategy": "greedy", "params": {}, "seed": None,
             "prompt_tokens": 9, "completion_tokens": 2, "time_to_first_token_s": 0.5,
             "tokens_per_second": 12.25}
HEADER = """\
# What is 2+2?

- conversation: 1
- model: tiny
- started: 2023-11-14 22:13
- updated: 2023-11-14 22:13

## System

Be brief.
"""


def U(text: str) -> Message:
    return Message("user", text)


def A(text: str, interrupted: bool = False) -> Message:
    return Message("assistant", text, interrupted)


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An empty CHATCLI_HOME (the history needs no model), UTC, a clock ticking by seconds."""
    root = tmp_path / "home"
    root.mkdir()
    monkeypatch.setenv("CHATCLI_HOME", str(root))
    monkeypatch.delenv("CHATCLI_DEBUG", raising=False)
    ticks = iter(range(1000))
    monkeypatch.setattr(store_mod, "_now", lambda: DAY1 + next(ticks))
    with time_zone("UTC"):
        yield root


@pytest.fixture
def branched(home: Path) -> Path:
    """Conversation 1: an answer interrupted then retried, the question edited and
    answered twice (the second answer is the current path's end)."""
    with Store.open() as s:
        c = s.new_conversation("tiny", "Be brief.")
        s.add_message(c, U("What is 2+2?"))
        a1 = s.add_message(c, A("4."), META)
        q2 = s.add_message(c, U("And 3+3?\nShow your work."))
        s.add_message(c, A("Six, bec", interrupted=True))
        s.add_message(c, A("6."), META, parent=q2)  # /retry
        q2e = s.add_message(c, U("And 4+4?"), parent=a1)  # /edit 3
        s.add_message(c, A("Eight."), META)
        s.add_message(c, A("8."), META, parent=q2e)  # /retry
    return home


def linear(home: Path) -> None:
    with Store.open() as s:
        c = s.new_conversation("tiny", "Be brief.")
        s.add_message(c, U("What is 2+2?"))
        s.add_message(c, A("4."), META)


# -- show ----------------------------------------------------------------------------------
def test_show_of_a_linear_conversation_is_unchanged(home: Path) -> None:
    linear(home)
    expected = HEADER + f"\n## User\n\nWhat is 2+2?\n\n## Assistant\n\n4.\n\n{META_LINE}\n"
    result = run_cli(["history", "show", "1"])
    assert (result.exit_code, result.stdout, result.stderr) == (0, expected, "")
    assert run_cli(["history", "export", "1"]).stdout == expected
    doc = json.loads(run_cli(["history", "export", "1", "-f", "json"]).stdout)
    assert doc == {"chatcli": 1, "model": "tiny", "system": "Be brief.", "messages": [
        {"role": "user", "content": "What is 2+2?", "interrupted": False},
        {"role": "assistant", "content": "4.", "interrupted": False, "meta": META_JSON},
    ]}
    assert run_cli(["history", "show", "--tree", "1"]).stdout == (
        "→ 1 User: What is 2+2?\n"
        "→ 2 Assistant: 4.\n"
    )


SHOW_BRANCHED = HEADER + f"""
## User

What is 2+2?

## Assistant

4.

{META_LINE}

## User (version 2 of 2)

And 4+4?

## Assistant (version 2 of 2)

8.

{META_LINE}

*This is one branch of the conversation; `chatcli history show --tree 1` shows every branch.*
"""


def test_show_marks_the_versions_on_the_path(branched: Path) -> None:
    result = run_cli(["history", "show", "1"])
    assert (result.exit_code, result.stdout, result.stderr) == (0, SHOW_BRANCHED, "")


def test_show_the_other_branch(branched: Path) -> None:
    with Store.open() as s:
        s.set_leaf(1, 5)  # the retried answer to the first question
    assert run_cli(["history", "show", "1"]).stdout == HEADER + f"""
## User

What is 2+2?

## Assistant

4.

{META_LINE}

## User (version 1 of 2)

And 3+3?
Show your work.

## Assistant (version 2 of 2)

6.

{META_LINE}

*This is one branch of the conversation; `chatcli history show --tree 1` shows every branch.*
"""


def test_a_path_that_stops_above_the_newest_messages_says_there_is_more(home: Path) -> None:
    linear(home)
    with Store.open() as s:
        s.set_leaf(1, 1)  # the answer is off the path, though nothing has two versions
    assert run_cli(["history", "show", "1"]).stdout == HEADER + (
        "\n## User\n\nWhat is 2+2?\n\n"
        "*This is one branch of the conversation; `chatcli history show --tree 1` shows every "
        "branch.*\n")
    assert run_cli(["history", "show", "--tree", "1"]).stdout == (
        "→ 1 User: What is 2+2?\n"
        "  2 Assistant: 4.\n"
    )


# -- show --tree ---------------------------------------------------------------------------
TREE_BRANCHED = """\
→ 1 User: What is 2+2?
→ 2 Assistant: 4.
  ├─ 3 User (version 1 of 2): And 3+3? …
  │  ├─ 4 Assistant (version 1 of 2, interrupted): Six, bec
  │  └─ 4 Assistant (version 2 of 2): 6.
→ └─ 3 User (version 2 of 2): And 4+4?
     ├─ 4 Assistant (version 1 of 2): Eight.
→    └─ 4 Assistant (version 2 of 2): 8.
"""


def test_tree_piped_is_plain_text(branched: Path) -> None:
    result = run_cli(["history", "show", "--tree", "1"])
    assert (result.exit_code, result.stdout, result.stderr) == (0, TREE_BRANCHED, "")


def test_tree_of_an_unknown_conversation(home: Path) -> None:
    result = run_cli(["history", "show", "--tree", "7"])
    assert (result.exit_code, result.stdout, result.stderr) == (
        1, "", "error: no conversation 7; hint: run 'chatcli history list'\n")


def test_tree_of_an_empty_conversation(home: Path) -> None:
    with Store.open() as s:
        s.new_conversation("tiny", None)
    result = run_cli(["history", "show", "--tree", "1"])
    assert (result.exit_code, result.stdout, result.stderr) == (0, "(no messages)\n", "")


def test_tree_with_an_edited_first_message_and_a_long_chain(home: Path) -> None:
    with Store.open() as s:
        c = s.new_conversation("tiny", None)
        s.add_message(c, U("first " + "word " * 30))
        s.add_message(c, A("reply"))
        s.add_message(c, U("more"))
        s.add_message(c, A("yes"))
        s.add_message(c, U("first, edited"), parent=None)
        s.add_message(c, A(""))
    assert run_cli(["history", "show", "--tree", "1"]).stdout == (
        "  ├─ 1 User (version 1 of 2): first word word word word word word word word word word "
        "wor…\n"
        "  │  2 Assistant: reply\n"
        "  │  3 User: more\n"
        "  │  4 Assistant: yes\n"
        "→ └─ 1 User (version 2 of 2): first, edited\n"
        "→    2 Assistant: (empty)\n"
    )


def test_versions_that_part_after_a_line_break_are_told_apart() -> None:
    """Two versions alike up to a line break: each line shows where it goes on (⏎)."""
    tree = Tree()
    tree.add(U("Write the opening of a book.\nOnce upon a time"))
    tree.add(A("It begins."))
    tree.cut(0)
    tree.add(U("Write the opening of a book.\nIt was a dark night\nand cold."))
    tree.cut(0)
    tree.add(U("Write the opening of a book.\nMake it about a dog."))
    assert transcript.to_outline(tree) == (
        "  ├─ 1 User (version 1 of 3): … of a book. ⏎ Once upon a time\n"
        "  │  2 Assistant: It begins.\n"
        "  ├─ 1 User (version 2 of 3): … of a book. ⏎ It was a dark night ⏎ and cold.\n"
        "→ └─ 1 User (version 3 of 3): … of a book. ⏎ Make it about a dog.\n"
    )  # (versions whose first lines differ keep the first line: TREE_BRANCHED)


def test_outline_fits_a_width_in_terminal_cells() -> None:
    tree = Tree()
    tree.add(U("中文 " * 20))
    tree.add(A("a fairly long answer that will not fit in forty columns"))
    tree.cut(1)
    tree.add(A("short"))
    text = transcript.to_outline(tree, width=40)
    assert text == (
        "→ 1 User: 中文 中文 中文 中文 中文 中文…\n"
        "  ├─ 2 Assistant (version 1 of 2): a fairly lo…\n"
        "→ └─ 2 Assistant (version 2 of 2): short\n"
    )
    # wide characters take two cells; a deep line keeps 12 cells of text (a terminal
    # cuts what passes its edge)
    assert [transcript._cells(line) for line in text.splitlines()] == [40, 47, 40]


def test_outline_of_a_long_conversation_needs_no_recursion() -> None:
    tree = Tree()
    for i in range(3000):
        tree.add(U(f"q{i}") if i % 2 == 0 else A(f"a{i}"))
    lines = transcript.outline(tree)
    assert len(lines) == 3000 and lines[-1].plain() == "→ 3000 Assistant: a2999"
    assert not transcript.has_branches(tree)


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("columns", [60, 120])
def test_tree_on_a_terminal_is_styled_and_cut_to_its_width(
        branched: Path, monkeypatch: pytest.MonkeyPatch, columns: int) -> None:
    from chatcli.cli import history

    monkeypatch.setenv("COLUMNS", str(columns))
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("TERM", "xterm-256color")
    with Store.open() as s:
        s.add_message(1, U("Then, " + "and again " * 20), parent=8)  # under the leaf
    out = _Terminal()
    ui = history.UI(stdout=out)
    with Store.open(readonly=True) as s:
        history._show_tree(ui, history._transcript(s, 1)[4])
    printed = out.getvalue()
    assert "\x1b[" in printed  # styled
    plain = re.sub(r"\x1b\[[0-9;]*m", "", printed)
    last = "→       5 User: Then," + " and again" * 20
    last = last[:columns - 1].rstrip() + "…"
    assert plain == TREE_BRANCHED + last + "\n"
    assert max(len(line) for line in plain.splitlines()) <= columns


# -- export --------------------------------------------------------------------------------
def _msg(id: int, parent: int | None, role: str, content: str, interrupted: bool = False,
         meta: bool = False) -> dict[str, object]:
    item: dict[str, object] = {"id": id, "parent": parent, "role": role, "content": content,
                               "interrupted": interrupted}
    if meta:
        item["meta"] = META_JSON
    return item


def test_json_export_keeps_every_branch_and_loads_as_the_path(branched: Path,
                                                              tmp_path: Path) -> None:
    result = run_cli(["history", "export", "1", "--format", "json"])
    assert (result.exit_code, result.stderr) == (0, "")
    doc = json.loads(result.stdout)
    every = [
        _msg(1, None, "user", "What is 2+2?"),
        _msg(2, 1, "assistant", "4.", meta=True),
        _msg(3, 2, "user", "And 3+3?\nShow your work."),
        _msg(4, 3, "assistant", "Six, bec", interrupted=True),
        _msg(5, 3, "assistant", "6.", meta=True),
        _msg(6, 2, "user", "And 4+4?"),
        _msg(7, 6, "assistant", "Eight.", meta=True),
        _msg(8, 6, "assistant", "8.", meta=True),
    ]
    assert list(doc) == ["chatcli", "model", "system", "messages", "leaf", "tree"]
    assert doc == {"chatcli": 1, "model": "tiny", "system": "Be brief.",
                   "messages": [every[i] for i in (0, 1, 5, 7)], "leaf": 8, "tree": every}

    saved = tmp_path / "one.json"
    assert run_cli(["history", "export", "1", "-o", str(saved)]).exit_code == 0
    assert saved.read_text() == result.stdout
    loaded = transcript.load(saved)
    assert loaded == Conversation("Be brief.", [U("What is 2+2?"), A("4."), U("And 4+4?"),
                                                A("8.")])
    with Store.open() as s:
        assert loaded == s.load(1)[1]


def test_from_json_ignores_the_tree_and_accepts_files_without_it() -> None:
    path = [{"role": "user", "content": "hi"}]
    with_tree = {"chatcli": 1, "messages": [{"id": 3, "parent": None, **path[0]}], "leaf": 3,
                 "tree": [{"id": 1, "parent": None, "role": "user", "content": "old"},
                          {"id": 3, "parent": None, **path[0]}]}
    for doc in (with_tree, {"chatcli": 1, "messages": path}):
        assert transcript.from_json(json.dumps(doc)) == Conversation(None, [U("hi")])


def test_markdown_export_marks_the_versions(branched: Path, tmp_path: Path) -> None:
    result = run_cli(["history", "export", "1", "--format", "md"])
    assert (result.exit_code, result.stdout, result.stderr) == (0, SHOW_BRANCHED, "")
    saved = tmp_path / "one.md"
    assert run_cli(["history", "export", "1", "-o", str(saved)]).exit_code == 0
    assert saved.read_text() == SHOW_BRANCHED


def test_list_counts_every_message_of_every_branch(branched: Path) -> None:
    assert run_cli(["history", "list"]).stdout == (
        "id  updated           model  messages  title\n"
        "1   2023-11-14 22:13  tiny   8         What is 2+2?\n"
    )
