"""Typed errors of chatcli's domain.

Contract: domain code raises a `ChatcliError` (or a subclass) carrying a one-line
message, a one-line hint and an exit code. Only the CLI entry point
(`chatcli.cli.app.main`) turns them into output and exit codes. This module knows
nothing about the terminal.
"""

from __future__ import annotations


class ChatcliError(Exception):
    """An error the user can act on: what went wrong and how to fix it."""

    exit_code = 1

    def __init__(self, message: str, hint: str = "", *, exit_code: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        if exit_code is not None:
            self.exit_code = exit_code

    def __str__(self) -> str:
        return self.message


class UsageError(ChatcliError):
    """Bad input on the command line (exit code 2, as for any usage error)."""

    exit_code = 2


class UnknownModelError(UsageError):
    """An alias that no models.toml defines."""


class ConfigError(ChatcliError):
    """A malformed models.toml: the message names the file and line."""


class ModelUnavailableError(ChatcliError):
    """Weights that cannot be found locally nor fetched."""


class IntegrityError(ChatcliError):
    """Downloaded weights whose sha256 differs from the pinned one."""


class HomeError(ChatcliError):
    """CHATCLI_HOME names something chatcli cannot use as its folder."""


class CacheWriteError(ChatcliError):
    """A file of chatcli's cache could not be written (a full disk, a read-only folder)."""


class ContextOverflowError(ChatcliError):
    """A prompt that does not fit the model's context window."""


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP arrived: stop like Ctrl-C (the partial answer is kept, marked
    interrupted, the terminal restored), then leave with exit code 128 + the signal."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


class Interrupted(KeyboardInterrupt):
    """Ctrl-C held until a step that must not be cut halfway ended (`during`: what it did,
    e.g. "loading the model"); chatcli then stops as for any Ctrl-C."""

    def __init__(self, during: str) -> None:
        super().__init__(during)
        self.during = during


class OutputClosed(Exception):
    """stdout was closed by its reader (e.g. `| head -1`); chatcli stops quietly.

    Deliberately not an OSError, so that no library turns it into an exit code.
    """


class BackendGone(ChatcliError):
    """What answered is gone (a resident server stopped); opening the model again, in
    this process, may work."""


class RemoteError(ChatcliError):
    """A server of a remote backend could not be reached or refused the request."""


class MalformedStreamError(RemoteError):
    """A server sent something that is not a well-formed chat-completions stream."""


class StreamCutError(RemoteError):
    """A server's answer stopped before it was complete (the partial answer is kept)."""
