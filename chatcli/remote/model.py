"""A model behind an OpenAI-compatible server, standing in for a loaded local model.

Contract: `open_remote(spec, registry, reporter)` returns a `RemoteModel` with
what a chat session needs: `spec`, `context_window`, `generation_config` ({}:
the server applies its own), `count_ids(messages)` for context packing and
`stream(messages, prompt_ids, settings, max_new_tokens, candidates, constraint)`,
which sends the request at once (so connection and status errors surface before any
output) and returns the same `Generation` of `StepEvent`s and `Stats` as a local model.

With a `constraint` (the answer's shape, mapped into the request by
`chatcli.remote.params`), the server holds the answer to it; chatcli cannot see how,
so `Generation.constraint_satisfied` is judged from what came back (`satisfied`): the
server finished with "stop", and for the JSON kinds the text parses as JSON, for a
choice it is one of the choices, for a regex Python's `re.fullmatch` accepts it
(a pattern Python cannot compile is trusted to the finish reason, as a grammar is).
It is set before the last event is yielded; an answer cut short sets it False.

Remote answers are text, not vocabulary ids: each token text the server returns
is interned and named by a negative id (`token_text(id)` gives it back), so
history, `compare`'s divergence and candidate tables work unchanged. With
`logprobs`, one event per token; otherwise one event per streamed chunk. The
finish reason arrives with the last event, as locally. An answer that stops
early raises after the events that did arrive (the caller keeps them).

Token counts for packing: with `tokenizer = "ALIAS"` (a local alias, pulled) or a
hub id, the chat template is rendered and counted exactly as for a local model.
Without one they are estimated: per message ceil(characters / 4) + 4, plus 3 for
the reply's header, times a factor learnt from the prompt sizes the server
reports (never below 1, never above 16: a server's implausible count is capped);
`approximate` is True then and the caller warns. `counter` is `count_ids` as a
`chatcli.context.Measure`, so that packing counts each message once either way.
A raw completion (`stream(..., raw=True)`: the completions endpoint, its prompt the
messages' text) is counted by `raw_count_ids`: the tokenizer's `raw_ids` of that text,
else ceil(characters / 4) times the learnt factor.
What the server sends is checked by
`chatcli.remote.shape`: JSON of the wrong shape raises `MalformedStreamError` after
the events that did arrive, as a cut stream does.

Knows nothing about the terminal or the CLI.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from chatcli.answer import Generation, Stats, StepEvent
from chatcli.conversation import Message
from chatcli.decoding.base import Candidates
from chatcli.decoding.settings import DecodingSettings
from chatcli.errors import ModelUnavailableError, RemoteError, UsageError
from chatcli.registry import ModelSpec, Registry
from chatcli.remote import params
from chatcli.remote.client import Client
from chatcli.remote.shape import Chunk, Listed, TokenLogprob, read_models

DEFAULT_CONTEXT_WINDOW = 4096
CHARS_PER_TOKEN = 4
MESSAGE_OVERHEAD = 4
REPLY_OVERHEAD = 3
MAX_SCALE = 16.0  # a byte-level tokenizer gives at most ~16 tokens per 4 characters


def estimate_tokens(messages: list[Message]) -> int:
    """The documented estimate: ceil(chars / 4) + 4 per message, + 3 for the reply header."""
    return REPLY_OVERHEAD + sum(
        -(-len(m.content) // CHARS_PER_TOKEN) + MESSAGE_OVERHEAD for m in messages
    )


class Estimate:
    """`RemoteModel.count_ids` without a tokenizer, as a `chatcli.context.Measure`: a
    message's size is ceil(chars / 4) + 4, a prompt's length ceil((3 + sizes) * scale)."""

    tokenizer = None

    def __init__(self, model: RemoteModel) -> None:
        self.model = model

    def __call__(self, messages: list[Message]) -> list[int]:
        return self.model.count_ids(messages)

    def sizes(self, messages: Sequence[Message]) -> list[int]:
        return [-(-len(m.content) // CHARS_PER_TOKEN) + MESSAGE_OVERHEAD for m in messages]

    def length(self, first: Message, total: int) -> int:
        return math.ceil((REPLY_OVERHEAD + total) * self.model.scale)


@dataclass
class RemoteModel:
    spec: ModelSpec
    client: Client
    context_window: int
    tokenizer: Any = None  # counts tokens exactly when set (a local alias's or a hub one's)
    generation_config: dict[str, Any] = field(default_factory=dict)
    scale: float = 1.0  # learnt from the server's reported prompt sizes (estimates only)
    _tokens: list[str] = field(default_factory=list)
    _index: dict[str, int] = field(default_factory=dict)
    _counter: Any = field(default=None, repr=False)

    @property
    def approximate(self) -> bool:
        return self.tokenizer is None

    # -- tokens ----------------------------------------------------------------------
    @property
    def counter(self) -> Any:  # a chatcli.context.Measure
        """`count_ids` counting each message once: a `chatcli.prompt.PromptCounter` over
        the tokenizer, else `Estimate` (the estimate is a sum over messages)."""
        tokenizer = self.tokenizer
        if self._counter is None or getattr(self._counter, "tokenizer", None) is not tokenizer:
            if tokenizer is not None:
                from chatcli.prompt import PromptCounter

                self._counter = PromptCounter(tokenizer)
            else:
                self._counter = Estimate(self)
        return self._counter

    def count_ids(self, messages: list[Message]) -> list[int]:
        """Prompt "ids" for packing: exact ids with a tokenizer, else placeholders (-1)
        as many as the estimate (only their number means anything)."""
        if self.tokenizer is not None:
            from chatcli.prompt import render_ids

            return render_ids(self.tokenizer, messages)
        return [-1] * math.ceil(estimate_tokens(messages) * self.scale)

    def raw_count_ids(self, messages: list[Message]) -> list[int]:
        """`count_ids` of a raw completion: the text's ids (`chatcli.prompt.raw_ids`) with a
        tokenizer, else placeholders as many as ceil(characters / 4) times the scale."""
        from chatcli.prompt import raw_ids, raw_text

        text = raw_text(messages)
        if self.tokenizer is not None:
            return raw_ids(self.tokenizer, text)
        return [-1] * math.ceil(-(-len(text) // CHARS_PER_TOKEN) * self.scale)

    def intern(self, text: str) -> int:
        index = self._index.get(text)
        if index is None:
            index = self._index[text] = len(self._tokens)
            self._tokens.append(text)
        return -1 - index

    def token_text(self, token_id: int) -> str:
        if token_id >= 0 and self.tokenizer is not None:
            return str(self.tokenizer.decode([token_id], skip_special_tokens=False))
        index = -1 - token_id
        return self._tokens[index] if 0 <= index < len(self._tokens) else ""

    def observe(self, messages: list[Message], reported_prompt_tokens: int) -> None:
        """Learn from the server's count of a prompt (estimates only)."""
        if self.tokenizer is None and reported_prompt_tokens > 0:
            ratio = reported_prompt_tokens / max(1, estimate_tokens(messages))
            self.scale = min(max(self.scale, ratio), MAX_SCALE)

    # -- answering -------------------------------------------------------------------
    def stream(
        self,
        messages: list[Message],
        prompt_ids: list[int],
        settings: DecodingSettings,
        max_new_tokens: int,
        candidates: int | None = None,
        constraint: Any = None,
        raw: bool = False,
    ) -> Generation:
        """The answer, streamed: a chat completion, or with `raw` a text completion of the
        messages' text."""
        body = params.request_body(self.spec, settings, messages, max_new_tokens, candidates,
                                   constraint, raw=raw)
        stats = Stats(prompt_tokens=len(prompt_ids))
        start = time.perf_counter()
        chunks = (self.client.stream_completion if raw else self.client.stream_chat)(body)
        gen = Generation(iter(()), stats, settings, constraint=constraint)
        gen._events = self._events(chunks, messages, gen, start, bool(candidates) and not raw)
        return gen

    def _events(
        self, chunks: Iterator[Chunk], messages: list[Message], gen: Generation,
        start: float, with_candidates: bool,
    ) -> Iterator[StepEvent]:
        stats = gen.stats
        held: StepEvent | None = None  # the newest event waits for a possible finish reason
        finish: str | None = None
        count = 0
        first = start
        prompt_tokens = completion_tokens = None
        text: list[str] = []  # the answer so far, to judge it against a constraint
        try:
            for chunk in chunks:
                if chunk.usage is not None:
                    prompt_tokens = chunk.usage.prompt_tokens
                    completion_tokens = chunk.usage.completion_tokens
                if not chunk.has_choice:
                    continue
                for event in self._chunk_events(chunk, with_candidates):
                    count += 1
                    if count == 1:
                        first = time.perf_counter()
                        stats.time_to_first_token_s = first - start
                    if held is not None:
                        yield held
                    held = event
                    text.append(event.text)
                finish = chunk.finish_reason or finish
        except (RemoteError, KeyboardInterrupt):
            _timings(stats, count, start, first)  # the figures of what did arrive
            if gen.constraint is not None:
                gen.constraint_satisfied = False  # cut short: not a whole answer
            if held is not None:
                yield held
            raise
        _timings(stats, count, start, first)
        stats.completion_tokens = completion_tokens or count
        if prompt_tokens:
            stats.prompt_tokens = prompt_tokens
            self.observe(messages, stats.prompt_tokens)
        stats.finish_reason = finish or "stop"
        if gen.constraint is not None:
            gen.constraint_satisfied = satisfied(gen.constraint, "".join(text),
                                                 stats.finish_reason)
        if held is not None:
            yield dataclasses.replace(held, finish_reason=stats.finish_reason)

    def _chunk_events(self, chunk: Chunk, with_candidates: bool) -> list[StepEvent]:
        if chunk.reasoning and not chunk.content:  # thinking the server parsed out
            return [StepEvent(self.intern(chunk.reasoning), "", math.nan,
                              thinking=chunk.reasoning)]
        content, entries = chunk.content, list(chunk.tokens)
        if entries and "".join(e.token for e in entries) == content:
            return [self._event(e.token, [e], with_candidates) for e in entries]
        if not content:
            return []
        return [self._event(content, entries, with_candidates)]

    def _event(self, text: str, entries: list[TokenLogprob], with_candidates: bool
               ) -> StepEvent:
        logprob = sum(e.logprob for e in entries) if entries else math.nan
        candidates = self._candidates(entries[0], logprob) if entries and with_candidates \
            else None
        return StepEvent(self.intern(text), text, logprob, None, candidates)

    def _candidates(self, entry: TokenLogprob, logprob: float) -> Candidates | None:
        if not entry.top:
            return None
        pairs = [(self.intern(token), math.exp(value)) for token, value in entry.top]
        # The server reports one distribution; entropy is over the K tokens it returned.
        entropy = -sum(p * math.log(p) for _, p in pairs if p > 0)
        return Candidates(raw=pairs, drawn_from=pairs, entropy=entropy,
                          chosen_prob=math.exp(logprob) if math.isfinite(logprob) else 0.0)


