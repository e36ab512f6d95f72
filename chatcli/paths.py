"""Where chatcli keeps its files.

Contract: `CHATCLI_HOME`, when set, roots everything (config, cache, data) in one
folder; otherwise the XDG base directories are used (`$XDG_CONFIG_HOME/chatcli`,
`$XDG_CACHE_HOME/chatcli`, `$XDG_DATA_HOME/chatcli`). Functions only compute
paths and create nothing, except `make_private_dir` and `make_private_file`: the
data folder holds what the user wrote (history, typed lines), so it is made 0700
and those files 0600, whatever the umask, tightening existing ones. This module
knows nothing about models.
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
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        os.chmod(path, mode & 0o700)
