"""The road not taken (issue 15): teacher-forced distributions, least-sure steps, forced tokens.

Steps and ranks count from 1 (chatcli.alternatives): the alternative at STEP with RANK keeps
`answer[:STEP - 1]`, puts the model's RANK-th token at STEP, and continues with the answer's
strategy and seed. Every figure is checked against a direct computation on the tiny
random-weight model of conftest: the model's logits by one full forward pass of
`transformers` (not chatcli's prefill/step), ranks with `torch.topk`, greedy continuations
with `generate()`, sampled ones with a hand-written inverse-CDF loop over the same seeded
generator. One thread, as in test_constraints.py: a model this small only loses from
threading on a busy machine.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import pytest
import torch

from chatcli.alternatives import (
    Alternative,
    ForcedLM,
    StepView,
    alternative,
    distributions,
    least_sure,
    stream_alternative,
)
from chatcli.constraints.spec import Constraint
from chatcli.decoding.registry import strategy_registry
from chatcli.decoding.settings import DecodingSettings, resolve_settings
from chatcli.errors import ChatcliError, UsageError
from chatcli.generation.prompt_cache import PromptCache
from chatcli.generation.stream import Generation, constrained_lm, stream
from chatcli.loader import LoadedModel
from conftest import Tiny, one_thread, tiny_loaded

N = 24  # max_new_tokens of every answer here
VOCAB = 400
EOS = 2
ALL_TOKENS = Constraint("grammar", f"start: <[^{EOS}]>*\n", syntax="lark", source="all.lark")


@pytest.fixture(scope="module")
def loaded(tiny_model: Tiny) -> Iterator[LoadedModel]:
    with one_thread():
        result = tiny_loaded(tiny_model)
        assert result.eos_ids == {EOS} and result.lm.vocab_size == VOCAB
        yield result


def settings_for(strategy: str = "greedy", **flags: Any) -> DecodingSettings:
    return resolve_settings(strategy_registry(), strategy=strategy, flags=flags)


GREEDY = settings_for()
# temperature only (top_k=0): the reference below needs nothing but softmax(logits / T)
SAMPLE = settings_for("sample", temperature=0.9, seed=1234)
SAMPLE_TOP_K = settings_for("sample", temperature=1.3, top_k=4, seed=99)


@pytest.fixture(scope="module")
def prompt(loaded: LoadedModel) -> list[int]:
    chat = loaded.tokenizer.apply_chat_template([{"role": "user", "content": "Hello there"}],
                                                tokenize=False, add_generation_prompt=True)
    return list(loaded.tokenizer(chat, add_special_tokens=False)["input_ids"])


def ids(gen: Generation) -> list[int]:
    """Run a generation: its token ids (the events' and the Generation's, which agree)."""
    tokens = [e.token_id for e in gen]
    assert gen.token_ids == tokens
    return tokens


def answer(loaded: LoadedModel, prompt: list[int], settings: DecodingSettings) -> list[int]:
    return ids(stream(loaded, prompt, settings, N))


def direct_logits(loaded: LoadedModel, ids: list[int]) -> torch.Tensor:
    """(len(ids), vocab) float32 logits of one full forward pass: row i predicts ids[i + 1]."""
    with torch.inference_mode():
        return loaded.model(torch.tensor([ids])).logits[0].float()  # type: ignore[attr-defined]


def greedy_reference(loaded: LoadedModel, ids: list[int], n: int) -> list[int]:
    """transformers' generate() from `ids`: up to n tokens, through the first EOS."""
    if n <= 0:
        return []
    out = loaded.model.generate(  # type: ignore[attr-defined]
        torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
        max_new_tokens=n, do_sample=False, eos_token_id=[EOS],
        pad_token_id=loaded.tokenizer.pad_token_id)
    new = out[0, len(ids):].tolist()
    return new[: new.index(EOS) + 1] if EOS in new else new


def sample_reference(loaded: LoadedModel, prompt: list[int], forced: list[int], seed: int,
                     temperature: float, top_k: int = 0) -> tuple[list[int], torch.Tensor]:
    """Seeded sampling written out: one uniform number per step from the generator, the
    token where the CDF of softmax(top-k(logits / T)) first exceeds it, except that the first
    len(forced) steps take the forced token (their number drawn all the same). Returns the
    tokens and the generator's state at the end."""
    g = torch.Generator().manual_seed(seed)
    out: list[int] = []
    for i in range(N):
        logits = direct_logits(loaded, prompt + out)[-1] / temperature
        if top_k:
            kth = torch.topk(logits, top_k).values[-1]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        cdf = torch.softmax(logits, -1).double().cumsum(-1)
        u = torch.rand((1,), generator=g, dtype=torch.float64) * cdf[-1]
        token = forced[i] if i < len(forced) else int(torch.searchsorted(cdf, u, right=True)[0])
        out.append(token)
        if token == EOS:
            break
    return out, g.get_state()


