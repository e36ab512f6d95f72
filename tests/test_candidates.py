"""--show-candidates: every figure checked against a direct computation."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import Tiny, run_cli


def teacher_forced_logits(tiny: Tiny, text: str, generated: list[int]) -> torch.Tensor:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny.folder)
    model = AutoModelForCausalLM.from_pretrained(tiny.folder, dtype=torch.float32)
    prompt = tok.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                     add_generation_prompt=True)
    ids = tok(prompt, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logits = model(torch.tensor([ids + generated])).logits[0].float()
    return logits[len(ids) - 1 : len(ids) - 1 + len(generated)]


@pytest.mark.parametrize(
    ("flags", "warpers"),
    [
        ([], []),
        (["-S", "sample", "-t", "0.7", "--top-p", "0.8", "--seed", "5"],
         [("TemperatureLogitsWarper", 0.7), ("TopPLogitsWarper", 0.8)]),
        (["-S", "sample", "--top-k", "4", "--seed", "2"], [("TopKLogitsWarper", 4)]),
    ],
)
def test_candidates_match_direct_softmax(cli, tiny_model: Tiny, flags: list[str],
                                         warpers: list[tuple[str, float]]) -> None:
    from transformers.generation import logits_process as lp

    result = run_cli(["ask", "--json", "--show-candidates", "5", "-n", "12", *flags, "Hello"])
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    tokens = data["tokens"]
    assert len(tokens) == data["completion_tokens"]
    logits = teacher_forced_logits(tiny_model, "Hello", [t["id"] for t in tokens])
    for step, record in zip(logits, tokens, strict=True):
        probs = torch.softmax(step, -1)
        top = torch.topk(probs, 5)
        assert [c["id"] for c in record["top_model"]] == top.indices.tolist()
        assert [c["p"] for c in record["top_model"]] == pytest.approx(top.values.tolist(),
                                                                    abs=1e-5)
        rest = 1.0 - sum(c["p"] for c in record["top_model"])
        assert rest >= -1e-6 and rest == pytest.approx(float(probs.sum() - top.values.sum()),
                                                       abs=1e-5)
        assert record["logprob"] == pytest.approx(float(torch.log(probs[record["id"]])),
                                                  abs=1e-4)
        entropy = float(-(probs * torch.log_softmax(step, -1)).sum())
        assert record["entropy"] == pytest.approx(entropy, abs=1e-4)
        scores = step[None]
        for name, value in warpers:
            scores = getattr(lp, name)(value)(None, scores)
        drawn = torch.softmax(scores, -1)[0]
        top_d = torch.topk(drawn, 5)
        got = {c["id"]: c["p"] for c in record["top_drawn_from"]}
        for i, v in zip(top_d.indices.tolist(), top_d.values.tolist(), strict=True):
            if v > 0:
                assert got[i] == pytest.approx(v, abs=1e-5)
        assert record["probability_drawn"] == pytest.approx(float(drawn[record["id"]]),
                                                            abs=1e-5)


def test_plain_table_when_piped(cli) -> None:
    result = run_cli(["ask", "--show-candidates", "2", "-n", "3", "Hello"])
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    header = [line for line in lines if line.startswith("step")]
    assert header and header[0].split() == ["step", "token", "p", "(drawn)", "p", "(model)",
                                            "entropy", "model", "top-k", "drawn-from", "top-k"]
    assert lines[-1].startswith("3 ")


def test_beam_refuses_candidates(cli) -> None:
    result = run_cli(["ask", "-S", "beam", "--show-candidates", "3", "hi"])
    assert result.exit_code == 2
    assert result.stderr == (
        "error: --show-candidates shows token-by-token choices; beam search scores whole "
        "sequences; hint: use --show-beams with --strategy beam\n"
    )


def test_show_beams_scores_match_generate(cli, tiny_model: Tiny) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model.folder)
    model = AutoModelForCausalLM.from_pretrained(tiny_model.folder, dtype=torch.float32)
    prompt = tok.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False,
                                     add_generation_prompt=True)
    ids = tok(prompt, add_special_tokens=False, return_tensors="pt")
    ref = model.generate(**ids, do_sample=False, num_beams=3, num_return_sequences=3,
                         max_new_tokens=10, output_scores=True, return_dict_in_generate=True)
    result = run_cli(["ask", "--json", "-S", "beam", "--num-beams", "3", "-o",
                      "num_return_sequences=3", "--show-beams", "-n", "10", "Hi"])
    data = json.loads(result.stdout)
    scores = [h["score"] for h in data["hypotheses"]]
    assert scores == pytest.approx(ref.sequences_scores.tolist(), abs=1e-4)
    assert data["pruned_beams"], "a 3-beam search over 10 steps prunes beams"
    assert all(1 <= p["step"] <= 10 for p in data["pruned_beams"])
    plain = run_cli(["ask", "-S", "beam", "--num-beams", "3", "--show-beams", "-n", "10", "Hi"])
    lines = plain.stdout.splitlines()
    start = lines.index("beam search: 3 beams, length penalty 1.0, early stopping False")
    assert lines[start + 1] == "hypotheses (best first):"
    assert lines[start + 2].startswith(f"  #1 score {scores[0]:.4f} (raw log-prob ")
    assert f"pruned beams ({len(data['pruned_beams'])}):" in lines


def test_show_beams_needs_beam(cli) -> None:
    result = run_cli(["ask", "--show-beams", "hi"])
    assert result.exit_code == 2
    assert result.stderr == ("error: --show-beams needs --strategy beam (the strategy is "
                             "greedy); hint: add -S beam\n")
