"""Ctrl-C while the model loads stops chatcli: one line, exit 130, nothing lost, no traceback.

A KeyboardInterrupt raised inside torch or transformers does not always unwind (torch
importing numpy swallowed it and the chat started anyway; elsewhere the process died
in a C++ abort), so chatcli holds Ctrl-C while a model loads and stops when the step
ends. Here the real `chatcli` runs with a slowed load: a wrapper makes the native
model's `from_folder` touch `ready`, wait until the test touches `go`, and touch
`done`. The signal arrives while it waits: the step runs to its end (`done` exists),
nothing after it does (no prompt, no answer), and the screen (a pty read through
pyte) or stderr says "warning: interrupted while loading the model". The same
wrapper can hold the start instead, where torch is first imported (picking the device).
A question `ask` saved before loading stays whole in the history; a chat wrote nothing. A
second Ctrl-C stops at once; SIGTERM is held the same way and exits with 143.
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
from screen import ROOT, Terminal, default_signals

SLOW_LOAD = """
import sys, time
from pathlib import Path
gate, where = Path(sys.argv[1]), sys.argv[2]
def gated(real):
    def wait(*args, **kwargs):
        gate.with_suffix(".ready").touch()
        while not gate.exists():
            time.sleep(0.01)
        gate.with_suffix(".done").touch()
        return real(*args, **kwargs)
    return wait
if where == "device":  # where torch is imported first: picking the device
    from chatcli import runtime
    runtime._pick_device = gated(runtime._pick_device)
else:
    from chatcli.lm import llama
    llama.NativeCausalLM.from_folder = classmethod(gated(llama.NativeCausalLM.from_folder.__func__))