def satisfied(constraint: Any, text: str, finish: str | None) -> bool:
    """Whether a server's answer is whole under `constraint` (see the module)."""
    if finish != "stop":
        return False
    if constraint.is_json:
        try:
            json.loads(text)
        except ValueError:
            return False
        return True
    if constraint.kind == "choice":
        return text in constraint.choices
    if constraint.kind == "regex":
        try:
            pattern = re.compile(constraint.text)
        except re.error:
            return True  # a pattern only the server's engine reads: trust its finish
        return pattern.fullmatch(text) is not None
    return True  # a grammar: the server's engine ended it


def _timings(stats: Stats, count: int, start: float, first: float) -> None:
    end = time.perf_counter()
    stats.completion_tokens = count
    stats.total_s = end - start
    stats.decode_tokens_per_s = (count - 1) / (end - first) if count > 1 and end > first else 0.0


# -- opening ---------------------------------------------------------------------------
def open_remote(spec: ModelSpec, registry: Registry | None = None) -> RemoteModel:
    """A `RemoteModel` for an `openai` alias. Asks the server's /models only when the
    alias names no model (a one-off `--base-url`: the server must list exactly one) or
    no context window (then a failure only means the default, 4096)."""
    client = Client(spec.base_url or "", spec.timeout, spec.api_key_env)
    listed: list[Listed] | None = None
    if not spec.model:
        listed = list_models(client)
    elif not spec.context_window:
        try:  # only for the context length: a server without /models is still usable
            listed = list_models(client)
        except RemoteError:
            listed = []
    if not spec.model:
        names = [m.id for m in listed or [] if m.id]
        if len(names) != 1:
            served = ", ".join(names) or "none"
            raise UsageError(
                f"{spec.base_url} serves {len(names)} models ({served}); chatcli needs one",
                "name it with -m NAME (or add an alias with model = \"NAME\" to models.toml)",
            )
        spec = dataclasses.replace(spec, model=names[0], alias=spec.alias or names[0])
    context = spec.context_window or _listed_context(listed or [], spec.model or "")
    tokenizer = load_tokenizer(spec, registry) if spec.tokenizer else None
    return RemoteModel(spec=spec, client=client, context_window=context or
                       DEFAULT_CONTEXT_WINDOW, tokenizer=tokenizer)


