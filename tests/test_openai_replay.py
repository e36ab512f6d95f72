"""The `openai` backend against a loopback HTTP server that replays recorded responses.

The responses in tests/data/openai/*.http were recorded from llama.cpp's OpenAI-compatible
server (`tests/data/openai/record.py`); requests.json holds the requests that produced
them, and the tests check that chatcli sends exactly those. The failures a server does
not produce on demand (429, a malformed or cut stream, a stall) are built from the
recordings. Nothing here leaves 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from conftest import run_cli

DATA = Path(__file__).resolve().parent / "data" / "openai"
REQUESTS = json.loads((DATA / "requests.json").read_text())
ANSWER = "The fruit I mentioned is the Banana."


@dataclass
class Response:
    status: int
    reason: str
    headers: dict[str, str]
    body: bytes
    cut_after: int | None = None  # close the connection after this many body bytes
    delay: float = 0.0  # wait this long before answering

    @classmethod
    def recorded(cls, name: str, **kw: Any) -> Response:
        raw = (DATA / f"{name}.http").read_bytes()
        head, _, body = raw.partition(b"\n\n")
        status_line, *header_lines = head.decode().split("\n")
        code, _, reason = status_line.partition(" ")
        headers = dict(line.split(": ", 1) for line in header_lines)
        return cls(int(code), reason, headers, body, **kw)


def sse(*events: str) -> bytes:
    return b"".join(f"data: {e}\r\n\r\n".encode() for e in events)


@dataclass
class Replay:
    """Answers each request with the next queued response (the last one repeats)."""

    responses: list[Response] = field(default_factory=list)
    requests: list[dict[str, Any]] = field(default_factory=list)
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def bodies(self) -> list[Any]:
        return [r["body"] for r in self.requests if r["method"] == "POST"]


def _handler(replay: Replay) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            pass

        def _answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            replay.requests.append({
                "method": self.command, "path": self.path,
                "auth": self.headers.get("Authorization"),
                "body": json.loads(raw) if raw else None,
            })
            index = min(len(replay.requests), len(replay.responses)) - 1
            r = replay.responses[index]
            time.sleep(r.delay)
            self.send_response(r.status, r.reason)
            for key, value in r.headers.items():
                self.send_header(key, value)
            body = r.body if r.cut_after is None else r.body[: r.cut_after]
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for start in range(0, len(body), 200):  # several chunks, like a real stream
                part = body[start : start + 200]
                self.wfile.write(f"{len(part):x}\r\n".encode() + part + b"\r\n")
                self.wfile.flush()
            if r.cut_after is None:
                self.wfile.write(b"0\r\n\r\n")
            else:
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)

        do_GET = do_POST = _answer

    return Handler


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that hangs up early (it refused the answer) is no test failure


@pytest.fixture
def replay() -> Iterator[Replay]:
    state = Replay()
    server = _Server(("127.0.0.1", 0), _handler(state))
    state.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state
    server.shutdown()
    server.server_close()


@pytest.fixture
def remote(home: Path, replay: Replay) -> Replay:
    """`local-server`: an openai alias on the replay server, as for llama.cpp's server."""
    with (home / "models.toml").open("a") as f:
        f.write(
            "\n[models.local-server]\n"
            'backend = "openai"\n'
            f'base_url = "{replay.url}"\n'
            'model = "smollm2"\n'
            'server = "llama.cpp"\n'
            "context_window = 2048\n"
        )
    return replay


def history(home: Path) -> list[tuple[str, str, int]]:
    with sqlite3.connect(home / "data" / "history.db") as db:
        return list(db.execute("SELECT role, content, interrupted FROM messages ORDER BY id"))


# -- answers ------------------------------------------------------------------------
def test_ask_sends_the_recorded_request_and_prints_the_answer(remote: Replay,
                                                              home: Path) -> None:
    remote.responses = [Response.recorded("greedy")]
    result = run_cli(["ask", "-m", "local-server", "-n", "12", "Name a fruit."])
    assert result.exit_code == 0, result.stderr
    assert result.stdout == ANSWER + "\n"
    assert result.stderr == ""
    assert remote.bodies() == [REQUESTS["greedy"][2]]
    assert remote.requests[0]["path"] == "/v1/chat/completions"
    assert remote.requests[0]["auth"] is None
    assert history(home) == [("user", "Name a fruit.", 0), ("assistant", ANSWER, 0)]


