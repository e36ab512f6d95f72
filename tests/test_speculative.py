"""Speculative decoding (--speculate): prompt lookup and a draft model, exact where the
maths allows.

- Greedy: in float32 the answer is plain greedy's token for token (the verification's
  batched logits equal single steps' up to rounding: a difference is allowed only after
  a near tie of plain greedy's logits, the brief's rule across shapes), with prompt
  lookup and a draft model, adaptive and fixed draft lengths, penalties, a constraint.
- Sampling: the accept/resample rule keeps the target's distribution (a chi-square test
  over seeded draws on a tiny model, against the exact probabilities, with a test that
  the statistic does tell a wrong distribution apart), and a seed repeats an answer.
- The figures (--stats, --json), the marks on a terminal, the refusals.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from chatcli.lm.wrapped import WrappedLM
from conftest import Tiny, run_cli

NEAR_TIE = 1e-3  # float32 logits of other matmul shapes differ by ~1e-6 here


# -- models --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def draft_folder(tmp_path_factory: pytest.TempPathFactory, tiny_model: Tiny) -> Path:
    """The tiny model with noise added to its weights (its tokenizer as it is): a draft
    model that is right at times and wrong at others."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = tmp_path_factory.mktemp("tiny-draft")
    model = AutoModelForCausalLM.from_pretrained(tiny_model.folder, dtype=torch.float32)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() == 2:
                param.add_(torch.randn(param.shape, generator=generator) * 0.15)
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(tiny_model.folder).save_pretrained(folder)
    return folder


def native(folder: Path) -> Any:
    import torch

    from chatcli.lm.llama import NativeCausalLM
    from chatcli.lm.native import NativeLanguageModel
    from chatcli.loader import LoadedModel, open_tokenizer
    from chatcli.registry import ModelSpec
    from chatcli.runtime import Runtime

    tok = open_tokenizer(folder)
    model = NativeCausalLM.from_folder(folder, torch.float32)
    return LoadedModel(spec=ModelSpec(alias="tiny", source="path", path=folder),
                       lm=NativeLanguageModel(model), tokenizer=tok,
                       runtime=Runtime("cpu", "float32", None),
                       eos_ids=frozenset({tok.eos_token_id}), context_window=256,
                       load_seconds=0.0, folder=folder)


@pytest.fixture(scope="module")
def tiny(tiny_model: Tiny) -> Any:
    return native(tiny_model.folder)


@pytest.fixture(scope="module")
def draft(tiny: Any) -> Any:
    return tiny  # drafter_of() skews it


def settings(strategy: str = "greedy", **flags: Any) -> Any:
    from chatcli.decoding.registry import strategy_registry
    from chatcli.decoding.settings import resolve_settings

    return resolve_settings(strategy_registry(), strategy=strategy, flags=flags)


class Skewed(WrappedLM):
    """A model's logits halved, every tenth token's raised by 1.5: as a draft model, right
    at times and wrong at others, whatever the CPU (no near ties of its own made up)."""

    def _skew(self, logits: Any) -> Any:
        out = logits * 0.5
        out[..., ::10] += 1.5
        return out

    def prefill(self, ids: list[int], cache: Any = None) -> tuple[Any, Any]:
        logits, cache = super().prefill(ids, cache)
        return self._skew(logits), cache

    def step(self, tokens: Any, cache: Any) -> tuple[Any, Any]:
        logits, cache = super().step(tokens, cache)
        return self._skew(logits), cache


def drafter_of(loaded: Any) -> Any:
    """A draft model: the same weights loaded again, skewed (`Skewed`)."""
    from chatcli.decoding.speculative.drafters import ModelDrafter
    from chatcli.generation.prompt_cache import PromptCache

    return ModelDrafter(PromptCache(Skewed(native(loaded.folder).lm)), "draft")


def answer(loaded: Any, ids: list[int], s: Any, n: int, drafter: Any = None,
           constraint: Any = None) -> Any:
    from chatcli.generation.stream import stream

    gen = stream(loaded, ids, s, n, constraint=constraint, drafter=drafter)
    events = list(gen)
    gen.events = events  # type: ignore[attr-defined]
    return gen


