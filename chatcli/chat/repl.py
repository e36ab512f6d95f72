"""The chat loop: read an entry, run a slash command or answer it, repeat.

Contract: `run(ctx, reader)` reads entries until end of input or `/exit`. A
plain entry becomes a user message (saved before the answer starts) and is
answered with streaming output. Ctrl-C while the model answers stops only the
answer: the partial reply stays in the history marked as interrupted, and the
prompt comes back; so does an answer a remote server stopped sending (its
error is printed and the chat goes on). Ctrl-C at the prompt clears the line. A warning line is
printed whenever packing drops earlier exchanges. Knows nothing about how
tokens are chosen.
"""

from __future__ import annotations

from chatcli.chat.commands import ChatContext, dispatch
from chatcli.errors import ChatcliError
from chatcli.ui.input import LineReader


def answer(ctx: ChatContext) -> None:
    session, ui = ctx.session, ctx.ui
    try:
        gen, newly_dropped = session.start_reply()
    except ChatcliError as exc:
        ui.error(exc.message, exc.hint)
        return
    except KeyboardInterrupt:
        session.cache.invalidate()
        ui.warn("answer interrupted before it began; your message is kept")
        return
    packed = session.last_packed
    assert packed is not None
    if newly_dropped:
        ui.warn(
            f"context window full: dropped the oldest {newly_dropped} exchange(s) "
            f"({packed.dropped_exchanges} dropped in all; prompt {packed.tokens} of "
            f"{packed.budget} tokens); /context shows what the model sees"
        )
    if packed.shortened:
        ui.warn("your message was shortened in the middle to fit the context window")
    if session.packing_note:
        ui.warn(session.packing_note)
    writer = ui.answer_writer()
    interrupted = False
    failure: ChatcliError | None = None
    events = []
    try:
        for event in gen:
            events.append(event)
            writer.write(event.text)
    except KeyboardInterrupt:
        interrupted = True
    except ChatcliError as exc:  # a remote server stopped answering
        interrupted, failure = True, exc
    finally:
        writer.close()
    session.finish_reply(gen, interrupted)
    if session.candidates is not None:
        from chatcli.ui.candidates import show_table

        show_table(ui, events, session.token_text)
    if failure is not None:
        ui.error(failure.message, failure.hint)
    elif interrupted:
        ui.warn("answer interrupted; the partial reply is kept in the history")


def run(ctx: ChatContext, reader: LineReader) -> None:
    while True:
        try:
            entry = reader.read()
        except KeyboardInterrupt:
            continue  # Ctrl-C at the prompt: prompt_toolkit already cleared the line
        if entry is None:
            return
        if entry.startswith("/"):
            if dispatch(entry, ctx):
                return
            continue
        if not entry.strip():
            continue
        ctx.session.add_user(entry)
        answer(ctx)
