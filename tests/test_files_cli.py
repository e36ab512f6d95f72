"""Files in the conversation (issue 15): ask -f, chat -f, /read, /glob, and what the history
keeps of them (path, size, sha256 beside the message text), on the tiny test model."""

from __future__ import annotations

import hashlib
import json
import sqlite3
from pathlib import Path

import pytest

from chatcli.attachments import Attachment, render
from conftest import Tiny, run_cli


def user_rows(home: Path) -> list[tuple[str, str | None]]:
    with sqlite3.connect(home / "data" / "history.db") as db:
        return db.execute("SELECT content, params FROM messages WHERE role = 'user' "
                          "ORDER BY conversation_id, position").fetchall()


def files(tmp_path: Path) -> tuple[Path, Path]:
    (tmp_path / "src").mkdir()
    code = tmp_path / "src" / "app.py"
    code.write_text("print('hi')\n")
    blob = tmp_path / "src" / "blob.bin"
    blob.write_bytes(b"\x00\x01\x02")
    return code, blob


def record(path: Path, shown: str) -> dict[str, object]:
    data = path.read_bytes()
    return {"path": shown, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def test_ask_attaches_files_and_the_history_names_them(cli, home: Path, tmp_path: Path) -> None:
    code, _ = files(tmp_path)
    result = run_cli(["ask", "-n", "3", "--json", "-f", str(code), "What does it print?"])
    assert result.exit_code == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["attachments"] == [record(code, str(code))]
    [(content, params)] = user_rows(home)
    assert content == (f'<file path="{code}">\nprint(\'hi\')\n</file>\n\nWhat does it print?')
    assert json.loads(params) == {"attachments": [record(code, str(code))]}
    shown = run_cli(["history", "show", "1"])
    assert f"*attached: {code} (12 bytes)*" in shown.stdout
    exported = json.loads(run_cli(["history", "export", "1", "--format", "json"]).stdout)
    assert exported["messages"][0]["attachments"] == [record(code, str(code))]
    listing = run_cli(["history", "list", "--json"])
    assert json.loads(listing.stdout)[0]["title"] == "What does it print?"


def test_ask_directory_skips_binary_files_with_a_note(cli, home: Path, tmp_path: Path) -> None:
    files(tmp_path)
    src = tmp_path / "src"
    result = run_cli(["ask", "-n", "2", "-f", str(src), "Summarize."])
    assert result.exit_code == 0, result.stderr
    assert result.stderr == f"warning: skipped 1 binary file: {src}/blob.bin\n"
    [(content, _)] = user_rows(home)
    assert content == render([Attachment(f"{src}/app.py", 12, "", "print('hi')\n")],
                             "Summarize.")


def test_ask_file_from_stdin_and_errors(cli, home: Path) -> None:
    result = run_cli(["ask", "-n", "2", "-f", "-", "Repeat it."], input="piped text\n")
    assert result.exit_code == 0, result.stderr
    [(content, _)] = user_rows(home)
    assert content == '<file path="stdin">\npiped text\n</file>\n\nRepeat it.'
    missing = run_cli(["ask", "-f", "/no/such/file", "x"])
    assert missing.exit_code == 2
    assert missing.stderr == ("error: cannot read /no/such/file: no such file or directory; "
                              "hint: check the path; a glob pattern needs *, ? or [...]\n")


def test_chat_read_glob_and_flag(cli, home: Path, tmp_path: Path,
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    files(tmp_path)
    monkeypatch.chdir(tmp_path)  # relative paths: the prompt's length does not depend on tmp
    script = "/read src/app.py\nFirst?\n/glob src/*.py\n\n/read\n/glob src/*.zz\n"
    result = run_cli(["chat", "-n", "2", "-f", "src/app.py"], input=script)
    assert result.exit_code == 0, result.stderr
    note = "chatcli: attached 1 file(s), 12 bytes, to your next message: src/app.py"
    assert result.stderr.splitlines() == [
        # -f attached it already: /read does not attach it twice (as -f X -f X does not)
        "warning: left out 1 repeat of files already attached: src/app.py",
        note,
        "error: /read needs a path; hint: e.g. /read src/app.py (a file or a directory)",
        "error: no file matches src/*.zz; hint: patterns are relative to the current "
        "directory; ** spans directories",
    ]
    rows = user_rows(home)
    block = '<file path="src/app.py">\nprint(\'hi\')\n</file>'
    assert rows[0][0] == f"{block}\n\nFirst?"
    assert rows[1][0] == block  # an empty line sends the attached files alone
    assert json.loads(rows[1][1]) == {"attachments": [record(tmp_path / "src" / "app.py",
                                                              "src/app.py")]}
    # continued, the conversation names its files rather than printing them again
    shown = run_cli(["chat", "-c", "-n", "2"], input="").stdout.splitlines()
    assert [line for line in shown if line.startswith("> ")] == [
        "> [file src/app.py] First?", "> [file src/app.py]"]


def test_chat_refuses_stdin_as_a_file(cli) -> None:
    result = run_cli(["chat", "-f", "-"], input="hi\n")
    assert result.exit_code == 2
    assert result.stderr == ("error: chat reads your messages from stdin, so -f - cannot take "
                             "it; hint: attach files by path, or pipe the file to chatcli ask "
                             "-f -\n")


def test_context_lists_each_attachment_with_exact_tokens(cli, tmp_path: Path, tiny_model: Tiny,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from transformers import AutoTokenizer

    from chatcli.attachments import Attachment
    from chatcli.conversation import Message
    from chatcli.prompt import render_ids

    files(tmp_path)
    (tmp_path / "src" / "b.txt").write_text("two\n")
    monkeypatch.chdir(tmp_path)
    result = run_cli(["chat", "-n", "2", "-f", "src/app.py", "-f", "src/b.txt"],
                     input="Which?\n/context\n")
    assert result.exit_code == 0, result.stderr
    rows = [line.split() for line in result.stdout.splitlines()[1:] if line.strip()]
    table = rows[rows.index(["turn", "role", "tokens", "status"]) + 1:]
    assert [r[:3] for r in table[1:4]] == [["file", "src/app.py", table[1][2]],
                                           ["file", "src/b.txt", table[2][2]],
                                           ["words", table[3][1], "kept"]]
    user, app, b, words = int(table[0][2]), int(table[1][2]), int(table[2][2]), int(table[3][1])
    assert app + b + words == user  # the parts telescope to the message's own count
    # ... which is the prompt's length up to the message under the tiny model's template
    tok = AutoTokenizer.from_pretrained(tiny_model.folder)
    text = render([Attachment("src/app.py", 12, "", "print('hi')\n"),
                   Attachment("src/b.txt", 4, "", "two\n")], "Which?")
    assert user == len(render_ids(tok, [Message("user", text)]))


def test_ask_refuses_files_past_the_caps_unless_truncation_is_allowed(
        cli, home: Path, tmp_path: Path) -> None:
    big = tmp_path / "big.txt"
    big.write_text("0123456789\n" * 10)  # 110 bytes
    refused = run_cli(["ask", "-n", "2", "--max-bytes", "50", "-f", str(big), "Sum?"])
    assert (refused.exit_code, refused.stdout, refused.stderr) == (
        2, "", f"error: {big} (110 bytes) would pass the cap --max-bytes 50; hint: raise "
        "--max-bytes, or add --truncate-files to cut the files there\n")
    assert not (home / "data" / "history.db").exists()  # refused before anything is saved
    many = run_cli(["ask", "-n", "2", "--max-files", "1", "-f", str(big), "-f", str(big) + "*",
                    "-f", str(tmp_path / "*.txt"), "Sum?"])
    assert many.exit_code == 0, many.stderr  # one file, named three ways: within the cap

    cut = run_cli(["ask", "-n", "2", "--json", "--max-bytes", "50", "--truncate-files",
                   "-f", str(big), "Sum?"])
    assert cut.exit_code == 0, cut.stderr
    assert cut.stderr == (f"warning: {big}: truncated to its first 50 of 110 bytes by the cap "
                          "--max-bytes 50\n")
    first = b"0123456789\n" * 4 + b"012345"
    record = {"path": str(big), "size": 50, "sha256": hashlib.sha256(first).hexdigest(),
              "truncated": True, "full_size": 110}
    assert json.loads(cut.stdout)["attachments"] == [record]
    content, params = user_rows(home)[-1]
    assert content == (f'<file path="{big}" truncated="first 50 of 110 bytes">\n'
                       f"{first.decode()}\n</file>\n\nSum?")
    assert json.loads(params) == {"attachments": [record]}
    shown = run_cli(["history", "show", "2"]).stdout
    assert f"*attached: {big} (truncated to the first 50 of 110 bytes)*" in shown
    exported = json.loads(run_cli(["history", "export", "2", "--format", "json"]).stdout)
    assert exported["messages"][0]["attachments"] == [record]


def test_ask_refuses_an_empty_stdin_file(cli, home: Path) -> None:
    result = run_cli(["ask", "-f", "-", "Summarize."], input="")
    assert (result.exit_code, result.stdout, result.stderr) == (
        2, "", "error: stdin (-f -) is empty: there is no file to attach; hint: pipe the "
        "file's text into chatcli, e.g. chatcli ask -f - \"Summarize.\" < notes.txt\n")
    assert not (home / "data" / "history.db").exists()


def test_chat_caps_hold_for_f_read_and_glob_alike(cli, home: Path, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    Path("big.txt").write_text("0123456789\n" * 10)  # 110 bytes
    refused = run_cli(["chat", "-n", "2", "--max-bytes", "50", "-f", "big.txt"], input="Hi\n")
    assert (refused.exit_code, refused.stdout, refused.stderr) == (
        2, "", "error: big.txt (110 bytes) would pass the cap --max-bytes 50; hint: raise "
        "--max-bytes, or add --truncate-files to cut the files there\n")
    # /read and /glob gather under chat's own caps (not the defaults)
    result = run_cli(["chat", "-n", "2", "--max-bytes", "50"],
                     input="/read big.txt\n/glob *.txt\nHi\n")
    assert result.exit_code == 0, result.stderr
    refusal = ("error: big.txt (110 bytes) would pass the cap --max-bytes 50; hint: raise "
               "--max-bytes, or add --truncate-files to cut the files there")
    assert result.stderr.splitlines() == [refusal, refusal]
    assert user_rows(home)[-1][0] == "Hi"
    cut = run_cli(["chat", "-n", "2", "--max-bytes", "50", "--truncate-files"],
                  input="/read big.txt\n\n")
    assert cut.exit_code == 0, cut.stderr
    assert cut.stderr.splitlines() == [
        "warning: big.txt: truncated to its first 50 of 110 bytes by the cap --max-bytes 50",
        "chatcli: attached 1 file(s), 50 bytes, to your next message: big.txt"]
    content, params = user_rows(home)[-1]
    assert content.startswith('<file path="big.txt" truncated="first 50 of 110 bytes">\n')
    assert json.loads(params)["attachments"][0]["truncated"] is True


def test_undo_drops_the_files_waiting_for_the_next_message(cli, home: Path, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch
                                                           ) -> None:
    files(tmp_path)
    monkeypatch.chdir(tmp_path)
    result = run_cli(["chat", "-n", "2"], input="/read src/app.py\n/undo\nHi\n")
    assert result.exit_code == 0, result.stderr
    assert result.stderr.splitlines() == [
        "chatcli: attached 1 file(s), 12 bytes, to your next message: src/app.py",
        "chatcli: dropped 1 file(s) attached to your next message: src/app.py",
    ]
    assert user_rows(home) == [("Hi", None)]  # the file did not go with it
    # with no file waiting, /undo removes the last exchange, as before
    again = run_cli(["chat", "-c", "-n", "2"], input="/undo\n/undo\n")
    assert again.stderr.splitlines()[-2:] == ["chatcli: removed the last exchange (2 messages)",
                                              "chatcli: nothing to undo"]