def plain_logits(loaded: Any, ids: list[int], answer_ids: list[int]) -> Any:
    """Plain decoding's logits before each answer token (one position at a time)."""
    import torch

    logits, cache = loaded.lm.prefill(ids)
    rows = [logits[0]]
    for token in answer_ids[:-1]:
        logits, cache = loaded.lm.step(torch.tensor([token]), cache)
        rows.append(logits[0])
    return torch.stack(rows).float()


def assert_same_but_near_ties(loaded: Any, ids: list[int], plain: list[int],
                              fast: list[int]) -> None:
    """`fast` is `plain` token for token, or parts from it right after a near tie of
    plain greedy's top two logits (two correct greedy answers)."""
    for i, (a, b) in enumerate(zip(plain, fast, strict=False)):
        if a != b:
            top = plain_logits(loaded, ids, plain[:i + 1])[i].topk(2).values
            gap = float(top[0] - top[1])
            assert gap < NEAR_TIE, f"token {i}: {b} for {a}, a gap of {gap} is no near tie"
            return
    assert len(plain) == len(fast)


PROMPTS = ["the cat sat on the mat. the cat sat on the mat. the cat",
           "hello world", "one two three one two three one two"]


def ids_of(loaded: Any, text: str) -> list[int]:
    return list(loaded.tokenizer(text)["input_ids"])


# -- the parts -------------------------------------------------------------------------------
def test_prompt_lookup_drafts_what_followed_the_latest_longest_match() -> None:
    from chatcli.decoding.speculative.drafters import NgramDrafter

    drafter = NgramDrafter(most=3, least=2)
    text = [1, 2, 3, 4, 5, 9, 2, 3, 7, 8, 1, 2, 3]
    # [1, 2, 3] (3 tokens) occurred at the start: what followed it there
    assert drafter.propose(text, 4).tokens == [4, 5, 9, 2]
    # [2, 3] alone occurred twice: the latest place
    assert NgramDrafter(most=2, least=2).propose(text, 3).tokens == [7, 8, 1]
    assert drafter.propose([*text, 6], 4).tokens == []  # [3, 6] never occurred
    assert drafter.propose(text, 0).tokens == []
    assert drafter.propose(text[:2], 4).tokens == []  # too short to match
    # a match near the end drafts only what exists
    assert NgramDrafter(most=2, least=2).propose([5, 6, 5, 6], 4).tokens == [5, 6]


def test_the_adaptive_schedule_drafts_what_pays_and_pauses_when_nothing_does() -> None:
    from chatcli.decoding.speculative.schedule import MAX_PAUSE, Schedule

    s = Schedule(None, 16, plain_first=2)
    assert [s.length(), s.length()] == [0, 0]
    s.plain(0.010)
    first = s.length()
    assert first == s.best()[0] and 1 < first < 16  # by the prior: 4 in 5 right
    # float32-like: a round costs about one step whatever its length, and all is right
    for k in (first, 8, 12):
        s.verified(k, k, 0.0105 + 0.0002 * k)
    assert s.length() == 16 and s.chance > 0.9
    # the default mode's: two tokens cost two steps, and the guesses turn wrong
    slow = Schedule(None, 16, plain_first=0)
    slow.plain(0.010)
    pauses = []
    k = slow.length()
    for _ in range(8):
        slow.verified(k, 0, 0.010 * (1.0 + 0.6 * (k + 1)))
        n = 0
        while (k := slow.length()) == 0:
            n += 1
        pauses.append(n)
    assert pauses == [1, 4, 16, 64, MAX_PAUSE, MAX_PAUSE, MAX_PAUSE, MAX_PAUSE]
    assert k == 1  # a try after a pause: the length that would pay best
    fixed = Schedule(5, 5, plain_first=0)
    fixed.plain(0.010)
    fixed.verified(5, 0, 0.100)
    assert [fixed.length(), fixed.length()] == [5, 5]


