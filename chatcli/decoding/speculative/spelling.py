"""How `--speculate` is written: `ngram[:N]` (prompt lookup) or `ALIAS[:N]` (a draft model).

Contract: `parse(value)` returns a `Speculate` (the source: "ngram" or an alias of
models.toml, and N: the draft length, None for adaptive) or raises `ValueError` with
what is wrong; `VALID` is the parameter's check for `chatcli.decoding.settings`.
Knows nothing about models, decoding or the terminal: an alias is checked where the
registry is known (the local backend).
"""

from __future__ import annotations

from dataclasses import dataclass

from chatcli.decoding.base import Valid

NGRAM = "ngram"
MAX_LENGTH = 64  # tokens drafted in one round at most
EXAMPLE = "ngram, ngram:N, ALIAS or ALIAS:N (a model of models.toml)"


@dataclass(frozen=True)
class Speculate:
    source: str  # "ngram" or a model alias
    length: int | None  # tokens drafted per round (None: adaptive)

    @property
    def lookup(self) -> bool:
        return self.source == NGRAM

    def __str__(self) -> str:
        return self.source if self.length is None else f"{self.source}:{self.length}"


def parse(value: str) -> Speculate:
    source, colon, count = value.strip().rpartition(":")
    if not colon:
        source, count = count, ""
    if not source:
        raise ValueError(f"expected {EXAMPLE}")
    length: int | None = None
    if colon:
        if not count.isdigit() or not 1 <= int(count) <= MAX_LENGTH:
            raise ValueError(f"the draft length after ':' must be a whole number from 1 to "
                             f"{MAX_LENGTH}, not {count!r}")
        length = int(count)
    return Speculate(source, length)


def _valid(value: str) -> bool:
    try:
        parse(value)
    except ValueError:
        return False
    return True


VALID = Valid(f"one of {EXAMPLE}, N the tokens drafted a round, from 1 to {MAX_LENGTH} "
              "(without it: adaptive)", _valid)