def list_models(client: Client) -> list[Listed]:
    return read_models(client.get_json("/models"), f"{client.base_url}/models")


def _listed_context(listed: list[Listed], model: str) -> int | None:
    """The context length a server reports for a model (vLLM: max_model_len)."""
    for m in listed:
        if m.id == model and m.context_window:
            return m.context_window
    return None


def load_tokenizer(spec: ModelSpec, registry: Registry | None) -> Any:
    """The tokenizer named by `tokenizer`: a pulled local alias, else a hub id."""
    name = spec.tokenizer or ""
    if registry is not None and name in registry.models:
        local = registry.models[name]
        if local.backend != "local":
            raise UsageError(f"tokenizer '{name}' of '{spec.alias}' is itself a remote alias",
                             "name a local alias or a hub id")
        return _local_tokenizer(local)
    from chatcli.loader import quiet_transformers

    quiet_transformers()
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(name)
    except (OSError, ValueError) as exc:
        raise ModelUnavailableError(
            f"tokenizer '{name}' of '{spec.alias}': not a local alias and not loadable from "
            "the hub", f"name a local alias (then 'chatcli pull {name}') or a hub id",
        ) from exc


def _local_tokenizer(local: ModelSpec) -> Any:
    """A pulled local alias's tokenizer, opened as a local model's is
    (`chatcli.loader.open_tokenizer`)."""
    from chatcli import loader, sources

    weights = sources.locate(local)
    folder = None
    if weights is not None:
        folder = weights.folder
        if weights.gguf_file:
            folder = loader.converted_dir(local, weights) if loader.is_converted(local, weights) \
                else None
    if folder is None:
        raise ModelUnavailableError(
            f"tokenizer alias '{local.alias}' is not on disk yet",
            f"run 'chatcli pull {local.alias}' once",
        )
    tok = loader.open_tokenizer(folder, local.trust_remote_code)
    if local.chat_template:
        tok.chat_template = local.chat_template
    return tok
