"""Where chatcli keeps its files.

Contract: `CHATCLI_HOME`, when set, roots everything (config, cache, data) in one
folder; otherwise the XDG base directories are used (`$XDG_CONFIG_HOME/chatcli`,
`$XDG_CACHE_HOME/chatcli`, `$XDG_DATA_HOME/chatcli`). Functions only compute
paths and create nothing, except `make_private_dir` and `make_private_file`: the
data folder holds what the user wrote (history, typed lines), so it is made 0700
and those files 0600, whatever the umask, tightening existing ones (`tighten`
does it for a file that exists). `mount_point` names the disk a path is on and
`elsewhere_hint` says which variable moves a folder of chatcli's to another one,
for messages about a full or unwritable disk. This module knows nothing about
models.
"""

from __future__ import annotations

import os
from pathlib import Path


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


def elsewhere_hint(kind: str = "cache") -> str:
    """How to put chatcli's `kind` folder ("cache", "data" or "config") on another disk."""
    if os.environ.get("CHATCLI_HOME"):
        return "set CHATCLI_HOME to a folder on another disk"
    return f"set XDG_{kind.upper()}_HOME to a folder on another disk"


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
