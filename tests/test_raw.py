"""Raw text completion (`ask --raw`, `compare --raw`; a model without a chat template).

A base model is built here as the tiny chat model is in conftest.py, without a chat
template and with a tokenizer that puts a BOS before every text (as Llama's and Gemma's
do). Every answer is checked against transformers' own `generate()` on the ids that
transformers' tokenizer gives the text by default (`tokenizer(text)`, BOS included).
On a server (the replay server of test_openai_replay.py), --raw is a request to the
completions endpoint, and what chatcli does not send there is refused before any request.
"""

from __future__ import annotations

import json
import re
import sqlite3
from pathlib import Path
from typing import Any

import pytest
import test_openai_replay
import torch
from test_openai_replay import Replay, Response, sse

from conftest import (
    CORPUS,
    Tiny,
    printed,
    reference_generate,
    run_cli,
    save_widened,
    train_byte_level_bpe,
)

replay = test_openai_replay.replay  # the fixtures: a replay server, `local-server` on it
remote = test_openai_replay.remote

NOTE = "chatcli: base has no chat template: completing your text as it is (--raw)\n"
NO_TEMPLATE = ("error: this model has no chat template; hint: set chat_template for "
               "[models.base] in models.toml, or complete text with chatcli ask --raw\n")
TEXT = "The capital of France"


def build_base_model(folder: Path, seed: int = 1) -> Path:
    """A random-weight Llama whose tokenizer has no chat template and adds a BOS."""
    from tokenizers import processors
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tok = train_byte_level_bpe(CORPUS, 400, ["<|endoftext|>", "<s>", "</s>"])
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                   pad_token="<|endoftext|>", unk_token="<|endoftext|>")
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(fast), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        tie_word_embeddings=True, bos_token_id=fast.bos_token_id,
        eos_token_id=fast.eos_token_id, pad_token_id=fast.pad_token_id,
    )
    return save_widened(LlamaForCausalLM(config), fast, folder)


@pytest.fixture(scope="session")
def base_model(tmp_path_factory: pytest.TempPathFactory) -> Tiny:
    return Tiny(build_base_model(tmp_path_factory.mktemp("base-model")))


@pytest.fixture
def base(home: Path, base_model: Tiny) -> Path:
    """CHATCLI_HOME with `base` (no chat template) beside `tiny`."""
    with (home / "models.toml").open("a") as f:
        f.write(f'\n[models.base]\nsource = "path"\npath = "{base_model.folder}"\n'
                'dtype = "float32"\n')
    return home


_MODELS: dict[Path, tuple[Any, Any]] = {}


def reference(folder: Path) -> tuple[Any, Any]:
    """transformers' tokenizer and model of `folder` (loaded once)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if folder not in _MODELS:
        _MODELS[folder] = (AutoTokenizer.from_pretrained(folder),
                           AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32))
    return _MODELS[folder]


def generate(folder: Path, ids: list[int], n: int, **kwargs: Any) -> list[int]:
    """transformers' greedy `generate()` on `ids`: the new ids, up to the first EOS."""
    tok, model = reference(folder)
    kwargs.setdefault("do_sample", False)
    out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids),
                         dtype=torch.long), max_new_tokens=n, **kwargs)
    new = out[0, len(ids):].tolist()
    eos = tok.eos_token_id
    return new[: new.index(eos) + 1] if eos in new else new


def decoded(folder: Path, ids: list[int]) -> str:
    return str(reference(folder)[0].decode(ids, skip_special_tokens=True))


def prompt_ids(folder: Path, text: str) -> list[int]:
    """What transformers' tokenizer gives `text` by default (its special tokens too)."""
    return list(reference(folder)[0](text)["input_ids"])


def stored(home: Path) -> list[tuple[str, str, dict[str, Any] | None]]:
    with sqlite3.connect(home / "data" / "history.db") as db:
        return [(role, content, json.loads(params) if params else None) for role, content, params
                in db.execute("SELECT role, content, params FROM messages ORDER BY id")]


