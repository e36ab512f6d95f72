"""The `openai` backend: a server that speaks the OpenAI chat-completions API.

Contract: `OpenAIBackend` declares the models.toml keys of a remote alias
(`base_url`, `model`, optionally `api_key_env`, `tokenizer`, `server`, `timeout`)
and checks them (`parse`). Its capabilities come from the alias's server profile
(`chatcli.remote.params.PROFILES`): never token ids, model internals, plugin
strategies or a prompt cache of its own; beam search only on a server that has it;
at most 20 candidates per token (the API's limit). `check_settings` and
`check_views` refuse what the server cannot do before any request, an answer shape
(`constraint`, chatcli.constraints.spec.Constraint) included: each server profile
maps the shapes it can hold into the request (`chatcli.remote.params`: response_format,
vLLM's structured_outputs, llama.cpp's grammar) and refuses the others, naming the
flag and the profile. The server applies the constraint; chatcli sees no mask, so the
`constrained` capability (a logits mask per step, what --show-candidates would show
removed) stays off and `Generation.constraint_satisfied` is judged from the answer
(`chatcli.remote.model.satisfied`). `open` connects
(`chatcli.remote.model.open_remote`), and the opened backend owns the HTTP client.
Packed messages are sent as messages (the server applies its chat template); their
tokens are counted with the alias's `tokenizer`, else estimated (`approximate`).
`ask --raw` (the `raw` capability, where the server profile has a completions endpoint)
sends their text to /completions instead (`chatcli.remote.params.check_raw` says what it
refuses there); a server always has a chat template (`has_chat_template`).

Knows nothing about the terminal or the CLI; HTTP happens in `chatcli.remote`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from chatcli.backends.base import Capabilities, Views
from chatcli.errors import UsageError
from chatcli.registry import ModelSpec

DEFAULT_TIMEOUT = 60.0
_ENV_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def check_base_url(url: str) -> str | None:
    """Why `url` cannot be a server address (None when it can)."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError as exc:
        return str(exc)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "it must start with http:// or https:// and name a host"
    if parts.query or parts.fragment:
        return "it must not have a query or fragment"
    return None


def _where(spec: Any) -> str:
    return spec.alias or spec.base_url or ""


@dataclass(frozen=True)
class OpenAISpec(ModelSpec):
    """A remote alias: an OpenAI-compatible server and its model."""

    backend: str = "openai"
    base_url: str | None = None  # the server, e.g. http://127.0.0.1:8080/v1
    model: str | None = None  # the model name the server knows
    api_key_env: str | None = None  # NAME of the env variable holding the key
    tokenizer: str | None = None  # a local alias or hub id to count tokens exactly
    server: str = "generic"  # which extra request fields the server accepts
    timeout: float = DEFAULT_TIMEOUT  # seconds to wait for the server


