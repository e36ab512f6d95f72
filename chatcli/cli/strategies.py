"""`chatcli strategies`: every decoding strategy with its parameters and defaults.

As text, or with --json as one JSON object whose keys are documented in the
command's help.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from chatcli.cli.options import JsonListingOpt

# The layers a parameter's value comes from, lowest first (the origins `models show` names).
PRECEDENCE = ("default", "generation_config.json", "models.toml", "flag")


def strategies(json_out: JsonListingOpt = False) -> None:
    """List decoding strategies (built-in and plugins) with parameters and defaults.

    With --json: an object. "strategies" is a list of objects with the keys name,
    description, origin ("built-in" or the plugin's entry point) and params;
    "common" has params (those of any strategy) and precedence (the origins of a
    value, lowest first). Each param is an object with the keys name, flag (its
    option, or "-o NAME"), type, default (null: none) and help.
    """
    from chatcli.cli.common import load_strategies
    from chatcli.decoding.base import describe_params, flag_of
    from chatcli.decoding.settings import CommonParams
    from chatcli.ui.console import UI

    ui = UI()
    registry = load_strategies(ui)

    def params_of(params_cls: type) -> list[dict[str, Any]]:
        fields = {f.name: f for f in dataclasses.fields(params_cls)}
        out = []
        for name, kind, _, help_text in describe_params(params_cls):
            default = fields[name].default
            out.append({"name": name, "flag": flag_of(name, fields[name]), "type": kind,
                        "default": list(default) if isinstance(default, tuple) else default,
                        "help": help_text})
        return out

    if json_out:
        ui.print_json({
            "strategies": [
                {"name": name, "description": _summary(registry.get(name)),
                 "origin": registry.origins[name], "params": params_of(registry.get(name).Params)}
                for name in registry.names()
            ],
            "common": {"params": params_of(CommonParams), "precedence": list(PRECEDENCE)},
        })
        return

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
        origin = registry.origins[name]
        ui.print(f"{name}: {_summary(cls)}" + ("" if origin == "built-in" else f" [{origin}]"))
        block(cls.Params)
        ui.print("")
    ui.print("any strategy: precedence: defaults < generation_config.json < models.toml < flags")
    block(CommonParams)


def _summary(cls: type) -> str:
    """The first line of a strategy's docstring ("" without one)."""
    return (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
