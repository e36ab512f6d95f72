"""Render messages into the exact token ids the model will see, and count them fast.

Contract: `render_text(tokenizer, messages)` applies the model's own chat template
with the generation prompt appended; `render_ids` tokenizes that text without
adding special tokens again, so the count is exact. A model without a chat
template raises `ChatcliError` with the fix. `join_prompt` combines piped
stdin with the prompt argument.

A raw completion (`ask --raw`; a model without a chat template) has no template:
`raw_text(messages)` is the messages' contents one after the other, nothing between
them (a continued raw conversation continues the text), and `raw_ids(tokenizer, text)`
its token ids after the special tokens the tokenizer puts before a text by default (a
BOS, as transformers' `tokenizer(text)` gives and llama.cpp adds to a completion's
prompt), without any it puts after it (an EOS would end the text). `RawRender` is that
as a `chatcli.context.Render`.

`PromptCounter(tokenizer)` is `render_ids` as a `chatcli.context.Measure`: called,
it renders exactly; `sizes(messages)` gives how many tokens each message adds when
appended to a prompt, counted once per message (remembered by role and content)
rather than by rendering every prefix of the conversation. That shortcut is taken
only where it is exact. Once per chat template the counter checks, on probe
conversations (every role, awkward texts, every pair and triple of roles), that the
template renders a conversation as its first message's rendering, then each further
message's own segment (what it adds after a fixed system message), then the
generation prompt: nothing depends on position, neighbours or the end. It also
checks, on the tokenizer's added tokens, that every boundary between those pieces
is one the tokenizer splits at before anything else (a special token without lstrip
or single_word, not normalized where a normalizer runs, that no other added token
can match across): then the token ids of the whole are the ids of the pieces, one
after the other. Each message's segment must begin with such a token too. Where
any of this fails (another template, a slow tokenizer, a message whose segment
does not begin at a split), `sizes` returns None and callers render, as before.
The checks are redone when the tokenizer's chat template changes. What they cannot
see is a template that renders one message differently because of what another one
says (no probe says it); `chatcli.context.pack` therefore still renders the prompt
it sends and compares, and renders everything where the two disagree.

This module knows nothing about models, decoding or history storage.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import islice
from typing import Any

from chatcli.conversation import Message, Role
from chatcli.errors import ChatcliError


def render_text(
    tokenizer: Any, messages: list[Message], add_generation_prompt: bool = True
) -> str:
    if not getattr(tokenizer, "chat_template", None):
        raise no_chat_template()
    return tokenizer.apply_chat_template(
        [m.as_dict() for m in messages], tokenize=False,
        add_generation_prompt=add_generation_prompt,
    )


def render_ids(
    tokenizer: Any, messages: list[Message], add_generation_prompt: bool = True
) -> list[int]:
    text = render_text(tokenizer, messages, add_generation_prompt)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def no_chat_template(alias: str | None = None) -> ChatcliError:
    """The error of a chat with a model that has no chat template, with both fixes."""
    where = f"[models.{alias}]" if alias else "the alias"
    return ChatcliError("this model has no chat template",
                        f"set chat_template for {where} in models.toml, or complete text with "
                        "chatcli ask --raw")


def raw_text(messages: Sequence[Message]) -> str:
    """A raw conversation as the text the model continues: every message's content, one
    after the other (a system message has no place in it and is left out)."""
    return "".join(m.content for m in messages if m.role != "system")


def raw_ids(tokenizer: Any, text: str) -> list[int]:
    """`text` as a base model's prompt: the special tokens the tokenizer puts before a
    text by default (a BOS), then the text's own tokens; none it would put after them."""
    plain = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    full = list(tokenizer(text, add_special_tokens=True)["input_ids"])
    for start in range(len(full) - len(plain) + 1):
        if full[start:start + len(plain)] == plain:
            return full[:start + len(plain)]
    return full  # a post-processor that changes the text's own tokens: as it says