# -- the answer: transformers' generate() on the same ids ---------------------------------
def test_raw_greedy_is_generate_on_the_text_with_its_bos(base: Path, base_model: Tiny) -> None:
    ids = prompt_ids(base_model.folder, TEXT)
    bos = reference(base_model.folder)[0].bos_token_id
    assert ids[0] == bos and bos not in ids[1:]  # the tokenizer puts a BOS before a text
    new = generate(base_model.folder, ids, 16)
    assert len(new) > 8  # a real continuation (this one ends with the EOS)
    result = run_cli(["ask", "--raw", "-m", "base", "-n", "16", "--json", TEXT])
    assert result.exit_code == 0, result.stderr
    assert result.stderr == ""  # asked for: no note
    out = json.loads(result.stdout)
    assert out["token_ids"] == new
    assert out["text"] == decoded(base_model.folder, new)
    assert out["prompt_tokens"] == len(ids)
    assert out["raw"] is True
    plain = run_cli(["ask", "--raw", "-m", "base", "-n", "16", TEXT])
    assert (plain.exit_code, plain.stdout, plain.stderr) == (0, printed(out["text"]), "")


def test_raw_on_a_chat_model_completes_the_text_without_its_template(cli, tiny_model: Tiny
                                                                     ) -> None:
    ids = prompt_ids(tiny_model.folder, TEXT)  # this tokenizer adds no BOS
    assert ids == list(reference(tiny_model.folder)[0](TEXT, add_special_tokens=False)
                       ["input_ids"])
    new = generate(tiny_model.folder, ids, 12)
    result = run_cli(["ask", "--raw", "-n", "12", "--json", TEXT])
    assert result.exit_code == 0, result.stderr
    out = json.loads(result.stdout)
    assert (out["token_ids"], out["prompt_tokens"], out["raw"]) == (new, len(ids), True)


def test_piped_stdin_comes_first_as_ask_joins_it(base: Path, base_model: Tiny) -> None:
    text = "Hello! How are you today?\n\nThe quick brown fox"
    new = generate(base_model.folder, prompt_ids(base_model.folder, text), 10)
    result = run_cli(["ask", "--raw", "-m", "base", "-n", "10", "The quick brown fox"],
                     input="Hello! How are you today?\n")
    assert result.exit_code == 0, result.stderr
    assert result.stdout == printed(decoded(base_model.folder, new))


def test_a_model_without_a_chat_template_completes_by_itself_with_a_note(
        base: Path, base_model: Tiny) -> None:
    new = generate(base_model.folder, prompt_ids(base_model.folder, TEXT), 10)
    result = run_cli(["ask", "-m", "base", "-n", "10", TEXT])
    assert result.exit_code == 0, result.stderr
    assert result.stdout == printed(decoded(base_model.folder, new))
    assert result.stderr == NOTE
    as_json = run_cli(["ask", "-m", "base", "-n", "10", "--json", TEXT])
    assert as_json.stderr == NOTE
    out = json.loads(as_json.stdout)
    assert (out["token_ids"], out["raw"]) == (new, True)


def test_models_show_says_the_model_has_no_chat_template(base: Path) -> None:
    shown = run_cli(["models", "show", "base"])
    assert shown.exit_code == 0, shown.stderr
    assert ("chat template      none: ask completes text as it is (--raw); chat needs "
            "chat_template in models.toml") in shown.stdout.splitlines()
    as_json = [json.loads(run_cli(["models", "show", alias, "--json"]).stdout)["chat_template"]
               for alias in ("base", "tiny")]
    assert as_json == ["none", "model"]


def test_a_chat_answer_says_raw_false(cli) -> None:
    result = run_cli(["ask", "-n", "3", "--json", "Hi"])
    assert json.loads(result.stdout)["raw"] is False


# -- every strategy and view ---------------------------------------------------------------
def test_beam_hypotheses_are_generate_s(base: Path, base_model: Tiny) -> None:
    _, model = reference(base_model.folder)
    ids = prompt_ids(base_model.folder, TEXT)
    out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids),
                         dtype=torch.long), max_new_tokens=8, num_beams=3,
                         num_return_sequences=3, do_sample=False)
    want = [decoded(base_model.folder, row[len(ids):].tolist()) for row in out]
    result = run_cli(["ask", "--raw", "-m", "base", "--json", "-S", "beam", "--num-beams", "3",
                      "-o", "num_return_sequences=3", "-n", "8", TEXT])
    assert result.exit_code == 0, result.stderr
    assert [h["text"] for h in json.loads(result.stdout)["hypotheses"]] == want
    shown = run_cli(["ask", "--raw", "-m", "base", "-S", "beam", "--num-beams", "3",
                     "--show-beams", "-n", "8", TEXT])
    assert shown.exit_code == 0, shown.stderr
    first, tree = shown.stdout.split("\n", 1)  # the best completion, then the search
    assert first == want[0]
    assert tree.startswith("beam search: 3 beams, length penalty 1.0, early stopping False\n"
                           "hypotheses (best first):\n  #1 score ")


