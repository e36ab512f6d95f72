"""The `openai` backend against a second real server: transformers' own `transformers serve`.

Starts `transformers serve` (transformers' serving extras: fastapi, uvicorn, openai; `pip
install -e ".[server-tests]"`) offline (HF_HUB_OFFLINE=1) on a free loopback port, pinned
to chatcli's default model as chatcli converted it (the safetensors folder that `chatcli
pull smollm2-135m` reports), in float32 on the CPU with one thread. The tests run the real
`chatcli` command in a subprocess with a models.toml alias `backend = "openai"`, `server =
"transformers"`.

What they hold the server to: a greedy answer through it is token for token chatcli's
own local answer from the same folder in float32 (the server runs transformers' forward
pass, chatcli its native one; `--dtype auto` would pick bf16 locally on a CPU with AMX and
differ), and the server's own non-streamed answer; `--json` and `--stats` report what
the local model reports (prompt and completion tokens, finish reason), except token ids;
a piped two-turn `chat` equals the local one; the model the server lists answers a
one-off `--base-url`; a seeded sample reproduces and is not the greedy answer. What this
server ignores or misreads (logprobs, `n`, beam search, frequency and presence penalties,
`stop`, whose text it leaves in the answer) is refused with one line and exit status 2
before any request: the server's access log is the witness.

Marked slow. Without transformers' serving extras they are skipped, except under CI
(CI set), where that is a failure.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from conftest import http_json, pull_default, run_cli

pytestmark = pytest.mark.slow
ALIAS = "served"  # the remote alias: transformers serve
LOCAL = "local"  # the same folder, run by chatcli itself in float32
QUESTION = "Name three colours."
REPO = Path(__file__).resolve().parents[1]
START_TIMEOUT_S = 300.0  # loading takes ~10 s on an idle machine; CI's two cores are shared
_ACCESS = re.compile(r'"(GET|POST) (\S+) HTTP/1\.1" \d{3}')


def _require_serving() -> None:
    missing = [m for m in ("fastapi", "uvicorn", "openai", "pydantic")
               if importlib.util.find_spec(m) is None]
    if missing:
        message = (f"transformers serve needs {', '.join(missing)} "
                   '(pip install -e ".[server-tests]")')
        if os.environ.get("CI"):
            pytest.fail(f"required in CI: {message}")
        pytest.skip(message)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """`transformers serve` pinned to one model folder; its log is a file (never a pipe
    that could fill and block it) and doubles as the record of the requests it got."""

    def __init__(self, folder: Path, scratch: Path) -> None:
        self.folder = folder
        self.model = str(folder)  # a pinned server answers to exactly this name
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.log = scratch / "transformers-serve.log"
        # One thread: on shared cores a two-thread server decoded ~10x slower (1.5 vs 13.8
        # tokens/s under load), and its answers stay token-identical to chatcli's.
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_UPDATE_CHECK": "1",
               "HF_HOME": str(scratch / "hf-home"), "PYTHONUNBUFFERED": "1",
               "OMP_NUM_THREADS": "1"}
        started = time.monotonic()
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "transformers.cli.transformers", "serve", self.model,
                 "--host", "127.0.0.1", "--port", str(self.port), "--device", "cpu",
                 "--dtype", "float32"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env)
        while time.monotonic() < started + START_TIMEOUT_S:
            if self.proc.poll() is not None:
                raise RuntimeError(f"transformers serve exited with {self.proc.returncode}: "
                                   f"{self.log.read_text(errors='replace')[-2000:]}")
            try:  # the model loads before the port opens: up means ready
                if self.request("GET", "/health")[0] == 200:
                    self.startup_s = time.monotonic() - started
                    return
            except OSError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"transformers serve did not answer within {START_TIMEOUT_S:g} s")

    def request(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        return http_json(self.port, method, path, body, timeout=START_TIMEOUT_S)

    def requests(self) -> list[str]:
        """Every request the server has logged so far, as 'METHOD /path' (health checks
        left out)."""
        text = self.log.read_text(errors="replace")
        return [f"{m[1]} {m[2]}" for m in _ACCESS.finditer(text) if m[2] != "/health"]

    def greedy(self, messages: list[dict[str, str]], max_tokens: int) -> str:
        """The server's own greedy answer, not streamed and without chatcli."""
        status, data = self.request("POST", "/v1/chat/completions", {
            "model": self.model, "messages": messages, "max_tokens": max_tokens,
            "temperature": 0.0})
        assert status == 200, data
        return str(data["choices"][0]["message"]["content"])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.proc.wait(timeout=30)


