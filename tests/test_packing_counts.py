"""Packing with each message counted once (`chatcli.prompt.PromptCounter`, a
`chatcli.context.Measure`) packs exactly as packing by rendering every candidate does.

Property tests run `pack`, `message_tokens` and `part_tokens` on random conversations
with random pins (those of tests/test_pins.py) twice, once with a counter and once with
a plain render, and compare everything: the messages sent (pins included), the ids,
dropped exchanges, shortening, the report's counts, and every error. They do so under
templates the shortcut is taken for (ChatML; one that inserts a default system prompt
when the first message is not one, as SmolLM2's does; one that trims content; one that
opens with the BOS token; one that leaves the last message open) and under templates it
must refuse (messages numbered, the last message rendered differently, the system
prompt merged into the first user message, no special token between messages, system
messages rejected), with the tiny model's tokenizer both as transformers loads it and
as chatcli's own `ChatTokenizer` does; the counter's verdict on each template is
asserted too. A tokenizer whose special tokens strip whitespace on their left (so the
pieces do not tokenize alone) must be refused. A template whose rendering depends on
another message's content, which the probes cannot see, is caught by the rendered
prompt and packed by rendering. Examples check that a warm counter tokenizes each new
message once per turn and renders only the prompt sent and the candidate that did not
fit, that a changed template is checked again, and the remote backend's estimate as a
Measure. A slow test does the same comparison with the real default model's tokenizer
and template.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_pins import budgets, pinned_conversations

from chatcli.context import Measure, message_tokens, pack, part_tokens
from chatcli.conversation import Conversation, Message
from chatcli.errors import ContextOverflowError
from chatcli.prompt import PromptCounter, render_ids
from conftest import CHATML, CORPUS, Tiny, train_byte_level_bpe

Render = Callable[[list[Message]], list[int]]

CHATML_LOOP = (
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
)
GENERATION = "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
ADDITIVE = {
    "chatml": CHATML,
    # SmolLM2's: a default system prompt before a first message that is not one
    "default system": (
        "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
        "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
        + CHATML_LOOP + "{% endfor %}" + GENERATION
    ),
    "trimmed": (
        "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + "
        "message['content'] | trim + '<|im_end|>\n' }}{% endfor %}" + GENERATION
    ),
    "bos first": "{{ bos_token }}{% for message in messages %}" + CHATML_LOOP
                 + "{% endfor %}" + GENERATION,
    # the last message left open: each message's piece is the end of the one before it
    # and its own start, which adds up just as well
    "last open": (
        "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + "
        "message['content'] }}{% if not loop.last %}{{ '<|im_end|>\n' }}{% endif %}"
        "{% endfor %}" + GENERATION
    ),
}
NOT_ADDITIVE = {
    "numbered": (
        "{% for message in messages %}{{ '<|im_start|>' + message['role'] + ' ' + "
        "loop.index | string + '\n' + message['content'] + '<|im_end|>\n' }}{% endfor %}"
        + GENERATION
    ),
    # Qwen3's way: an empty thinking block opens the reply when it is the last message
    "last differs": (
        "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' }}"
        "{% if loop.last and message['role'] == 'assistant' %}{{ '<think>\n\n</think>\n\n' }}"
        "{% endif %}{{ message['content'] + '<|im_end|>\n' }}{% endfor %}" + GENERATION
    ),
    # Llama 2's way: the system prompt goes inside the first user message
    "merged system": (
        "{% if messages[0]['role'] == 'system' %}{% set system = messages[0]['content'] %}"
        "{% set messages = messages[1:] %}{% else %}{% set system = '' %}{% endif %}"
        "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' }}"
        "{% if loop.first and system %}{{ system + '\n\n' }}{% endif %}"
        "{{ message['content'] + '<|im_end|>\n' }}{% endfor %}" + GENERATION
    ),
    # no special token between messages: a message's tokens may merge with the next's
    "plain roles": (
        "{% for message in messages %}{{ message['role'] + ': ' + message['content'] + '\n' }}"
        "{% endfor %}{% if add_generation_prompt %}{{ 'assistant:' }}{% endif %}"
    ),
    "no system role": (
        "{% for message in messages %}{% if message['role'] == 'system' %}"
        "{{ raise_exception('System role not supported') }}{% endif %}" + CHATML_LOOP
        + "{% endfor %}" + GENERATION
    ),
}
TEMPLATES = {**ADDITIVE, **NOT_ADDITIVE}


def tiny_tokenizer(folder: Path, kind: str, template: str) -> Any:
    """The tiny model's tokenizer as transformers or chatcli loads it, with `template`."""
    if kind == "transformers":
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(folder)
    else:
        from chatcli.lm.tokenizer import ChatTokenizer

        tokenizer = ChatTokenizer.from_folder(folder)
    tokenizer.chat_template = template
    return tokenizer


