"""Qwen2 models run chatcli's own forward pass, whatever their tokenizer.

transformers loads a Qwen2 folder's tokenizer as its own `Qwen2Tokenizer`, which chatcli's
tokenizer does not reproduce, so chatcli opens that tokenizer with transformers
(`chatcli.loader.open_tokenizer`) and still runs the native forward pass, chosen by the
model config alone. The random-weight Qwen2 of test_transformers_path (q/k/v biases, tied
embeddings, the ChatML tokenizer of conftest) is compared with transformers, as
test_native_llama does for the llama exactness:

* prefill logits and every greedy decode step's logits are `torch.equal` to transformers'
  `Qwen2ForCausalLM` in float32 (`logits_to_keep=1`, what `generate()` computes);
* multi-turn chat, /retry and /undo answer token for token like `generate()` of the same
  packed prompt, with the prompt cache reused across turns;
* `implementation = "native"` on a Qwen2 alias loads, `models show`, `ask --stats` and
  `ask --json` say native, and the remote backend's `tokenizer = "ALIAS"` opens the same
  tokenizer.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from test_transformers_path import build_model, chat_script_matches_generate

from chatcli.lm.native import NativeLanguageModel
from chatcli.lm.tokenizer import ChatTokenizer
from chatcli.loader import LoadedModel, load_model
from chatcli.progress import SilentReporter
from chatcli.registry import load_registry
from chatcli.runtime import Runtime
from conftest import Tiny, run_cli


@pytest.fixture(scope="module")
def qwen2(tmp_path_factory: pytest.TempPathFactory) -> Tiny:
    return Tiny(build_model(tmp_path_factory.mktemp("qwen2-native"), "qwen2"))


@pytest.fixture
def aliases(home: Path, qwen2: Tiny) -> Path:
    """`qwen2` (auto) and `qwen2-native` (implementation = "native") on the same folder."""
    with (home / "models.toml").open("a") as f:
        for alias, extra in (("qwen2", ""), ("qwen2-native", 'implementation = "native"\n')):
            f.write(f'\n[models.{alias}]\nsource = "path"\npath = "{qwen2.folder}"\n'
                    f'dtype = "float32"\n{extra}')
    return home


def _load(alias: str, **changes: Any) -> LoadedModel:
    spec = dataclasses.replace(load_registry().resolve(alias), **changes)
    return load_model(spec, Runtime("cpu", "float32", 1), SilentReporter())


def _reference(folder: Path) -> Any:
    from transformers import AutoModelForCausalLM

    ref = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    assert type(ref).__name__ == "Qwen2ForCausalLM"
    assert ref.config._attn_implementation == "sdpa"
    return ref


@pytest.mark.parametrize("alias", ["qwen2", "qwen2-native"])
def test_qwen2_alias_runs_the_native_forward_pass(aliases: Path, alias: str) -> None:
    loaded = _load(alias)
    assert loaded.implementation == "native"
    assert loaded.implementation_note == ""
    assert loaded.implementation_label() == "native"
    assert type(loaded.lm) is NativeLanguageModel
    # transformers substitutes its own class for a qwen2 folder: chatcli uses it too.
    assert type(loaded.tokenizer).__name__ == "Qwen2Tokenizer"
    assert loaded.eos_ids == frozenset({loaded.tokenizer.convert_tokens_to_ids("<|im_end|>")})


def test_prefill_and_greedy_logits_are_identical_to_transformers(
        aliases: Path, qwen2: Tiny) -> None:
    loaded = _load("qwen2")
    assert type(loaded.lm) is NativeLanguageModel
    ref = _reference(qwen2.folder)
    text = loaded.tokenizer.apply_chat_template(
        [{"role": "user", "content": "Tell me about Paris and the quick brown fox."}],
        tokenize=False, add_generation_prompt=True)
    ids = loaded.tokenizer(text, add_special_tokens=False)["input_ids"]
    assert len(ids) > 15
    prompt = torch.tensor([ids])
    with torch.inference_mode():
        theirs = ref(prompt, use_cache=True, logits_to_keep=1).logits[0, -1]
    ours, cache = loaded.lm.prefill(ids)
    assert ours.dtype == torch.float32
    assert torch.equal(ours.reshape(-1), theirs)

    steps = 20
    out = ref.generate(prompt, do_sample=False, max_new_tokens=steps, eos_token_id=None,
                       output_logits=True, return_dict_in_generate=True)
    logits, tokens = ours.reshape(-1), []
    for step in range(steps):
        assert torch.equal(logits, out.logits[step][0]), step
        tokens.append(int(logits.argmax()))
        step_logits, cache = loaded.lm.step(torch.tensor([tokens[-1]]), cache)
        logits = step_logits.reshape(-1)
    assert tokens == out.sequences[0, len(ids):].tolist()
    assert len(set(tokens)) > 3  # the weights make greedy wander, not repeat one token


def test_chat_turns_retry_and_undo_match_generate(aliases: Path, qwen2: Tiny) -> None:
    loaded = _load("qwen2")
    assert type(loaded.lm) is NativeLanguageModel
    reused = chat_script_matches_generate(loaded, qwen2)
    assert reused[0] == 0 and min(reused[1:]) > 10  # later turns prefilled only new tokens


def test_models_show_stats_and_json_say_native(aliases: Path) -> None:
    shown = run_cli(["models", "show", "qwen2"])
    assert shown.exit_code == 0, shown.stderr
    assert "implementation     native\n" in shown.stdout
    stats = run_cli(["ask", "-m", "qwen2", "--stats", "-n", "2", "Hi"])
    assert stats.exit_code == 0, stats.stderr
    assert stats.stderr.endswith(" finish_reason=length implementation=native\n")
    result = run_cli(["ask", "-m", "qwen2-native", "--json", "-n", "2", "Hi"])
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["implementation"] == {"name": "native", "reason": None}


def test_open_tokenizer_picks_by_the_folder_alone(tiny_model: Tiny, qwen2: Tiny) -> None:
    from chatcli.loader import open_tokenizer

    assert type(open_tokenizer(tiny_model.folder)) is ChatTokenizer
    assert type(open_tokenizer(qwen2.folder)).__name__ == "Qwen2Tokenizer"


def test_remote_tokenizer_alias_opens_the_same_tokenizer(aliases: Path) -> None:
    from chatcli.registry import ModelSpec
    from chatcli.remote.model import load_tokenizer

    registry = load_registry()
    for alias, kind in (("qwen2", "Qwen2Tokenizer"), ("tiny", "ChatTokenizer")):
        spec = ModelSpec(alias="server", source="path", backend="openai", tokenizer=alias)
        assert type(load_tokenizer(spec, registry)).__name__ == kind
