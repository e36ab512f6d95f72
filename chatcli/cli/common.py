"""Start-up steps that several commands share (kept out of the Typer wiring)."""

from __future__ import annotations

from typing import Any

from chatcli.ui.console import UI


def load_strategies(ui: UI) -> Any:
    """The strategy registry, with a warning line for each plugin that failed to load."""
    from chatcli.decoding.registry import strategy_registry

    registry = strategy_registry()
    for problem in registry.problems:
        ui.warn(problem)
    return registry