_COUNTERS: dict[tuple[str, str], tuple[Any, PromptCounter]] = {}


def counter_for(tiny: Tiny, kind: str, name: str) -> tuple[Any, PromptCounter]:
    """One tokenizer and counter per kind and template for the whole run, so that the
    counts it remembers carry over from one conversation to the next."""
    if (kind, name) not in _COUNTERS:
        tokenizer = tiny_tokenizer(tiny.folder, kind, TEMPLATES[name])
        _COUNTERS[kind, name] = tokenizer, PromptCounter(tokenizer)
    return _COUNTERS[kind, name]


def outcome(run: Callable[[], Any]) -> Any:
    """Everything a packing gives (pins included), or the error it raises."""
    try:
        packed = run()
    except ContextOverflowError as exc:
        return ("overflow", exc.message, exc.hint)
    except Exception as exc:  # a template's own error (a system prompt it rejects)
        return (type(exc).__name__, str(exc))
    return (packed.messages, [m.pinned for m in packed.messages], packed.ids, packed.budget,
            packed.dropped_exchanges, packed.shortened, packed.report)


def same_as_rendering(conv: Conversation, counter: PromptCounter, render: Render,
                      data: st.DataObject, truncate: bool) -> None:
    budget = data.draw(budgets(conv, render), label="budget")
    assert outcome(lambda: pack(conv, counter, budget, truncate=truncate)) == outcome(
        lambda: pack(conv, render, budget, truncate=truncate))
    messages = conv.messages()
    assert message_tokens(messages, counter) == message_tokens(messages, render)
    index = data.draw(st.integers(0, len(messages) - 1), label="message")
    length = len(messages[index].content)
    cuts = sorted(data.draw(st.lists(st.integers(0, length), max_size=3), label="cuts"))
    assert part_tokens(messages, index, cuts, counter) == part_tokens(
        messages, index, cuts, render)


# ---------------------------------------------------------------- properties


@pytest.mark.parametrize("kind", ["transformers", "chatcli"])
@pytest.mark.parametrize("name", list(TEMPLATES))
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(conv=pinned_conversations(), data=st.data(), truncate=st.sampled_from([True, False]))
def test_counted_packing_is_rendered_packing(
    tiny_model: Tiny, kind: str, name: str, conv: Conversation, data: st.DataObject,
    truncate: bool,
) -> None:
    tokenizer, counter = counter_for(tiny_model, kind, name)
    if name == "no system role":
        conv.system = None  # every render would raise, with the counter or without
    assert counter.additive is (name in ADDITIVE)
    assert (counter.sizes(conv.messages()) is not None) is (name in ADDITIVE)
    same_as_rendering(conv, counter, lambda m: render_ids(tokenizer, m), data, truncate)


# ---------------------------------------------------------------- refusals


def test_special_tokens_that_strip_whitespace_refuse_the_shortcut(tiny_model: Tiny) -> None:
    """`<|im_start|>` with lstrip swallows the newline before it, so a message's pieces do
    not tokenize alone: the counter says so and packing renders."""
    from tokenizers import AddedToken

    from chatcli.lm.tokenizer import ChatTokenizer

    def tokenizer(lstrip: bool) -> ChatTokenizer:
        backend = train_byte_level_bpe(CORPUS, 400, ["<|endoftext|>"])
        backend.add_special_tokens([AddedToken("<|im_start|>", lstrip=lstrip),
                                    AddedToken("<|im_end|>")])
        return ChatTokenizer(backend, {"eos_token": "<|im_end|>"}, [], CHATML)

    plain, stripping = tokenizer(False), tokenizer(True)
    conv = Conversation("Be brief.")
    for text in ["Hi\n", "Hello!", "The capital?", "Paris.\n\n", "Thanks"]:
        conv.add_user(text) if len(conv.turns) % 2 == 0 else conv.add_assistant(text)
    messages = conv.messages()
    # the pieces do not add up under lstrip: rendering whole and in parts differ
    whole = len(render_ids(stripping, messages))
    assert whole < message_tokens(messages, lambda m: render_ids(plain, m))[0] + sum(
        len(render_ids(stripping, [Message("system", "x"), m], False))
        - len(render_ids(stripping, [Message("system", "x")], False)) for m in messages[1:])
    assert PromptCounter(plain).additive
    counter = PromptCounter(stripping)
    assert not counter.additive and counter.sizes(messages) is None
    render = lambda m: render_ids(stripping, m)  # noqa: E731
    assert message_tokens(messages, counter) == message_tokens(messages, render)
    for budget in range(whole - 12, whole + 1):
        assert outcome(lambda b=budget: pack(conv, counter, b)) == outcome(
            lambda b=budget: pack(conv, render, b))