@pytest.mark.parametrize(("value", "message"), [
    ("ngram:0", "the draft length after ':' must be a whole number from 1 to 64, not '0'"),
    ("ngram:x", "the draft length after ':' must be a whole number from 1 to 64, not 'x'"),
    (":4", "expected ngram, ngram:N, ALIAS or ALIAS:N (a model of models.toml)"),
])
def test_a_bad_spelling_says_what_is_wrong(value: str, message: str) -> None:
    from chatcli.decoding.speculative.spelling import parse

    with pytest.raises(ValueError) as caught:
        parse(value)
    assert str(caught.value) == message
    assert str(parse("ngram")) == "ngram" and parse("ngram").length is None
    assert parse("my-draft:8").source == "my-draft" and parse("my-draft:8").length == 8


# -- greedy: the plain answer ----------------------------------------------------------------
@pytest.mark.parametrize("speculate", ["ngram", "ngram:1", "ngram:3", "ngram:16"])
def test_prompt_lookup_greedy_is_plain_greedy_in_float32(tiny: Any, speculate: str) -> None:
    drafted = accepted = 0
    for text in PROMPTS:
        ids = ids_of(tiny, text)
        plain = answer(tiny, ids, settings(), 60).token_ids
        fast = answer(tiny, ids, settings(speculate=speculate), 60)
        assert_same_but_near_ties(tiny, ids, plain, fast.token_ids)
        s = fast.stats.speculation
        drafted, accepted = drafted + s.drafted, accepted + s.accepted
        assert sum(e.drafted for e in fast.events) == s.accepted
        assert s.plain_steps + s.rounds + s.accepted == len(fast.token_ids) - 1
    assert accepted > 0 and drafted > accepted  # it drafted, was right and wrong


@pytest.mark.parametrize("speculate", ["draft", "draft:2", "draft:5"])
def test_a_draft_model_greedy_is_plain_greedy_in_float32(tiny: Any, draft: Any,
                                                         speculate: str) -> None:
    rejected = 0
    for text in PROMPTS:
        ids = ids_of(tiny, text)
        plain = answer(tiny, ids, settings(), 40).token_ids
        fast = answer(tiny, ids, settings(speculate=speculate), 40, drafter_of(draft))
        assert_same_but_near_ties(tiny, ids, plain, fast.token_ids)
        s = fast.stats.speculation
        assert s.rounds > 0 and s.source == "draft"
        rejected += s.drafted - s.accepted
    assert rejected > 0  # another model: wrong at times


def test_the_model_drafting_for_itself_is_always_right(tiny: Any) -> None:
    ids = ids_of(tiny, PROMPTS[1])
    from chatcli.decoding.speculative.drafters import ModelDrafter
    from chatcli.generation.prompt_cache import PromptCache

    itself = ModelDrafter(PromptCache(native(tiny.folder).lm), "self")
    fast = answer(tiny, ids, settings(speculate="self:4"), 40, itself)
    s = fast.stats.speculation
    assert s.drafted > 20 and s.accepted == s.drafted  # (float32: no near tie here)
    assert fast.token_ids == answer(tiny, ids, settings(), 40).token_ids


def test_penalties_apply_to_every_verified_position(tiny: Any) -> None:
    for flags in ({"repetition_penalty": 1.4}, {"no_repeat_ngram_size": 3},
                  {"frequency_penalty": 0.8, "presence_penalty": 0.5}):
        for text in PROMPTS:
            ids = ids_of(tiny, text)
            plain = answer(tiny, ids, settings(**flags), 50).token_ids
            fast = answer(tiny, ids, settings(speculate="ngram:4", **flags), 50)
            assert_same_but_near_ties(tiny, ids, plain, fast.token_ids)


def test_a_constraint_drops_forbidden_drafts_and_keeps_the_constrained_answer(
        tiny: Any) -> None:
    from chatcli.constraints.spec import Constraint

    constraint = Constraint("regex", "(the |cat |sat |on |mat )+the end")
    rounds = 0
    for text in PROMPTS:
        ids = ids_of(tiny, text)
        plain = answer(tiny, ids, settings(), 40, constraint=constraint)
        fast = answer(tiny, ids, settings(speculate="ngram:4"), 40, constraint=constraint)
        assert_same_but_near_ties(tiny, ids, plain.token_ids, fast.token_ids)
        assert fast.constraint_satisfied == plain.constraint_satisfied
        rounds += fast.stats.speculation.rounds
    assert rounds > 0