def _converted_folder(real_home: Path) -> Path:
    """The safetensors folder chatcli converted the default GGUF into (pulled once)."""
    pull_default(real_home)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CHATCLI_HOME", str(real_home))
        mp.delenv("CHATCLI_DEBUG", raising=False)
        result = run_cli(["pull", "smollm2-135m"])
    prefix = "smollm2-135m: already cached at "
    assert result.exit_code == 0 and result.stdout.startswith(prefix), result
    folder = Path(result.stdout[len(prefix):].strip())
    assert (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()
    return folder


@pytest.fixture(scope="module")
def server(real_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    _require_serving()
    running = Server(_converted_folder(real_home), tmp_path_factory.mktemp("transformers-serve"))
    yield running
    running.stop()


def _write_models(home: Path, server: Server) -> None:
    (home / "models.toml").write_text(
        f"[models.{ALIAS}]\n"
        'backend = "openai"\n'
        f"base_url = {json.dumps(server.url)}\n"
        f"model = {json.dumps(server.model)}\n"
        'server = "transformers"\n'
        "context_window = 8192\n"
        "timeout = 300\n\n"
        f"[models.{LOCAL}]\n"
        'source = "path"\n'
        f"path = {json.dumps(server.model)}\n"
        'dtype = "float32"\n')


@dataclass(frozen=True)
class Run:
    code: int
    stdout: str
    stderr: str


def chatcli(home: Path, args: list[str], input: str | None = None) -> Run:
    """The `chatcli` command in a subprocess (stdin: `input`, else nothing)."""
    env = {**os.environ, "CHATCLI_HOME": str(home), "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH"))
                                         if p)}
    env.pop("CHATCLI_DEBUG", None)
    proc = subprocess.run(
        [sys.executable, "-m", "chatcli", *args], input=input, capture_output=True,
        stdin=subprocess.DEVNULL if input is None else None, text=True, encoding="utf-8",
        env=env, timeout=600)
    return Run(proc.returncode, proc.stdout, proc.stderr)


@pytest.fixture(scope="module")
def local(server: Server, tmp_path_factory: pytest.TempPathFactory
          ) -> Callable[[list[str], str | None], Run]:
    """chatcli's own answer from the served folder (alias `local`), each run once."""
    home = tmp_path_factory.mktemp("local-home")
    _write_models(home, server)
    runs: dict[tuple[tuple[str, ...], str | None], Run] = {}

    def run(args: list[str], input: str | None = None) -> Run:
        key = (tuple(args), input)
        if key not in runs:
            runs[key] = chatcli(home, [args[0], "-m", LOCAL, *args[1:]], input)
            assert runs[key].code == 0, runs[key].stderr
        return runs[key]

    return run


@pytest.fixture
def home(tmp_path: Path, server: Server) -> Path:
    root = tmp_path / "home"
    root.mkdir()
    _write_models(root, server)
    return root


def _history(home: Path) -> list[tuple[str, str, int]]:
    with sqlite3.connect(home / "data" / "history.db") as db:
        return list(db.execute("SELECT role, content, interrupted FROM messages ORDER BY id"))


def test_ask_greedy_is_chatcli_local_answer(server: Server, home: Path, local: Any) -> None:
    expected = local(["ask", "-n", "16", QUESTION]).stdout
    assert expected.strip()
    before = len(server.requests())
    result = chatcli(home, ["ask", "-m", ALIAS, "-n", "16", QUESTION])
    assert result == Run(0, expected, "")
    assert server.requests()[before:] == ["POST /v1/chat/completions"]
    own = server.greedy([{"role": "user", "content": QUESTION}], 16)
    assert expected == own + "\n"
    assert _history(home) == [("user", QUESTION, 0), ("assistant", own, 0)]


def test_json_reports_what_the_local_model_reports(server: Server, home: Path,
                                                   local: Any) -> None:
    args = ["ask", "-n", "16", "-S", "greedy", "--json", "What is the capital of France?"]
    result = chatcli(home, [args[0], "-m", ALIAS, *args[1:]])
    assert result.code == 0 and result.stderr == ""
    remote, mine = json.loads(result.stdout), json.loads(local(args).stdout)
    assert set(remote) == set(mine)
    assert remote["text"] == mine["text"] != ""
    assert remote["finish_reason"] == mine["finish_reason"] == "stop"  # before -n 16
    assert remote["prompt_tokens"] == mine["prompt_tokens"]  # the same chat template
    assert remote["completion_tokens"] == mine["completion_tokens"] == len(mine["token_ids"])
    assert remote["model"] == ALIAS
    assert remote["token_ids"] is None  # text only: a server's ids are not chatcli's
    assert remote["implementation"] == {"name": "remote", "reason": None}
    del remote["decoding"]["seed"], mine["decoding"]["seed"]  # drawn per run
    assert remote["decoding"] == mine["decoding"]
    assert remote["decoding"]["strategy"] == "greedy"
    assert remote["time_to_first_token_s"] > 0 and remote["tokens_per_second"] >= 0


