"""Answer shapes on a server: each profile's request fields, its refusals, and the verdict.

`chatcli.remote.params` maps a `Constraint` (--schema, --json-object, --regex,
--grammar, --choice) into the chat-completions request per server profile, and refuses
before any request what the profile cannot hold; `chatcli.remote.model.satisfied`
judges the answer that came back. The request bodies are checked exactly, here and
against a loopback server that records what chatcli sends (nothing leaves 127.0.0.1).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from chatcli.backends.base import Views
from chatcli.backends.openai import OpenAIBackend
from chatcli.constraints.spec import Constraint, from_options
from chatcli.conversation import Message
from chatcli.decoding.registry import strategy_registry
from chatcli.decoding.settings import resolve_settings
from chatcli.errors import StreamCutError, UsageError
from chatcli.registry import ModelSpec
from chatcli.remote import params
from chatcli.remote.client import Client
from chatcli.remote.model import RemoteModel, satisfied
from conftest import run_cli

SCHEMA = {"type": "object", "properties": {"name": {"type": "string"},
                                           "age": {"type": "integer"}},
          "required": ["name", "age"], "additionalProperties": False}
GBNF = 'root ::= "yes" | "no"\n'
LARK = 'start: "yes" | "no"\n'


def _spec(server: str = "generic") -> ModelSpec:
    return ModelSpec(alias="srv", source="remote", backend="openai", base_url="http://h/v1",
                     model="m", server=server)


def _greedy() -> Any:
    return resolve_settings(strategy_registry(), strategy="greedy")


def _shape(kind: str) -> Constraint:
    return {
        "json_schema": from_options(schema="name str, age int"),
        "json_object": from_options(json_object=True),
        "regex": from_options(regex="[0-9]+"),
        "grammar": Constraint("grammar", GBNF, syntax="gbnf", source="yn.gbnf"),
        "lark": Constraint("grammar", LARK, syntax="lark", source="yn.lark"),
        "choice": from_options(choice="yes,no"),
    }[kind]


def _fields(server: str, kind: str) -> dict[str, Any]:
    """What a constraint adds to a greedy request's body."""
    plain = params.request_body(_spec(server), _greedy(), [Message("user", "hi")], 16)
    body = params.request_body(_spec(server), _greedy(), [Message("user", "hi")], 16,
                               constraint=_shape(kind))
    assert {k: v for k, v in body.items() if k in plain} == plain
    return {k: v for k, v in body.items() if k not in plain}


OPENAI_SCHEMA = {"response_format": {"type": "json_schema", "json_schema": {
    "name": "answer", "schema": SCHEMA, "strict": True}}}
OPENAI_OBJECT = {"response_format": {"type": "json_object"}}


# -- request fields, per profile -------------------------------------------------------------
@pytest.mark.parametrize(("server", "kind", "fields"), [
    ("generic", "json_schema", OPENAI_SCHEMA),
    ("generic", "json_object", OPENAI_OBJECT),
    ("openai", "json_schema", OPENAI_SCHEMA),
    ("openai", "json_object", OPENAI_OBJECT),
    ("vllm", "json_schema", OPENAI_SCHEMA),
    ("vllm", "json_object", OPENAI_OBJECT),
    ("vllm", "regex", {"structured_outputs": {"regex": "[0-9]+"}}),
    ("vllm", "grammar", {"structured_outputs": {"grammar": GBNF}}),
    ("vllm", "lark", {"structured_outputs": {"grammar": LARK}}),
    ("vllm", "choice", {"structured_outputs": {"choice": ["yes", "no"]}}),
    # every llama.cpp server (llama-server, llama-cpp-python's) reads a schema here
    ("llama.cpp", "json_schema", {"response_format": {"type": "json_object",
                                                      "schema": SCHEMA}}),
    ("llama.cpp", "json_object", {"response_format": {"type": "json_object",
                                                      "schema": {"type": "object"}}}),
    ("llama.cpp", "grammar", {"grammar": GBNF}),
    ("llama.cpp", "choice", {"grammar": 'root ::= "yes" | "no"'}),
])
def test_request_fields(server: str, kind: str, fields: dict[str, Any]) -> None:
    assert _fields(server, kind) == fields


