"""How long the resident server keeps a model that no command uses: the durations users
write, and which one applies.

Contract: `duration(text)` reads "5m", "30s", "1h", "90" (seconds), "0" (unload at
once) and "-1" (never: None), raising ValueError saying what is wrong;
`parse_keep_alive(value, name)` is the same for a flag or an environment variable, as a
one-line UsageError naming where it was written. `server_default(flag, file_value)` is
the server's default: `--keep-alive`, else CHATCLI_KEEP_ALIVE, else the top-level
`keep_alive` of models.toml (`file_value`), else 5m. A local alias's own `keep_alive`
(models.toml) wins over the server's default for that model.

Knows nothing about sockets, models or the terminal.
"""

from __future__ import annotations

import math
import os

from chatcli.errors import UsageError

DEFAULT = "5m"
ENV = "CHATCLI_KEEP_ALIVE"
_UNITS = {"s": 1, "m": 60, "h": 3600}
EXPECTED = "expected a duration such as 5m, 30s, 1h, 0 (unload at once) or -1 (never)"
NEGATIVE = "a negative keep-alive is only -1 (never unload)"


def duration(value: str | int | float) -> float | None:
    """Seconds (None: never unload); ValueError with `EXPECTED` or `NEGATIVE`."""
    text = str(value).strip().lower()
    number, unit = (text[:-1], _UNITS[text[-1]]) if text[-1:] in _UNITS else (text, 1)
    try:
        seconds = float(number) * unit
    except ValueError:
        raise ValueError(EXPECTED) from None
    if not math.isfinite(seconds):
        raise ValueError(EXPECTED)
    if seconds < 0:
        if seconds == -unit:
            return None
        raise ValueError(NEGATIVE)
    return seconds


def parse_keep_alive(value: str, name: str = "--keep-alive") -> float | None:
    """`duration(value)`; `name`: where it was written ("--keep-alive", or an environment
    variable's name), which the error quotes."""
    flag = name.startswith("-")
    spelled = f"{name} {value}" if flag else f"{name}={value}"
    example = f"{name} " if flag else f"{name}="  # then the value
    try:
        return duration(value)
    except ValueError as exc:
        reason = str(exc)
        raise UsageError(f"{spelled}: {reason}",
                         f"e.g. {example}{'-1' if reason == NEGATIVE else '5m'}") from None


def server_default(flag: str | None, file_value: str | int | None) -> float | None:
    """The server's keep-alive (see the module)."""
    if flag is not None:
        return parse_keep_alive(flag)
    if ENV in os.environ:
        return parse_keep_alive(os.environ[ENV], ENV)
    return duration(file_value if file_value is not None else DEFAULT)  # checked when read