def test_piped_chat_keeps_the_conversation(server: Server, home: Path, local: Any) -> None:
    lines = "What is the capital of France?\nAnd of Italy?\n"
    args = ["chat", "-n", "16", "-s", "You are terse."]
    expected = local(args, lines).stdout
    before = len(server.requests())
    result = chatcli(home, [args[0], "-m", ALIAS, *args[1:]], input=lines)
    assert result == Run(0, expected, "")
    assert server.requests()[before:] == ["POST /v1/chat/completions"] * 2
    history = _history(home)
    assert [(role, content) for role, content, _ in history if role == "user"] == [
        ("user", "What is the capital of France?"), ("user", "And of Italy?")]
    assert [role for role, _, _ in history] == ["user", "assistant"] * 2
    assert "".join(c + "\n" for role, c, _ in history if role == "assistant") == expected


def test_stats_line(server: Server, home: Path, local: Any) -> None:
    counted = json.loads(local(["ask", "-n", "16", "--json", QUESTION]).stdout)
    result = chatcli(home, ["ask", "-m", ALIAS, "-n", "16", "--stats", QUESTION])
    assert result.code == 0
    assert result.stdout == local(["ask", "-n", "16", QUESTION]).stdout
    assert re.fullmatch(
        rf"stats: model={ALIAS} strategy=greedy seed=\d+ "
        rf"prompt_tokens={counted['prompt_tokens']} completion_tokens=16 "
        r"time_to_first_token=\d+\.\d{3}s tokens_per_second=\d+\.\d finish_reason=length "
        r"implementation=remote\n", result.stderr), result.stderr


def test_the_listed_model_answers_a_one_off_base_url(server: Server, home: Path,
                                                     local: Any) -> None:
    status, listing = server.request("GET", "/v1/models")
    assert status == 200
    assert listing == {"object": "list", "data": [{
        "id": server.model, "object": "model", "owned_by": "local", "created": 0,
        "status": {"value": "loaded"}}]}
    before = len(server.requests())
    result = chatcli(home, ["ask", "--base-url", server.url, "-n", "16", QUESTION])
    assert result == Run(0, local(["ask", "-n", "16", QUESTION]).stdout, "")
    assert server.requests()[before:] == ["GET /v1/models", "POST /v1/chat/completions"]


def test_a_seeded_sample_reproduces_and_is_no_greedy_answer(server: Server, home: Path,
                                                            local: Any) -> None:
    """transformers serve decodes greedily whatever `temperature` says unless the request
    turns sampling on (`generation_config` with do_sample): a profile that sends only
    temperature, top_p and seed answers -S sample with the greedy answer."""
    def sample(seed: int) -> dict[str, Any]:
        result = chatcli(home, ["ask", "-m", ALIAS, "-n", "16", "-S", "sample", "-t", "1.5",
                                "--seed", str(seed), "--json", QUESTION])
        assert result.code == 0, result.stderr
        return dict(json.loads(result.stdout))

    one, again, other = sample(1), sample(1), sample(2)
    assert one["decoding"]["seed"] == 1 and one["decoding"]["strategy"] == "sample"
    assert again["text"] == one["text"]
    greedy = local(["ask", "-n", "16", QUESTION]).stdout.removesuffix("\n")
    assert greedy not in (one["text"], other["text"])
    assert other["text"] != one["text"]


_WHERE = f"'{ALIAS}' (backend openai, server transformers)"


@pytest.mark.parametrize(("args", "line"), [
    (["--show-candidates", "3"], "error: --show-candidates needs per-token log-probabilities, "
     f"which '{ALIAS}' (server transformers) does not return; hint: remove it, or use a local "
     "model (-m)\n"),
    (["-S", "beam"], f"error: -S beam needs a server with beam search; '{ALIAS}' is server "
     "'transformers'; hint: set server = \"vllm\" for the alias if it is vLLM, or use a local "
     "model (-m)\n"),
    (["--frequency-penalty", "0.5"], f"error: --frequency-penalty cannot be sent to {_WHERE}; "
     "hint: remove it, or use a local model (-m)\n"),
    (["--presence-penalty", "0.5"], f"error: --presence-penalty cannot be sent to {_WHERE}; "
     "hint: remove it, or use a local model (-m)\n"),
    # The server stops at the text but leaves it in the answer; chatcli's --stop does not.
    (["--stop", "obvious"], f"error: --stop cannot be sent to {_WHERE}; hint: remove it, or "
     "use a local model (-m)\n"),
], ids=["candidates", "beam", "frequency-penalty", "presence-penalty", "stop"])
def test_refused_before_any_request(server: Server, home: Path, args: list[str],
                                    line: str) -> None:
    before = len(server.requests())
    result = chatcli(home, ["ask", "-m", ALIAS, "-n", "16", *args, QUESTION])
    assert result == Run(2, "", line)
    assert server.requests()[before:] == []
