"""Slash commands: one dispatch table, which also produces `/help`.

Contract: `dispatch(line, ctx)` runs the command named by a line that starts
with "/", printing through the UI; it returns True when the chat should end.
Every command is a row of `COMMANDS` (name, argument synopsis, help, handler);
an unknown command gets a did-you-mean (and, without one, the `//` escape that
sends a message starting with "/"). Errors from a command (a bad `/set` value,
quoted as typed; a missing file; `/prompt` on an empty conversation) are printed
as one line and the chat goes on. `/set` takes any parameter of the current
strategy (plugins' included) or a common one, typed and checked as declared;
`/candidates` is refused for a strategy without per-token distributions.
`/read` and `/glob` gather under chat's caps (`ChatContext.caps`), never attach a
file twice to one message, and are cancelled alone by Ctrl-C (a FIFO no one writes);
`/undo` first drops the files waiting for the next message, if any.
Knows nothing about prompt_toolkit or how answers stream.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from chatcli.attachments import name_files, split_message
from chatcli.branches import where_it_parts
from chatcli.chat.session import ChatSession, DecodingRequest
from chatcli.decoding.base import ParamError, coerce, is_list, param_types
from chatcli.decoding.settings import COMMON_NAMES, CommonParams, builtin_strategies
from chatcli.errors import ChatcliError, UsageError
from chatcli.ui.answer import printable
from chatcli.ui.console import UI


@dataclass
class ChatContext:
    session: ChatSession
    ui: UI
    # answers the last user message (the REPL's streaming); given a `start`, the answer is
    # the Generation it returns (with the exchanges newly dropped), e.g. an alternative
    answer: Callable[..., None]
    load_model: Callable[[str], Any]  # alias -> its backend, opened
    # alias -> its backend, opened in this process (what answered is gone: BackendGone)
    load_here: Callable[[str], Any] | None = None
    failed: int = 0  # turns that ended in an error (piped chat exits 1 when any did)
    # files attached to the next message (-f, /read, /glob): chatcli.attachments.Attachment
    pending: list[Any] = dataclasses.field(default_factory=list)
    pin_pending: bool = False  # --pin: the message the pending files go with is pinned
    # /read and /glob gather as chat's -f does: (--max-files, --max-bytes, --truncate-files)
    caps: tuple[int, int, bool] = (50, 1_000_000, False)
    # /edit: the index of the user message the next entry replaces, and its text for the
    # input line (the REPL hands it to the reader once)
    editing: int | None = None
    draft: str = ""
    branch_at: int | None = None  # the message whose versions /branches listed last
    interactive: bool = False  # entries come from a person at a terminal (set by the REPL)
    show_thinking: bool = True  # a reasoning model's thinking is shown before its answer
    # --tool: the tools by name (None: none), who allows a call (chatcli.tools.runner.Consent),
    # (--max-tool-calls, --tool-timeout), and the answers' shape a user turn starts with
    tools: dict[str, Any] | None = None
    consent: Any = None
    tool_limits: tuple[int, float] = (8, 30.0)
    tool_constraint: Any = None
    # /tool add: the model opened again with this tool listing (JSON), or None (no tools)
    retool: Callable[[str], Any] | None = None


@dataclass(frozen=True)
class Command:
    name: str
    args: str
    help: str
    run: Callable[[ChatContext, str], bool | None]


def _help(ctx: ChatContext, _: str) -> None:
    width = max(len(f"/{c.name} {c.args}".rstrip()) for c in COMMANDS)
    for c in COMMANDS:
        ctx.ui.print(f"{f'/{c.name} {c.args}'.rstrip().ljust(width)}  {c.help}")
    ctx.ui.print('Multi-line: Esc-Enter for a newline, or a block between """ lines.')
    ctx.ui.print("To send a message that starts with /, begin it with //: one / is dropped "
                 "(//usr/bin/env is cool sends /usr/bin/env is cool).")


def _system(ctx: ChatContext, arg: str) -> None:
    ctx.session.set_system(arg.strip() or None)
    ctx.ui.notify("system prompt " + ("set" if arg.strip() else "removed"))