def test_a_whole_llama_cpp_request_with_a_schema() -> None:
    body = params.request_body(_spec("llama.cpp"), _greedy(), [Message("user", "hi")], 16,
                               constraint=_shape("json_schema"))
    assert body == {
        "model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 16,
        "temperature": 0.0, "repeat_penalty": 1.0,
        "stream_options": {"include_usage": True},
        "response_format": {"type": "json_object", "schema": SCHEMA}}


def test_a_schema_file_is_sent_as_written(tmp_path: Path) -> None:
    schema = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20}}}
    path = tmp_path / "city.json"
    path.write_text(json.dumps(schema))
    assert _fields_of("vllm", from_options(schema=str(path))) == {"response_format": {
        "type": "json_schema", "json_schema": {"name": "answer", "schema": schema,
                                               "strict": True}}}


def _fields_of(server: str, constraint: Constraint) -> dict[str, Any]:
    body = params.request_body(_spec(server), _greedy(), [Message("user", "hi")], 16,
                               constraint=constraint)
    return {k: v for k, v in body.items() if k in ("response_format", "structured_outputs",
                                                   "grammar")}


# -- GBNF for a choice ---------------------------------------------------------------------
def test_choices_as_a_gbnf_grammar_escape_what_gbnf_reads() -> None:
    choices = ['say "hi"', "back\\slash", "two\nlines", "tab\there", "bell\x07", "né 中"]
    assert params.gbnf_choice(choices) == (
        'root ::= "say \\"hi\\"" | "back\\\\slash" | "two\\nlines" | "tab\\there" | '
        '"bell\\x07" | "né 中"')


def test_the_choice_grammar_parses_in_llama_cpp() -> None:
    llama_cpp = pytest.importorskip("llama_cpp")
    grammar = params.gbnf_choice(['a "quoted" one', "x\\y", "multi\nline", "ok"])
    parsed = llama_cpp.LlamaGrammar.from_string(grammar, verbose=False)
    assert parsed._grammar == grammar


# -- refusals, before any request -----------------------------------------------------------
def _refusal(server: str, constraint: Constraint) -> tuple[str, str]:
    with pytest.raises(UsageError) as err:
        params.check(_spec(server), _greedy(), None, constraint)
    with pytest.raises(UsageError) as again:  # request_body refuses the same way
        params.request_body(_spec(server), _greedy(), [Message("user", "hi")], 16,
                            constraint=constraint)
    assert (again.value.message, again.value.hint) == (err.value.message, err.value.hint)
    return err.value.message, err.value.hint


VLLM_HINT = '; set server = "vllm" for the alias if it is vLLM'


@pytest.mark.parametrize(("server", "kind", "message", "hint"), [
    ("generic", "regex", "--regex cannot be sent to 'srv' (server generic): an "
     "OpenAI-compatible server cannot hold an answer to a regex",
     "use a local model (-m), or --schema/--json-object" + VLLM_HINT),
    ("openai", "regex", "--regex cannot be sent to 'srv' (server openai): OpenAI cannot "
     "hold an answer to a regex", "use a local model (-m), or --schema/--json-object"
     + VLLM_HINT),
    ("openai", "grammar", "--grammar yn.gbnf cannot be sent to 'srv' (server openai): OpenAI "
     "cannot hold an answer to a grammar", "use a local model (-m), or "
     '--schema/--json-object; set server = "vllm" for the alias if it is vLLM'),
    ("generic", "choice", "--choice cannot be sent to 'srv' (server generic): an "
     "OpenAI-compatible server cannot hold an answer to a fixed choice",
     "use a local model (-m), or --schema/--json-object" + VLLM_HINT),
    ("llama.cpp", "regex", "--regex cannot be sent to 'srv' (server llama.cpp): llama.cpp "
     "cannot hold an answer to a regex", "use a local model (-m), or "
     "--schema/--json-object/--grammar/--choice" + VLLM_HINT),
    ("llama.cpp", "lark", "--grammar yn.lark is a Lark grammar, and 'srv' (server llama.cpp) "
     "reads GBNF only", "write it as GBNF (rules with ::=, in a .gbnf file), or "
     "use a local model (-m)"),
    ("transformers", "json_schema", "--schema cannot be sent to 'srv' (server transformers): "
     "transformers serve does not constrain answers (it rejects response_format)",
     'use a local model (-m); set server = "generic" for the alias if it is an '
     "OpenAI-compatible server"),
    ("transformers", "json_object", "--json-object cannot be sent to 'srv' (server "
     "transformers): transformers serve does not constrain answers (it rejects "
     "response_format)", 'use a local model (-m); set server = "generic" for the alias if '
     "it is an OpenAI-compatible server"),
    ("transformers", "regex", "--regex cannot be sent to 'srv' (server transformers): "
     "transformers serve does not constrain answers (it rejects response_format)",
     "use a local model (-m)" + VLLM_HINT),
    ("transformers", "grammar", "--grammar yn.gbnf cannot be sent to 'srv' (server "
     "transformers): transformers serve does not constrain answers (it rejects "
     "response_format)", "use a local model (-m)" + VLLM_HINT),
    ("transformers", "choice", "--choice cannot be sent to 'srv' (server transformers): "
     "transformers serve does not constrain answers (it rejects response_format)",
     "use a local model (-m)" + VLLM_HINT),
])
def test_refusals(server: str, kind: str, message: str, hint: str) -> None:
    assert _refusal(server, _shape(kind)) == (message, hint)


