"""A command resolves its decoding settings once, with the model's generation_config as
read before loading: what it refuses and what it answers with are the same settings.

The tiny model's copy here says `num_beams: 2` in its generation_config.json, so the
strategy it implies (beam) differs from the one the flags and models.toml alone give
(greedy): a check made without it would refuse --show-beams and let --alt through.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import run_cli

ALT_REFUSED = ("error: --alt explores one answer's steps; strategy 'beam' returns several "
               "hypotheses, so no step's token was chosen from that step's distribution; "
               "hint: use --strategy greedy or sample\n")


def beamy(home: Path, folder: Path, tmp_path: Path) -> None:
    """`tiny` made a copy of `folder` whose generation_config.json asks for two beams."""
    copy = tmp_path / "beamy"
    shutil.copytree(folder, copy)
    config_file = copy / "generation_config.json"
    config = json.loads(config_file.read_text()) if config_file.exists() else {}
    config_file.write_text(json.dumps(config | {"num_beams": 2, "do_sample": False}))
    toml = home / "models.toml"
    toml.write_text(toml.read_text().replace(str(folder), str(copy)))


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Each resolution of decoding settings, by the strategy it gave."""
    import chatcli.chat.session
    import chatcli.decoding.settings

    real = chatcli.decoding.settings.resolve_settings
    calls: list[str] = []

    def counting(*args: Any, **kwargs: Any) -> Any:
        settings = real(*args, **kwargs)
        calls.append(settings.strategy)
        return settings

    monkeypatch.setattr(chatcli.decoding.settings, "resolve_settings", counting)
    monkeypatch.setattr(chatcli.chat.session, "resolve_settings", counting)
    yield calls


@pytest.fixture
def no_load(monkeypatch: pytest.MonkeyPatch) -> None:
    import chatcli.cli.common

    def refuse(*args: Any) -> Any:
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(chatcli.cli.common, "open_model", refuse)


def test_ask_chat_and_compare_resolve_each_request_once(home: Path, counted: list[str]) -> None:
    assert run_cli(["ask", "-n", "3", "--no-server", "hi"]).exit_code == 0
    assert counted == ["greedy"]
    counted.clear()
    chat = run_cli(["chat", "-n", "3", "--no-server"], input="Hello\nAgain\n")
    assert chat.exit_code == 0, chat.stderr
    assert counted == ["greedy"]
    counted.clear()
    compare = run_cli(["compare", "-n", "3", "--no-server", "-S", "greedy", "-S", "sample",
                       "hi"])
    assert compare.exit_code == 0, compare.stderr
    assert counted == ["greedy", "sample"]
    counted.clear()
    chat = run_cli(["chat", "-n", "3", "--no-server"], input="Hello\n/strategy sample\n")
    assert chat.exit_code == 0, chat.stderr
    assert counted == ["greedy", "sample"]  # a changed request is resolved again


def test_the_generation_config_decides_before_the_model_loads(
        home: Path, tiny_model: Any, tmp_path: Path, counted: list[str], no_load: None) -> None:
    beamy(home, tiny_model.folder, tmp_path)
    result = run_cli(["ask", "--no-server", "--alt", "1:2", "hi"])
    assert (result.exit_code, result.stderr) == (2, ALT_REFUSED)
    assert counted == ["beam"]
    assert json.loads(run_cli(["history", "list", "--json"]).stdout) == []  # nothing saved


def test_what_the_generation_config_implies_is_what_answers(
        home: Path, tiny_model: Any, tmp_path: Path, counted: list[str]) -> None:
    beamy(home, tiny_model.folder, tmp_path)
    result = run_cli(["ask", "--no-server", "--json", "--show-beams", "-n", "4", "hi"])
    assert result.exit_code == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["decoding"]["strategy"] == "beam" and out["decoding"]["num_beams"] == 2
    assert out["hypotheses"] and "pruned_beams" in out, out
    assert counted == ["beam"]
