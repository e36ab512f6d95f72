"""A remote server that sends nonsense: every fault is one short error line.

Two kinds of nonsense, both served on 127.0.0.1 only:

* valid JSON of the wrong shape, in every position of a streamed chunk, in a GET
  /models listing and in an error body (the replay server of test_openai_replay);
  exact lines for the common cases, and hypothesis for arbitrary JSON values;
* bytes that are not HTTP (an SSH banner, random bytes, a garbage status line), from
  a raw TCP server.

What is checked: no exception but chatcli's own escapes, each message and hint is
one printable line of sane length, the API key never shows, and an answer broken
mid-stream keeps its partial text as a cut stream does.
"""

from __future__ import annotations

import copy
import json
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_openai_replay import Replay, Response, history, remote, replay, sse  # noqa: F401

from chatcli.conversation import Message
from chatcli.decoding.registry import strategy_registry
from chatcli.decoding.settings import resolve_settings
from chatcli.errors import ChatcliError, RemoteError
from chatcli.registry import ModelSpec
from chatcli.remote.client import Client
from chatcli.remote.model import RemoteModel, estimate_tokens, list_models, open_remote
from conftest import run_cli

HINT = "hint: the partial answer is kept in the history, marked interrupted"
MAX_LINE = 400  # a message or hint: the fixed words plus at most 200 quoted characters


def assert_one_line(error: ChatcliError) -> None:
    for text in (error.message, error.hint):
        assert text.isprintable() and text == text.strip(), repr(text)
        assert len(text) <= MAX_LINE, len(text)


# -- JSON of the wrong shape in a stream ------------------------------------------------------
def _chunk(choice: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"id": "c1", "object": "chat.completion.chunk", "choices": [choice], **extra}


def _token(text: str, logprob: float) -> dict[str, Any]:
    return {"token": text, "logprob": logprob, "bytes": list(text.encode()),
            "top_logprobs": [{"token": text, "logprob": logprob},
                             {"token": "A", "logprob": -2.0}]}


ROLE = _chunk({"index": 0, "delta": {"role": "assistant"}, "logprobs": None,
               "finish_reason": None})
THE = _chunk({"index": 0, "delta": {"content": "The"},
              "logprobs": {"content": [_token("The", -0.5)]}, "finish_reason": None})
FRUIT = _chunk({"index": 0, "delta": {"content": " fruit"},
                "logprobs": {"content": [_token(" fruit", -0.25)]}, "finish_reason": None})
