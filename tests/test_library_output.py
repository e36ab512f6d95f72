"""No library progress bar reaches the user's terminal, whether stderr is one or not.

transformers' GGUF reader calls tqdm directly ("Converting and de-quantizing GGUF
tensors..."), beside transformers' own switchable bars ("Loading weights", "Writing model
shards"); chatcli's conversion shows only its own progress line. The fast test replaces
transformers' GGUF loading by stand-ins that draw those bars exactly as the library does
(tqdm.auto, and transformers' tqdm) and save the tiny model; the slow one pulls the real
default model's GGUF in a fresh cache (its config and tokenizer: it runs as stored), then
converts it (`--quantize none`), and reads everything each process wrote.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from conftest import Tiny, run_cli

REPO = Path(__file__).resolve().parents[1]
CONVERTING = ("chatcli: Converting {} to safetensors (one time only, about 15 s; later loads "
              "take under a second)\n")


def test_no_progress_bars_inside_the_block_only() -> None:
    from tqdm.auto import tqdm

    from chatcli.loader import no_progress_bars

    def drawn(**kw: Any) -> str:
        out = io.StringIO()
        for _ in tqdm(range(3), desc="Working", file=out, **kw):
            pass
        return out.getvalue()

    assert "Working" in drawn()
    with no_progress_bars():
        assert drawn() == ""
        assert drawn(disable=False) == ""
        out = io.StringIO()
        tqdm(range(3), "Working", 3, True, out, None, 0.1, 10.0, None, None, False).close()
        assert out.getvalue() == ""  # `disable` given by position
    assert "Working" in drawn()


def test_conversion_shows_only_chatcli_progress(home: Path, tiny_model: Tiny,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    import transformers
    from tqdm.auto import tqdm
    from transformers.utils import logging as tlog

    class Saved:
        """What from_pretrained returns: saving copies the tiny model's files."""

        def __init__(self) -> None:
            self.config = type("Config", (), {})()

        def save_pretrained(self, folder: str | Path) -> None:
            for item in tiny_model.folder.iterdir():
                shutil.copy(item, Path(folder) / item.name)
            for _ in tlog.tqdm(range(2), desc="Writing model shards"):
                pass

    def tokenizer(*args: Any, **kwargs: Any) -> Saved:
        return Saved()

    def model(*args: Any, **kwargs: Any) -> Saved:
        for _ in tqdm(range(50), desc="Converting and de-quantizing GGUF tensors..."):
            pass
        for _ in tlog.tqdm(range(50), desc="Loading weights"):
            pass
        return Saved()

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", tokenizer)
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", model)
    monkeypatch.setenv("CHATCLI_DEBUG", "1")  # debugging shows warnings, never bars
    gguf = home / "weights" / "m.gguf"
    gguf.parent.mkdir()
    gguf.write_bytes(b"GGUF-stand-in")
    with (home / "models.toml").open("a") as f:
        # converted (dequantized): a GGUF read as stored converts nothing
        f.write(f'\n[models.packed]\nsource = "path"\npath = "{gguf}"\nquantize = "none"\n')
    result = run_cli(["pull", "packed"])
    assert result.exit_code == 0, result.stderr
    assert result.stderr == CONVERTING.format("m.gguf")


@pytest.mark.slow
def test_reading_and_converting_the_real_gguf_print_one_line_each(real: Path,
                                                                 tmp_path: Path) -> None:
    home = tmp_path / "home"
    shutil.copytree(real / "cache" / "pypi", home / "cache" / "pypi")  # the download
    env = {k: v for k, v in os.environ.items() if k != "CHATCLI_DEBUG"}
    env.update(CHATCLI_HOME=str(home), PYTHONPATH=str(REPO))

    def chatcli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "chatcli", *args], env=env,
                              capture_output=True, text=True, cwd=REPO, timeout=600,
                              stdin=subprocess.DEVNULL)

    name = "SmolLM2-135M-Instruct.Q4_1.gguf"
    done = chatcli("pull", "smollm2-135m")
    assert done.returncode == 0, done.stderr
    assert done.stderr == (f"chatcli: Reading the configuration and tokenizer of {name} (one "
                           "time only, a few seconds; its weights are read as stored, at "
                           "every load)\n")
    exact = chatcli("ask", "-n", "1", "--quantize", "none", "Hi")
    assert exact.returncode == 0, exact.stderr
    assert exact.stderr == CONVERTING.format(name)
