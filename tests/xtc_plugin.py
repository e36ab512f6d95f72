"""A strategy plugin for tests: sampling with XTC ("exclude top choices"), one module.

XTC (as in text-generation-webui and llama.cpp): at each step, with probability
`xtc_probability`, every token at least `xtc_threshold` likely except the least likely
of them is removed before the draw (when at least two are that likely). Off
(`xtc_probability = 0`) it is exactly `sample`: no random number is drawn for it.

Everything else comes from the two `param(...)` declarations: `-o`, `/set`,
`compare -S xtc:...`, `[models.X.defaults]`, `chatcli strategies`, range checks, and
the request field a server would be sent (refused where no profile takes it). The
sampler's own parameters (and flags: -t, --top-p, ...) are inherited from `sample`,
and so are its capabilities (it runs where sample runs, as long as XTC is off).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

from chatcli.decoding.base import DecodeContext, TokenStep, interval, param
from chatcli.decoding.filters import make_filter
from chatcli.decoding.loop import token_loop
from chatcli.decoding.registry import StrategyRegistry, register_builtins
from chatcli.decoding.sampling import Sample, SampleParams, draw


@dataclass(frozen=True)
class XtcParams(SampleParams):
    xtc_probability: float = param(0.0, "chance per step of excluding the top choices (0: off)",
                                   valid=interval(0, 1), request="xtc_probability")
    xtc_threshold: float = param(0.1, "tokens at least this likely are the top choices",
                                 valid=interval(0, 0.5), request="xtc_threshold")


def exclude_top_choices(probs: Any, threshold: float) -> Any:
    """`probs` (1, vocab) without its top choices but the least likely one, renormalised."""
    top = probs[0] >= threshold
    if int(top.sum()) < 2:
        return probs
    cut = top.clone()
    cut[int(probs[0].masked_fill(~top, 2.0).argmin())] = False  # the least likely stays
    kept = probs.masked_fill(cut[None, :], 0.0)
    return kept / kept.sum()


class XtcSample(Sample):
    """Sample, excluding the most likely tokens at a given rate (XTC)."""

    name: ClassVar[str] = "xtc"
    Params: ClassVar[type] = XtcParams

    def decode(
        self, lm: Any, prompt_ids: list[int], params: Any, ctx: DecodeContext
    ) -> Iterator[TokenStep]:
        import torch

        if params.xtc_probability == 0:
            return super().decode(lm, prompt_ids, params, ctx)
        filt = make_filter(params.temperature, params.top_k, params.top_p, params.min_p,
                           params.typical_p)
        generator, drawn = ctx.generator, {}

        def pick(scores: Any) -> int:
            probs = torch.softmax(filt(scores), dim=-1)
            coin = torch.rand((1,), generator=generator, dtype=torch.float64,
                              device=probs.device)
            if float(coin) < params.xtc_probability:
                probs = exclude_top_choices(probs, params.xtc_threshold)
            drawn["probs"] = probs
            return draw(probs[0], generator)

        return token_loop(lm, prompt_ids, pick, ctx, lambda _: drawn["probs"])


def registry_with_xtc() -> StrategyRegistry:
    """The built-ins plus this plugin, as `strategy_registry()` would load it."""
    registry = StrategyRegistry()
    register_builtins(registry.register)
    registry.register(XtcSample, "plugin xtc_plugin:XtcSample (tests)")
    return registry
