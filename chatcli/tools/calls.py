"""The call a model writes, what teaches it to, and the constraint that keeps it right.

Contract: a call is `<tool_call>`, a newline, one JSON object `{"name": NAME,
"arguments": {...}}`, a newline and `</tool_call>` (the format of Qwen2.5/3's and
SmolLM3's templates, the one most small models have seen); a model answers with either
a call or text. `instructions(tools)` (`instructions_of` their {name, description,
parameters}) is chatcli's documented system-prompt text that teaches it to a model
whose template has no tools of its own. `constraint(tools,
choice)` is a Lark grammar (`chatcli.constraints`) that every strategy obeys: with
`choice` "auto" the answer is a call or text that does not start with `<`; "required"
only a call; "none" only text. Every call it lets through names one of `tools`, with
arguments that validate against that tool's schema (llguidance's `%json`).
`read_call(text)` gives (name, arguments) of an answer that is a call, else None.
`with_tools(template, tools)` is a chat template that shows `tools` to the model: the
template's own rendering where it has one in this format (`own_format`: exactly as
passing `tools=` to `apply_chat_template`), else `instructions` joined to the system
message (one made where there is none) as the prompt is rendered; `jinja(value)` writes
JSON data as a Jinja literal.
`response(name, result, error)` is the message that brings the result back,
`read_response(text)` reads one. `decision(steps, token_text, names)` is what the
candidates say of the choice: a call or words, and which tool.

Knows nothing about running tools, models or the terminal.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from chatcli.constraints.spec import Constraint

OPEN, CLOSE = "<tool_call>\n", "\n</tool_call>"
CHOICES = ("auto", "required", "none")


def _call_schema(tools: Mapping[str, Any]) -> dict[str, Any]:
    # One spelling of the JSON (", " and ": " as json.dumps and the templates write it, no
    # other white space): a small model cannot wander off into spaces between the keys.
    return {"x-guidance": {"whitespace_flexible": False, "item_separator": ", ",
                           "key_separator": ": "}, "oneOf": [
        {"type": "object", "properties": {"name": {"const": t.name}, "arguments": t.parameters},
         "required": ["name", "arguments"], "additionalProperties": False}
        for t in tools.values()]}


def instructions(tools: Mapping[str, Any]) -> str:
    """How to call `tools`, for the system prompt."""
    return instructions_of([{"name": t.name, "description": t.description,
                             "parameters": t.parameters} for t in tools.values()])


def instructions_of(functions: list[dict[str, Any]]) -> str:
    """`instructions` of the functions' {name, description, parameters}."""
    listed = "\n".join(json.dumps(f, ensure_ascii=False) for f in functions)
    return ("You can call functions. To call one, reply with only this:\n"
            f"{OPEN}{{\"name\": \"FUNCTION\", \"arguments\": {{...}}}}{CLOSE}\n"
            "Its result comes back in a <tool_response> message; then answer the user. "
            "When no function helps, answer the user directly.\n"
            f"Functions:\n{listed}")


def jinja(value: Any) -> str:
    """`value` (JSON data) as a Jinja literal that evaluates to the same value."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"{jinja(k)}: {jinja(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(jinja(v) for v in value) + "]"
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    return repr(value)


def own_format(template: str) -> bool:
    """Whether a chat template renders tools itself, in the call format chatcli reads
    (`tools` given to it, `<tool_call>` its call tag: Qwen2.5/3's, Hermes')."""
    return "tools" in template and OPEN.strip() in template


def with_tools(template: str, tools: list[dict[str, Any]]) -> str:
    """`template` rendering as if `tools=` (their OpenAI form) were passed to it, where it
    renders tools itself (`own_format`); else with chatcli's instructions joined to the
    system message (one is made first where there is none)."""
    if own_format(template):
        return f"{{%- set tools = {jinja(tools)} -%}}" + template
    text = instructions_of([t["function"] for t in tools])
    return (f"{{%- set chatcli_tools = {jinja(text)} -%}}"
            "{%- if messages and messages[0]['role'] == 'system' -%}"
            "{%- set messages = [{'role': 'system', 'content': messages[0]['content'] + "
            "'\n\n' + chatcli_tools}] + messages[1:] -%}"
            "{%- else -%}"
            "{%- set messages = [{'role': 'system', 'content': chatcli_tools}] + messages -%}"
            "{%- endif -%}" + template)


def constraint(tools: Mapping[str, Any], choice: str = "auto") -> Constraint:
    """The answer's shape with `tools` (see the module)."""
    call = (f'call: "{json.dumps(OPEN)[1:-1]}" body "{json.dumps(CLOSE)[1:-1]}"\n'
            f"body: %json {json.dumps(_call_schema(tools))}\n")
    text = "text: TEXT\nTEXT: /[^<][\\s\\S]*/\n"
    start = {"auto": "start: call | text\n", "required": "start: call\n",
             "none": "start: text\n"}[choice]
    grammar = start + (call if choice != "none" else "") + (text if choice != "required"
                                                            else "")
    return Constraint("grammar", grammar, "lark", f"--tool ({choice})")


def read_call(text: str) -> tuple[str, dict[str, Any]] | None:
    """(name, arguments) of an answer that is a call, else None."""
    body = text.strip()
    if not body.startswith(OPEN.strip()) or not body.endswith(CLOSE.strip()):
        return None
    try:
        call = json.loads(body[len(OPEN.strip()):-len(CLOSE.strip())])
    except ValueError:
        return None
    if not isinstance(call, dict) or not isinstance(call.get("name"), str) \
            or not isinstance(call.get("arguments"), dict):
        return None
    return call["name"], call["arguments"]


def read_response(text: str) -> dict[str, Any] | None:
    """The {name, result | error} of a message that brings a call's result back, else
    None."""
    body = text.strip()
    start, end = "<tool_response>", "</tool_response>"
    if not body.startswith(start) or not body.endswith(end):
        return None
    try:
        value = json.loads(body[len(start):-len(end)])
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def response(name: str, result: str | None, error: str | None) -> str:
    """The message that brings a call's result (or why there is none) back."""
    body = {"name": name, **({"error": error} if error is not None else {"result": result})}
    return f"<tool_response>\n{json.dumps(body, ensure_ascii=False)}\n</tool_response>"


def decision(steps: list[Any], token_text: Any, names: list[str]) -> dict[str, Any] | None:
    """How likely the model was to call a tool rather than answer in words, at its first
    step, and each tool at the step that names it (where the answer is a call): from
    `steps` (the answer's events, with the candidates they weighed; the distribution
    the strategy drew from) and `token_text(id)`. None without candidates."""
    first = steps[0].candidates if steps else None
    if first is None:
        return None
    calls = [p for t, p in first.drawn_from if token_text(t).startswith("<")]
    # Only the top-K are known: where no call token is among them, a call was less likely
    # than the least of them ("call_below").
    below = None if calls or not first.drawn_from else min(p for _, p in first.drawn_from)
    call = sum(calls)
    out: dict[str, Any] = {"call": call, "call_below": below, "words": 1.0 - call,
                           "tools": None}
    prefix, text = OPEN + '{"name": "', ""
    for step in steps:
        if text == prefix and step.candidates is not None:
            out["tools"] = {n: sum(p for t, p in step.candidates.drawn_from
                                   if (s := token_text(t)) and (n + '"').startswith(s))
                            for n in names}
            break
        text += token_text(step.token_id)
        if not prefix.startswith(text):
            break
    return out
