"""The input line gives the terminal back as it found it, however the read ends.

prompt_toolkit puts the terminal in raw mode while the user types and restores it when
the read returns; a SIGTERM or SIGHUP (raised as a KeyboardInterrupt) can land where
it has not done so yet. `PromptReader` then restores the attributes it saw before the
read. Here the read is a stand-in that leaves the terminal raw, then raises; stdin is
the follower side of a real pseudo-terminal.
"""

from __future__ import annotations

import os
import pty
import sys
import termios
import tty
from pathlib import Path

import pytest

from chatcli.errors import Terminated
from chatcli.ui.input import PromptReader


class RawThenRaise:
    def __init__(self, error: BaseException) -> None:
        self.error = error

    def prompt(self, *args: object, **kwargs: object) -> str:
        tty.setraw(sys.stdin.fileno())
        raise self.error


@pytest.mark.parametrize("error", [Terminated(15), KeyboardInterrupt()])
def test_a_read_ended_by_a_signal_restores_the_terminal(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error: BaseException) -> None:
    leader, follower = pty.openpty()
    try:
        with os.fdopen(os.dup(follower), "r") as stdin:
            monkeypatch.setattr(sys, "stdin", stdin)
            before = termios.tcgetattr(follower)
            assert before[3] & termios.ICANON and before[3] & termios.ECHO
            reader = PromptReader(tmp_path / "input_history")
            reader.session = RawThenRaise(error)  # type: ignore[assignment]
            with pytest.raises(type(error)):
                reader.read()
            assert termios.tcgetattr(follower) == before
    finally:
        os.close(leader)
        os.close(follower)
