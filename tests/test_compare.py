"""`chatcli compare`: the same prompt through several strategies."""

from __future__ import annotations

import io
import json
import re

import pytest
import torch
from test_candidates import teacher_forced_logits

from chatcli.cli.compare import divergence, parse_spec
from chatcli.ui.compare import show_comparison
from chatcli.ui.console import UI
from conftest import Tiny, run_cli

SPECS = ["-S", "greedy", "-S", "beam:num_beams=3", "-S", "sample:temperature=0.8,top_p=0.9"]


def test_compare_json_matches_ask_and_direct_logprobs(cli, tiny_model: Tiny) -> None:
    result = run_cli(["compare", "--json", "-n", "10", "--seed", "1", *SPECS, "Hello"])
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    greedy, beam, sample = data["results"]
    assert [r["label"] for r in data["results"]] == [
        "greedy", "beam:num_beams=3", "sample:temperature=0.8,top_p=0.9"]
    for r, args in ((greedy, []), (beam, ["-S", "beam", "--num-beams", "3"]),
                    (sample, ["-S", "sample", "-t", "0.8", "--top-p", "0.9"])):
        asked = json.loads(run_cli(["ask", "--json", "-n", "10", "--seed", "1", *args,
                                    "Hello"]).stdout)
        assert r["text"] == asked["text"]
        assert r["completion_tokens"] == asked["completion_tokens"]
    logits = teacher_forced_logits(tiny_model, "Hello", greedy["token_ids"])
    logp = torch.log_softmax(logits, -1)
    direct = float(sum(logp[i, t] for i, t in enumerate(greedy["token_ids"])))
    assert greedy["logprob"] == pytest.approx(direct, abs=1e-3)
    entropy = float((-(logp.exp() * logp).sum(-1)).mean())
    assert greedy["mean_entropy"] == pytest.approx(entropy, abs=1e-4)
    assert beam["mean_entropy"] is None
    assert greedy["diverges_at"] is None
    assert sample["diverges_at"] == divergence(greedy["token_ids"], sample["token_ids"])


def test_divergence_and_specs() -> None:
    assert divergence([1, 2, 3], [1, 2, 3]) is None
    assert divergence([1, 2, 3], [1, 5, 3]) == 2
    assert divergence([1, 2], [1, 2, 3]) == 3
    assert parse_spec("sample:temperature=0.8, top_p=0.9") == (
        "sample", {"temperature": "0.8", "top_p": "0.9"})
    assert parse_spec("greedy") == ("greedy", {})


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-S", "sample:temperature"], "error: -S sample:temperature: expected NAME:key=value,..."),
        (["-S", "beam:bogus=1"],
         "error: -S beam:bogus=1: strategy 'beam' has no parameter 'bogus'"),
        (["-S", "sample:top_p=3"], "error: -S sample:top_p=3: top_p must be in (0, 1]; "),
    ],
)
def test_compare_errors(cli, args: list[str], message: str) -> None:
    result = run_cli(["compare", *args, "hi"])
    assert result.exit_code == 2
    assert result.stderr.startswith(message)


def test_plain_sections(cli) -> None:
    result = run_cli(["compare", "-n", "5", "--seed", "1", *SPECS, "Hello"])
    lines = result.stdout.splitlines()
    assert lines[0] == "== greedy =="
    assert "== beam:num_beams=3 ==" in lines
    assert any(line.endswith("diverges: -") for line in lines)


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("width", [80, 200])
def test_side_by_side_fits_the_terminal(monkeypatch: pytest.MonkeyPatch, width: int) -> None:
    monkeypatch.setenv("COLUMNS", str(width))
    monkeypatch.setenv("LINES", "50")
    results = [
        {"label": f"strategy-{i}", "text": "word " * (20 + 10 * i), "completion_tokens": 9,
         "logprob": -3.5, "mean_entropy": None if i == 1 else 1.25, "seconds": 0.5,
         "tokens_per_second": 18.0, "diverges_at": None if i == 0 else i}
        for i in range(3)
    ]
    out = Terminal()
    show_comparison(UI(stdout=out), results)
    lines = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", out.getvalue()).splitlines()
    assert all(len(line) <= width for line in lines)
    header = [line for line in lines if "strategy-0" in line]
    assert header
    if width == 200:  # columns: all three titles on one line
        assert "strategy-1" in header[0] and "strategy-2" in header[0]
    else:  # stacked panels
        assert "strategy-1" not in header[0]


def test_common_flags_apply_to_every_strategy(cli) -> None:
    result = run_cli(["compare", "--json", "-n", "10", "--repetition-penalty", "1.5",
                      "--stop", "zzz-never", "-S", "greedy", "-S", "beam:num_beams=2", "Hello"])
    assert result.exit_code == 0, result.stderr
    greedy, beam = json.loads(result.stdout)["results"]
    for r, args in ((greedy, []), (beam, ["-S", "beam", "--num-beams", "2"])):
        assert (r["decoding"]["repetition_penalty"], r["decoding"]["stop"]) == (1.5, ["zzz-never"])
        asked = json.loads(run_cli(["ask", "--json", "-n", "10", "--repetition-penalty", "1.5",
                                    *args, "Hello"]).stdout)
        assert r["token_ids"] == asked["token_ids"]
    bad = run_cli(["compare", "--presence-penalty", "3", "hi"])
    assert (bad.exit_code, bad.stderr) == (
        2, "error: --presence-penalty must be in [-2, 2] (got 3.0); "
           "hint: 'chatcli strategies' lists every parameter\n")


def test_the_default_set_is_what_the_backend_can_run() -> None:
    from chatcli.cli.compare import runnable
    from chatcli.registry import ModelSpec

    def server(name: str) -> ModelSpec:
        return ModelSpec(alias="srv", source="remote", backend="openai",
                         base_url="http://h/v1", model="m", server=name)

    local = ModelSpec(alias="tiny", source="path", path=None)
    assert [runnable(local, n) for n in ("greedy", "sample", "beam")] == [True, True, True]
    for name, beam in (("generic", False), ("vllm", True), ("llama.cpp", False),
                       ("transformers", False)):
        assert [runnable(server(name), n) for n in ("greedy", "sample", "beam")] == [
            True, True, beam]
