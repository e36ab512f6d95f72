"""The `beam` strategy: `chatcli.decoding.beam.beam_search` behind the Strategy interface.

Beam search does not stream: the best hypothesis is yielded when the search ends, and
its first step carries every returned hypothesis (with scores) and, when the context
asks for a trace, the pruned beams, as a typed `Hypotheses` (so a caller that stops
early at a stop string has them too). It has no per-token
distributions; on a server it needs beam search (vLLM's `use_beam_search`, `n`).
A model's generation_config.json asks for it with `num_beams > 1` and no sampling.
Knows nothing about text or the CLI.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from chatcli.decoding.base import (
    Capabilities,
    DecodeContext,
    Hypotheses,
    Remote,
    StrategyParams,
    TokenStep,
    Valid,
    at_least,
    check,
    finite,
    param,
)
from chatcli.lm.base import LanguageModel


@dataclass(frozen=True)
class BeamParams(StrategyParams):
    num_beams: int = param(4, "hypotheses kept at each step", "--num-beams",
                           valid=at_least(2), request="n")
    length_penalty: float = param(
        1.0, "score / length^this; > 0 favours longer answers", "--length-penalty",
        valid=finite(), request="length_penalty")
    early_stopping: bool | str = param(
        False, "true: stop at num_beams finished; false: stop when no better one can appear; never",
        valid=Valid("true, false or never", lambda v: isinstance(v, bool) or v == "never"))
    num_return_sequences: int = param(1, "hypotheses returned (the best is printed)")

    def __post_init__(self) -> None:
        super().__post_init__()
        n = self.num_return_sequences
        check(1 <= n <= self.num_beams, type(self), "num_return_sequences",
              f"in [1, num_beams={self.num_beams}]", n)


def _implied(config: Mapping[str, Any]) -> bool:
    return int(config.get("num_beams") or 1) > 1 and not config.get("do_sample")


class Beam:
    """Keep the num_beams most likely sequences; print the best (length-normalised)."""

    name: ClassVar[str] = "beam"
    Params: ClassVar[type] = BeamParams
    capabilities: ClassVar[Capabilities] = Capabilities(
        streams=False, distributions=False, hypotheses=True,
        remote=Remote(fixed={"use_beam_search": True, "temperature": 0.0},
                      always=("num_beams", "length_penalty"), needs=("beam_search",)),
        note="beam search scores whole sequences", implied_by=_implied,
    )

    def decode(
        self, lm: LanguageModel, prompt_ids: list[int], params: Any, ctx: DecodeContext
    ) -> Iterator[TokenStep]:
        from chatcli.decoding.beam import beam_search

        if ctx.max_new_tokens <= 0:
            return
        result = beam_search(
            lm, prompt_ids, num_beams=params.num_beams, max_new_tokens=ctx.max_new_tokens,
            eos_ids=ctx.eos_ids, length_penalty=params.length_penalty,
            early_stopping=params.early_stopping,
            num_return_sequences=params.num_return_sequences, processors=ctx.processors,
            trace=ctx.trace, pad_id=ctx.pad_id,
        )
        found = Hypotheses(
            result.hypotheses, result.pruned,
            title=(f"beam search: {params.num_beams} beams, length penalty "
                   f"{params.length_penalty}, early stopping {params.early_stopping}"),
            score=f"log-prob / length^{params.length_penalty}",
        )
        best = result.hypotheses[0]
        last = len(best.token_ids) - 1
        for i, token in enumerate(best.token_ids):
            finish = None if i < last else ("stop" if best.finished else "length")
            # Beam search scores whole sequences; per-token log-probabilities are not kept.
            yield TokenStep(token, math.nan, finish, hypotheses=None if i else found)
