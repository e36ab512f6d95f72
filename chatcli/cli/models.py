"""`chatcli models list|show` and `chatcli pull`: the model registry seen from the CLI."""

from __future__ import annotations

import dataclasses
from typing import Any

import typer

from chatcli.cli.options import AliasArg, JsonListingOpt, ModelsFileOpt
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
def list_models(models_file: ModelsFileOpt = None, json_out: JsonListingOpt = False) -> None:
    """Every alias: size, context window, whether it is on disk, backend and source.

    With --json: a list of objects with the keys alias, default (true for the
    default alias), params (null: unknown), context_window (null: from the model
    config or the server), cached (null for a remote alias), backend and source.
    """
    from chatcli.registry import load_registry
    from chatcli.ui.tables import show_table

    registry = load_registry(models_file)
    items = [
        {
            "alias": alias,
            "default": alias == registry.default,
            "params": spec.params or None,
            "context_window": spec.context_window or None,
            "cached": None if spec.is_remote else _cached_path(spec) is not None,
            "backend": spec.backend,
            "source": spec.location,
        }
        for alias, spec in registry.models.items()
    ]
    ui = UI()
    if json_out:
        ui.print_json(items)
        return
    rows = []
    for item, spec in zip(items, registry.models.values(), strict=True):
        name = item["alias"] + (" (default)" if item["default"] else "")
        ctx = str(spec.context_window) if spec.context_window else (
            "from server" if spec.is_remote else "from config")
        cached = "-" if item["cached"] is None else "yes" if item["cached"] else "no"
        rows.append([name, spec.params or "?", ctx, cached, spec.backend, spec.location])
    show_table(ui, ["alias", "params", "context", "cached", "backend", "source"], rows)


@app.command("show")
def show(alias: AliasArg, models_file: ModelsFileOpt = None,
         json_out: JsonListingOpt = False) -> None:
    """Everything chatcli knows about one alias.

    With --json: one object. Every alias has alias, default, description, backend,
    params, context_window, license, defined_in, decoding_defaults (each parameter,
    strategy first, as {"value", "origin"}; origin is default,
    generation_config.json or models.toml) and decoding_note (null, or why a layer
    does not apply). A local alias adds source, dtype, implementation, quantize,
    chat_template (models.toml or model), trust_remote_code and cached (the path,
    or null); a remote one adds base_url, model, server, api_key_env ({"name",
    "set"}, or null), tokenizer and timeout (seconds). Null means unset.
    """
    from chatcli.decoding.registry import strategy_registry
    from chatcli.decoding.settings import resolve_settings
    from chatcli.loader import local_generation_config
    from chatcli.registry import load_registry

    registry = load_registry(models_file)
    spec = registry.resolve(alias)
    info = _remote_info(spec) if spec.is_remote else _local_info(spec)
    info = {"alias": spec.alias, "default": spec.alias == registry.default,
            "description": spec.description or None, **info}
    gen_config = {} if spec.is_remote else local_generation_config(spec)
    settings = resolve_settings(strategy_registry(), alias_defaults=spec.defaults,
                                generation_config=gen_config)
    note = None
    if spec.is_remote:
        note = "a remote alias: only models.toml and flags apply here"
    elif not gen_config and spec.source != "path":
        note = "generation_config.json not read: the model is not cached yet"
    origins = settings.origins
    values = {**dataclasses.asdict(settings.params), **dataclasses.asdict(settings.common)}
    ui = UI()
    if json_out:
        decoding = {"strategy": {"value": settings.strategy,
                                 "origin": origins.get("strategy", "default")}}
        for name, value in values.items():
            shown = list(value) if isinstance(value, tuple) else value
            decoding[name] = {"value": shown, "origin": origins[name]}
        ui.print_json({**info, "decoding_defaults": decoding, "decoding_note": note})
        return
    if spec.is_remote:
        _show_remote(ui, info)
    else:
        _show_local(ui, info)
    ui.print("")
    ui.print("effective decoding defaults (strategy < generation_config.json < models.toml "
             "< flags):")
    if note is not None:
        ui.print(f"  ({note})")
    ui.print(f"{'strategy':<18}  {settings.strategy} ({origins.get('strategy', 'default')})")
    for name, value in values.items():
        shown = "none" if value in (None, ()) else value
        ui.print(f"  {name:<16}  {shown} ({origins[name]})")


def _remote_info(spec) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    """What `models show --json` says of a remote alias (after alias, default, description)."""
    import os

    key = None
    if spec.api_key_env:  # the variable's name only, never its value
        key = {"name": spec.api_key_env, "set": bool(os.environ.get(spec.api_key_env))}
    return {
        "backend": spec.backend,
        "base_url": spec.base_url,
        "model": spec.model,
        "server": spec.server,
        "api_key_env": key,
        "tokenizer": spec.tokenizer or None,
        "params": spec.params or None,
        "context_window": spec.context_window or None,
        "timeout": spec.timeout,
        "license": spec.license or None,
        "defined_in": str(spec.origin),
    }


def _local_info(spec) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    """What `models show --json` says of a local alias (after alias, default, description)."""
    return {
        "backend": spec.backend,
        "source": spec.location,
        "params": spec.params or None,
        "context_window": spec.context_window or None,
        "dtype": spec.dtype,
        "implementation": _implementation(spec),
        "quantize": spec.quantize,
        "chat_template": "models.toml" if spec.chat_template else "model",
        "trust_remote_code": spec.trust_remote_code,
        "license": spec.license or None,
        "cached": _cached_path(spec),
        "defined_in": str(spec.origin),
    }


def _head(info: dict[str, Any]) -> list[tuple[str, str]]:
    return [("alias", info["alias"] + (" (default)" if info["default"] else "")),
            ("description", info["description"] or "-")]


def _show_remote(ui: UI, info: dict[str, Any]) -> None:
    from chatcli.ui.tables import show_fields

    key = info["api_key_env"]
    show_fields(
        ui,
        [
            *_head(info),
            ("backend", info["backend"]),
            ("base_url", info["base_url"]),
            ("model", info["model"]),
            ("server", info["server"]),
            ("api_key_env", f"{key['name']} ({'set' if key['set'] else 'not set'})"
             if key else "-"),
            ("tokenizer", info["tokenizer"] or "none (token counts are estimated)"),
            ("params", info["params"] or "?"),
            ("context window", str(info["context_window"] or "from the server, else 4096")),
            ("timeout", f"{info['timeout']:g} s"),
            ("license", info["license"] or "?"),
            ("defined in", info["defined_in"]),
        ],
    )


def _show_local(ui: UI, info: dict[str, Any]) -> None:
    from chatcli.ui.tables import show_fields

    show_fields(
        ui,
        [
            *_head(info),
            ("source", info["source"]),
            ("params", info["params"] or "?"),
            ("context window", str(info["context_window"] or "from the model config")),
            ("dtype", info["dtype"]),
            ("implementation", info["implementation"]),
            ("quantize", info["quantize"]),
            ("chat template", "from models.toml" if info["chat_template"] == "models.toml"
             else "the model's own"),
            ("trust remote code", "yes" if info["trust_remote_code"] else "no"),
            ("license", info["license"] or "?"),
            ("cached", info["cached"] or "no"),
            ("defined in", info["defined_in"]),
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
