"""Every shared CLI option, declared once as an `Annotated` alias.

Commands reuse these aliases so that a flag has one spelling, one help text and
one default everywhere. Knows nothing about models or torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

ModelOpt = Annotated[
    str | None,
    typer.Option("--model", "-m", help="Model alias from models.toml (default: its 'default').",
                 show_default=False),
]
BaseUrlOpt = Annotated[
    str | None,
    typer.Option("--base-url", metavar="URL",
                 help="An OpenAI-compatible server for this run, e.g. http://127.0.0.1:8080/v1: "
                 "replaces the base_url of the remote alias named by -m; otherwise -m names "
                 "the server's model (default: the one it lists).", show_default=False),
]
SystemOpt = Annotated[
    str | None, typer.Option("--system", "-s", help="System prompt.", show_default=False)
]
MaxNewTokensOpt = Annotated[
    int | None,
    typer.Option("--max-new-tokens", "-n",
                 help="Most tokens to generate (default: the alias's, else 512).",
                 show_default=False),
]
JsonOpt = Annotated[
    bool, typer.Option("--json", help="Print one JSON object instead of streaming text.")
]
JsonListingOpt = Annotated[
    bool, typer.Option("--json", help="Print one JSON value on stdout instead of text "
                       "(its keys are listed above).")
]
StatsOpt = Annotated[
    bool, typer.Option("--stats", help="Print token counts and speed as one line on stderr.")
]
ModelsFileOpt = Annotated[
    Path | None,
    typer.Option("--models-file", help="Extra models.toml that adds or overrides aliases.",
                 show_default=False, dir_okay=False),
]
DeviceOpt = Annotated[
    str, typer.Option("--device", help="auto (cuda > mps > cpu), cpu, cuda or mps.")
]
DtypeOpt = Annotated[
    str,
    typer.Option("--dtype", help="auto (bf16 on GPU and on CPUs with native bf16, else fp32), "
                 "float32, bfloat16 or float16."),
]
ThreadsOpt = Annotated[
    int | None,
    typer.Option("--threads", min=1,
                 help="CPU threads (default: the cores other processes leave free).",
                 show_default=False),
]
QuantizeOpt = Annotated[
    str | None,
    typer.Option("--quantize", help="Weight-only quantization of the linear layers: int8, int4 "
                 "or none (default: the alias's, else none). Faster and smaller, slightly less "
                 "exact; CPU, native implementation.", show_default=False),
]
AliasArg = Annotated[str, typer.Argument(help="Model alias.", show_default=False)]


# -- decoding (validated by the strategies' parameter classes, not here) ---------
_D = "Decoding"
StrategyOpt = Annotated[
    str | None,
    typer.Option("--strategy", "-S", help="Decoding strategy: greedy, sample, beam or a plugin "
                 "('chatcli strategies' lists them).", show_default=False, rich_help_panel=_D),
]
TemperatureOpt = Annotated[
    float | None,
    typer.Option("--temperature", "-t", help="sample: divide logits by this.", show_default=False,
                 rich_help_panel=_D),
]
TopKOpt = Annotated[
    int | None, typer.Option("--top-k", help="sample: keep the k most likely tokens.",
                             show_default=False, rich_help_panel=_D)
]
TopPOpt = Annotated[
    float | None, typer.Option("--top-p", help="sample: nucleus probability mass.",
                               show_default=False, rich_help_panel=_D)
]
MinPOpt = Annotated[
    float | None, typer.Option("--min-p", help="sample: drop tokens below min-p x top prob.",
                               show_default=False, rich_help_panel=_D)
]
TypicalPOpt = Annotated[
    float | None, typer.Option("--typical-p", help="sample: locally typical mass.",
                               show_default=False, rich_help_panel=_D)
]
NumBeamsOpt = Annotated[
    int | None, typer.Option("--num-beams", help="beam: hypotheses kept per step.",
                             show_default=False, rich_help_panel=_D)
]
LengthPenaltyOpt = Annotated[
    float | None, typer.Option("--length-penalty", help="beam: score / length^this.",
                               show_default=False, rich_help_panel=_D)
]
RepetitionPenaltyOpt = Annotated[
    float | None, typer.Option("--repetition-penalty", help="Any strategy: penalise seen tokens.",
                               show_default=False, rich_help_panel=_D)
]
FrequencyPenaltyOpt = Annotated[
    float | None, typer.Option("--frequency-penalty", help="Any strategy: -x per repeat.",
                               show_default=False, rich_help_panel=_D)
]
PresencePenaltyOpt = Annotated[
    float | None, typer.Option("--presence-penalty", help="Any strategy: -x once used.",
                               show_default=False, rich_help_panel=_D)
]
NoRepeatNgramOpt = Annotated[
    int | None, typer.Option("--no-repeat-ngram-size", help="Any strategy: ban repeated n-grams.",
                             show_default=False, rich_help_panel=_D)
]
SeedOpt = Annotated[
    int | None, typer.Option("--seed", help="Random seed: a fixed seed reproduces the answer.",
                             show_default=False, rich_help_panel=_D)
]
StopOpt = Annotated[
    list[str] | None, typer.Option("--stop", help="Stop at this text (repeatable; not printed).",
                                   show_default=False, rich_help_panel=_D)
]
OptionOpt = Annotated[
    list[str] | None, typer.Option("--option", "-o", metavar="KEY=VALUE",
                                   help="A strategy parameter without its own flag "
                                   "(e.g. -o num_return_sequences=2).", show_default=False,
                                   rich_help_panel=_D)
]

# Parameter names of the decoding flags above (the command's parameter names).
DECODING_FLAGS = (
    "temperature", "top_k", "top_p", "min_p", "typical_p", "num_beams", "length_penalty",
    "repetition_penalty", "frequency_penalty", "presence_penalty", "no_repeat_ngram_size",
    "seed", "stop", "max_new_tokens",
)


def decoding_request(params: dict[str, object]) -> tuple[str | None, dict[str, object],
                                                        dict[str, str]]:
    """(strategy, flag values, -o options) from a command's parsed parameters."""
    from chatcli.errors import UsageError

    flags = {k: params.get(k) for k in DECODING_FLAGS if params.get(k) not in (None, [])}
    if "stop" in flags:
        flags["stop"] = tuple(flags["stop"])  # type: ignore[arg-type]
    options: dict[str, str] = {}
    for item in params.get("option") or []:  # type: ignore[union-attr]
        key, sep, value = str(item).partition("=")
        if not sep or not key.strip():
            raise UsageError(f"-o {item}: expected KEY=VALUE", "e.g. -o num_return_sequences=2")
        options[key.strip()] = value
    strategy = params.get("strategy")
    return (str(strategy) if strategy else None), flags, options

ContinueOpt = Annotated[
    bool, typer.Option("--continue", "-c", help="Continue the latest saved conversation.")
]
ConversationOpt = Annotated[
    int | None, typer.Option("--conversation", help="Continue the saved conversation with this "
                             "id ('chatcli history list').", show_default=False)
]
NoTruncateOpt = Annotated[
    bool, typer.Option("--no-truncate", help="Refuse a message too long for the context window "
                       "instead of shortening it in the middle.")
]
ContextWindowOpt = Annotated[
    int | None, typer.Option("--context-window", min=16, help="Use at most this many tokens of "
                             "context (default: the alias's, else the model config's).",
                             show_default=False)
]
ShowCandidatesOpt = Annotated[
    int | None, typer.Option("--show-candidates", min=0, metavar="K",
                             help="Show each token's probability and the top-K alternatives "
                             "(model and strategy distributions; 0: off).", show_default=False)
]
ShowBeamsOpt = Annotated[
    bool, typer.Option("--show-beams", help="beam: show the final hypotheses with their scores "
                       "and the step at which each pruned beam left the search.")
]
ExplainContextOpt = Annotated[
    bool, typer.Option("--explain-context", help="Report how much of the answer's attention "
                       "went to each earlier turn (one extra forward pass).")
]
