"""--explain-context: attention mass per turn, against a direct sum of output_attentions."""

from __future__ import annotations

import json
from itertools import pairwise

import pytest
import torch

from conftest import Tiny, run_cli


def test_attention_per_turn_matches_direct_sum(cli, tiny_model: Tiny) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    first = json.loads(run_cli(["ask", "--json", "-n", "6", "-s", "Be brief.", "Hi"]).stdout)
    result = run_cli(["ask", "-c", "--json", "-n", "8", "--explain-context", "And then?"])
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    spans = data["context_attention"]
    assert [s["span"] for s in spans] == ["system", "user", "assistant", "user",
                                          "generation prompt", "answer"]
    assert sum(s["attention"] for s in spans) == pytest.approx(1.0, abs=1e-4)

    tok = AutoTokenizer.from_pretrained(tiny_model.folder)
    model = AutoModelForCausalLM.from_pretrained(tiny_model.folder, dtype=torch.float32,
                                                 attn_implementation="eager")
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": first["text"]},
                {"role": "user", "content": "And then?"}]

    def ids_of(msgs: list[dict[str, str]], gen: bool) -> list[int]:
        text = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen)
        return tok(text, add_special_tokens=False)["input_ids"]

    prompt = ids_of(messages, True)
    bounds = [0] + [len(ids_of(messages[: i + 1], False)) for i in range(4)] + [len(prompt)]
    assert [s["tokens"] for s in spans[:5]] == [b - a for a, b in pairwise(bounds)]
    answer = data["token_ids"]
    assert spans[5]["tokens"] == len(answer) - 1
    full = prompt + answer[:-1]  # the positions whose queries produced the answer's tokens
    with torch.no_grad():
        att = model(torch.tensor([full]), output_attentions=True).attentions
    queries = range(len(prompt) - 1, len(full))
    ranges = [*pairwise(bounds), (len(prompt), len(full))]
    for span, (a, b) in zip(spans, ranges, strict=True):
        total = 0.0
        for layer in att:
            for head in layer[0]:
                for q in queries:
                    total += float(head[q, a:b].sum())
        expected = total / (len(att) * att[0].shape[1] * len(queries))
        assert span["attention"] == pytest.approx(expected, abs=1e-5)


def test_plain_table(cli) -> None:
    result = run_cli(["ask", "-n", "4", "--explain-context", "Hi"])
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    start = lines.index(
        "attention of the answer per turn (mean over layers, heads, answer tokens):")
    assert lines[start + 1].split() == ["message", "role", "tokens", "attention"]
    assert lines[start + 2].split()[:2] == ["1", "user"]


def test_chat_context_reports_attention(cli) -> None:
    result = run_cli(["chat", "--explain-context", "-n", "4"], input="Hi\n/context\n")
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    start = lines.index(
        "attention of the answer per turn (mean over layers, heads, answer tokens):")
    assert [line.split()[1] for line in lines[start + 2 :]] == [
        "user", "generation", "answer"]
