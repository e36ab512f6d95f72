"""Messages and the conversation they form.

Contract: `Message` is one immutable turn (system, user or assistant), with an
`interrupted` flag for a reply the user stopped and a `pinned` flag for a turn the
user wants kept in the context window (`chatcli.context.pack` keeps it while older
exchanges are dropped around it). `Conversation` holds an optional system prompt
and the user/assistant turns in order, and edits them the way the chat commands
do: append, undo (drop the last exchange), retry (drop the last reply), clear,
pin and unpin. An *exchange* is a user message plus the assistant reply that
follows it (if any).

Pins live on the messages themselves, so every edit keeps them right without
bookkeeping: undo, retry and clear remove a pinned message together with its pin,
and turns copied into another conversation keep theirs. Pinning is per message:
pinning a user message pins that message only, not its reply (pin the reply too
to keep both). The system prompt is always sent and cannot be pinned.
`pinned` takes no part in equality nor in `as_dict`: a pinned message equals the
same message unpinned, and chat templates never see the flag.

Knows nothing about tokens, models, the terminal or storage (persisting pins is
the store's job: `pinned_indices()` names them).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

from chatcli.errors import UsageError

Role = Literal["system", "user", "assistant"]


@dataclass(frozen=True)
class Message:
    role: Role
    content: str
    interrupted: bool = False
    # Kept in the context window by `pack`; not compared, not rendered (see the module doc).
    pinned: bool = field(default=False, compare=False)

    def as_dict(self) -> dict[str, str]:
        """The form chat templates take."""
        return {"role": self.role, "content": self.content}


@dataclass
class Conversation:
    system: str | None = None
    turns: list[Message] = field(default_factory=list)

    def messages(self) -> list[Message]:
        """System prompt (if any) followed by every turn."""
        head = [Message("system", self.system)] if self.system else []
        return head + list(self.turns)

    def add_user(self, content: str, *, pinned: bool = False) -> Message:
        msg = Message("user", content, pinned=pinned)
        self.turns.append(msg)
        return msg

    def add_assistant(self, content: str, interrupted: bool = False) -> Message:
        msg = Message("assistant", content, interrupted)
        self.turns.append(msg)
        return msg

    def exchanges(self) -> list[list[Message]]:
        """Turns grouped into exchanges: [user, assistant?] (a leading reply stands alone)."""
        groups: list[list[Message]] = []
        for msg in self.turns:
            if msg.role == "user" or not groups:
                groups.append([msg])
            else:
                groups[-1].append(msg)
        return groups

    def undo(self) -> list[Message]:
        """Remove the last exchange; returns what was removed ([] when empty)."""
        groups = self.exchanges()
        if not groups:
            return []
        removed = groups[-1]
        del self.turns[len(self.turns) - len(removed) :]
        return removed

    def retry(self) -> Message | None:
        """Drop the last reply so the last user message can be answered again.

        Returns that user message, or None when there is none.
        """
        if self.turns and self.turns[-1].role == "assistant":
            self.turns.pop()
        if self.turns and self.turns[-1].role == "user":
            return self.turns[-1]
        return None

    def clear(self) -> None:
        self.turns.clear()

    def pin(self, index: int) -> Message:
        """Pin turn `index` (0-based, as `TurnReport.index`; users see `index + 1`).

        The turn is replaced by a pinned copy, which is returned (pinning twice is
        harmless). Only that message is pinned, not the rest of its exchange. Raises
        `UsageError` for an index that names no turn.
        """
        return self._set_pinned(index, True)

    def unpin(self, index: int) -> Message:
        """Unpin turn `index` (0-based); returns the unpinned message (harmless if not pinned)."""
        return self._set_pinned(index, False)

    def pinned_indices(self) -> list[int]:
        """The 0-based indices of the pinned turns, in order."""
        return [i for i, msg in enumerate(self.turns) if msg.pinned]

    def check_index(self, index: int) -> None:
        """Raise `UsageError` unless `index` (0-based) names a turn; the message numbers
        it as users do (`index + 1`)."""
        if not 0 <= index < len(self.turns):
            count = len(self.turns)
            raise UsageError(
                f"there is no message {index + 1}: the conversation has {count} message"
                + ("" if count == 1 else "s"),
                "/context lists the messages with their numbers",
            )

    def _set_pinned(self, index: int, pinned: bool) -> Message:
        self.check_index(index)
        msg = self.turns[index]
        if msg.pinned != pinned:
            msg = self.turns[index] = replace(msg, pinned=pinned)
        return msg
