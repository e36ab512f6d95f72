"""A plugin strategy's parameters work everywhere a built-in one's do.

The plugin (tests/xtc_plugin.py) is one module: an XTC sampler whose two parameters
are declared with `param(...)` and nothing else. It is registered in-process as a
plugin; these tests drive it through every way a parameter can be written: `-o`,
`[models.X.defaults]` (and `models show`), chat's `/set`, `compare -S xtc:k=v`,
`chatcli strategies` (text and --json) and the remote request mapping.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from test_sampling import FixedLM
from xtc_plugin import XtcParams, XtcSample, exclude_top_choices, registry_with_xtc

from chatcli.conversation import Message
from chatcli.decoding import registry as registry_module
from chatcli.decoding.base import DecodeContext
from chatcli.decoding.sampling import Sample, SampleParams
from chatcli.decoding.settings import resolve_settings
from chatcli.errors import UsageError
from chatcli.registry import ModelSpec
from chatcli.remote import params as remote_params
from conftest import run_cli


@pytest.fixture
def xtc(cli: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The CLI with the XTC plugin loaded as `strategy_registry()` would load it."""
    monkeypatch.setattr(registry_module, "_REGISTRY", registry_with_xtc())
    return cli


def ask_json(*args: str) -> dict[str, Any]:
    result = run_cli(["ask", "--json", "-n", "12", *args, "Hello there"])
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


def add_defaults(home: Path, lines: str) -> tuple[Path, int]:
    path = home / "models.toml"
    line = path.read_text().count("\n") + 2
    path.write_text(path.read_text() + f"[models.tiny.defaults]\n{lines}\n")
    return path, line


# -- the sampler itself --------------------------------------------------------------------
def _draws(params: Any, n: int, seed: int, strategy: Any = None) -> list[int]:
    gen = torch.Generator().manual_seed(seed)
    ctx = DecodeContext(max_new_tokens=n, eos_ids=frozenset(), generator=gen)
    return [s.token_id for s in (strategy or XtcSample()).decode(FixedLM(), [0], params, ctx)]


def test_xtc_off_is_exactly_sample() -> None:
    for seed in (0, 1, 2):
        assert _draws(XtcParams(temperature=0.8), 50, seed) == _draws(
            SampleParams(temperature=0.8), 50, seed, Sample())


def test_xtc_on_never_draws_the_excluded_top_choices() -> None:
    # FixedLM's probabilities: 0.39, 0.24, 0.14, 0.09, ... ; >= 0.1: tokens 0, 1 and 2.
    drawn = _draws(XtcParams(xtc_probability=1.0, xtc_threshold=0.1), 300, seed=0)
    assert set(drawn) <= {2, 3, 4, 5, 6, 7} and drawn.count(2) > drawn.count(3)
    sometimes = _draws(XtcParams(xtc_probability=0.5, xtc_threshold=0.1), 300, seed=0)
    assert 0 in sometimes and 2 in sometimes
    probs = torch.tensor([[0.5, 0.3, 0.2]])
    # >= 0.25: tokens 0 and 1; the least likely of them (1) stays, with the rest
    assert exclude_top_choices(probs, 0.25)[0].tolist() == pytest.approx([0.0, 0.6, 0.4])
    assert exclude_top_choices(probs, 0.4) is probs  # one top choice: nothing excluded


# -- -o, inherited flags and the range checks ------------------------------------------------
def test_o_sets_a_plugin_parameter_and_inherited_flags_apply(xtc: Any) -> None:
    sample = ask_json("-S", "sample", "-t", "0.7", "--seed", "3")
    off = ask_json("-S", "xtc", "-t", "0.7", "--seed", "3")
    assert off["text"] == sample["text"]  # XTC off is sample, token for token
    assert off["decoding"] == {**sample["decoding"], "strategy": "xtc", "xtc_probability": 0.0,
                               "xtc_threshold": 0.1}
    on = ask_json("-S", "xtc", "-t", "0.7", "--seed", "3", "-o", "xtc_probability=1",
                  "-o", "xtc_threshold=0.05")
    assert (on["decoding"]["xtc_probability"], on["decoding"]["xtc_threshold"]) == (1.0, 0.05)
    assert on["token_ids"] != sample["token_ids"]


