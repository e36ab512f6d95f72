"""A third backend, as a user would add one: `backend = "echo"` answers with the
last user message, word by word (tests/test_backends.py registers it with one line).

It declares its own models.toml key (`prefix`) and the spec field that keeps it
(`EchoSpec`), and what it can do: no token ids,
no internals, no candidates, no beam, only the greedy strategy.
Knows nothing about the terminal or the CLI.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from chatcli.answer import Generation, Stats, StepEvent
from chatcli.backends.base import Capabilities, Views, check_capabilities
from chatcli.errors import ChatcliError
from chatcli.registry import ModelSpec

CAPABILITIES = Capabilities(max_candidates=0, exact_count=False)


@dataclass(frozen=True)
class EchoSpec(ModelSpec):
    prefix: str = ""


class EchoBackend:
    name: ClassVar[str] = "echo"
    spec_class: ClassVar[type] = EchoSpec
    keys: ClassVar[dict[str, type | tuple[type, ...]]] = {"prefix": str}

    # -- the alias -------------------------------------------------------------------
    @staticmethod
    def parse(entry: dict[str, Any], fail: Any, origin: Path) -> dict[str, Any]:
        prefix = entry.get("prefix", "")
        if "\n" in prefix:
            raise fail("'prefix' must be one line", 'e.g. prefix = "echo:"', "prefix")
        return {"source": "remote", "prefix": prefix}

    @staticmethod
    def location(spec: Any) -> str:
        return f"echo (prefix {spec.prefix!r})"

    @staticmethod
    def capabilities_of(spec: Any) -> Capabilities:
        return CAPABILITIES

    @staticmethod
    def check_views(spec: Any, views: Views) -> None:
        check_capabilities(spec, CAPABILITIES, views)

    @staticmethod
    def check_settings(spec: Any, settings: Any, views: Views) -> None:
        check_capabilities(spec, CAPABILITIES, views, settings)

    @staticmethod
    def runtime_for(spec: Any, device: str, dtype: str, threads: int | None,
                    quantize: str | None) -> None:
        return None

    @staticmethod
    def describe(spec: Any) -> dict[str, Any]:
        return {"backend": spec.backend, "prefix": spec.prefix,
                "context_window": spec.context_window or None,
                "defined_in": str(spec.origin)}

    @staticmethod
    def fields(info: dict[str, Any]) -> list[tuple[str, str]]:
        return [("backend", info["backend"]), ("prefix", repr(info["prefix"])),
                ("defined in", info["defined_in"])]

    @staticmethod
    def listing(spec: Any) -> dict[str, Any]:
        return {"cached": None, "window": "1000"}

    @staticmethod
    def generation_defaults(spec: Any) -> tuple[dict[str, Any], str | None]:
        return {}, None

    @staticmethod
    def pull(spec: Any, reporter: Any) -> str:
        return f"{spec.alias}: nothing to pull"

    @classmethod
    def open(cls, spec: Any, registry: Any, reporter: Any, runtime: Any) -> EchoBackend:
        return cls(spec)

    # -- opened ----------------------------------------------------------------------
    def __init__(self, spec: Any) -> None:
        self.spec = spec
        self.context_window = spec.context_window or 1000
        self.generation_config: dict[str, Any] = {}
        self.capabilities = CAPABILITIES
        self.implementation = self.implementation_name = "echo"
        self.implementation_note = ""
        self.thinking = None
        self.words: list[str] = []
        self.reused = 0
        self.approximate = False

    def count(self, messages: list[Any]) -> list[int]:
        return [0] * sum(len(m.content.split()) + 1 for m in messages)

    def check(self, settings: Any, views: Views) -> None:
        self.check_settings(self.spec, settings, views)

    def invalidate(self) -> None:
        pass

    def stream(self, packed: Any, settings: Any, max_new_tokens: int, views: Views,
               strategies: Any = None) -> Generation:
        words = (self.spec.prefix.split() + packed.messages[-1].content.split())
        words = words[:max_new_tokens]
        stats = Stats(prompt_tokens=len(packed.ids))
        gen = Generation(iter(()), stats, settings)

        def events() -> Iterator[StepEvent]:
            start = time.perf_counter()
            for i, word in enumerate(words):
                last = i == len(words) - 1
                finish = ("length" if len(words) == max_new_tokens else "stop") if last else None
                self.words.append(word)
                stats.completion_tokens = i + 1
                if last:
                    stats.finish_reason = finish
                    stats.total_s = time.perf_counter() - start
                yield StepEvent(-1 - (len(self.words) - 1), word + ("" if last else " "),
                                0.0, finish)
            if not words:
                raise ChatcliError("nothing to echo", "type a message")

        gen._events = events()
        return gen

    def token_text(self, token_id: int) -> str:
        return self.words[-1 - token_id]

    def prompt_text(self, messages: list[Any]) -> tuple[str, str | None]:
        return "\n".join(m.content for m in messages), "(echo sees only the text)"

    def attention(self, packed: Any, answer_ids: list[int]) -> Any:
        check_capabilities(self.spec, CAPABILITIES, Views(internals="attention per turn"))
