"""The `openai` backend against a real server: llama.cpp's, serving the default GGUF.

Starts `python -m llama_cpp.server` (`pip install -e ".[server-tests]"`) on a free
loopback port and drives `ask` (and `ask --raw`: the completions endpoint), piped
`chat`, `compare` and `--show-candidates` through a models.toml alias with backend =
"openai". Greedy answers through chatcli
must equal llama.cpp's own answer to the same request, made without chatcli. Killing
the server mid-answer must give one clear error and keep the partial answer.

Marked slow. Without llama_cpp installed they are skipped, except under CI (CI set),
where that is a failure.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import run_cli
from llamacpp_server import LlamaServer, default_gguf, require_llama_cpp

pytestmark = pytest.mark.slow
ALIAS = "local-server"


Server = LlamaServer


@pytest.fixture(scope="module")
def server(real_home: Path) -> Iterator[Server]:
    require_llama_cpp()
    running = Server(default_gguf(real_home))
    yield running
    running.stop()


def _write_alias(home: Path, url: str) -> None:
    (home / "models.toml").write_text(
        f'[models.{ALIAS}]\nbackend = "openai"\nbase_url = "{url}"\nmodel = "smollm2"\n'
        'server = "llama.cpp"\ncontext_window = 2048\n')


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, server: Server) -> Path:
    root = tmp_path / "home"
    root.mkdir()
    _write_alias(root, server.url)
    monkeypatch.setenv("CHATCLI_HOME", str(root))
    monkeypatch.delenv("CHATCLI_DEBUG", raising=False)
    return root


def _history(home: Path) -> list[tuple[str, str, int]]:
    with sqlite3.connect(home / "data" / "history.db") as db:
        return list(db.execute("SELECT role, content, interrupted FROM messages ORDER BY id"))


def test_ask_greedy_equals_llama_cpp(server: Server, home: Path) -> None:
    result = run_cli(["ask", "-m", ALIAS, "-n", "48", "Name three colours."])
    assert result.exit_code == 0, result.stderr
    assert result.stderr == ""
    expected = server.greedy([{"role": "user", "content": "Name three colours."}], 48)
    assert expected.strip()
    assert result.stdout == expected + ("" if expected.endswith("\n") else "\n")
    assert _history(home) == [("user", "Name three colours.", 0), ("assistant", expected, 0)]


def test_piped_chat_keeps_the_conversation(server: Server, home: Path) -> None:
    result = run_cli(["chat", "-m", ALIAS, "-n", "32", "-s", "You are terse."],
                     input="What is the capital of France?\nAnd of Italy?\n")
    assert result.exit_code == 0, result.stderr
    messages = [{"role": "system", "content": "You are terse."},
                {"role": "user", "content": "What is the capital of France?"}]
    first = server.greedy(messages, 32)
    messages += [{"role": "assistant", "content": first},
                 {"role": "user", "content": "And of Italy?"}]
    second = server.greedy(messages, 32)
    assert result.stdout == f"{first}\n{second}\n"
    assert [m[1] for m in _history(home)] == [messages[1]["content"], first,
                                              "And of Italy?", second]


def test_compare_greedy_and_seeded_sample(server: Server, home: Path) -> None:
    args = ["compare", "-m", ALIAS, "-n", "24", "--seed", "1", "--json", "-S", "greedy",
            "-S", "sample:temperature=0.8,top_p=0.9", "Name a fruit."]
    result = run_cli(args)
    assert result.exit_code == 0, result.stderr
    greedy, sample = json.loads(result.stdout)["results"]
    assert greedy["text"] == server.greedy([{"role": "user", "content": "Name a fruit."}], 24)
    assert greedy["logprob"] < 0 and greedy["diverges_at"] is None
    again = json.loads(run_cli(args).stdout)["results"][1]
    assert again["text"] == sample["text"]  # the seed is sent: the same answer again
    plain = run_cli(args[:7] + args[8:])
    assert plain.stdout.splitlines()[:2] == ["== greedy ==", greedy["text"].splitlines()[0]]


def test_show_candidates_from_the_servers_logprobs(server: Server, home: Path) -> None:
    result = run_cli(["ask", "-m", ALIAS, "-n", "16", "--json", "--show-candidates", "3",
                      "The capital of France is"])
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert "".join(t["text"] for t in data["tokens"]) == data["text"]
    for token in data["tokens"]:
        top = token["top_model"]
        assert len(top) == 3
        assert top[0]["p"] >= top[1]["p"] >= top[2]["p"]
        assert token["text"] == top[0]["text"]  # greedy: the chosen token is the likeliest
        assert token["probability_drawn"] == pytest.approx(top[0]["p"])
    table = run_cli(["ask", "-m", ALIAS, "-n", "16", "--show-candidates", "3",
                     "The capital of France is"])
    assert table.stdout.splitlines()[0] == data["text"]
    assert table.stdout.splitlines()[1].startswith("step  token")


def test_raw_greedy_equals_llama_cpp_s_completion(server: Server, home: Path) -> None:
    """--raw on a server: its completions endpoint, the text as it is (llama.cpp adds the
    model's BOS itself, as chatcli does locally)."""
    text = "The capital of France is"
    result = run_cli(["ask", "--raw", "-m", ALIAS, "-n", "24", "--json", text])
    assert result.exit_code == 0, result.stderr
    status, data = server.request("POST", "/v1/completions", {
        "prompt": text, "max_tokens": 24, "temperature": 0.0, "repeat_penalty": 1.0})
    assert status == 200, data
    expected = str(data["choices"][0]["text"])
    out = json.loads(result.stdout)
    assert expected.strip() and (out["text"], out["raw"]) == (expected, True)


def test_killing_the_server_mid_answer(real_home: Path, server: Server, home: Path) -> None:
    doomed = Server(default_gguf(real_home))
    try:
        _write_alias(home, doomed.url)
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
        proc = subprocess.Popen(
            [sys.executable, "-m", "chatcli", "ask", "-m", ALIAS, "-n", "1500",
             "Write a very long story about a dragon who learns to cook."],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        assert proc.stdout is not None
        first = os.read(proc.stdout.fileno(), 4096)  # unbuffered: communicate() reads on
        doomed.stop()
        rest, err = proc.communicate(timeout=120)
    finally:
        doomed.stop()
    printed = (first + rest).decode()
    assert proc.returncode == 1
    assert printed.strip()
    lines = err.decode().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(f"error: the answer from {doomed.url} was cut off: ")
    assert lines[0].endswith("; hint: the partial answer is kept in the history, marked "
                             "interrupted; is the server still running?")
    user, reply = _history(home)[-2:]
    assert user == ("user", "Write a very long story about a dragon who learns to cook.", 0)
    assert reply[0] == "assistant" and reply[2] == 1
    assert printed == reply[1] + ("" if reply[1].endswith("\n") else "\n")
    shown = run_cli(["history", "show", "1"]).stdout
    assert "interrupted" in shown