def test_a_remote_model_needs_no_torch(remote: Replay, home: Path) -> None:
    remote.responses = [Response.recorded("greedy")]
    code = (
        "import sys\n"
        "from chatcli.cli.app import main\n"
        "try:\n    main(['ask', '-m', 'local-server', '-n', '12', 'Name a fruit.'])\n"
        "except SystemExit:\n    pass\n"
        "print([m for m in ('torch', 'transformers') if m in sys.modules], file=sys.stderr)\n"
    )
    env = {**os.environ, "CHATCLI_HOME": str(home),
           "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         stdin=subprocess.DEVNULL, timeout=60)
    assert out.stdout == ANSWER + "\n"
    assert out.stderr == "[]\n"


def test_ask_json(remote: Replay) -> None:
    remote.responses = [Response.recorded("greedy")]
    result = run_cli(["ask", "-m", "local-server", "-n", "12", "--json", "Name a fruit."])
    data = json.loads(result.stdout)
    assert data["text"] == ANSWER
    assert data["model"] == "local-server"
    # No usage from this server: the documented estimate, ceil(13 / 4) + 4 + 3.
    assert data["prompt_tokens"] == 11
    assert data["completion_tokens"] == 9
    assert data["finish_reason"] == "stop"
    assert data["token_ids"] is None
    assert data["decoding"]["strategy"] == "greedy"


def test_show_candidates_from_top_logprobs(remote: Replay) -> None:
    remote.responses = [Response.recorded("candidates")]
    result = run_cli(["ask", "-m", "local-server", "-n", "12", "--show-candidates", "3",
                      "Name a fruit."])
    assert result.exit_code == 0, result.stderr
    assert remote.bodies() == [REQUESTS["candidates"][2]]
    lines = result.stdout.splitlines()
    assert lines[0] == ANSWER
    assert lines[1].split() == ["step", "token", "p", "(drawn)", "p", "(model)", "entropy",
                                "model", "top-k", "drawn-from", "top-k"]
    assert lines[2].split()[:5] == ["1", "'The'", "0.231", "0.231", "0.76"]
    assert "'The' 0.231  'A' 0.132  'One' 0.052" in lines[2]
    assert len(lines) == 2 + 9

    data = json.loads(run_cli(["ask", "-m", "local-server", "-n", "12", "--json",
                               "--show-candidates", "3", "Name a fruit."]).stdout)
    first = data["tokens"][0]
    assert first["id"] is None and first["text"] == "The"
    assert [t["text"] for t in first["top_model"]] == ["The", "A", "One"]
    assert "".join(t["text"] for t in data["tokens"]) == ANSWER


def test_a_server_that_ignores_logprobs_gets_a_note_not_a_crash(remote: Replay) -> None:
    # The recorded answer has no logprobs: the server ignored the request for them.
    remote.responses = [Response.recorded("greedy")]
    result = run_cli(["ask", "-m", "local-server", "-n", "12", "--show-candidates", "3",
                      "Name a fruit."])
    assert (result.exit_code, result.stdout) == (0, ANSWER + "\n")
    assert result.stderr == ("warning: no per-token candidates came back (the server "
                             "returned no log-probabilities)\n")
    result = run_cli(["ask", "-m", "local-server", "-n", "12", "--json",
                      "--show-candidates", "3", "Name a fruit."])
    data = json.loads(result.stdout)  # valid JSON: no NaN
    assert "NaN" not in result.stdout
    assert [t["logprob"] for t in data["tokens"]] == [None] * len(data["tokens"])


def test_piped_chat_sends_the_history(remote: Replay, home: Path) -> None:
    remote.responses = [Response.recorded("greedy")]
    result = run_cli(["chat", "-m", "local-server", "-n", "12", "-s", "Be brief."],
                     input="Name a fruit.\nAnother one?\n")
    assert result.exit_code == 0, result.stderr
    assert result.stdout == f"{ANSWER}\n{ANSWER}\n"
    first, second = remote.bodies()
    assert first["messages"] == [{"role": "system", "content": "Be brief."},
                                 {"role": "user", "content": "Name a fruit."}]
    assert second["messages"] == [*first["messages"], {"role": "assistant", "content": ANSWER},
                                  {"role": "user", "content": "Another one?"}]
    assert [row[0] for row in history(home)] == ["user", "assistant", "user", "assistant"]


def test_compare_runs_greedy_and_sample(remote: Replay) -> None:
    remote.responses = [Response.recorded("greedy")]
    result = run_cli(["compare", "-m", "local-server", "-n", "12", "--seed", "7",
                      "Name a fruit."])
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "== greedy =="
    assert lines[1] == ANSWER
    assert lines[2].startswith("9 tokens · log-prob - · entropy - · ")
    assert lines[2].endswith(" · diverges: -")
    assert lines[4:6] == ["== sample ==", ANSWER]
    greedy, sample = remote.bodies()
    assert greedy["temperature"] == 0.0 and greedy["logprobs"] is True
    assert greedy["top_logprobs"] == 0
    assert {k: sample[k] for k in ("temperature", "top_p", "top_k", "min_p", "seed",
                                   "repeat_penalty")} == {
        "temperature": 1.0, "top_p": 1.0, "top_k": 0, "min_p": 0.0, "seed": 7,
        "repeat_penalty": 1.0}


def test_sampling_parameters_map_to_fields(remote: Replay) -> None:
    remote.responses = [Response.recorded("greedy")]
    result = run_cli(["ask", "-m", "local-server", "-S", "sample", "-t", "0.7", "--top-p",
                      "0.9", "--top-k", "20", "--min-p", "0.1", "--seed", "3",
                      "--repetition-penalty", "1.2", "--frequency-penalty", "0.5",
                      "--presence-penalty", "0.25", "--stop", "END", "-n", "12", "Hi"])
    assert result.exit_code == 0, result.stderr
    (body,) = remote.bodies()
    assert body == {
        "model": "smollm2", "messages": [{"role": "user", "content": "Hi"}],
        "max_tokens": 12, "temperature": 0.7, "top_p": 0.9, "seed": 3, "top_k": 20,
        "min_p": 0.1, "repeat_penalty": 1.2, "frequency_penalty": 0.5,
        "presence_penalty": 0.25, "stop": ["END"], "stream_options": {"include_usage": True},
        "stream": True,
    }


# -- models list / show / --base-url -----------------------------------------------------
def test_models_list_and_show(remote: Replay, monkeypatch: pytest.MonkeyPatch,
                              home: Path) -> None:
    listing = run_cli(["models", "list"]).stdout.splitlines()
    assert listing[0].split() == ["alias", "params", "context", "cached", "compiled", "backend",
                                  "source"]
    row = next(line for line in listing if line.startswith("local-server"))
    assert row.split() == ["local-server", "?", "2048", "-", "-", "openai",
                           f"openai:{remote.url}", "(smollm2)"]
    assert next(line for line in listing if line.startswith("tiny")).split()[-2] == "local"
    with (home / "models.toml").open("a") as f:
        f.write('api_key_env = "CHATCLI_TEST_KEY"\ntokenizer = "tiny"\n')
    monkeypatch.setenv("CHATCLI_TEST_KEY", "sk-secret")
    shown = run_cli(["models", "show", "local-server"])
    assert shown.exit_code == 0, shown.stderr
    head = shown.stdout.split("\n\n")[0].splitlines()
    fields = dict(line.split(None, 1) for line in head
                  if not line.startswith(("context", "defined")))
    assert fields["backend"] == "openai"
    assert fields["base_url"] == remote.url
    assert fields["model"] == "smollm2"
    assert fields["api_key_env"] == "CHATCLI_TEST_KEY (set)"
    assert fields["tokenizer"] == "tiny"
    assert "sk-secret" not in shown.stdout


def test_base_url_alone_uses_the_served_model(home: Path, replay: Replay) -> None:
    replay.responses = [Response.recorded("models"), Response.recorded("greedy")]
    result = run_cli(["ask", "--base-url", replay.url, "-n", "12", "Name a fruit."])
    assert result.exit_code == 0, result.stderr
    assert result.stdout == ANSWER + "\n"
    assert [r["path"] for r in replay.requests] == ["/v1/models", "/v1/chat/completions"]
    assert replay.bodies()[0]["model"] == "smollm2"
    assert replay.bodies()[0]["temperature"] == 0.0 and "repeat_penalty" not in replay.bodies()[0]


def test_base_url_overrides_an_alias_and_refuses_a_local_one(remote: Replay,
                                                             replay: Replay) -> None:
    remote.responses = [Response.recorded("greedy")]
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    result = run_cli(["ask", "-m", "local-server", "--base-url", f"http://127.0.0.1:{dead}/v1",
                      "hi"])
    assert result.stderr == (f"error: cannot reach http://127.0.0.1:{dead}/v1: connection "
                             "refused; hint: is the server running? start it, or fix base_url "
                             "(--base-url)\n")
    assert result.exit_code == 1
    result = run_cli(["ask", "-m", "tiny", "--base-url", replay.url, "hi"])
    assert result.exit_code == 2
    assert result.stderr.startswith(
        "error: --base-url needs a remote model, and 'tiny' is a local alias; hint: ")


# -- refused before any request --------------------------------------------------------------
@pytest.mark.parametrize(("args", "line"), [
    (["-S", "beam"], "error: -S beam needs a server with beam search; 'local-server' is server "
     "'llama.cpp'; hint: set server = \"vllm\" for the alias if it is vLLM, or use a local "
     "model (-m)\n"),
    (["-S", "sample", "--typical-p", "0.5"], "error: --typical-p cannot be sent to "
     "'local-server' (backend openai, server llama.cpp); hint: remove it, or use a local model "
     "(-m)\n"),
    (["--no-repeat-ngram-size", "3"], "error: --no-repeat-ngram-size cannot be sent to "
     "'local-server' (backend openai, server llama.cpp); hint: remove it, or use a local model "
     "(-m)\n"),
    (["--show-candidates", "21"], "error: --show-candidates 21: the chat-completions API "
     "returns at most 20 alternatives per token; hint: use --show-candidates 20 or less\n"),
    (["--explain-context"], "error: --explain-context needs the model's internals, which a "
     "server does not return ('local-server' is remote); hint: use a local model (-m)\n"),
])
def test_unsupported_is_refused_before_any_request(remote: Replay, args: list[str],
                                                   line: str) -> None:
    result = run_cli(["ask", "-m", "local-server", *args, "hi"])
    assert result.stderr == line
    assert result.exit_code == 2
    assert remote.requests == []


def test_openai_server_profile_sends_standard_fields_only(remote: Replay, home: Path) -> None:
    text = (home / "models.toml").read_text().replace('server = "llama.cpp"', 'server = "openai"')
    (home / "models.toml").write_text(text)
    result = run_cli(["ask", "-m", "local-server", "-S", "sample", "--top-k", "5", "hi"])
    assert result.stderr == (
        "error: --top-k cannot be sent to 'local-server' (backend openai, server openai); "
        "hint: remove it, or set server = \"generic\" for the alias if the server accepts it\n")
    assert remote.requests == []
    assert run_cli(["compare", "-m", "local-server", "-S", "beam", "hi"]).exit_code == 2


# -- failures -----------------------------------------------------------------------------
def test_unauthorized_never_shows_the_key(remote: Replay, home: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    with (home / "models.toml").open("a") as f:
        f.write('api_key_env = "CHATCLI_TEST_KEY"\n')
    result = run_cli(["ask", "-m", "local-server", "hi"])
    assert result.stderr == ("error: the environment variable CHATCLI_TEST_KEY (api_key_env) "
                             "is not set; hint: export CHATCLI_TEST_KEY=YOUR_KEY (the key never "
                             "goes in models.toml)\n")
    assert remote.requests == []
    monkeypatch.setenv("CHATCLI_TEST_KEY", "sk-wrong-key")
    echoed = Response.recorded("unauthorized")
    echoed.body = b'{"detail":"Invalid API key sk-wrong-key"}'  # a server that echoes it
    for response in (Response.recorded("unauthorized"), echoed):
        remote.requests.clear()
        remote.responses = [response]
        result = run_cli(["ask", "-m", "local-server", "hi"])
        assert result.exit_code == 1
        assert remote.requests[0]["auth"] == "Bearer sk-wrong-key"
        detail = "Invalid API key" + (" ***" if response is echoed else "")
        assert result.stderr == (f"error: {remote.url} refused the request (401 Unauthorized): "
                                 f"{detail}; hint: check the key in $CHATCLI_TEST_KEY "
                                 "(api_key_env)\n")
    db = (home / "data" / "history.db").read_bytes()
    assert b"sk-wrong-key" not in db


def test_not_found(remote: Replay) -> None:
    remote.responses = [Response.recorded("not_found")]
    result = run_cli(["ask", "-m", "local-server", "hi"])
    assert result.exit_code == 1
    assert result.stderr == (
        f"error: {remote.url}/chat/completions: not found (404 Not Found): Not Found; hint: "
        "check model in models.toml (GET /models lists what the server serves) and that "
        "base_url is the API root, often ending in /v1\n")


def test_server_error(remote: Replay) -> None:
    remote.responses = [Response.recorded("server_error")]
    result = run_cli(["ask", "-m", "local-server", "hi"])
    assert result.exit_code == 1
    # The server's multi-line message, as one line of at most 200 characters.
    detail = ("1 validation error: {'type': 'greater_than_equal', 'loc': ('body', 'top_k'), "
              "'msg': 'Input should be greater than or equal to 0', 'input': -1, 'ctx': "
              "{'ge': 0}} File \"/work/main/.venv/lib/python3.11/…")
    assert len(detail) == 200
    assert result.stderr == (
        f"error: {remote.url} failed (500 Internal Server Error): {detail}; "
        "hint: see the server's log; try again once it is healthy\n")


def test_rate_limit_retries_after_the_servers_delay(remote: Replay) -> None:
    busy = Response(429, "Too Many Requests", {"Retry-After": "0",
                                               "Content-Type": "application/json"},
                    b'{"error": {"message": "slow down"}}')
    remote.responses = [busy, busy, Response.recorded("greedy")]
    result = run_cli(["ask", "-m", "local-server", "-n", "12", "Name a fruit."])
    assert result.exit_code == 0, result.stderr
    assert result.stdout == ANSWER + "\n"
    assert len(remote.requests) == 3
    remote.requests.clear()
    remote.responses = [busy]
    result = run_cli(["ask", "-m", "local-server", "hi"])
    assert result.stderr == (f"error: {remote.url} is rate limiting (429 Too Many Requests) "
                             "and still was after 3 retries: slow down; hint: wait a little "
                             "and try again\n")
    assert len(remote.requests) == 4


def test_retry_after_is_bounded() -> None:
    from chatcli.remote.client import Client

    waits: list[float] = []
    client = Client("http://127.0.0.1:9/v1", sleep=waits.append)

    class Head:
        def __init__(self, value: str | None) -> None:
            self.value = value

        def getheader(self, name: str, default: Any = None) -> Any:
            return self.value

    for value in ("3600", "2", "Wed, 21 Oct 2015 07:28:00 GMT", None, "soon"):
        waits.append(client._retry_after(Head(value), 3))  # type: ignore[arg-type]
    assert waits == [30.0, 2.0, 0.0, 4.0, 4.0]


def test_timeout(remote: Replay, home: Path) -> None:
    with (home / "models.toml").open("a") as f:
        f.write("timeout = 0.3\n")
    remote.responses = [Response.recorded("greedy", delay=1.5)]
    result = run_cli(["ask", "-m", "local-server", "hi"])
    assert result.exit_code == 1
    assert result.stderr == (f"error: no answer from {remote.url} within 0.3 s (timeout); hint: "
                             "the server may be busy or still loading the model; raise timeout "
                             "in models.toml\n")


def _partial(name: str, events: int) -> bytes:
    """The first `events` events of a recording (a stream cut before its end)."""
    body = Response.recorded(name).body
    return b"".join(part + b"\n\n" for part in body.split(b"\n\n")[:events])


def test_cut_stream_keeps_the_partial_answer(remote: Replay, home: Path) -> None:
    partial = _partial("greedy", 4)  # role, "The", " fruit", " I"
    full = Response.recorded("greedy")
    remote.responses = [Response(200, "OK", full.headers, full.body, cut_after=len(partial))]
    result = run_cli(["ask", "-m", "local-server", "-n", "12", "Name a fruit."])
    assert result.exit_code == 1
    assert result.stdout == "The fruit I\n"
    assert result.stderr == (
        f"error: the answer from {remote.url} was cut off: the stream ended before the answer "
        "was complete; hint: the "
        "partial answer is kept in the history, marked interrupted; is the server still "
        "running?\n")
    assert history(home) == [("user", "Name a fruit.", 0), ("assistant", "The fruit I", 1)]


def test_stream_that_ends_without_finishing(remote: Replay, home: Path) -> None:
    remote.responses = [Response(200, "OK", {"Content-Type": "text/event-stream"},
                                 _partial("greedy", 3))]
    result = run_cli(["ask", "-m", "local-server", "hi"])
    assert result.exit_code == 1
    assert result.stdout == "The fruit\n"
    assert result.stderr.startswith(f"error: the answer from {remote.url} was cut off: the "
                                     "stream ended before the answer was complete; hint: ")
    assert history(home)[-1] == ("assistant", "The fruit", 1)


def test_malformed_stream(remote: Replay, home: Path) -> None:
    remote.responses = [Response(200, "OK", {"Content-Type": "text/event-stream"},
                                 _partial("greedy", 2) + sse("{not json"))]
    result = run_cli(["ask", "-m", "local-server", "hi"])
    assert result.exit_code == 1
    assert result.stdout == "The\n"
    assert result.stderr == ("error: the server sent an event that is not JSON: {not json; "
                             "hint: the partial answer is kept in the history, marked "
                             "interrupted\n")
    assert history(home)[-1] == ("assistant", "The", 1)
    remote.responses = [Response(200, "OK", {"Content-Type": "application/json"}, b"{}")]
    result = run_cli(["ask", "-m", "local-server", "hi"])
    assert result.stderr == (f"error: {remote.url} answered a streaming request with "
                             "application/json, not text/event-stream; hint: check that the "
                             "server supports streaming chat completions\n")


def test_chat_goes_on_after_a_cut_answer(remote: Replay, home: Path) -> None:
    full = Response.recorded("greedy")
    cut = Response(200, "OK", full.headers, full.body, cut_after=len(_partial("greedy", 3)))
    remote.responses = [cut, full]
    result = run_cli(["chat", "-m", "local-server", "-n", "12"], input="one\ntwo\n")
    assert result.exit_code == 1  # piped: a turn failed, though the chat went on
    assert result.stdout == f"The fruit\n{ANSWER}\n"
    assert result.stderr.startswith(f"error: the answer from {remote.url} was cut off: ")
    assert history(home) == [("user", "one", 0), ("assistant", "The fruit", 1),
                             ("user", "two", 0), ("assistant", ANSWER, 0)]
    # The interrupted partial answer is still sent as context for the next turn.
    assert remote.bodies()[1]["messages"][1] == {"role": "assistant", "content": "The fruit"}


# -- packing with the estimate ---------------------------------------------------------------
def test_estimated_packing_drops_old_exchanges_and_warns_once(remote: Replay,
                                                              home: Path) -> None:
    text = (home / "models.toml").read_text().replace("context_window = 2048",
                                                      "context_window = 120")
    (home / "models.toml").write_text(text)
    remote.responses = [Response.recorded("greedy")]
    lines = "".join(f"{'x' * 80} {i}\n" for i in range(4))
    result = run_cli(["chat", "-m", "local-server", "-n", "40"], input=lines)
    assert result.exit_code == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if "approximate" in line]
    assert warnings == [
        "warning: packing is approximate: 'local-server' names no tokenizer, so prompt tokens "
        "are estimated (about 4 characters per token); set tokenizer = \"ALIAS\" in models.toml "
        "for exact counts"]
    assert "dropped the oldest" in result.stderr
    assert len(remote.bodies()[-1]["messages"]) < 7
    assert remote.bodies()[-1]["messages"][-1]["content"].endswith(" 3")


def test_tokenizer_alias_counts_exactly(remote: Replay, home: Path, tiny_model: Any) -> None:
    from chatcli.conversation import Message
    from chatcli.registry import load_registry
    from chatcli.remote.model import open_remote

    with (home / "models.toml").open("a") as f:
        f.write('tokenizer = "tiny"\n')
    registry = load_registry()
    model = open_remote(registry.resolve("local-server"), registry)
    assert not model.approximate
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model.folder)
    messages = [Message("user", "Hello there")]
    text = tok.apply_chat_template([m.as_dict() for m in messages], tokenize=False,
                                   add_generation_prompt=True)
    expected = tok(text, add_special_tokens=False)["input_ids"]
    assert model.count_ids(messages) == list(expected)
    remote.responses = [Response.recorded("greedy")]
    result = run_cli(["ask", "-m", "local-server", "--json", "-n", "12", "Hello there"])
    assert json.loads(result.stdout)["prompt_tokens"] == len(expected)


