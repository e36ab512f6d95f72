"""Decoding flags on `chatcli ask`: strategies, validation, precedence, stop strings."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from chatcli.decoding.registry import strategy_registry
from chatcli.decoding.settings import resolve_settings
from chatcli.errors import UsageError
from conftest import Tiny, printed, reference_generate, run_cli


def reference(tiny: Tiny, text: str, **generate_kwargs: Any) -> Any:
    tok, out, _ = reference_generate(tiny, [{"role": "user", "content": text}],
                                     **generate_kwargs)
    return tok, out


def _decode(tok: Any, row: list[int]) -> str:
    if tok.eos_token_id in row:
        row = row[: row.index(tok.eos_token_id)]
    return tok.decode(row, skip_special_tokens=True)


@pytest.mark.parametrize("beams", [2, 4])
def test_beam_prints_generates_best_sequence(cli, tiny_model: Tiny, beams: int) -> None:
    tok, out = reference(tiny_model, "Hello there", num_beams=beams, max_new_tokens=12)
    result = run_cli(["ask", "-S", "beam", "--num-beams", str(beams), "-n", "12", "Hello there"])
    assert result.exit_code == 0, result.stderr
    assert result.stdout == printed(_decode(tok, out[0].tolist()))


def test_beam_json_has_all_hypotheses(cli, tiny_model: Tiny) -> None:
    tok, out = reference(tiny_model, "Hi", num_beams=3, max_new_tokens=8,
                         num_return_sequences=3)
    result = run_cli(["ask", "--json", "-S", "beam", "--num-beams", "3", "-o",
                      "num_return_sequences=3", "-n", "8", "Hi"])
    data = json.loads(result.stdout)
    texts = [h["text"] for h in data["hypotheses"]]
    assert texts == [_decode(tok, row.tolist()) for row in out]
    assert data["text"] == texts[0]
    scores = [h["score"] for h in data["hypotheses"]]
    assert scores == sorted(scores, reverse=True)
    assert data["decoding"]["num_beams"] == 3


@pytest.mark.parametrize(
    ("flags", "kwargs"),
    [
        (["--repetition-penalty", "1.5"], {"repetition_penalty": 1.5}),
        (["--no-repeat-ngram-size", "2"], {"no_repeat_ngram_size": 2}),
    ],
)
def test_penalties_match_generate(cli, tiny_model: Tiny, flags: list[str],
                                  kwargs: dict[str, Any]) -> None:
    tok, out = reference(tiny_model, "The capital", max_new_tokens=20, **kwargs)
    result = run_cli(["ask", "-n", "20", *flags, "The capital"])
    assert result.stdout == printed(_decode(tok, out[0].tolist()))


def test_seed_reproduces_sampling(cli) -> None:
    args = ["ask", "-S", "sample", "-t", "0.7", "--top-p", "0.9", "--seed", "3", "-n", "30",
            "Hello"]
    first, second = run_cli(args), run_cli(args)
    assert first.exit_code == 0 and first.stdout == second.stdout
    other = run_cli([*args[:-3], "4", "-n", "30", "Hello"])
    assert other.stdout != first.stdout


@pytest.mark.parametrize(
    ("args", "message", "hint"),
    [
        (["--top-p", "0.9"], "--top-p has no effect with --strategy greedy",
         "use --strategy sample"),
        (["-S", "beam", "-t", "0.5"], "--temperature has no effect with --strategy beam",
         "use --strategy sample"),
        (["-S", "sample", "--num-beams", "3"], "--num-beams has no effect with --strategy sample",
         "use --strategy beam"),
        (["-S", "sample", "--top-p", "1.5"], "--top-p must be in (0, 1] (got 1.5)",
         "'chatcli strategies' lists every parameter"),
        (["-S", "sample", "-t", "0"], "--temperature must be a number > 0 (got 0.0)",
         "'chatcli strategies' lists every parameter"),
        (["-S", "beam", "--num-beams", "1"], "--num-beams must be an integer >= 2 (got 1)",
         "'chatcli strategies' lists every parameter"),
        (["-S", "beam", "-o", "num_return_sequences=9"],
         "-o num_return_sequences must be in [1, num_beams=4] (got 9)",
         "'chatcli strategies' lists every parameter"),
        (["--frequency-penalty", "3"], "--frequency-penalty must be in [-2, 2] (got 3.0)",
         "'chatcli strategies' lists every parameter"),
        (["-S", "beam", "-o", "bogus=1"], "-o bogus=1: strategy 'beam' has no parameter 'bogus'",
         "its parameters: num_beams, length_penalty, early_stopping, num_return_sequences"),
        (["-S", "beam", "-o", "num_beams"], "-o num_beams: expected KEY=VALUE",
         "e.g. -o num_return_sequences=2"),
        (["-S", "beam", "-o", "num_beams=many"], "-o num_beams=many: num_beams must be an integer",
         "write -o num_beams=N, e.g. -o num_beams=4"),
        (["-S", "beams"], "unknown strategy 'beams' (known: greedy, sample, beam)",
         "did you mean 'beam'? run 'chatcli strategies' to see them all"),
    ],
)
def test_decoding_errors(cli, args: list[str], message: str, hint: str) -> None:
    result = run_cli(["ask", *args, "hi"])
    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr == f"error: {message}; hint: {hint}\n"


def test_stop_string_is_not_printed(cli, tiny_model: Tiny) -> None:
    full = json.loads(run_cli(["ask", "--json", "-n", "30", "Hello there"]).stdout)["text"]
    stop = full[10:13]
    assert stop and full.find(stop) == 10
    result = run_cli(["ask", "--json", "-n", "30", "--stop", "zzz-never", "--stop", stop,
                      "Hello there"])
    data = json.loads(result.stdout)
    assert data["text"] == full[:10]
    assert data["finish_reason"] == "stop_string"
    plain = run_cli(["ask", "-n", "30", "--stop", stop, "Hello there"])
    assert plain.stdout == full[:10] + "\n"


REG = strategy_registry()


def test_precedence_defaults_genconfig_alias_flags() -> None:
    gc = {"do_sample": True, "temperature": 0.6, "top_p": 0.9, "max_length": 20,
          "repetition_penalty": 1.1}
    s = resolve_settings(REG, generation_config=gc)
    assert s.strategy == "sample"
    assert (s.params.temperature, s.params.top_p, s.params.top_k) == (0.6, 0.9, 0)
    assert s.origins["temperature"] == "generation_config.json"
    assert s.origins["top_k"] == "default"
    assert s.common.repetition_penalty == 1.1
    s = resolve_settings(REG, generation_config=gc, alias_defaults={"temperature": 0.8})
    assert s.params.temperature == 0.8 and s.origins["temperature"] == "models.toml"
    s = resolve_settings(REG, generation_config=gc, alias_defaults={"temperature": 0.8},
                         flags={"temperature": 0.5})
    assert s.params.temperature == 0.5 and s.origins["temperature"] == "flag"
    # Choosing another strategy drops lower layers' sampling values silently.
    s = resolve_settings(REG, strategy="greedy", generation_config=gc,
                         alias_defaults={"temperature": 0.8})
    assert s.strategy == "greedy" and s.common.repetition_penalty == 1.1
    # An alias's strategy beats generation_config's.
    s = resolve_settings(REG, generation_config=gc, alias_defaults={"strategy": "beam"})
    assert s.strategy == "beam"
    assert resolve_settings(REG, generation_config={"num_beams": 3}).strategy == "beam"
    assert resolve_settings(REG).strategy == "greedy"


def test_alias_default_out_of_range_is_reported() -> None:
    with pytest.raises(UsageError) as err:
        resolve_settings(REG, alias_defaults={"strategy": "sample", "top_p": 2.0})
    assert err.value.message == "--top-p must be in (0, 1] (got 2.0)"


def test_models_show_prints_effective_defaults(cli, home: Path) -> None:
    with (home / "models.toml").open("a") as f:
        f.write('[models.tiny.defaults]\nstrategy = "sample"\ntemperature = 0.7\n')
    result = run_cli(["models", "show", "tiny"])
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "strategy            sample (models.toml)" in lines
    assert "  temperature       0.7 (models.toml)" in lines
    assert "  top_p             1.0 (default)" in lines
    assert "  max_new_tokens    512 (default)" in lines


def test_strategies_command_lists_parameters(cli) -> None:
    result = run_cli(["strategies"])
    assert result.exit_code == 0
    out = result.stdout
    assert out.startswith("greedy: Always pick the most likely next token (deterministic).\n")
    assert "  --top-p        float, default 1.0: keep the smallest set with this much " in out
    assert "  -o num_return_sequences  int, default 1: hypotheses returned" in out
    assert "  --stop                  str (repeatable), default none: stop when this text" in out
