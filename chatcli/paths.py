"""Where chatcli keeps its files.

Contract: `CHATCLI_HOME`, when set, roots everything (config, cache, data) in one
folder; otherwise the XDG base directories are used (`$XDG_CONFIG_HOME/chatcli`,
`$XDG_CACHE_HOME/chatcli`, `$XDG_DATA_HOME/chatcli`). Functions only compute
paths and create nothing, except `make_private_dir` and `make_private_file` (the
data folder holds what the user wrote: history, typed lines; so it is made 0700
and those files 0600, whatever the umask, tightening existing ones, as `tighten`
does for a file that exists) and `check_home` (which creates CHATCLI_HOME).

`check_home()` is what every command that writes calls first (ask, chat, compare,
pull, compile, history rm): a CHATCLI_HOME that is a file, cannot be created or
cannot be written is a `HomeError` naming it and what is wrong. Commands that only
read (models list/show, history list/show/export, strategies) work without it.

For messages about a folder that cannot be written: `mount_point` names the disk
a path is on, `elsewhere_hint` says which variable moves a folder of chatcli's to
another one, `write_errno` finds the OS error in what a library raised, and
`cache_write_error` words it for a folder of the cache. This module knows nothing
about models.
"""

from __future__ import annotations

import errno
import os
import re
from pathlib import Path

from chatcli.errors import CacheWriteError, HomeError


def _root(xdg_var: str, default: str, sub: str) -> Path:
    home = os.environ.get("CHATCLI_HOME")
    if home:
        base = Path(home).expanduser()
        return base if sub == "config" else base / sub
    xdg = os.environ.get(xdg_var)
    return (Path(xdg) if xdg else Path.home() / default) / "chatcli"


def config_dir() -> Path:
    return _root("XDG_CONFIG_HOME", ".config", "config")


def cache_dir() -> Path:
    return _root("XDG_CACHE_HOME", ".cache", "cache")


def data_dir() -> Path:
    return _root("XDG_DATA_HOME", ".local/share", "data")


def user_models_file() -> Path:
    return config_dir() / "models.toml"


def mount_point(path: Path) -> Path:
    """Where the file system holding `path` (or its nearest existing folder) is mounted."""
    here = Path(os.path.abspath(path))
    while not here.exists() and here != here.parent:
        here = here.parent
    try:
        device = here.stat().st_dev
        while here != here.parent and here.parent.stat().st_dev == device:
            here = here.parent
    except OSError:  # a folder above it cannot be read: name the nearest one known
        pass
    return here


def elsewhere_hint(kind: str = "cache", where: str = "a folder on another disk") -> str:
    """How to put chatcli's `kind` folder ("cache", "data" or "config") `where`."""
    var = "CHATCLI_HOME" if os.environ.get("CHATCLI_HOME") else f"XDG_{kind.upper()}_HOME"
    return f"set {var} to {where}"


def write_errno(exc: BaseException) -> int | None:
    """The OS error number of a failed write: an OSError's, or the one safetensors names
    in its message ("Error while serializing: I/O error: No space left on device (os
    error 28)"); None for anything else."""
    if isinstance(exc, OSError):
        return exc.errno
    found = re.search(r"\(os error (\d+)\)", str(exc))
    return int(found.group(1)) if found else None


READ_ONLY = (errno.EROFS, errno.EACCES, errno.EPERM)


def cache_write_error(what: str, folder: Path, code: int) -> CacheWriteError:
    """The error for `what` that could not be written into `folder` of chatcli's cache
    (OS error `code`): a full disk is named by where it is mounted."""
    if code in (errno.ENOSPC, errno.EDQUOT):
        why = f"the disk mounted at {mount_point(folder)} is full"
        hint = f"free some space on it, or {elsewhere_hint()}"
    elif code in READ_ONLY:
        why = "the folder is read-only"
        hint = f"make it writable, or {elsewhere_hint(where='a writable folder')}"
    elif code in (errno.ENOTDIR, errno.ENOENT, errno.EEXIST):  # a file where a folder goes
        why = os.strerror(code)
        hint = elsewhere_hint(where="a folder you can write")
    else:
        why = os.strerror(code)
        hint = f"check the disk mounted at {mount_point(folder)}"
    return CacheWriteError(f"cannot write {what} to {folder}: {why}", hint)


HOME_HINT = "set CHATCLI_HOME to a folder you can write, or unset it"


def check_home() -> None:
    """When CHATCLI_HOME is set: a folder chatcli can write, created if missing; else a
    `HomeError` naming it and what is wrong."""
    value = os.environ.get("CHATCLI_HOME")
    if not value:
        return
    home = Path(value).expanduser()
    name = f"CHATCLI_HOME={value}"
    existing = home
    try:
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
    except OSError as exc:  # a folder on the way that may not be looked into
        raise HomeError(f"{name} cannot be used: {exc.strerror or exc}", HOME_HINT) from exc
    if not existing.is_dir():
        what = "a file, not a folder" if existing.is_file() else "not a folder"
        raise HomeError(f"{name} is {what}" if existing == home
                        else f"{name} cannot be created: {existing} is {what}", HOME_HINT)
    if existing != home:
        try:
            home.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise HomeError(f"{name} cannot be created in {existing}: "
                            f"{exc.strerror or exc}", HOME_HINT) from exc
    if not os.access(home, os.W_OK | os.X_OK):
        try:
            read_only_fs = bool(os.statvfs(home).f_flag & os.ST_RDONLY)
        except (OSError, AttributeError):
            read_only_fs = False
        why = "is on a read-only file system" if read_only_fs else "is a folder you cannot write"
        raise HomeError(f"{name} {why}", HOME_HINT)


def make_private_dir(folder: Path) -> None:
    """Create `folder` (and its parents) as 0700, or take group and others' rights
    from an existing one (a folder the user made read-only stays so); raises OSError."""
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    mode = folder.stat().st_mode & 0o777
    if mode & 0o077:
        os.chmod(folder, mode & 0o700)


def make_private_file(path: Path) -> None:
    """Create `path` (in a private folder) as 0600 if missing, or take group and others'
    rights from an existing one; raises OSError."""
    make_private_dir(path.parent)
    if not path.exists():
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600))
    tighten(path)


def tighten(path: Path) -> None:
    """Take group and others' rights from `path` if it exists; raises OSError (e.g. the
    file is another user's)."""
    try:
        mode = path.stat().st_mode & 0o777
    except FileNotFoundError:
        return
    if mode & 0o077:
        os.chmod(path, mode & 0o700)
