"""How many tokens to draft next: a fixed N, or as many as pay for themselves.

Contract: `Schedule(fixed, most)` answers `length()` before each round (0: decode this
token plainly, no draft; the first `plain_first` tokens always are, so that every
answer times plain steps: its speed-up estimate and the yardstick below). It learns
the time of plain steps from `plain(seconds)` and of rounds from
`verified(drafted, accepted, seconds)`.
A fixed N drafts N every time (the drafter may find fewer).

Adaptive (no N) weighs what a round gives against what it costs, both measured in the
answer itself:
- what it gives: a round of k drafted tokens emits 1 + a + a^2 + ... + a^k tokens on
  average, a the chance that a drafted token is right, counted over the recent rounds
  (each accepted token a success, the rejected one a failure; older rounds weigh less;
  before any round, as if 4 of 5 were right);
- what it costs: its time over a plain step's (running means), fitted as c0 + c1 x
  (k + 1) to the recent rounds (before two lengths were timed, c1 is taken as
  `SLOPE`): a verification is an eager forward pass, and where plain steps run the
  compiled step (chatcli's default mode) two tokens cost about two steps, while in
  float32 sixteen cost little more than one.
It drafts the k (up to `most`) that gives the most tokens per plain step's time, when
that beats plain decoding by `MARGIN`; otherwise it decodes plainly for 1, then 4, 16,
64 ... `MAX_PAUSE` tokens, and tries one round after each pause to learn again (the
text may have turned to something the drafter knows). So a drafter that keeps guessing
wrong costs a few rounds per answer, and one that is right drafts long rounds.
Pure: knows nothing about models or tokens.
"""

from __future__ import annotations

MAX_PAUSE = 256
PLAIN_FIRST = 2
PRIOR_RIGHT, PRIOR_WRONG = 4.0, 1.0  # the chance of a right guess before any round: 0.8
DECAY = 0.85  # how much a round's counts weigh one round later
SLOPE = 0.3  # a verified position's cost in plain steps, before two lengths were timed
MARGIN = 1.05  # a round must be expected to give this many times plain decoding's speed
TIMED = 16  # rounds the cost fit looks back on


class Schedule:
    def __init__(self, fixed: int | None, most: int, plain_first: int = PLAIN_FIRST) -> None:
        self.fixed = fixed
        self.most = max(1, most)
        self.pause = plain_first  # tokens still to decode plainly
        self.missed = 0  # pauses in a row
        self.probe = False  # the next round is a try after a pause
        self.step_s: float | None = None  # running mean of a plain step's time
        self.right, self.wrong = PRIOR_RIGHT, PRIOR_WRONG
        self.timed: list[tuple[int, float]] = []  # (positions verified, cost in steps)

    # -- what was measured ---------------------------------------------------------------
    def plain(self, seconds: float) -> None:
        self.step_s = seconds if self.step_s is None else 0.8 * self.step_s + 0.2 * seconds

    def verified(self, drafted: int, accepted: int, seconds: float | None = None) -> None:
        self.right = self.right * DECAY + accepted
        self.wrong = self.wrong * DECAY + (accepted < drafted)
        if self.step_s and seconds is not None:
            self.timed = [*self.timed[-(TIMED - 1):], (drafted + 1, seconds / self.step_s)]

    # -- what it expects -----------------------------------------------------------------
    @property
    def chance(self) -> float:
        """The chance that a drafted token is right."""
        return self.right / (self.right + self.wrong)

    def gives(self, k: int) -> float:
        """Tokens a round of `k` drafted tokens emits on average (the one after included)."""
        a = self.chance
        return float(k + 1) if a >= 1.0 else (1 - a ** (k + 1)) / (1 - a)

    def costs(self, k: int) -> float:
        """A round of `k` drafted tokens' time in plain steps (fitted; see the module)."""
        if not self.timed:
            return 1.0 + SLOPE * (k + 1)
        xs = [x for x, _ in self.timed]
        ys = [y for _, y in self.timed]
        mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
        spread = sum((x - mx) ** 2 for x in xs)
        slope = (sum((x - mx) * (y - my) for x, y in self.timed) / spread
                 if spread > 0 else SLOPE)
        slope = max(slope, 0.0)
        return max(my + slope * (k + 1 - mx), 1e-6)

    def best(self) -> tuple[int, float]:
        """The draft length that gives the most tokens per plain step's time, and that
        many tokens per step."""
        return max(((k, self.gives(k) / self.costs(k)) for k in range(1, self.most + 1)),
                   key=lambda pair: pair[1])

    # -- the decision --------------------------------------------------------------------
    def length(self) -> int:
        if self.pause > 0:
            self.pause -= 1
            return 0
        if self.fixed is not None:
            return self.fixed
        k, speed = self.best()
        if self.probe:  # a try after a pause, worth it or not
            self.probe = False
            return k
        if speed >= MARGIN:
            self.missed = 0
            return k
        self.missed += 1
        self.pause = min(4 ** (self.missed - 1), MAX_PAUSE) - 1  # this token is one
        self.probe = True
        return 0