def test_the_token_limit_and_eos_end_a_round(tiny: Any) -> None:
    ids = ids_of(tiny, PROMPTS[0])
    for n in (1, 2, 3, 7):
        fast = answer(tiny, ids, settings(speculate="ngram:8"), n)
        assert fast.token_ids == answer(tiny, ids, settings(), n).token_ids
        assert fast.stats.finish_reason in ("length", "stop")


# -- sampling: the target's distribution ---------------------------------------------------
TOP_K = 3


def exact_distribution(loaded: Any, ids: list[int], length: int) -> dict[tuple[int, ...], float]:
    """The probability of every `length`-token answer under top-k sampling."""
    import torch

    from chatcli.decoding.filters import make_filter

    filt = make_filter(1.0, TOP_K, 1.0, 0.0, 1.0)
    out: dict[tuple[int, ...], float] = {}

    def walk(prefix: tuple[int, ...], prob: float) -> None:
        if len(prefix) == length:
            out[prefix] = prob
            return
        logits, _ = loaded.lm.prefill(ids + list(prefix))
        p = torch.softmax(filt(logits.float()), -1)[0]
        for token in torch.nonzero(p).view(-1).tolist():
            walk((*prefix, token), prob * float(p[token]))

    walk((), 1.0)
    return out


def chi_square(counts: Counter, expected: dict[tuple[int, ...], float]) -> tuple[float, int]:
    """The statistic and its degrees of freedom, over the answers `counts` drew that
    `expected` holds (the test that none falls outside is the caller's); outcomes expected
    fewer than 5 times are pooled into one bin."""
    draws = sum(n for outcome, n in counts.items() if outcome in expected)
    stat, pooled_seen, pooled_expected, bins = 0.0, 0, 0.0, 0
    for outcome, p in expected.items():
        e = p * draws
        if e < 5:
            pooled_seen += counts[outcome]
            pooled_expected += e
            continue
        stat += (counts[outcome] - e) ** 2 / e
        bins += 1
    if pooled_expected > 0:
        stat += (pooled_seen - pooled_expected) ** 2 / pooled_expected
        bins += 1
    return stat, bins - 1


def critical(df: int, z: float = 3.09) -> float:
    """The chi-square quantile for p = 0.001 (Wilson-Hilferty)."""
    return df * (1 - 2 / (9 * df) + z * math.sqrt(2 / (9 * df))) ** 3


def sampled(loaded: Any, ids: list[int], length: int, draws: int, drafter: Any,
            temperature: float = 1.0) -> Counter:
    from chatcli.decoding.sampling import Sample
    from chatcli.decoding.speculative.loop import Speculation
    from chatcli.decoding.speculative.schedule import Schedule

    s = settings("sample", top_k=TOP_K, temperature=temperature)
    counts: Counter = Counter()
    stats = []
    for seed in range(draws):
        ctx = s.context(length, frozenset(), len(ids))
        ctx.generator.manual_seed(seed)
        if drafter is not None:
            ctx.speculation = Speculation(drafter(), Schedule(2, 2, plain_first=0))
            stats.append(ctx.speculation.stats)
        steps = list(Sample().decode(loaded.lm, ids, s.params, ctx))
        counts[tuple(step.token_id for step in steps)] += 1
    if drafter is not None:  # the test exercised both the accept and the resample branch
        assert 0 < sum(x.accepted for x in stats) < sum(x.drafted for x in stats)
    return counts


class SecondBest:
    """Drafts, without probabilities (as prompt lookup does), the token the target ranks
    second: right about a third of the time under top-3 sampling."""

    def __init__(self, loaded: Any) -> None:
        self.loaded = loaded

    def prepare(self, prompt_ids: list[int]) -> None:
        pass

    def propose(self, tokens: list[int], n: int, sample: Any = None) -> Any:
        from chatcli.decoding.speculative.drafters import Draft

        logits, _ = self.loaded.lm.prefill(tokens)
        return Draft([int(logits[0].topk(2).indices[1])])


