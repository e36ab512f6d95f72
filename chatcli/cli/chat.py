"""`chatcli chat`: an interactive (or piped) multi-turn conversation.

Wiring only: parses options, opens the history store and the model, builds a
`ChatSession` and runs the REPL. A chat needs a chat template: a model without one is
refused once it is open (`ask --raw` completes text with it), and a raw completion
saved by `ask --raw` is not continued as a chat (refused before the model loads).
Knows nothing about how tokens are chosen.
"""

from __future__ import annotations

from typing import Any

import typer

from chatcli.cli.options import (
    BaseUrlOpt,
    ChoiceOpt,
    ContextWindowOpt,
    ContinueOpt,
    ConversationOpt,
    DeviceOpt,
    DtypeOpt,
    ExplainContextOpt,
    FileOpt,
    GrammarOpt,
    HideThinkingOpt,
    JsonObjectOpt,
    MaxBytesOpt,
    MaxFilesOpt,
    ModelChoice,
    ModelOpt,
    ModelsFileOpt,
    NoServerOpt,
    NoTruncateOpt,
    PinOpt,
    QuantizeOpt,
    RegexOpt,
    RuntimeChoice,
    SchemaOpt,
    ShowThinkingOpt,
    SystemOpt,
    ThinkOpt,
    ThreadsOpt,
    ToolFlags,
    TruncateFilesOpt,
    constraint_of,
    decoding_options,
    tool_options,
)
from chatcli.ui.console import UI


@decoding_options()
@tool_options
def chat(
    model: ModelOpt = None,
    base_url: BaseUrlOpt = None,
    system: SystemOpt = None,
    cont: ContinueOpt = False,
    conversation: ConversationOpt = None,
    no_truncate: NoTruncateOpt = False,
    context_window: ContextWindowOpt = None,
    explain_context: ExplainContextOpt = False,
    decoding: dict[str, Any] | None = None,
    schema: SchemaOpt = None,
    json_object: JsonObjectOpt = False,
    regex: RegexOpt = None,
    grammar: GrammarOpt = None,
    choice: ChoiceOpt = None,
    file: FileOpt = None,
    max_files: MaxFilesOpt = 50,
    max_bytes: MaxBytesOpt = 1_000_000,
    truncate_files: TruncateFilesOpt = False,
    pin: PinOpt = False,
    models_file: ModelsFileOpt = None,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    quantize: QuantizeOpt = None,
    threads: ThreadsOpt = None,
    no_server: NoServerOpt = False,
    think: ThinkOpt = None,
    hide_thinking: HideThinkingOpt = False,
    show_thinking: ShowThinkingOpt = False,
    tools: ToolFlags | None = None,
) -> None:
    """Chat with a model; piped stdin is read one message per line."""
    from chatcli import paths
    from chatcli.chat.commands import ChatContext
    from chatcli.chat.recorder import open_history
    from chatcli.chat.repl import answer, run
    from chatcli.chat.session import ChatSession
    from chatcli.cli.common import setup
    from chatcli.store import history_path
    from chatcli.ui.answers import show_conversation
    from chatcli.ui.input import PromptReader, make_reader

    ui = UI()
    if file and "-" in file:
        from chatcli.errors import UsageError

        raise UsageError("chat reads your messages from stdin, so -f - cannot take it",
                         "attach files by path, or pipe the file to chatcli ask -f -")
    constraint = constraint_of(schema=schema, json_object=json_object, regex=regex,
                               grammar=grammar, choice=choice)
    if hide_thinking and show_thinking:
        from chatcli.errors import UsageError

        raise UsageError("--hide-thinking and --show-thinking contradict each other",
                         "use one of them")
    from chatcli.cli import tool_loop

    flags = tools or ToolFlags()
    toolset = tool_loop.setup(flags, model, base_url, models_file, constraint)
    if toolset:  # the template shows them to the model; every call it writes is right
        constraint = toolset.constraint
    files: list[Any] = []  # gathered before anything loads: a refusal comes at once
    if file:
        from chatcli.cli.common import gather_files

        files = gather_files(ui, list(file), max_files, max_bytes, truncate_files).attachments
    store: Any = None
    conv_id, conv, message_ids = None, None, None

    def resume() -> str | None:
        """The alias: -m, else the model of the conversation continued (read here)."""
        nonlocal store, conv_id, conv, message_ids
        # A history that cannot be written now is read only; the chat goes on in memory.
        store = open_history(ui.warn, need_read=conversation is not None or cont)
        if store is None or (conversation is None and not cont):
            return model
        info = store.info(conversation) if conversation is not None else store.latest()
        if info is None:
            ui.warn("no saved conversation yet; starting a new one")
            return model
        info, conv, message_ids = store.load(info.id)
        conv_id = info.id
        if store.raw(conv_id):
            from chatcli.errors import UsageError

            raise UsageError(f"conversation {conv_id} is a raw text completion (ask --raw), "
                             "not a chat", "continue its text with chatcli ask -c TEXT" if cont
                             and conversation is None else f"chatcli history show {conv_id} "
                             "prints it")
        return model or info.model

    prep = setup(ui, ModelChoice(model, base_url, models_file, context_window, think,
                                 toolset.listing if toolset else None),
                 RuntimeChoice(device, dtype, threads, quantize, no_server), decoding,
                 alias=resume,
                 internals="--explain-context" if explain_context else None,
                 constraint=constraint)
    backend = prep.open()
    session = ChatSession(
        backend, prep.strategies, prep.decoding(), conv, store=store,
        conversation_id=conv_id, message_ids=message_ids, truncate=not no_truncate,
        warn=ui.warn, history_path=history_path(), settings=prep.settings,
    )
    if system is not None:
        session.set_system(system)
    session.explain = explain_context
    if constraint is not None:
        session.set_constraint(constraint)
    chat_ctx = ChatContext(session, ui, answer=lambda start=None: answer(chat_ctx, start),
                           load_model=prep.open_alias, load_here=prep.open_here,
                           caps=(max_files, max_bytes, truncate_files),  # /read, /glob too
                           show_thinking=not hide_thinking and (ui.out_tty or show_thinking))
    if toolset:
        def retool(listing: str) -> Any:
            import dataclasses

            prep.choice = dataclasses.replace(prep.choice, tools=listing)
            return prep.open_alias(session.backend.spec.alias)

        chat_ctx.retool = retool
        chat_ctx.tools, chat_ctx.tool_constraint = toolset.tools, constraint
        chat_ctx.consent = toolset.consent(ui)
        chat_ctx.tool_limits = (flags.max_calls, flags.timeout)
    if file:  # attached to the first message sent
        chat_ctx.pending.extend(files)
        chat_ctx.pin_pending = pin
    if conv_id is not None:
        ui.notify(f"continuing conversation {conv_id} ({len(session.conversation.turns)} "
                  "messages)")
        from chatcli.attachments import name_files

        show_conversation(ui, session.conversation, name_files)
    elif ui.out_tty:
        ui.notify(f"{prep.spec.alias}, {session.settings.strategy} decoding; /help for commands, "
                  "Ctrl-D to leave")
    reader = make_reader(paths.data_dir() / "input_history")
    try:
        run(chat_ctx, reader)
    finally:
        session.close_history()  # what could not be saved goes to a recovery file
    if chat_ctx.failed and not isinstance(reader, PromptReader):
        raise typer.Exit(1)  # piped: a turn failed (its error is printed above)

