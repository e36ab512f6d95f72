"""The text stream: token ids → `StepEvent`s with text deltas, plus `Stats`.

Contract: `stream(loaded, prompt_ids, max_new_tokens)` returns a `Generation`;
iterating it yields one `StepEvent` per generated token (the last one carries
the finish reason: "stop" at any EOS id, "length" at the token limit) and fills
`Generation.stats` when done. `complete()` is the convenience wrapper that
returns the whole text. Decoding here is greedy (argmax); the token choice lives
in `chatcli.generation.loop`.

Knows nothing about the terminal or the CLI.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from chatcli.generation.detokenize import IncrementalDetokenizer
from chatcli.generation.loop import greedy_tokens
from chatcli.loader import LoadedModel


@dataclass(frozen=True)
class StepEvent:
    """One generated token."""

    token_id: int
    text: str  # printable delta; "" while a UTF-8 sequence is incomplete
    logprob: float
    finish_reason: str | None = None  # "stop" | "length" on the last event


@dataclass
class Stats:
    prompt_tokens: int
    completion_tokens: int = 0
    time_to_first_token_s: float = 0.0
    decode_tokens_per_s: float = 0.0
    total_s: float = 0.0
    finish_reason: str | None = None


@dataclass
class Generation:
    """An answer being generated: iterate for events, then read `stats`/`text`."""

    _events: Iterator[StepEvent]
    stats: Stats
    token_ids: list[int] = field(default_factory=list)
    text: str = ""

    def __iter__(self) -> Iterator[StepEvent]:
        for event in self._events:
            self.token_ids.append(event.token_id)
            self.text += event.text
            yield event


def stream(loaded: LoadedModel, prompt_ids: list[int], max_new_tokens: int) -> Generation:
    stats = Stats(prompt_tokens=len(prompt_ids))
    return Generation(_events(loaded, prompt_ids, max_new_tokens, stats), stats)


def _events(
    loaded: LoadedModel, prompt_ids: list[int], max_new_tokens: int, stats: Stats
) -> Iterator[StepEvent]:
    lm = loaded.lm
    detok = IncrementalDetokenizer(loaded.tokenizer)
    start = time.perf_counter()
    first = 0.0
    tokens = greedy_tokens(lm, prompt_ids, max_new_tokens, loaded.eos_ids)
    for n, (token_id, logprob, finish) in enumerate(tokens, start=1):
        if n == 1:
            first = time.perf_counter()
            stats.time_to_first_token_s = first - start
        text = "" if token_id in loaded.eos_ids else detok.push(token_id)
        if finish is not None:
            text += detok.flush()
            end = time.perf_counter()
            stats.completion_tokens = n
            stats.total_s = end - start
            stats.decode_tokens_per_s = (n - 1) / (end - first) if n > 1 and end > first else 0.0
            stats.finish_reason = finish
        yield StepEvent(token_id, text, logprob, finish)


def complete(loaded: LoadedModel, prompt_ids: list[int], max_new_tokens: int) -> Generation:
    """Generate the whole answer; returns the exhausted `Generation`."""
    gen = stream(loaded, prompt_ids, max_new_tokens)
    for _ in gen:
        pass
    return gen
