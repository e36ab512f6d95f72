"""`chatcli strategies`: every decoding strategy with its parameters and defaults."""

from __future__ import annotations

import dataclasses


def strategies() -> None:
    """List decoding strategies (built-in and plugins) with parameters and defaults."""
    from chatcli.cli.common import load_strategies
    from chatcli.decoding.base import describe_params, flag_of
    from chatcli.decoding.settings import CommonParams
    from chatcli.ui.console import UI

    ui = UI()
    registry = load_strategies(ui)

    def block(params_cls: type) -> None:
        flags = {f.name: flag_of(f.name, f) for f in dataclasses.fields(params_cls)}
        rows = describe_params(params_cls)
        if not rows:
            ui.print("  (no parameters)")
        width = max((len(flags[name]) for name, *_ in rows), default=0)
        for name, kind, default, help_text in rows:
            ui.print(f"  {flags[name].ljust(width)}  {kind}, default {default}: {help_text}")

    for name in registry.names():
        cls = registry.get(name)
        doc = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
        origin = registry.origins[name]
        ui.print(f"{name}: {doc}" + ("" if origin == "built-in" else f" [{origin}]"))
        block(cls.Params)
        ui.print("")
    ui.print("any strategy: precedence: defaults < generation_config.json < models.toml < flags")
    block(CommonParams)
