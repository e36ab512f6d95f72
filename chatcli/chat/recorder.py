"""Saving one conversation in the history as it happens, and keeping it when the history fails.

Contract: a `Recorder` mirrors one in-memory conversation into the history
`Store`: the `Conversation` its owner edits (the path the model sees) and, in
`tree` (`chatcli.branches.Tree`), every version of every message. Its owner
calls `added(meta)` after appending a message, `removed(n)` after taking the last
n away for good (their versions and what follows them go too), `cut(n)` after
leaving the last n for a new version (/retry, /edit: nothing is deleted, the
next message becomes a sibling), `switched()` after `tree.switch` (the
conversation's turns follow), `cleared()`, `system_changed()` and
`replaced(conversation)` (a conversation to be stored as a new one), whose
messages then come at once through `extended(n)` (one pass over the tree for all
n, as /load needs for a long transcript). Each call first writes what is still
pending, in the order it was made, then the new change.
The history's leaf follows the path: a message written becomes the leaf; a
switch moves it.

A write that fails (disk full, read-only, locked past the busy timeout, any
`StoreError`) never raises: the change stays pending in memory, one warning line
says so per outage (through `warn`), every later call tries again, and one line
says when the history works again. A history that could not be opened for
writing is reopened on those tries. `close()` tries one last time and, if
anything is still unsaved, writes the conversation (its path) to a recovery
file (JSON, loadable with /load) in the history's folder, else the temp folder,
and names it in a warning; then it closes the store.

Several processes on one conversation become branches of it, never interleaved
turns: a message is written as the child of this process's previous one, and if
another process wrote to the conversation since (its leaf moved) or is answering
it now (`Store.claim`, for a user message), the message is written where this
process's path goes on; where that makes a new branch, a warning says so once.
A trailing question that another process wrote and has not answered is left
off this process's path (it stays in the history, a sibling of the new
question). If the message this one follows is gone (another
process removed it, or the conversation), the path goes to a NEW conversation
that copies it (`Store.fork`), named in a warning. The claim is released when
the reply is saved.

With no store and no path the history is off: nothing is written or warned.
Knows nothing about models or the terminal.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from chatcli.branches import Node, Tree
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
        self.alias = alias
        self.warnings: list[str] = []
        self.warn = warn or self.warnings.append
        ids = list(message_ids or [])
        self.tree = self._load_tree(ids)
        self.leaf: int | None = ids[-1] if ids else None  # the history's, as last seen
        self._deletes: list[int] = []
        self._system_dirty = False
        self._mine: set[int] = set()  # ids this process wrote
        self._branched: set[int] = set()  # conversations whose branching was warned
        self._forks = 0  # how many times `_fork` changed the tree
        # Failing since the last success (and warned): open_history has warned already.
        self._failing = self.enabled and (store is None or store.readonly)
        self._recovered = False

    def _load_tree(self, ids: list[int]) -> Tree:
        """The conversation's tree: the history's, when it holds this path; else the path."""
        turns = self.conversation.turns
        if self.store is not None and self.conversation_id is not None and ids:
            try:
                rows, leaf = self.store.tree(self.conversation_id)
            except StoreError:
                rows, leaf = [], None
            tree = Tree.from_stored(rows, leaf)
            if [n.id for n in tree.path] == ids and len(ids) == len(turns):
                for node, message in zip(tree.path, turns, strict=True):
                    node.message = message
                return tree
        tree = Tree()
        for k, message in enumerate(turns):
            tree.add(message, id=ids[k] if k < len(ids) else None)
        return tree

    @property
    def enabled(self) -> bool:
        return self.path is not None

    @property
    def ids(self) -> list[int | None]:
        """The history's id of each turn of the conversation (None: not saved yet)."""
        return [n.id for n in self.tree.path]

    def unsaved(self) -> int:
        """How many messages (of any branch) are not in the history yet."""
        if not self.enabled:
            return 0
        return sum(1 for n in self.tree.nodes() if n.id is None)

    def _pending(self) -> bool:
        path = self.tree.path
        return bool(self._deletes or self.unsaved()
                    or (self._system_dirty and self.conversation_id is not None)
                    or (path and path[-1].id is not None and path[-1].id != self.leaf))

    # -- changes -----------------------------------------------------------------
    def added(self, meta: ReplyMeta | None = None,
              attachments: list[dict[str, Any]] | None = None) -> None:
        """The conversation's last message is new: save it (after what is pending), with
        its reply metadata or its attached files (path, size, sha256)."""
        self.tree.add(self.conversation.turns[-1], meta=meta, attachments=attachments or ())
        self.flush()

    def extended(self, count: int) -> None:
        """The conversation's last `count` messages are new (a loaded transcript): save
        them all with one flush (one pass over the tree, not one per message)."""
        turns = self.conversation.turns
        for message in turns[len(turns) - count:]:
            self.tree.add(message)
        self.flush()

    def removed(self, count: int) -> None:
        """The last `count` messages are gone for good, with their other versions and all
        that follows them."""
        gone = self.tree.remove(len(self.tree.path) - count)
        self._deletes += [n.id for n in gone if n.id is not None]
        saved = [n.id for n in self.tree.path if n.id is not None]
        self.leaf = saved[-1] if saved else None  # where the history's path now ends
        if self.enabled and self._deletes:
            self._attempt(self._write_deletes)

    def cut(self, count: int) -> None:
        """The last `count` messages left the path; they stay in the tree and the history,
        and the next message is a new version of the first of them."""
        self.tree.cut(len(self.tree.path) - count)

    def cleared(self) -> None:
        """Every message, of every branch, is gone."""
        self._deletes += [n.id for n in self.tree.nodes() if n.id is not None]
        self.tree = Tree()
        self.leaf = None
        if self.enabled and self._deletes:
            self._attempt(self._write_deletes)

    def switched(self) -> None:
        """`tree.switch` moved the path: the conversation's turns follow, and the history's
        leaf (when that message is saved)."""
        self.conversation.turns[:] = self.tree.messages()
        self.flush()

    def pinned(self, index: int, pinned: bool) -> None:
        """Turn `index` was pinned or unpinned (a message not saved yet carries its flag)."""
        node = self.tree.path[index]
        node.message = self.conversation.turns[index]
        message_id = node.id
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
        self.tree, self.leaf, self._system_dirty, self._recovered = Tree(), None, False, False

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
        if self.conversation_id is None:
            if not self.tree.roots:
                return
            self.conversation_id = store.new_conversation(self.alias(), self.conversation.system)
            self._system_dirty = False
            self.leaf = None
        elif self._system_dirty:
            store.set_system(self.conversation_id, self.conversation.system)
            self._system_dirty = False
        pending = [n for n in self.tree.nodes() if n.id is None][::-1]  # the next one last
        while pending:
            forks = self._forks
            self._write(store, pending.pop())
            if self._forks != forks:  # the tree changed under the list: read it again
                pending = [n for n in self.tree.nodes() if n.id is None][::-1]
        path = self.tree.path
        if path and path[-1].id != self.leaf:  # a switch, or versions saved late
            store.set_leaf(self.conversation_id, path[-1].id)
            self.leaf = path[-1].id

    def _write(self, store: Store, node: Node) -> None:
        conv_id = self.conversation_id
        assert conv_id is not None
        message = node.message
        parent = node.parent.id if node.parent is not None else None
        try:
            try:
                if message.role == "user" and not store.claim(conv_id):
                    raise ConversationChanged(conv_id, busy=True)
                new = store.add_message(conv_id, message, node.meta, parent=parent,
                                        expect_leaf=self.leaf, attachments=node.attachments)
            except ConversationChanged as exc:
                left_out = self._step_aside(node) if exc.busy else 0
                parent = node.parent.id if node.parent is not None else None
                new = store.add_message(conv_id, message, node.meta, parent=parent,
                                        attachments=node.attachments)
                rows, _ = store.tree(conv_id)
                if any(r.parent_id == parent and r.id != new for r in rows):  # a new branch
                    self._warn_branch(conv_id, exc.busy, left_out)
        except StoreError as exc:
            if exc.kind != "missing":  # the message it follows, or the conversation, is gone
                raise
            self._fork(store, node, ConversationChanged(conv_id))
            return
        node.id = self.leaf = new
        self._mine.add(new)
        if message.role == "assistant":
            store.release(conv_id)

    def _step_aside(self, node: Node) -> int:
        """Move `node` (a question) beside the unanswered questions of another process
        that precede it; returns how many those are."""
        parent, left_out = node.parent, 0
        while (parent is not None and parent.message.role == "user"
               and parent.id is not None and parent.id not in self._mine):
            parent, left_out = parent.parent, left_out + 1
        if left_out:
            assert node.parent is not None
            node.parent.children.remove(node)
            node.parent = parent
            (parent.children if parent is not None else self.tree.roots).append(node)
            path = self.tree.path
            if node in path:
                index = path.index(node)
                path[index - left_out:index + 1] = [node]
                self.conversation.turns[:] = self.tree.messages()
        return left_out

    def _warn_branch(self, conv_id: int, busy: bool, left_out: int) -> None:
        if conv_id in self._branched:
            return
        self._branched.add(conv_id)
        reason = ("is being answered by another chatcli process" if busy
                  else "was changed by another chatcli process since this one read it")
        beside = ", beside the question being answered" if left_out == 1 else (
            f", beside its {left_out} unanswered last questions" if left_out else "")
        self.warn(f"conversation {conv_id} {reason}; this exchange is saved as a new branch "
                  f"of it{beside} ('chatcli history show --tree {conv_id}' shows them all)")

    def _fork(self, store: Store, node: Node, why: ConversationChanged) -> None:
        """Save the path in a new conversation: the messages before `node` copied, the
        rest written after. Versions off the path stay where they were."""
        old = why.conv_id
        path = self.tree.path
        self._forks += 1
        if node not in path:  # a version off the path: what it followed is gone
            top = node
            while top.parent is not None and top.parent.id is None:
                top = top.parent
            (top.parent.children if top.parent is not None else self.tree.roots).remove(top)
            self.warn(f"conversation {old} was changed by another chatcli process: a version "
                      "of one of its messages could not be saved, the message it follows is "
                      "gone")
            return
        keep = path.index(node)
        copied = [(n.id, n.message) for n in path[:keep]]
        new_id, new_ids = store.fork(old, self.alias(), self.conversation.system, copied)
        store.release(old)
        tree = Tree()
        for n, message_id in zip(self.tree.path, [*new_ids, *[None] * len(self.tree.path)],
                                 strict=False):
            tree.add(n.message, meta=n.meta, attachments=n.attachments, id=message_id)
        self.tree, self.conversation_id = tree, new_id
        self.leaf = new_ids[-1] if new_ids else None
        self._mine.update(new_ids)
        self._system_dirty = False
        copy = f", a copy of its first {keep} message(s)" if keep else ""
        self.warn(f"conversation {old} was changed by another chatcli process since this one "
                  f"read it; this exchange is saved as a new conversation {new_id}{copy}")

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
        metas = [n.meta for n in self.tree.path]
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
