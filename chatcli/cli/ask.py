"""`chatcli ask`: one question, one streamed answer.

Parses options, gathers the prompt (piped stdin first, then the argument), loads
the model and hands the stream of events to the UI. Knows nothing about how
tokens are chosen.
"""

from __future__ import annotations

from typing import Annotated

import typer

from chatcli.cli.options import (
    DeviceOpt,
    DtypeOpt,
    JsonOpt,
    MaxNewTokensOpt,
    ModelOpt,
    ModelsFileOpt,
    StatsOpt,
    SystemOpt,
    ThreadsOpt,
)
from chatcli.errors import UsageError
from chatcli.ui.console import UI, read_piped_stdin

DEFAULT_MAX_NEW_TOKENS = 512

PromptArg = Annotated[
    str | None,
    typer.Argument(help="The question. Piped stdin is put before it.", show_default=False),
]


def ask(
    prompt: PromptArg = None,
    model: ModelOpt = None,
    system: SystemOpt = None,
    max_new_tokens: MaxNewTokensOpt = None,
    json_out: JsonOpt = False,
    stats: StatsOpt = False,
    models_file: ModelsFileOpt = None,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    threads: ThreadsOpt = None,
) -> None:
    """Answer one question with a local model, streaming the reply."""
    from chatcli.prompt import Message, join_prompt

    ui = UI()
    text = join_prompt(prompt, read_piped_stdin(ui))
    if not text.strip():
        raise UsageError(
            "the prompt is empty", 'pass a question, e.g. chatcli ask "Why is the sky blue?"'
        )

    from chatcli.registry import load_registry
    from chatcli.runtime import resolve_runtime

    spec = load_registry(models_file).resolve(model)
    runtime = resolve_runtime(device, dtype, threads, spec.dtype)

    from chatcli.generation.stream import stream
    from chatcli.loader import load_model
    from chatcli.prompt import fit_new_tokens, render_ids

    loaded = load_model(spec, runtime, ui)
    messages = ([Message("system", system)] if system else []) + [Message("user", text)]
    ids = render_ids(loaded.tokenizer, messages)
    requested = max_new_tokens or int(spec.defaults.get("max_new_tokens", DEFAULT_MAX_NEW_TOKENS))
    budget = fit_new_tokens(len(ids), loaded.context_window, requested, spec.alias)
    gen = stream(loaded, ids, budget)

    if json_out:
        for _ in gen:
            pass
    else:
        writer = ui.answer_writer()
        try:
            for event in gen:
                writer.write(event.text)
        finally:
            writer.close()
    s = gen.stats
    figures = {
        "prompt_tokens": s.prompt_tokens,
        "completion_tokens": s.completion_tokens,
        "time_to_first_token_s": round(s.time_to_first_token_s, 4),
        "tokens_per_second": round(s.decode_tokens_per_s, 2),
        "finish_reason": s.finish_reason,
    }
    if json_out:
        ui.print_json({"text": gen.text, "model": spec.alias, **figures})
    if stats:
        ui.print_err(
            f"stats: model={spec.alias} prompt_tokens={s.prompt_tokens} "
            f"completion_tokens={s.completion_tokens} "
            f"time_to_first_token={s.time_to_first_token_s:.3f}s "
            f"tokens_per_second={s.decode_tokens_per_s:.1f} finish_reason={s.finish_reason}"
        )