def _set_spelling(name: str, value: str) -> str:
    return f"/set {name} {value}"


def _set(ctx: ChatContext, arg: str) -> None:
    key, _, value = arg.strip().partition(" ")
    value = value.strip()
    if not key or not value:
        raise UsageError("/set needs KEY VALUE", "e.g. /set temperature 0.7 (see /help)")
    session = ctx.session
    request = dataclasses.replace(session.request, flags=dict(session.request.flags),
                                  options=dict(session.request.options))
    strategy_cls = session.strategies.get(session.settings.strategy)
    own = {f.name for f in dataclasses.fields(strategy_cls.Params)}
    owner = CommonParams if key in COMMON_NAMES else strategy_cls.Params if key in own else None
    if owner is None:
        users = session.strategies.users_of(key)
        hint = f"use /strategy {users[0]} first" if users else "see 'chatcli strategies'"
        raise UsageError(f"/set {key}: strategy '{session.settings.strategy}' has no "
                         f"parameter '{key}'", hint)
    if is_list(param_types(owner)[key]):  # each /set adds one (e.g. another stop string)
        request.flags[key] = (*request.flags.get(key, ()), value)
    elif owner is CommonParams and value == "none":  # back to the model's (or built-in) default
        request.flags[key] = None
    else:
        request.flags[key] = coerce(owner, key, value, _set_spelling)
    try:
        settings = session.update_request(request)
    except ParamError as exc:
        if exc.name != key:
            raise
        raise UsageError(f"/set {key} {value}: {key} must be {exc.valid}", exc.hint) from None
    shown = getattr(settings.params, key, None) if key in own else getattr(settings.common, key)
    ctx.ui.notify(f"{key} = {'none' if shown is None else shown}")


def _strategy(ctx: ChatContext, arg: str) -> None:
    name = arg.strip()
    if not name:
        ctx.ui.print(f"strategy: {ctx.session.settings.strategy}")
        return
    session = ctx.session
    cls = session.strategies.get(name)
    own = {f.name for f in dataclasses.fields(cls.Params)}
    flags = {k: v for k, v in session.request.flags.items() if k in own or k in COMMON_NAMES}
    dropped = sorted(set(session.request.flags) - set(flags))
    session.update_request(DecodingRequest(name, flags, {}))
    ctx.ui.notify(f"strategy = {name}" + (f" (dropped {', '.join(dropped)})" if dropped else ""))


def _model(ctx: ChatContext, arg: str) -> None:
    alias = arg.strip()
    if not alias:
        ctx.ui.print(f"model: {ctx.session.backend.spec.alias}")
        return
    ctx.session.use_model(ctx.load_model(alias))
    ctx.ui.notify(f"model = {alias} (context window {ctx.session.backend.context_window})")


def _clear(ctx: ChatContext, _: str) -> None:
    ctx.branch_at = None
    ctx.session.clear()
    ctx.ui.notify("conversation cleared")


def _undo(ctx: ChatContext, _: str) -> None:
    if ctx.pending:  # the last thing done: files attached to the next message
        names = ", ".join(a.path for a in ctx.pending[:5])
        more = len(ctx.pending) - 5
        ctx.ui.notify(f"dropped {len(ctx.pending)} file(s) attached to your next message: "
                      f"{names}" + (f" and {more} more" if more > 0 else ""))
        ctx.pending.clear()
        ctx.pin_pending = False
        return
    ctx.branch_at = None
    removed = ctx.session.undo()
    ctx.ui.notify(f"removed the last exchange ({len(removed)} messages)" if removed
                  else "nothing to undo")


def _retry(ctx: ChatContext, _: str) -> None:
    if not any(m.role == "user" for m in ctx.session.conversation.turns):
        ctx.ui.notify("nothing to retry")  # and nothing is removed
        return
    before = len(ctx.session.conversation.turns)
    if ctx.session.retry() is None:
        ctx.ui.notify("nothing to retry")
        return
    ctx.branch_at = None
    if len(ctx.session.conversation.turns) < before:
        ctx.ui.notify("the previous answer stays as a branch (/branches)")
    ctx.answer()


