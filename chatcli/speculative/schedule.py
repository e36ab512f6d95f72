"""How many tokens to draft next: a fixed N, or adaptive.

Contract: `Schedule(fixed, most)` answers `length()` before each round (0: decode this
token plainly, no draft; the first `PLAIN_FIRST` tokens always are, so that every
answer times plain steps for its speed-up estimate) and learns from
`verified(drafted, accepted)` after it and from `nothing()` when the drafter found
nothing. Adaptive (no N): start at `START`, grow by
`GROW` while every drafted token is accepted (up to `most`), fall back to one more than
the tokens accepted otherwise; after a round that accepted nothing, skip drafting for
1, 2, 4 ... up to `MAX_PAUSE` tokens (reset by a round that accepts one), so that a
drafter that keeps guessing wrong costs at most a verification every `MAX_PAUSE`
tokens. A fixed N drafts N every time (the drafter may find fewer).
Pure: knows nothing about models, tokens or time.
"""

from __future__ import annotations

START = 4
GROW = 2
MAX_PAUSE = 16
PLAIN_FIRST = 2


class Schedule:
    def __init__(self, fixed: int | None, most: int, plain_first: int = PLAIN_FIRST) -> None:
        self.fixed = fixed
        self.most = most
        self.next = min(START, most) if fixed is None else fixed
        self.pause = plain_first  # tokens still to decode plainly
        self.missed = 0  # rounds in a row that accepted nothing

    def length(self) -> int:
        if self.pause > 0:
            self.pause -= 1
            return 0
        return self.next

    def verified(self, drafted: int, accepted: int) -> None:
        if self.fixed is not None:
            return
        if accepted == 0:
            self.missed += 1
            self.pause = min(2 ** (self.missed - 1), MAX_PAUSE)
        else:
            self.missed = 0
        if accepted == drafted:
            self.next = min(self.next + GROW, self.most)
        else:
            self.next = max(1, min(accepted + 1, self.most))

    def nothing(self) -> None:
        """The drafter had nothing to offer (no match): nothing to learn."""