from chatcli.cli.app import main
main(sys.argv[3:])
"""
MESSAGE = "warning: interrupted while loading the model"


def wait_for(path: Path, alive: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 120
    while not path.exists():
        assert alive(), f"chatcli ended before {path.name} appeared"
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.01)


def conversations(home: Path) -> list[list[tuple[str, str]]]:
    os.environ["CHATCLI_HOME"] = str(home)
    listed = run_cli(["history", "list", "--json"])
    assert listed.exit_code == 0, listed.stderr
    found = []
    for item in json.loads(listed.stdout):
        shown = run_cli(["history", "export", str(item["id"]), "--format", "json"])
        found.append([(m["role"], m["content"]) for m in json.loads(shown.stdout)["messages"]])
    return found


def slowed_terminal(home: Path, gate: Path, args: list[str], where: str = "load") -> Terminal:
    return Terminal(home, [str(gate), where, *args], python=["-c", SLOW_LOAD])


@pytest.mark.parametrize("where", ["device", "load"])
def test_ctrl_c_while_chat_loads_stops_before_the_chat(home: Path, tmp_path: Path,
                                                       where: str) -> None:
    gate = tmp_path / "go"
    term = slowed_terminal(home, gate, ["chat"], where)
    wait_for(gate.with_suffix(".ready"), term.child.isalive)
    term.child.sendintr()
    term.pump(0.5)
    assert term.child.isalive()  # held: the step it interrupted runs to its end
    gate.touch()
    assert term.finish() == 130
    assert gate.with_suffix(".done").exists()
    assert term.lines()[-2:] == ["^C", MESSAGE]
    assert "Traceback" not in term.text() and "›" not in term.text()  # no prompt came
    assert not term.cursor_hidden
    assert conversations(home) == []


def test_ctrl_c_while_ask_loads_keeps_the_question(home: Path, tmp_path: Path) -> None:
    gate = tmp_path / "go"
    question = "What is the capital of France, and why?"
    term = slowed_terminal(home, gate, ["ask", "-n", "5", question])
    wait_for(gate.with_suffix(".ready"), term.child.isalive)
    term.child.sendintr()
    term.pump(0.5)
    gate.touch()
    assert term.finish() == 130
    assert term.lines() == ["^C", MESSAGE]
    assert conversations(home) == [[("user", question)]]  # whole, and never answered


def start_piped(home: Path, gate: Path, args: list[str], stdin: str,
                where: str = "load") -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if k != "CHATCLI_DEBUG"}
    env.update(CHATCLI_HOME=str(home), PYTHONPATH=str(ROOT))
    source = home / "stdin.txt"
    source.write_text(stdin)
    with source.open() as piped:
        return subprocess.Popen([sys.executable, "-c", SLOW_LOAD, str(gate), where, *args],
                                env=env, preexec_fn=default_signals,
                                text=True, stdin=piped, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, cwd=ROOT)


def test_ctrl_c_while_a_piped_ask_loads_keeps_all_it_read(home: Path, tmp_path: Path) -> None:
    gate = tmp_path / "go"
    piped = "".join(f"line {i} of a long piped prompt\n" for i in range(2000))
    proc = start_piped(home, gate, ["ask", "-n", "5", "Summarize this."], piped)
    wait_for(gate.with_suffix(".ready"), lambda: proc.poll() is None)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.3)
    assert proc.poll() is None
    gate.touch()
    out, err = proc.communicate(timeout=120)
    assert (proc.returncode, out, err) == (130, "", MESSAGE + "\n")
    ((role, content),) = conversations(home)[0]
    assert role == "user" and content.startswith(piped) and content.endswith("Summarize this.")


def test_ctrl_c_while_a_piped_chat_loads_writes_nothing(home: Path, tmp_path: Path) -> None:
    gate = tmp_path / "go"
    proc = start_piped(home, gate, ["chat", "-n", "5"], "first message\nsecond message\n")
    wait_for(gate.with_suffix(".ready"), lambda: proc.poll() is None)
    proc.send_signal(signal.SIGINT)
    gate.touch()
    out, err = proc.communicate(timeout=120)
    assert (proc.returncode, out, err) == (130, "", MESSAGE + "\n")
    assert conversations(home) == []


def test_a_second_ctrl_c_stops_at_once(home: Path, tmp_path: Path) -> None:
    gate = tmp_path / "never"
    proc = start_piped(home, gate, ["ask", "-n", "5", "question"], "")
    wait_for(gate.with_suffix(".ready"), lambda: proc.poll() is None)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.3)
    assert proc.poll() is None
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert (proc.returncode, out, err) == (130, "", MESSAGE + "\n")
    assert not gate.with_suffix(".done").exists()  # the step was cut short
    assert conversations(home) == [[("user", "question")]]


def test_sigterm_while_loading_is_held_too(home: Path, tmp_path: Path) -> None:
    gate = tmp_path / "go"
    proc = start_piped(home, gate, ["ask", "-n", "5", "question"], "")
    wait_for(gate.with_suffix(".ready"), lambda: proc.poll() is None)
    proc.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    assert proc.poll() is None
    gate.touch()
    out, err = proc.communicate(timeout=120)
    assert (proc.returncode, out, err) == (143, "", "")
    assert gate.with_suffix(".done").exists()
    assert conversations(home) == [[("user", "question")]]


def test_held_ctrl_c_in_process_and_the_next_run(home: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """The same in one process (main() called twice, as tests and embedders do): the held
    Ctrl-C stops the first run only."""
    from chatcli import loader

    real = loader._load
    calls: list[str] = []

    def interrupted_once(*args: object, **kwargs: object) -> object:
        if not calls:
            os.kill(os.getpid(), signal.SIGINT)  # held: the load goes on to its end
            calls.append("interrupted")
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(loader, "_load", interrupted_once)
    # Python's own Ctrl-C handler, whatever pytest inherited (a command started with `&`
    # by a non-interactive shell has SIGINT ignored, and chatcli keeps it so)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        first = run_cli(["ask", "-n", "2", "hi"])
    finally:
        signal.signal(signal.SIGINT, previous)
    assert (first.exit_code, first.stdout, first.stderr) == (130, "", MESSAGE + "\n")
    second = run_cli(["ask", "-n", "2", "hi"])
    assert (second.exit_code, second.stderr) == (0, "")
    assert second.stdout
