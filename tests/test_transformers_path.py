"""Models that run through transformers (`chatcli.lm.hf`): GPT-2, Qwen2, forced Llama.

Tiny random-weight GPT-2 and Qwen2 models are built here in seconds (the locally trained
byte-level BPE tokenizer and ChatML template of conftest). GPT-2 has no native
implementation; Qwen2 has one (tests/test_qwen2_native.py, with sliding windows:
tests/test_native_arch.py), so the qwen2 and sliding aliases here set
`implementation = "transformers"`; an alias that asks for native on GPT-2 is refused, as
`models show` says. Every
answer is compared token for token with transformers' own `generate()` of the same
packed prompt: multi-turn chat (the prompt cache crops the KV cache), /retry, /undo,
beam search (expand/reorder), and a sliding-window cache that cannot be cropped back.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from chatcli.chat.session import ChatSession, DecodingRequest
from chatcli.conversation import Conversation
from chatcli.decoding.registry import strategy_registry
from chatcli.loader import LoadedModel, load_model
from chatcli.progress import SilentReporter
from chatcli.registry import load_registry
from chatcli.runtime import Runtime
from conftest import (
    CHATML,
    CORPUS,
    Tiny,
    answer_ids,
    printed,
    reference_generate,
    run_cli,
    save_widened,
    train_byte_level_bpe,
)

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def _tokenizer() -> Any:
    from transformers import PreTrainedTokenizerFast

    fast = PreTrainedTokenizerFast(
        tokenizer_object=train_byte_level_bpe(CORPUS, 400, SPECIALS),
        bos_token="<|im_start|>", eos_token="<|im_end|>", pad_token="<|endoftext|>",
        unk_token="<|endoftext|>", model_input_names=["input_ids", "attention_mask"],
    )
    fast.chat_template = CHATML
    return fast


def build_model(folder: Path, kind: str, **config: Any) -> Path:
    """A tiny random `kind` model ("gpt2" or "qwen2") with conftest's tokenizer."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, Qwen2Config, Qwen2ForCausalLM

    tok = _tokenizer()
    ids = {"bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id,
           "pad_token_id": tok.pad_token_id, "vocab_size": len(tok)}
    torch.manual_seed(0)
    if kind == "gpt2":
        model: Any = GPT2LMHeadModel(GPT2Config(
            n_embd=32, n_layer=2, n_head=4, n_positions=config.pop("n_positions", 512),
            **ids, **config))
    else:
        model = Qwen2ForCausalLM(Qwen2Config(
            hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=True,
            **ids, **config))
    return save_widened(model, tok, folder)


@pytest.fixture(scope="session")
def gpt2_model(tmp_path_factory: pytest.TempPathFactory) -> Tiny:
    return Tiny(build_model(tmp_path_factory.mktemp("gpt2"), "gpt2"))


@pytest.fixture(scope="session")
def qwen2_model(tmp_path_factory: pytest.TempPathFactory) -> Tiny:
    return Tiny(build_model(tmp_path_factory.mktemp("qwen2"), "qwen2"))


@pytest.fixture(scope="session")
def sliding_model(tmp_path_factory: pytest.TempPathFactory) -> Tiny:
    """Qwen2 whose layers attend over a 24-token sliding window."""
    return Tiny(build_model(tmp_path_factory.mktemp("qwen2-sliding"), "qwen2",
                            use_sliding_window=True, sliding_window=24, max_window_layers=0))


@pytest.fixture
def models(home: Path, tiny_model: Tiny, gpt2_model: Tiny, qwen2_model: Tiny,
           sliding_model: Tiny) -> dict[str, Tiny]:
    """Aliases gpt2, qwen2, sliding and tiny-hf; qwen2, sliding and tiny-hf (the tiny
    Llama) are forced onto transformers."""
    entries = {"gpt2": gpt2_model, "qwen2": qwen2_model, "sliding": sliding_model,
               "tiny-hf": tiny_model}
    with (home / "models.toml").open("a") as f:
        for alias, model in entries.items():
            f.write(f'\n[models.{alias}]\nsource = "path"\npath = "{model.folder}"\n'
                    'dtype = "float32"\n')
            if alias in ("qwen2", "sliding", "tiny-hf"):
                f.write('implementation = "transformers"\n')
    return entries


def _load(alias: str, **changes: Any) -> LoadedModel:
    spec = dataclasses.replace(load_registry().resolve(alias), **changes)
    return load_model(spec, Runtime("cpu", "float32", 1), SilentReporter())


def _expected(model: Tiny, session: ChatSession, n: int, **kw: Any) -> list[list[int]]:
    """generate() of the packed prompt of the session's pending user message."""
    messages = [m.as_dict() for m in session.pack().messages]
    tok, out, _ = reference_generate(model, messages, max_new_tokens=n, **kw)
    rows = []
    for row in out.tolist():
        if tok.eos_token_id in row:
            row = row[: row.index(tok.eos_token_id) + 1]
        rows.append(row)
    return rows


def _strip_eos(ids: list[int], eos: int) -> list[int]:
    return ids[:-1] if ids and ids[-1] == eos else ids


