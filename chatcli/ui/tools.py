"""Tool calls on the screen: what the model asks to run, the question, what came back.

Contract: `call_text(name, arguments)` is a call as one line (`add(a=2, b=3)`);
`asker(ui)` is the consent question for `chatcli.tools.runner.Consent` where stdin and
stderr are terminals (None elsewhere: nothing runs unasked): "Run add(a=2, b=3)?
[y/n/a]" on stderr, a line read from stdin ("a": always this tool; end of input: no;
Ctrl-C goes to the caller, on a line of its own).
`show_record(ui, record)` says on stderr what a call gave, or why it did not run.
`decision_line(found)` is the candidates' view of the choice (a call or words, which
tool) in one line. `hide_calls(events)` passes an answer's events on with a call's text
left out (the answer is shown once it is clearly text, whole from its first character).

Knows nothing about models or running tools.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import replace
from typing import Any

from chatcli.ui.console import UI

CALL_START = "<tool_call>"


def call_text(name: str, arguments: dict[str, Any]) -> str:
    args = ", ".join(f"{k}={json.dumps(v, ensure_ascii=False)}" for k, v in arguments.items())
    return f"{name}({args})"


def asker(ui: UI) -> Callable[[str, dict[str, Any]], str] | None:
    if not (ui.err_tty and sys.stdin.isatty()):
        return None

    def ask(name: str, arguments: dict[str, Any]) -> str:
        while True:
            ui.err.write(f"Run {call_text(name, arguments)}? [y]es, [n]o, [a]lways {name}: ")
            ui.err.flush()
            try:
                line = sys.stdin.readline()
            except KeyboardInterrupt:  # (the consent reads Ctrl-C as no)
                ui.err.write("\n")
                raise
            if not line:
                return "n"
            answer = line.strip().lower()[:1]
            if answer in ("y", "n", "a"):
                return answer

    return ask


def show_record(ui: UI, record: Any) -> None:
    call = call_text(record.name, record.arguments)
    if not record.allowed:
        ui.notify(f"not running {call}: tools run when you allow them (--allow-tools, or y "
                  "at the question on a terminal)")
    elif record.error is not None:
        ui.notify(f"{call} failed ({record.seconds:.2f} s): {record.error}")
    else:
        flat = " ".join(record.result.split())  # one line: the answer follows it
        shown = flat if len(flat) <= 200 else flat[:200] + "…"
        ui.notify(f"{call} → {shown} ({record.seconds:.2f} s)")


def hide_calls(events: Iterable[Any]) -> Iterator[Any]:
    held: list[Any] = []
    text = ""
    state = "?"  # "?": undecided, "call": hidden, "text": shown
    for event in events:
        if state == "?":
            held.append(event)
            text += event.text
            if text.startswith(CALL_START):
                state = "call"
            elif not CALL_START.startswith(text) or event.finish_reason is not None:
                state = "text"  # (an answer that ended undecided is text)
            else:
                continue
            for e in held:
                yield replace(e, text="") if state == "call" else e
            held = []
            continue
        yield replace(event, text="") if state == "call" else event


def decision_line(found: dict[str, Any]) -> str:
    """`chatcli.tools.calls.decision` as one line."""
    tools = found["tools"]
    named = (" (" + ", ".join(f"{n} {p:.0%}" for n, p in sorted(
        tools.items(), key=lambda item: -item[1])) + ")") if tools else ""
    if found["call_below"] is not None:
        return (f"decision at step 1: call a tool under {found['call_below']:.0%} (not among "
                "the candidates), answer in words the rest")
    return (f"decision at step 1: call a tool {found['call']:.0%}{named}, answer in words "
            f"{found['words']:.0%}")
