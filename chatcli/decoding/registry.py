"""The strategy registry: built-ins plus third-party plugins.

Contract: `strategy_registry()` returns the process-wide registry, built once:
the built-in strategies, then every entry point in the group
`chatcli.strategies`. An entry point names either a strategy class or a
`setup(register)` function that calls `register(StrategyClass)` for each of its
strategies. A plugin that fails to load or registers an invalid strategy is
skipped and reported in `problems` (chatcli keeps working). Set
`CHATCLI_NO_PLUGINS=1` (tests do) to load built-ins only.

A strategy is checked when registered: a `name` that is an identifier, a `Params`
dataclass (derived from `StrategyParams` when it declares `valid=` ranges, so that
its constructor checks them), `capabilities` of the right type when given, and a
`decode` method. Only chatcli's own parameters have command-line flags: a plugin's
parameter may declare a flag only where a built-in one of the same name has it
(e.g. a sampler's `temperature`); the others are set with `-o NAME=VALUE`.
`with_capability(test)` names the strategies whose capabilities pass `test`.

Knows nothing about the CLI or models.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
from collections.abc import Callable
from typing import Any

from chatcli.decoding.base import Capabilities, StrategyParams, capabilities_of, declared
from chatcli.errors import UsageError

ENTRY_POINT_GROUP = "chatcli.strategies"
Register = Callable[[type], None]


class StrategyRegistry:
    def __init__(self) -> None:
        self._classes: dict[str, type] = {}
        self.origins: dict[str, str] = {}
        self.problems: list[str] = []

    def register(self, cls: type, origin: str = "built-in") -> None:
        name = getattr(cls, "name", None)
        if not isinstance(name, str) or not name.isidentifier():
            raise ValueError(f"strategy {cls!r} needs a `name` that is an identifier")
        params = getattr(cls, "Params", None)
        if not (isinstance(params, type) and dataclasses.is_dataclass(params)):
            raise ValueError(f"strategy '{name}' needs a `Params` dataclass")
        if not callable(getattr(cls, "decode", None)):
            raise ValueError(f"strategy '{name}' needs a `decode` method")
        if name in self._classes:
            raise ValueError(f"strategy '{name}' is already registered by {self.origins[name]}")
        capabilities_of(cls)
        params_declared = declared(params)
        if any(d.valid for d in params_declared) and not issubclass(params, StrategyParams):
            raise ValueError(f"strategy '{name}' declares valid= ranges: derive its Params "
                             "from chatcli.decoding.base.StrategyParams")
        if origin != "built-in":
            builtin = {(d.name, d.flag, d.short) for n, o in self.origins.items()
                       if o == "built-in" for d in declared(self._classes[n].Params)}
            for d in params_declared:
                if (d.flag or d.short) and (d.name, d.flag, d.short) not in builtin:
                    raise ValueError(
                        f"strategy '{name}': parameter '{d.name}' declares the flag "
                        f"{d.flag or d.short}, but only chatcli's own parameters have flags "
                        f"(it is set with -o {d.name}=VALUE): remove flag=")
        self._classes[name] = cls
        self.origins[name] = origin

    def names(self) -> list[str]:
        return list(self._classes)

    def get(self, name: str) -> type:
        cls = self._classes.get(name)
        if cls is None:
            close = difflib.get_close_matches(name, self.names(), n=1)
            hint = f"did you mean '{close[0]}'? " if close else ""
            raise UsageError(
                f"unknown strategy '{name}' (known: {', '.join(self.names())})",
                hint + "run 'chatcli strategies' to see them all",
            )
        return cls

    def users_of(self, param_name: str) -> list[str]:
        """Names of the strategies that take a parameter called `param_name`."""
        return [
            n for n, cls in self._classes.items()
            if param_name in {f.name for f in dataclasses.fields(cls.Params)}
        ]

    def capabilities(self, name: str) -> Capabilities:
        return capabilities_of(self.get(name))

    def with_capability(self, test: Callable[[Capabilities], bool]) -> list[str]:
        """Names of the strategies whose capabilities pass `test`, in registration order."""
        return [n for n, cls in self._classes.items() if test(capabilities_of(cls))]

    def load_plugins(self) -> None:
        from importlib.metadata import entry_points

        for ep in entry_points(group=ENTRY_POINT_GROUP):
            origin = f"plugin {ep.value}" + (f" ({ep.dist.name})" if ep.dist else "")
            try:
                obj: Any = ep.load()
                if isinstance(obj, type):
                    self.register(obj, origin)
                else:
                    obj(lambda cls, _o=origin: self.register(cls, _o))
            except Exception as exc:  # a broken plugin must not break chatcli
                self.problems.append(f"strategy plugin '{ep.name}' ({ep.value}) skipped: {exc}")


def register_builtins(register: Register) -> None:
    from chatcli.decoding.beam_strategy import Beam
    from chatcli.decoding.greedy import Greedy
    from chatcli.decoding.sampling import Sample

    for cls in (Greedy, Sample, Beam):
        register(cls)


_REGISTRY: StrategyRegistry | None = None


def strategy_registry() -> StrategyRegistry:
    global _REGISTRY
    if _REGISTRY is None:
        registry = StrategyRegistry()
        register_builtins(registry.register)
        if os.environ.get("CHATCLI_NO_PLUGINS", "") in ("", "0"):
            registry.load_plugins()
        _REGISTRY = registry
    return _REGISTRY
