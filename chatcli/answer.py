"""The answer types every backend returns: `Generation`, `StepEvent`, `Stats`.

Contract: a `Generation` is an answer being generated: iterating it yields one
`StepEvent` per token (the printable text delta; the last one carries the finish
reason) and keeps `token_ids`, `text` and `stats` current, so that an interrupted
answer has them too. A strategy that returns several hypotheses fills `search`,
`hypotheses` (`AnswerHypothesis`) and `pruned` (`PrunedText`); a constrained answer
has `constraint_satisfied` once it ends. `as_dict()` of a hypothesis or pruned beam is
its --json form.

This module imports nothing heavy (no torch, no loader, no tokenizer): the local
backend, the remote ones and the resident-model client all build these, and the
commands read them. It knows nothing about where an answer comes from.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from chatcli.decoding.base import Candidates, Hypotheses
    from chatcli.decoding.settings import DecodingSettings
    from chatcli.decoding.speculative.figures import SpeculationStats


@dataclass(frozen=True)
class StepEvent:
    """One generated token."""

    token_id: int
    text: str  # printable delta; "" while held back (partial UTF-8, possible stop string)
    logprob: float
    finish_reason: str | None = None  # "stop" | "length" | "stop_string" on the last event
    candidates: Candidates | None = None  # with --show-candidates
    thinking: str = ""  # the part of the delta thought (`text`: the part said)
    forced: bool = False  # chatcli chose this token (the close of thinking at its budget)
    drafted: bool = False  # --speculate: a drafted token the model accepted


@dataclass
class Stats:
    prompt_tokens: int
    completion_tokens: int = 0
    time_to_first_token_s: float = 0.0
    decode_tokens_per_s: float = 0.0
    total_s: float = 0.0
    finish_reason: str | None = None
    # with --speculate: chatcli.decoding.speculative.figures.SpeculationStats
    speculation: SpeculationStats | None = None


@dataclass(frozen=True)
class AnswerHypothesis:
    """One of the hypotheses a strategy returned, with its text."""

    text: str  # without the EOS token
    token_ids: list[int]  # with the final EOS id, when it ended with one
    score: float
    logprob: float
    finished: bool

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class PrunedText:
    """A beam that left the search, with its text."""

    step: int
    score: float
    text: str

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class Generation:
    """An answer being generated: iterate for events, then read the results."""

    _events: Iterator[StepEvent]
    stats: Stats
    settings: DecodingSettings
    token_ids: list[int] = field(default_factory=list)
    text: str = ""
    hypotheses: list[AnswerHypothesis] = field(default_factory=list)
    pruned: list[PrunedText] = field(default_factory=list)  # beams that left the search
    search: Hypotheses | None = None  # the strategy's own result, token ids only
    constraint: Any = None  # chatcli.constraints.spec.Constraint the answer was held to
    constraint_satisfied: bool | None = None  # set with the last event (None: no constraint)
    # A reasoning model's thinking (chatcli.thinking): with a `splitter`, each event's
    # delta is split into `thinking` and `text` as it streams; `thinking` is the whole
    # thought, `thinking_tokens` the tokens spent in it (the tags included), and
    # `budget_hit` says chatcli closed the block at --thinking-budget.
    splitter: Any = None
    thinking: str = ""
    thinking_tokens: int = 0
    budget_hit: bool = False

    def __iter__(self) -> Iterator[StepEvent]:
        for event in self._events:
            self.token_ids.append(event.token_id)
            self.budget_hit = self.budget_hit or event.forced
            if self.splitter is not None:
                event = self._split(event)
            elif event.thinking:  # thought apart already (a server parsed it out)
                self.thinking += event.thinking
                self.thinking_tokens += 1
            self.text += event.text
            yield event

    def _split(self, event: StepEvent) -> StepEvent:
        was = self.splitter.inside
        thought, said = self.splitter.feed(event.text)
        if event.finish_reason is not None:
            rest = self.splitter.flush()
            thought, said = thought + rest[0], said + rest[1]
        thought = event.thinking + thought
        if was or self.splitter.inside or event.thinking:
            self.thinking_tokens += 1
        self.thinking += thought
        return dataclasses.replace(event, text=said, thinking=thought)

    def flush_thinking(self) -> None:
        """An answer stopped early: what the splitter holds back joins the results."""
        if self.splitter is not None:
            thought, said = self.splitter.flush()
            self.thinking += thought
            self.text += said
