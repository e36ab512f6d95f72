"""Every shared CLI option, declared once: as an `Annotated` alias, or from its decoding
parameter's declaration.

Commands reuse these aliases so that a flag has one spelling, one help text and
one default everywhere. The decoding options are not written here: `decoding_options`
gives a command one option per parameter that declares a flag (the common ones, then
the built-in strategies', from `chatcli.decoding.settings.command_line_parameters`),
with the flag names, help, valid range and default of the declaration, in the
"Decoding" help panel, in place of the command's `decoding` parameter (which then
receives their values as a dict). `decoding_request` turns that dict into (strategy,
flag values, -o options). The other option groups travel typed: `ModelChoice` (which
model), `RuntimeChoice` (how it runs), `constraint_of` (the answer's shape), each built
by the command from its own parameters, so a flag can be followed from its declaration
to its use. Knows nothing about models or
torch (the decoding declarations import no torch).
"""

from __future__ import annotations

import functools
import inspect
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, TypeVar

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
RawOpt = Annotated[
    bool, typer.Option("--raw", help="Complete the prompt as plain text: no chat template, no "
                       "system prompt (a base model; chosen by itself, with a note, for a model "
                       "without a chat template).")
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
NoServerOpt = Annotated[
    bool, typer.Option("--no-server", help="Load the model in this process even when a "
                       "chatcli server runs (chatcli serve; CHATCLI_SERVER=off does so always).")
]
_TOOLS = "Tools"
ToolOpt = Annotated[
    list[str] | None,
    typer.Option("--tool", metavar="FILE.py[:NAME]", rich_help_panel=_TOOLS, show_default=False,
                 help="Let the model call a Python file's public functions, or the one NAME "
                 "(repeatable). Their signatures and docstrings tell it what they do; every "
                 "call it makes names one of them with arguments that validate."),
]
ToolModuleOpt = Annotated[
    list[str] | None,
    typer.Option("--tool-module", metavar="MODULE:FUNCTION", rich_help_panel=_TOOLS,
                 show_default=False, help="An importable function as a tool (repeatable)."),
]
MCPOpt = Annotated[
    list[str] | None,
    typer.Option("--mcp", metavar="'CMD ARGS'", rich_help_panel=_TOOLS, show_default=False,
                 help="Start an MCP server over stdio and offer its tools (repeatable)."),
]
AllowToolsOpt = Annotated[
    bool, typer.Option("--allow-tools", rich_help_panel=_TOOLS,
                       help="Run every call without asking (needed when stdin is not a "
                       "terminal; on one, chatcli asks before each call)."),
]
AllowToolOpt = Annotated[
    list[str] | None,
    typer.Option("--allow-tool", metavar="NAME", rich_help_panel=_TOOLS, show_default=False,
                 help="Run calls of this tool without asking (repeatable)."),
]
ToolChoiceOpt = Annotated[
    str | None,
    typer.Option("--tool-choice", metavar="auto|required|none", rich_help_panel=_TOOLS,
                 show_default=False, help="auto (default): the model calls a tool or answers; "
                 "required: its first answer is a call; none: it only answers."),
]
MaxToolCallsOpt = Annotated[
    int, typer.Option("--max-tool-calls", metavar="N", rich_help_panel=_TOOLS,
                      help="Calls at most in one answer; then the model answers in words."),
]
ToolTimeoutOpt = Annotated[
    float, typer.Option("--tool-timeout", metavar="SECONDS", rich_help_panel=_TOOLS,
                        help="A call that takes longer gives the model a time-out instead."),
]
_THINKING = "Thinking"
ThinkOpt = Annotated[
    bool | None,
    typer.Option("--think/--no-think", rich_help_panel=_THINKING, show_default=False,
                 help="A reasoning model thinks before answering, or not: its chat template's "
                 "switch (enable_thinking; default: the template's own)."),
]
HideThinkingOpt = Annotated[
    bool, typer.Option("--hide-thinking", rich_help_panel=_THINKING,
                       help="Leave a reasoning model's thinking off the terminal (it is still "
                       "saved, and in --json)."),
]
ShowThinkingOpt = Annotated[
    bool, typer.Option("--show-thinking", rich_help_panel=_THINKING,
                       help="Print the thinking to stdout when it is piped too, between "
                       "<think> and </think> lines (a terminal shows it unless --hide-thinking)."),
]
QuantizeOpt = Annotated[
    str | None,
    typer.Option("--quantize", help="Weight-only quantization of the linear layers: int8, int4, "
                 "gguf (a GGUF file's own, read as stored) or none (default: the alias's; a "
                 "GGUF's is gguf, else none). Faster and smaller, slightly less exact; CPU, "
                 "native implementation.", show_default=False),
]
AliasArg = Annotated[str, typer.Argument(help="Model alias.", show_default=False)]


# -- decoding (validated by the strategies' parameter classes, not here) ---------
_D = "Decoding"


def _strategy_option() -> Any:
    from chatcli.decoding.settings import builtin_strategies

    names = ", ".join(builtin_strategies())
    return Annotated[
        str | None,
        typer.Option("--strategy", "-S", help=f"Decoding strategy: {names} or a plugin "
                     "('chatcli strategies' lists them).", show_default=False,
                     rich_help_panel=_D),
    ]

OptionOpt = Annotated[
    list[str] | None, typer.Option("--option", "-o", metavar="KEY=VALUE",
                                   help="A strategy parameter without its own flag "
                                   "(e.g. -o num_return_sequences=2).", show_default=False,
                                   rich_help_panel=_D)
]


def _flagged() -> list[Any]:
    from chatcli.decoding.settings import command_line_parameters

    return command_line_parameters()


def _help(flagged: Any) -> str:
    """An option's help, from its declaration: who takes it, what it does, its range and
    default."""
    from chatcli.decoding.base import is_list

    d = flagged.param
    who = ", ".join(flagged.owners) if flagged.owners else "Any strategy"
    text = f"{who}: {d.help}."
    details = [d.valid.text] if d.valid else []
    if is_list(d.kind):
        details.append("repeatable")
    if d.default not in (None, ()):
        shown = str(d.default).lower() if isinstance(d.default, bool) else str(d.default)
        details.append(f"default: the alias's, else {shown}")
    if details:
        more = "; ".join(details)
        text += f" {more[0].upper()}{more[1:]}."
    return text


def _annotation(flagged: Any) -> Any:
    from chatcli.decoding.base import is_list, unwrap_optional

    d = flagged.param
    kind = list[str] if is_list(d.kind) else unwrap_optional(d.kind)
    names = [d.flag, *([d.short] if d.short else [])]
    return Annotated[kind | None, typer.Option(*names, help=_help(flagged), show_default=False,
                                               rich_help_panel=_D)]


Command = TypeVar("Command", bound=Callable[..., Any])


def decoding_options(*, strategies: bool = True, strategy: bool = True,
                     option: bool = True) -> Callable[[Command], Command]:
    """Give a command its decoding options in place of its `decoding` parameter.

    The options are `--strategy/-S` (unless `strategy=False`), one per common
    parameter with a flag, one per built-in strategy parameter with a flag (unless
    `strategies=False`) and `--option/-o` (unless `option=False`). Typer reads the
    command's signature and type hints, so both are rewritten; the command receives
    `decoding`, a dict of the values given to them (None when not given).
    """

    def wrap(fn: Command) -> Command:
        added: list[tuple[str, Any]] = [("strategy", _strategy_option())] if strategy else []
        added += [(f.param.name, _annotation(f)) for f in _flagged()
                  if strategies or not f.owners]
        if option:
            added.append(("option", OptionOpt))
        names = [name for name, _ in added]
        hints = typing.get_type_hints(fn, include_extras=True)
        params: list[inspect.Parameter] = []
        for p in inspect.signature(fn).parameters.values():
            if p.name == "decoding":
                params += [inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                             default=None, annotation=a) for n, a in added]
            else:
                params.append(p.replace(annotation=hints.get(p.name, p.annotation)))
        if len(params) == len(inspect.signature(fn).parameters):
            raise TypeError(f"{fn.__name__} has no `decoding` parameter to put the options in")

        @functools.wraps(fn)
        def command(*args: Any, **kwargs: Any) -> Any:
            values = {name: kwargs.pop(name) for name in names if name in kwargs}
            return fn(*args, decoding=values, **kwargs)

        command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
        command.__annotations__ = {p.name: p.annotation for p in params}
        return typing.cast(Command, command)

    return wrap


