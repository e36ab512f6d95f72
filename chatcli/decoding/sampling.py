"""Sampling: draw the next token from the filtered distribution.

The filters (`chatcli.decoding.filters`) are applied in transformers' order:
temperature, top-k, top-p, min-p, typical; then one token is drawn from the softmax
by inverting its CDF (`draw`), using the context's seeded generator, so a fixed
`--seed` reproduces an answer exactly. On a server it sends `temperature`, `top_p`
and the seed, and `top_k`, `min_p` (extra fields) where the server takes them. A
model's generation_config.json asks for it with `do_sample: true`.
Knows nothing about text or the CLI.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

from chatcli.decoding.base import (
    Capabilities,
    DecodeContext,
    Remote,
    StrategyParams,
    TokenStep,
    above,
    at_least,
    interval,
    param,
)
from chatcli.lm.base import LanguageModel


@dataclass(frozen=True)
class SampleParams(StrategyParams):
    temperature: float = param(1.0, "divide logits by this; < 1 sharper, > 1 flatter",
                               "--temperature", short="-t", valid=above(0),
                               request="temperature")
    top_k: int = param(0, "keep the k most likely tokens (0: off)", "--top-k",
                       valid=at_least(0), request="top_k")
    top_p: float = param(1.0, "keep the smallest set with this much probability (1: off)",
                         "--top-p", valid=interval(0, 1, "(]"), request="top_p")
    min_p: float = param(0.0, "drop tokens below min_p x the top probability (0: off)",
                         "--min-p", valid=interval(0, 1, "[)"), request="min_p")
    typical_p: float = param(1.0, "locally typical sampling mass (1: off)", "--typical-p",
                             valid=interval(0, 1, "(]"), request="typical_p")


def draw(probs: Any, generator: Any) -> int:
    """One token from a (vocab,) probability vector, by inverting its CDF.

    Equivalent in distribution to `torch.multinomial(probs, 1)` and ~10x cheaper on a
    large vocabulary (one cumsum and a binary search). Zero-probability tokens are
    never drawn: the search returns the first index whose CDF exceeds u.
    """
    import torch

    cdf = probs.double().cumsum(-1)
    u = torch.rand((1,), generator=generator, dtype=torch.float64, device=cdf.device) * cdf[-1]
    index = int(torch.searchsorted(cdf, u, right=True)[0])
    if index >= cdf.shape[0]:  # u rounded up to the total: the last token with mass
        index = int(probs.nonzero()[-1, 0])
    return index


class Sample:
    """Draw from the model's distribution after temperature, top-k, top-p, min-p, typical."""

    name: ClassVar[str] = "sample"
    Params: ClassVar[type] = SampleParams
    capabilities: ClassVar[Capabilities] = Capabilities(
        remote=Remote(always=("temperature", "top_p"), seed=True),
        implied_by=lambda config: bool(config.get("do_sample")),
    )

    def decode(
        self, lm: LanguageModel, prompt_ids: list[int], params: Any, ctx: DecodeContext
    ) -> Iterator[TokenStep]:
        import torch

        from chatcli.decoding.filters import make_filter
        from chatcli.decoding.loop import token_loop

        filt = make_filter(params.temperature, params.top_k, params.top_p, params.min_p,
                           params.typical_p)
        generator = ctx.generator

        def distribution(scores: Any) -> Any:
            return torch.softmax(filt(scores), dim=-1)

        def pick(scores: Any) -> int:
            return draw(distribution(scores)[0], generator)

        return token_loop(lm, prompt_ids, pick, ctx, distribution)
