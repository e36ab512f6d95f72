"""SIGTERM and SIGHUP mid-answer: handled like Ctrl-C, with their own exit codes.

The real `chatcli` runs as a subprocess with piped output against a scripted server
that streams slowly; the signal arrives mid-answer. What arrived is printed, the partial
reply is saved marked interrupted, and the exit code is 128 + the signal (143, 129).
(The interactive chat and the terminal's state are covered in test_screen.py.)
Each child starts with SIGHUP and SIGTERM at their default action, whatever pytest was
started under (`nohup` ignores SIGHUP, and chatcli keeps an ignored signal ignored).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import run_cli
from screen import ROOT, add_script_alias, default_signals, script_server

ANSWER = " ".join(f"w{i}" for i in range(400))


def start(home: Path, args: list[str], stdin: str | None = None,
          preexec: Callable[[], None] = default_signals) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if k != "CHATCLI_DEBUG"}
    env.update(CHATCLI_HOME=str(home), PYTHONPATH=str(ROOT))
    source = home / "stdin.txt"
    source.write_text(stdin or "")
    with source.open() as piped:
        return subprocess.Popen([sys.executable, "-m", "chatcli", *args], env=env, text=True,
                                stdin=piped if stdin is not None else subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                preexec_fn=preexec)


def read_words(proc: subprocess.Popen[str], count: int) -> str:
    """Read stdout until `count` words of the answer arrived."""
    assert proc.stdout is not None
    got = ""
    deadline = time.monotonic() + 60
    while got.count(" ") < count:
        assert time.monotonic() < deadline, got
        ch = proc.stdout.read(1)
        assert ch, "chatcli ended before the answer streamed"
        got += ch
    return got


def history(home: Path) -> list[dict]:
    os.environ["CHATCLI_HOME"] = str(home)
    result = run_cli(["history", "export", "1", "--format", "json"])
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)["messages"]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
@pytest.mark.parametrize("command", ["ask", "piped chat"])
def test_signal_mid_answer_keeps_the_partial_reply(home: Path, sig: signal.Signals,
                                                   command: str) -> None:
    with script_server(ANSWER, pace=0.02) as server:
        add_script_alias(home, server)
        if command == "ask":
            proc = start(home, ["ask", "-m", "script", "Count"])
        else:
            proc = start(home, ["chat", "-m", "script"], stdin="Count\nAnd again\n")
        shown = read_words(proc, 30)
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + sig, err
    assert "Traceback" not in err
    printed = shown + out
    messages = history(home)
    assert [(m["role"], m["content"]) for m in messages[:1]] == [("user", "Count")]
    assert len(messages) == 2  # piped chat stopped: "And again" was never asked
    reply = messages[1]
    assert reply["interrupted"] and reply["content"]
    assert ANSWER.startswith(reply["content"])
    assert printed.rstrip("\n") == reply["content"]  # what was printed is what was kept


def test_an_ignored_sighup_stays_ignored(home: Path) -> None:
    """Started under `nohup` (SIGHUP ignored), chatcli answers to the end through a SIGHUP."""

    def ignore_sighup() -> None:
        default_signals()
        signal.signal(signal.SIGHUP, signal.SIG_IGN)

    answer = " ".join(f"w{i}" for i in range(60))
    with script_server(answer, pace=0.02) as server:
        add_script_alias(home, server)
        proc = start(home, ["ask", "-m", "script", "Count"], preexec=ignore_sighup)
        shown = read_words(proc, 10)
        proc.send_signal(signal.SIGHUP)
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert (shown + out).rstrip("\n") == answer
    (_, reply) = history(home)
    assert reply["content"] == answer and not reply["interrupted"]