# -- distributions and least_sure ------------------------------------------------------------


def test_distributions_equal_a_direct_forward(loaded: LoadedModel, prompt: list[int]) -> None:
    ans = answer(loaded, prompt, SAMPLE)
    views = distributions(loaded.lm, prompt, ans, k=4)
    logits = direct_logits(loaded, prompt + ans)[len(prompt) - 1:len(prompt) - 1 + len(ans)]
    assert [v.step for v in views] == list(range(1, len(ans) + 1))
    assert [v.token_id for v in views] == ans
    for v, row in zip(views, logits, strict=True):
        p = torch.softmax(row, -1)
        values, ids = torch.topk(p, 4)
        assert [t for t, _ in v.top] == ids.tolist()
        assert [q for _, q in v.top] == pytest.approx(values.tolist(), abs=1e-6)
        assert v.margin == pytest.approx(float(values[0] - values[1]), abs=1e-6)
        assert v.entropy == pytest.approx(float(-(p * p.log()).sum()), abs=1e-5)
        assert v.rank == int((p > p[v.token_id]).sum()) + 1
        assert v.prob == pytest.approx(float(p[v.token_id]), abs=1e-6)
    # greedy takes rank 1 everywhere; a sampled answer here does not
    assert all(v.rank == 1 for v in distributions(loaded.lm, prompt,
                                                  answer(loaded, prompt, GREEDY), 2))
    assert any(v.rank > 1 for v in views)


def view(step: int, entropy: float, margin: float) -> StepView:
    return StepView(step, 7, entropy, [(7, 0.5)], margin, 1, 0.5)


def test_least_sure_orders_by_entropy_then_margin_in_step_order() -> None:
    views = [view(1, 0.5, 0.1), view(2, 2.0, 0.3), view(3, 1.0, 0.2), view(4, 2.0, 0.1),
             view(5, 1.0, 0.05), view(6, 3.0, 0.9), view(7, 1.0, 0.2)]
    assert [v.step for v in least_sure(views, 3)] == [2, 4, 6]
    # 1.0 three times: margin 0.05 (step 5) first, then 0.2 twice (steps 3, 7): the earlier
    assert [v.step for v in least_sure(views, 5)] == [2, 3, 4, 5, 6]
    assert [v.step for v in least_sure(views, 6)] == [2, 3, 4, 5, 6, 7]
    assert least_sure(views, 0) == [] and least_sure([], 5) == []
    assert least_sure(views, 99) == views


def test_least_sure_on_a_real_answer(loaded: LoadedModel, prompt: list[int]) -> None:
    views = distributions(loaded.lm, prompt, answer(loaded, prompt, SAMPLE), 3)
    picked = least_sure(views, 5)
    assert [v.step for v in picked] == sorted(v.step for v in picked)
    threshold = min(v.entropy for v in picked)
    assert all(v.entropy <= threshold for v in views if v not in picked)


# -- the alternative: prefix, forced token, continuation ---------------------------------------


def check_forced(loaded: LoadedModel, prompt: list[int], ans: list[int], alt: Alternative,
                 step: int, rank: int) -> None:
    """Forced prefix = the answer's first STEP - 1 tokens; token STEP = the RANK-th of a
    direct teacher-forced forward pass (torch.topk)."""
    assert (alt.step, alt.rank) == (step, rank)
    assert alt.forced[: step - 1] == ans[: step - 1] and len(alt.forced) == step
    row = direct_logits(loaded, prompt + ans[: step - 1])[-1]
    assert alt.token_id == alt.forced[-1] == int(torch.topk(row, rank).indices[rank - 1])
    assert alt.prob == pytest.approx(float(torch.softmax(row, -1)[alt.token_id]), abs=1e-6)
    assert alt.original_id == ans[step - 1]
    assert alt.original_rank == int((row > row[ans[step - 1]]).sum()) + 1
    assert alt.same == (alt.token_id == ans[step - 1])


