"""What speculative decoding did in one answer: `SpeculationStats`.

Contract: `chatcli.decoding.speculative.loop` keeps one current as it decodes (an
interrupted answer has its figures too); `Stats.speculation` carries it to the
commands (--stats, --json, /stats) and, pickled, from the resident server. Imports
nothing: a client that never imports torch reads it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class SpeculationStats:
    """What --speculate did in one answer (chatcli.decoding.speculative.loop keeps it current).

    A round verifies `drafted` tokens in one forward pass and emits the ones accepted
    plus one; a plain step emits one. The speed-up is an estimate from the same run:
    the time plain steps took each (the first tokens always decode plainly), times the
    tokens decoded, against the time the decode took."""

    source: str = ""  # "ngram" or the draft model's alias
    drafted: int = 0
    accepted: int = 0
    rounds: int = 0
    plain_steps: int = 0
    plain_s: float = 0.0
    verify_s: float = 0.0  # drafting and verifying, every round together

    @property
    def acceptance(self) -> float | None:
        return self.accepted / self.drafted if self.drafted else None

    @property
    def mean_accepted(self) -> float | None:
        return self.accepted / self.rounds if self.rounds else None

    @property
    def speed_up(self) -> float | None:
        spent = self.plain_s + self.verify_s
        if not self.plain_steps or spent <= 0:
            return None
        decoded = self.plain_steps + self.accepted + self.rounds
        return decoded * (self.plain_s / self.plain_steps) / spent

    def as_dict(self) -> dict[str, Any]:
        def rounded(x: float | None, digits: int = 3) -> float | None:
            return None if x is None else round(x, digits)

        return {"source": self.source, "drafted": self.drafted, "accepted": self.accepted,
                "acceptance_rate": rounded(self.acceptance), "rounds": self.rounds,
                "mean_accepted_length": rounded(self.mean_accepted),
                "plain_steps": self.plain_steps, "speed_up_estimate": rounded(self.speed_up)}