def _number(command: str, arg: str, what: str = "a message number") -> int | None:
    value = arg.strip()
    if not value:
        return None
    if not value.isdigit():
        raise UsageError(f"{command} {value}: expected {what}",
                         "/context numbers the messages" if "message" in what
                         else "/branches lists them")
    return int(value)


def _edit(ctx: ChatContext, arg: str) -> None:
    session = ctx.session
    index, words = session.editable(_number("/edit", arg))
    ctx.editing, ctx.draft, ctx.branch_at = index, words, None
    how = ("change it and press Enter; an empty line or Ctrl-C leaves it as it is"
           if ctx.interactive else "the next line replaces it; an empty line leaves it as it is")
    ctx.ui.notify(f"editing message {index + 1}: {how}; the old version and its answers "
                  "stay as a branch (/branches)")


def _one_line(text: str, width: int) -> str:
    """`text` on one line of at most `width` characters (cut with " …")."""
    return text if len(text) <= width else text[: width - 2].rstrip() + " …"


def _branches(ctx: ChatContext, arg: str) -> None:
    session = ctx.session
    index = session.branch_point(_number("/branches", arg))
    tree = session.tree
    versions = tree.versions(index)
    current = tree.path[index]
    role = "your message" if current.message.role == "user" else "the answer"
    if len(versions) == 1:
        ctx.ui.notify(f"message {index + 1} ({role}) has one version; /retry, /edit "
                      f"{index + 1} and /alt make others" if current.message.role == "user"
                      else f"message {index + 1} ({role}) has one version; /retry and /alt "
                      "make others")
        return
    ctx.branch_at = index
    ctx.ui.print(f"message {index + 1} ({role}) has {len(versions)} versions; "  # wrapped
                 "/switch K goes to one:")
    width = max((ctx.ui.out_console.size.width if ctx.ui.out_tty else 80) - 20, 20)
    texts = []
    for node in versions:
        words = node.message.content
        if node.attachments:
            words = split_message(words, node.attachments)[0] or "files: " + ", ".join(
                str(a.get("path", "")) for a in node.attachments)
        texts.append(" ".join(printable(words).split()) or "(empty)")
    for k, (node, text) in enumerate(zip(versions, texts, strict=True), start=1):
        depth, leaf = 1, node.newest_leaf()
        while leaf is not node and leaf.parent is not None:
            depth, leaf = depth + 1, leaf.parent
        same = next((j for j, other in enumerate(texts[: k - 1], start=1) if other == text),
                    None)
        shown = (f"(the same text as {same})" if same is not None else
                 _one_line(where_it_parts(text, texts[: k - 1] + texts[k:]), width))
        mark = "*" if node is current else " "
        length = index + depth
        ctx.ui.print_raw(f"{mark} {k}. {shown}  ({length} message{'s' if length != 1 else ''})")


def _switch(ctx: ChatContext, arg: str) -> None:
    from chatcli.conversation import Conversation
    from chatcli.ui.answers import show_conversation

    session = ctx.session
    k = _number("/switch", arg, "a version number")
    if k is None:
        raise UsageError("/switch needs a version number", "/branches lists the versions")
    tree = session.tree
    index = ctx.branch_at
    if index is None or index >= len(tree.path) or len(tree.versions(index)) < 2:
        index = session.branch_point()
    session.switch(index, k)
    ctx.branch_at = index
    count = len(session.conversation.turns)
    ctx.ui.notify(f"now on version {k} of message {index + 1}; the conversation has {count} "
                  f"message{'s' if count != 1 else ''}:")
    show_conversation(ctx.ui, Conversation(None, session.conversation.turns[index:]),
                      name_files)


