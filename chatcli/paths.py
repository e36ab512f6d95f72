"""Where chatcli keeps its files.

Contract: `CHATCLI_HOME`, when set, roots everything (config, cache, data) in one
folder; otherwise the XDG base directories are used (`$XDG_CONFIG_HOME/chatcli`,
`$XDG_CACHE_HOME/chatcli`, `$XDG_DATA_HOME/chatcli`). Functions only compute
paths; they create nothing. This module knows nothing about models.
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