def test_a_refusal_names_the_flag_as_typed() -> None:
    slash = Constraint("regex", "[0-9]+", source="/regex")
    assert _refusal("openai", slash)[0].startswith("/regex cannot be sent to 'srv'")
    from_file = Constraint("json_schema", json.dumps(SCHEMA), source="person.json")
    assert _refusal("transformers", from_file)[0].startswith(
        "--schema person.json cannot be sent to 'srv'")


def test_every_profile_either_maps_or_refuses_every_shape() -> None:
    for server in params.PROFILES:
        for kind in ("json_schema", "json_object", "regex", "grammar", "lark", "choice"):
            try:
                fields = _fields(server, kind)
            except UsageError as err:
                assert err.message and err.hint
                continue
            assert fields, (server, kind)


# -- the verdict on what came back -------------------------------------------------------------
@pytest.mark.parametrize(("kind", "text", "finish", "expected"), [
    ("json_schema", '{"name": "Ada", "age": 36}', "stop", True),
    ("json_schema", '{"name": "Ada", "age": 3', "stop", False),
    ("json_schema", '{"name": "Ada", "age": 36}', "length", False),
    ("json_object", "{}", "stop", True),
    ("json_object", "", "stop", False),
    ("choice", "yes", "stop", True),
    ("choice", "yes.", "stop", False),
    ("choice", "no", "length", False),
    ("regex", "123", "stop", True),
    ("regex", "12a", "stop", False),
    ("grammar", "anything", "stop", True),
    ("grammar", "anything", "length", False),
])
def test_satisfied(kind: str, text: str, finish: str, expected: bool) -> None:
    assert satisfied(_shape(kind), text, finish) is expected


def test_a_regex_python_cannot_read_is_left_to_the_server() -> None:
    possessive_class = Constraint("regex", r"\p{L}+", source="--regex")  # not Python's re
    assert satisfied(possessive_class, "abc", "stop") is True
    assert satisfied(possessive_class, "abc", "length") is False


# -- a loopback server that records the requests -------------------------------------------------
@dataclass
class Recorder:
    answer: bytes = b""
    requests: list[dict[str, Any]] = field(default_factory=list)
    port: int = 0
    cut: bool = False  # end the stream without [DONE] or a finish reason

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def bodies(self) -> list[Any]:
        return [r["body"] for r in self.requests if r["method"] == "POST"]


def sse_answer(*pieces: str, finish: str = "stop") -> bytes:
    def event(delta: dict[str, Any], reason: str | None) -> str:
        chunk = {"object": "chat.completion.chunk",
                 "choices": [{"index": 0, "delta": delta, "finish_reason": reason}]}
        return f"data: {json.dumps(chunk)}\n\n"
    events = [event({"role": "assistant"}, None)]
    events += [event({"content": p}, None) for p in pieces]
    events += [event({}, finish), "data: [DONE]\n\n"]
    return "".join(events).encode()