def _context(ctx: ChatContext, _: str) -> None:
    from chatcli.ui.tables import show_table

    session = ctx.session
    if not session.conversation.messages():
        ctx.ui.print("the conversation is empty")
        return
    packed = session.pack()
    rows = []
    for r in packed.report:
        state = "kept" if r.kept else "dropped"
        if r.shortened:
            state = "kept (shortened)"
        if r.pinned:
            state += " (pinned)"
        rows.append(["system" if r.index < 0 else str(r.index + 1), r.role, str(r.tokens), state])
        if r.index >= 0:
            rows += _attachment_rows(session, r.index, state)
    show_table(ctx.ui, ["turn", "role", "tokens", "status"], rows)
    window = session.backend.context_window
    ctx.ui.print(
        f"prompt {packed.tokens} of {packed.budget} tokens (context window {window} - "
        f"max new tokens {session.max_new_tokens}); {packed.dropped_exchanges} exchange(s) dropped"
    )
    answered, gen = session.answered_packed, session.last_generation
    if (session.explain and session.backend.capabilities.internals and answered is not None
            and gen is not None and gen.token_ids):
        show_attention(ctx.ui, session.backend, answered, gen.token_ids)


def _attachment_rows(session: ChatSession, index: int, state: str) -> list[list[str]]:
    """A row per file attached to turn `index` and one for the words after them, their
    tokens (exact, under the model's template) summing to the turn's row."""
    from chatcli.attachments import block_spans
    from chatcli.context import part_tokens

    message = session.conversation.turns[index]
    spans = block_spans(message.content) if message.role == "user" else []
    if not spans:
        return []
    messages = session.conversation.messages()
    position = index + (len(messages) - len(session.conversation.turns))
    counts = part_tokens(messages, position, [end for _, _, end in spans], session.render)
    rows = [["", f"  file {path}", str(n), state]
            for (path, _, _), n in zip(spans, counts, strict=False)]
    return [*rows, ["", "  words", str(counts[-1]), state]]


def show_attention(ui: UI, backend: Any, packed: Any, answer_ids: list[int]) -> None:
    """The last answer's attention per message of the prompt it was given."""
    from chatcli.ui.answers import show_spans

    with ui.busy("Measuring attention per turn (one extra forward pass)"):
        spans = backend.attention(packed, answer_ids)
    show_spans(ui, spans)


def _prompt(ctx: ChatContext, _: str) -> None:
    if not ctx.session.conversation.messages():
        ctx.ui.print("the conversation is empty")
        return
    packed = ctx.session.pack()
    text, note = ctx.session.backend.prompt_text(packed.messages)
    ctx.ui.print_raw(text)
    if note:
        ctx.ui.print(note)


def _stats(ctx: ChatContext, _: str) -> None:
    from chatcli.ui.answers import stats_line

    gen = ctx.session.last_generation
    if gen is None:
        ctx.ui.print("no answer yet")
        return
    ctx.ui.print(stats_line(ctx.session.backend.spec.alias, gen.settings, gen.stats,
                            len(gen.token_ids), reused=ctx.session.backend.reused,
                            thinking_tokens=gen.thinking_tokens))


def _tools(ctx: ChatContext, _: str) -> None:
    if not ctx.tools:
        ctx.ui.print("no tools: start the chat with --tool FILE.py, --tool-module MOD:FUNC "
                     "or --mcp 'CMD'")
        return
    for tool in ctx.tools.values():
        params = ", ".join(tool.parameters.get("properties", {}))
        ctx.ui.print(f"{tool.name}({params}): {tool.description or '(no description)'} "
                     f"[{tool.source}]")


def _tool(ctx: ChatContext, arg: str) -> None:
    import json

    from chatcli.tools.calls import constraint
    from chatcli.tools.functions import load_file

    verb, _, spec = arg.strip().partition(" ")
    if verb != "add" or not spec.strip():
        raise UsageError("/tool takes add FILE.py[:NAME]", "e.g. /tool add tools.py:weather")
    if ctx.retool is None:
        raise UsageError("/tool add needs a chat started with tools",
                         "start it with --tool FILE.py (or --mcp 'CMD')")
    added = {t.name: t for t in load_file(spec.strip())}
    clash = sorted(set(added) & set(ctx.tools or {}))
    if clash:
        raise UsageError(f"/tool add {spec.strip()}: a tool named {clash[0]} is offered already",
                         "name another function: FILE.py:NAME")
    tools = {**(ctx.tools or {}), **added}
    ctx.ui.notify(f"offering {', '.join(added)}; loading the model again with the new list")
    ctx.session.use_model(ctx.retool(json.dumps([t.as_dict() for t in tools.values()])))
    ctx.tools = tools
    ctx.tool_constraint = constraint(tools, "auto")
    ctx.session.constraint = ctx.tool_constraint


