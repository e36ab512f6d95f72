"""[models.X.defaults] accepts a plugin strategy's parameters, typed and checked like the rest."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_plugins import build_wheel, chatcli


@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("plugin")
    site = tmp / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--quiet",
         "--disable-pip-version-check", "--target", str(site), str(build_wheel(tmp / "dist"))],
        check=True, env={**os.environ, "PIP_CONFIG_FILE": os.devnull},
    )
    return site


def with_defaults(home: Path, defaults: str) -> tuple[Path, int]:
    path = home / "models.toml"
    line = path.read_text().count("\n") + 2
    path.write_text(path.read_text() + f"[models.tiny.defaults]\n{defaults}\n")
    return path, line


def test_plugin_parameter_in_models_toml_defaults(plugin_site: Path, home: Path) -> None:
    greedy = chatcli(plugin_site, home, "ask", "--json", "-n", "12", "Hello there")
    assert greedy.returncode == 0, greedy.stderr
    with_defaults(home, 'strategy = "ranked"\nrank = 1')
    ranked = chatcli(plugin_site, home, "ask", "--json", "-n", "12", "Hello there")
    assert ranked.returncode == 0, ranked.stderr
    data = json.loads(ranked.stdout)
    assert data["decoding"]["strategy"] == "ranked" and data["decoding"]["rank"] == 1
    assert data["text"] == json.loads(greedy.stdout)["text"]  # rank 1 is argmax
    shown = chatcli(plugin_site, home, "models", "show", "tiny")
    assert shown.returncode == 0, shown.stderr
    assert "  rank              1 (models.toml)" in shown.stdout.splitlines()


@pytest.mark.parametrize(("defaults", "message"), [
    ('rank = "x"', "defaults.rank must be an integer, got 'x'; hint: e.g. rank = 2"),
    ("rank = 0", "defaults.rank must be an integer >= 1 (got 0); "
     "hint: 'chatcli strategies' lists every parameter"),
    ("rnak = 1", "defaults has unknown parameter 'rnak'; hint: did you mean 'rank'?"),
])
def test_bad_plugin_defaults_name_file_and_line(plugin_site: Path, home: Path, defaults: str,
                                                message: str) -> None:
    path, line = with_defaults(home, defaults)
    result = chatcli(plugin_site, home, "ask", "hi")
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr.splitlines()[-1] == f"error: {path}:{line}: [models.tiny] {message}"
    assert "Traceback" not in result.stderr