def test_chat_commands_on_a_remote_model(remote: Replay) -> None:
    remote.responses = [Response.recorded("greedy")]
    result = run_cli(["chat", "-m", "local-server", "-n", "12"],
                     input="Name a fruit.\n/context\n/prompt\n/stats\n/candidates 2\n")
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == ANSWER
    assert lines[1].split() == ["turn", "role", "tokens", "status"]
    # The estimate: ceil(13 / 4) + 4, + 3 for the reply header; ceil(36 / 4) + 4.
    assert lines[2].split() == ["1", "user", "11", "kept"]
    assert lines[3].split() == ["2", "assistant", "13", "kept"]
    assert lines[4] == ("prompt 24 of 2036 tokens (context window 2048 - max new tokens 12); "
                        "0 exchange(s) dropped")
    sent = json.loads("\n".join(lines[5:15]))
    assert sent == [{"role": "user", "content": "Name a fruit."},
                    {"role": "assistant", "content": ANSWER}]
    assert lines[15] == "(the messages sent to the server, which applies its own chat template)"
    assert lines[16].startswith("model=local-server strategy=greedy seed=")
    assert " reused_prompt_tokens=0 completion_tokens=9 " in lines[16]
    assert lines[16].endswith(" finish_reason=stop")


def test_context_window_from_the_server(home: Path, replay: Replay) -> None:
    from chatcli.registry import load_registry
    from chatcli.remote.model import open_remote

    with (home / "models.toml").open("a") as f:
        f.write(f'\n[models.srv]\nbackend = "openai"\nbase_url = "{replay.url}"\n'
                'model = "smollm2"\n')
    registry = load_registry()
    listing = b'{"object": "list", "data": [{"id": "smollm2", "max_model_len": 777}]}'
    replay.responses = [Response(200, "OK", {"Content-Type": "application/json"}, listing)]
    assert open_remote(registry.resolve("srv"), registry).context_window == 777  # vLLM's
    replay.responses = [Response.recorded("models")]  # llama.cpp's: no length listed
    assert open_remote(registry.resolve("srv"), registry).context_window == 4096
    replay.responses = [Response.recorded("not_found")]  # no /models at all
    assert open_remote(registry.resolve("srv"), registry).context_window == 4096
    assert [r["path"] for r in replay.requests] == ["/v1/models"] * 3
