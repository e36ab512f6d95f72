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
    assert spec.backend == "openai" and spec.source == "remote"
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
     "[models.srv] 'server' must be one of generic, openai, vllm, llama.cpp, transformers "
     "(got 'tgi')"),
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

    from chatcli.decoding.base import DEFAULT_CAPABILITIES

    settings = resolve_settings(strategy_registry(), strategy="greedy")
    # A strategy that declares no capabilities (a plugin's default) has no `Remote`.
    plugin = replace(settings, strategy="contrastive", capabilities=DEFAULT_CAPABILITIES)
    with pytest.raises(UsageError) as err:
        params.check(_spec(), plugin)
    assert (err.value.message, err.value.hint) == (
        "strategy 'contrastive' chooses tokens itself, so it runs on local models only ('srv' "
        "is served by http://h/v1)", "use -S greedy or -S sample, or a local model (-m)")
    with pytest.raises(UsageError) as err:
        params.check(_spec("vllm"), plugin)
    assert err.value.hint == "use -S greedy or -S sample or -S beam, or a local model (-m)"


def test_the_mapping_asks_the_strategy_not_its_name() -> None:
    """Renamed, a built-in strategy is sent exactly as before: the request comes from its
    declared capabilities and parameters."""
    from dataclasses import replace

    for server, strategy, flags in [("vllm", "beam", {"num_beams": 3}),
                                    ("llama.cpp", "sample", {"top_k": 5, "seed": 1}),
                                    ("generic", "greedy", {"stop": ("x",)})]:
        settings = resolve_settings(strategy_registry(), strategy=strategy, flags=flags)
        body = params.request_body(_spec(server), settings, [Message("user", "hi")], 16)
        renamed = replace(settings, strategy="mine")
        assert params.request_body(_spec(server), renamed, [Message("user", "hi")], 16) == body


def test_sample_on_llama_cpp_sends_every_extra_field() -> None:
    assert _body("llama.cpp", "sample", temperature=0.5, seed=3) == {
        "model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 16,
        "temperature": 0.5, "top_p": 1.0, "seed": 3, "top_k": 0, "min_p": 0.0,
        "repeat_penalty": 1.0, "stream_options": {"include_usage": True}}
    body = _body("generic", "greedy", stop=("a", "b"), frequency_penalty=0.5,
                 presence_penalty=-0.5)
    assert (body["stop"], body["frequency_penalty"], body["presence_penalty"]) == (
        ["a", "b"], 0.5, -0.5)
    assert "seed" not in body  # greedy draws nothing


# -- the transformers serve profile ----------------------------------------------------------
def test_transformers_profile_sends_standard_fields_only() -> None:
    # temperature alone does not sample there: its generation_config turns sampling on
    # (and transformers' own top_k of 50 off)
    assert _body("transformers", "sample", temperature=0.7, top_p=0.9, seed=5) == {
        "model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 16,
        "temperature": 0.7, "top_p": 0.9, "seed": 5,
        "generation_config": '{"do_sample": true, "top_k": 0}'}
    assert _body("transformers", "greedy") == {
        "model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 16,
        "temperature": 0.0}
    # compare's K = 0 (the sequence log-probability) is not asked of a server without it
    settings = resolve_settings(strategy_registry(), strategy="greedy")
    body = params.request_body(_spec("transformers"), settings, [Message("user", "hi")], 16,
                               candidates=0)
    assert "logprobs" not in body and "top_logprobs" not in body


@pytest.mark.parametrize(("strategy", "flags", "candidates", "message", "hint"), [
    ("sample", {}, 3, "--show-candidates needs per-token log-probabilities, which 'srv' "
     "(server transformers) does not return", "remove it, or use a local model (-m)"),
    ("beam", {}, None, "-S beam needs a server with beam search; 'srv' is server "
     "'transformers'", "set server = \"vllm\" for the alias if it is vLLM, or use a local "
     "model (-m)"),
    ("sample", {"top_k": 5}, None, "--top-k cannot be sent to 'srv' (backend openai, server "
     "transformers)", "remove it, or set server = \"generic\" for the alias if the server "
     "accepts it"),
    ("greedy", {"presence_penalty": 0.5}, None, "--presence-penalty cannot be sent to 'srv' "
     "(backend openai, server transformers)", "remove it, or use a local model (-m)"),
    ("greedy", {"frequency_penalty": 0.5}, None, "--frequency-penalty cannot be sent to 'srv' "
     "(backend openai, server transformers)", "remove it, or use a local model (-m)"),
    # it stops at a stop string but keeps the string in the answer
    ("greedy", {"stop": ("###",)}, None, "--stop cannot be sent to 'srv' (backend openai, "
     "server transformers)", "remove it, or use a local model (-m)"),
    ("greedy", {"repetition_penalty": 1.2}, None, "--repetition-penalty cannot be sent to "
     "'srv' (backend openai, server transformers)", "remove it, or set server = \"generic\" "
     "for the alias if the server accepts it"),
])
def test_transformers_profile_refuses_up_front(strategy: str, flags: dict[str, object],
                                               candidates: int | None, message: str,
                                               hint: str) -> None:
    settings = resolve_settings(strategy_registry(), strategy=strategy, flags=flags)
    with pytest.raises(UsageError) as err:
        params.check(_spec("transformers"), settings, candidates)
    assert (err.value.message, err.value.hint) == (message, hint)


def test_profiles_declare_their_capabilities() -> None:
    assert [name for name, p in params.PROFILES.items() if p.beam] == ["vllm"]
    assert [name for name, p in params.PROFILES.items() if not p.logprobs] == ["transformers"]
    assert params.PROFILES["generic"].max_top_logprobs == params.MAX_TOP_LOGPROBS == 20


def test_token_estimate() -> None:
    assert estimate_tokens([Message("user", "")]) == 7
    assert estimate_tokens([Message("system", "abcd"), Message("user", "abcde")]) == 3 + 5 + 6