def _save(ctx: ChatContext, arg: str) -> None:
    from chatcli import transcript

    if not arg.strip():
        raise UsageError("/save needs a file name", "e.g. /save chat.md or /save chat.json")
    path = Path(arg.strip()).expanduser()
    transcript.save(path, None, ctx.session.conversation)
    ctx.ui.notify(f"saved to {path}")


def _load(ctx: ChatContext, arg: str) -> None:
    from chatcli import transcript

    if not arg.strip():
        raise UsageError("/load needs a file name", "e.g. /load chat.json")
    path = Path(arg.strip()).expanduser()
    ctx.session.replace_conversation(transcript.load(path))
    ctx.ui.notify(f"loaded {len(ctx.session.conversation.turns)} messages from {path}")


def _candidates(ctx: ChatContext, arg: str) -> None:
    value = arg.strip() or "5"
    if not value.isdigit():
        raise UsageError(f"/candidates {value}: expected a number", "e.g. /candidates 5 (0: off)")
    k = int(value)
    settings = ctx.session.settings
    if k and not settings.capabilities.distributions:  # what the strategy can show
        takers = ctx.session.strategies.with_capability(lambda c: c.distributions)
        why = settings.capabilities.note or f"strategy '{settings.strategy}' has no per-token " \
            "distributions"
        raise UsageError(f"/candidates shows token-by-token choices; {why}",
                         "switch with " + " or ".join(f"/strategy {n}" for n in takers))
    ctx.session.candidates = k or None
    ctx.ui.notify(f"candidates = {k}" + (" (off)" if not k else ""))


def _exit(ctx: ChatContext, _: str) -> bool:
    return True


def _constrain(ctx: ChatContext, constraint: Any) -> None:
    ctx.session.set_constraint(constraint)
    ctx.ui.notify(f"answers are held to {constraint.describe()} until /unconstrain")


def _schema(ctx: ChatContext, arg: str) -> None:
    from chatcli.constraints.spec import schema_constraint

    if not arg.strip():
        raise UsageError("/schema needs a JSON Schema", "a file, JSON text, or fields like "
                         "/schema name str, age int")
    _constrain(ctx, schema_constraint(arg.strip(), "/schema"))


def _regex(ctx: ChatContext, arg: str) -> None:
    from chatcli.constraints.spec import Constraint

    if not arg.strip():
        raise UsageError("/regex needs a regular expression", "e.g. /regex [0-9]+")
    _constrain(ctx, Constraint("regex", arg.strip(), source="/regex"))


def _grammar(ctx: ChatContext, arg: str) -> None:
    from chatcli.constraints.spec import grammar_constraint

    if not arg.strip():
        raise UsageError("/grammar needs a grammar file", "e.g. /grammar answer.lark")
    _constrain(ctx, grammar_constraint(arg.strip(), "/grammar"))


def _choice(ctx: ChatContext, arg: str) -> None:
    from chatcli.constraints.spec import choice_constraint

    _constrain(ctx, choice_constraint(arg, "/choice"))


def attach(ctx: ChatContext, paths: list[str], command: str) -> None:
    """Attach the files at `paths` to the next message (notes warned; a file already
    attached is left out, noted), under chat's caps. Ctrl-C while reading (a FIFO that
    no one writes) cancels `command` alone: nothing is attached and the chat goes on."""
    from chatcli.attachments import gather
    from chatcli.interrupts import ended_by_signal

    max_files, max_bytes, truncate = ctx.caps
    try:
        gathered = gather(paths, max_files=max_files, max_bytes=max_bytes, truncate=truncate,
                          attached=ctx.pending)
    except KeyboardInterrupt as exc:
        if ended_by_signal(exc):
            raise
        ctx.ui.warn(f"{command} cancelled (Ctrl-C): nothing attached")
        return
    for note in gathered.notes:
        ctx.ui.warn(note)
    ctx.pending.extend(gathered.attachments)
    if gathered.attachments:
        size = sum(a.size for a in gathered.attachments)
        names = ", ".join(a.path for a in gathered.attachments[:5])
        more = len(gathered.attachments) - 5
        ctx.ui.notify(f"attached {len(gathered.attachments)} file(s), {size} bytes, to your "
                      f"next message: {names}" + (f" and {more} more" if more > 0 else ""))


