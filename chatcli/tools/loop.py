"""The call loop: an answer that calls a tool, followed until the model answers in words.

Contract: `loop(ui, session, gen, tools, consent, max_calls, timeout, answer)` follows
`gen` (a finished answer of the `chatcli.chat.session.ChatSession`) while it is a call of
one of `tools`: asks `consent`, runs the call (`chatcli.tools.runner.run`), says on
stderr what came back, saves the result as the next message (`<tool_response>`; a
result cut to what the context window has room for), and has the model answer again,
until it answers in words, has made `max_calls` calls, or repeats a call it made (then
it may only answer in words; a repeated call is not run again: its result is known).
Each answer is shown and saved by the caller's `answer(gen)`. Returns the last answer
and the `CallRecord`s.

Knows nothing about the terminal beyond `chatcli.ui.tools`, nor about commands.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

OUTPUT_CAP = 16_000  # characters of one call's result the model reads, at most


def loop(ui: Any, session: Any, gen: Any, tools: dict[str, Any], consent: Any,
         max_calls: int, timeout: float, answer: Callable[[Any], None]) -> tuple[Any, list[Any]]:
    """The answers after `gen` (see the module): the last one, and the call records."""
    from chatcli.tools.calls import constraint, read_call, response
    from chatcli.tools.runner import CallRecord, run
    from chatcli.ui.tools import call_text, show_record

    records: list[CallRecord] = []
    while (call := read_call(gen.text)) is not None and call[0] in tools:
        name, arguments = call
        again = next((r for r in records if (r.name, r.arguments) == call), None)
        if again is not None:  # a loop: the result is known; the model answers in words now
            record = CallRecord(name, arguments, again.allowed, again.result, again.error)
            known = "its result is known" if again.allowed else "it was not allowed"
            ui.notify(f"{call_text(name, arguments)} again: {known}; the model answers now")
        elif consent(name, arguments):
            record = run(tools[name], arguments, timeout, _cap(session, gen))
            show_record(ui, record)
        else:
            record = CallRecord(name, arguments, False, error="the user did not allow this call")
            show_record(ui, record)
        records.append(record)
        session.add_user(response(name, record.result, record.error))
        last = again is not None or len(records) >= max_calls
        session.constraint = constraint(tools, "none" if last else "auto")
        gen, _ = session.start_reply()
        answer(gen)
    return gen, records


def _cap(session: Any, gen: Any) -> int:
    """The characters of a result that leave room for the next answer: at most
    `OUTPUT_CAP`, and half the tokens the window has left (a character is at least a
    token's worth in the worst case; JSON escapes may double it)."""
    used = len(session.last_packed.ids) if session.last_packed is not None else 0
    room = session.budget - used - len(gen.token_ids) - 64
    return max(100, min(OUTPUT_CAP, room // 2))
