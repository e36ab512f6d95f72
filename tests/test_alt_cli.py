"""The road not taken from the command line (issue 15): `ask --alt STEP:RANK` and chat's
`/alt`, on the tiny test model, checked against transformers' teacher-forced logits."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
import torch
from test_candidates import teacher_forced_logits

from conftest import Tiny, printed, run_cli

PROMPT = "Hello there"


def replies(home: Path) -> list[tuple[str, int | None]]:
    """Every reply in the history, with the id of the message it answers."""
    with sqlite3.connect(home / "data" / "history.db") as db:
        return [(r[0], r[1]) for r in db.execute(
            "SELECT content, parent_id FROM messages WHERE role = 'assistant' ORDER BY id")]


def path_end(home: Path) -> str:
    """The last message of the current path (what chat -c continues from)."""
    with sqlite3.connect(home / "data" / "history.db") as db:
        return str(db.execute("SELECT m.content FROM conversations AS c JOIN messages AS m "
                              "ON m.id = c.leaf_id").fetchone()[0])


def test_ask_alt_takes_the_rank_th_token_and_goes_on(cli, home: Path, tiny_model: Tiny) -> None:
    result = run_cli(["ask", "-n", "12", "--alt", "3:2", "--json", PROMPT])
    assert result.exit_code == 0, result.stderr
    out = json.loads(result.stdout)
    alt = out["alternative"]
    original = alt["original_token_ids"]
    assert out["token_ids"][:2] == original[:2]  # the answer up to step 3, kept
    logits = teacher_forced_logits(tiny_model, PROMPT, original)
    ranked = torch.argsort(logits[2], descending=True, stable=True).tolist()
    assert alt["original_token_id"] == original[2] == ranked[0] and alt["original_rank"] == 1
    assert out["token_ids"][2] == alt["token_id"] == ranked[1]
    # chatcli's native forward pass vs transformers': the same ranks, probabilities to 1e-6
    assert abs(alt["probability"] - torch.softmax(logits[2], -1)[ranked[1]].item()) < 1e-6
    # the rest is plain greedy from the forced prefix: transformers' argmax at every step
    forced = teacher_forced_logits(tiny_model, PROMPT, out["token_ids"])
    assert out["token_ids"][3:] == forced[3:].argmax(-1).tolist()
    # the history keeps both answers, versions of one reply; the alternative is current
    question = 1
    assert [r[1] for r in replies(home)] == [question, question]
    assert replies(home)[1][0] == out["text"] == path_end(home)


def test_ask_alt_refusals(cli) -> None:
    bad = run_cli(["ask", "--alt", "3", "x"])
    assert (bad.exit_code, bad.stderr) == (2, (
        "error: --alt 3: expected STEP:RANK; hint: e.g. --alt 3:2 (at step 3, the model's "
        "second choice); chatcli chat's /alt lists the steps to try\n"))
    beam = run_cli(["ask", "-S", "beam", "--alt", "1:2", "x"])
    assert (beam.exit_code, beam.stderr) == (2, (
        "error: --alt explores one answer's steps; strategy 'beam' returns several hypotheses, "
        "so no step's token was chosen from that step's distribution; hint: use --strategy "
        "greedy or sample\n"))


@pytest.mark.parametrize(("spec", "message", "hint"), [
    ("0:1", "--alt 0:1: STEP counts from 1 (the answer's first token)",
     "e.g. --alt 1:2: the model's second choice for the first token"),
    ("1:0", "--alt 1:0: RANK counts from 1 (the model's most likely token)",
     "e.g. --alt 3:2: the model's second choice at step 3"),
    ("9:1", "--alt 9:1: step 9 is past the answer's end: -n (--max-new-tokens) 4 allows 4 "
     "tokens at most", "choose a STEP in 1..4, or raise -n"),
])
def test_ask_alt_refused_before_anything_runs(cli, home: Path, spec: str, message: str,
                                              hint: str) -> None:
    result = run_cli(["ask", "-n", "4", "--alt", spec, "x"])
    assert (result.exit_code, result.stdout, result.stderr) == (
        2, "", f"error: {message}; hint: {hint}\n")
    assert not (home / "data" / "history.db").exists()  # not even the question


def test_ask_alt_rank_past_the_vocabulary_is_refused_before_answering(cli, home: Path) -> None:
    result = run_cli(["ask", "-n", "4", "--alt", "1:99999", "x"])
    assert (result.exit_code, result.stdout, result.stderr) == (
        2, "", "error: --alt 1:99999: RANK must be in 1..400, the model's vocabulary; hint: "
        "RANK 1 is the model's most likely token at STEP, 2 the next\n")
    assert replies(home) == []  # the question is kept; no answer was made


def test_ask_alt_past_the_answer_s_end_shows_the_answer_it_saves(cli, home: Path) -> None:
    """The answer ends (a stop string) before STEP: there is no alternative there. The
    answer made is shown, and it is the only one saved."""
    full = json.loads(run_cli(["ask", "-n", "12", "--json", PROMPT]).stdout)
    stop = ["--stop", full["text"][3:6]]
    short = json.loads(run_cli(["ask", "-n", "12", *stop, "--json", PROMPT]).stdout)
    n = len(short["token_ids"])
    assert short["finish_reason"] == "stop_string" and 1 < n < 10
    result = run_cli(["ask", "-n", "12", *stop, "--alt", "10:1", PROMPT])
    assert (result.exit_code, result.stdout, result.stderr) == (
        2, printed(short["text"]), f"error: --alt 10:1: the answer ended after {n} tokens, "
        f"before step 10; it is shown and saved as it is; hint: choose a STEP in 1..{n}\n")
    assert [r[0] for r in replies(home)] == [full["text"], short["text"], short["text"]]


def test_chat_alt_lists_steps_and_branches(cli, home: Path) -> None:
    result = run_cli(["chat", "-n", "8"], input=f"{PROMPT}\n/alt\n/alt 2 3\n/alt 2\n")
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[1].split() == ["step", "token", "p", "entropy", "margin", "candidates",
                                "(rank)"]
    assert len(lines) == 1 + 1 + 5 + 1  # answer, header, 5 least-sure steps, alternative
    err = result.stderr.splitlines()
    assert err[0] == "chatcli: /alt STEP RANK takes another token at a step and answers from there"
    assert err[1].startswith("chatcli: step 2: ") and err[1].endswith(
        "(rank 1); the previous answer stays as a branch (/branches)")
    assert err[2] == ("error: /alt 2: expected STEP RANK (two numbers); hint: e.g. /alt 3 2: at "
                      "step 3 take the model's second choice; /alt alone lists the steps where "
                      "it was least sure")
    # two versions of the reply, the alternative current
    assert [r for r in replies(home)] == [(lines[0], 1), (lines[-1], 1)]
    assert path_end(home) == lines[-1]


def test_compare_alt_shows_where_they_part(cli) -> None:
    result = run_cli(["compare", "-S", "greedy", "--alt", "2:2", "-n", "6", "--json", PROMPT])
    assert result.exit_code == 0, result.stderr
    first, other = json.loads(result.stdout)["results"]
    assert [first["label"], other["label"]] == ["greedy", "greedy [alt 2:2]"]
    assert other["parts_at"] == other["diverges_at"] == 2
    assert other["token_ids"][:1] == first["token_ids"][:1]
    assert other["token_ids"][1] == other["alternative"]["token_id"] != first["token_ids"][1]
    assert other["alternative"]["original_token_id"] == first["token_ids"][1]
    assert other["mean_removed"] is None
    refused = run_cli(["compare", "-S", "beam", "--alt", "1:2", "x"])
    assert (refused.exit_code, refused.stderr) == (2, (
        "error: --alt explores one answer's steps; strategy 'beam' returns several hypotheses; "
        "hint: compare greedy or sample with --alt\n"))


def test_ask_alt_rank_past_what_a_constraint_allows_shows_the_answer(cli, home: Path) -> None:
    choice = ["-n", "12", "--choice", "yes,no"]
    answer = json.loads(run_cli(["ask", *choice, "--json", PROMPT]).stdout)["text"]
    result = run_cli(["ask", *choice, "--alt", "1:50", PROMPT])
    assert (result.exit_code, result.stdout, result.stderr) == (
        2, printed(answer), "error: --alt 1:50: RANK must be in 1..2 at step 1: only 2 tokens "
        "are possible there (got 50); the answer is shown and saved as it is; hint: a "
        "constraint allows only these tokens at this step\n")
    assert [r[0] for r in replies(home)] == [answer, answer]


@pytest.mark.parametrize(("spec", "message"), [
    ("9:1", "--alt 9:1: step 9 is past the answer's end: -n (--max-new-tokens) 4 allows 4 "
     "tokens at most; hint: choose a STEP in 1..4, or raise -n"),
    ("1:99999", "--alt 1:99999: RANK must be in 1..400, the model's vocabulary; hint: RANK 1 "
     "is the model's most likely token at STEP, 2 the next"),
])
def test_compare_alt_refused_before_any_answer(cli, monkeypatch: pytest.MonkeyPatch, spec: str,
                                               message: str) -> None:
    from chatcli.backends.local import LocalBackend

    def no_answer(*args: object, **kwargs: object) -> None:
        raise AssertionError("an answer was generated")

    monkeypatch.setattr(LocalBackend, "stream", no_answer)
    result = run_cli(["compare", "-S", "greedy", "-S", "sample", "-n", "4", "--alt", spec, "x"])
    assert (result.exit_code, result.stdout, result.stderr) == (2, "", f"error: {message}\n")