def _read(ctx: ChatContext, arg: str) -> None:
    if not arg.strip():
        raise UsageError("/read needs a path", "e.g. /read src/app.py (a file or a directory)")
    attach(ctx, [arg.strip()], f"/read {arg.strip()}")


def _glob(ctx: ChatContext, arg: str) -> None:
    from chatcli.attachments import glob_paths

    if not arg.strip():
        raise UsageError("/glob needs a pattern", "e.g. /glob src/**/*.py")
    attach(ctx, glob_paths(arg.strip()), f"/glob {arg.strip()}")


def _alt(ctx: ChatContext, arg: str) -> None:
    parts = arg.split()
    if not parts:
        _least_sure(ctx)
        return
    if len(parts) != 2 or not all(p.lstrip("-").isdigit() for p in parts):
        raise UsageError(f"/alt {arg.strip()}: expected STEP RANK (two numbers)",
                         "e.g. /alt 3 2: at step 3 take the model's second choice; /alt alone "
                         "lists the steps where it was least sure")
    step, rank = (int(p) for p in parts)
    session = ctx.session
    alt, gen = session.start_alternative(step, rank)
    original = session.token_text(alt.original_id)
    chosen = session.token_text(alt.token_id)
    ctx.ui.notify(f"step {step}: {chosen!r} (rank {rank}, p {alt.prob:.3f}) instead of "
                  f"{original!r} (rank {alt.original_rank}); the previous answer stays as a "
                  "branch (/branches)"
                  + (" (the same token: the same answer)" if alt.same else ""))
    ctx.answer(lambda: (gen, 0))


NARROW = 90  # columns below which /alt lists steps without a table


def _least_sure(ctx: ChatContext) -> None:
    from chatcli.ui.tables import show_table

    session = ctx.session
    views = session.least_sure()
    if not views:
        ctx.ui.notify("the last answer has no steps")
        return
    if ctx.ui.out_tty and ctx.ui.out_console.size.width < NARROW:
        # a table's last column would be a few characters wide: a step and its candidates
        # on lines of their own instead
        for v in views:
            ctx.ui.print_raw(f"step {v.step} · {session.token_text(v.token_id)!r} "
                             f"(p {v.prob:.3f}) · entropy {v.entropy:.2f} · margin "
                             f"{v.margin:.3f}")
            for i, (t, p) in enumerate(v.top, start=1):
                ctx.ui.print_raw(f"  {i}. {session.token_text(t)!r} {p:.3f}")
        ctx.ui.notify("/alt STEP RANK takes another token at a step and answers from there")
        return
    # on a terminal one candidate per line (a narrow column would wrap inside them)
    sep = "\n" if ctx.ui.out_tty else "  "
    rows = [[str(v.step), repr(session.token_text(v.token_id)), f"{v.prob:.3f}",
             f"{v.entropy:.2f}", f"{v.margin:.3f}",
             sep.join(f"{i}. {session.token_text(t)!r} {p:.3f}"
                      for i, (t, p) in enumerate(v.top, start=1))]
            for v in views]
    show_table(ctx.ui, ["step", "token", "p", "entropy", "margin", "candidates (rank)"], rows)
    ctx.ui.notify("/alt STEP RANK takes another token at a step and answers from there")


def _pin_number(command: str, arg: str) -> int:
    if not arg.strip().isdigit():
        raise UsageError(f"{command} needs a message number",
                         f"e.g. {command} 1 (/context numbers the messages)")
    return int(arg.strip())


def _pin(ctx: ChatContext, arg: str) -> None:
    number = _pin_number("/pin", arg)
    message = ctx.session.pin(number)
    ctx.ui.notify(f"message {number} ({message.role}) is pinned: it stays in the context "
                  "window while older turns are dropped")


