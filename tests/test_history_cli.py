"""`chatcli history list|show|export|rm` through the real entry point: exact output."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from chatcli import store as store_mod
from chatcli.conversation import Message
from chatcli.store import ReplyMeta, Store
from conftest import run_cli, time_zone

DAY1 = 1_700_000_000.0  # 2023-11-14 22:13:20 UTC
DAY2 = DAY1 + 86_400.0
META = ReplyMeta(
    model="tiny", strategy="greedy", params={"strategy": "greedy", "seed": None, "stop": []},
    seed=None, prompt_tokens=9, completion_tokens=2, time_to_first_token_s=0.5,
    tokens_per_second=12.25,
)
SHOW_1 = """\
# What is 2+2?

- conversation: 1
- model: tiny
- started: 2023-11-14 22:13
- updated: 2023-11-14 22:13

## System

Be brief.

## User

What is 2+2?

## Assistant

4.

*tiny · greedy · 9 prompt + 2 completion tokens · first token 0.50 s · 12.2 tokens/s*

## User

And 3+3?

## Assistant

Six, bec

*(interrupted)*
"""


@pytest.fixture
def utc() -> Iterator[None]:
    with time_zone("UTC"):
        yield


def _clock(monkeypatch: pytest.MonkeyPatch, start: float) -> None:
    ticks = iter(range(1000))
    monkeypatch.setattr(store_mod, "_now", lambda: start + next(ticks))


@pytest.fixture
def saved(home: Path, monkeypatch: pytest.MonkeyPatch, utc: None) -> Path:
    """Two conversations: 1 (tiny, day 1, four messages) and 2 (other, day 2, one)."""
    with Store.open() as s:
        _clock(monkeypatch, DAY1)
        one = s.new_conversation("tiny", "Be brief.")
        s.add_message(one, Message("user", "What is 2+2?"))
        s.add_message(one, Message("assistant", "4."), META)
        s.add_message(one, Message("user", "And 3+3?"))
        s.add_message(one, Message("assistant", "Six, bec", interrupted=True))
        _clock(monkeypatch, DAY2)
        two = s.new_conversation("other", None)
        s.add_message(two, Message("user", "Bonjour"))
    assert (one, two) == (1, 2)
    return home


def test_list(saved: Path) -> None:
    result = run_cli(["history", "list"])
    assert (result.exit_code, result.stderr) == (0, "")
    assert result.stdout == (
        "id  updated           model  messages  title\n"
        "2   2023-11-15 22:13  other  1         Bonjour\n"
        "1   2023-11-14 22:13  tiny   4         What is 2+2?\n"
    )
    limited = run_cli(["history", "list", "--limit", "1"])
    assert limited.stdout == (
        "id  updated           model  messages  title\n"
        "2   2023-11-15 22:13  other  1         Bonjour\n"
    )


def test_list_when_empty(home: Path) -> None:
    result = run_cli(["history", "list"])
    assert (result.exit_code, result.stdout, result.stderr) == (0, "", "no conversations yet\n")


def test_list_untitled(home: Path, monkeypatch: pytest.MonkeyPatch, utc: None) -> None:
    _clock(monkeypatch, DAY1)
    with Store.open() as s:
        s.new_conversation("tiny", None)
    assert run_cli(["history", "list"]).stdout == (
        "id  updated           model  messages  title\n"
        "1   2023-11-14 22:13  tiny   0         (untitled)\n"
    )


def test_show(saved: Path) -> None:
    result = run_cli(["history", "show", "1"])
    assert (result.exit_code, result.stdout, result.stderr) == (0, SHOW_1, "")


def test_export_markdown_and_json_to_stdout(saved: Path) -> None:
    md = run_cli(["history", "export", "1"])
    assert (md.exit_code, md.stdout, md.stderr) == (0, SHOW_1, "")
    assert run_cli(["history", "export", "1", "--format", "md"]).stdout == SHOW_1

    js = run_cli(["history", "export", "2", "--format", "json"])
    assert (js.exit_code, js.stderr) == (0, "")
    assert js.stdout == (
        '{\n  "chatcli": 1,\n  "model": "other",\n  "system": null,\n  "messages": [\n'
        '    {\n      "role": "user",\n      "content": "Bonjour",\n'
        '      "interrupted": false\n    }\n  ]\n}\n'
    )
    doc = json.loads(run_cli(["history", "export", "1", "-f", "json"]).stdout)
    assert doc["messages"][1] == {
        "role": "assistant", "content": "4.", "interrupted": False, "meta": {
            "model": "tiny", "strategy": "greedy",
            "params": {"seed": None, "stop": [], "strategy": "greedy"}, "seed": None,
            "prompt_tokens": 9, "completion_tokens": 2, "time_to_first_token_s": 0.5,
            "tokens_per_second": 12.25,
        },
    }


def test_export_to_files(saved: Path, tmp_path: Path) -> None:
    from chatcli import transcript

    md_file, json_file = tmp_path / "one.md", tmp_path / "one.json"
    result = run_cli(["history", "export", "1", "-o", str(md_file)])
    assert (result.exit_code, result.stdout, result.stderr) == (
        0, f"exported conversation 1 to {md_file}\n", "",
    )
    assert md_file.read_text() == SHOW_1
    result = run_cli(["history", "export", "1", "--format", "json", "--output", str(json_file)])
    assert (result.exit_code, result.stdout) == (0, f"exported conversation 1 to {json_file}\n")
    with Store.open() as s:
        assert transcript.load(json_file) == s.load(1)[1]


def test_export_file_errors(saved: Path, tmp_path: Path) -> None:
    txt = tmp_path / "one.txt"
    result = run_cli(["history", "export", "1", "-o", str(txt)])
    assert (result.exit_code, result.stdout, result.stderr) == (
        2, "",
        f"error: cannot tell the transcript format of {txt}; "
        "hint: name the file .md, .markdown or .json\n",
    )
    md = tmp_path / "one.md"
    result = run_cli(["history", "export", "1", "--format", "json", "-o", str(md)])
    assert (result.exit_code, result.stdout, result.stderr) == (
        2, "",
        f"error: --format json does not match the extension of {md}; "
        "hint: leave out --format: the file's extension chooses it\n",
    )
    assert not txt.exists() and not md.exists()


def test_rm_then_unknown_ids(saved: Path) -> None:
    result = run_cli(["history", "rm", "1"])
    assert (result.exit_code, result.stdout, result.stderr) == (0, "deleted conversation 1\n", "")
    missing = "error: no conversation 1; hint: run 'chatcli history list'\n"
    for args in (["rm", "1"], ["show", "1"], ["export", "1"], ["export", "1", "-f", "json"]):
        result = run_cli(["history", *args])
        assert (result.exit_code, result.stdout, result.stderr) == (1, "", missing), args
    assert run_cli(["history", "list"]).stdout == (
        "id  updated           model  messages  title\n"
        "2   2023-11-15 22:13  other  1         Bonjour\n"
    )


def test_bad_id_is_a_usage_error(home: Path) -> None:
    result = run_cli(["history", "show", "abc"])
    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr == (
        "error: Invalid value for 'conversation_id': Input should be a valid integer, unable to "
        "parse string as an integer; hint: see 'chatcli history show --help'\n"
    )


def test_corrupt_database(home: Path) -> None:
    db = home / "data" / "history.db"
    db.parent.mkdir()
    db.write_bytes(b"garbage" * 1000)
    q = shlex.quote(str(db))
    result = run_cli(["history", "list"])
    assert (result.exit_code, result.stdout, result.stderr) == (
        1, "",
        f"error: cannot use the history database {db}: file is not a database; "
        f"hint: move it aside (mv {q} {q}.bad); chatcli then starts a new history\n",
    )


def test_help_lists_history_and_imports_no_sqlite() -> None:
    assert "history" in run_cli(["--help"]).stdout
    code = ("import sys, chatcli.cli.app; "
            "print(sorted(m for m in ('sqlite3', 'chatcli.store', 'chatcli.transcript') "
            "if m in sys.modules))")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         check=True)
    assert out.stdout == "[]\n"