@pytest.mark.parametrize(("args", "line"), [
    (["-o", "xtc_probability=2"], "error: -o xtc_probability must be in [0, 1] (got 2.0); "
     "hint: 'chatcli strategies' lists every parameter\n"),
    (["-o", "xtc_threshold=high"], "error: -o xtc_threshold=high: xtc_threshold must be a "
     "number; hint: write -o xtc_threshold=X, e.g. -o xtc_threshold=0.1\n"),
    (["-t", "0"], "error: --temperature must be a number > 0 (got 0.0); "
     "hint: 'chatcli strategies' lists every parameter\n"),
])
def test_o_values_are_typed_and_checked_as_declared(xtc: Any, args: list[str],
                                                    line: str) -> None:
    result = run_cli(["ask", "-S", "xtc", *args, "hi"])
    assert (result.exit_code, result.stdout, result.stderr) == (2, "", line)


def test_a_plugin_parameter_needs_its_strategy(xtc: Any) -> None:
    result = run_cli(["ask", "-o", "xtc_probability=0.5", "hi"])
    assert result.stderr == ("error: -o xtc_probability=0.5: strategy 'greedy' has no parameter "
                             "'xtc_probability'; hint: its parameters: none\n")


# -- models.toml ------------------------------------------------------------------------------
def test_models_toml_defaults(xtc: Any, home: Path) -> None:
    add_defaults(home, 'strategy = "xtc"\nxtc_probability = 1\nxtc_threshold = 0.05\nseed = 3')
    data = ask_json()
    assert data["decoding"]["strategy"] == "xtc"
    assert (data["decoding"]["xtc_probability"], data["decoding"]["xtc_threshold"]) == (1.0, 0.05)
    assert data["token_ids"] == ask_json("-S", "xtc", "-o", "xtc_probability=1", "-o",
                                         "xtc_threshold=0.05", "--seed", "3")["token_ids"]
    shown = run_cli(["models", "show", "tiny"])
    assert shown.exit_code == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert "  xtc_probability   1.0 (models.toml)" in lines
    assert "  xtc_threshold     0.05 (models.toml)" in lines
    assert "  temperature       1.0 (default)" in lines


@pytest.mark.parametrize(("lines", "message"), [
    ("xtc_threshold = 0.9", "defaults.xtc_threshold must be in [0, 0.5] (got 0.9); "
     "hint: 'chatcli strategies' lists every parameter"),
    ('xtc_probability = "often"', "defaults.xtc_probability must be a number, got 'often'; "
     "hint: e.g. xtc_probability = 0.0"),
    ("xtc_probabilty = 0.5", "defaults has unknown parameter 'xtc_probabilty'; "
     "hint: did you mean 'xtc_probability'?"),
])
def test_bad_models_toml_defaults_name_file_and_line(xtc: Any, home: Path, lines: str,
                                                     message: str) -> None:
    path, line = add_defaults(home, lines)
    result = run_cli(["ask", "hi"])
    assert (result.exit_code, result.stdout) == (1, "")
    assert result.stderr == f"error: {path}:{line}: [models.tiny] {message}\n"


# -- chat's /set ------------------------------------------------------------------------------
def test_set_in_chat(xtc: Any) -> None:
    result = run_cli(["chat", "-S", "xtc", "-n", "3"], input=(
        "/set xtc_probability 0.5\n/set xtc_probability 2\n/set xtc_threshold x\n"
        "/strategy greedy\n/set xtc_threshold 0.2\n"))
    assert result.exit_code == 0, result.stderr
    assert result.stderr.splitlines() == [
        "chatcli: xtc_probability = 0.5",
        "error: /set xtc_probability 2: xtc_probability must be in [0, 1]; "
        "hint: 'chatcli strategies' lists every parameter",
        "error: /set xtc_threshold x: xtc_threshold must be a number; "
        "hint: write /set xtc_threshold X, e.g. /set xtc_threshold 0.1",
        "chatcli: strategy = greedy (dropped xtc_probability)",
        "error: /set xtc_threshold: strategy 'greedy' has no parameter 'xtc_threshold'; "
        "hint: use /strategy xtc first",
    ]


