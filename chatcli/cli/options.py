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
SystemOpt = Annotated[
    str | None, typer.Option("--system", "-s", help="System prompt.", show_default=False)
]
MaxNewTokensOpt = Annotated[
    int | None,
    typer.Option("--max-new-tokens", "-n", min=1,
                 help="Most tokens to generate (default: the alias's, else 512).",
                 show_default=False),
]
JsonOpt = Annotated[
    bool, typer.Option("--json", help="Print one JSON object instead of streaming text.")
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
AliasArg = Annotated[str, typer.Argument(help="Model alias.", show_default=False)]
