"""Pins from the chat (issue 15): /pin N, /unpin N, --pin with -f, shown by /context, kept
in the history (chat -c finds them again), on the tiny test model (a 256-token window)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from conftest import run_cli


def pinned_rows(home: Path) -> list[tuple[str, int]]:
    with sqlite3.connect(home / "data" / "history.db") as db:
        return db.execute("SELECT role, pinned FROM messages ORDER BY id").fetchall()


def test_pin_keeps_a_message_while_older_turns_are_dropped(cli, home: Path) -> None:
    long = "word " * 40
    script = "\n".join(["Remember: the code is 1234.", "/pin 1", f"{long}one", f"{long}two",
                        f"{long}three", "/context", "/unpin 1", "/unpin 1", "/unpin 2",
                        "/pin 9", "/pin x"]) + "\n"
    result = run_cli(["chat", "-n", "8"], input=script)
    assert result.exit_code == 0, result.stderr
    err = result.stderr.splitlines()
    assert err[0] == ("chatcli: message 1 (user) is pinned: it stays in the context window "
                      "while older turns are dropped")
    unpinned = err.index("chatcli: message 1 (user) is no longer pinned")
    assert err[unpinned + 1:unpinned + 3] == [
        "chatcli: message 1 (user) was not pinned: nothing to unpin",
        "chatcli: message 2 (assistant) was not pinned: nothing to unpin"]
    assert ("error: there is no message 9: the conversation has 8 messages; hint: /context "
            "lists the messages with their numbers") in err
    assert "error: /pin needs a message number; hint: e.g. /pin 1 (/context numbers the " \
           "messages)" in err
    rows = [line.split() for line in result.stdout.splitlines() if line[:1].isdigit()]
    status = {row[0]: " ".join(row[3:]) for row in rows if len(row) >= 4}
    assert status["1"] == "kept (pinned)"
    assert status["2"] == "dropped"  # its reply went, the pinned question stayed
    assert pinned_rows(home)[0] == ("user", 0)  # unpinned at the end, and saved


def test_pins_are_saved_and_come_back_with_chat_c(cli, home: Path, tmp_path: Path) -> None:
    note = tmp_path / "note.txt"
    note.write_text("the code is 1234\n")
    first = run_cli(["chat", "-n", "4", "-f", str(note), "--pin"], input="Read this.\nHi\n")
    assert first.exit_code == 0, first.stderr
    assert pinned_rows(home) == [("user", 1), ("assistant", 0), ("user", 0), ("assistant", 0)]
    again = run_cli(["chat", "-c", "-n", "4"], input="/context\n")
    assert again.exit_code == 0, again.stderr
    rows = [line.split() for line in again.stdout.splitlines() if line[:2] in ("1 ", "2 ")]
    assert [" ".join(row[3:]) for row in rows] == ["kept (pinned)", "kept"]
