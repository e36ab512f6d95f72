"""Greedy decoding: always the most likely token.

Ties go to the lowest token id (`torch.argmax`), as in transformers'
`generate(do_sample=False)`, so the output is token-for-token the same.
Knows nothing about text or the CLI.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, ClassVar

from chatcli.decoding.base import DecodeContext, NoParams, TokenStep
from chatcli.decoding.loop import token_loop
from chatcli.lm.base import LanguageModel


class Greedy:
    """Always pick the most likely next token (deterministic)."""

    name: ClassVar[str] = "greedy"
    Params: ClassVar[type] = NoParams

    def decode(
        self, lm: LanguageModel, prompt_ids: list[int], params: Any, ctx: DecodeContext
    ) -> Iterator[TokenStep]:
        return token_loop(lm, prompt_ids, lambda scores: int(scores[0].argmax()), ctx)
