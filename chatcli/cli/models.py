"""`chatcli models list|show` and `chatcli pull`: the model registry seen from the CLI."""

from __future__ import annotations

import dataclasses

import typer

from chatcli.cli.options import AliasArg, ModelsFileOpt
from chatcli.ui.console import UI

app = typer.Typer(help="List and inspect the models chatcli knows.", no_args_is_help=True)


def _cached_path(spec) -> str | None:  # type: ignore[no-untyped-def]
    from chatcli import loader, sources

    if spec.is_remote:
        return None
    weights = sources.locate(spec)
    if weights is None:
        return None
    if weights.gguf_file and loader.is_converted(spec, weights):
        return str(loader.converted_dir(spec, weights))
    return str(weights.gguf_path or weights.folder)


@app.command("list")
def list_models(models_file: ModelsFileOpt = None) -> None:
    """Every alias: size, context window, whether it is on disk, backend and source."""
    from chatcli.registry import load_registry
    from chatcli.ui.tables import show_table

    registry = load_registry(models_file)
    rows = []
    for alias, spec in registry.models.items():
        name = alias + (" (default)" if alias == registry.default else "")
        ctx = str(spec.context_window) if spec.context_window else (
            "from server" if spec.is_remote else "from config")
        cached = "-" if spec.is_remote else "yes" if _cached_path(spec) else "no"
        rows.append([name, spec.params or "?", ctx, cached, spec.backend, spec.location])
    show_table(UI(), ["alias", "params", "context", "cached", "backend", "source"], rows)


@app.command("show")
def show(alias: AliasArg, models_file: ModelsFileOpt = None) -> None:
    """Everything chatcli knows about one alias."""
    from chatcli.decoding.registry import strategy_registry
    from chatcli.decoding.settings import resolve_settings
    from chatcli.loader import local_generation_config
    from chatcli.registry import load_registry

    registry = load_registry(models_file)
    spec = registry.resolve(alias)
    ui = UI()
    if spec.is_remote:
        _show_remote(ui, spec, registry.default)
    else:
        _show_local(ui, spec, registry.default)
    gen_config = {} if spec.is_remote else local_generation_config(spec)
    settings = resolve_settings(strategy_registry(), alias_defaults=spec.defaults,
                                generation_config=gen_config)
    ui.print("")
    ui.print("effective decoding defaults (strategy < generation_config.json < models.toml "
             "< flags):")
    if spec.is_remote:
        ui.print("  (a remote alias: only models.toml and flags apply here)")
    elif not gen_config and spec.source != "path":
        ui.print("  (generation_config.json not read: the model is not cached yet)")
    origins = settings.origins
    ui.print(f"{'strategy':<18}  {settings.strategy} ({origins.get('strategy', 'default')})")
    values = {**dataclasses.asdict(settings.params), **dataclasses.asdict(settings.common)}
    for name, value in values.items():
        shown = "none" if value in (None, ()) else value
        ui.print(f"  {name:<16}  {shown} ({origins[name]})")


def _show_remote(ui: UI, spec, default: str) -> None:  # type: ignore[no-untyped-def]
    import os

    from chatcli.ui.tables import show_fields

    key = "-"
    if spec.api_key_env:  # the variable's name only, never its value
        state = "set" if os.environ.get(spec.api_key_env) else "not set"
        key = f"{spec.api_key_env} ({state})"
    show_fields(
        ui,
        [
            ("alias", spec.alias + (" (default)" if spec.alias == default else "")),
            ("description", spec.description or "-"),
            ("backend", spec.backend),
            ("base_url", spec.base_url),
            ("model", spec.model),
            ("server", spec.server),
            ("api_key_env", key),
            ("tokenizer", spec.tokenizer or "none (token counts are estimated)"),
            ("params", spec.params or "?"),
            ("context window", str(spec.context_window or "from the server, else 4096")),
            ("timeout", f"{spec.timeout:g} s"),
            ("license", spec.license or "?"),
            ("defined in", str(spec.origin)),
        ],
    )


def _show_local(ui: UI, spec, default: str) -> None:  # type: ignore[no-untyped-def]
    from chatcli.ui.tables import show_fields

    show_fields(
        ui,
        [
            ("alias", spec.alias + (" (default)" if spec.alias == default else "")),
            ("description", spec.description or "-"),
            ("source", spec.location),
            ("params", spec.params or "?"),
            ("context window", str(spec.context_window or "from the model config")),
            ("dtype", spec.dtype),
            ("implementation", _implementation(spec)),
            ("quantize", spec.quantize),
            ("chat template", "from models.toml" if spec.chat_template else "the model's own"),
            ("trust remote code", "yes" if spec.trust_remote_code else "no"),
            ("license", spec.license or "?"),
            ("cached", _cached_path(spec) or "no"),
            ("defined in", str(spec.origin)),
        ],
    )


def _implementation(spec) -> str:  # type: ignore[no-untyped-def]
    """Which implementation a load would run on this machine's default device, and why."""
    from chatcli.loader import plan_implementation
    from chatcli.runtime import resolve_runtime

    planned = plan_implementation(spec, resolve_runtime().device)
    if planned is not None:
        return planned
    if spec.implementation != "auto":
        return f'{spec.implementation} (implementation = "{spec.implementation}" in {spec.origin})'
    return ("auto: decided once the model is on disk (native for the llama and qwen2 "
            "architectures where their tokenizer allows)")


def pull(alias: AliasArg, models_file: ModelsFileOpt = None) -> None:
    """Download a model's weights (and convert a GGUF once) so it runs offline."""
    from chatcli import loader, sources
    from chatcli.registry import load_registry

    ui = UI()
    spec = load_registry(models_file).resolve(alias)
    if spec.is_remote:
        from chatcli.errors import UsageError

        raise UsageError(f"'{alias}' is served by {spec.base_url}: there are no weights to pull",
                         f"use it directly, e.g. chatcli ask -m {alias} \"Hi\"")
    already = _cached_path(spec)
    weights = sources.fetch(spec, ui)
    if weights.gguf_file:
        loader.ensure_converted(spec, weights, ui)
    where = _cached_path(spec) or str(weights.folder)
    ui.print(f"{spec.alias}: {'already cached' if already else 'ready'} at {where}")
