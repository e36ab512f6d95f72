"""Greedy decoding: always the most likely token.

Ties go to the lowest token id (`torch.argmax`), as in transformers'
`generate(do_sample=False)`, so the output is token-for-token the same. On a
server it is `temperature: 0`. A model's generation_config.json asks for it with
`do_sample: false` (and at most one beam). Knows nothing about text or the CLI.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any, ClassVar

from chatcli.decoding.base import Capabilities, DecodeContext, NoParams, Remote, TokenStep
from chatcli.lm.base import LanguageModel


def _implied(config: Mapping[str, Any]) -> bool:
    return ("do_sample" in config and not config["do_sample"]
            and int(config.get("num_beams") or 1) <= 1)


class Greedy:
    """Always pick the most likely next token (deterministic)."""

    name: ClassVar[str] = "greedy"
    Params: ClassVar[type] = NoParams
    capabilities: ClassVar[Capabilities] = Capabilities(
        remote=Remote(fixed={"temperature": 0.0}), implied_by=_implied)

    def decode(
        self, lm: LanguageModel, prompt_ids: list[int], params: Any, ctx: DecodeContext
    ) -> Iterator[TokenStep]:
        from chatcli.decoding.loop import token_loop

        return token_loop(lm, prompt_ids, lambda scores: int(scores[0].argmax()), ctx)
