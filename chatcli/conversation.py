"""Messages and the conversation they form.

Contract: `Message` is one immutable turn (system, user or assistant), with an
`interrupted` flag for a reply the user stopped. `Conversation` holds an optional
system prompt and the user/assistant turns in order, and edits them the way the
chat commands do: append, undo (drop the last exchange), retry (drop the last
reply), clear. An *exchange* is a user message plus the assistant reply that
follows it (if any).

Knows nothing about tokens, models or storage.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Role = Literal["system", "user", "assistant"]


@dataclass(frozen=True)
class Message:
    role: Role
    content: str
    interrupted: bool = False

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

    def add_user(self, content: str) -> Message:
        msg = Message("user", content)
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
