"""The chat loop: read an entry, run a slash command or answer it, repeat.

Contract: `run(ctx, reader)` first refuses settings that leave no room for any
answer (`check_room`), then reads entries until end of input or `/exit`. A plain
entry becomes a user message (saved before the answer starts) and is answered
with streaming output; an entry starting with "//" is a message starting with
"/" (one slash dropped), any other "/" entry a slash command. A turn that ends
in an error is printed and counted in `ctx.failed`; the chat goes on. Ctrl-C
while the model answers stops only the answer: the partial reply stays in the
history marked as interrupted, and the prompt comes back; so does an answer a
remote server stopped sending (its error is printed and the chat goes on).
An answer the token limit cut short is followed, on a terminal, by a dim line saying
so. Ctrl-C at the prompt clears the line. After /edit the input line holds the
message being edited: the entry replaces it (a new version, answered; the old
one stays a branch), while an empty entry, Ctrl-C or a slash command leaves it
as it was. A warning line is printed whenever packing drops earlier exchanges.
After an answer, a missing compiled decode step is built in the background
(`chatcli.autocompile.after_answer`). Knows nothing about how tokens are chosen.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from chatcli.chat.commands import ChatContext, dispatch
from chatcli.chat.session import ChatSession
from chatcli.conversation import Message
from chatcli.errors import BackendGone, ChatcliError, ContextOverflowError
from chatcli.interrupts import ended_by_signal
from chatcli.ui.answers import stopped_note, stream_answer
from chatcli.ui.input import LineReader

ESCAPE = "//"  # an entry starting with it is a message starting with "/"


def load_here(ctx: ChatContext, gone: BackendGone | None) -> bool:
    """The session's model loaded in this process, what answered being gone (`gone`: the
    error, said first); whether it worked."""
    alias = ctx.session.backend.spec.alias
    if ctx.load_here is None:
        if gone is not None:
            ctx.failed += 1
            ctx.ui.error(gone.message, gone.hint)
        return False
    ctx.ui.warn(f"{gone.message + ': ' if gone is not None else ''}loading {alias} in this "
                "process")
    try:
        # the same model, loaded here: the settings stay as resolved
        ctx.session.use_model(ctx.load_here(alias), ctx.session.settings)
    except ChatcliError as exc:
        ctx.failed += 1
        ctx.ui.error(exc.message, exc.hint)
        return False
    return True


def answer(ctx: ChatContext, start: Callable[[], tuple[Any, int]] | None = None,
           follow_tools: bool = True) -> None:
    """Answer the last user message (`start`: how the answer's Generation begins, with the
    exchanges newly dropped; default: `session.start_reply`)."""
    session, ui = ctx.session, ctx.ui
    try:
        gen, newly_dropped = (start or session.start_reply)()
    except BackendGone as exc:  # gone since the last answer: this once, in-process
        if start is None and load_here(ctx, exc):
            answer(ctx)
        return
    except ChatcliError as exc:
        ctx.failed += 1
        ui.error(exc.message, exc.hint)
        return
    except KeyboardInterrupt as exc:
        session.backend.invalidate()
        if ended_by_signal(exc):
            raise
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
    interrupted = False
    failure: ChatcliError | None = None
    ended: KeyboardInterrupt | None = None  # SIGTERM/SIGHUP: save, then leave
    events: list[Any] = []
    try:
        shown: Any = gen
        if ctx.tools:  # a call's text is not the answer: what it does is said instead
            from chatcli.ui.tools import hide_calls

            shown = hide_calls(gen)
        # closes its writer whatever happens
        stream_answer(ui, shown, events, thinking=ctx.show_thinking,
                      drafts=gen.settings.common.speculate is not None)
    except KeyboardInterrupt as exc:
        interrupted = True
        ended = exc if ended_by_signal(exc) else None
    except ChatcliError as exc:  # a remote server stopped answering
        interrupted, failure = True, exc
    session.finish_reply(gen, interrupted)
    if ended is not None:
        raise ended
    if gen.budget_hit:
        ui.notify(f"thinking reached its budget of {gen.settings.common.thinking_budget} "
                  "tokens: chatcli closed it, and the model answered")
    elif not ctx.show_thinking and gen.thinking_tokens and ui.out_tty:
        ui.aside(f"(thought for {gen.thinking_tokens} tokens: --hide-thinking)")
    if gen.stats.speculation is not None and ui.out_tty:
        from chatcli.ui.answers import speculation_note

        ui.aside(speculation_note(gen.stats.speculation))
    note = stopped_note(gen.stats, gen.settings.common.max_new_tokens, session.room(),
                        "-n, or /set max_new_tokens N")
    if note and not interrupted and not (gen.constraint is not None
                                         and gen.constraint_satisfied is False):
        ui.aside(note)  # on a terminal: the answer ends mid-sentence for a reason
    if session.candidates is not None:
        from chatcli.ui.candidates import show_table

        show_table(ui, events, session.token_text)
    if failure is not None:
        ctx.failed += 1
        ui.error(failure.message, failure.hint)
        if isinstance(failure, BackendGone):
            load_here(ctx, None)
    elif interrupted:
        ui.warn("answer interrupted; the partial reply is kept in the history")
    elif gen.constraint is not None and gen.constraint_satisfied is False:
        from chatcli.constraints.spec import incomplete

        message, hint = incomplete(gen.constraint, gen.stats.finish_reason,
                                   gen.stats.completion_tokens)
        ui.warn(f"{message}; {hint}")
    if failure is None and not interrupted:
        from chatcli.autocompile import after_answer

        after_answer(session.backend)  # the compiled step, built in the background if missing
        if ctx.tools and follow_tools:
            follow(ctx, gen)


def follow(ctx: ChatContext, gen: Any) -> None:
    """An answer that calls a tool: the call loop (`chatcli.tools.loop.loop`), each
    answer shown as any other; then user turns start from the tools' shape again."""
    from chatcli.tools.loop import loop

    assert ctx.tools is not None
    try:
        loop(ctx.ui, ctx.session, gen, ctx.tools, ctx.consent, *ctx.tool_limits,
             lambda g: answer(ctx, start=lambda: (g, 0), follow_tools=False))
    except ChatcliError as exc:
        ctx.failed += 1
        ctx.ui.error(exc.message, exc.hint)
    finally:
        ctx.session.constraint = ctx.tool_constraint


