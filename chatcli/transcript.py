"""Conversations to and from files: Markdown to read, JSON to keep and load again.

Contract: `to_markdown` and `to_json` render a conversation (with its stored
`ConversationInfo` when there is one, and one `ReplyMeta | None` per turn when
known); `from_json` validates and reads JSON back into a `Conversation`. `save`
picks the format from the file's extension (.md/.markdown or .json) and `load`
reads JSON only. Bad input raises a `TranscriptError` (or a `UsageError` for a
file name chatcli cannot use) with a hint.

The JSON format, version 1 (`"chatcli": 1`)::

    {"chatcli": 1,
     "model": "<alias>" | null,
     "system": "<system prompt>" | null,
     "messages": [{"id": <history id>, "parent": <history id> | null  (only with "tree"),
                   "role": "user" | "assistant", "content": "<text>",
                   "interrupted": false,
                   "meta": {"model", "strategy", "params", "seed", "prompt_tokens",
                            "completion_tokens", "time_to_first_token_s",
                            "tokens_per_second"}  (optional, assistant replies),
                   "attachments": [{"path", "size", "sha256"}]  (optional, user messages
                   with files attached: -f, /read, /glob; their text is in "content";
                   a file cut by --truncate-files adds "truncated": true and
                   "full_size", null when unknown),
                   "pinned": true  (optional: kept in the window, /pin)}],
     "leaf": <history id> | null  (only with "tree"),
     "tree": [<every message of every branch, in the order written, each like
               those of "messages", with its "id" and "parent">]  (optional)}

"messages" is the conversation: the path from the first message to the one the
user is on. A conversation with other versions of its messages (/retry, /edit,
/alt: a tree, `chatcli.branches.Tree`) adds "tree", "leaf" (the last message of
the path) and each message's "id" and "parent" (the message it follows; null for
a first message); one without them is written as before, without those keys.

`save_recovery` writes a conversation the history could not keep to a new private
JSON file (0600) in the first of the given folders that takes it, for `/load`.

`from_json` reads "messages" only: it ignores "meta", "id", "parent", "tree",
"leaf" and any key it does not know (a loaded conversation is the path). In
Markdown an interrupted reply is followed by "*(interrupted)*" and a reply's
metadata by one italic line; a raw text completion (`ask --raw`: its replies' params
say "raw": true, `chatcli.store.is_raw`) heads its messages "Text" and "Completion"
instead of "User" and "Assistant"; given the tree, a message with other versions says
which it is in its heading ("## Assistant (version 2 of 3)") and the document
ends with one italic line naming `chatcli history show --tree ID`. `outline`
draws the whole tree, one line per message (`to_outline`: as plain text). Times
are local. Knows nothing about SQLite, models or the terminal.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
import unicodedata
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from chatcli.conversation import Conversation, Message
from chatcli.errors import ChatcliError, UsageError
from chatcli.store import ConversationInfo, ReplyMeta, is_raw, make_title

if TYPE_CHECKING:
    from chatcli.branches import Node, Tree

FORMAT_VERSION = 1
OUTLINE_TEXT_WIDTH = 60  # a message's text in an outline without a width (piped)
MARKDOWN_SUFFIXES = (".md", ".markdown")
JSON_SUFFIX = ".json"
_RAW_HEADINGS = {"user": "Text", "assistant": "Completion"}  # a raw completion's messages
_HINT = "expected a JSON object like 'chatcli history export ID --format json' writes"


class TranscriptError(ChatcliError):
    """A transcript that cannot be read or written."""


def local_time(timestamp: float) -> str:
    """A timestamp as local `YYYY-MM-DD HH:MM`."""
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(timestamp))


def _metas(conversation: Conversation, metas: Sequence[ReplyMeta | None] | None,
           ) -> list[ReplyMeta | None]:
    if metas is None:
        return [None] * len(conversation.turns)
    if len(metas) != len(conversation.turns):
        raise ValueError(f"{len(metas)} metas for {len(conversation.turns)} turns")
    return list(metas)


def describe_meta(meta: ReplyMeta) -> str:
    """One line: model, strategy (parameters that are set; a constraint by its kind; the
    thinking is shown apart), seed, tokens, speed."""
    def short(key: str, value: Any) -> Any:  # a constraint by its kind, not its text
        if key == "constraint" and isinstance(value, dict):
            return value.get("kind") or next(iter(value), "?")
        return value

    params = ", ".join(
        f"{k}={short(k, v)}" for k, v in sorted(meta.params.items())
        if k not in ("strategy", "seed", "raw", "thinking") and v not in (None, [], ())
    )
    parts = [meta.model, meta.strategy + (f" ({params})" if params else "")]
    if meta.seed is not None:
        parts.append(f"seed {meta.seed}")
    parts += [
        f"{meta.prompt_tokens} prompt + {meta.completion_tokens} completion tokens",
        f"first token {meta.time_to_first_token_s:.2f} s",
        f"{meta.tokens_per_second:.1f} tokens/s",
    ]
    return " · ".join(parts)


def _attached(files: Sequence[dict[str, Any]]) -> str:
    return "attached: " + ", ".join(f"{f['path']} ({_size(f)})" for f in files)


def _size(file: dict[str, Any]) -> str:
    """"12 bytes"; a truncated file: "truncated to the first 1000 of 52428800 bytes"."""
    if not file.get("truncated"):
        return f"{file['size']} bytes"
    whole = file.get("full_size")
    return f"truncated to the first {file['size']}" + (
        f" of {whole} bytes" if whole is not None else " bytes")


def to_markdown(info: ConversationInfo | None, conversation: Conversation,
                metas: Sequence[ReplyMeta | None] | None = None,
                attachments: Sequence[Sequence[dict[str, Any]]] | None = None, *,
                tree: Tree | None = None) -> str:
    """The conversation as a Markdown document (ends with one newline); a user message
    with `attachments` (one list per turn) is followed by an italic line naming them.
    With its `tree` (whose path is `conversation`'s turns) a message that has other
    versions says which it is, and a conversation with other branches ends saying so. A
    reasoning model's reply has its thinking quoted before it; a tool call and a tool's
    result (--tool) are shown as what they are, not as their markup."""
    metas = _metas(conversation, metas)
    files = list(attachments) if attachments is not None else [()] * len(conversation.turns)
    versions = _versions(conversation, tree)
    names = _RAW_HEADINGS if is_raw(metas) else {}
    first_user = next((m.content for m in conversation.turns if m.role == "user"), "")
    title = (info.title if info is not None else "") or make_title(first_user) or "Conversation"
    blocks = [f"# {title}"]
    if info is not None:
        blocks.append("\n".join([
            f"- conversation: {info.id}",
            f"- model: {info.model}",
            f"- started: {local_time(info.created)}",
            f"- updated: {local_time(info.updated)}",
        ]))
    if conversation.system:
        blocks += ["## System", conversation.system.rstrip()]
    for message, meta, attached, (k, n) in zip(conversation.turns, metas, files, versions,
                                               strict=True):
        step = _tool_step(message)
        heading = f"## {step[0] if step else names.get(message.role, message.role.capitalize())}"\
            + (f" (version {k} of {n})" if n > 1 else "")
        blocks.append(heading)
        if step:  # a tool call or its result: as what it means, not as its markup
            blocks.append(step[1])
            if meta is not None:
                blocks.append(f"*{describe_meta(meta)}*")
            continue
        thinking = meta.params.get("thinking") if meta is not None else None
        if thinking:  # a reasoning model's thinking, quoted before its answer
            quoted = "\n".join(f"> {line}".rstrip() for line in thinking.rstrip().split("\n"))
            blocks.append(f"> *Thinking ({meta.params.get('thinking_tokens')} tokens)*\n>\n"
                          + quoted)
        blocks.append(message.content.rstrip() or "*(empty)*")
        if attached:
            blocks.append(f"*{_attached(attached)}*")
        if message.interrupted:
            blocks.append("*(interrupted)*")
        if meta is not None:
            blocks.append(f"*{describe_meta(meta)}*")
    if not conversation.turns:
        blocks.append("*(no messages)*")
    if tree is not None and has_branches(tree):
        where = (f"; `chatcli history show --tree {info.id}` shows every branch"
                 if info is not None and info.id else "")
        blocks.append(f"*This is one branch of the conversation{where}.*")
    return "\n\n".join(blocks) + "\n"


def _tool_step(message: Message) -> tuple[str, str] | None:
    """(heading, body) of a message that is a tool call or a tool's result (--tool)."""
    from chatcli.tools.calls import read_call, read_response

    if message.role == "assistant" and (call := read_call(message.content)) is not None:
        args = ", ".join(f"{k}={json.dumps(v, ensure_ascii=False)}" for k, v in call[1].items())
        return "Tool call", f"`{call[0]}({args})`"
    if message.role == "user" and (result := read_response(message.content)) is not None:
        return f"Tool result ({result.get('name')})", "```json\n" + json.dumps(
            result, ensure_ascii=False, indent=2) + "\n```"
    return None


def has_branches(tree: Tree) -> bool:
    """Whether the tree holds messages that are not on its path (other versions)."""
    return len(_nodes(tree)) > len(tree.path)


def _versions(conversation: Conversation, tree: Tree | None) -> list[tuple[int, int]]:
    """(k, n) per turn: the turn is version k of n (1 of 1 without a tree)."""
    if tree is None:
        return [(1, 1)] * len(conversation.turns)
    if len(tree.path) != len(conversation.turns):
        raise ValueError(f"a path of {len(tree.path)} for {len(conversation.turns)} turns")
    return [tree.version(i) for i in range(len(tree.path))]


def to_json(info: ConversationInfo | None, conversation: Conversation,
            metas: Sequence[ReplyMeta | None] | None = None,
            attachments: Sequence[Sequence[dict[str, Any]]] | None = None, *,
            tree: Tree | None = None) -> str:
    """The conversation as a version-1 JSON transcript (indented; ends with a newline).
    With its `tree` (whose path is `conversation`'s turns, saved: every node has an id)
    a conversation with other branches also writes them ("tree", "leaf", ids)."""
    files = list(attachments) if attachments is not None else [()] * len(conversation.turns)
    _versions(conversation, tree)  # the tree's path must be the conversation
    branched = tree is not None and has_branches(tree)
    path = tree.path if tree is not None and branched else [None] * len(conversation.turns)
    messages = [
        _item(message, meta, attached, node)
        for message, meta, attached, node in zip(
            conversation.turns, _metas(conversation, metas), files, path, strict=True)
    ]
    doc: dict[str, Any] = {
        "chatcli": FORMAT_VERSION,
        "model": info.model if info is not None else None,
        "system": conversation.system or None,
        "messages": messages,
    }
    if tree is not None and branched:
        doc["leaf"] = tree.path[-1].id if tree.path else None
        doc["tree"] = [_item(n.message, n.meta, n.attachments, n) for n in _nodes(tree)]
    return json.dumps(doc, ensure_ascii=False, indent=2, default=str) + "\n"


def _item(message: Message, meta: ReplyMeta | None, attached: Sequence[dict[str, Any]],
          node: Node | None) -> dict[str, Any]:
    """One message of a JSON transcript; with its node, its history id and parent's first."""
    item: dict[str, Any] = {}
    if node is not None:
        item["id"] = node.id
        item["parent"] = node.parent.id if node.parent is not None else None
    item.update(role=message.role, content=message.content, interrupted=message.interrupted)
    if meta is not None:
        item["meta"] = dataclasses.asdict(meta)
    if attached:
        item["attachments"] = [dict(f) for f in attached]
    if message.pinned:
        item["pinned"] = True
    return item


# -- the whole tree, one line per message --------------------------------------------------
@dataclasses.dataclass(frozen=True)
class OutlineLine:
    """One message of an outline: `prefix` (box-drawing connectors), `label` (its
    number along its branch, role, version), `text` (its first line, or all its lines
    where versions share the first, shortened)."""

    current: bool  # on the path the user is on
    prefix: str
    label: str
    text: str

    def plain(self) -> str:
        return f"{CURRENT_MARK if self.current else '  '}{self.prefix}{self.label}: {self.text}"


CURRENT_MARK = "→ "


def outline(tree: Tree, width: int | None = None) -> list[OutlineLine]:
    """Every message of the tree, one line each, depth first, versions in the order made.

    A message's only follower goes on the next line at the same indentation; the
    versions that follow a message hang from it with ├─ and └─. A version shows where it
    parts from the others (`where_it_parts`); versions whose first lines are the same
    show all their lines, each line break as ⏎. Each text is cut to
    fit `width` cells per line (at least 12 cells of text), or to
    OUTLINE_TEXT_WIDTH characters without one."""
    from chatcli.branches import where_it_parts

    on_path = set(map(id, tree.path))
    lines: list[OutlineLine] = []

    def add(node: Node, siblings: list[Node], depth: int, prefix: str) -> None:
        label = f"{depth} {node.message.role.capitalize()}"
        notes = []
        if len(siblings) > 1:
            notes.append(f"version {siblings.index(node) + 1} of {len(siblings)}")
        if node.message.interrupted:
            notes.append("interrupted")
        if notes:
            label += f" ({', '.join(notes)})"
        room = OUTLINE_TEXT_WIDTH if width is None else max(
            12, width - _cells(CURRENT_MARK + prefix + label + ": "))
        others = [n for n in siblings if n is not node]
        own = _gist(node)
        if any(_gist(n) == own for n in others):  # they part after a line break: show it
            own, shown = _gist(node, breaks=True), [_gist(n, breaks=True) for n in others]
        else:
            shown = [_gist(n) for n in others]
        gist = where_it_parts(own, shown)
        lines.append(OutlineLine(id(node) in on_path, prefix, label,
                                 _shorten(gist, room, width is not None)))

    def chain(node: Node, siblings: list[Node], depth: int, first: str, rest: str) -> None:
        add(node, siblings, depth, first)
        while len(node.children) == 1:
            siblings, node, depth = node.children, node.children[0], depth + 1
            add(node, siblings, depth, rest)
        fan(node.children, depth + 1, rest)

    def fan(nodes: list[Node], depth: int, prefix: str) -> None:
        for i, node in enumerate(nodes):
            last = i == len(nodes) - 1
            chain(node, nodes, depth, prefix + ("└─ " if last else "├─ "),
                  prefix + ("   " if last else "│  "))

    if len(tree.roots) == 1:
        chain(tree.roots[0], tree.roots, 1, "", "")
    else:
        fan(tree.roots, 1, "")
    return lines


def to_outline(tree: Tree, width: int | None = None) -> str:
    """`outline` as plain text, "→ " before the messages of the current path; ends with
    a newline ("(no messages)" for an empty tree)."""
    lines = [line.plain() for line in outline(tree, width)] or ["(no messages)"]
    return "\n".join(lines) + "\n"


LINE_BREAK = "⏎"  # where a message's lines meet, in a one-line gist that shows them all


def _gist(node: Node, breaks: bool = False) -> str:
    """A message's first line of words (after its attached files), marked "…" when more
    follows; with `breaks`, all its lines joined by " ⏎ ". "(empty)" for none."""
    text = node.message.content
    if node.attachments:
        text = text.rsplit("</file>", 1)[-1]
    lines = [" ".join(line.split()) for line in text.splitlines()]
    lines = [line for line in lines if line]
    if not lines:
        if node.attachments:
            return "files: " + ", ".join(str(f.get("path", "")) for f in node.attachments)
        return "(empty)"
    if breaks:
        return f" {LINE_BREAK} ".join(lines)
    return lines[0] + (" …" if len(lines) > 1 else "")


def _cells(text: str) -> int:
    """How many terminal cells `text` takes (wide East Asian characters take two)."""
    return sum(0 if unicodedata.combining(c) else
               2 if unicodedata.east_asian_width(c) in ("W", "F") else 1 for c in text)


def _shorten(text: str, room: int, cells: bool) -> str:
    """`text` in at most `room` terminal cells (`cells`) or characters, ending "…" if cut."""
    if (_cells(text) if cells else len(text)) <= room:
        return text
    kept, used = [], 0
    for char in text:
        used += _cells(char) if cells else 1
        if used > room - 1:
            break
        kept.append(char)
    return "".join(kept).rstrip() + "…"


def _nodes(tree: Tree) -> list[Node]:
    """Every node of the tree in the order made (without recursion: a long conversation
    is a deep tree)."""
    found, stack = [], list(tree.roots)
    while stack:
        node = stack.pop()
        found.append(node)
        stack.extend(node.children)
    return sorted(found, key=lambda n: n.seq)


def from_json(text: str, source: str = "the transcript") -> Conversation:
    """Read a JSON transcript back; `source` names it in errors."""
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise TranscriptError(
            f"{source} is not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})",
            _HINT,
        ) from exc
    if not isinstance(doc, dict) or "chatcli" not in doc:
        raise TranscriptError(f"{source} is not a chatcli transcript (no \"chatcli\" key)", _HINT)
    version = doc["chatcli"]
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise TranscriptError(f"{source}: \"chatcli\" must be {FORMAT_VERSION}", _HINT)
    if version != FORMAT_VERSION:
        raise TranscriptError(
            f"{source} is a version {version} transcript; this chatcli reads version "
            f"{FORMAT_VERSION}",
            "upgrade chatcli",
        )
    system = doc.get("system")
    if system is not None and not isinstance(system, str):
        raise TranscriptError(f"{source}: \"system\" must be text or null", _HINT)
    items = doc.get("messages")
    if not isinstance(items, list):
        raise TranscriptError(f"{source}: \"messages\" must be a list", _HINT)
    turns: list[Message] = []
    for number, item in enumerate(items, start=1):
        where = f"{source}: message {number}"
        if not isinstance(item, dict):
            raise TranscriptError(f"{where} is not an object", _HINT)
        role = item.get("role")
        if role not in ("user", "assistant"):
            raise TranscriptError(
                f"{where} has role {json.dumps(role)}; expected \"user\" or \"assistant\"", _HINT
            )
        content = item.get("content")
        if not isinstance(content, str):
            raise TranscriptError(f"{where} has no text \"content\"", _HINT)
        interrupted = item.get("interrupted", False)
        if not isinstance(interrupted, bool):
            raise TranscriptError(f"{where}: \"interrupted\" must be true or false", _HINT)
        turns.append(Message(role, content, interrupted, item.get("pinned") is True))
    return Conversation(system=system or None, turns=turns)


def format_of(path: Path) -> str:
    """"md" or "json", from the file's extension; a UsageError for any other."""
    suffix = path.suffix.lower()
    if suffix in MARKDOWN_SUFFIXES:
        return "md"
    if suffix == JSON_SUFFIX:
        return "json"
    raise UsageError(
        f"cannot tell the transcript format of {path}",
        "name the file .md, .markdown or .json",
    )


def save(path: Path, info: ConversationInfo | None, conversation: Conversation,
         metas: Sequence[ReplyMeta | None] | None = None,
         attachments: Sequence[Sequence[dict[str, Any]]] | None = None, *,
         tree: Tree | None = None) -> None:
    """Write the conversation to `path`, as Markdown or JSON by its extension (with its
    branches given its `tree`, as `to_markdown` and `to_json` write them)."""
    path = Path(path)
    render = to_markdown if format_of(path) == "md" else to_json
    text = render(info, conversation, metas, attachments, tree=tree)
    try:
        path.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise TranscriptError(
            f"cannot write {path}: {exc.strerror or exc}",
            "check that its folder exists and is writable",
        ) from exc


def save_recovery(folders: Sequence[Path], model: str | None, conversation: Conversation,
                  metas: Sequence[ReplyMeta | None] | None = None) -> Path:
    """Write `conversation` to chatcli-unsaved-<time>-<pid>.json in the first folder that
    takes it (0600, never overwriting a file); a TranscriptError if none does."""
    info = None
    if model is not None:
        now = time.time()
        info = ConversationInfo(0, "", model, conversation.system, now, now,
                                len(conversation.turns))
    data = to_json(info, conversation, metas).encode("utf-8")
    stem = f"chatcli-unsaved-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    failures = []
    for folder in folders:
        try:
            path, fd = _new_file(Path(folder), stem)
        except OSError as exc:
            failures.append(f"{folder}: {exc.strerror or exc}")
            continue
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(data)
        except OSError as exc:  # e.g. the disk filled up: leave no half file
            failures.append(f"{path}: {exc.strerror or exc}")
            path.unlink(missing_ok=True)
            continue
        return path
    raise TranscriptError(
        "cannot write a recovery file (" + "; ".join(failures) + ")",
        "copy the conversation from the screen",
    )


def _new_file(folder: Path, stem: str) -> tuple[Path, int]:
    """A new private file STEM.json (or STEM-2.json, ...) in `folder`, opened for writing."""
    number = 1
    while True:
        path = folder / (stem + (f"-{number}" if number > 1 else "") + ".json")
        try:
            return path, os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            number += 1


def load(path: Path) -> Conversation:
    """Read a JSON transcript (Markdown is for reading only)."""
    path = Path(path)
    if path.suffix.lower() != JSON_SUFFIX:
        raise UsageError(
            f"cannot load {path}: only JSON transcripts (.json) can be loaded",
            "export the conversation with '--format json' and load that file",
        )
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise TranscriptError(f"{path} is not UTF-8 text", _HINT) from exc
    except OSError as exc:
        raise TranscriptError(
            f"cannot read {path}: {exc.strerror or exc}", "check the file's name and permissions"
        ) from exc
    return from_json(text, source=str(path))
