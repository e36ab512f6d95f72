"""How many tokens to draft next: a fixed N, or adaptive and paid for by what it saves.

Contract: `Schedule(fixed, most)` answers `length()` before each round (0: decode this
token plainly, no draft; the first `plain_first` tokens always are, so that every
answer times plain steps: its speed-up estimate and the yardstick below). It learns
the time of plain steps from `plain(seconds)` and of rounds from
`verified(drafted, accepted, seconds)`; `nothing()` says the drafter found nothing.

Adaptive (no N): start at `START` tokens, grow by `GROW` while every drafted token is
accepted (up to `most`), fall back to one more than the tokens accepted otherwise. A
round pays when it took less time than plain steps would have for the tokens it gave
(by the running mean of plain steps). One that was wrong somewhere and did not pay is a
miss: drafting pauses for 1, then 4, 16, 64 ... `MAX_PAUSE` tokens, and only a round
that pays ends the pauses (one that was right throughout but did not pay, being short,
drafts more next time). A verification costs more than a plain step where the plain
step is compiled and the verification eager (chatcli's default mode: two tokens cost
about two steps), so a drafter that keeps guessing wrong costs a few rounds of one
token per answer, not one per token. A fixed N drafts N every time (the drafter may
find fewer) and never pauses.
Pure: knows nothing about models or tokens.
"""

from __future__ import annotations

START = 4
GROW = 2
MAX_PAUSE = 256
PLAIN_FIRST = 2


class Schedule:
    def __init__(self, fixed: int | None, most: int, plain_first: int = PLAIN_FIRST) -> None:
        self.fixed = fixed
        self.most = most
        self.next = min(START, most) if fixed is None else fixed
        self.pause = plain_first  # tokens still to decode plainly
        self.missed = 0  # rounds in a row that did not pay
        self.step_s: float | None = None  # running mean of a plain step's time

    def length(self) -> int:
        if self.pause > 0:
            self.pause -= 1
            return 0
        return self.next

    def plain(self, seconds: float) -> None:
        self.step_s = seconds if self.step_s is None else 0.8 * self.step_s + 0.2 * seconds

    def verified(self, drafted: int, accepted: int, seconds: float | None = None) -> None:
        if self.fixed is not None:
            return
        if self.step_s is None or seconds is None:  # nothing to weigh it against yet
            paid = accepted == drafted
        else:
            paid = seconds < (accepted + 1) * self.step_s
        if paid:
            self.missed = 0
        if accepted == drafted:  # all right: draft more (a longer round pays better)
            self.next = min(self.next + GROW, self.most)
            return
        if not paid:
            self.missed += 1
            self.pause = min(4 ** (self.missed - 1), MAX_PAUSE)
        self.next = max(1, min(accepted + 1, self.most))

    def nothing(self) -> None:
        """The drafter had nothing to offer (no match): nothing to learn."""
