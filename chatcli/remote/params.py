"""Decoding settings → the fields of a chat-completions request.

Contract: `check(spec, settings, candidates)` raises `UsageError` (before any
request is made) for a strategy or parameter the alias's server cannot honour;
`request_body(spec, settings, messages, max_tokens, candidates)` builds the JSON
body. What is sent, per strategy:

* greedy → `temperature: 0`.
* sample → `temperature`, `top_p`, `seed` (always: the seed recorded in the
  history is the one the server used), plus `top_k` and `min_p` as extra fields
  where the server takes them. `typical_p` is never sent (no server profile here
  takes it in chat completions).
* beam → only on `server = "vllm"`: `use_beam_search: true`, `n` = num_beams (vLLM's
  beam width; the best beam is choice 0), `length_penalty`, `temperature: 0`.
  `early_stopping` and `num_return_sequences` other than their defaults are refused.
* any strategy → `max_tokens`, `stop`, `frequency_penalty` and `presence_penalty`
  (standard), `repetition_penalty` as an extra field (`repeat_penalty` on
  llama.cpp). `no_repeat_ngram_size` is refused.
* `--show-candidates K` → `logprobs: true`, `top_logprobs: K` (at most 20).
* `stream_options: {"include_usage": true}` asks for the server's token counts.

Server profiles (`server` in models.toml): `generic` (the default) sends extra
fields only when they differ from chatcli's defaults (off); `openai` sends
standard fields only and refuses the rest; `vllm` is generic plus beam search;
`llama.cpp` always sends `top_k`, `min_p` and `repeat_penalty`, because that
server's own defaults (top_k 40, min_p 0.05, repeat_penalty 1.1) are not off.
A plugin strategy chooses tokens itself and runs on local models only.

Knows nothing about HTTP or the terminal.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from chatcli.conversation import Message
from chatcli.decoding.settings import CommonParams, DecodingSettings
from chatcli.errors import UsageError
from chatcli.registry import ModelSpec

MAX_TOP_LOGPROBS = 20
_FLAGS = {
    "top_k": "--top-k", "min_p": "--min-p", "typical_p": "--typical-p",
    "repetition_penalty": "--repetition-penalty",
    "no_repeat_ngram_size": "--no-repeat-ngram-size",
    "early_stopping": "-o early_stopping", "num_return_sequences": "-o num_return_sequences",
}


@dataclass(frozen=True)
class Profile:
    extra: dict[str, str]  # chatcli parameter -> the server's request field (non-standard)
    beam: bool = False  # vLLM-style beam search (use_beam_search, n)
    explicit: bool = False  # send every extra field, even at chatcli's default


_EXTRA = {"top_k": "top_k", "min_p": "min_p", "repetition_penalty": "repetition_penalty"}
PROFILES = {
    "generic": Profile(_EXTRA),
    "openai": Profile({}),
    "vllm": Profile(_EXTRA, beam=True),
    "llama.cpp": Profile({"top_k": "top_k", "min_p": "min_p",
                          "repetition_penalty": "repeat_penalty"}, explicit=True),
}
_NEUTRAL = {"top_k": 0, "min_p": 0.0, "typical_p": 1.0, "repetition_penalty": 1.0,
            "no_repeat_ngram_size": 0, "early_stopping": False, "num_return_sequences": 1}


def _refuse(spec: ModelSpec, name: str) -> UsageError:
    flag = _FLAGS.get(name, name)
    where = f"'{spec.alias or spec.base_url}' (backend {spec.backend}, server {spec.server})"
    takers = [s for s, p in PROFILES.items() if name in p.extra]
    hint = "remove it, or use a local model (-m)"
    if takers:
        hint = (f"remove it, or set server = \"{takers[0]}\" for the alias if the server "
                "accepts it")
    return UsageError(f"{flag} cannot be sent to {where}", hint)


def _used(settings: DecodingSettings) -> dict[str, Any]:
    """The parameters whose value differs from 'off'."""
    values = {**dataclasses.asdict(settings.params),
              "repetition_penalty": settings.common.repetition_penalty,
              "no_repeat_ngram_size": settings.common.no_repeat_ngram_size}
    return {k: v for k, v in values.items() if k in _NEUTRAL and v != _NEUTRAL[k]}


def check(spec: ModelSpec, settings: DecodingSettings, candidates: int | None = None) -> None:
    """Refuse what the alias's server cannot do, before any request."""
    profile = PROFILES[spec.server]
    name = settings.strategy
    if name not in ("greedy", "sample", "beam"):
        raise UsageError(
            f"strategy '{name}' chooses tokens itself, so it runs on local models only "
            f"('{spec.alias}' is served by {spec.base_url})",
            "use -S greedy or -S sample, or a local model (-m)",
        )
    if name == "beam" and not profile.beam:
        raise UsageError(
            f"-S beam needs a server with beam search; '{spec.alias or spec.base_url}' is server "
            f"'{spec.server}'",
            "set server = \"vllm\" for the alias if it is vLLM, or use a local model (-m)",
        )
    for key in _used(settings):
        if key not in profile.extra:
            raise _refuse(spec, key)
    if candidates is not None and candidates > MAX_TOP_LOGPROBS:
        raise UsageError(
            f"--show-candidates {candidates}: the chat-completions API returns at most "
            f"{MAX_TOP_LOGPROBS} alternatives per token",
            f"use --show-candidates {MAX_TOP_LOGPROBS} or less",
        )


def request_body(
    spec: ModelSpec,
    settings: DecodingSettings,
    messages: list[Message],
    max_tokens: int,
    candidates: int | None = None,
) -> dict[str, Any]:
    check(spec, settings, candidates)
    profile = PROFILES[spec.server]
    common: CommonParams = settings.common
    p = settings.params
    body: dict[str, Any] = {
        "model": spec.model,
        "messages": [m.as_dict() for m in messages],
        "max_tokens": max_tokens,
    }

    def extra(key: str, value: Any) -> None:
        if key in profile.extra and (profile.explicit or value != _NEUTRAL[key]):
            body[profile.extra[key]] = value

    if settings.strategy == "greedy":
        body["temperature"] = 0.0
    elif settings.strategy == "sample":
        body["temperature"] = p.temperature
        body["top_p"] = p.top_p
        body["seed"] = settings.seed
        extra("top_k", p.top_k)
        extra("min_p", p.min_p)
    else:  # beam (vLLM)
        body.update(use_beam_search=True, n=p.num_beams, length_penalty=p.length_penalty,
                    temperature=0.0)
    extra("repetition_penalty", common.repetition_penalty)
    if common.frequency_penalty:
        body["frequency_penalty"] = common.frequency_penalty
    if common.presence_penalty:
        body["presence_penalty"] = common.presence_penalty
    if common.stop:
        body["stop"] = list(common.stop)
    if candidates is not None:
        body["logprobs"] = True
        body["top_logprobs"] = candidates
    body["stream_options"] = {"include_usage": True}
    return body