@pytest.mark.parametrize("kind", ["draft model", "prompt lookup"])
def test_speculative_sampling_keeps_the_target_distribution(tiny: Any, draft: Any,
                                                            kind: str) -> None:
    ids = ids_of(tiny, PROMPTS[0])
    expected = exact_distribution(tiny, ids, 3)
    if kind == "draft model":
        def drafter() -> Any:
            return drafter_of(draft)
    else:  # a draft without probabilities, as prompt lookup's: the pick rule
        def drafter() -> Any:
            return SecondBest(tiny)
    counts = sampled(tiny, ids, 3, 3000, drafter)
    assert set(counts) <= set(expected), "an answer top-3 sampling cannot give"
    stat, df = chi_square(counts, expected)
    assert df >= 8
    assert stat < critical(df), f"chi-square {stat:.1f} with {df} degrees of freedom"


def test_the_chi_square_test_tells_a_slightly_wrong_distribution_apart(tiny: Any) -> None:
    """Plain sampling at temperature 1.25 instead of 1 (the same answers possible, other
    odds) fails the test above: it can fail."""
    ids = ids_of(tiny, PROMPTS[0])
    expected = exact_distribution(tiny, ids, 3)
    stat, df = chi_square(sampled(tiny, ids, 3, 3000, None, temperature=1.25), expected)
    assert stat > critical(df)
    stat, df = chi_square(sampled(tiny, ids, 3, 3000, None), expected)
    assert stat < critical(df)  # and plain sampling at 1 passes it


def test_a_seed_repeats_a_speculative_sampled_answer(tiny: Any, draft: Any) -> None:
    ids = ids_of(tiny, PROMPTS[2])
    s = settings("sample", seed=7, temperature=0.8, speculate="draft:3")
    first = answer(tiny, ids, s, 40, drafter_of(draft))
    again = answer(tiny, ids, s, 40, drafter_of(draft))
    assert first.token_ids == again.token_ids and first.stats.speculation.rounds > 0
    other = answer(tiny, ids, settings("sample", seed=8, temperature=0.8, speculate="draft:3"),
                   40, drafter_of(draft))
    assert other.token_ids != first.token_ids


# -- the command line ------------------------------------------------------------------------
def ask_json(*args: str) -> dict:
    result = run_cli(["ask", "--json", *args])
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


def test_ask_json_and_stats_give_the_figures(home: Path) -> None:
    prompt = PROMPTS[0]
    plain = ask_json("-n", "40", prompt)
    fast = ask_json("-n", "40", "--speculate", "ngram", prompt)
    assert fast["text"] == plain["text"] and fast["token_ids"] == plain["token_ids"]
    figures = fast["speculation"]
    assert set(figures) == {"source", "drafted", "accepted", "acceptance_rate", "rounds",
                            "mean_accepted_length", "plain_steps", "speed_up_estimate"}
    assert figures["source"] == "ngram" and figures["accepted"] > 0
    assert figures["acceptance_rate"] == round(figures["accepted"] / figures["drafted"], 3)
    assert figures["plain_steps"] + figures["rounds"] + figures["accepted"] == 39
    assert fast["decoding"]["speculate"] == "ngram" and "speculation" not in plain
    result = run_cli(["ask", "-n", "40", "--speculate", "ngram:4", "--stats", prompt])
    assert result.exit_code == 0
    line = result.stderr.splitlines()[-1]
    assert " speculate=ngram drafted=" in line and " acceptance_rate=" in line
    assert line.split(" speculate=")[0].endswith("implementation=native")
    assert line.endswith("x") and " mean_accepted_length=" in line


def test_a_draft_alias_from_models_toml(home: Path, draft_folder: Path) -> None:
    toml = home / "models.toml"
    toml.write_text(toml.read_text() + f'\n[models.tiny-draft]\nsource = "path"\npath = '
                                       f'"{draft_folder}"\ndtype = "float32"\n')
    plain = ask_json("-n", "30", PROMPTS[1])
    fast = ask_json("-n", "30", "--speculate", "tiny-draft:3", PROMPTS[1])
    assert fast["token_ids"] == plain["token_ids"]
    assert fast["speculation"]["source"] == "tiny-draft" and fast["speculation"]["rounds"] > 0


