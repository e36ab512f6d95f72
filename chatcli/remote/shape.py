"""The JSON a chat-completions server sends, checked field by field.

Contract: `read_chunk(value)` takes one decoded JSON event of a streamed chat
completion (or of a text completion: a choice's `text` in place of `delta.content`)
and returns a `Chunk`: choice 0's text, its thinking (`reasoning_content`, or
`reasoning`: a reasoning model's thinking that the server parsed out), finish reason and
per-token log-probabilities, whether any choice finished, and the usage counts. `read_models(
value, source)` takes the body of GET /models and returns the `Listed` models (id and
context length). A value of the wrong shape raises `MalformedStreamError` with one
short line naming the first wrong field and what it should be, e.g. "the server
sent a stream chunk of the wrong shape: choices[0].delta.content is a number, not a
string". What the API lets a server leave out may be absent or null; unknown fields
are ignored. Strings are returned as valid Unicode (a lone surrogate, which JSON
can escape, becomes U+FFFD). Log-probabilities must be numbers no greater than 0
(rounding up to 1e-3 above it is clamped to 0), token counts and context lengths
whole numbers from 0 to 2^31 - 1.

Knows nothing about HTTP, SSE, error bodies (the client reports an `error` event
before asking for a chunk) or the model built on top.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from chatcli.errors import MalformedStreamError

CHUNK_HINT = "the partial answer is kept in the history, marked interrupted"
MODELS_HINT = "check that base_url is the server's API root (often ending in /v1)"
LOGPROB_SLACK = 1e-3  # servers round; a log-probability this far above 0 is taken as 0
MAX_COUNT = 2**31 - 1  # token counts and context lengths beyond this are nonsense
CONTEXT_KEYS = ("max_model_len", "context_length", "context_window")


@dataclass(frozen=True)
class TokenLogprob:
    token: str
    logprob: float
    top: tuple[tuple[str, float], ...] = ()  # (token, logprob) alternatives, as sent


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


@dataclass(frozen=True)
class Chunk:
    has_choice: bool = False  # choice 0 is in this chunk
    content: str = ""
    reasoning: str = ""  # a reasoning model's thinking, where the server parses it out
    finish_reason: str | None = None  # choice 0's
    tokens: tuple[TokenLogprob, ...] = ()
    finished: bool = False  # some choice has a finish reason
    usage: Usage | None = None


@dataclass(frozen=True)
class Listed:
    id: str
    context_window: int | None = None


class _Wrong(Exception):
    def __init__(self, path: str, value: Any, expected: str) -> None:
        super().__init__(f"{path or 'the value'} is {_kind(value)}, not {expected}")


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    return "an object"


def _text(value: str) -> str:
    try:
        value.encode("utf-8")
        return value
    except UnicodeEncodeError:
        return "".join("\ufffd" if 0xD800 <= ord(c) <= 0xDFFF else c for c in value)


def _object(value: Any, path: str, optional: bool = True) -> dict[str, Any]:
    if value is None and optional:
        return {}
    if not isinstance(value, dict):
        raise _Wrong(path, value, "an object")
    return value


def _list(value: Any, path: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise _Wrong(path, value, "a list")
    return value


def _string(value: Any, path: str, optional: bool = True) -> str | None:
    if value is None and optional:
        return None
    if not isinstance(value, str):
        raise _Wrong(path, value, "a string")
    return _text(value)


def _count(value: Any, path: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_COUNT:
        raise _Wrong(path, value, "a token count")
    return value


def _logprob(value: Any, path: str) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not ok or math.isnan(value) or value > LOGPROB_SLACK:
        raise _Wrong(path, value, "a log-probability (a number <= 0)")
    return min(float(value), 0.0)


def _token(value: Any, path: str) -> TokenLogprob:
    entry = _object(value, path, optional=False)
    token = _string(entry.get("token"), f"{path}.token", optional=False) or ""
    logprob = _logprob(entry.get("logprob"), f"{path}.logprob")
    top = []
    for i, alt in enumerate(_list(entry.get("top_logprobs"), f"{path}.top_logprobs")):
        where = f"{path}.top_logprobs[{i}]"
        alt = _object(alt, where, optional=False)
        top.append((_string(alt.get("token"), f"{where}.token", optional=False) or "",
                    _logprob(alt.get("logprob"), f"{where}.logprob")))
    return TokenLogprob(token, logprob, tuple(top))


def _choice(value: Any, path: str) -> tuple[int, Chunk]:
    choice = _object(value, path, optional=False)
    index = choice.get("index", 0)
    if isinstance(index, bool) or not isinstance(index, int):
        raise _Wrong(f"{path}.index", index, "a whole number")
    delta = _object(choice.get("delta"), f"{path}.delta")
    content = _string(delta.get("content"), f"{path}.delta.content") or ""
    # llama.cpp and vLLM say "reasoning_content"; newer vLLM and others "reasoning"
    reasoning = (_string(delta.get("reasoning_content"), f"{path}.delta.reasoning_content")
                 or _string(delta.get("reasoning"), f"{path}.delta.reasoning") or "")
    if "text" in choice:  # a text completion's chunk
        content = _string(choice["text"], f"{path}.text") or ""
    finish = _string(choice.get("finish_reason"), f"{path}.finish_reason")
    logprobs = _object(choice.get("logprobs"), f"{path}.logprobs")
    entries = _list(logprobs.get("content"), f"{path}.logprobs.content")
    tokens = tuple(_token(e, f"{path}.logprobs.content[{i}]") for i, e in enumerate(entries))
    return index, Chunk(True, content, reasoning, finish or None, tokens, bool(finish))


def read_chunk(value: Any) -> Chunk:
    """One streamed chunk, checked (see the module's contract)."""
    try:
        chunk = _object(value, "the chunk", optional=False)
        first = Chunk()
        finished = False
        for i, raw in enumerate(_list(chunk.get("choices"), "choices")):
            index, choice = _choice(raw, f"choices[{i}]")
            finished = finished or choice.finished
            if index == 0 and not first.has_choice:
                first = choice
        usage = None
        if chunk.get("usage") is not None:
            counts = _object(chunk["usage"], "usage", optional=False)
            usage = Usage(_count(counts.get("prompt_tokens"), "usage.prompt_tokens"),
                          _count(counts.get("completion_tokens"), "usage.completion_tokens"))
    except _Wrong as exc:
        raise MalformedStreamError(
            f"the server sent a stream chunk of the wrong shape: {exc}", CHUNK_HINT
        ) from None
    return dataclasses.replace(first, finished=finished, usage=usage)


def read_models(value: Any, source: str) -> list[Listed]:
    """The models of a GET /models body, checked; `source` (the URL) opens the message."""
    try:
        body = _object(value, "the body", optional=False)
        listed = []
        for i, raw in enumerate(_list(body.get("data"), "data")):
            entry = _object(raw, f"data[{i}]", optional=False)
            name = _string(entry.get("id"), f"data[{i}].id", optional=False) or ""
            context = None
            for key in CONTEXT_KEYS:
                found = _count(entry.get(key), f"data[{i}].{key}")
                context = context or found or None
            listed.append(Listed(name, context))
    except _Wrong as exc:
        raise MalformedStreamError(f"{source} answered JSON of the wrong shape: {exc}",
                                   MODELS_HINT) from None
    return listed