def test_sampling_draws_from_the_raw_prompt(base: Path, base_model: Tiny) -> None:
    """The same draws as chatcli's own sampler given transformers' ids of the text."""
    from chatcli.decoding.registry import strategy_registry
    from chatcli.decoding.settings import resolve_settings
    from chatcli.generation.stream import stream
    from chatcli.loader import load_model
    from chatcli.progress import SilentReporter
    from chatcli.registry import load_registry
    from chatcli.runtime import resolve_runtime

    result = run_cli(["ask", "--raw", "-m", "base", "-S", "sample", "--seed", "7", "-t", "1.5",
                      "-n", "12", "--json", TEXT])
    assert result.exit_code == 0, result.stderr
    out = json.loads(result.stdout)
    spec = load_registry().resolve("base")
    loaded = load_model(spec, resolve_runtime("cpu", "float32", None, spec.dtype),
                        SilentReporter())
    settings = resolve_settings(strategy_registry(), strategy="sample",
                                flags={"seed": 7, "temperature": 1.5, "max_new_tokens": 12})
    gen = stream(loaded, prompt_ids(base_model.folder, TEXT), settings, 12, strategy_registry())
    list(gen)
    assert out["token_ids"] == gen.token_ids
    assert out["token_ids"] != generate(base_model.folder, prompt_ids(base_model.folder, TEXT),
                                        12)


def test_candidates_are_the_model_s_distributions(base: Path, base_model: Tiny) -> None:
    ids = prompt_ids(base_model.folder, TEXT)
    new = generate(base_model.folder, ids, 6)
    _, model = reference(base_model.folder)
    with torch.no_grad():
        logits = model(torch.tensor([ids + new])).logits[0, len(ids) - 1:-1]
    probs = torch.softmax(logits.float(), -1)
    result = run_cli(["ask", "--raw", "-m", "base", "-n", "6", "--show-candidates", "3",
                      "--json", TEXT])
    assert result.exit_code == 0, result.stderr
    tokens = json.loads(result.stdout)["tokens"]
    assert [t["id"] for t in tokens] == new
    for step, token in enumerate(tokens):
        top = torch.topk(probs[step], 3)
        assert [e["id"] for e in token["top_model"]] == top.indices.tolist()
        assert all(abs(e["p"] - p) < 1e-5
                   for e, p in zip(token["top_model"], top.values.tolist(), strict=True))
        assert abs(token["logprob"] - probs[step, new[step]].log().item()) < 1e-4
    table = run_cli(["ask", "--raw", "-m", "base", "-n", "6", "--show-candidates", "3", TEXT])
    assert table.exit_code == 0, table.stderr
    assert table.stdout.splitlines()[1].split()[:2] == ["step", "token"]


def test_alt_takes_the_second_token_of_the_raw_prompt_s_distribution(
        base: Path, base_model: Tiny) -> None:
    ids = prompt_ids(base_model.folder, TEXT)
    result = run_cli(["ask", "--raw", "-m", "base", "-n", "8", "--alt", "2:2", "--json", TEXT])
    assert result.exit_code == 0, result.stderr
    out = json.loads(result.stdout)
    original = out["alternative"]["original_token_ids"]
    assert original == generate(base_model.folder, ids, 8)
    _, model = reference(base_model.folder)
    with torch.no_grad():
        logits = model(torch.tensor([ids + original[:1]])).logits[0, -1]
    ranked = torch.argsort(logits, descending=True, stable=True).tolist()
    assert out["token_ids"][:2] == [original[0], ranked[1]]
    forced = [original[0], ranked[1]]
    assert out["token_ids"] == [*forced, *generate(base_model.folder, ids + forced, 6)]


def test_a_constraint_holds_the_completion(base: Path) -> None:
    result = run_cli(["ask", "--raw", "-m", "base", "-n", "8", "--choice", "Paris,Lyon", "--json",
                      TEXT])
    assert result.exit_code == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["text"] in ("Paris", "Lyon") and out["constraint_satisfied"] is True


