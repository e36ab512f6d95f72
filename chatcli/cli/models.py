"""`chatcli models list|show` and `chatcli pull`: the model registry seen from the CLI."""

from __future__ import annotations

import dataclasses
from typing import Annotated

import typer

from chatcli.cli.options import (
    AliasArg,
    DtypeOpt,
    JsonListingOpt,
    ModelsFileOpt,
    QuantizeOpt,
    ThreadsOpt,
)
from chatcli.ui.console import UI

app = typer.Typer(help="List and inspect the models chatcli knows.", no_args_is_help=True)


@app.command("list")
def list_models(models_file: ModelsFileOpt = None, json_out: JsonListingOpt = False) -> None:
    """Every alias: size, context window, whether it is on disk, backend and source.

    The compiled column says whether the decode step of a local alias, in the mode
    it runs by default, is compiled for this CPU and torch: yes, building (in the
    background), failed, no, or - (nothing to compile: the exact path, a remote alias,
    weights not on disk).

    With --json: a list of objects with the keys alias, default (true for the
    default alias), params (null: unknown), context_window (null: from the model
    config or the server), cached (null for a remote alias), compiled (null: nothing
    to compile; else as models show --json says it), backend and source.
    """
    from chatcli.backends import backend_of
    from chatcli.registry import load_registry
    from chatcli.ui.tables import show_table

    registry = load_registry(models_file)
    listed = [backend_of(spec).listing(spec) for spec in registry.models.values()]
    items = [
        {
            "alias": alias,
            "default": alias == registry.default,
            "params": spec.params or None,
            "context_window": spec.context_window or None,
            "cached": cells["cached"],
            "compiled": cells.get("compiled"),
            "backend": spec.backend,
            "source": spec.location,
        }
        for (alias, spec), cells in zip(registry.models.items(), listed, strict=True)
    ]
    ui = UI()
    if json_out:
        ui.print_json(items)
        return
    rows = []
    for item, spec, cells in zip(items, registry.models.values(), listed, strict=True):
        name = item["alias"] + (" (default)" if item["default"] else "")
        ctx = str(spec.context_window) if spec.context_window else cells["window"]
        cached = "-" if item["cached"] is None else "yes" if item["cached"] else "no"
        rows.append([name, spec.params or "?", ctx, cached, cells.get("compiled_cell", "-"),
                     spec.backend, spec.location])
    show_table(ui, ["alias", "params", "context", "cached", "compiled", "backend", "source"],
               rows)