LAST = _chunk({"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"},
              usage={"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11})


def stream(*chunks: Any) -> Response:
    return Response(200, "OK", {"Content-Type": "text/event-stream"},
                    sse(*(json.dumps(c) for c in chunks), "[DONE]"))


@pytest.mark.parametrize(("chunk", "wrong"), [
    (_chunk({"index": 0, "delta": {"content": 5}}), "choices[0].delta.content is a number, "
     "not a string"),
    (_chunk({"index": 0, "delta": "x"}), "choices[0].delta is a string, not an object"),
    (_chunk({"index": 0, "text": 5}), "choices[0].text is a number, not a string"),  # --raw's
    ({"choices": {}}, "choices is an object, not a list"),
    ({"choices": [None]}, "choices[0] is null, not an object"),
    (_chunk({"index": 0, "delta": {}, "finish_reason": 7}), "choices[0].finish_reason is a "
     "number, not a string"),
    (_chunk({"index": "0", "delta": {}}), "choices[0].index is a string, not a whole number"),
    (_chunk({"delta": {}, "logprobs": []}), "choices[0].logprobs is a list, not an object"),
    (_chunk({"delta": {}, "logprobs": {"content": [{"token": "x"}]}}),
     "choices[0].logprobs.content[0].logprob is null, not a log-probability (a number <= 0)"),
    (_chunk({"delta": {}, "logprobs": {"content": [{**_token("x", -1), "logprob": 800}]}}),
     "choices[0].logprobs.content[0].logprob is a number, not a log-probability (a number "
     "<= 0)"),
    (_chunk({"delta": {}, "logprobs": {"content": [{**_token("x", -1), "top_logprobs": [3]}]}}),
     "choices[0].logprobs.content[0].top_logprobs[0] is a number, not an object"),
    ({"choices": [], "usage": "12 tokens"}, "usage is a string, not an object"),
    ({"choices": [], "usage": {"prompt_tokens": 10**12}}, "usage.prompt_tokens is a number, "
     "not a token count"),
    ({"choices": [], "usage": {"completion_tokens": -1}}, "usage.completion_tokens is a "
     "number, not a token count"),
])
def test_a_chunk_of_the_wrong_shape_is_one_line_and_keeps_the_partial_answer(
    remote: Replay, home: Path, chunk: Any, wrong: str  # noqa: F811
) -> None:
    remote.responses = [stream(ROLE, THE, chunk, FRUIT, LAST)]
    result = run_cli(["ask", "-m", "local-server", "-n", "12", "Name a fruit."])
    assert result.stderr == (f"error: the server sent a stream chunk of the wrong shape: "
                             f"{wrong}; {HINT}\n")
    assert result.exit_code == 1
    assert result.stdout == "The\n"
    assert history(home) == [("user", "Name a fruit.", 0), ("assistant", "The", 1)]


def test_a_well_formed_stream_with_every_field(remote: Replay, home: Path) -> None:  # noqa: F811
    """Null and absent optional fields, a usage-only chunk, other choices, a lone surrogate."""
    other = _chunk({"index": 1, "delta": {"content": "ignored"}, "finish_reason": None})
    odd = _chunk({"index": 0, "delta": {"content": None, "role": None}, "logprobs": None,
                  "finish_reason": None}, usage=None)
    half = _chunk({"index": 0, "delta": {"content": "\ud83c!"}})
    usage = {"choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 3}}
    remote.responses = [stream(ROLE, THE, other, odd, FRUIT, half,
                               {**LAST, "usage": None}, usage)]
    result = run_cli(["ask", "-m", "local-server", "--json", "-n", "12", "Name a fruit."])
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["text"] == "The fruit\ufffd!"
    assert (data["prompt_tokens"], data["completion_tokens"]) == (9, 3)
    assert data["finish_reason"] == "stop"


# Every position of a chunk where a server could put the wrong JSON value.
POSITIONS: list[tuple[Any, ...]] = [
    (), ("choices",), ("choices", 0), ("choices", 0, "index"), ("choices", 0, "delta"),
    ("choices", 0, "delta", "content"), ("choices", 0, "delta", "role"),
    ("choices", 0, "finish_reason"), ("choices", 0, "logprobs"),
    ("choices", 0, "logprobs", "content"), ("choices", 0, "logprobs", "content", 0),
    ("choices", 0, "logprobs", "content", 0, "token"),
    ("choices", 0, "logprobs", "content", 0, "logprob"),
    ("choices", 0, "logprobs", "content", 0, "top_logprobs"),
    ("choices", 0, "logprobs", "content", 0, "top_logprobs", 0),
    ("choices", 0, "logprobs", "content", 0, "top_logprobs", 0, "token"),
    ("choices", 0, "logprobs", "content", 0, "top_logprobs", 0, "logprob"),
    ("usage",), ("usage", "prompt_tokens"), ("usage", "completion_tokens"), ("error",),
    ("error", "message"),
]
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                  max_size=3),
    max_leaves=8,
)


def _put(chunk: Any, position: tuple[Any, ...], value: Any) -> Any:
    """`chunk` with `value` at `position` (made where missing)."""
    if not position:
        return value
    chunk = copy.deepcopy(chunk)
    place = chunk
    for key in position[:-1]:
        if isinstance(key, str) and not isinstance(place.get(key), (dict, list)):
            place[key] = {}
        place = place[key]
    place[position[-1]] = value
    return chunk


def _remote_model(url: str) -> RemoteModel:
    spec = ModelSpec(alias="srv", source="remote", backend="openai", base_url=url, model="m",
                     server="llama.cpp")
    return RemoteModel(spec=spec, client=Client(url, timeout=10), context_window=2048)


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(position=st.sampled_from(POSITIONS), value=json_values, candidates=st.booleans())
def test_any_json_value_anywhere_in_a_stream(replay: Replay, position: tuple[Any, ...],  # noqa: F811
                                             value: Any, candidates: bool) -> None:
    base = LAST if position[:1] == ("usage",) else FRUIT
    replay.responses = [stream(ROLE, THE, _put(base, position, value), LAST)]
    replay.requests.clear()
    model = _remote_model(replay.url)
    greedy = resolve_settings(strategy_registry(), strategy="greedy")
    texts: list[str] = []
    try:
        generation = model.stream([Message("user", "hi")], [-1] * 7, greedy, 12,
                                  3 if candidates else None)
        for event in generation:
            texts.append(event.text)
    except ChatcliError as exc:
        assert isinstance(exc, RemoteError)
        assert_one_line(exc)
        assert "".join(texts).startswith("The")  # what arrived before the fault is kept
    else:
        assert "".join(texts).startswith("The")


def test_an_absurd_prompt_count_does_not_blow_up_the_estimate(replay: Replay) -> None:  # noqa: F811
    """The estimate learns from the server's counts, at most 16 tokens per 4 characters
    (else the next turn's packing would build a list of billions of placeholders)."""
    usage = {"prompt_tokens": 2**31 - 1, "completion_tokens": 2}
    replay.responses = [stream(ROLE, THE, {**LAST, "usage": usage})]
    model = _remote_model(replay.url)
    greedy = resolve_settings(strategy_registry(), strategy="greedy")
    messages = [Message("user", "hi")]
    generation = model.stream(messages, model.count_ids(messages), greedy, 12)
    assert "".join(event.text for event in generation) == "The"
    assert generation.stats.prompt_tokens == 2**31 - 1
    assert model.scale == 16.0
    assert len(model.count_ids(messages)) == 16 * estimate_tokens(messages)


# -- /models and error bodies of the wrong shape ----------------------------------------------
def _json_response(status: int, body: Any) -> Response:
    return Response(status, "Whatever", {"Content-Type": "application/json"},
                    json.dumps(body).encode())


@pytest.mark.parametrize(("body", "wrong"), [
    ([{"id": "m"}], "the body is a list, not an object"),
    ({"data": {"id": "m"}}, "data is an object, not a list"),
    ({"data": ["m"]}, "data[0] is a string, not an object"),
    ({"data": [{"id": 5}]}, "data[0].id is a number, not a string"),
    ({"data": [{"id": "m", "max_model_len": "4k"}]}, "data[0].max_model_len is a string, "
     "not a token count"),
])
def test_a_models_listing_of_the_wrong_shape(home: Path, replay: Replay, body: Any,  # noqa: F811
                                             wrong: str) -> None:
    replay.responses = [_json_response(200, body)]
    result = run_cli(["ask", "--base-url", replay.url, "hi"])
    assert result.stderr == (f"error: {replay.url}/models answered JSON of the wrong shape: "
                             f"{wrong}; hint: check that base_url is the server's API root "
                             "(often ending in /v1)\n")
    assert result.exit_code == 1


def test_a_context_length_of_the_wrong_shape_means_the_default(home: Path,
                                                               replay: Replay) -> None:  # noqa: F811
    spec = ModelSpec(alias="srv", source="remote", backend="openai", base_url=replay.url,
                     model="m")
    replay.responses = [_json_response(200, {"data": [{"id": "m", "max_model_len": -5}]})]
    assert open_remote(spec).context_window == 4096
    replay.responses = [_json_response(200, {"data": [{"id": "m", "max_model_len": 512}]})]
    assert open_remote(spec).context_window == 512


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=json_values, status=st.sampled_from([200, 400, 401, 404, 429, 500]))
def test_any_json_as_a_listing_or_an_error_body(replay: Replay, body: Any,  # noqa: F811
                                                status: int) -> None:
    replay.responses = [_json_response(status, body)]
    replay.requests.clear()
    client = Client(replay.url, timeout=10, retries=0)
    try:
        listed = list_models(client)
    except ChatcliError as exc:
        assert_one_line(exc)
    else:
        assert status == 200 and all(isinstance(m.id, str) for m in listed)
    with pytest.raises(ChatcliError) as err:  # a JSON body is never a stream
        list(client.stream_chat({"model": "m", "messages": []}))
    assert_one_line(err.value)