# -- compare -S -------------------------------------------------------------------------------
def test_compare_spec(xtc: Any) -> None:
    result = run_cli(["compare", "--json", "-n", "6", "--seed", "3", "-S", "sample",
                      "-S", "xtc", "-S", "xtc:xtc_probability=1,xtc_threshold=0.05", "Hi"])
    assert result.exit_code == 0, result.stderr
    sample, off, on = json.loads(result.stdout)["results"]
    assert [r["label"] for r in (sample, off, on)] == [
        "sample", "xtc", "xtc:xtc_probability=1,xtc_threshold=0.05"]
    assert off["token_ids"] == sample["token_ids"] and off["diverges_at"] is None
    assert (on["decoding"]["xtc_probability"], on["decoding"]["xtc_threshold"]) == (1.0, 0.05)
    bad = run_cli(["compare", "-S", "xtc:xtc_threshold=0.7", "Hi"])
    assert (bad.exit_code, bad.stderr) == (
        2, "error: -S xtc:xtc_threshold=0.7: xtc_threshold must be in [0, 0.5]; "
           "hint: 'chatcli strategies' lists every parameter\n")


# -- chatcli strategies -------------------------------------------------------------------------
def test_strategies_lists_the_plugin_parameters(xtc: Any) -> None:
    text = run_cli(["strategies"]).stdout
    assert ("xtc: Sample, excluding the most likely tokens at a given rate (XTC). "
            "[plugin xtc_plugin:XtcSample (tests)]\n") in text
    assert ("  -o xtc_probability  float, default 0.0: chance per step of excluding the top "
            "choices (0: off)\n") in text
    listed = json.loads(run_cli(["strategies", "--json"]).stdout)["strategies"][-1]
    assert [(p["name"], p["flag"]) for p in listed["params"]] == [
        ("temperature", "--temperature"), ("top_k", "--top-k"), ("top_p", "--top-p"),
        ("min_p", "--min-p"), ("typical_p", "--typical-p"),
        ("xtc_probability", "-o xtc_probability"), ("xtc_threshold", "-o xtc_threshold")]


# -- a server -----------------------------------------------------------------------------------
def _spec(server: str) -> ModelSpec:
    return ModelSpec(alias="srv", source="remote", backend="openai", base_url="http://h/v1",
                     model="m", server=server)


def test_remote_mapping_reads_the_declaration() -> None:
    reg = registry_with_xtc()
    messages = [Message("user", "hi")]
    off = resolve_settings(reg, strategy="xtc", flags={"seed": 1})
    sample = resolve_settings(reg, strategy="sample", flags={"seed": 1})
    for server in ("generic", "llama.cpp", "transformers"):  # off: sent exactly as sample
        assert (remote_params.request_body(_spec(server), off, messages, 8)
                == remote_params.request_body(_spec(server), sample, messages, 8))
    on = resolve_settings(reg, strategy="xtc", options={"xtc_probability": "0.5"})
    with pytest.raises(UsageError) as err:
        remote_params.check(_spec("llama.cpp"), on)
    assert (err.value.message, err.value.hint) == (
        "-o xtc_probability cannot be sent to 'srv' (backend openai, server llama.cpp)",
        "remove it, or use a local model (-m)")
    # A profile row that takes the declared field sends it, under the server's name.
    taking = remote_params.Profile("llama.cpp", {"xtc_probability": "xtc_probability",
                                                 "xtc_threshold": "xtc_threshold"})
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(remote_params.PROFILES, "llama.cpp", taking)
        body = remote_params.request_body(_spec("llama.cpp"), on, messages, 8)
    assert (body["xtc_probability"], "xtc_threshold" in body) == (0.5, False)