@dataclass(frozen=True)
class ToolFlags:
    """The tool flags of ask and chat, as given (`tool_options`)."""

    tool: list[str] | None = None
    tool_module: list[str] | None = None
    mcp: list[str] | None = None
    allow_tools: bool = False
    allow_tool: list[str] | None = None
    choice: str | None = None
    max_calls: int = 8
    timeout: float = 30.0


_TOOL_FLAGS = [("tool", ToolOpt, None), ("tool_module", ToolModuleOpt, None), ("mcp", MCPOpt, None),
               ("allow_tools", AllowToolsOpt, False), ("allow_tool", AllowToolOpt, None),
               ("tool_choice", ToolChoiceOpt, None), ("max_tool_calls", MaxToolCallsOpt, 8),
               ("tool_timeout", ToolTimeoutOpt, 30.0)]


def tool_options(fn: Command) -> Command:
    """Give a command the tool flags (--tool, --tool-module, --mcp, --allow-tools,
    --allow-tool, --tool-choice, --max-tool-calls, --tool-timeout) in place of its `tools`
    parameter, which receives them as one `ToolFlags`."""
    added = [inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=d,
                               annotation=a) for n, a, d in _TOOL_FLAGS]
    hints = typing.get_type_hints(fn, include_extras=True)
    params: list[inspect.Parameter] = []
    for p in inspect.signature(fn).parameters.values():
        params += added if p.name == "tools" else [
            p.replace(annotation=hints.get(p.name, p.annotation))]

    @functools.wraps(fn)
    def command(*args: Any, **kwargs: Any) -> Any:
        values = [kwargs.pop(n, d) for n, _, d in _TOOL_FLAGS]
        return fn(*args, tools=ToolFlags(*values), **kwargs)

    command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    command.__annotations__ = {p.name: p.annotation for p in params}
    return typing.cast(Command, command)


