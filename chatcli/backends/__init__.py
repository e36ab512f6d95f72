"""The backend registry: `backend = NAME` in models.toml → the class that runs it.

Contract: `BACKENDS` maps each backend name to "module:Class" (imported only when
used, so reading models.toml stays light); `BASE_URL_BACKEND` answers `--base-url`
(`base_url_backend()`); `backend_class(name)` returns the class
(`chatcli.backends.base` says what it declares and does). A new backend is one
module plus one line here.

Knows nothing about the terminal or the CLI.
"""

from __future__ import annotations

import importlib
from typing import Any

BACKENDS: dict[str, str] = {
    "local": "chatcli.backends.local:LocalBackend",
    "openai": "chatcli.backends.openai:OpenAIBackend",
}
BASE_URL_BACKEND = "openai"  # the backend of a one-off server (`--base-url`)


def backend_class(name: str) -> Any:
    """The class of backend `name` (one of `BACKENDS`)."""
    module, _, cls = BACKENDS[name].partition(":")
    return getattr(importlib.import_module(module), cls)


def base_url_backend() -> Any:
    """The class that answers `--base-url URL`: it has `check_base_url(url)` (why `url`
    is not a server address, or None) and `one_off(base_url, model)` (the spec of that
    server's model, `model` None: the one it lists)."""
    return backend_class(BASE_URL_BACKEND)


def backend_of(spec: Any) -> Any:
    """The class of the backend `spec` (a `ModelSpec`) runs on."""
    return backend_class(spec.backend)


def as_backend(model: Any) -> Any:
    """`model` as an opened backend: a `LoadedModel` (tests, benchmarks) runs on the
    local one; a backend is returned as it is."""
    if hasattr(model, "capabilities"):
        return model
    return backend_class("local")(model)
