"""bench/harness.py's pure parts: section replacement, medians and ratios, the order of
interleaved rounds, token comparison and the greedy loop's bookkeeping (over a fake
language model: no torch, no weights)."""

from __future__ import annotations

import argparse
import importlib.util
import math
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

HARNESS = Path(__file__).resolve().parent.parent / "bench" / "harness.py"


def _load() -> ModuleType:
    # bench/ is a folder of scripts, not a package: load the module from its file.
    spec = importlib.util.spec_from_file_location("bench_harness", HARNESS)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


harness = _load()

DOC = """# Benchmarks

Intro.

<!-- decode -->
old decode table
<!-- /decode -->

Prose between.

<!-- quality -->
old quality
<!-- /quality -->
"""


# ------------------------------------------------------------------- write_section


def test_write_section_replaces_one_section_in_place(tmp_path: Path) -> None:
    path = tmp_path / "benchmarks.md"
    path.write_text(DOC)
    harness.write_section(path, "decode", "| new |\n| table |")
    assert path.read_text() == DOC.replace("old decode table", "| new |\n| table |")


def test_write_section_twice_is_the_same_as_once(tmp_path: Path) -> None:
    path = tmp_path / "benchmarks.md"
    path.write_text(DOC)
    harness.write_section(path, "quality", "first")
    harness.write_section(path, "quality", "second")
    assert path.read_text() == DOC.replace("old quality", "second")


def test_write_section_appends_a_missing_section(tmp_path: Path) -> None:
    path = tmp_path / "benchmarks.md"
    path.write_text(DOC + "\n\n")
    harness.write_section(path, "chat", "body")
    assert path.read_text() == DOC + "\n<!-- chat -->\nbody\n<!-- /chat -->\n"


def test_write_section_creates_a_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "new.md"
    harness.write_section(path, "x", "body")
    assert path.read_text() == "\n\n<!-- x -->\nbody\n<!-- /x -->\n"


def test_write_section_leaves_a_section_whose_name_extends_another(tmp_path: Path) -> None:
    path = tmp_path / "benchmarks.md"
    text = "<!-- chat -->\na\n<!-- /chat -->\n<!-- chat-timing -->\nb\n<!-- /chat-timing -->\n"
    path.write_text(text)
    harness.write_section(path, "chat-timing", "B")
    assert path.read_text() == text.replace("\nb\n", "\nB\n")


