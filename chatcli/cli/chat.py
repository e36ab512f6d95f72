"""`chatcli chat`: an interactive (or piped) multi-turn conversation.

Wiring only: parses options, opens the history store and the model, builds a
`ChatSession` and runs the REPL. Knows nothing about how tokens are chosen.
"""

from __future__ import annotations

import dataclasses

import typer

from chatcli.cli.options import (
    BaseUrlOpt,
    ContextWindowOpt,
    ContinueOpt,
    ConversationOpt,
    DeviceOpt,
    DtypeOpt,
    ExplainContextOpt,
    FrequencyPenaltyOpt,
    LengthPenaltyOpt,
    MaxNewTokensOpt,
    MinPOpt,
    ModelOpt,
    ModelsFileOpt,
    NoRepeatNgramOpt,
    NoTruncateOpt,
    NumBeamsOpt,
    OptionOpt,
    PresencePenaltyOpt,
    QuantizeOpt,
    RepetitionPenaltyOpt,
    SeedOpt,
    StopOpt,
    StrategyOpt,
    SystemOpt,
    TemperatureOpt,
    ThreadsOpt,
    TopKOpt,
    TopPOpt,
    TypicalPOpt,
    decoding_request,
)
from chatcli.ui.console import UI


def chat(
    ctx: typer.Context,
    model: ModelOpt = None,
    base_url: BaseUrlOpt = None,
    system: SystemOpt = None,
    cont: ContinueOpt = False,
    conversation: ConversationOpt = None,
    no_truncate: NoTruncateOpt = False,
    context_window: ContextWindowOpt = None,
    explain_context: ExplainContextOpt = False,
    max_new_tokens: MaxNewTokensOpt = None,
    strategy: StrategyOpt = None,
    temperature: TemperatureOpt = None,
    top_k: TopKOpt = None,
    top_p: TopPOpt = None,
    min_p: MinPOpt = None,
    typical_p: TypicalPOpt = None,
    num_beams: NumBeamsOpt = None,
    length_penalty: LengthPenaltyOpt = None,
    repetition_penalty: RepetitionPenaltyOpt = None,
    frequency_penalty: FrequencyPenaltyOpt = None,
    presence_penalty: PresencePenaltyOpt = None,
    no_repeat_ngram_size: NoRepeatNgramOpt = None,
    seed: SeedOpt = None,
    stop: StopOpt = None,
    option: OptionOpt = None,
    models_file: ModelsFileOpt = None,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    quantize: QuantizeOpt = None,
    threads: ThreadsOpt = None,
) -> None:
    """Chat with a model; piped stdin is read one message per line."""
    from chatcli import paths
    from chatcli.chat.commands import ChatContext
    from chatcli.chat.recorder import open_history
    from chatcli.chat.repl import answer, run
    from chatcli.chat.session import ChatSession, DecodingRequest
    from chatcli.cli.common import (
        check_remote,
        load_strategies,
        open_model,
        refuse_remote_internals,
        resolve_spec,
        runtime_for,
    )
    from chatcli.decoding.settings import resolve_settings
    from chatcli.registry import load_registry
    from chatcli.store import history_path
    from chatcli.ui.answers import show_conversation
    from chatcli.ui.input import PromptReader, make_reader

    ui = UI()
    strategies = load_strategies(ui)
    chosen, flags, options = decoding_request(ctx.params)
    registry = load_registry(models_file)
    # A history that cannot be written now is read only; the chat goes on in memory.
    store = open_history(ui.warn, need_read=conversation is not None or cont)
    conv_id, conv, message_ids, alias = None, None, None, model
    if store is not None and (conversation is not None or cont):
        info = store.info(conversation) if conversation is not None else store.latest()
        if info is None:
            ui.warn("no saved conversation yet; starting a new one")
        else:
            info, conv, message_ids = store.load(info.id)
            conv_id, alias = info.id, model or info.model

    def spec_for(name: str | None):  # type: ignore[no-untyped-def]
        spec = resolve_spec(registry, name, base_url)
        return dataclasses.replace(spec, context_window=context_window) if context_window else spec

    def model_for(name: str | None):  # type: ignore[no-untyped-def]
        spec = spec_for(name)
        return open_model(spec, registry, ui, runtime_for(spec, device, dtype, threads, quantize))

    spec = spec_for(alias)
    early = resolve_settings(strategies, strategy=chosen, flags=flags, options=options,
                             alias_defaults=spec.defaults)  # fail fast on bad flags
    refuse_remote_internals(spec, "--explain-context" if explain_context else None)
    check_remote(spec, early)
    loaded = model_for(alias)
    spec = loaded.spec
    session = ChatSession(
        loaded, strategies, DecodingRequest(chosen, flags, options), conv, store=store,
        conversation_id=conv_id, message_ids=message_ids, truncate=not no_truncate,
        warn=ui.warn, history_path=history_path(),
    )
    if system is not None:
        session.set_system(system)
    session.explain = explain_context
    chat_ctx = ChatContext(session, ui, answer=lambda: answer(chat_ctx),
                           load_model=model_for)
    if conv_id is not None:
        ui.notify(f"continuing conversation {conv_id} ({len(session.conversation.turns)} "
                  "messages)")
        show_conversation(ui, session.conversation)
    elif ui.out_tty:
        ui.notify(f"{spec.alias}, {session.settings.strategy} decoding; /help for commands, "
                  "Ctrl-D to leave")
    reader = make_reader(paths.data_dir() / "input_history")
    try:
        run(chat_ctx, reader)
    finally:
        session.close_history()  # what could not be saved goes to a recovery file
    if chat_ctx.failed and not isinstance(reader, PromptReader):
        raise typer.Exit(1)  # piped: a turn failed (its error is printed above)

