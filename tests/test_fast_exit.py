"""The fast exit of `chatcli` run as a program: teardown skipped, nothing else lost.

The real entry point runs as a subprocess (`python -m chatcli`, or `main()` with no
arguments under a witness that notices the interpreter's teardown) on the tiny test
model. After a normal answer: the exit code is 0, stdout and stderr are complete (the
same answer and `--json` document as an in-process run, the `--stats` line present),
even when stdout is a block-buffered file, and the history holds the question and the
answer. The teardown is skipped only there: not when `main(argv)` is called with
arguments, not with CHATCLI_NO_FAST_EXIT=1, not on an error. A reader that closed the
pipe still gets exit code 0 and no traceback.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from conftest import run_cli

ROOT = Path(__file__).resolve().parent.parent

# A module-level object whose finalizer runs only in the interpreter's teardown
# (not in atexit handlers): it writes "teardown" to stderr. It then runs the entry point
# as the console script does, or with arguments as tests and embedders do.
WITNESS = """
import atexit, os, sys
class Witness:
    def __del__(self):
        os.write(2, b"teardown\\n")
witness = Witness()
atexit.register(lambda: os.write(2, b"atexit\\n"))
how, *args = sys.argv[1:]
from chatcli.cli.app import main
if how == "console":
    sys.argv = ["chatcli", *args]
    main()
else:
    main(args)
"""


def env(home: Path, **extra: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items()
            if k not in ("CHATCLI_DEBUG", "CHATCLI_NO_FAST_EXIT")}
    return {**base, "CHATCLI_HOME": str(home), "PYTHONPATH": str(ROOT), **extra}


def chatcli(home: Path, args: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "chatcli", *args], env=env(home),
                          stdin=subprocess.DEVNULL, text=True, timeout=300, **kwargs)


def witnessed(home: Path, how: str, args: list[str], **extra: str
              ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", WITNESS, how, *args], env=env(home, **extra),
                          stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=300)


def saved(home: Path) -> list[tuple[str, str]]:
    os.environ["CHATCLI_HOME"] = str(home)
    result = run_cli(["history", "export", "1", "--format", "json"])
    assert result.exit_code == 0, result.stderr
    return [(m["role"], m["content"]) for m in json.loads(result.stdout)["messages"]]


def stats_fields(stderr: str) -> dict[str, str]:
    lines = stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("stats: "), stderr
    return dict(item.split("=", 1) for item in lines[0].removeprefix("stats: ").split())


def test_answer_output_and_history_after_the_fast_exit(home: Path) -> None:
    expected = run_cli(["ask", "-n", "2", "Hello"])  # in-process: the ordinary exit
    assert expected.exit_code == 0 and expected.stdout.strip()
    history_before = saved(home)

    proc = chatcli(home, ["ask", "-n", "2", "--stats", "Hello"], capture_output=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == expected.stdout
    stats = stats_fields(proc.stderr)
    assert (stats["model"], stats["completion_tokens"], stats["finish_reason"]) == (
        "tiny", "2", "length")
    answer = expected.stdout.rstrip("\n")
    assert history_before == [("user", "Hello"), ("assistant", answer)]
    os.environ["CHATCLI_HOME"] = str(home)
    listing = run_cli(["history", "list", "--json"])
    conversations = json.loads(listing.stdout)
    assert len(conversations) == 2
    newest = max(conversations, key=lambda c: c["id"])
    export = run_cli(["history", "export", str(newest["id"]), "--format", "json"])
    messages = json.loads(export.stdout)["messages"]
    assert [(m["role"], m["content"]) for m in messages] == [
        ("user", "Hello"), ("assistant", answer)]


def test_json_to_a_block_buffered_file_is_complete(home: Path, tmp_path: Path) -> None:
    """`--json` prints its document at the end; stdout to a file is block-buffered, so
    the fast exit must flush it."""
    expected = run_cli(["ask", "-n", "3", "--json", "Hello"])
    assert expected.exit_code == 0
    out_file, err_file = tmp_path / "out.json", tmp_path / "err.txt"
    with out_file.open("w") as out, err_file.open("w") as err:
        proc = chatcli(home, ["ask", "-n", "3", "--json", "--stats", "Hello"],
                       stdout=out, stderr=err)
    assert proc.returncode == 0, err_file.read_text()
    got, want = json.loads(out_file.read_text()), json.loads(expected.stdout)
    for timing in ("time_to_first_token_s", "tokens_per_second"):
        got.pop(timing), want.pop(timing)
    assert got["decoding"].pop("seed") is not None and want["decoding"].pop("seed") is not None
    assert got == want
    assert stats_fields(err_file.read_text())["completion_tokens"] == "3"


def test_the_teardown_is_skipped_only_for_the_program(home: Path) -> None:
    ask = ["ask", "-n", "2", "Hello"]
    program = witnessed(home, "console", ask)
    assert program.returncode == 0, program.stderr
    assert program.stderr == "atexit\n"  # atexit handlers ran, the teardown did not
    assert program.stdout.strip()

    for run in (witnessed(home, "argv", ask),  # tests, embedders: the ordinary exit
                witnessed(home, "console", ask, CHATCLI_NO_FAST_EXIT="1")):
        assert run.returncode == 0, run.stderr
        assert run.stderr == "atexit\nteardown\n"
        assert run.stdout == program.stdout


@pytest.mark.parametrize(("args", "code", "message"), [
    (["ask", "-m", "nope", "Hi"], 2, "error: unknown model 'nope'"),
    (["ask", "-n", "2", "Paris " * 300], 1, "error: "),  # after loading: torch imported
])
def test_error_paths_exit_as_before(home: Path, args: list[str], code: int,
                                    message: str) -> None:
    run = witnessed(home, "console", args)
    assert run.returncode == code
    assert run.stderr.startswith(message), run.stderr
    assert run.stderr.endswith("atexit\nteardown\n")  # the ordinary exit
    assert run.stdout == ""


def test_a_reader_that_closed_the_pipe(home: Path) -> None:
    """stdout is a pipe whose reader is gone before the answer: exit 0, nothing on
    stderr (as before the fast exit), the question and the partial answer saved."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        proc = subprocess.run([sys.executable, "-m", "chatcli", "ask", "-n", "4", "Hello"],
                              env=env(home), stdin=subprocess.DEVNULL, stdout=write_end,
                              stderr=subprocess.PIPE, text=True, timeout=300)
    finally:
        os.close(write_end)
    assert proc.returncode == 0
    assert proc.stderr == ""
    assert saved(home)[0] == ("user", "Hello")