def test_write_options_and_report(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    harness.add_write_options(parser, "decode")
    path = tmp_path / "benchmarks.md"
    path.write_text(DOC)
    harness.write_report(parser.parse_args([]), "not written")
    assert path.read_text() == DOC
    harness.write_report(parser.parse_args(["--write", str(path)]), "D")
    assert path.read_text() == DOC.replace("old decode table", "D")
    harness.write_report(parser.parse_args(["--write", str(path), "--section", "quality"]), "Q")
    assert path.read_text() == DOC.replace("old decode table", "D").replace("old quality", "Q")


# ------------------------------------------------------------------ medians, ratios


def test_median_and_medians() -> None:
    assert harness.median([3.0, 1.0, 2.0]) == 2.0
    assert harness.median([4.0, 1.0, 2.0, 3.0]) == 2.5
    assert harness.median(x for x in (5.0,)) == 5.0
    assert math.isnan(harness.median([]))
    result = harness.medians({"a": [1.0, 9.0, 2.0], "b": []})
    assert result["a"] == 2.0 and math.isnan(result["b"]) and list(result) == ["a", "b"]


def test_ratio_and_its_format() -> None:
    assert harness.ratio(3.0, 2.0) == 1.5
    for a, b in ((1.0, 0.0), (math.nan, 1.0), (1.0, math.nan)):
        assert math.isnan(harness.ratio(a, b))
        assert harness.format_ratio(a, b) == "-"
    assert harness.format_ratio(30.1, 25.4) == "1.19x"
    assert harness.format_ratio(1.0, 3.0, digits=3) == "0.333x"


def test_first_difference() -> None:
    assert harness.first_difference([1, 2, 3], [1, 2, 3]) is None
    assert harness.first_difference([1, 2, 3], [1, 5, 3]) == 1
    assert harness.first_difference([7], [8]) == 0
    assert harness.first_difference([1, 2], [1, 2, 3]) == 2
    assert harness.first_difference([], []) is None


# -------------------------------------------------------------- interleaved rounds


def test_schedule_runs_every_variant_once_per_round_in_order() -> None:
    assert harness.schedule(["A", "B", "C"], 2) == [
        (0, "A"), (0, "B"), (0, "C"), (1, "A"), (1, "B"), (1, "C")]
    assert harness.schedule(["A", "B"], 3, alternate=True) == [
        (0, "A"), (0, "B"), (1, "B"), (1, "A"), (2, "A"), (2, "B")]
    assert harness.schedule(["A"], 0) == []


def _recording(log: list[str], name: str) -> Any:
    def run() -> str:
        log.append(name)
        return f"{name}{sum(x == name for x in log)}"
    return run


def test_interleave_runs_in_schedule_order_and_keeps_samples_in_round_order() -> None:
    log: list[str] = []
    rounds: list[tuple[int, dict[str, int]]] = []
    samples = harness.interleave(
        {name: _recording(log, name) for name in "ABC"}, 3, alternate=True,
        after_round=lambda rnd, s: rounds.append((rnd, {k: len(v) for k, v in s.items()})))
    assert log == list("ABCCBAABC")
    assert samples == {"A": ["A1", "A2", "A3"], "B": ["B1", "B2", "B3"],
                       "C": ["C1", "C2", "C3"]}
    assert rounds == [(0, {"A": 1, "B": 1, "C": 1}), (1, {"A": 2, "B": 2, "C": 2}),
                      (2, {"A": 3, "B": 3, "C": 3})]


def test_interleave_skips_what_it_is_told_to() -> None:
    log: list[str] = []
    samples = harness.interleave({name: _recording(log, name) for name in ("short", "long")},
                                 3, skip=lambda rnd, name: name == "long" and rnd >= 1)
    assert log == ["short", "long", "short", "short"]
    assert samples == {"short": ["short1", "short2", "short3"], "long": ["long1"]}


# ----------------------------------------------------------------------- machine


def test_conditions_describe_the_cpu_and_the_load() -> None:
    cond = harness.Conditions("Some CPU", (1.0, 0.5, 0.25))
    assert cond.describe() == "Some CPU; load average (1, 5, 15 min) 1.00, 0.50, 0.25 at the start"
    cond.load_end = (2.0, 1.5, 0.125)
    assert cond.describe() == ("Some CPU; load average (1, 5, 15 min) 1.00, 0.50, 0.25 at the "
                               "start, 2.00, 1.50, 0.12 at the end")
    observed = harness.Conditions.observe()
    assert observed.cpu and len(observed.load_start) == 3 and observed.load_end is None
    observed.finish()
    assert observed.load_end is not None and len(observed.load_end) == 3


# ------------------------------------------------------------------------- greedy


class _Row:
    def __init__(self, best: int) -> None:
        self.best = best

    def argmax(self) -> int:
        return self.best


class _CountingLM:
    """Its logits say: next token = (last fed token + 1) % 10; the prompt's last + 1 first."""

    def __init__(self) -> None:
        self.fed: list[Any] = []

    def prefill(self, ids: list[int]) -> tuple[list[_Row], int]:
        self.fed.append(list(ids))
        return [_Row((ids[-1] + 1) % 10)], len(ids)

    def step(self, tokens: Any, cache: int) -> tuple[list[_Row], int]:
        self.fed.append(tokens)
        return [_Row((tokens[0] + 1) % 10)], cache + 1


def test_greedy_feeds_each_chosen_token_and_times_every_token() -> None:
    lm = _CountingLM()
    out = harness.greedy(lm, [3, 7], 5, feed=lambda token: [token])
    assert out.tokens == [8, 9, 0, 1, 2]
    assert lm.fed == [[3, 7], [8], [9], [0], [1]]
    assert len(out.token_s) == 5 and len(out.step_s) == 4
    assert 0 <= out.prefill_s <= out.first_token_s
    assert out.token_s == sorted(out.token_s) and out.total_s == out.token_s[-1]
    assert out.step_s == [b - a for a, b in zip(out.token_s, out.token_s[1:], strict=False)]
    assert out.decode_tokens_per_s == 4 / (out.total_s - out.first_token_s)


def test_greedy_of_one_token_only_prefills() -> None:
    lm = _CountingLM()
    out = harness.greedy(lm, [1], 1, feed=lambda token: [token])
    assert out.tokens == [2] and lm.fed == [[1]] and out.step_s == []
    assert math.isnan(out.decode_tokens_per_s)


def test_decoded_rates() -> None:
    out = harness.Decoded([1, 2, 3, 4, 5], 0.5, [1.0, 1.5, 2.0, 2.5, 3.0], 3.0)
    assert out.first_token_s == 1.0
    assert out.step_s == [0.5, 0.5, 0.5, 0.5]
    assert out.decode_tokens_per_s == 2.0
    assert out.tokens_per_s == pytest.approx(5 / 3)
    beam = harness.Decoded([1, 2], math.nan, [], 4.0)  # generate(stream=False)
    assert math.isnan(beam.first_token_s) and math.isnan(beam.decode_tokens_per_s)
    assert beam.tokens_per_s == 0.5


def test_agreement_counts_common_prefixes_and_whole_answers() -> None:
    answers = [[1, 2, 3], [1, 2, 9], [7, 2, 3], [4, 5]]
    reference = [[1, 2, 3], [1, 2, 3], [1, 2, 3], [4, 5, 6]]
    assert harness.agreement(answers, reference) == ([3, 2, 0, 2], 2)
    with pytest.raises(ValueError):  # one answer per prompt
        harness.agreement(answers[:2], reference)


def test_memory_added_is_against_the_resident_size_before_loading() -> None:
    probe = {"before_kib": {"VmRSS": 1000, "VmHWM": 5000},
             "memory_kib": {"VmRSS": 3000, "VmHWM": 6000}}
    assert harness.memory_added(probe) == (2000 * 1024, 5000 * 1024)


def test_decode_rounds_warms_each_engine_and_takes_medians() -> None:
    loaded: list[str] = []
    speeds = {"a": iter([10.0, 30.0, 20.0]), "b": iter([5.0, 5.0, 7.0])}

    class Engine:
        feed = None

        def __init__(self, name: str) -> None:
            self.lm, self.name = object(), name

    def fake_greedy(lm: Any, ids: list[int], n: int, feed: Any = None) -> Any:
        name = next(e.name for e in engines if e.lm is lm)
        return argparse.Namespace(decode_tokens_per_s=next(speeds[name]) if n == 64 else 0.0)

    engines: list[Any] = []

    def load(name: str) -> Any:
        loaded.append(name)
        engines.append(Engine(name))
        return engines[-1]

    logged: list[str] = []
    original, harness.greedy = harness.greedy, fake_greedy
    try:
        decode = harness.decode_rounds(load, ["a", "b"], [1, 2], 64, 3, logged.append)
    finally:
        harness.greedy = original
    assert loaded == ["a", "b"]
    assert decode == {"a": 20.0, "b": 5.0}
    assert logged[-2:] == ["a: decode 20.0 tok/s", "b: decode 5.0 tok/s"]
