"""A conversation as a tree: every version of every message, and the path shown.

Contract: `Tree` holds `Node`s (a message, its parent, its row id in the history
once saved) and `path`, the branch the user is on: root to leaf, the turns the
model sees. Appending adds a child of the path's last node. `cut(i)` shortens
the path to its first i nodes without forgetting anything, so the next message
becomes a *version* (a sibling) of the one that was at i: that is how /retry and
/edit branch. `remove(i)` forgets path[i] and everything under it (/undo,
/clear). `versions(i)` are the siblings of path[i] in the order they were made;
`switch(i, k)` puts the k-th of them on the path, followed down to the newest
leaf beneath it (where the user last was on that branch). `from_stored` builds
the tree from the history's rows (`chatcli.store.StoredMessage`, with their
parent ids) and the conversation's current leaf.

`where_it_parts` helps tell versions apart on one line: a version shown from a
little before where it leaves the most alike of its siblings. Nodes are compared
by identity. Knows nothing about storage, models or the
terminal: the history (`chatcli.store`) persists the tree, the recorder
(`chatcli.chat.recorder`) keeps the two in step.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from chatcli.conversation import Message, Role
from chatcli.errors import UsageError


@dataclass(eq=False)
class Node:
    message: Message
    parent: Node | None = None
    id: int | None = None  # its row in the history, once saved
    seq: int = 0  # order of creation in the tree (saved rows: their id order)
    meta: Any = None  # chatcli.store.ReplyMeta of a reply
    attachments: tuple[dict[str, Any], ...] = ()  # a user message's files (path, size, sha256)
    created: float | None = None  # when it was saved, for rows read from the history
    children: list[Node] = field(default_factory=list)

    def newest_leaf(self) -> Node:
        """The most recently made leaf at or below this node."""
        best, stack = self, [self]
        while stack:
            node = stack.pop()
            if not node.children and (best.children or node.seq > best.seq):
                best = node
            stack.extend(node.children)
        return best

    def walk(self) -> Iterator[Node]:
        """This node and everything below it, depth first, versions in order."""
        stack = [self]  # not recursive: a conversation may be thousands of messages deep
        while stack:
            node = stack.pop()
            yield node
            stack.extend(reversed(node.children))


class Tree:
    def __init__(self) -> None:
        self.roots: list[Node] = []
        self.path: list[Node] = []
        self._seq = 0

    # -- building --------------------------------------------------------------
    def add(self, message: Message, *, meta: Any = None,
            attachments: Sequence[dict[str, Any]] = (), id: int | None = None) -> Node:
        """Append `message` to the path (a child of its last node, or a new root)."""
        parent = self.path[-1] if self.path else None
        node = self._attach(Node(message, parent, id, meta=meta, attachments=tuple(attachments)))
        self.path.append(node)
        return node

    def _attach(self, node: Node) -> Node:
        self._seq = max(self._seq, node.seq) + 1
        node.seq = self._seq
        (node.parent.children if node.parent is not None else self.roots).append(node)
        return node

    @classmethod
    def from_stored(cls, rows: Sequence[Any], leaf: int | None) -> Tree:
        """The tree of a conversation's history rows (`StoredMessage`s with `parent_id`),
        its path ending at `leaf` (None: an empty path). A row whose parent is missing
        becomes a root."""
        tree = cls()
        by_id: dict[int, Node] = {}
        for row in sorted(rows, key=lambda r: r.id):
            message = Message(cast(Role, row.role), row.content, row.interrupted, row.pinned)
            node = Node(message, by_id.get(row.parent_id), row.id, seq=row.id, meta=row.meta,
                        attachments=tuple(row.attachments), created=row.created)
            (node.parent.children if node.parent is not None else tree.roots).append(node)
            by_id[row.id] = node
        tree._seq = max(by_id, default=0)
        node = by_id.get(leaf) if leaf is not None else None
        while node is not None:
            tree.path.append(node)
            node = node.parent
        tree.path.reverse()
        return tree

    # -- the path ----------------------------------------------------------------
    def messages(self) -> list[Message]:
        return [n.message for n in self.path]

    def cut(self, index: int) -> list[Node]:
        """Leave the path after its first `index` nodes (they stay in the tree); returns
        the nodes left."""
        left = self.path[index:]
        del self.path[index:]
        return left

    def remove(self, index: int) -> list[Node]:
        """Forget path[index] and everything below it (and the rest of the path); returns
        every node forgotten."""
        if index >= len(self.path):
            return []
        top = self.path[index]
        gone = list(top.walk())
        siblings = top.parent.children if top.parent is not None else self.roots
        siblings.remove(top)
        del self.path[index:]
        return gone

    def versions(self, index: int) -> list[Node]:
        """path[index] and its siblings, in the order they were made."""
        node = self.path[index]
        return list(node.parent.children if node.parent is not None else self.roots)

    def version(self, index: int) -> tuple[int, int]:
        """Which version path[index] is (1-based) and how many there are."""
        versions = self.versions(index)
        return versions.index(self.path[index]) + 1, len(versions)

    def branch_points(self) -> list[int]:
        """The path's indices whose message has more than one version."""
        return [i for i in range(len(self.path)) if len(self.versions(i)) > 1]

    def switch(self, index: int, k: int) -> Node:
        """Put version `k` (1-based) of path[index] on the path, then follow it down to its
        newest leaf; returns the new last node."""
        versions = self.versions(index)
        if not 1 <= k <= len(versions):
            raise UsageError(f"there is no version {k} of message {index + 1}: it has "
                             f"{len(versions)}", "/branches lists them")
        leaf = versions[k - 1].newest_leaf()
        below: list[Node] = []
        node: Node | None = leaf
        while node is not None and node is not self.path[index].parent:
            below.append(node)
            node = node.parent
        del self.path[index:]
        self.path.extend(reversed(below))
        return leaf

    def nodes(self) -> list[Node]:
        """Every node, in the order they were made."""
        return sorted((n for root in self.roots for n in root.walk()), key=lambda n: n.seq)


SHARED_SHOWN = 24  # characters two versions may share before a line skips them
CONTEXT = 12  # characters kept before the place where a version parts from the others


def where_it_parts(text: str, others: Sequence[str]) -> str:
    """`text` from a word shortly before where it parts from the most alike of `others`
    (after "… "), when they begin with more than SHARED_SHOWN characters in common;
    else `text` itself."""
    shared = max((_common(text, other) for other in others), default=0)
    if shared <= SHARED_SHOWN:
        return text
    start = text.rfind(" ", 0, shared - CONTEXT) + 1
    return "… " + text[start:] if start > 0 else text


def _common(a: str, b: str) -> int:
    n, end = 0, min(len(a), len(b))
    while n < end and a[n] == b[n]:
        n += 1
    return n