def test_a_reader_that_stops_after_the_first_byte(home: Path) -> None:
    """`chatcli ask ... | head -c 1`: the reader takes one byte and goes."""
    proc = subprocess.Popen([sys.executable, "-m", "chatcli", "ask", "-n", "40", "Hello"],
                            env=env(home), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    assert len(proc.stdout.read(1)) == 1
    proc.stdout.close()
    err = proc.stderr.read()
    assert proc.wait(timeout=300) == 0
    assert err == b""
    assert saved(home)[0] == ("user", "Hello")


def test_a_piped_chat_after_the_fast_exit(home: Path) -> None:
    """`chat` loads torch too: two turns from piped stdin, every byte printed and both
    exchanges saved."""
    script = "Hello\nThe capital of France?\n"
    expected = run_cli(["chat", "-n", "3"], input=script)
    assert expected.exit_code == 0
    first = saved(home)

    proc = subprocess.run([sys.executable, "-c", WITNESS, "console", "chat", "-n", "3"],
                          env=env(home), input=script, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == expected.stdout
    assert proc.stderr == expected.stderr + "atexit\n"  # the teardown was skipped
    assert [role for role, _ in first] == ["user", "assistant"] * 2
    os.environ["CHATCLI_HOME"] = str(home)
    export = run_cli(["history", "export", "2", "--format", "json"])
    assert export.exit_code == 0, export.stderr
    assert [(m["role"], m["content"]) for m in json.loads(export.stdout)["messages"]] == first
