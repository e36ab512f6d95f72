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


def resolve_spec(registry: Any, model: str | None, base_url: str | None) -> Any:
    """The alias to use: `-m` (or the default), or a one-off server with `--base-url`.

    With `--base-url`: `-m` naming an `openai` alias replaces its base_url; `-m NAME`
    naming no alias is the server's model NAME; no `-m` takes the one model the server
    lists (asked when the model is opened). A local alias with `--base-url` is an error.
    """
    import dataclasses

    from chatcli.errors import UsageError
    from chatcli.registry import ModelSpec, check_base_url

    if base_url is None:
        return registry.resolve(model)
    problem = check_base_url(base_url)
    if problem:
        raise UsageError(f"--base-url {base_url}: {problem}",
                         "e.g. --base-url http://127.0.0.1:8080/v1")
    base_url = base_url.rstrip("/")
    if model is not None and model in registry.models:
        spec = registry.models[model]
        if not spec.is_remote:
            raise UsageError(
                f"--base-url needs a remote model, and '{model}' is a local alias",
                "use -m with an alias that has backend = \"openai\", or -m with the name "
                "the server gives its model",
            )
        return dataclasses.replace(spec, base_url=base_url)
    return ModelSpec(alias=model or "", source="remote", backend="openai", base_url=base_url,
                     model=model)


def runtime_for(
    spec: Any, device: str, dtype: str, threads: int | None, quantize: str | None = None
) -> Any:
    """The validated runtime of a local alias (None for a remote one: the server decides)."""
    if spec.is_remote:
        if quantize not in (None, "none"):
            from chatcli.errors import UsageError

            raise UsageError(
                f"--quantize applies to local models; '{spec.alias or spec.base_url}' is "
                "served remotely", "drop --quantize (the server decides its precision)",
            )
        return None
    from chatcli.runtime import resolve_runtime

    return resolve_runtime(device, dtype, threads, spec.dtype, quantize, spec.quantize)


def refuse_remote_internals(spec: Any, flag: str | None) -> None:
    """`flag` (e.g. --show-beams) reads the model's internals: refused for a remote model."""
    if spec.is_remote and flag:
        from chatcli.errors import UsageError

        raise UsageError(f"{flag} needs the model's internals, which a server does not "
                         f"return ('{spec.alias or spec.base_url}' is remote)",
                         "use a local model (-m)")


def open_model(spec: Any, registry: Any, ui: UI, runtime: Any) -> Any:
    """A `LoadedModel` for a local alias (with `runtime_for`'s runtime), a `RemoteModel`
    for an `openai` one (runtime None)."""
    if spec.is_remote:
        from chatcli.remote.model import open_remote

        return open_remote(spec, registry)
    from chatcli.loader import load_model

    return load_model(spec, runtime, ui)


def check_remote(spec: Any, settings: Any, candidates: int | None = None) -> None:
    """Refuse, before any request, what an `openai` alias's server cannot do."""
    if spec.is_remote:
        from chatcli.remote.params import check

        check(spec, settings, candidates)