def test_stats_and_explain_context(base: Path, base_model: Tiny) -> None:
    result = run_cli(["ask", "--raw", "-m", "base", "-n", "5", "--stats", TEXT])
    assert result.exit_code == 0, result.stderr
    assert re.fullmatch(
        r"stats: model=base strategy=greedy seed=\d+ prompt_tokens=\d+ completion_tokens=5 "
        r"time_to_first_token=\d+\.\d{3}s tokens_per_second=\d+\.\d finish_reason=length "
        r"implementation=native\n", result.stderr)
    explained = run_cli(["ask", "--raw", "-m", "base", "-n", "5", "--explain-context", "--json",
                         TEXT])
    assert explained.exit_code == 0, explained.stderr
    spans = json.loads(explained.stdout)["context_attention"]
    # the whole prompt (its BOS too) is the one message: no template around it
    assert [(s["span"], s["tokens"]) for s in spans] == [
        ("user", len(prompt_ids(base_model.folder, TEXT))), ("answer", 4)]


def test_compare_raw_runs_every_strategy_on_the_text(base: Path, base_model: Tiny) -> None:
    ids = prompt_ids(base_model.folder, TEXT)
    result = run_cli(["compare", "--raw", "-m", "base", "-S", "greedy", "-S", "beam", "-n", "6",
                      "--json", TEXT])
    assert result.exit_code == 0, result.stderr
    assert result.stderr == ""
    out = json.loads(result.stdout)
    assert (out["raw"], out["prompt_tokens"]) == (True, len(ids))
    assert out["results"][0]["token_ids"] == generate(base_model.folder, ids, 6)
    auto = run_cli(["compare", "-m", "base", "-S", "greedy", "-n", "6", "--json", TEXT])
    assert auto.stderr == NOTE
    assert json.loads(auto.stdout)["results"][0]["token_ids"] == out["results"][0]["token_ids"]
    chat = run_cli(["compare", "-S", "greedy", "-n", "2", "--json", TEXT])
    assert json.loads(chat.stdout)["raw"] is False


# -- refusals ---------------------------------------------------------------------------------
RAW_SYSTEM = ("error: --raw completes your text as it is, without a chat template, so there is "
              "no system prompt (-s); hint: put what the model should read first in the prompt "
              "itself, or drop --raw\n")


@pytest.mark.parametrize("command", ["ask", "compare"])
def test_raw_with_a_system_prompt_is_refused_before_anything(cli, home: Path,
                                                             command: str) -> None:
    result = run_cli([command, "--raw", "-s", "Be brief.", TEXT])
    assert (result.exit_code, result.stdout, result.stderr) == (2, "", RAW_SYSTEM)
    assert not (home / "data" / "history.db").exists()


def test_a_system_prompt_for_a_model_without_a_chat_template_is_refused(base: Path) -> None:
    result = run_cli(["ask", "-m", "base", "-s", "Be brief.", TEXT])
    assert (result.exit_code, result.stdout) == (2, "")
    assert result.stderr == (
        "error: base has no chat template, so it completes your text as it is, with no system "
        "prompt (-s); hint: drop -s, or set chat_template for [models.base] in models.toml\n")
    assert [(r, c) for r, c, _ in stored(base)] == [("user", TEXT)]  # what was typed is kept


def test_chat_with_a_model_without_a_chat_template_is_refused(base: Path) -> None:
    result = run_cli(["chat", "-m", "base"], input="Hello\n")
    assert (result.exit_code, result.stdout, result.stderr) == (1, "", NO_TEMPLATE)


def test_chat_keeps_its_model_when_model_names_one_without_a_chat_template(
        base: Path, tiny_model: Tiny) -> None:
    tok, out, _ = reference_generate(tiny_model, [{"role": "user", "content": "Hello"}],
                                     max_new_tokens=4)
    result = run_cli(["chat", "-n", "4"], input="/model base\nHello\n")
    assert (result.exit_code, result.stderr) == (0, NO_TEMPLATE)
    assert result.stdout == printed(tok.decode(out[0].tolist(), skip_special_tokens=True))


def test_a_chat_continued_with_a_model_without_a_chat_template_is_refused(base: Path) -> None:
    assert run_cli(["ask", "-n", "3", "Hi"]).exit_code == 0
    result = run_cli(["ask", "-c", "-m", "base", "-n", "3", "More"])
    assert (result.exit_code, result.stdout, result.stderr) == (1, "", NO_TEMPLATE)