def _unpin(ctx: ChatContext, arg: str) -> None:
    number = _pin_number("/unpin", arg)
    ctx.session.conversation.check_index(number - 1)
    if not ctx.session.conversation.turns[number - 1].pinned:
        role = ctx.session.conversation.turns[number - 1].role
        ctx.ui.notify(f"message {number} ({role}) was not pinned: nothing to unpin")
        return
    message = ctx.session.pin(number, pinned=False)
    ctx.ui.notify(f"message {number} ({message.role}) is no longer pinned")


def _unconstrain(ctx: ChatContext, _: str) -> None:
    had = ctx.session.constraint
    ctx.session.set_constraint(None)
    ctx.ui.notify("answers are free again" if had is not None else "answers were not held to "
                  "a shape")


COMMANDS: list[Command] = [
    Command("help", "", "this list", _help),
    Command("system", "TEXT", "set the system prompt (empty: remove it)", _system),
    Command("set", "KEY VALUE", "set a decoding parameter (validated like the flags)", _set),
    Command("strategy", "NAME", "switch decoding strategy "
            f"({', '.join([*builtin_strategies(), 'plugins'])})", _strategy),
    Command("model", "ALIAS", "switch model, keeping the conversation", _model),
    Command("clear", "", "start over (the system prompt stays)", _clear),
    Command("undo", "", "remove the last exchange (or, first, the files attached to your "
            "next message)", _undo),
    Command("retry", "", "answer the last message again (the old answer stays a branch)",
            _retry),
    Command("edit", "[N]", "change your message N (default: the last) and answer it; the "
            "old one stays a branch", _edit),
    Command("branches", "[N]", "the versions of message N (default: the last that has "
            "several)", _branches),
    Command("switch", "K", "go to version K of the message /branches listed", _switch),
    Command("context", "", "every turn: tokens, kept or dropped, budget used", _context),
    Command("prompt", "", "the exact prompt sent, special tokens visible", _prompt),
    Command("stats", "", "figures of the last answer", _stats),
    Command("tools", "", "the tools the model may call (--tool, --tool-module, --mcp)", _tools),
    Command("tool", "add FILE", "offer a Python file's functions too (FILE.py[:NAME])",
            _tool),
    Command("candidates", "K", "show each token's top-K alternatives (0: off)", _candidates),
    Command("schema", "SCHEMA", "hold answers to a JSON Schema: a file, JSON, or fields like "
            "name str, age int", _schema),
    Command("regex", "RE", "hold answers to a regular expression", _regex),
    Command("grammar", "FILE", "hold answers to a grammar (Lark or GBNF)", _grammar),
    Command("choice", "LIST", "answers are one of these comma-separated choices", _choice),
    Command("unconstrain", "", "answers are free again", _unconstrain),
    Command("alt", "STEP RANK", "take the model's RANK-th token at STEP and answer from "
            "there (alone: the steps where it was least sure)", _alt),
    Command("pin", "N", "keep message N in the window while older turns are dropped", _pin),
    Command("unpin", "N", "let message N be dropped again", _unpin),
    Command("read", "PATH", "attach a file or directory to your next message", _read),
    Command("glob", "PATTERN", "attach the files a pattern matches to your next message",
            _glob),
    Command("save", "FILE", "save the conversation (.md or .json)", _save),
    Command("load", "FILE", "load a conversation saved as .json", _load),
    Command("exit", "", "leave (Ctrl-D does too)", _exit),
]
_BY_NAME = {c.name: c for c in COMMANDS}


def dispatch(line: str, ctx: ChatContext) -> bool:
    name, _, arg = line.strip()[1:].partition(" ")
    command = _BY_NAME.get(name)
    if command is None:
        close = difflib.get_close_matches(name, list(_BY_NAME), n=1)
        hint = (f"did you mean /{close[0]}? /help lists the commands" if close else
                "/help lists the commands; to send a message that starts with /, begin it "
                "with //")
        ctx.ui.error(f"unknown command '/{name}'", hint)
        return False
    try:
        return bool(command.run(ctx, arg))
    except ChatcliError as exc:
        ctx.ui.error(exc.message, exc.hint)
        return False
