"""The `beam` strategy: `chatcli.decoding.beam.beam_search` behind the Strategy interface.

Beam search does not stream: the best hypothesis is yielded when the search ends,
and all returned hypotheses (with scores) and pruned beams go to `ctx.extras`.
Knows nothing about text or the CLI.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

from chatcli.decoding.base import DecodeContext, TokenStep, check, param
from chatcli.decoding.beam import beam_search
from chatcli.lm.base import LanguageModel


@dataclass(frozen=True)
class BeamParams:
    num_beams: int = param(4, "hypotheses kept at each step", "--num-beams")
    length_penalty: float = param(
        1.0, "score / length^this; > 0 favours longer answers", "--length-penalty"
    )
    early_stopping: bool | str = param(
        False, "true: stop at num_beams finished; false: stop when no better one can appear; never"
    )
    num_return_sequences: int = param(1, "hypotheses returned (the best is printed)")

    def __post_init__(self) -> None:
        cls = type(self)
        check(self.num_beams >= 2, cls, "num_beams", "an integer >= 2", self.num_beams)
        lp = self.length_penalty
        check(math.isfinite(lp), cls, "length_penalty", "a finite number", lp)
        es = self.early_stopping
        check(isinstance(es, bool) or es == "never", cls, "early_stopping",
              "true, false or never", es)
        n = self.num_return_sequences
        check(1 <= n <= self.num_beams, cls, "num_return_sequences",
              f"in [1, num_beams={self.num_beams}]", n)


class Beam:
    """Keep the num_beams most likely sequences; print the best (length-normalised)."""

    name: ClassVar[str] = "beam"
    Params: ClassVar[type] = BeamParams

    def decode(
        self, lm: LanguageModel, prompt_ids: list[int], params: Any, ctx: DecodeContext
    ) -> Iterator[TokenStep]:
        if ctx.max_new_tokens <= 0:
            return
        result = beam_search(
            lm, prompt_ids, num_beams=params.num_beams, max_new_tokens=ctx.max_new_tokens,
            eos_ids=ctx.eos_ids, length_penalty=params.length_penalty,
            early_stopping=params.early_stopping,
            num_return_sequences=params.num_return_sequences, processors=ctx.processors,
            trace=bool(ctx.extras.get("trace")), pad_id=ctx.pad_id,
        )
        ctx.extras["hypotheses"] = result.hypotheses
        ctx.extras["pruned"] = result.pruned
        best = result.hypotheses[0]
        last = len(best.token_ids) - 1
        for i, token in enumerate(best.token_ids):
            finish = None if i < last else ("stop" if best.finished else "length")
            # Beam search scores whole sequences; per-token log-probabilities are not kept.
            yield TokenStep(token, math.nan, finish)