# -- the history --------------------------------------------------------------------------
def test_the_history_keeps_the_text_and_its_completion_marked_raw(base: Path) -> None:
    out = json.loads(run_cli(["ask", "--raw", "-m", "base", "-n", "6", "--json", TEXT]).stdout)
    rows = stored(base)
    assert [(r, c) for r, c, _ in rows] == [("user", TEXT), ("assistant", out["text"])]
    assert rows[0][2] is None and rows[1][2] is not None and rows[1][2]["raw"] is True
    shown = run_cli(["history", "show", "1"])
    assert shown.exit_code == 0, shown.stderr
    assert re.fullmatch(
        "# The capital of France\n\n- conversation: 1\n- model: base\n- started: .*\n"
        "- updated: .*\n\n## Text\n\nThe capital of France\n\n## Completion\n\n"
        + re.escape(out["text"].rstrip()) + r"\n\n\*base · greedy \(frequency_penalty=0.0, "
        r"max_new_tokens=6, no_repeat_ngram_size=0, presence_penalty=0.0, "
        r"repetition_penalty=1.0\) · seed \d+ · 8 prompt \+ 6 completion tokens · first token "
        r"\d+\.\d\d s · \d+\.\d tokens/s\*\n", shown.stdout)
    exported = json.loads(run_cli(["history", "export", "1", "--format", "json"]).stdout)
    assert exported["messages"][1]["meta"]["params"]["raw"] is True


def test_continuing_a_raw_completion_continues_its_text(base: Path, base_model: Tiny) -> None:
    first = json.loads(run_cli(["ask", "--raw", "-m", "base", "-n", "6", "--json",
                                TEXT]).stdout)
    result = run_cli(["ask", "-c", "-n", "6", "--json", " and then"])  # no --raw: it is raw
    assert result.exit_code == 0, result.stderr
    assert result.stderr == ""
    out = json.loads(result.stdout)
    text = TEXT + first["text"] + " and then"
    ids = prompt_ids(base_model.folder, text)
    assert (out["model"], out["raw"], out["prompt_tokens"]) == ("base", True, len(ids))
    assert out["token_ids"] == generate(base_model.folder, ids, 6)
    assert [c for _, c, _ in stored(base)] == [TEXT, first["text"], " and then", out["text"]]
    again = run_cli(["ask", "--raw", "-c", "-n", "2", "."])
    assert again.exit_code == 0, again.stderr


def test_raw_continues_no_chat(cli, home: Path) -> None:
    assert run_cli(["ask", "-n", "3", "Hi"]).exit_code == 0
    result = run_cli(["ask", "--raw", "-c", "-n", "3", "More"])
    assert (result.exit_code, result.stdout) == (2, "")
    assert result.stderr == ("error: --raw continues only a raw completion, and conversation 1 "
                             "is a chat; hint: drop -c to complete new text, or drop --raw to go "
                             "on with the chat\n")
    assert len(stored(home)) == 2  # nothing added


def test_a_raw_completion_is_no_chat_to_continue(base: Path) -> None:
    assert run_cli(["ask", "--raw", "-m", "base", "-n", "3", TEXT]).exit_code == 0
    latest = run_cli(["chat", "-c"], input="Hello\n")
    assert (latest.exit_code, latest.stdout) == (2, "")
    assert latest.stderr == ("error: conversation 1 is a raw text completion (ask --raw), not a "
                             "chat; hint: continue its text with chatcli ask -c TEXT\n")
    named = run_cli(["chat", "--conversation", "1"], input="Hello\n")
    assert named.stderr == ("error: conversation 1 is a raw text completion (ask --raw), not a "
                            "chat; hint: chatcli history show 1 prints it\n")
    system = run_cli(["ask", "-c", "-s", "Be brief.", "More"])
    assert (system.exit_code, system.stderr) == (2, (
        "error: conversation 1 is a raw completion: its text goes on as it is, with no system "
        "prompt (-s); hint: drop -s, or drop -c to start a new conversation\n"))
    assert len(stored(base)) == 2


# -- on a server: the completions endpoint ---------------------------------------------------
def _completion(*pieces: str, finish: str = "stop", prompt_tokens: int = 5) -> Response:
    """A streamed text completion, as llama.cpp's and vLLM's servers send one."""
    events = [json.dumps({"object": "text_completion", "choices": [
        {"index": 0, "text": piece, "logprobs": None, "finish_reason": None}]})
        for piece in pieces[:-1]]
    events.append(json.dumps({"object": "text_completion", "choices": [
        {"index": 0, "text": pieces[-1], "logprobs": None, "finish_reason": finish}]}))
    events.append(json.dumps({"choices": [], "usage": {
        "prompt_tokens": prompt_tokens, "completion_tokens": len(pieces)}}))
    return Response(200, "OK", {"Content-Type": "text/event-stream"}, sse(*events, "[DONE]"))


