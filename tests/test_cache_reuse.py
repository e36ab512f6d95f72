"""KV-cache reuse across turns: when it is exact, and what `/stats` says about it.

A turn whose packed prompt equals the prompt the cache was last prefilled with
(`/retry`, or `/undo` and the same message again) feeds no token at all: the first
token comes from the logits that prefill computed, kept with the cache, and every
later step has the same shapes and inputs as before, so the answer is the same bit
for bit, in any dtype. These tests compare with exact equality only there.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import torch

from chatcli.chat.session import ChatSession, DecodingRequest
from chatcli.decoding.registry import strategy_registry
from chatcli.generation.prompt_cache import PromptCache
from chatcli.lm.hf import HFLanguageModel
from chatcli.lm.llama import KVCache
from chatcli.lm.native import NativeLanguageModel
from chatcli.loader import LoadedModel, load_model
from chatcli.progress import SilentReporter
from chatcli.registry import load_registry
from chatcli.runtime import Runtime
from conftest import answer_ids, run_cli


class Spy:
    """A `LanguageModel` that records what is fed and the logits it returns."""

    def __init__(self, lm: Any) -> None:
        self.lm, self.device, self.vocab_size = lm, lm.device, lm.vocab_size
        self.fed: list[int] = []  # tokens per prefill call
        self.logits: list[torch.Tensor] = []

    def prefill(self, ids: list[int], cache: Any = None) -> tuple[Any, Any]:
        self.fed.append(len(ids))
        logits, cache = self.lm.prefill(ids, cache)
        self.logits.append(logits.clone())
        return logits, cache

    def step(self, tokens: Any, cache: Any) -> tuple[Any, Any]:
        logits, cache = self.lm.step(tokens, cache)
        self.logits.append(logits.clone())
        return logits, cache

    def expand(self, cache: Any, rows: int) -> None:
        self.lm.expand(cache, rows)

    def reorder(self, cache: Any, rows: Any) -> None:
        self.lm.reorder(cache, rows)

    def crop(self, cache: Any, length: int) -> None:
        self.lm.crop(cache, length)

    def can_crop(self, cache: Any, length: int) -> bool:
        return bool(self.lm.can_crop(cache, length))


def _loaded(home: Path, dtype: str) -> LoadedModel:
    spec = load_registry().resolve("tiny")
    return load_model(spec, Runtime("cpu", dtype, 1), SilentReporter())


def _session(loaded: LoadedModel, reuse: bool = True) -> tuple[ChatSession, Spy]:
    spy = Spy(loaded.lm)
    session = ChatSession(dataclasses.replace(loaded, lm=spy), strategy_registry(),
                          DecodingRequest("greedy", {"max_new_tokens": 24}), reuse_cache=reuse)
    return session, spy


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_retry_repeats_the_cold_answer_bit_for_bit(home: Path, dtype: str) -> None:
    loaded = _loaded(home, dtype)
    session, spy = _session(loaded)
    session.add_user("Tell me about the quick brown fox.")
    cold = answer_ids(session)
    cold_logits, spy.logits = spy.logits, []
    prompt_tokens = session.last_packed.tokens if session.last_packed else 0
    assert spy.fed == [prompt_tokens]  # the first answer prefilled the whole prompt
    for _ in range(2):  # /retry twice: the second retry starts from the first's cache
        assert session.retry() is not None
        assert answer_ids(session) == cold
        assert spy.fed == [prompt_tokens]  # no further forward pass over the prompt
        assert session.cache.reused == prompt_tokens
        assert len(spy.logits) == len(cold_logits) - 1  # every step but the prefill
        for ours, theirs in zip(spy.logits, cold_logits[1:], strict=True):
            assert torch.equal(ours, theirs)
        spy.logits = []


def test_undo_and_the_same_message_again_is_exact(home: Path) -> None:
    session, spy = _session(_loaded(home, "bfloat16"))
    session.add_user("Hello there")
    first = answer_ids(session)
    session.add_user("And the fox?")
    second = answer_ids(session)
    session.undo()
    session.add_user("And the fox?")
    assert answer_ids(session) == second
    assert len(spy.fed) == 2  # turn 2 fed its new suffix; its repetition fed nothing
    assert first  # the first turn answered


def test_without_reuse_a_retry_prefills_again(home: Path) -> None:
    session, spy = _session(_loaded(home, "float32"), reuse=False)
    session.add_user("Hello there")
    cold = answer_ids(session)
    session.retry()
    assert answer_ids(session) == cold
    assert spy.fed == [spy.fed[0]] * 2 and session.cache.reused == 0


class _Counting:
    """A stand-in model: logits say how many tokens the prefill fed."""

    device = torch.device("cpu")
    vocab_size = 4

    def prefill(self, ids: list[int], cache: Any = None) -> tuple[Any, Any]:
        cache = [] if cache is None else cache
        cache.extend(ids)
        return torch.full((1, 4), float(len(ids))), cache

    def step(self, tokens: Any, cache: Any) -> tuple[Any, Any]:
        cache.append(int(tokens[0]))
        return torch.zeros(1, 4), cache

    def crop(self, cache: Any, length: int) -> None:
        del cache[length:]

    def expand(self, cache: Any, rows: int) -> None:
        pass

    def reorder(self, cache: Any, rows: Any) -> None:
        pass


def test_kept_logits_survive_in_place_edits_and_go_with_the_prompt() -> None:
    pc = PromptCache(_Counting())
    logits, cache = pc.prefill([1, 2, 3])
    logits.add_(100)  # a processor editing its scores in place
    pc.step(torch.tensor([0]), cache)
    again, cache = pc.prefill([1, 2, 3])
    assert again.tolist() == [[3.0] * 4] and cache == [1, 2, 3] and pc.reused == 3
    pc.crop(cache, 2)  # the kept logits belong to position 3: gone with it
    logits, cache = pc.prefill([1, 2, 3])
    assert logits.tolist() == [[1.0] * 4] and pc.reused == 2
    pc.invalidate()
    logits, _ = pc.prefill([1, 2, 3])
    assert logits.tolist() == [[3.0] * 4] and pc.reused == 0


def test_stats_counts_the_reused_prompt_tokens(cli) -> None:
    result = run_cli(["chat", "-n", "4"], input="Hi\n/stats\n/retry\n/stats\n")
    assert result.exit_code == 0, result.stderr
    stats = [line for line in result.stdout.splitlines() if line.startswith("model=")]
    assert len(stats) == 2
    fields = [dict(f.split("=", 1) for f in line.split() if "=" in f) for line in stats]
    prompt = fields[0]["prompt_tokens"]
    assert fields[0]["reused_prompt_tokens"] == "0"
    assert fields[1]["prompt_tokens"] == prompt
    assert fields[1]["reused_prompt_tokens"] == prompt  # /retry: the whole prompt was cached


class _Uncroppable(KVCache):
    """A cache that declares it cannot be cropped, and fails if it is cropped anyway."""

    croppable = False

    def crop(self, length: int) -> None:
        raise AssertionError("a cache that declares itself not croppable was cropped")


class _UncroppableLM(NativeLanguageModel):
    def prefill(self, ids: list[int], cache: Any = None) -> tuple[Any, Any]:
        if cache is None:
            cache = _Uncroppable(len(self.model.layers))
        return super().prefill(ids, cache)


def test_a_cache_that_cannot_be_cropped_gets_a_full_prefill(home: Path) -> None:
    """Every turn, /retry included, prefills its whole prompt into a new cache (nothing
    reused, nothing cropped) and answers exactly as a session without reuse."""
    loaded = _loaded(home, "float32")
    assert isinstance(loaded.lm, NativeLanguageModel)
    uncroppable = dataclasses.replace(loaded, lm=_UncroppableLM(loaded.lm.model))
    runs = []
    for model, reuse in ((uncroppable, True), (loaded, False)):
        session, spy = _session(model, reuse=reuse)
        answers, prompts, reused = [], [], []
        for message in ("Hello there", "And the fox?", None):
            if message is None:
                assert session.retry() is not None
            else:
                session.add_user(message)
            answers.append(answer_ids(session))
            assert session.last_packed is not None
            prompts.append(session.last_packed.tokens)
            reused.append(session.cache.reused)
        assert spy.fed == prompts and reused == [0, 0, 0]
        assert prompts[1] > prompts[0] + len(answers[0])  # turn 2 had a prefix to reuse
        runs.append(answers)
    assert runs[0] == runs[1]


class _Window(_Counting):
    """A stand-in whose cache can be cropped only while it holds at most `window` ids."""

    window = 4

    def can_crop(self, cache: Any, length: int) -> bool:
        return len(cache) <= self.window and 0 <= length <= len(cache)

    def crop(self, cache: Any, length: int) -> None:
        assert self.can_crop(cache, length)
        super().crop(cache, length)


def test_the_prompt_cache_asks_before_it_crops() -> None:
    pc = PromptCache(_Window())
    logits, cache = pc.prefill([1, 2, 3])
    pc.step(torch.tensor([9]), cache)  # the cache holds 4 ids: still croppable
    logits, cache = pc.prefill([1, 2, 3, 5, 6])
    assert logits.tolist() == [[2.0] * 4] and pc.reused == 3 and cache == [1, 2, 3, 5, 6]
    assert not pc.can_crop(cache, 3)
    # 5 ids: past the window. A longer prompt and the same prompt again (/retry) both
    # prefill everything into a new cache.
    logits, new = pc.prefill([1, 2, 3, 5, 6, 7])
    assert logits.tolist() == [[6.0] * 4] and pc.reused == 0 and new is not cache
    again, newer = pc.prefill([1, 2, 3, 5, 6, 7])
    assert again.tolist() == [[6.0] * 4] and pc.reused == 0 and newer is not new


def test_transformers_caches_say_when_they_cannot_roll_back(sliding: Path) -> None:
    """A sliding-window layer past its window cannot be cropped: `can_crop` says so, and
    the prompt cache then prefills cold (bit for bit a fresh prefill's logits)."""
    from transformers import AutoModelForCausalLM

    lm = HFLanguageModel(AutoModelForCausalLM.from_pretrained(sliding, dtype=torch.float32))
    ids = torch.randint(3, 300, (40,), generator=torch.Generator().manual_seed(0)).tolist()
    _, cache = lm.prefill(ids[:20])
    assert lm.can_crop(cache, 10) and lm.can_crop(cache, 20)
    _, cache = lm.prefill(ids[20:30], cache)  # 30 positions: past the 24-token window
    assert not lm.can_crop(cache, 10) and lm.can_crop(cache, 30)
    spy = Spy(lm)
    pc = PromptCache(spy)
    pc.prefill(ids[:30])
    pc.prefill(ids)  # all 30 cached positions shared: nothing to roll back
    assert spy.fed == [30, 10] and pc.reused == 30
    edited = ids[:25] + ids[26:]  # shares 25 of the 40 cached positions
    logits, _ = pc.prefill(edited)
    assert spy.fed == [30, 10, 39] and pc.reused == 0
    cold, _ = lm.prefill(edited)
    assert torch.equal(logits, cold)
    short = PromptCache(Spy(lm))
    short.prefill(ids[:20])
    short.prefill(ids[:22])  # within the window: reused
    assert short.reused == 20


@pytest.fixture(scope="module")
def sliding(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from test_transformers_path import build_model

    return build_model(tmp_path_factory.mktemp("sliding"), "qwen2", use_sliding_window=True,
                       sliding_window=24, max_window_layers=0)
