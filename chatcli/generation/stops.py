"""Stop strings over a stream of text deltas.

Contract: `StopMatcher.feed(delta)` returns the text that is safe to show and
whether a stop string was found; text that could still turn out to be the start
of a stop string is held back until it cannot. The stop string itself and
anything after it are never returned. Knows nothing about tokens or models.
"""

from __future__ import annotations

from collections.abc import Sequence


class StopMatcher:
    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = [s for s in stops if s]
        self.pending = ""

    def feed(self, delta: str) -> tuple[str, bool]:
        if not self.stops:
            return delta, False
        text = self.pending + delta
        hits = [i for i in (text.find(s) for s in self.stops) if i >= 0]
        if hits:
            self.pending = ""
            return text[: min(hits)], True
        keep = self._held_suffix(text)
        self.pending = text[len(text) - keep :]
        return text[: len(text) - keep], False

    def _held_suffix(self, text: str) -> int:
        longest = min(len(text), max(len(s) for s in self.stops) - 1)
        for k in range(longest, 0, -1):
            tail = text[-k:]
            if any(s.startswith(tail) for s in self.stops):
                return k
        return 0

    def flush(self) -> str:
        out, self.pending = self.pending, ""
        return out