def test_raw_on_a_server_sends_the_text_to_completions(remote: Replay, home: Path) -> None:
    remote.responses = [_completion(" is", " Paris", ".")]
    result = run_cli(["ask", "--raw", "-m", "local-server", "-n", "12", "--json", TEXT])
    assert result.exit_code == 0, result.stderr
    assert result.stderr == ""
    out = json.loads(result.stdout)
    assert (out["text"], out["raw"], out["prompt_tokens"], out["completion_tokens"],
            out["finish_reason"]) == (" is Paris.", True, 5, 3, "stop")
    assert [r["path"] for r in remote.requests] == ["/v1/completions"]
    assert remote.bodies() == [{"model": "smollm2", "prompt": TEXT, "max_tokens": 12,
                                "temperature": 0.0, "repeat_penalty": 1.0,
                                "stream_options": {"include_usage": True}, "stream": True}]
    assert [(r, c) for r, c, _ in stored(home)] == [("user", TEXT), ("assistant", " is Paris.")]
    assert stored(home)[1][2]["raw"] is True  # type: ignore[index]
    remote.responses = [_completion(" It is big.")]
    more = run_cli(["ask", "-c", "-n", "12", " The city"])
    assert (more.exit_code, more.stdout) == (0, " It is big.\n")
    assert remote.bodies()[1]["prompt"] == TEXT + " is Paris. The city"
    compared = run_cli(["compare", "--raw", "-m", "local-server", "-S", "greedy", "-n", "12",
                        "--json", TEXT])
    assert compared.exit_code == 0, compared.stderr
    assert "logprobs" not in remote.bodies()[2]  # none are read from this endpoint


@pytest.mark.parametrize(("server", "args", "line"), [
    ("transformers", [], "error: --raw completes text at a server's completions endpoint, "
     "which 'local-server' (server transformers: transformers serve) does not have; hint: "
     "drop --raw, or use a local model (-m)"),
    ("llama.cpp", ["--show-candidates", "2"], "error: --show-candidates cannot be shown with "
     "--raw on a server: chatcli reads log-probabilities from chat completions only "
     "('local-server' is remote); hint: drop --show-candidates, or use a local model (-m)"),
    ("llama.cpp", ["--choice", "a,b"], "error: --choice cannot be sent with --raw: chatcli "
     "sends a server answer shapes with chat completions only ('local-server' is remote); "
     "hint: drop --raw, or use a local model (-m)"),
])
def test_raw_on_a_server_refusals_come_before_any_request(remote: Replay, home: Path,
                                                          server: str, args: list[str],
                                                          line: str) -> None:
    toml = home / "models.toml"
    toml.write_text(toml.read_text().replace('server = "llama.cpp"', f'server = "{server}"'))
    result = run_cli(["ask", "--raw", "-m", "local-server", *args, TEXT])
    assert (result.exit_code, result.stdout, result.stderr) == (2, "", line + "\n")
    assert remote.requests == []


# -- the default model's GGUF: the prompt llama.cpp would complete (slow) ------------------------
@pytest.mark.slow
def test_raw_prompt_ids_are_llama_cpp_s_for_the_default_gguf(real: Path) -> None:
    """The ids of a raw prompt are those llama.cpp gives the same text for a completion
    (its BOS where the GGUF says to add one: SmolLM2's says not to)."""
    from llamacpp_server import default_gguf, require_llama_cpp

    require_llama_cpp()
    import llama_cpp

    from chatcli.conversation import Message
    from chatcli.loader import load_model
    from chatcli.progress import SilentReporter
    from chatcli.prompt import RawRender
    from chatcli.registry import load_registry
    from chatcli.runtime import resolve_runtime

    spec = load_registry().resolve("smollm2-135m")
    loaded = load_model(spec, resolve_runtime("cpu", "float32", None, spec.dtype),
                        SilentReporter())
    vocab = llama_cpp.Llama(model_path=str(default_gguf(real)), vocab_only=True, verbose=False)
    for text in ["The capital of France is", "def add(a, b):\n    return", " leading space",
                 "Ünïcödé 🙂 中文", "<|im_start|>user\nHi<|im_end|>\n"]:
        assert RawRender(loaded.tokenizer)([Message("user", text)]) == vocab.tokenize(
            text.encode(), add_bos=True, special=True), text