@pytest.mark.parametrize(("step", "rank"), [(1, 2), (3, 2), (7, 5), (12, 400), ("last", 3)])
def test_greedy_alternative(loaded: LoadedModel, prompt: list[int], step: Any, rank: int
                            ) -> None:
    ans = answer(loaded, prompt, GREEDY)
    step = len(ans) if step == "last" else step
    alt = alternative(loaded.lm, prompt, ans, step, rank, GREEDY)
    check_forced(loaded, prompt, ans, alt, step, rank)
    assert not alt.same and alt.original_rank == 1
    gen = stream_alternative(loaded, prompt, GREEDY, N, alt)
    events = list(gen)
    tokens = [e.token_id for e in events]
    assert tokens == gen.token_ids
    assert tokens[:step] == alt.forced
    # the rest: plain greedy generation from prompt + forced prefix
    rest = [] if alt.token_id == EOS else greedy_reference(loaded, prompt + alt.forced, N - step)
    assert tokens[step:] == rest
    assert events[-1].finish_reason == ("stop" if tokens[-1] == EOS else "length")
    assert gen.text == loaded.tokenizer.decode(tokens, skip_special_tokens=True)


def test_sampled_alternative_equals_the_seeded_sampler_with_the_prefix_forced(
        loaded: LoadedModel, prompt: list[int]) -> None:
    ans = answer(loaded, prompt, SAMPLE)
    reference, _ = sample_reference(loaded, prompt, [], SAMPLE.seed, 0.9)
    assert reference == ans  # the reference is the sampler: unforced, it gives the answer
    for step, rank in [(1, 3), (5, 2), (9, 1), (len(ans), 2)]:
        alt = alternative(loaded.lm, prompt, ans, step, rank, SAMPLE)
        check_forced(loaded, prompt, ans, alt, step, rank)
        tokens = ids(stream_alternative(loaded, prompt, SAMPLE, N, alt))
        expected, _ = sample_reference(loaded, prompt, alt.forced, SAMPLE.seed, 0.9)
        assert tokens == expected
        assert tokens[:step] == alt.forced


def test_a_forced_token_outside_top_k_is_taken_and_the_draws_stay_aligned(
        loaded: LoadedModel, prompt: list[int]) -> None:
    ans = answer(loaded, prompt, SAMPLE_TOP_K)
    alt = alternative(loaded.lm, prompt, ans, 4, 30, SAMPLE_TOP_K)  # far outside top-4
    tokens = ids(stream_alternative(loaded, prompt, SAMPLE_TOP_K, N, alt))
    expected, _ = sample_reference(loaded, prompt, alt.forced, SAMPLE_TOP_K.seed, 1.3, top_k=4)
    assert tokens[:4] == alt.forced and tokens == expected


@pytest.mark.parametrize("settings", [GREEDY, SAMPLE, SAMPLE_TOP_K], ids=["greedy", "sample",
                                                                          "top-k"])
def test_the_answers_own_rank_gives_the_answer_back(loaded: LoadedModel, prompt: list[int],
                                                    settings: DecodingSettings) -> None:
    """Forcing the answer's own token: same history, and one random number drawn per step as
    before, so the same answer token for token, and the generator ends where it ended."""
    ans = answer(loaded, prompt, settings)
    views = distributions(loaded.lm, prompt, ans, 1)
    for step in (1, 6, len(ans)):
        alt = alternative(loaded.lm, prompt, ans, step, views[step - 1].rank, settings)
        assert alt.same and alt.token_id == ans[step - 1]
        assert ids(stream_alternative(loaded, prompt, settings, N, alt)) == ans
    # the whole answer forced: the strategy's generator consumed exactly as in the original
    strategy = strategy_registry().get(settings.strategy)()
    plain = settings.context(N, loaded.eos_ids, len(prompt))
    forced = settings.context(N, loaded.eos_ids, len(prompt))
    got = [s.token_id for s in strategy.decode(loaded.lm, prompt, settings.params, plain)]
    again = [s.token_id for s in strategy.decode(ForcedLM(loaded.lm, ans), prompt,
                                                 settings.params, forced)]
    assert got == again == ans
    assert torch.equal(plain.generator.get_state(), forced.generator.get_state())