def check_room(session: ChatSession) -> None:
    """Refuse a session in which no message could ever be answered.

    The smallest prompt is the system prompt with an empty user message; when it
    does not fit the budget (context window minus max_new_tokens), every turn would fail.
    """
    window, new = session.backend.context_window, session.max_new_tokens
    head = [m for m in session.conversation.messages() if m.role == "system"]
    smallest = len(session.render([*head, Message("user", "")]))
    if smallest + new <= window:
        return
    what = "an empty message with the chat template" + (" and system prompt" if head else "")
    if smallest < window:
        raise ContextOverflowError(
            f"no message can be answered: the context window of {window} tokens holds {what} "
            f"({smallest} tokens) but not {new} new tokens",
            f"lower -n (--max-new-tokens) to at most {window - smallest}",
        )
    raise ContextOverflowError(
        f"no message can be answered: {what} needs {smallest} tokens, more than the context "
        f"window of {window} tokens",
        "raise --context-window" + (", shorten the system prompt (-s)" if head else "")
        + " or choose a model with a larger context window (-m)",
    )


def _unedited(ctx: ChatContext) -> None:
    """An /edit left without a new version."""
    if ctx.editing is not None:
        ctx.ui.notify(f"message {ctx.editing + 1} is unchanged")
        ctx.editing = None


def run(ctx: ChatContext, reader: LineReader) -> None:
    from chatcli.ui.input import PlainReader

    check_room(ctx.session)
    ctx.interactive = not isinstance(reader, PlainReader)
    while True:
        draft, ctx.draft = ctx.draft, ""
        try:
            entry = reader.read(draft) if draft else reader.read()
        except KeyboardInterrupt as exc:
            if ended_by_signal(exc):
                raise
            _unedited(ctx)
            continue  # Ctrl-C at the prompt: prompt_toolkit already cleared the line
        if entry is None:
            return
        if entry.startswith(ESCAPE):
            entry = entry[1:]  # "//text" sends "/text"
        elif entry.startswith("/"):
            _unedited(ctx)
            if dispatch(entry, ctx):
                return
            continue
        if ctx.editing is not None:
            editing, ctx.editing = ctx.editing, None
            if not entry.strip():
                ctx.ui.notify(f"message {editing + 1} is unchanged")
                continue
            try:
                ctx.session.edit(editing, entry, list(ctx.pending))
            except ChatcliError as exc:
                ctx.ui.error(exc.message, exc.hint)
                continue
            ctx.pending.clear()
            answer(ctx)
            continue
        if not entry.strip() and not ctx.pending:
            continue
        ctx.branch_at = None
        if ctx.pending:
            from chatcli.attachments import describe, render

            ctx.session.add_user(render(ctx.pending, entry), describe(ctx.pending),
                                 pinned=ctx.pin_pending)
            ctx.pending.clear()
            ctx.pin_pending = False
        else:
            ctx.session.add_user(entry)
        answer(ctx)
