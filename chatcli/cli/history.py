"""`chatcli history list|show|export|rm`: saved conversations seen from the CLI.

Each command opens the history store (`chatcli.store`) only when it runs, so
importing this module touches no SQLite and `chatcli --help` stays instant.
`list`, `show` and `export` open it read-only: they work on a read-only history
and on a full disk, and create nothing.
`show` renders Markdown with rich on a terminal and prints it plain otherwise;
`export` always writes the raw text (stdout, or a file whose extension must agree
with --format). A conversation is a tree of versions (`chatcli.branches.Tree`):
`show` and `export` give the path the user is on, marking the messages that have
other versions (`chatcli.transcript`); `show --tree` draws every branch, one line
per message (`transcript.outline`), styled on a terminal and cut to its width,
plain otherwise; JSON exports carry every branch. Knows nothing about models or
decoding.
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from chatcli.cli.options import JsonListingOpt
from chatcli.ui.console import UI

if TYPE_CHECKING:
    from chatcli.branches import Tree
    from chatcli.conversation import Conversation
    from chatcli.store import ConversationInfo, ReplyMeta, Store

app = typer.Typer(help="List, show, export and delete saved conversations.",
                  no_args_is_help=True)


class ExportFormat(str, Enum):
    md = "md"
    json = "json"


ConversationArg = Annotated[
    int, typer.Argument(help="Conversation id (see 'chatcli history list').", show_default=False)
]
LimitOpt = Annotated[
    int | None,
    typer.Option("--limit", "-n", min=1, help="Show only the N most recent.", show_default=False),
]
FormatOpt = Annotated[
    ExportFormat | None,
    typer.Option("--format", "-f", case_sensitive=False, show_default=False,
                 help="md or json (default: md, or what the --output file's extension says)."),
]
TreeOpt = Annotated[
    bool,
    typer.Option("--tree", help="Every branch (each version of a message: /retry, /edit, "
                 "/alt), one line per message; an arrow marks the current path."),
]
OutputOpt = Annotated[
    Path | None,
    typer.Option("--output", "-o", dir_okay=False, show_default=False,
                 help="Write to this file (.md, .markdown or .json) instead of stdout."),
]


def _transcript(store: Store, conv_id: int) -> tuple[ConversationInfo, Conversation,
                                                     list[ReplyMeta | None], list[Any], Tree]:
    """The conversation's info, its current path (turns, reply metadata, attachments)
    and the whole tree."""
    from chatcli.branches import Tree
    from chatcli.conversation import Conversation

    info = store.info(conv_id)
    tree = Tree.from_stored(*store.tree(conv_id))
    return (info, Conversation(system=info.system, turns=tree.messages()),
            [n.meta for n in tree.path], [n.attachments for n in tree.path], tree)


def _write_raw(ui: UI, text: str) -> None:
    ui.print_raw(text)


@app.command("list")
def list_conversations(limit: LimitOpt = None, json_out: JsonListingOpt = False) -> None:
    """Saved conversations, most recently updated first.

    With --json: a list of objects with the keys id, updated (local time, ISO 8601
    with its UTC offset), model, messages (how many) and title (null: untitled);
    an empty history is [].
    """
    from chatcli.store import Store
    from chatcli.transcript import local_time
    from chatcli.ui.tables import show_table

    ui = UI()
    with Store.open(readonly=True) as store:
        infos = store.list(limit)
    if json_out:
        ui.print_json([
            {"id": i.id, "updated": _iso_time(i.updated), "model": i.model,
             "messages": i.messages, "title": i.title or None}
            for i in infos
        ])
        return
    if not infos:
        ui.print_err("no conversations yet")
        return
    rows = [
        [str(i.id), local_time(i.updated), i.model, str(i.messages), i.title or "(untitled)"]
        for i in infos
    ]
    show_table(ui, ["id", "updated", "model", "messages", "title"], rows)


def _iso_time(timestamp: float) -> str:
    from datetime import datetime

    return datetime.fromtimestamp(timestamp).astimezone().isoformat(timespec="seconds")


@app.command("show")
def show(conversation_id: ConversationArg, tree: TreeOpt = False) -> None:
    """A conversation as Markdown: rendered on a terminal, plain text otherwise.

    It is the branch you are on; a message with other versions says which version
    it is. With --tree: every branch, one line per message.
    """
    from chatcli.store import Store
    from chatcli.transcript import to_markdown
    from chatcli.ui.answer import printable

    with Store.open(readonly=True) as store:
        info, conversation, metas, attached, whole = _transcript(store, conversation_id)
    ui = UI()
    if tree:
        _show_tree(ui, whole)
        return
    # shown, not exported: a model's control characters must not drive the terminal
    text = printable(to_markdown(info, conversation, metas, attached, tree=whole))
    if ui.out_tty:
        from rich.markdown import Markdown

        ui.print(Markdown(text))
    else:
        _write_raw(ui, text)


def _show_tree(ui: UI, tree: Tree) -> None:
    """The outline of every branch: styled and cut to the terminal's width on one,
    plain text otherwise."""
    from chatcli import transcript
    from chatcli.ui.answer import printable  # a model must not drive the terminal

    if not ui.out_tty:
        _write_raw(ui, printable(transcript.to_outline(tree)))
        return
    from rich.text import Text

    lines = transcript.outline(tree, ui.out_console.width)
    if not lines:
        ui.print(Text("(no messages)", style="italic"))
    for line in lines:
        text = Text(no_wrap=True, overflow="ellipsis")
        text.append(transcript.CURRENT_MARK if line.current else "  ", style="bold green")
        text.append(line.prefix, style="dim")
        text.append(line.label + ":", style="bold" if line.current else "")
        text.append(" " + printable(line.text), style="" if line.current else "dim")
        ui.print(text)


@app.command("export")
def export(
    conversation_id: ConversationArg,
    fmt: FormatOpt = None,
    output: OutputOpt = None,
) -> None:
    """A conversation as Markdown or JSON, on stdout or into a file.

    Markdown is the branch you are on, as 'show' prints it. JSON keeps every branch:
    "messages" is the branch you are on (what /load reads); a conversation with other
    versions adds "tree" (every message of every branch), "leaf" (the last message
    you are on) and each message's "id" and "parent".
    """
    from chatcli import transcript
    from chatcli.errors import UsageError
    from chatcli.store import Store

    if output is not None:
        file_format = transcript.format_of(output)
        if fmt is not None and fmt.value != file_format:
            raise UsageError(
                f"--format {fmt.value} does not match the extension of {output}",
                "leave out --format: the file's extension chooses it",
            )
    with Store.open(readonly=True) as store:
        info, conversation, metas, attached, tree = _transcript(store, conversation_id)
    ui = UI()
    if output is not None:
        transcript.save(output, info, conversation, metas, attached, tree=tree)
        ui.print(f"exported conversation {conversation_id} to {output}")
        return
    render = transcript.to_json if fmt is ExportFormat.json else transcript.to_markdown
    _write_raw(ui, render(info, conversation, metas, attached, tree=tree))


@app.command("rm")
def rm(conversation_id: ConversationArg) -> None:
    """Delete a conversation and its messages."""
    from chatcli.paths import check_home
    from chatcli.store import Store

    check_home()
    with Store.open() as store:
        store.delete(conversation_id)
    UI().print(f"deleted conversation {conversation_id}")
