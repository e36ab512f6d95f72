"""Third-party strategies: a plugin distribution built and installed in a temp dir."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

PLUGIN = '''
"""A demo chatcli strategy plugin: pick the token of a given rank."""
from dataclasses import dataclass
from typing import ClassVar

from chatcli.decoding.base import check, param
from chatcli.decoding.loop import token_loop


@dataclass(frozen=True)
class RankParams:
    rank: int = param(2, "which token to pick: 1 is the most likely")

    def __post_init__(self):
        check(self.rank >= 1, type(self), "rank", "an integer >= 1", self.rank)


class Ranked:
    """Always pick the token of the given rank."""

    name: ClassVar[str] = "ranked"
    Params: ClassVar[type] = RankParams

    def decode(self, lm, prompt_ids, params, ctx):
        def pick(scores):
            return int(scores[0].argsort(descending=True, stable=True)[params.rank - 1])
        return token_loop(lm, prompt_ids, pick, ctx)


def register(register):
    register(Ranked)
'''


def build_wheel(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    wheel = folder / "chatcli_plugin_demo-0.1-py3-none-any.whl"
    info = "chatcli_plugin_demo-0.1.dist-info"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("chatcli_plugin_demo.py", PLUGIN)
        z.writestr(f"{info}/METADATA",
                   "Metadata-Version: 2.1\nName: chatcli-plugin-demo\nVersion: 0.1\n")
        z.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\n"
                   "Root-Is-Purelib: true\nTag: py3-none-any\n")
        z.writestr(f"{info}/entry_points.txt",
                   "[chatcli.strategies]\nranked = chatcli_plugin_demo:register\n"
                   "broken = chatcli_plugin_demo:missing\n")
        z.writestr(f"{info}/RECORD", "")
    return wheel


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


def chatcli(site: Path, home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env.pop("CHATCLI_NO_PLUGINS", None)
    env["CHATCLI_HOME"] = str(home)
    env["PYTHONPATH"] = os.pathsep.join([str(site), str(Path(__file__).resolve().parents[1])])
    return subprocess.run([sys.executable, "-m", "chatcli", *args], capture_output=True,
                          text=True, env=env, stdin=subprocess.DEVNULL)


def test_plugin_is_listed_and_used(plugin_site: Path, home: Path) -> None:
    listing = chatcli(plugin_site, home, "strategies")
    assert listing.returncode == 0, listing.stderr
    assert ("ranked: Always pick the token of the given rank. "
            "[plugin chatcli_plugin_demo:register (chatcli-plugin-demo)]") in listing.stdout
    assert "  -o rank  int, default 2: which token to pick: 1 is the most likely" in listing.stdout
    assert listing.stderr == (
        "warning: strategy plugin 'broken' (chatcli_plugin_demo:missing) skipped: "
        "module 'chatcli_plugin_demo' has no attribute 'missing'\n"
    )

    def answer(*args: str) -> dict:
        res = chatcli(plugin_site, home, "ask", "--json", "-n", "12", *args, "Hello there")
        assert res.returncode == 0, res.stderr
        return json.loads(res.stdout)

    greedy = answer()
    first = answer("-S", "ranked", "-o", "rank=1")
    second = answer("-S", "ranked", "-o", "rank=2")
    assert first["text"] == greedy["text"]  # rank 1 is argmax
    assert second["text"] != greedy["text"]
    assert second["decoding"]["strategy"] == "ranked" and second["decoding"]["rank"] == 2

    bad = chatcli(plugin_site, home, "ask", "-S", "ranked", "-o", "rank=0", "hi")
    assert bad.returncode == 2
    assert bad.stderr.endswith(
        "error: -o rank must be an integer >= 1 (got 0); "
        "hint: 'chatcli strategies' lists every parameter\n"
    )


def test_plugins_can_be_switched_off(plugin_site: Path, home: Path) -> None:
    env = dict(os.environ, CHATCLI_NO_PLUGINS="1", CHATCLI_HOME=str(home),
               PYTHONPATH=os.pathsep.join([str(plugin_site),
                                           str(Path(__file__).resolve().parents[1])]))
    off = subprocess.run([sys.executable, "-m", "chatcli", "strategies"], capture_output=True,
                         text=True, env=env, check=True)
    assert "ranked" not in off.stdout and off.stderr == ""


def test_registry_rejects_duplicates_and_invalid_strategies() -> None:
    from chatcli.decoding.greedy import Greedy
    from chatcli.decoding.registry import StrategyRegistry, register_builtins

    reg = StrategyRegistry()
    register_builtins(reg.register)
    assert reg.names() == ["greedy", "sample", "beam"]
    with pytest.raises(ValueError, match="strategy 'greedy' is already registered by built-in"):
        reg.register(Greedy)

    class NoParams:
        name = "np"

    with pytest.raises(ValueError, match="strategy 'np' needs a `Params` dataclass"):
        reg.register(NoParams)