def test_a_template_the_probes_cannot_see_through_is_caught_by_the_prompt_sent(
    tiny_model: Tiny,
) -> None:
    """Here the generation prompt changes when any message says "magic": the probes
    never do, so the counter takes the template for additive, but the prompt sent is
    rendered and its length disagrees, and the packing is done again by rendering."""
    template = (
        "{% for message in messages %}" + CHATML_LOOP + "{% endfor %}"
        "{% if add_generation_prompt %}{% if messages | selectattr('content', 'equalto', "
        "'magic') | list %}{{ '<|im_start|>assistant (spell)\n' }}{% else %}"
        "{{ '<|im_start|>assistant\n' }}{% endif %}{% endif %}"
    )
    tokenizer = tiny_tokenizer(tiny_model.folder, "chatcli", template)
    counter = PromptCounter(tokenizer)
    render = lambda m: render_ids(tokenizer, m)  # noqa: E731
    assert counter.additive
    conv = Conversation("sys")
    for i in range(8):
        conv.add_user(f"question {i}")
        conv.add_assistant(f"answer {i}")
    conv.add_user("magic")
    full = len(render(conv.messages()))
    for budget in range(full - 40, full + 2):
        packed = pack(conv, counter, budget)
        assert outcome(lambda p=packed: p) == outcome(lambda b=budget: pack(conv, render, b))
    assert len(packed.ids) == full and packed.dropped_exchanges == 0


# ---------------------------------------------------------------- costs


