"""Start-up steps that several commands share (kept out of the Typer wiring).

Contract: `setup(ui, choice, runtime, decoding, ...)` is what ask, chat and compare start
from (`choice`: `cli.options.ModelChoice`, `runtime`: `RuntimeChoice`, `decoding`: the
dict `decoding_options` gives):
CHATCLI_HOME checked (`paths.check_home`), the strategies (a warning per plugin
that failed to load), the decoding request, the models.toml registry, the alias
(`-m`, `--base-url`, chat's `--context-window`), the views the alias's backend cannot
give refused (`chatcli.backends`: each backend declares what it can do; `raw`: --raw
where it completes no plain text), the resident server found for a local alias
(`chatcli.serve.client.find_server`: then `open()` asks it for the model, and nothing
here imports torch), every decoding request's settings resolved once (the flags over
the alias's defaults over the model's generation_config as read before loading) and
refused where the command or the backend cannot honour them, and the runtime
(`--device`, `--dtype`, `--threads`, `--quantize`) validated (in-process, picking the
device imports torch, with Ctrl-C held meanwhile: `chatcli.interrupts.deferred`; served,
the spelling here and the rest by the server). It reads no stdin and loads nothing: the
command then does what is its own (reading the prompt, saving the question) and
calls `Setup.open()`.
`open_model` is looked up when a model is opened (a test holds it at a gate).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from chatcli.ui.console import UI


@dataclass(frozen=True)
class Request:
    """One decoding request, as the user wrote it: validated before anything loads."""

    strategy: str | None
    flags: dict[str, Any]
    options: dict[str, str]
    # compare's `-S NAME:key=value` (which may set common parameters too): how a
    # parameter is written in errors. None: the decoding flags and `-o key=value`.
    spelling: Callable[[str, str], str] | None = None


@dataclass(frozen=True)
class Refusals:
    """What a command refuses before anything loads: its own check of the settings
    (`check`), the views (`views`) and the answer's shape (`constraint`) the alias's
    backend cannot give."""

    views: Any  # chatcli.backends.base.Views
    check: Callable[[Any], None] | None = None
    constraint: Any = None

    def apply(self, spec: Any, settings: Any) -> None:
        if self.check:
            self.check(settings)
        check_settings(spec, settings, self.views, self.constraint)


@dataclass
class Setup:
    """The validated start of a model command; `open()` loads (or connects to) the model.

    Each request's settings are resolved once (`resolved`, in `requests`' order) from
    the flags, the alias's defaults and the model's generation_config as read before
    loading (`generation_config`: a cached model's generation_config.json, asked of the
    resident server when one answers). Only a model whose generation_config could not
    be read before it loaded (a first download) has them resolved again, once, when it
    opens; `use()` resolves them for the alias it switches to.
    """

    ui: UI
    choice: Any  # chatcli.cli.options.ModelChoice
    run: Any  # chatcli.cli.options.RuntimeChoice
    strategies: Any
    registry: Any
    requests: list[Request]
    spec: Any = None
    runtime: Any = None
    # The resident server that answers local aliases (chatcli.serve.client.Connection),
    # or None: they load in this process.
    served: Any = None
    refusals: Refusals | None = None
    generation_config: dict[str, Any] = field(default_factory=dict)
    resolved: list[Any] = field(default_factory=list)

    def spec_for(self, alias: str | None) -> Any:
        """The spec of `alias` (None: the default), with this run's --base-url,
        --context-window, --think / --no-think and tools."""
        import dataclasses

        spec = resolve_spec(self.registry, alias, self.choice.base_url)
        window = self.choice.context_window
        if window:
            spec = dataclasses.replace(spec, context_window=window)
        if self.choice.think is not None:
            if not hasattr(spec, "think"):
                from chatcli.errors import UsageError

                flag = "--think" if self.choice.think else "--no-think"
                raise UsageError(f"{flag} sets a local model's chat template switch, and "
                                 f"'{spec.alias}' is served by {spec.backend}",
                                 f"drop {flag}")
            spec = dataclasses.replace(spec, think=self.choice.think)
        if self.choice.tools is not None:
            if not hasattr(spec, "tools"):  # e.g. chat -c of a conversation with a server
                from chatcli.cli.tool_loop import served_model

                raise served_model(f"'{spec.alias}' (backend {spec.backend})")
            spec = dataclasses.replace(spec, tools=self.choice.tools)
        return spec

    def runtime_for(self, spec: Any) -> Any:
        r = self.run
        if self.served is not None and spec.backend == "local":  # the server resolves it
            from chatcli.runtime import check_choices

            check_choices(r.device, r.dtype, r.threads, r.quantize)
            return None
        return runtime_for(spec, r.device, r.dtype, r.threads, r.quantize)

    def use(self, alias: str | None) -> None:
        """Run with `alias` instead (ask --continue: the conversation's model)."""
        self.spec = self.spec_for(alias)
        self.resolve(self._generation_config(self.spec))
        self.runtime = self.runtime_for(self.spec)

    def _generation_config(self, spec: Any) -> dict[str, Any]:
        """The model's generation_config as known before it loads ({} where unknown)."""
        if self.served is not None and spec.backend == "local":
            return self.served.generation_defaults(spec)
        from chatcli.backends import backend_of

        return backend_of(spec).generation_defaults(spec)[0]

    def resolve(self, generation_config: dict[str, Any]) -> None:
        """Resolve every request's settings with `generation_config` and refuse what the
        command or the alias's backend cannot do with them."""
        from chatcli.decoding.settings import resolve_settings

        self.generation_config = generation_config
        self.resolved = []
        for request in self.requests:
            spelled: dict[str, Any] = ({"spelling": request.spelling, "common_options": True}
                                       if request.spelling else {})
            settings = resolve_settings(
                self.strategies, strategy=request.strategy, flags=request.flags,
                options=request.options, alias_defaults=self.spec.defaults,
                generation_config=generation_config, **spelled)
            if self.refusals is not None:
                self.refusals.apply(self.spec, settings)
            check_draft(self.registry, settings)
            self.resolved.append(settings)

    @property
    def settings(self) -> Any:
        """The command's own decoding settings (its first request's)."""
        return self.resolved[0]

    def decoding(self) -> Any:
        """The command's own decoding request, as a chat session takes it."""
        from chatcli.chat.session import DecodingRequest

        request = self.requests[0]
        return DecodingRequest(request.strategy, request.flags, request.options)

    def open(self) -> Any:
        """The model of the alias, loaded or connected to; its spec becomes `spec`. A
        generation_config unknown until now (a first download) resolves the settings
        again."""
        loaded = self._open(self.spec, self.runtime)
        self.spec = loaded.spec
        if loaded.generation_config != self.generation_config:
            self.resolve(dict(loaded.generation_config))
        return loaded

    def open_alias(self, alias: str) -> Any:
        """Another alias's model (chat's /model), leaving this setup as it is."""
        spec = self.spec_for(alias)
        return self._open(spec, self.runtime_for(spec))

    def open_here(self, alias: str) -> Any:
        """`alias`'s model loaded in this process from now on (chat, when the resident
        server that answered is gone)."""
        if self.served is not None:
            self.served.close()
            self.served = None
        return self.open_alias(alias)

    def _open(self, spec: Any, runtime: Any) -> Any:
        if self.served is not None and spec.backend == "local":
            from chatcli.serve.client import ServedBackend

            r = self.run
            return ServedBackend.open(self.served, spec, self.ui, r.device, r.dtype, r.threads,
                                      r.quantize)
        return open_model(spec, self.registry, self.ui, runtime)


def setup(
    ui: UI,
    choice: Any,
    run: Any,
    decoding: Mapping[str, Any] | None = None,
    *,
    requests: Callable[[Any], list[Request]] | None = None,
    check: Callable[[Any], None] | None = None,
    internals: str | None = None,
    candidates: int | None = None,
    alias: Callable[[], str | None] | None = None,
    constraint: Any = None,
    raw: bool = False,
) -> Setup:
    """Everything a model command checks before it reads stdin or loads anything.

    In this order: CHATCLI_HOME (`paths.check_home`); the strategies; the decoding
    request of the command's flags (unless `requests(spec)` gives them, once the alias is
    known: compare's `-S`); models.toml;
    the alias (`alias()` once models.toml is read, else `-m`); `raw` (--raw) and the
    views the alias's backend cannot give refused (`internals`: the flag that reads the
    model's internals; `candidates` alternatives per token); the resident server found
    (a local alias); then each request's settings resolved (`Setup.resolve`) and
    refused where the command (`check(settings)`) or the backend (the settings with
    `constraint`, the answer's shape) cannot honour them; last the runtime.
    """
    from chatcli.cli.options import decoding_request
    from chatcli.paths import check_home
    from chatcli.registry import load_registry

    check_home()
    strategies = load_strategies(ui)
    own = None if requests else [Request(*decoding_request(decoding or {}))]
    registry = load_registry(choice.models_file)
    prepared = Setup(ui, choice, run, strategies, registry, own or [])
    prepared.spec = prepared.spec_for(alias() if alias else choice.model)
    if requests:
        prepared.requests = requests(prepared.spec)
    from chatcli.backends import backend_of
    from chatcli.backends.base import Views, check_raw

    views = Views(candidates=candidates, internals=internals)
    if raw:  # the backend's own refusals where it has them, else the capability's
        cls = backend_of(prepared.spec)
        if hasattr(cls, "check_raw"):
            cls.check_raw(prepared.spec, views, constraint)
        else:
            check_raw(prepared.spec, cls.capabilities_of(prepared.spec))
    check_views(prepared.spec, views)
    prepared.refusals = Refusals(views, check, constraint)
    if prepared.spec.backend == "local":
        from chatcli.serve.client import find_server

        prepared.served = find_server(ui, run.no_server)
    prepared.resolve(prepared._generation_config(prepared.spec))
    from chatcli import interrupts

    with interrupts.deferred(interrupts.LOADING):  # picking the device imports torch
        prepared.runtime = prepared.runtime_for(prepared.spec)
    return prepared


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

    from chatcli.backends import base_url_backend
    from chatcli.errors import UsageError

    if base_url is None:
        return registry.resolve(model)
    server = base_url_backend()
    problem = server.check_base_url(base_url)
    if problem:
        raise UsageError(f"--base-url {base_url}: {problem}",
                         "e.g. --base-url http://127.0.0.1:8080/v1")
    base_url = base_url.rstrip("/")
    if model is not None and model in registry.models:
        spec = registry.models[model]
        from chatcli.backends import backend_of

        if "base_url" not in backend_of(spec).keys:
            raise UsageError(
                f"--base-url needs a remote model, and '{model}' is a local alias",
                f"use -m with an alias that has backend = \"{server.name}\", or -m with the "
                "name the server gives its model",
            )
        return dataclasses.replace(spec, base_url=base_url)
    return server.one_off(base_url, model)


def runtime_for(
    spec: Any, device: str, dtype: str, threads: int | None, quantize: str | None = None
) -> Any:
    """The runtime the alias's backend validates (None where a server decides)."""
    from chatcli.backends import backend_of

    return backend_of(spec).runtime_for(spec, device, dtype, threads, quantize)


def check_views(spec: Any, views: Any) -> None:
    """Refuse, before anything loads, a view the alias's backend cannot give."""
    from chatcli.backends import backend_of

    backend_of(spec).check_views(spec, views)


def open_model(spec: Any, registry: Any, ui: UI, runtime: Any) -> Any:
    """The alias's backend, opened: a model loaded with `runtime_for`'s runtime, or a
    server connected to (runtime None)."""
    from chatcli.backends import backend_of

    return backend_of(spec).open(spec, registry, ui, runtime)


def check_draft(registry: Any, settings: Any) -> None:
    """--speculate ALIAS names an alias of models.toml (checked before anything loads;
    the backend that drafts with it checks the rest when it opens it)."""
    value = settings.common.speculate
    if value is None:
        return
    from chatcli.decoding.speculative.spelling import parse
    from chatcli.errors import ChatcliError, UsageError

    wanted = parse(value)
    if wanted.lookup:
        return
    try:
        registry.resolve(wanted.source)
    except ChatcliError as exc:
        raise UsageError(f"--speculate {value}: {exc.message}", exc.hint) from None


def check_settings(spec: Any, settings: Any, views: Any, constraint: Any = None) -> None:
    """Refuse, before any request, settings (and a constraint) the alias's backend cannot
    honour."""
    from chatcli.backends import backend_of

    backend = backend_of(spec)
    if constraint is None:
        backend.check_settings(spec, settings, views)
    else:
        backend.check_settings(spec, settings, views, constraint)


def raw_without_template(backend: Any, alias: str, system: str | None, ui: UI) -> bool:
    """Whether a model must complete text as it is because it has no chat template (then
    a note says so); a system prompt (-s) has nowhere to go there and is refused."""
    from chatcli.errors import UsageError

    if getattr(backend, "has_chat_template", True):
        return False
    if system is not None:
        raise UsageError(f"{alias} has no chat template, so it completes your text as it is, "
                         "with no system prompt (-s)", "drop -s, or set chat_template for "
                         f"[models.{alias}] in models.toml")
    ui.notify(f"{alias} has no chat template: completing your text as it is (--raw)")
    return True


def stdin_bytes() -> bytes:
    """Everything on stdin, as bytes (for `-f -`)."""
    import sys

    stream = sys.stdin
    if stream is None:
        return b""
    buf = getattr(stream, "buffer", None)
    return bytes(buf.read()) if buf is not None else stream.read().encode("utf-8", "replace")


def gather_files(ui: UI, paths: list[str], max_files: int, max_bytes: int,
                 truncate: bool = False) -> Any:
    """The files of `-f/--file` (chatcli.attachments.Gathered), each note warned; past a
    cap, refused unless `truncate` (--truncate-files)."""
    from chatcli.attachments import gather

    gathered = gather(paths, stdin=stdin_bytes if "-" in paths else None,
                      max_files=max_files, max_bytes=max_bytes, truncate=truncate)
    for note in gathered.notes:
        ui.warn(note)
    return gathered
