"""Constraints in chat (the flags, /schema, /regex, /grammar, /choice, /unconstrain) and in
compare (the flags on every strategy, --free-too), on the tiny test model, piped."""

from __future__ import annotations

import json
import re
from pathlib import Path

from conftest import run_cli


def test_chat_slash_commands_hold_answers_and_free_them(cli) -> None:
    script = "\n".join([
        "/choice yes,no", "Is it?", "/regex a(b", "/regex [0-9]{3}", "Number?",
        "/unconstrain", "/unconstrain", "Hi",
    ]) + "\n"
    result = run_cli(["chat", "-n", "8", "--seed", "1"], input=script)
    assert result.exit_code == 0, result.stderr
    assert result.stderr.splitlines() == [
        "chatcli: answers are held to one of 'yes', 'no' until /unconstrain",
        "error: the regex: invalid regex \"a(b\" (in regex): regex parse error: unclosed group; "
        "hint: check the regular expression (Rust regex syntax)",
        "chatcli: answers are held to regex '[0-9]{3}' until /unconstrain",
        "chatcli: answers are free again",
        "chatcli: answers were not held to a shape",
    ]
    answers = result.stdout.splitlines()
    assert answers[0] in ("yes", "no")
    assert re.fullmatch(r"[0-9]{3}", answers[1])


def test_chat_flag_and_an_incomplete_answer_warns(cli) -> None:
    result = run_cli(["chat", "-n", "3", "--regex", "[a-z]{40}"], input="Hi\nAgain\n")
    assert result.exit_code == 0, result.stderr
    warning = ("warning: the answer is incomplete: the token limit (3 tokens) cut it short "
               "before it satisfied --regex; raise --max-new-tokens (-n), or loosen the "
               "constraint")
    assert result.stderr.splitlines() == [warning, warning]
    for line in result.stdout.splitlines():
        assert re.fullmatch(r"[a-z]+", line)


def test_chat_grammar_and_schema_commands(cli, tmp_path: Path) -> None:
    grammar = tmp_path / "yn.gbnf"
    grammar.write_text('root ::= "yes" | "no"\n')
    script = f"/grammar {grammar}\nIs it?\n/grammar {tmp_path}/missing.lark\n/schema\n" \
             "/schema name strr\n/schema n int\n"
    result = run_cli(["chat", "-n", "8"], input=script)
    assert result.exit_code == 0, result.stderr
    assert result.stderr.splitlines() == [
        "chatcli: answers are held to gbnf grammar (yn.gbnf) until /unconstrain",
        f"error: /grammar: no such file: {tmp_path}/missing.lark; hint: give a grammar file "
        "(Lark, or GBNF with ::= rules)",
        "error: /schema needs a JSON Schema; hint: a file, JSON text, or fields like /schema "
        "name str, age int",
        "error: /schema: unknown type 'strr' for field 'name'; hint: types: str, int, float, "
        "bool, list[T] (e.g. 'name str, tags list[str]')",
        "chatcli: answers are held to JSON schema (/schema) until /unconstrain",
    ]
    assert result.stdout.splitlines()[0] in ("yes", "no")


def test_compare_free_too(cli) -> None:
    result = run_cli(["compare", "-S", "greedy", "-S", "beam:num_beams=2", "--choice",
                      "yes,no", "--free-too", "-n", "6", "--json", "Is it?"])
    assert result.exit_code == 0, result.stderr
    results = json.loads(result.stdout)["results"]
    assert [r["label"] for r in results] == [
        "greedy [free]", "greedy [--choice]", "beam:num_beams=2 [free]",
        "beam:num_beams=2 [--choice]"]
    free, held = results[0], results[1]
    assert free["constraint"] is None and free["constraint_satisfied"] is None
    assert free["mean_removed"] is None
    assert held["constraint"] == {"kind": "choice", "choices": ["yes", "no"]}
    assert held["constraint_satisfied"] is True and held["text"] in ("yes", "no")
    assert 0.0 < held["mean_removed"] <= 1.0
    assert results[3]["text"] in ("yes", "no") and results[3]["constraint_satisfied"] is True


def test_compare_free_too_needs_a_constraint(cli) -> None:
    result = run_cli(["compare", "--free-too", "Hi"])
    assert result.exit_code == 2
    assert result.stderr == (
        "error: --free-too compares answers with and without a constraint, and none is "
        "given; hint: add --schema, --json-object, --regex, --grammar or --choice\n")