def decoding_request(params: Mapping[str, object]) -> tuple[str | None, dict[str, object],
                                                           dict[str, str]]:
    """(strategy, flag values, -o options) from the `decoding` dict `decoding_options`
    gives a command."""
    from chatcli.errors import UsageError

    flags: dict[str, object] = {}
    for f in _flagged():
        value = params.get(f.param.name)
        if value not in (None, []):
            flags[f.param.name] = tuple(value) if isinstance(value, list) else value
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
    bool, typer.Option("--show-beams", help="With a strategy that returns several hypotheses "
                       "(beam): show them with their scores, and the step at which each pruned "
                       "beam left the search.")
]
ExplainContextOpt = Annotated[
    bool, typer.Option("--explain-context", help="Report how much of the answer's attention "
                       "went to each earlier turn (one extra forward pass).")
]

_SHAPE = "Answer shape (constrained decoding)"
SchemaOpt = Annotated[
    str | None, typer.Option("--schema", metavar="FILE|JSON|FIELDS", rich_help_panel=_SHAPE,
                             help="The answer is JSON valid against this JSON Schema: a file, "
                             "JSON text, or fields like 'name str, age int, tags list[str]'.",
                             show_default=False)
]
JsonObjectOpt = Annotated[
    bool, typer.Option("--json-object", rich_help_panel=_SHAPE,
                       help="The answer is a JSON object (any).")
]
RegexOpt = Annotated[
    str | None, typer.Option("--regex", metavar="RE", rich_help_panel=_SHAPE,
                             help="The answer matches this regular expression (Rust regex "
                             "syntax).", show_default=False)
]
GrammarOpt = Annotated[
    str | None, typer.Option("--grammar", metavar="FILE", rich_help_panel=_SHAPE,
                             help="The answer follows this grammar (Lark, or GBNF with ::= "
                             "rules).", show_default=False)
]
ChoiceOpt = Annotated[
    str | None, typer.Option("--choice", metavar="A,B,...", rich_help_panel=_SHAPE,
                             help="The answer is exactly one of these comma-separated choices.",
                             show_default=False)
]


def constraint_of(*, schema: Path | None = None, json_object: bool = False,
                  regex: str | None = None, grammar: Path | None = None,
                  choice: str | None = None) -> Any:
    """The `Constraint` the answer-shape flags ask for (None: unconstrained)."""
    if schema is None and not json_object and regex is None and grammar is None \
            and choice is None:
        return None  # (without importing the constraint specs)
    from chatcli.constraints.spec import from_options

    return from_options(schema=schema, json_object=json_object, regex=regex, grammar=grammar,
                        choice=choice)


@dataclass(frozen=True)
class ModelChoice:
    """Which model answers: `-m`, `--base-url`, `--models-file`, chat's `--context-window`."""

    model: str | None = None
    base_url: str | None = None
    models_file: Path | None = None
    context_window: int | None = None
    think: bool | None = None  # --think / --no-think (None: the template's default)
    tools: str | None = None  # --tool: the tools the template renders (JSON; None: none)


@dataclass(frozen=True)
class RuntimeChoice:
    """How a local model runs: `--device`, `--dtype`, `--threads`, `--quantize`, and
    `--no-server` (in this process even when a resident server runs)."""

    device: str = "auto"
    dtype: str = "auto"
    threads: int | None = None
    quantize: str | None = None
    no_server: bool = False

_FILES = "Files"
FileOpt = Annotated[
    list[str] | None, typer.Option("--file", "-f", metavar="PATH", rich_help_panel=_FILES,
                                   help="Attach a text file, a directory (its text files; "
                                   ".gitignore honoured in a git work tree) or - (stdin) to "
                                   "the message (repeatable).", show_default=False)
]
MaxFilesOpt = Annotated[
    int, typer.Option("--max-files", min=1, rich_help_panel=_FILES,
                      help="Attach at most this many files.")
]
MaxBytesOpt = Annotated[
    int, typer.Option("--max-bytes", min=1, rich_help_panel=_FILES,
                      help="Attach at most this many bytes of files in all.")
]
TruncateFilesOpt = Annotated[
    bool, typer.Option("--truncate-files", rich_help_panel=_FILES,
                       help="When the files pass --max-bytes or --max-files, attach what fits "
                       "(the file at the byte cap cut there, marked truncated in the message, "
                       "the history and --json; the rest left out) instead of refusing.")
]
PinOpt = Annotated[
    bool, typer.Option("--pin", rich_help_panel=_FILES,
                       help="Pin the message the files (-f) are attached to: it stays in the "
                       "context window while older turns are dropped.")
]
