"""Incremental detokenization: token ids in, printable text deltas out.

Contract: `push(id)` returns the text that became final with this token, never
a broken UTF-8 sequence (held back while a character is incomplete) and with
the right spaces between tokens (each delta is computed against a short window
of preceding tokens, since tokenizers render a token differently alone than
after its neighbours). `flush()` returns what is left. The concatenation of all
deltas equals `tokenizer.decode(ids, skip_special_tokens=True)`.

Knows nothing about models or decoding.
"""

from __future__ import annotations

from typing import Any


class IncrementalDetokenizer:
    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self._prefix = 0  # start of the context window
        self._read = 0  # tokens before this are already emitted

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(
            ids, skip_special_tokens=True, clean_up_tokenization_spaces=False
        )

    def push(self, token_id: int) -> str:
        self.ids.append(token_id)
        before = self._decode(self.ids[self._prefix : self._read])
        now = self._decode(self.ids[self._prefix :])
        if len(now) > len(before) and not now.endswith("\ufffd"):
            self._prefix, self._read = self._read, len(self.ids)
            return now[len(before) :]
        return ""

    def flush(self) -> str:
        before = self._decode(self.ids[self._prefix : self._read])
        now = self._decode(self.ids[self._prefix :])
        self._prefix = self._read = len(self.ids)
        return now[len(before) :]