@pytest.mark.parametrize("alias", ["gpt2", "qwen2", "tiny-hf", "sliding"])
def test_chat_turns_retry_and_undo_match_generate(models: dict[str, Tiny], alias: str) -> None:
    loaded = _load(alias)
    assert loaded.implementation == "transformers"
    reused = chat_script_matches_generate(loaded, models[alias])
    if alias == "sliding":
        # After the first turn the cache fills the 24-token window: it cannot be cropped,
        # so every later turn is prefilled in full (and still equals generate()).
        assert reused == [0] * len(reused)
    else:
        # Every turn after the first prefilled only its new tokens: the cache was cropped.
        assert reused[0] == 0 and min(reused[1:]) > 10


def chat_script_matches_generate(loaded: LoadedModel, model: Tiny) -> list[int]:
    """Turns, /retry and /undo, each answer equal to generate() of its packed prompt;
    the prompt tokens each answer reused from the cache."""
    eos = loaded.tokenizer.eos_token_id
    session = ChatSession(loaded, strategy_registry(),
                          DecodingRequest("greedy", {"max_new_tokens": 12}), Conversation())
    reused = []
    for step in ["Hi", "What did I just say?", "/retry", "/undo", "Tell me about Paris.",
                 "And the fox?"]:
        if step == "/undo":
            session.undo()
            continue
        if step == "/retry":
            session.retry()
        else:
            session.add_user(step)
        expected = _strip_eos(_expected(model, session, 12)[0], eos)
        assert _strip_eos(answer_ids(session), eos) == expected, step
        reused.append(session.cache.reused)
    return reused


def test_sliding_window_cache_is_rebuilt_when_it_cannot_roll_back(
        models: dict[str, Tiny]) -> None:
    """Past its 24-token window a sliding layer keeps no older keys, so transformers'
    `crop` cannot roll it back: the cache is refilled with the kept ids instead."""
    loaded = _load("sliding")
    lm = loaded.lm
    ids = loaded.tokenizer("The quick brown fox jumps over the lazy dog. " * 4)["input_ids"]
    assert len(ids) > 30
    _, cache = lm.prefill(ids)
    lm.crop(cache, 20)
    assert cache.get_seq_length() == 20
    cropped, _ = lm.prefill(ids[20:], cache)
    cold, _ = lm.prefill(ids)
    assert cropped.argmax().item() == cold.argmax().item()
    assert (cropped - cold).abs().max().item() < 1e-4


@pytest.mark.parametrize("alias", ["gpt2", "qwen2"])
def test_piped_chat_with_retry_on_transformers(models: dict[str, Tiny], alias: str) -> None:
    model = models[alias]
    tok, out, _ = reference_generate(model, [{"role": "user", "content": "Hi"}],
                                     max_new_tokens=8)

    def text(ids: list[int]) -> str:
        if tok.eos_token_id in ids:
            ids = ids[: ids.index(tok.eos_token_id)]
        return tok.decode(ids, skip_special_tokens=True)

    r1 = text(out[0].tolist())
    second = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": r1},
              {"role": "user", "content": "What did I just say?"}]
    r2 = text(reference_generate(model, second, max_new_tokens=8)[1][0].tolist())
    result = run_cli(["chat", "-m", alias, "-n", "8"],
                     input="Hi\nWhat did I just say?\n/retry\n")
    assert result.stderr == "chatcli: the previous answer stays as a branch (/branches)\n"
    assert result.exit_code == 0
    assert result.stdout == printed(r1) + printed(r2) + printed(r2)


@pytest.mark.parametrize("alias", ["gpt2", "qwen2"])
def test_beam_search_matches_generate(models: dict[str, Tiny], alias: str) -> None:
    """A greedy turn fills the prompt cache; the beam turn after it crops, expands and
    reorders that cache. Both equal generate()."""
    loaded = _load(alias)
    eos = loaded.tokenizer.eos_token_id
    session = ChatSession(loaded, strategy_registry(),
                          DecodingRequest("greedy", {"max_new_tokens": 10}), Conversation())
    session.add_user("Hi")
    answer_ids(session)
    session.update_request(DecodingRequest("beam", {"max_new_tokens": 10, "num_beams": 3}))
    session.add_user("Tell me about Paris.")
    expected = _expected(models[alias], session, 10, num_beams=3)[0]
    assert _strip_eos(answer_ids(session), eos) == _strip_eos(expected, eos)
    assert session.cache.reused > 10


def test_ask_beam_json_token_ids(models: dict[str, Tiny]) -> None:
    result = run_cli(["ask", "-m", "gpt2", "-S", "beam", "--num-beams", "4", "-n", "10",
                      "--json", "Name a city."])
    assert result.exit_code == 0, result.stderr
    tok, out, _ = reference_generate(models["gpt2"], [{"role": "user", "content": "Name a city."}],
                                   max_new_tokens=10, num_beams=4)
    ids = json.loads(result.stdout)["token_ids"]
    assert _strip_eos(ids, tok.eos_token_id) == _strip_eos(out[0].tolist(), tok.eos_token_id)