class Spy:
    """A tokenizer that counts the texts it tokenizes (everything else passes through)."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.texts: list[str] = []

    def __call__(self, text: str, add_special_tokens: bool = False) -> Any:
        self.texts.append(text)
        return self.tokenizer(text, add_special_tokens=add_special_tokens)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.tokenizer, name)


def chat(turns: int, seed: int = 0) -> Conversation:
    rng = random.Random(seed)
    words = ["the", "capital", "of", "France", "is", "Paris", "a", "city", "quick", "brown"]
    conv = Conversation("You are brief.")
    for _ in range(turns):
        conv.add_user(" ".join(rng.choice(words) for _ in range(rng.randint(3, 30))))
        conv.add_assistant(" ".join(rng.choice(words) for _ in range(rng.randint(5, 60))))
    return conv


def test_each_message_is_tokenized_once_and_a_turn_renders_twice(tiny_model: Tiny) -> None:
    spy = Spy(tiny_tokenizer(tiny_model.folder, "chatcli", CHATML))
    counter = PromptCounter(spy)
    assert counter.additive
    conv = chat(200)
    conv.add_user("And the next question?")
    render = lambda m: render_ids(spy.tokenizer, m)  # noqa: E731
    budget = 600
    spy.texts.clear()
    first = pack(conv, counter, budget)
    assert outcome(lambda: first) == outcome(lambda: pack(conv, render, budget))
    assert first.dropped_exchanges > 150  # a long history, mostly dropped
    # each distinct message once, its prompt alone once for the first message, then the
    # prompt sent and the older candidate that did not fit
    distinct = len({(m.role, m.content) for m in conv.messages()})
    assert len(spy.texts) == distinct + 1 + 2

    for turn in range(3):  # a turn: the reply, a new question, packed again
        conv.add_assistant(f"Reply {turn}.")
        conv.add_user(f"Question {turn + 1}?")
        spy.texts.clear()
        packed = pack(conv, counter, budget)
        assert outcome(lambda p=packed: p) == outcome(lambda: pack(conv, render, budget))
        assert len(spy.texts) == 2 + 2  # the two new messages, the prompt, the candidate
        assert spy.texts[-2] == spy.tokenizer.apply_chat_template(
            [m.as_dict() for m in packed.messages], add_generation_prompt=True)


def test_a_changed_template_is_checked_again(tiny_model: Tiny) -> None:
    tokenizer = tiny_tokenizer(tiny_model.folder, "chatcli", CHATML)
    counter = PromptCounter(tokenizer)
    conv = chat(5)
    conv.add_user("Next?")
    assert counter.additive and counter.sizes(conv.messages()) is not None
    tokenizer.chat_template = NOT_ADDITIVE["numbered"]
    assert not counter.additive and counter.sizes(conv.messages()) is None
    render = lambda m: render_ids(tokenizer, m)  # noqa: E731
    assert message_tokens(conv.messages(), counter) == message_tokens(conv.messages(), render)
    tokenizer.chat_template = ADDITIVE["default system"]
    assert counter.additive
    conv.system = None
    assert message_tokens(conv.messages(), counter) == message_tokens(conv.messages(), render)
    counted = dict(counter._sizes)
    tokenizer.chat_template = "".join(ADDITIVE["default system"])  # equal, another object
    assert counter.additive and counter._sizes == counted  # nothing to count again
    assert message_tokens(conv.messages(), counter) == message_tokens(conv.messages(), render)


def test_the_local_and_remote_backends_count_with_a_measure(tiny_model: Tiny) -> None:
    from chatcli.backends.local import LocalBackend
    from chatcli.backends.openai import OpenAIBackend
    from chatcli.registry import ModelSpec
    from chatcli.remote.client import Client
    from chatcli.remote.model import Estimate, RemoteModel, estimate_tokens
    from conftest import tiny_loaded

    local = LocalBackend(tiny_loaded(tiny_model))
    assert isinstance(local.count, PromptCounter) and local.count is local.count
    assert local.count.tokenizer is local.tokenizer

    spec = ModelSpec(alias="srv", source="remote", backend="openai",
                     base_url="http://127.0.0.1:9/v1", model="m")
    remote = RemoteModel(spec, Client("http://127.0.0.1:9/v1", 5.0, None), 4096)
    backend = OpenAIBackend(remote)
    estimate = backend.count
    assert isinstance(estimate, Estimate) and isinstance(estimate, Measure)
    assert backend.count is estimate
    conv = chat(30)
    conv.add_user("x" * 50)
    messages = conv.messages()
    for scale in (1.0, 1.37, 2.9):
        remote.scale = scale
        sizes = estimate.sizes(messages)
        for end in range(1, len(messages) + 1):
            assert estimate.length(messages[0], sum(sizes[:end])) == len(
                remote.count_ids(messages[:end])) == math.ceil(
                    estimate_tokens(messages[:end]) * scale)
        assert message_tokens(messages, estimate) == message_tokens(messages, remote.count_ids)
        for budget in (100, 700, 2000, 10_000):
            assert outcome(lambda b=budget: pack(conv, estimate, b)) == outcome(
                lambda b=budget: pack(conv, remote.count_ids, b))


# ---------------------------------------------------------------- the real default model


@pytest.mark.slow
@settings(max_examples=150, deadline=None, suppress_health_check=[
    HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(conv=pinned_conversations(), data=st.data(), truncate=st.sampled_from([True, False]))
def test_counted_packing_with_the_real_default_model(
    real: Path, conv: Conversation, data: st.DataObject, truncate: bool
) -> None:
    tokenizer, counter = real_counter()
    assert counter.additive
    same_as_rendering(conv, counter, lambda m: render_ids(tokenizer, m), data, truncate)
    conv.system = None  # its template's default system prompt then opens every prompt
    same_as_rendering(conv, counter, lambda m: render_ids(tokenizer, m), data, truncate)


_REAL: list[tuple[Any, PromptCounter]] = []


def real_counter() -> tuple[Any, PromptCounter]:
    if not _REAL:
        from chatcli import loader, sources
        from chatcli.registry import load_registry

        spec = load_registry().resolve("smollm2-135m")
        weights = sources.locate(spec)
        assert weights is not None
        tokenizer = loader.open_tokenizer(loader.converted_dir(spec, weights))
        assert "You are a helpful AI assistant named SmolLM" in tokenizer.chat_template
        _REAL.append((tokenizer, PromptCounter(tokenizer)))
    return _REAL[0]