class RawRender:
    """`raw_ids` of the messages' `raw_text`: a `chatcli.context.Render` for raw
    completions."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer

    def __call__(self, messages: list[Message]) -> list[int]:
        return raw_ids(self.tokenizer, raw_text(messages))


def join_prompt(prompt: str | None, piped: str | None) -> str:
    """Piped stdin first, then the prompt; either may be missing."""
    parts = [p.strip("\n") for p in (piped, prompt) if p is not None and p.strip()]
    return "\n\n".join(parts)


# The fixed message segments are measured after: a system message, which every
# template that renders system prompts accepts first.
ANCHOR = Message("system", "chatcli")
_PROBE_TEXTS = ("", "a", "Hello, world.", " spaced  \n", "\n\nlines\n\n", "ünï 🙂 中文 \t",
                "x" * 40, "<think>x</think>")
_ROLES: tuple[Role, ...] = ("system", "user", "assistant")
# Forgotten oldest first beyond this many messages (counts are small; texts are shared).
CACHE_LIMIT = 200_000


class PromptCounter:
    """`render_ids` for one tokenizer, with each message's token count remembered
    (see the module docstring): a `chatcli.context.Measure`."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self._template: Any = None
        self._additive: bool | None = None  # None: not checked yet
        self._anchor = ""  # the anchor rendered alone, without the generation prompt
        self._generation = ""  # what add_generation_prompt appends
        self._splits: tuple[str, ...] = ()  # added tokens the tokenizer always splits before
        self._sizes: dict[tuple[str, str], int | None] = {}  # None: not additive
        self._offsets: dict[tuple[str, str], int] = {}  # prompt alone minus size

    def __call__(self, messages: list[Message]) -> list[int]:
        return render_ids(self.tokenizer, messages)

    # -- the shortcut -------------------------------------------------------------------
    @property
    def additive(self) -> bool:
        """Whether the current chat template and tokenizer allow the shortcut (checked
        once per template; a changed template forgets every count)."""
        template = getattr(self.tokenizer, "chat_template", None)
        if self._additive is None or template is not self._template:
            if self._additive is None or template != self._template:
                self._sizes.clear()
                self._offsets.clear()
                self._additive = self._check()
            self._template = template  # (an equal template keeps what was counted)
        return self._additive

    def sizes(self, messages: Sequence[Message]) -> list[int] | None:
        """How many tokens each message adds when appended to any prompt (the first
        message of a prompt: see `length`); None when that is not exact here."""
        if not self.additive:
            return None
        known = self._sizes
        if len(known) + len(messages) > CACHE_LIMIT:
            _forget_oldest(known, len(known) // 2)
        sizes = []
        for message in messages:
            key = (message.role, message.content)
            size = known.get(key, -1)
            if size == -1:
                size = known[key] = self._size(message)
            if size is None:
                return None
            sizes.append(size)
        return sizes

    def length(self, first: Message, total: int) -> int:
        """The prompt length of messages that start with `first` and whose `sizes` sum to
        `total`: the first message's prompt alone plus what the others add."""
        key = (first.role, first.content)
        offset = self._offsets.get(key)
        if offset is None or getattr(self.tokenizer, "chat_template", None) is not self._template:
            size = self.sizes([first])
            if size is None:
                raise ValueError("length() of a message whose size is not known")
            if len(self._offsets) >= CACHE_LIMIT:
                _forget_oldest(self._offsets, len(self._offsets) // 2)
            offset = self._offsets[key] = len(self([first])) - size[0]
        return offset + total

    def _segment(self, message: Message) -> str | None:
        """What `message` adds to a rendering (after the anchor), or None when it does
        not begin where the tokenizer splits."""
        text = render_text(self.tokenizer, [ANCHOR, message], add_generation_prompt=False)
        if not text.startswith(self._anchor):
            return None
        segment = text[len(self._anchor):]
        return segment if segment.startswith(self._splits) else None

    def _count(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _size(self, message: Message) -> int | None:
        segment = self._segment(message)
        return None if segment is None else self._count(segment)

    # -- the check, once per template ---------------------------------------------------
    def _check(self) -> bool:
        try:
            self._splits = _splits(self.tokenizer)
            if not self._splits:
                return False
            self._anchor = render_text(self.tokenizer, [ANCHOR], add_generation_prompt=False)
            prompt = render_text(self.tokenizer, [ANCHOR])
            if not prompt.startswith(self._anchor):
                return False
            self._generation = prompt[len(self._anchor):]
            if self._generation and not self._generation.startswith(self._splits):
                return False
            return all(self._holds(list(seq)) for seq in _probe_conversations())
        except Exception:  # a template that rejects a probe: no shortcut
            return False

    def _holds(self, messages: list[Message]) -> bool:
        """Whether `messages` render, as text and as tokens, as the shortcut says."""
        tokenizer, first = self.tokenizer, messages[:1]
        head = render_text(tokenizer, first, add_generation_prompt=False)
        if render_text(tokenizer, first) != head + self._generation:
            return False
        segments = [self._segment(m) for m in messages[1:]]
        if any(s is None for s in segments):
            return False
        whole = render_text(tokenizer, messages)
        if whole != head + "".join(s for s in segments if s) + self._generation:
            return False
        opening = self._count(head + self._generation)
        return self._count(whole) == opening + sum(self._count(s) for s in segments if s)


def _forget_oldest(cache: dict[Any, Any], count: int) -> None:
    for key in list(islice(cache, count)):
        del cache[key]


def _probe_conversations() -> list[tuple[Message, ...]]:
    """Every role with every probe text alone; every pair of roles with three of the
    texts; every triple of roles; and a longer mixed one."""
    singles = [Message(role, text) for role in _ROLES for text in _PROBE_TEXTS]
    few = [Message(role, text) for role in _ROLES for text in _PROBE_TEXTS[1:4]]
    pairs = [(a, b) for a in few for b in few]
    triples = [(Message(a, "one"), Message(b, "two\n"), Message(c, " three"))
               for a in _ROLES for b in _ROLES for c in _ROLES]
    longer = tuple(Message(_ROLES[i % 3], text) for i, text in enumerate(_PROBE_TEXTS))
    return [(m,) for m in singles] + pairs + triples + [longer]


def _splits(tokenizer: Any) -> tuple[str, ...]:
    """The added tokens the tokenizer splits text at before normalizing, pre-tokenizing
    or merging anything, whatever surrounds them: neither lstrip nor single_word, not
    normalized where a normalizer runs, not a special token the tokenizer is told to
    split, and no other added token can match across the place before them. () when the
    tokenizer is not a `tokenizers` one."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return ()
    added = list(backend.get_added_tokens_decoder().values())
    normalized = backend.normalizer is not None
    split_special = bool(getattr(backend, "encode_special_tokens", False))
    word_sensitive = any(t.single_word for t in added)
    contents = [t.content for t in added]
    splits = []
    for token in added:
        text = token.content
        if (not text or token.lstrip or token.single_word or (token.normalized and normalized)
                or (split_special and token.special) or text[0].isspace()
                or (word_sensitive and (text[0].isalnum() or text[0] == "_"))):
            continue
        if any(text.startswith(other[j:]) or other[j:].startswith(text)
               for other in contents for j in range(1, len(other))):
            continue  # an added token could begin before the boundary and match across it
        splits.append(text)
    return tuple(splits)
