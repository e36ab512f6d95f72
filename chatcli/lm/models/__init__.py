"""The architectures chatcli's native forward pass computes, found by config `model_type`.

Contract: every module of this package except `base` describes one architecture (as
mlx-lm's `models/<model_type>.py`) and has a `setup(register)` function that calls
`register(model_type, parse)` for each `model_type` it serves; `parse(config)` turns a
parsed config.json into the `ModelArgs` the one forward pass reads
(`chatcli.lm.llama`), stating only how the architecture differs from Llama, and raises
`UnsupportedModelError` for what it cannot compute exactly. Adding an architecture is
one module here (and its test): the registry finds the package's modules itself.

`registry()` is built once per process; `SUPPORTED_MODEL_TYPES` and
`supported_model_types()` name what it holds, `args_of(config)` parses a config by its
`model_type` (an unknown one: "<type> architecture has no native implementation"),
`supports(config)` says whether that succeeds.

Knows nothing about weights, tensors or the forward pass itself; imports no torch.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable

from chatcli.lm.models.base import ModelArgs, RopeParams, UnsupportedModelError

Parse = Callable[[dict], ModelArgs]
Register = Callable[[str, Parse], None]

__all__ = ["ModelArgs", "RopeParams", "UnsupportedModelError", "args_of", "registry",
           "supported_model_types", "supports"]


class ArchitectureRegistry:
    def __init__(self) -> None:
        self._parsers: dict[str, Parse] = {}
        self.origins: dict[str, str] = {}

    def register(self, model_type: str, parse: Parse, origin: str = "built-in") -> None:
        if not isinstance(model_type, str) or not model_type:
            raise ValueError(f"an architecture needs a model_type (got {model_type!r})")
        if not callable(parse):
            raise ValueError(f"architecture {model_type!r} needs a parse function")
        if model_type in self._parsers:
            raise ValueError(f"architecture {model_type!r} is already registered by "
                             f"{self.origins[model_type]}")
        self._parsers[model_type] = parse
        self.origins[model_type] = origin

    def model_types(self) -> frozenset[str]:
        return frozenset(self._parsers)

    def args(self, config: dict) -> ModelArgs:
        arch = config.get("model_type") or "unknown"
        parse = self._parsers.get(arch) if isinstance(arch, str) else None
        if parse is None:
            raise UnsupportedModelError(f"{arch} architecture has no native implementation")
        return parse(config)


def register_builtins(registry: ArchitectureRegistry) -> None:
    """Every module of this package (but `base`), by its `setup(register)`."""
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda info: info.name):
        if info.name == "base" or info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        module.setup(lambda model_type, parse, _o=f"{__name__}.{info.name}":
                     registry.register(model_type, parse, _o))


_REGISTRY: ArchitectureRegistry | None = None


def registry() -> ArchitectureRegistry:
    global _REGISTRY
    if _REGISTRY is None:
        built = ArchitectureRegistry()
        register_builtins(built)
        _REGISTRY = built
    return _REGISTRY


def supported_model_types() -> frozenset[str]:
    return registry().model_types()


def args_of(config: dict) -> ModelArgs:
    """The forward pass's arguments for `config`, by its architecture's module."""
    return registry().args(config)


def supports(config: dict) -> bool:
    """Whether `config` describes a model the native forward pass computes exactly."""
    try:
        args_of(config)
    except UnsupportedModelError:
        return False
    return True


def __getattr__(name: str) -> frozenset[str]:
    if name == "SUPPORTED_MODEL_TYPES":
        return supported_model_types()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