def test_an_error_event_mid_stream(remote: Replay, home: Path) -> None:  # noqa: F811
    error = {"error": {"message": "out of memory\n\x1b[31mCUDA\x1b[0m", "code": 500}}
    remote.responses = [stream(ROLE, THE, error)]
    result = run_cli(["ask", "-m", "local-server", "hi"])
    assert result.stderr == ("error: the server failed in the middle of the answer: out of "
                             f"memory [31mCUDA [0m; {HINT}; see the server's log\n")
    assert result.stdout == "The\n"


def test_server_text_is_one_line_cut_and_masks_the_key(
    remote: Replay, home: Path, monkeypatch: pytest.MonkeyPatch  # noqa: F811
) -> None:
    with (home / "models.toml").open("a") as f:
        f.write('api_key_env = "CHATCLI_TEST_KEY"\n')
    key = "sk-" + "k" * 40
    monkeypatch.setenv("CHATCLI_TEST_KEY", key)
    # The key straddles the 200-character cut: it must not show even in part.
    text = "line one\r\nline\ttwo \u202e" + "x" * 160 + " " + key + "\n" + "tail " * 50
    remote.responses = [_json_response(400, {"error": {"message": text}})]
    result = run_cli(["ask", "-m", "local-server", "hi"])
    detail = "line one line two " + "x" * 160 + " ***"
    assert result.stderr == (f"error: {remote.url} rejected the request (400 Whatever): "
                             f"{detail} tail tail tail t…; hint: a decoding parameter may be "
                             "out of the server's range, or the prompt too long for its "
                             "context\n")
    assert len(detail + " tail tail tail t…") == 200
    assert "sk-k" not in result.stderr


