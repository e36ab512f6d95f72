"""The `openai` backend's parts on their own: SSE parsing, models.toml keys, request mapping."""

from __future__ import annotations

from pathlib import Path

import pytest

from chatcli.conversation import Message
from chatcli.decoding.registry import strategy_registry
from chatcli.decoding.settings import resolve_settings
from chatcli.errors import ConfigError, MalformedStreamError, UsageError
from chatcli.registry import ModelSpec, parse_models_file
from chatcli.remote import params
from chatcli.remote.model import estimate_tokens
from chatcli.remote.sse import SSEEvent, SSEParser, parse


# -- SSE -----------------------------------------------------------------------------------
def test_sse_events_fields_comments_and_line_endings() -> None:
    lines = [b": keep-alive\n", b"data: one\r\n", b"\r\n", b"event: error\n", b"data:two\n",
             b"data:  three\n", b"id: 7\n", b"retry: 10\n", b"\n", b"\xef\xbb\xbfdata: x\r",
             b"\r"]
    assert list(parse(lines)) == [SSEEvent("one"), SSEEvent("two\n three", "error"),
                                  SSEEvent("x")]


def test_sse_discards_an_unterminated_event() -> None:
    parser = SSEParser()
    assert list(parser.parse([b"data: a\n", b"\n", b"data: half"])) == [SSEEvent("a")]
    assert not parser.ended_cleanly
    parser = SSEParser()
    assert list(parser.parse([b"data: a\n", b"\n"])) == [SSEEvent("a")]
    assert parser.ended_cleanly


def test_sse_refuses_bytes_that_are_not_utf8() -> None:
    with pytest.raises(MalformedStreamError, match="not UTF-8"):
        list(parse([b"data: \xff\n", b"\n"]))


# -- models.toml -------------------------------------------------------------------------------
def _parse(tmp_path: Path, body: str) -> ModelSpec:
    path = tmp_path / "models.toml"
    path.write_text("[models.srv]\n" + body)
    return parse_models_file(path)[0]["srv"]


def test_remote_alias_keys(tmp_path: Path) -> None:
    spec = _parse(tmp_path, 'backend = "openai"\nbase_url = "https://gpu.example:8000/v1/"\n'
                  'model = "meta-llama/Llama-3.3-70B-Instruct"\napi_key_env = "VLLM_KEY"\n'
                  'server = "vllm"\ntimeout = 5\n[models.srv.defaults]\ntemperature = 0.5\n')
    assert spec.is_remote and spec.source == "remote"
    assert spec.base_url == "https://gpu.example:8000/v1"
    assert spec.model == "meta-llama/Llama-3.3-70B-Instruct"
    assert (spec.api_key_env, spec.server, spec.timeout) == ("VLLM_KEY", "vllm", 5.0)
    assert spec.defaults == {"temperature": 0.5}
    assert spec.location == "openai:https://gpu.example:8000/v1 (meta-llama/Llama-3.3-70B-Instruct)"


@pytest.mark.parametrize(("body", "message"), [
    ('backend = "grpc"\n', "[models.srv] 'backend' must be one of local, openai (got 'grpc')"),
    ('backend = "openai"\nbase_url = "http://h/v1"\n', "[models.srv] needs 'model' for backend "
     "'openai'"),
    ('backend = "openai"\nbase_url = "h:8000"\nmodel = "m"\n', "[models.srv] 'base_url' 'h:8000' "
     "is not usable: it must start with http:// or https:// and name a host"),
    ('backend = "openai"\nbase_url = "http://h/v1"\nmodel = "m"\napi_key_env = "sk-123"\n',
     "[models.srv] 'api_key_env' must be the NAME of an environment variable (not the key)"),
    ('backend = "openai"\nbase_url = "http://h/v1"\nmodel = "m"\nsource = "hf"\n',
     "[models.srv] 'source' applies to local models, not backend = \"openai\""),
    ('backend = "openai"\nbase_url = "http://h/v1"\nmodel = "m"\nserver = "tgi"\n',
     "[models.srv] 'server' must be one of generic, openai, vllm, llama.cpp (got 'tgi')"),
    ('source = "hf"\nrepo = "o/r"\nbase_url = "http://h/v1"\n',
     "[models.srv] 'base_url' needs backend = \"openai\""),
])
def test_remote_alias_errors(tmp_path: Path, body: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        _parse(tmp_path, body)
    assert err.value.message.split(": ", 1)[1] == message


# -- request mapping -----------------------------------------------------------------------------
def _spec(server: str = "generic") -> ModelSpec:
    return ModelSpec(alias="srv", source="remote", backend="openai", base_url="http://h/v1",
                     model="m", server=server)


def _body(server: str, strategy: str, **flags: object) -> dict[str, object]:
    settings = resolve_settings(strategy_registry(), strategy=strategy, flags=flags)
    return params.request_body(_spec(server), settings, [Message("user", "hi")], 16)


def test_greedy_on_a_generic_server_sends_only_what_is_on() -> None:
    assert _body("generic", "greedy") == {
        "model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 16,
        "temperature": 0.0, "stream_options": {"include_usage": True}}
    body = _body("generic", "sample", top_k=5, repetition_penalty=1.1, seed=9)
    assert (body["top_k"], body["repetition_penalty"], body["seed"]) == (5, 1.1, 9)
    assert "min_p" not in body


def test_beam_on_vllm() -> None:
    body = _body("vllm", "beam", num_beams=3, length_penalty=0.5)
    assert {k: body[k] for k in ("use_beam_search", "n", "length_penalty", "temperature")} == {
        "use_beam_search": True, "n": 3, "length_penalty": 0.5, "temperature": 0.0}
    settings = resolve_settings(strategy_registry(), strategy="beam",
                                options={"num_return_sequences": "2"})
    with pytest.raises(UsageError, match="-o num_return_sequences cannot be sent"):
        params.check(_spec("vllm"), settings)


def test_plugin_strategies_run_locally_only() -> None:
    from dataclasses import replace

    settings = resolve_settings(strategy_registry(), strategy="greedy")
    with pytest.raises(UsageError) as err:
        params.check(_spec(), replace(settings, strategy="contrastive"))
    assert err.value.message == ("strategy 'contrastive' chooses tokens itself, so it runs on "
                                 "local models only ('srv' is served by http://h/v1)")


def test_token_estimate() -> None:
    assert estimate_tokens([Message("user", "")]) == 7
    assert estimate_tokens([Message("system", "abcd"), Message("user", "abcde")]) == 3 + 5 + 6