def test_forced_steps_report_the_models_own_distribution(loaded: LoadedModel,
                                                         prompt: list[int]) -> None:
    ans = answer(loaded, prompt, GREEDY)
    alt = alternative(loaded.lm, prompt, ans, 3, 4)
    events = list(stream_alternative(loaded, prompt, GREEDY, N, alt, candidates=3))
    tokens = [e.token_id for e in events]
    logits = direct_logits(loaded, prompt + tokens)[len(prompt) - 1:]
    for i, (event, row) in enumerate(zip(events, logits, strict=False)):
        logp = torch.log_softmax(row, -1)
        assert event.logprob == pytest.approx(float(logp[event.token_id]), abs=1e-5)
        c = event.candidates
        assert c is not None
        assert [t for t, _ in c.raw] == torch.topk(logp, 3).indices.tolist()
        if i < 3:  # forced: what the forcing removed, as a constraint's candidates show
            assert c.drawn_from[0] == (event.token_id, pytest.approx(1.0))
            assert c.removed == tuple(t for t, _ in c.raw if t != event.token_id)
            assert c.removed_mass == pytest.approx(1 - float(logp[event.token_id].exp()),
                                                   abs=1e-5)
        else:
            assert c.removed_mass is None or c.removed_mass == pytest.approx(0.0, abs=1e-6)
    assert events[2].logprob < events[0].logprob  # rank 4 is less likely than greedy's


def test_over_the_prompt_cache(loaded: LoadedModel, prompt: list[int]) -> None:
    """As a chat session runs it: the backend's PromptCache under the forcing."""
    cache = PromptCache(loaded.lm)
    through = dataclasses.replace(loaded, lm=cache)
    ans = answer(through, prompt, SAMPLE)
    alt = alternative(cache, prompt, ans, 5, 2, SAMPLE)
    assert alt == alternative(loaded.lm, prompt, ans, 5, 2, SAMPLE)
    tokens = ids(stream_alternative(through, prompt, SAMPLE, N, alt))
    assert cache.reused == len(prompt)
    assert tokens == ids(stream_alternative(loaded, prompt, SAMPLE, N, alt))


def test_under_a_constraint(loaded: LoadedModel, prompt: list[int]) -> None:
    """A grammar that removes nothing: the same alternative, and constraint_satisfied set."""
    ans = answer(loaded, prompt, GREEDY)
    plain = alternative(loaded.lm, prompt, ans, 4, 2)
    alt = alternative(constrained_lm(loaded, ALL_TOKENS), prompt, ans, 4, 2)
    assert alt == plain
    gen = stream_alternative(loaded, prompt, GREEDY, N, alt, constraint=ALL_TOKENS)
    tokens = [e.token_id for e in gen]
    assert tokens == ids(stream_alternative(loaded, prompt, GREEDY, N, plain))
    assert gen.token_ids == tokens and gen.constraint == ALL_TOKENS
    assert gen.constraint_satisfied is True


# -- refusals and errors -----------------------------------------------------------------------


BEAM = settings_for("beam", num_beams=3)
BEAM_MESSAGE = ("alternatives of a beam answer are not defined: beam search keeps several "
                "sequences and picks the best whole one, so no step's token was chosen from "
                "that step's distribution")


def test_beam_answers_are_refused(loaded: LoadedModel, prompt: list[int]) -> None:
    ans = answer(loaded, prompt, BEAM)
    with pytest.raises(UsageError) as e:
        alternative(loaded.lm, prompt, ans, 2, 2, BEAM)
    assert (e.value.message, e.value.hint) == (
        BEAM_MESSAGE, "explore a greedy or sampled answer (--strategy greedy or sample)")
    alt = alternative(loaded.lm, prompt, ans, 2, 2)  # without settings: computed...
    with pytest.raises(UsageError, match="^" + BEAM_MESSAGE):
        stream_alternative(loaded, prompt, BEAM, N, alt)  # ...but not decoded
    # and a search over ForcedLM directly stops at its first expand
    strategy = strategy_registry().get("beam")()
    ctx = BEAM.context(N, loaded.eos_ids, len(prompt))
    with pytest.raises(UsageError, match=r"^alternatives of a beam answer are not defined"):
        list(strategy.decode(ForcedLM(loaded.lm, alt.forced), prompt, BEAM.params, ctx))