# -- bytes that are not HTTP ---------------------------------------------------------------------
@dataclass
class RawServer:
    """Reads one request per connection, answers with `answer` (any bytes) and closes."""

    answer: bytes = b""
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"


def _read_request(conn: socket.socket) -> None:
    data = b""
    while b"\r\n\r\n" not in data:
        part = conn.recv(65536)
        if not part:
            return
        data += part
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(body) < length:
        part = conn.recv(65536)
        if not part:
            return
        body += part


@contextmanager
def serving_raw() -> Iterator[RawServer]:
    state = RawServer()
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    state.port = listener.getsockname()[1]
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(5)
                try:
                    _read_request(conn)
                    conn.sendall(state.answer)
                    conn.shutdown(socket.SHUT_WR)
                    while conn.recv(65536):  # until the client hangs up: no reset
                        pass
                except OSError:
                    pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        stop.set()
        thread.join()
        listener.close()


@pytest.fixture
def raw() -> Iterator[RawServer]:
    with serving_raw() as server:
        yield server


@pytest.fixture(scope="module")
def raw_shared() -> Iterator[RawServer]:
    """One server for all of hypothesis's examples (a function fixture would be shared
    by them anyway)."""
    with serving_raw() as server:
        yield server


NOT_HTTP_HINT = ("hint: check the host and port in base_url (--base-url): they must be the "
                 "HTTP API's (https:// for TLS)")


@pytest.mark.parametrize(("answer", "sent"), [
    (b"SSH-2.0-OpenSSH_9.6p1 Ubuntu-3ubuntu13\r\n", "SSH-2.0-OpenSSH_9.6p1 Ubuntu-3ubuntu13"),
    (b"220 mail.example ESMTP Postfix\r\n", "220 mail.example ESMTP Postfix"),
    (b"HTTP/1.1 OK\r\n\r\n", "HTTP/1.1 OK"),
    (b"HTTP/1.1 2000 OK\r\n\r\n", "HTTP/1.1 2000 OK"),
    (b"\x16\x03\x01\x00\x02\r\n\x1b[2J" + b"z" * 300 + b"\n", "\x16\x03\x01\x00\x02"),
])
def test_an_answer_that_is_not_http(home: Path, raw: RawServer, answer: bytes,
                                    sent: str) -> None:
    raw.answer = answer
    result = run_cli(["ask", "--base-url", raw.url, "-m", "m", "hi"])
    quoted = " ".join("".join(c if c.isprintable() else " " for c in sent).split())
    said = f" (it sent '{quoted}')" if quoted else ""
    assert result.stderr == f"error: {raw.url} did not answer in HTTP{said}; {NOT_HTTP_HINT}\n"
    assert result.exit_code == 1


def test_a_status_line_with_control_characters(home: Path, raw: RawServer) -> None:
    raw.answer = (b"HTTP/1.1 503 Busy\x1b[2J\x07 now\r\nContent-Type: text/plain\x1b]0;x\r\n"
                  b"Content-Length: 12\r\n\r\nline1\r\nline2")
    result = run_cli(["ask", "--base-url", raw.url, "-m", "m", "hi"])
    assert result.stderr == (f"error: {raw.url} failed (503 Busy [2J now): line1 line2; "
                             "hint: see the server's log; try again once it is healthy\n")
    raw.answer = (b"HTTP/1.1 200 OK\r\nContent-Type: text/html\x1b]0;x\x07\r\n"
                  b"Content-Length: 2\r\n\r\nhi")
    result = run_cli(["ask", "--base-url", raw.url, "-m", "m", "hi"])
    assert result.stderr == (f"error: {raw.url} answered a streaming request with text/html "
                             "]0;x, not text/event-stream; hint: check that the server "
                             "supports streaming chat completions\n")


def test_a_server_that_hangs_up_without_answering(home: Path, raw: RawServer) -> None:
    raw.answer = b""
    result = run_cli(["ask", "--base-url", raw.url, "-m", "m", "hi"])
    assert result.stderr == (f"error: cannot reach {raw.url}: the server closed the "
                             "connection without answering; hint: is the server running, and "
                             "is base_url (--base-url) right?\n")


HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\n"


@settings(max_examples=150, deadline=None)
@given(noise=st.binary(max_size=400), head=st.sampled_from([b"", HEAD, b"HTTP/1.1 ",
                                                           b"HTTP/1.1 500 x\r\n"]))
def test_any_bytes_from_the_server(raw_shared: RawServer, noise: bytes, head: bytes) -> None:
    raw_shared.answer = head + noise
    client = Client(raw_shared.url, timeout=5, retries=0)
    for call in (lambda: client.get_json("/models"),
                 lambda: list(client.stream_chat({"model": "m", "messages": []}))):
        try:
            call()
        except ChatcliError as exc:
            assert_one_line(exc)