@pytest.mark.parametrize(("args", "error"), [
    (["--speculate", "ngram", "-S", "beam"],
     "error: --speculate verifies one answer's drafted tokens, and strategy 'beam' searches "
     "several at once; hint: use --strategy greedy or sample with it\n"),
    (["--speculate", "nobody"],
     "error: --speculate nobody: unknown model 'nobody' (known: "),
    (["-m", "local-server", "--speculate", "ngram"],
     "error: --speculate cannot be sent to 'local-server' (backend openai, server llama.cpp); "
     "hint: remove it, or use a local model (-m)\n"),
    (["--speculate", "ngram", "--thinking-budget", "5"],
     "error: --speculate and --thinking-budget do not go together yet; hint: drop one of "
     "them\n"),
    (["--speculate", "ngram:99"],
     "error: --speculate must be one of ngram, ngram:N, ALIAS or ALIAS:N (a model of "
     "models.toml), N the tokens drafted a round, from 1 to 64 (without it: adaptive) "
     "(got 'ngram:99')"),
])
def test_what_cannot_speculate_is_refused_in_one_line(home: Path, args: list[str],
                                                       error: str) -> None:
    result = run_cli(["ask", "-n", "8", *args, "hi"])
    assert result.exit_code == 2, result.stderr
    assert result.stderr.startswith(error), result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr


# -- what a person sees ------------------------------------------------------------------------
def underlined(term: Any) -> str:
    """The underlined characters of the screen, in reading order."""
    screen = term.screen
    out = []
    for y in range(screen.lines):
        row = screen.buffer[y]
        out += [row[x].data for x in range(screen.columns) if row[x].underscore]
    return "".join(out)


@pytest.mark.parametrize("columns", [40, 100])
def test_a_terminal_underlines_the_drafted_tokens_it_accepted(home: Path,
                                                              columns: int) -> None:
    from screen import Terminal

    args = ["-n", "40", "--speculate", "ngram:4", PROMPTS[0]]
    out = ask_json("--show-candidates", "1", *args)
    drafted = "".join(t["text"] for t in out["tokens"] if t.get("drafted"))
    assert drafted and len(drafted) < len(out["text"])
    term = Terminal(home, ["ask", "--no-server", *args], columns=columns)
    assert term.finish() == 0
    s = out["speculation"]
    note = (f"(speculate ngram: {s['accepted']} of {s['drafted']} drafted tokens accepted, "
            "underlined; about ")
    assert note in " ".join(term.lines())  # (wrapped at spaces on a narrow terminal)
    def visible(text: str) -> str:  # (control bytes are not shown, spacing is wrapped)
        return "".join(c for c in text if c.isprintable() and not c.isspace())

    assert visible(out["text"]) in visible("".join(term.lines()))
    assert visible(underlined(term)) == visible(drafted)
    # wrapped at words: the answer's words, whole, on lines no wider than the terminal
    lines = term.lines()
    shown = lines[:next(i for i, line in enumerate(lines) if line.startswith("(speculate"))]
    assert [w for line in shown for w in line.split()] == "".join(
        c for c in out["text"] if c.isprintable() or c.isspace()).split()
    assert max(len(line) for line in shown) <= columns


def test_chat_speculates_when_set_and_stats_say_how_it_went(home: Path) -> None:
    turns = f"/set speculate ngram:4\n{PROMPTS[0]}\n/stats\n/set speculate none\n"
    result = run_cli(["chat", "-n", "30", "--no-server"], input=turns)
    assert result.exit_code == 0, result.stderr
    stats = [line for line in result.stdout.splitlines() if " speculate=ngram " in line]
    assert len(stats) == 1 and " drafted=" in stats[0] and " accepted=" in stats[0]
    plain = run_cli(["chat", "-n", "30", "--no-server"], input=f"{PROMPTS[0]}\n")
    said = next(line for line in plain.stdout.splitlines() if line.strip())
    assert said in result.stdout