@pytest.mark.parametrize(("step", "rank", "message", "hint"), [
    (0, 1, "STEP must be in 1..{n}, the answer's tokens (got 0)",
     "'/alt' with no arguments lists the steps where the model was least sure"),
    ("n+1", 1, "STEP must be in 1..{n}, the answer's tokens (got {n1})",
     "'/alt' with no arguments lists the steps where the model was least sure"),
    ("3", 1, "STEP must be in 1..{n}, the answer's tokens (got '3')",
     "'/alt' with no arguments lists the steps where the model was least sure"),
    (2, 0, "RANK must be in 1..400, the model's vocabulary (got 0)",
     "RANK 1 is the model's most likely token at STEP, 2 the next"),
    (2, 401, "RANK must be in 1..400, the model's vocabulary (got 401)",
     "RANK 1 is the model's most likely token at STEP, 2 the next"),
    (2, True, "RANK must be in 1..400, the model's vocabulary (got True)",
     "RANK 1 is the model's most likely token at STEP, 2 the next"),
])
def test_argument_errors(loaded: LoadedModel, prompt: list[int], step: Any, rank: Any,
                         message: str, hint: str) -> None:
    ans = answer(loaded, prompt, GREEDY)
    n = len(ans)
    step = n + 1 if step == "n+1" else step
    with pytest.raises(UsageError) as e:
        alternative(loaded.lm, prompt, ans, step, rank, GREEDY)
    assert e.value.message == message.format(n=n, n1=n + 1)
    assert e.value.hint == hint and e.value.exit_code == 2


def test_empty_answer_and_impossible_ranks(loaded: LoadedModel, prompt: list[int]) -> None:
    with pytest.raises(UsageError, match=r"^there is no alternative to an empty answer"):
        alternative(loaded.lm, prompt, [], 1, 1)

    class Narrow:  # a model that allows only ten tokens at every step
        device, vocab_size = loaded.lm.device, VOCAB

        def prefill(self, ids: list[int], cache: Any = None) -> tuple[Any, Any]:
            logits, cache = loaded.lm.prefill(ids)
            return logits.masked_fill(torch.arange(VOCAB) >= 10, float("-inf")), cache

        def step(self, tokens: Any, cache: Any) -> tuple[Any, Any]:
            logits, cache = loaded.lm.step(tokens, cache)
            return logits.masked_fill(torch.arange(VOCAB) >= 10, float("-inf")), cache

    assert alternative(Narrow(), prompt, [3, 4, 5], 2, 10).token_id < 10
    with pytest.raises(UsageError) as e:
        alternative(Narrow(), prompt, [3, 4, 5], 2, 11)
    assert e.value.message == ("RANK must be in 1..10 at step 2: only 10 tokens are possible "
                               "there (got 11)")


def test_a_token_the_answers_penalties_ban(loaded: LoadedModel, prompt: list[int]) -> None:
    """--no-repeat-ngram-size 1 bans every token already seen: refused before decoding; and
    ForcedLM itself notices a strategy that did not take its token."""
    banning = settings_for("greedy", no_repeat_ngram_size=1)
    ans = answer(loaded, prompt, banning)
    row = direct_logits(loaded, prompt + ans[:3])[-1]
    seen = set(prompt + ans[:3])
    rank = next(r for r in range(1, VOCAB + 1)
                if int(torch.topk(row, r).indices[r - 1]) in seen)
    with pytest.raises(UsageError) as e:
        alternative(loaded.lm, prompt, ans, 4, rank, banning)
    assert e.value.message == (f"the token ranked {rank} at step 4 would repeat a 1-gram, "
                               "which this answer's --no-repeat-ngram-size 1 bans there")
    assert e.value.hint == "choose another RANK"
    alt = alternative(loaded.lm, prompt, ans, 4, rank)  # no settings: not checked
    with pytest.raises(ChatcliError, match="^the strategy did not take the forced token "
                       f"{alt.token_id} at step 4 "):
        list(stream_alternative(loaded, prompt, banning, N, alt))


def test_ties_go_to_the_lower_id_in_views_and_alternatives() -> None:
    """bf16 logits tie often: the list a user reads and the RANK they type agree."""

    class Tied:  # logits [1, 3, 3, 0, 3] at every step
        device, vocab_size = torch.device("cpu"), 5
        row = torch.tensor([[1.0, 3.0, 3.0, 0.0, 3.0]])

        def prefill(self, ids: list[int], cache: Any = None) -> tuple[Any, Any]:
            return self.row.clone(), None

        def step(self, tokens: Any, cache: Any) -> tuple[Any, Any]:
            return self.row.clone(), None

    views = distributions(Tied(), [9], [4, 2, 0], k=5)
    assert [t for t, _ in views[0].top] == [1, 2, 4, 0, 3]
    assert [v.rank for v in views] == [3, 2, 4]
    assert views[0].margin == 0.0
    for rank, token in enumerate([1, 2, 4, 0, 3], start=1):
        alt = alternative(Tied(), [9], [4, 2, 0], 2, rank)
        assert alt.token_id == token and alt.forced == [4, token]
        assert alt.original_rank == 2 and alt.same == (rank == 2)