# -- the context window: every key a config may keep it in (item 22) -----------------


@pytest.mark.parametrize("key", ["max_position_embeddings", "n_positions", "n_ctx",
                                 "seq_length", "max_sequence_length"])
def test_context_window_read_from_every_config_key(key: str) -> None:
    from chatcli.loader import context_window
    from chatcli.registry import ModelSpec

    spec = ModelSpec(alias="m", source="path")
    assert context_window(spec, {key: 512, "model_type": "x"}) == 512
    assert context_window(spec, {"text_config": {key: 300}}) == 300
    assert context_window(spec, {}) == 2048
    assert context_window(dataclasses.replace(spec, context_window=100), {key: 512}) == 100


def test_prompt_longer_than_gpt2_positions_is_the_packing_error(
        models: dict[str, Tiny]) -> None:
    """600 tokens on a 512-position GPT-2: the packing error, not an IndexError."""
    loaded = _load("gpt2")
    assert loaded.context_window == 512
    text = ("The quick brown fox jumps over the lazy dog. " * 33).strip()
    ids = loaded.tokenizer.apply_chat_template([{"role": "user", "content": text}],
                                               tokenize=False, add_generation_prompt=True)
    needed = len(loaded.tokenizer(ids, add_special_tokens=False)["input_ids"])
    assert needed > 600
    result = run_cli(["ask", "-m", "gpt2", "-n", "4", text])
    assert result.stderr == (
        f"error: the newest message needs {needed} tokens but the budget is 508 tokens "
        "(context window minus max new tokens); hint: lower --max-new-tokens, shorten the "
        "message or the system prompt, or choose a model with a larger context window (-m)\n")
    assert result.exit_code == 1


def test_context_window_larger_than_the_model_is_refused(models: dict[str, Tiny],
                                                         home: Path) -> None:
    result = run_cli(["chat", "-m", "gpt2", "--context-window", "600"], input="Hi\n")
    assert result.stderr == (
        "error: context window 600 is larger than model 'gpt2' allows (512 positions: "
        "n_positions in its config.json); hint: use --context-window 512 or less (or lower "
        f"context_window of [models.gpt2] in {home / 'models.toml'})\n")
    assert result.exit_code == 2
    assert run_cli(["chat", "-m", "gpt2", "--context-window", "512", "-n", "2"],
                   input="Hi\n").exit_code == 0


# -- which implementation runs, and why (item 23) ----------------------------------------

WHY = {
    "gpt2": "transformers (gpt2 architecture has no native implementation)",
    "tiny": "native",
}


@pytest.mark.parametrize("alias", ["gpt2", "qwen2", "sliding", "tiny", "tiny-hf"])
def test_models_show_stats_and_json_name_the_implementation(
        models: dict[str, Tiny], home: Path, alias: str) -> None:
    why = WHY.get(alias, f'transformers (implementation = "transformers" in '
                         f'{home / "models.toml"})')
    shown = run_cli(["models", "show", alias])
    assert shown.exit_code == 0, shown.stderr
    assert f"implementation     {why}\n" in shown.stdout
    stats = run_cli(["ask", "-m", alias, "--stats", "-n", "2", "Hi"])
    assert stats.exit_code == 0, stats.stderr
    assert stats.stderr.endswith(f" finish_reason=length implementation={why}\n")
    data = json.loads(run_cli(["ask", "-m", alias, "--json", "-n", "2", "Hi"]).stdout)
    name, _, reason = why.partition(" (")
    assert data["implementation"] == {"name": name, "reason": reason[:-1] or None}
    assert _load(alias).implementation_label() == why


def test_native_asked_for_where_it_cannot_run_is_refused_as_models_show_says(
        models: dict[str, Tiny], home: Path) -> None:
    """`implementation = "native"` on the GPT-2 model: the load refuses before loading
    anything, and `models show` says that refusal, not "native"."""
    toml = home / "models.toml"
    with toml.open("a") as f:
        f.write(f'\n[models.forced]\nsource = "path"\npath = "{models["gpt2"].folder}"\n'
                'dtype = "float32"\nimplementation = "native"\n')
    reason = (f'implementation = "native" in {toml}, but it cannot run this model: gpt2 '
              "architecture has no native implementation")
    shown = run_cli(["models", "show", "forced"])
    assert shown.exit_code == 0, shown.stderr
    assert f"implementation     refused: {reason}\n" in shown.stdout
    as_json = json.loads(run_cli(["models", "show", "forced", "--json"]).stdout)
    assert as_json["implementation"] == f"refused: {reason}"
    for args in (["ask", "-m", "forced", "Hi"], ["chat", "-m", "forced"]):
        result = run_cli(args, input="Hi\n")
        assert (result.exit_code, result.stdout) == (2, "")
        assert result.stderr == (f"error: model 'forced': {reason}; hint: set implementation "
                                 f'= "transformers" for [models.forced] in {toml}\n')
    # the same alias on auto runs transformers', as models show says
    assert _load("forced", implementation="auto").implementation_label() == WHY["gpt2"]