def _handler(state: Recorder) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def _answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            state.requests.append({"method": self.command, "path": self.path,
                                   "body": json.loads(raw) if raw else None})
            body = state.answer
            if state.cut:
                body = body[: body.rindex(b"data: {")]
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = _answer

    return Handler


@pytest.fixture
def server() -> Iterator[Recorder]:
    state = Recorder()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    httpd.daemon_threads = True
    state.port = httpd.server_address[1]
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield state
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A CHATCLI_HOME with an empty models.toml: these tests need no local model."""
    root = tmp_path / "home"
    root.mkdir()
    (root / "models.toml").write_text("")
    monkeypatch.setenv("CHATCLI_HOME", str(root))
    monkeypatch.delenv("CHATCLI_DEBUG", raising=False)
    return root


def _alias(home: Path, url: str, server: str) -> None:
    with (home / "models.toml").open("a") as f:
        f.write(f'\n[models.srv]\nbackend = "openai"\nbase_url = "{url}"\nmodel = "m"\n'
                f'server = "{server}"\ncontext_window = 2048\n')


# -- through chatcli ask -----------------------------------------------------------------------
def test_ask_schema_on_llama_cpp(home: Path, server: Recorder) -> None:
    _alias(home, server.url, "llama.cpp")
    server.answer = sse_answer('{"name": ', '"Ada", "age": 36}')
    result = run_cli(["ask", "-m", "srv", "-n", "40", "--json", "--schema", "name str, age int",
                      "Describe Ada."])
    assert result.exit_code == 0, result.stderr
    (body,) = server.bodies()
    assert body["response_format"] == {"type": "json_object", "schema": SCHEMA}
    assert "grammar" not in body and "json_schema" not in body
    data = json.loads(result.stdout)
    assert data["constraint_satisfied"] is True
    assert data["parsed"] == {"name": "Ada", "age": 36}
    assert data["constraint"] == {"kind": "json_schema", "schema": SCHEMA}


def test_ask_choice_on_llama_cpp_and_an_answer_outside_it(home: Path, server: Recorder) -> None:
    _alias(home, server.url, "llama.cpp")
    server.answer = sse_answer("ye", "s")
    result = run_cli(["ask", "-m", "srv", "--choice", "yes,no", "Is water wet?"])
    assert (result.exit_code, result.stdout, result.stderr) == (0, "yes\n", "")
    assert server.bodies()[0]["grammar"] == 'root ::= "yes" | "no"'
    # A server that ignored the grammar: the answer is printed, and the exit says so.
    server.answer = sse_answer("maybe")
    result = run_cli(["ask", "-m", "srv", "--choice", "yes,no", "Is water wet?"])
    assert result.exit_code == 1
    assert result.stdout == "maybe\n"
    assert result.stderr == (
        "error: the answer does not satisfy --choice: the server ended it without holding it "
        "to the constraint; hint: check that the server supports it, and its server = ... "
        "profile in models.toml; or use a local model (-m)\n")


def test_ask_regex_on_vllm(home: Path, server: Recorder) -> None:
    _alias(home, server.url, "vllm")
    server.answer = sse_answer("42")
    result = run_cli(["ask", "-m", "srv", "--regex", "[0-9]+", "A number?"])
    assert (result.exit_code, result.stdout) == (0, "42\n")
    assert server.bodies()[0]["structured_outputs"] == {"regex": "[0-9]+"}


@pytest.mark.parametrize(("server_name", "flags", "line"), [
    ("llama.cpp", ["--regex", "[0-9]+"], "error: --regex cannot be sent to 'srv' (server "
     "llama.cpp): llama.cpp cannot hold an answer to a regex; hint: use a local model (-m), "
     "or --schema/--json-object/--grammar/--choice" + VLLM_HINT),
    ("transformers", ["--json-object"], "error: --json-object cannot be sent to 'srv' "
     "(server transformers): transformers serve does not constrain answers (it rejects "
     "response_format); hint: use a local model (-m); set server = \"generic\" for the alias "
     "if it is an OpenAI-compatible server"),
])
def test_ask_refuses_before_any_request(home: Path, server: Recorder, server_name: str,
                                        flags: list[str], line: str) -> None:
    _alias(home, server.url, server_name)
    result = run_cli(["ask", "-m", "srv", *flags, "hi"])
    assert (result.exit_code, result.stdout) == (2, "")
    assert result.stderr == line + "\n"
    assert server.requests == []


def test_ask_base_url_alone_refuses_a_choice_before_asking_for_models(
        home: Path, server: Recorder) -> None:
    result = run_cli(["ask", "--base-url", server.url, "--choice", "a,b", "hi"])
    assert result.exit_code == 2
    assert result.stderr.startswith("error: --choice cannot be sent to ")
    assert "(server generic)" in result.stderr
    assert server.requests == []  # not even GET /models


def test_lark_grammar_on_llama_cpp_is_refused(home: Path, server: Recorder,
                                              tmp_path: Path) -> None:
    _alias(home, server.url, "llama.cpp")
    grammar = tmp_path / "yn.lark"
    grammar.write_text(LARK)
    result = run_cli(["ask", "-m", "srv", "--grammar", str(grammar), "hi"])
    assert result.exit_code == 2
    assert result.stderr == ("error: --grammar yn.lark is a Lark grammar, and 'srv' (server "
                             "llama.cpp) reads GBNF only; hint: write it as GBNF (rules with "
                             "::=, in a .gbnf file), or use a local model (-m)\n")
    assert server.requests == []


# -- the opened backend (chat's /schema) and its Generation ----------------------------------------
def _opened(server: Recorder, profile: str) -> OpenAIBackend:
    spec = ModelSpec(alias="srv", source="remote", backend="openai", base_url=server.url,
                     model="m", server=profile)
    return OpenAIBackend(RemoteModel(spec, Client(server.url, 5.0, None), 2048))


def test_an_opened_backend_checks_a_constraint_without_a_request(server: Recorder) -> None:
    backend = _opened(server, "openai")
    backend.check(_greedy(), Views(), _shape("json_schema"))
    with pytest.raises(UsageError) as err:
        backend.check(_greedy(), Views(), _shape("choice"))
    assert err.value.message.startswith("--choice cannot be sent to 'srv' (server openai)")
    with pytest.raises(UsageError) as err:
        OpenAIBackend.check_settings(backend.spec, _greedy(), Views(candidates=3),
                                     _shape("regex"))
    assert err.value.message.startswith("--regex cannot be sent")
    assert server.requests == []


@dataclass
class _Packed:
    messages: list[Message]
    ids: list[int]


def test_the_generation_carries_the_constraint_and_its_verdict(server: Recorder) -> None:
    backend = _opened(server, "vllm")
    packed = _Packed([Message("user", "hi")], [-1] * 5)
    server.answer = sse_answer("n", "o")
    gen = backend.stream(packed, _greedy(), 8, Views(), constraint=_shape("choice"))
    assert gen.constraint == _shape("choice") and gen.constraint_satisfied is None
    events = list(gen)
    assert events[-1].finish_reason == "stop"
    assert gen.constraint_satisfied is True
    assert server.bodies()[0]["structured_outputs"] == {"choice": ["yes", "no"]}

    server.answer = sse_answer("{", finish="length")
    gen = backend.stream(packed, _greedy(), 1, Views(), constraint=_shape("json_object"))
    list(gen)
    assert gen.constraint_satisfied is False

    gen = backend.stream(packed, _greedy(), 8, Views())  # no constraint: nothing judged
    list(gen)
    assert (gen.constraint, gen.constraint_satisfied) == (None, None)
    assert "response_format" not in server.bodies()[-1]


def test_a_cut_answer_is_not_satisfied(server: Recorder) -> None:
    backend = _opened(server, "vllm")
    server.answer = sse_answer("y", "es")
    server.cut = True
    gen = backend.stream(_Packed([Message("user", "hi")], [-1]), _greedy(), 8, Views(),
                         constraint=_shape("choice"))
    with pytest.raises(StreamCutError):
        list(gen)
    assert gen.constraint_satisfied is False
