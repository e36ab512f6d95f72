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
     "messages": [{"role": "user" | "assistant", "content": "<text>",
                   "interrupted": false,
                   "meta": {"model", "strategy", "params", "seed", "prompt_tokens",
                            "completion_tokens", "time_to_first_token_s",
                            "tokens_per_second"}  (optional, assistant replies),
                   "attachments": [{"path", "size", "sha256"}]  (optional, user messages
                   with files attached: -f, /read, /glob; their text is in "content"),
                   "pinned": true  (optional: kept in the window, /pin)}]}

`save_recovery` writes a conversation the history could not keep to a new private
JSON file (0600) in the first of the given folders that takes it, for `/load`.

`from_json` ignores "meta" and any key it does not know. In Markdown an
interrupted reply is followed by "*(interrupted)*" and a reply's metadata by one
italic line. Times are local. Knows nothing about SQLite, models or the terminal.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from chatcli.conversation import Conversation, Message
from chatcli.errors import ChatcliError, UsageError
from chatcli.store import ConversationInfo, ReplyMeta, make_title

FORMAT_VERSION = 1
MARKDOWN_SUFFIXES = (".md", ".markdown")
JSON_SUFFIX = ".json"
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
    """One line: model, strategy (parameters that are set), seed, tokens, speed."""
    params = ", ".join(
        f"{k}={v}" for k, v in sorted(meta.params.items())
        if k not in ("strategy", "seed") and v not in (None, [], ())
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
    return "attached: " + ", ".join(f"{f['path']} ({f['size']} bytes)" for f in files)


def to_markdown(info: ConversationInfo | None, conversation: Conversation,
                metas: Sequence[ReplyMeta | None] | None = None,
                attachments: Sequence[Sequence[dict[str, Any]]] | None = None) -> str:
    """The conversation as a Markdown document (ends with one newline); a user message
    with `attachments` (one list per turn) is followed by an italic line naming them."""
    metas = _metas(conversation, metas)
    files = list(attachments) if attachments is not None else [()] * len(conversation.turns)
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
    for message, meta, attached in zip(conversation.turns, metas, files, strict=True):
        blocks += [f"## {message.role.capitalize()}", message.content.rstrip() or "*(empty)*"]
        if attached:
            blocks.append(f"*{_attached(attached)}*")
        if message.interrupted:
            blocks.append("*(interrupted)*")
        if meta is not None:
            blocks.append(f"*{describe_meta(meta)}*")
    if not conversation.turns:
        blocks.append("*(no messages)*")
    return "\n\n".join(blocks) + "\n"


def to_json(info: ConversationInfo | None, conversation: Conversation,
            metas: Sequence[ReplyMeta | None] | None = None,
            attachments: Sequence[Sequence[dict[str, Any]]] | None = None) -> str:
    """The conversation as a version-1 JSON transcript (indented; ends with a newline)."""
    messages: list[dict[str, Any]] = []
    files = list(attachments) if attachments is not None else [()] * len(conversation.turns)
    for message, meta, attached in zip(conversation.turns, _metas(conversation, metas), files,
                                       strict=True):
        item: dict[str, Any] = {
            "role": message.role,
            "content": message.content,
            "interrupted": message.interrupted,
        }
        if meta is not None:
            item["meta"] = dataclasses.asdict(meta)
        if attached:
            item["attachments"] = [dict(f) for f in attached]
        if message.pinned:
            item["pinned"] = True
        messages.append(item)
    doc = {
        "chatcli": FORMAT_VERSION,
        "model": info.model if info is not None else None,
        "system": conversation.system or None,
        "messages": messages,
    }
    return json.dumps(doc, ensure_ascii=False, indent=2, default=str) + "\n"


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
         attachments: Sequence[Sequence[dict[str, Any]]] | None = None) -> None:
    """Write the conversation to `path`, as Markdown or JSON by its extension."""
    path = Path(path)
    render = to_markdown if format_of(path) == "md" else to_json
    text = render(info, conversation, metas, attachments)
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