@app.command("show")
def show(alias: AliasArg, models_file: ModelsFileOpt = None,
         json_out: JsonListingOpt = False) -> None:
    """Everything chatcli knows about one alias.

    With --json: one object. Every alias has alias, default, description, backend,
    params, context_window, license, defined_in, decoding_defaults (each parameter,
    strategy first, as {"value", "origin"}; origin is default,
    generation_config.json or models.toml) and decoding_note (null, or why a layer
    does not apply). A local alias adds source, dtype, architecture (the cached model's
    model_type, or null), implementation, quantize, stored_precision (a GGUF on disk:
    what its tensor types run as, one string per kernel; else null), chat_template
    (models.toml, model, or none: the cached model carries none and completes text
    only), trust_remote_code, cached (the path, or null), compiled and compile; a
    remote one adds base_url, model, server, api_key_env ({"name", "set"}, or null),
    tokenizer and timeout (seconds). Null means unset.

    compiled is the decode step compiled for this CPU and torch, in the mode the alias
    runs by default (null: nothing to compile, e.g. the exact path): {"state": built,
    building, failed or "not built", "mode" (dtype/quantization), "path" (the
    package), "pid" (building: the builder's), "log" (a background build's log, kept
    when it failed; null while 'chatcli compile' builds it), "reason" (failed: why;
    not built: why a package there is not used), "automatic" (whether chatcli builds
    it in the background after an answer), "automatic_off" (why not: compile =
    "never" in models.toml, or
    CHATCLI_AUTO_COMPILE)}. compile is the alias's setting, auto or never.
    """
    from chatcli.backends import backend_of
    from chatcli.decoding.registry import strategy_registry
    from chatcli.decoding.settings import resolve_settings
    from chatcli.registry import load_registry

    registry = load_registry(models_file)
    spec = registry.resolve(alias)
    backend = backend_of(spec)
    info = {"alias": spec.alias, "default": spec.alias == registry.default,
            "description": spec.description or None, **backend.describe(spec)}
    gen_config, note = backend.generation_defaults(spec)
    settings = resolve_settings(strategy_registry(), alias_defaults=spec.defaults,
                                generation_config=gen_config)
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
    from chatcli.ui.tables import show_fields

    head = [("alias", info["alias"] + (" (default)" if info["default"] else "")),
            ("description", info["description"] or "-")]
    show_fields(ui, [*head, *backend.fields(info)])
    ui.print("")
    ui.print("effective decoding defaults (strategy < generation_config.json < models.toml "
             "< flags):")
    if note is not None:
        ui.print(f"  ({note})")
    ui.print(f"{'strategy':<18}  {settings.strategy} ({origins.get('strategy', 'default')})")
    for name, value in values.items():
        shown = "none" if value in (None, ()) else value
        ui.print(f"  {name:<16}  {shown} ({origins[name]})")


def pull(alias: AliasArg, models_file: ModelsFileOpt = None) -> None:
    """Download a model's weights (and convert a GGUF once) so it runs offline."""
    from chatcli.backends import backend_of
    from chatcli.paths import check_home
    from chatcli.registry import load_registry

    ui = UI()
    spec = load_registry(models_file).resolve(alias)
    check_home()
    ui.print(backend_of(spec).pull(spec, ui))


CompileAliasArg = Annotated[
    str | None, typer.Argument(help="Model alias (default: the default model).",
                               show_default=False)]
QuickOpt = Annotated[
    bool, typer.Option("--quick", help="Build without autotuning: a slower step, and hardly "
                       "a quicker build (1-2 minutes for the default model).")]


def compile_step(alias: CompileAliasArg = None, quick: QuickOpt = False,
                 models_file: ModelsFileOpt = None, dtype: DtypeOpt = "auto",
                 quantize: QuantizeOpt = None, threads: ThreadsOpt = None) -> None:
    """Compile the model's decode step ahead of time (AOTInductor) for this CPU, once.

    Only quantized modes (int4, int8, or gguf: a GGUF's stored precision, the default
    model's) are compiled: later answers in the same dtype and quantization decode
    through it (`--stats` says e.g. native+gguf+compiled); a package built for another
    torch, CPU or weights, or a damaged one, is not used (a note says so). The exact
    path, --quantize none, is never compiled.

    chatcli also builds the step by itself: after an answer in a quantized mode without
    one, in the background at the lowest priority (models list says "building"; a failed
    build's log is named by models show and it is not tried again until torch or chatcli
    changes, or this command runs). Switch that off with compile = "never" in
    models.toml (at the top or per alias) or CHATCLI_AUTO_COMPILE=0. This command builds
    it now, in the foreground: a background build of the same step is stopped first."""
    from chatcli.backends import backend_of
    from chatcli.errors import UsageError
    from chatcli.paths import check_home
    from chatcli.registry import load_registry

    ui = UI()
    spec = load_registry(models_file).resolve(alias)
    backend = backend_of(spec)
    if not backend.capabilities_of(spec).compile:
        raise UsageError(f"'{spec.alias}' runs on backend {spec.backend}: there is no decode "
                         "step to compile here", "compile a local alias")
    runtime = backend.runtime_for(spec, "cpu", dtype, threads, quantize)
    check_home()
    ui.print(backend.compile(spec, runtime, ui, not quick))
