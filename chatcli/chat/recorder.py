"""Saving one conversation in the history as it happens, and keeping it when the history fails.

Contract: a `Recorder` mirrors one in-memory `Conversation` into the history
`Store`. Its owner calls `added(meta)` after appending a message, `removed(n)`
after taking the last n away (or before, for a clear), `system_changed()` and
`replaced(conversation)` (a conversation to be stored as a new one). Each call
first writes what is still pending, in order, then the new change.

A write that fails (disk full, read-only, locked past the busy timeout, any
`StoreError`) never raises: the change stays pending in memory, one warning line
says so per outage (through `warn`), every later call tries again, and one line
says when the history works again. A history that could not be opened for
writing is reopened on those tries. `close()` tries one last time and, if
anything is still unsaved, writes the whole conversation to a recovery file
(JSON, loadable with /load) in the history's folder, else the temp folder, and
names it in a warning; then it closes the store.

Several processes on one conversation: a user message is written only if no other
chatcli is answering the conversation (`Store.claim`) and, in the same write
transaction, the conversation still ends where this process read it. Otherwise
the turns go to a NEW conversation that copies the earlier ones (`Store.fork`),
and a warning names it; a trailing question that another process wrote and has
not answered is left out of the copy and of the in-memory conversation. The
claim is released when the reply is saved.

With no store and no path the history is off: nothing is written or warned.
Knows nothing about models or the terminal.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from chatcli.conversation import Conversation
from chatcli.store import ConversationChanged, ReplyMeta, Store, StoreError


def open_history(warn: Callable[[str], None], need_read: bool) -> Store | None:
    """The history to write to; if it cannot be written now, a warning and the
    history opened only to read (None if that fails too and `need_read` is False).

    A chat then goes on, its messages pending until the history can be written.
    """
    try:
        return Store.open()
    except StoreError as exc:
        problem = exc
    try:
        store: Store | None = Store.open(readonly=True)
    except StoreError:
        if need_read:
            raise problem from None
        store = None
    warn(f"{problem.message}; {problem.hint}; {_KEPT}")
    return store


_KEPT = "chatcli keeps the conversation in memory and tries again on every turn"


class Recorder:
    def __init__(
        self,
        store: Store | None,
        conversation: Conversation,
        conversation_id: int | None = None,
        message_ids: list[int] | None = None,
        *,
        alias: Callable[[], str],
        warn: Callable[[str], None] | None = None,
        path: Path | None = None,
    ) -> None:
        self.store = store
        self.path = store.path if store is not None else path
        self.conversation = conversation
        self.conversation_id = conversation_id
        ids = list(message_ids or [])
        self.ids: list[int | None] = [*ids, *[None] * (len(conversation.turns) - len(ids))]
        self.alias = alias
        self.warnings: list[str] = []
        self.warn = warn or self.warnings.append
        self._metas: dict[int, ReplyMeta] = {}  # replies not saved yet, by turn index
        self._attached: dict[int, list[dict[str, Any]]] = {}  # a user message's files, likewise
        self._deletes: list[int] = []
        self._system_dirty = False
        self._mine: set[int] = set()  # ids this process wrote
        # Failing since the last success (and warned): open_history has warned already.
        self._failing = self.enabled and (store is None or store.readonly)
        self._recovered = False

    @property
    def enabled(self) -> bool:
        return self.path is not None

    def unsaved(self) -> int:
        """How many messages are not in the history yet."""
        if not self.enabled:
            return 0
        return sum(1 for i in self.ids if i is None)

    def _pending(self) -> bool:
        return bool(self._deletes or self.unsaved()
                    or (self._system_dirty and self.conversation_id is not None))

    # -- changes -----------------------------------------------------------------
    def added(self, meta: ReplyMeta | None = None,
              attachments: list[dict[str, Any]] | None = None) -> None:
        """The conversation's last message is new: save it (after what is pending), with
        its reply metadata or its attached files (path, size, sha256)."""
        self.ids.append(None)
        if meta is not None:
            self._metas[len(self.ids) - 1] = meta
        if attachments:
            self._attached[len(self.ids) - 1] = list(attachments)
        self.flush()

    def removed(self, count: int) -> None:
        """The last `count` messages are gone (or about to go, for a clear)."""
        keep = len(self.ids) - count
        self._deletes += [i for i in self.ids[keep:] if i is not None]
        del self.ids[keep:]
        self._metas = {k: v for k, v in self._metas.items() if k < keep}
        self._attached = {k: v for k, v in self._attached.items() if k < keep}
        if self.enabled and self._deletes:
            self._attempt(self._write_deletes)

    def pinned(self, index: int, pinned: bool) -> None:
        """Turn `index` was pinned or unpinned (a message not saved yet carries its flag)."""
        message_id = self.ids[index] if index < len(self.ids) else None
        if message_id is not None and self.enabled:
            self._attempt(lambda: self._writable().set_pinned(message_id, pinned))

    def system_changed(self) -> None:
        self._system_dirty = True
        self.flush()

    def replaced(self, conversation: Conversation) -> None:
        """Start over with `conversation` (empty; its messages come through `added`)."""
        if self.enabled and not self.flush():
            self._recover()
        self.conversation = conversation
        self.conversation_id = None
        self.ids, self._metas, self._system_dirty, self._recovered = [], {}, False, False
        self._attached = {}

    # -- writing -----------------------------------------------------------------
    def flush(self) -> bool:
        """Write everything pending; True when nothing is left unsaved."""
        if not self.enabled or not self._pending():
            return True
        return self._attempt(self._write_pending)

    def _attempt(self, write: Callable[[], None]) -> bool:
        try:
            write()
        except StoreError as exc:
            if not self._failing:
                self.warn(f"{exc.message}; {exc.hint}; {_KEPT}")
            self._failing = True
            return False
        if self._failing and not self._pending():
            self._failing = False
            self.warn("the history works again; the waiting messages are saved")
        return True

    def _writable(self) -> Store:
        if self.store is None or self.store.readonly:
            store = Store.open(self.path)
            if self.store is not None:
                self.store.close()
            self.store = store
        return self.store

    def _write_deletes(self) -> None:
        store = self._writable()
        store.delete_messages(self._deletes)
        self._deletes = []

    def _write_pending(self) -> None:
        store = self._writable()
        if self._deletes:
            self._write_deletes()
        turns = self.conversation.turns
        if self.conversation_id is None:
            if not turns:
                return
            self.conversation_id = store.new_conversation(self.alias(), self.conversation.system)
            self._system_dirty = False
        elif self._system_dirty:
            store.set_system(self.conversation_id, self.conversation.system)
            self._system_dirty = False
        while None in self.ids:
            index = self.ids.index(None)
            message = turns[index]
            conv_id = self.conversation_id
            try:
                if message.role == "user" and not store.claim(conv_id):
                    raise ConversationChanged(conv_id, busy=True)
                expect = [i for i in self.ids[:index] if i is not None]
                new = store.add_message(conv_id, message, self._metas.get(index), expect=expect,
                                        attachments=self._attached.get(index, ()))
            except ConversationChanged as exc:
                self._fork(store, index, exc)
                continue
            except StoreError as exc:
                if exc.kind == "missing":  # deleted meanwhile (history rm)
                    self._fork(store, index, ConversationChanged(conv_id))
                    continue
                raise
            self.ids[index] = new
            self._mine.add(new)
            self._metas.pop(index, None)
            self._attached.pop(index, None)
            if message.role == "assistant":
                store.release(conv_id)

    def _fork(self, store: Store, index: int, why: ConversationChanged) -> None:
        """Save the turns before `index` and what follows in a new conversation."""
        old = why.conv_id
        turns = self.conversation.turns
        keep = index
        if turns[index].role == "user":
            # Another process's question that has no answer is not ours to continue.
            while keep and turns[keep - 1].role == "user" and self.ids[keep - 1] not in self._mine:
                keep -= 1
        left_out = index - keep
        if left_out:
            del turns[keep:index]
            del self.ids[keep:index]
            self._metas = {(k - left_out if k >= index else k): v for k, v in self._metas.items()}
        copied = [(i, m) for i, m in zip(self.ids[:keep], turns[:keep], strict=True)]
        new_id, new_ids = store.fork(old, self.alias(), self.conversation.system, copied)
        store.release(old)
        self.conversation_id = new_id
        self.ids[:keep] = new_ids
        self._mine.update(new_ids)
        self._system_dirty = False
        reason = ("is being answered by another chatcli process" if why.busy
                  else "was changed by another chatcli process since this one read it")
        copy = f", a copy of its first {keep} message(s)" if keep else ""
        note = " (without its unanswered last question)" if left_out == 1 else (
            f" (without its {left_out} unanswered last questions)" if left_out else "")
        self.warn(f"conversation {old} {reason}; this exchange is saved as a new "
                  f"conversation {new_id}{copy}{note}")

    # -- the end ----------------------------------------------------------------
    def close(self) -> Path | None:
        """Save what is pending, else write the recovery file (its path is returned)."""
        path = None
        try:
            if self.enabled and not self.flush():
                path = self._recover()
        finally:
            if self.store is not None:
                self.store.close()
                self.store = None
        return path

    def _recover(self) -> Path | None:
        from chatcli import transcript

        if self._recovered or not self.conversation.turns:
            return None
        assert self.path is not None
        metas = [self._metas.get(k) for k in range(len(self.conversation.turns))]
        folders = [self.path.parent, Path(tempfile.gettempdir())]
        try:
            path = transcript.save_recovery(folders, self.alias(), self.conversation, metas)
        except transcript.TranscriptError as exc:
            self.warn(f"{self.unsaved()} message(s) are not in the history, and {exc.message}")
            return None
        self._recovered = True
        self.warn(f"{self.unsaved()} message(s) could not be saved in the history; the whole "
                  f"conversation is in {path} (chatcli chat, then /load {path})")
        return path
