"""Server-sent events: a byte stream of lines → `SSEEvent`s.

Contract: `parse(lines)` takes the response body as an iterable of raw lines
(bytes, each with or without its line ending) and yields one `SSEEvent` per
dispatched event, following the WHATWG rules that matter here: `data:` lines of
one event are joined with "\\n", a blank line dispatches, lines starting with
":" are comments, one space after the colon is dropped, `event:` names the event,
other fields (`id:`, `retry:`) are ignored, and an event not terminated by a blank
line when the stream ends is discarded. `ended_cleanly` tells, after the lines
run out, whether the last event was complete. A line that is not UTF-8 raises
`MalformedStreamError`.

Knows nothing about HTTP, JSON or chat completions.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from chatcli.errors import MalformedStreamError


@dataclass(frozen=True)
class SSEEvent:
    data: str
    event: str = "message"


class SSEParser:
    def __init__(self) -> None:
        self.ended_cleanly = True  # no event was left half-received

    def parse(self, lines: Iterable[bytes]) -> Iterator[SSEEvent]:
        data: list[str] = []
        event = ""
        pending = False
        for raw in lines:
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise MalformedStreamError(
                    f"the server sent a line that is not UTF-8 (byte {exc.start})",
                    "the server is not speaking server-sent events; check base_url",
                ) from exc
            line = line.rstrip("\r\n")
            if line.startswith("\ufeff"):
                line = line[1:]
            if not line:
                if data:
                    yield SSEEvent("\n".join(data), event or "message")
                data, event, pending = [], "", False
                continue
            pending = True
            if line.startswith(":"):
                continue
            name, colon, value = line.partition(":")
            if colon and value.startswith(" "):
                value = value[1:]
            if name == "data":
                data.append(value)
            elif name == "event":
                event = value
        self.ended_cleanly = not pending


def parse(lines: Iterable[bytes]) -> Iterator[SSEEvent]:
    """The events of a whole stream (see `SSEParser` to learn whether it ended cleanly)."""
    return SSEParser().parse(lines)