class OpenAIBackend:
    name: ClassVar[str] = "openai"
    spec_class: ClassVar[type] = OpenAISpec
    keys: ClassVar[dict[str, type | tuple[type, ...]]] = {
        "base_url": str, "model": str, "api_key_env": str, "tokenizer": str, "server": str,
        "timeout": (int, float),
    }

    # -- the alias, before anything is opened -------------------------------------------
    @classmethod
    def parse(cls, entry: dict[str, Any], fail: Any, origin: Path) -> dict[str, Any]:
        """The `ModelSpec` fields of a remote alias's table (types are already checked)."""
        from chatcli.remote.params import PROFILES

        backend = cls.name
        for key in ("base_url", "model"):
            if key not in entry:
                raise fail(f"needs '{key}' for backend '{backend}'",
                           'e.g. base_url = "http://127.0.0.1:8000/v1" and model = "NAME"')
        problem = check_base_url(entry["base_url"])
        if problem:
            raise fail(f"'base_url' {entry['base_url']!r} is not usable: {problem}",
                       'e.g. base_url = "http://127.0.0.1:8000/v1"', "base_url")
        env = entry.get("api_key_env")
        if env is not None and not _ENV_RE.match(env):
            raise fail("'api_key_env' must be the NAME of an environment variable (not the key)",
                       'e.g. api_key_env = "VLLM_API_KEY"; the key itself never goes in this '
                       "file", "api_key_env")
        server = entry.get("server", "generic")
        if server not in PROFILES:
            raise fail(f"'server' must be one of {', '.join(PROFILES)} (got {server!r})",
                       'e.g. server = "vllm"', "server")
        timeout = entry.get("timeout", DEFAULT_TIMEOUT)
        if not timeout > 0:
            raise fail("'timeout' must be positive (seconds)", "e.g. timeout = 60", "timeout")
        return dict(source="remote", base_url=entry["base_url"].rstrip("/"),
                    model=entry["model"], api_key_env=env, tokenizer=entry.get("tokenizer"),
                    server=server, timeout=float(timeout))

    @staticmethod
    def location(spec: Any) -> str:
        return f"{spec.backend}:{spec.base_url} ({spec.model})"

    check_base_url = staticmethod(check_base_url)

    @classmethod
    def one_off(cls, base_url: str, model: str | None) -> Any:
        """The spec of `--base-url`'s server (its model `model`, None: the one it lists)."""
        return OpenAISpec(alias=model or "", source="remote", base_url=base_url, model=model)

    @staticmethod
    def capabilities_of(spec: Any) -> Capabilities:
        from chatcli.remote.params import PROFILES

        profile = PROFILES[spec.server]
        return Capabilities(token_ids=False, internals=False, any_strategy=False,
                            beam=bool(profile.beam),
                            max_candidates=profile.max_top_logprobs if profile.logprobs else 0,
                            constrained=False,  # the server masks, unseen: no removed mass
                            kv_reuse=False,
                            exact_count=bool(spec.tokenizer), raw=profile.completions)

    @staticmethod
    def check_views(spec: Any, views: Views) -> None:
        """`views.internals` (e.g. --show-beams) reads the model's internals: refused."""
        if views.internals:
            raise UsageError(f"{views.internals} needs the model's internals, which a server "
                             f"does not return ('{_where(spec)}' is remote)",
                             "use a local model (-m)")

    @staticmethod
    def check_raw(spec: Any, views: Views, constraint: Any = None) -> None:
        """Refuse, before any request, a raw completion the alias's server cannot give."""
        from chatcli.remote.params import check_raw

        check_raw(spec, views.candidates, constraint)

    @staticmethod
    def check_settings(spec: Any, settings: Any, views: Views, constraint: Any = None) -> None:
        """Refuse, before any request, what the alias's server cannot do: settings,
        candidates and the answer's shape (`constraint`)."""
        from chatcli.remote.params import check

        check(spec, settings, views.candidates, constraint)

    @staticmethod
    def runtime_for(spec: Any, device: str, dtype: str, threads: int | None,
                    quantize: str | None) -> None:
        """The server decides its device and precision: --quantize is refused."""
        if quantize not in (None, "none"):
            raise UsageError(
                f"--quantize applies to local models; '{_where(spec)}' is served remotely",
                "drop --quantize (the server decides its precision)",
            )
        return None

    @staticmethod
    def describe(spec: Any) -> dict[str, Any]:
        """What `models show --json` says of the alias (after alias, default, description)."""
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

    @staticmethod
    def fields(info: dict[str, Any]) -> list[tuple[str, str]]:
        """`models show`'s rows for what `describe` returned."""
        key = info["api_key_env"]
        return [
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
        ]

    @staticmethod
    def listing(spec: Any) -> dict[str, Any]:
        return {"cached": None, "window": "from server"}

    @staticmethod
    def generation_defaults(spec: Any) -> tuple[dict[str, Any], str | None]:
        return {}, "a remote alias: only models.toml and flags apply here"

    @staticmethod
    def pull(spec: Any, reporter: Any) -> str:
        raise UsageError(f"'{spec.alias}' is served by {spec.base_url}: there are no weights "
                         "to pull", f"use it directly, e.g. chatcli ask -m {spec.alias} \"Hi\"")

    @classmethod
    def open(cls, spec: Any, registry: Any, reporter: Any, runtime: Any) -> OpenAIBackend:
        from chatcli.remote.model import open_remote

        return cls(open_remote(spec, registry))

    # -- an opened server ---------------------------------------------------------------
    def __init__(self, remote: Any) -> None:
        self.remote = remote  # chatcli.remote.model.RemoteModel: owns the HTTP client
        self.capabilities = self.capabilities_of(remote.spec)
        self.implementation = "remote"
        self.implementation_name = "remote"
        self.implementation_note = ""

    @property
    def spec(self) -> Any:
        return self.remote.spec

    @property
    def context_window(self) -> int:
        return int(self.remote.context_window)

    @property
    def generation_config(self) -> dict[str, Any]:
        return dict(self.remote.generation_config)

    @property
    def reused(self) -> int:
        return 0  # the server keeps its own cache, if any

    @property
    def approximate(self) -> bool:
        return bool(self.remote.approximate)

    @property
    def count(self) -> Any:  # a chatcli.context.Measure
        """The prompt's token ids (exact with a tokenizer, else placeholders as many as the
        estimate), counting each message once: the remote model's `counter`."""
        return self.remote.counter

    @property
    def has_chat_template(self) -> bool:
        return True  # the server applies its own

    # A server's reasoning output is not split from the answer (its template is its own).
    thinking = None

    @property
    def raw_count(self) -> Any:
        """The prompt token ids of a raw completion (the messages' text): exact with a
        tokenizer, else estimated."""
        return self.remote.raw_count_ids

    def check(self, settings: Any, views: Views, constraint: Any = None) -> None:
        self.check_views(self.spec, views)
        self.check_settings(self.spec, settings, views, constraint)

    def invalidate(self) -> None:
        """Nothing to forget: the server keeps its own cache."""

    def stream(self, packed: Any, settings: Any, max_new_tokens: int, views: Views,
               strategies: Any = None, constraint: Any = None, raw: bool = False) -> Any:
        return self.remote.stream(packed.messages, packed.ids, settings, max_new_tokens,
                                  views.candidates, constraint, raw=raw)

    def token_text(self, token_id: int) -> str:
        return str(self.remote.token_text(token_id))

    def prompt_text(self, messages: list[Any]) -> tuple[str, str | None]:
        if self.remote.tokenizer is not None:
            from chatcli.prompt import render_text

            return render_text(self.remote.tokenizer, messages), None
        import json

        return (json.dumps([m.as_dict() for m in messages], indent=2, ensure_ascii=False),
                "(the messages sent to the server, which applies its own chat template)")

    def attention(self, packed: Any, answer_ids: list[int]) -> Any:
        self.check_views(self.spec, Views(internals="attention per turn"))
