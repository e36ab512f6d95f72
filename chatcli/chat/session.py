"""One chat conversation: packing into the context window, KV-cache reuse, persistence.

Contract: `ChatSession` owns a `Conversation`, the model's backend (whose prompt
cache makes each turn prefill only what is new), the decoding request
(strategy, flags, `-o` options, validated on every change exactly like the
command-line flags) and, optionally, a `Store` row for the conversation. Every
message is written to the store as soon as it exists: the user's message before
the answer starts, the reply (possibly interrupted) when it ends. Writing goes
through a `Recorder` (chatcli.chat.recorder): a failed write never raises, the
message waits in memory and is retried; `close_history()` at the end saves what
waits or writes a recovery file.
`start_reply()` packs the history (`chatcli.context.pack`, with the backend's
`count`: a local model counts each message once, so packing stays linear in the
length of the conversation), and returns a streaming `Generation`;
`finish_reply()` records it.

Branches: the conversation is the path through a tree of versions (the
recorder's `tree`). `retry()` and `edit()` start a new version of a message and
keep the old one; `switch()` moves to another version and on to where that
branch ends; `undo()` and `clear()` delete for good. The backend's prompt cache
reuses the prefix the old and new paths share.

The model is a backend (`chatcli.backends`: local weights with a prompt cache, or
an OpenAI-compatible server); the session asks it to count, check, stream and
forget, and never asks which one it is. A `LoadedModel` given directly runs on the
local backend.

A raw session (`raw=True`: `ask --raw`, a model without a chat template) completes
text: the messages are plain text one after the other (the backend's `raw_count`, no
template, no system prompt), the backend is told (`stream(..., raw=True)`) and each
reply is saved marked raw (its params say "raw": true). A session that is not raw
refuses a model without a chat template ("this model has no chat template").

Knows nothing about the terminal: the REPL and the slash commands print.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chatcli.answer import Generation
from chatcli.backends import as_backend
from chatcli.backends.base import Backend, Views, check_alternatives
from chatcli.branches import Tree
from chatcli.chat.recorder import Recorder
from chatcli.context import Packed, Render, pack
from chatcli.conversation import Conversation, Message
from chatcli.decoding.registry import StrategyRegistry
from chatcli.decoding.settings import DecodingSettings, resolve_settings
from chatcli.errors import ChatcliError, ContextOverflowError, UsageError


@dataclass
class DecodingRequest:
    """What the user asked for: the raw layer above models.toml and generation_config."""

    strategy: str | None = None
    flags: dict[str, Any] = field(default_factory=dict)
    options: dict[str, str] = field(default_factory=dict)


class ChatSession:
    def __init__(
        self,
        model: Any,  # a Backend (or a LoadedModel, run on the local backend)
        strategies: StrategyRegistry,
        request: DecodingRequest,
        conversation: Conversation | None = None,
        *,
        store: Any = None,  # chatcli.store.Store
        conversation_id: int | None = None,
        message_ids: list[int] | None = None,
        truncate: bool = True,
        reuse_cache: bool = True,
        recorder: Recorder | None = None,
        warn: Callable[[str], None] | None = None,
        history_path: Path | None = None,
        raw: bool = False,
        settings: DecodingSettings | None = None,
    ) -> None:
        self.raw = raw  # a text completion: no chat template (see the module)
        self.strategies = strategies
        self.request = request
        self.conversation = conversation or Conversation()
        if recorder is None:
            recorder = Recorder(store, self.conversation, conversation_id, message_ids,
                                alias=lambda: self.backend.spec.alias, warn=warn,
                                path=history_path)
        else:
            recorder.conversation = self.conversation
            recorder.alias = lambda: self.backend.spec.alias
        self.recorder = recorder
        self.truncate = truncate
        self.reuse_cache = reuse_cache
        self.last_packed: Packed | None = None
        self.last_generation: Generation | None = None
        self.dropped = 0
        self.candidates: int | None = None  # top-K candidates recorded per step (None: off)
        self.trace_beams = False  # record pruned beams (--show-beams)
        self.constraint: Any = None  # the answers' shape (chatcli.constraints), None: free
        self.explain = False  # /context also reports the last answer's attention per turn
        self.answered_packed: Packed | None = None  # the prompt the last answer was given
        # Set by start_reply, once per session, when an estimated count decided the packing.
        self.packing_note: str | None = None
        self._noted = False
        self.use_model(model, settings)

    # -- model and settings ----------------------------------------------------
    def use_model(self, model: Any, settings: DecodingSettings | None = None) -> None:
        """Answer with `model` (a Backend, or a LoadedModel) from now on, with `settings`
        (the request's, already resolved for this model: `cli.common.Setup.resolve`)
        or the request resolved for it here; a chat refuses a model without a chat
        template."""
        backend = as_backend(model)
        if not self.raw and not getattr(backend, "has_chat_template", True):
            from chatcli.prompt import no_chat_template

            raise no_chat_template(backend.spec.alias)
        self.backend = backend
        self.settings = settings if settings is not None else self._resolve(self.request)

    @property
    def cache(self) -> Backend:
        """What keeps the prompt between turns (`reused`, `invalidate()`): the backend."""
        return self.backend

    @property
    def views(self) -> Views:
        return Views(candidates=self.candidates, trace_beams=self.trace_beams)

    def _check(self, settings: DecodingSettings, constraint: Any) -> None:
        if constraint is None:
            self.backend.check(settings, self.views)
        else:
            self.backend.check(settings, self.views, constraint)

    def set_constraint(self, constraint: Any) -> None:
        """Hold later answers to `constraint` (None: free); refused, keeping the old one,
        where the backend cannot honour it."""
        self._check(self.settings, constraint)
        self.constraint = constraint

    def token_text(self, token_id: int) -> str:
        """A generated token as text (a remote model's tokens are named by negative ids)."""
        return self.backend.token_text(token_id)

    def _resolve(self, request: DecodingRequest) -> DecodingSettings:
        return resolve_settings(
            self.strategies, strategy=request.strategy, flags=request.flags,
            options=request.options, alias_defaults=self.backend.spec.defaults,
            generation_config=self.backend.generation_config,
        )

    def update_request(self, request: DecodingRequest) -> DecodingSettings:
        """Validate and adopt a new request (raises, leaving the old one, if invalid)."""
        settings = self._resolve(request)
        self._check(settings, self.constraint)
        self.request, self.settings = request, settings
        return settings

    @property
    def max_new_tokens(self) -> int:
        return self.settings.common.max_new_tokens

    @property
    def budget(self) -> int:
        return self.backend.context_window - self.max_new_tokens

    # -- conversation edits, mirrored in the store -----------------------------------
    @property
    def store(self) -> Any:  # chatcli.store.Store | None
        return self.recorder.store

    @property
    def conversation_id(self) -> int | None:
        return self.recorder.conversation_id

    @property
    def message_ids(self) -> list[int | None]:
        return self.recorder.ids

    def _save(self, message: Message, meta: Any = None,
              attachments: list[dict[str, Any]] | None = None) -> None:
        assert self.conversation.turns[-1] is message
        if attachments:
            self.recorder.added(meta, attachments)
        else:
            self.recorder.added(meta)

    def _forget(self, count: int) -> None:
        self.recorder.removed(count)

    def close_history(self) -> Path | None:
        """Save what waits; else write the recovery file (warned, and returned)."""
        return self.recorder.close()

    def add_user(self, text: str, attachments: list[dict[str, Any]] | None = None,
                 pinned: bool = False) -> None:
        """A user message (its attached files already rendered into `text`; `attachments`
        is what the history records of them: path, size, sha256), pinned if asked."""
        self._save(self.conversation.add_user(text, pinned=pinned), attachments=attachments)

    def pin(self, number: int, pinned: bool = True) -> Message:
        """Pin message `number` (1-based, as /context numbers it) or unpin it; saved."""
        index = number - 1
        message = (self.conversation.pin(index) if pinned
                   else self.conversation.unpin(index))
        self.recorder.pinned(index, pinned)
        return message

    def set_system(self, text: str | None) -> None:
        self.conversation.system = text or None
        self.recorder.system_changed()

    def undo(self) -> list[Message]:
        """Remove the last exchange for good, with its other versions."""
        removed = self.conversation.undo()
        self._forget(len(removed))
        if removed:
            self._forget_answer()
        return removed

    def retry(self) -> Message | None:
        """Leave the last reply for a new version of it (it stays, a branch: /branches)."""
        before = len(self.conversation.turns)
        user = self.conversation.retry()
        self.recorder.cut(before - len(self.conversation.turns))
        return user

    def clear(self) -> None:
        """Forget every message, of every branch (the system prompt stays)."""
        self.recorder.cleared()
        self.conversation.clear()
        self.cache.invalidate()
        self._forget_answer()

    # -- branches ---------------------------------------------------------------------
    @property
    def tree(self) -> Tree:
        return self.recorder.tree

    def editable(self, number: int | None) -> tuple[int, str]:
        """Message `number` (1-based; None: the last user message) as /edit opens it: its
        index and its words (the files attached before them are kept by `edit`)."""
        turns = self.conversation.turns
        users = [i for i, m in enumerate(turns) if m.role == "user"]
        if number is None:
            if not users:
                raise UsageError("there is no message to edit yet", "type a message first")
            index = users[-1]
        else:
            index = number - 1
            self.conversation.check_index(index)
            if turns[index].role != "user":
                raise UsageError(f"message {number} is the model's answer; /edit changes "
                                 "your messages", "/retry answers again, /alt changes a token")
        from chatcli.attachments import split_message

        words, _ = split_message(turns[index].content, self.tree.path[index].attachments)
        return index, words

    def edit(self, index: int, words: str, files: list[Any] | None = None) -> None:
        """A new version of user message `index` with `words` (its attached files kept,
        `files` added after them); the old one stays, a branch. Answer it next."""
        old = self.tree.path[index]
        from chatcli.attachments import split_message

        _, head = split_message(old.message.content, old.attachments)
        attachments = [dict(a) for a in old.attachments]
        if files:
            from chatcli.attachments import describe, render

            words = render(files, words)
            attachments += describe(files)
        self.recorder.cut(len(self.conversation.turns) - index)
        del self.conversation.turns[index:]
        self._forget_answer()
        self.add_user(head + words, attachments or None, pinned=old.message.pinned)

    def branch_point(self, number: int | None = None) -> int:
        """The index whose versions /branches lists: message `number`, else the last
        message on the path that has several versions."""
        if number is not None:
            self.conversation.check_index(number - 1)
            return number - 1
        points = self.tree.branch_points()
        if not points:
            raise UsageError("this conversation has no branches yet",
                             "/retry, /edit N and /alt STEP RANK make them")
        return points[-1]

    def switch(self, index: int, k: int) -> None:
        """Go to version `k` of message `index` and on to where that branch ends; the
        prompt cache keeps what the two paths share."""
        self.tree.switch(index, k)
        self.recorder.switched()
        self._forget_answer()

    def _forget_answer(self) -> None:
        """The last answer shown is no longer the conversation's (for /alt, /stats)."""
        self.last_generation = self.last_packed = self.answered_packed = None

    def replace_conversation(self, conversation: Conversation) -> None:
        """Adopt a loaded conversation; it is stored as a new one (all its messages in
        one flush of the recorder)."""
        self.conversation = Conversation(system=conversation.system)
        self.recorder.replaced(self.conversation)
        self.cache.invalidate()
        self.conversation.turns.extend(conversation.turns)
        self.recorder.extended(len(conversation.turns))

    # -- answering ----------------------------------------------------------------
    @property
    def render(self) -> Render:
        """The prompt token ids of messages (`render_of`)."""
        return render_of(self.backend, self.raw)

    def pack(self) -> Packed:
        return pack_for(self.conversation, self.backend, self.max_new_tokens, raw=self.raw,
                        truncate=self.truncate)

    def room(self) -> int:
        """The tokens the context window leaves an answer after the last packed prompt."""
        packed = self.last_packed
        return self.backend.context_window - (len(packed.ids) if packed is not None else 0)

    def start_reply(self) -> tuple[Generation, int]:
        """Pack and start answering the last user message.

        Returns the streaming generation and how many exchanges were newly dropped.
        """
        if not self.conversation.turns or self.conversation.turns[-1].role != "user":
            raise ChatcliError("there is no user message to answer", "type a message first")
        packed = self.pack()
        newly = max(0, packed.dropped_exchanges - self.dropped)
        self.dropped = packed.dropped_exchanges
        self.last_packed = self.answered_packed = packed
        room = self.room()
        self.packing_note = None
        if self.backend.approximate and not self._noted and (
            packed.dropped_exchanges or packed.shortened or packed.tokens > packed.budget // 2
        ):
            self._noted = True
            self.packing_note = (
                f"packing is approximate: '{self.backend.spec.alias}' names no tokenizer, so "
                "prompt tokens are estimated (about 4 characters per token); set tokenizer = "
                "\"ALIAS\" in models.toml for exact counts"
            )
        if not self.reuse_cache:
            self.backend.invalidate()
        extra: dict[str, Any] = {"raw": True} if self.raw else {}
        if self.constraint is not None:
            extra["constraint"] = self.constraint
        gen = self.backend.stream(packed, self.settings, min(self.max_new_tokens, room),
                                  self.views, strategies=self.strategies, **extra)
        self._think(gen)
        self.last_generation = gen
        return gen, newly

    def _think(self, gen: Generation) -> None:
        """Split a reasoning model's thinking from its answer (`chatcli.thinking`)."""
        from chatcli.thinking import split_thinking

        split_thinking(gen, None if self.raw else self.backend.thinking)

    def _explorable(self, what: str) -> tuple[Any, Generation, Packed]:
        gen, packed = self.last_generation, self.last_packed
        turns = self.conversation.turns
        if gen is None or packed is None or not turns or turns[-1].role != "assistant" \
                or not gen.token_ids:
            raise ChatcliError(f"{what} explores the last answer, and there is none yet",
                               "ask something first")
        check_alternatives(self.backend.spec, self.backend.capabilities, what)
        return self.backend.alternative, gen, packed

    def least_sure(self, k: int = 5, n: int = 5) -> list[Any]:
        """The last answer's steps where the model was least sure (StepView, step order)."""
        from chatcli.alternatives import least_sure

        _, gen, packed = self._explorable("/alt")
        views = self.backend.distributions(packed, gen.token_ids, k, gen.constraint)
        return least_sure(views, n)

    def start_alternative(self, step: int, rank: int) -> tuple[Any, Generation]:
        """A new version of the last answer: the one the model gives when its `rank`-th
        token is taken at `step` (same strategy, parameters, seed and constraint). The old
        reply stays as a branch; it leaves the path only once the alternative is known
        to exist."""
        method, old, packed = self._explorable("/alt")
        room = self.backend.context_window - len(packed.ids)
        alt, gen = method(packed, old.settings, min(old.settings.common.max_new_tokens, room),
                          self.views, old.token_ids, step, rank, strategies=self.strategies,
                          constraint=old.constraint)
        self.retry()  # the old reply stays, a branch
        self._think(gen)
        self.last_generation = gen
        return alt, gen

    def finish_reply(self, gen: Generation, interrupted: bool = False) -> None:
        gen.flush_thinking()
        if interrupted:
            self.cache.invalidate()
            if gen.stats.finish_reason is None:
                gen.stats.finish_reason = "interrupted"
        from chatcli.store import ReplyMeta

        s = gen.stats
        meta = ReplyMeta(
            model=self.backend.spec.alias, strategy=self.settings.strategy,
            params={**self.settings.as_dict(), **_shape(gen), **({"raw": True} if self.raw
                                                                 else {})},
            seed=self.settings.seed,
            prompt_tokens=s.prompt_tokens, completion_tokens=len(gen.token_ids),
            time_to_first_token_s=s.time_to_first_token_s,
            tokens_per_second=s.decode_tokens_per_s,
        )
        self._save(self.conversation.add_assistant(gen.text, interrupted), meta)


def render_of(backend: Backend, raw: bool = False) -> Render:
    """The prompt token ids of messages: the backend's `count`, which may count each
    message once (a `chatcli.context.Measure`; packing then takes linear time); a raw
    completion's are the plain text's (`raw_count`)."""
    return backend.raw_count if raw else backend.count  # type: ignore[attr-defined]


def pack_for(conversation: Conversation, backend: Backend, max_new_tokens: int, *,
             raw: bool = False, truncate: bool = True) -> Packed:
    """`conversation` packed into the backend's context window, leaving room for
    `max_new_tokens` (chatcli.context.pack); refused when that leaves no room at all."""
    render = render_of(backend, raw)
    window = backend.context_window
    budget = window - max_new_tokens
    if budget <= 0:
        room = window - len(render(conversation.messages()))
        raise ContextOverflowError(
            f"max_new_tokens ({max_new_tokens}) leaves no room in the context window of "
            f"{window} tokens",
            f"lower -n to at most {room} (in chat: /set max_new_tokens N)" if room > 0 else
            "shorten the prompt, or choose a model with a larger context window (-m)")
    return pack(conversation, render, budget, truncate=truncate)


def _shape(gen: Generation) -> dict[str, Any]:
    """What the history records of an answer besides its text: its constraint (nothing
    for a free one) and its thinking (nothing where there was none)."""
    out: dict[str, Any] = {}
    if gen.constraint is not None:
        out.update(constraint=gen.constraint.as_dict(),
                   constraint_satisfied=gen.constraint_satisfied)
    if gen.thinking_tokens:
        out.update(thinking=gen.thinking, thinking_tokens=gen.thinking_tokens)
        if gen.budget_hit:
            out["thinking_budget_hit"] = True
    return out
