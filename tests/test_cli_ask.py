"""`chatcli ask` end to end on the tiny model: exact output, stdin, JSON, errors."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import Tiny, printed, reference_generate, run_cli


def reference(tiny: Tiny, messages: list[dict[str, str]], n: int) -> tuple[list[int], str, int]:
    """transformers' own greedy generate(): (new ids, decoded text, prompt length)."""
    tok, out, prompt_len = reference_generate(tiny, messages, max_new_tokens=n)
    new = out[0].tolist()
    eos = tok.eos_token_id
    if eos in new:
        new = new[: new.index(eos) + 1]
    return new, tok.decode(new, skip_special_tokens=True), prompt_len


def test_ask_prints_exactly_the_greedy_answer(cli, tiny_model: Tiny) -> None:
    _, text, _ = reference(tiny_model, [{"role": "user", "content": "Hello there"}], 24)
    result = run_cli(["ask", "-n", "24", "Hello there"])
    assert result.exit_code == 0, result.stderr
    assert result.stdout == printed(text)
    assert result.stderr == ""


def test_piped_stdin_comes_first_then_prompt(cli, tiny_model: Tiny) -> None:
    content = "The capital of France is Paris.\n\nWhich city is named?"
    _, text, _ = reference(tiny_model, [{"role": "user", "content": content}], 12)
    result = run_cli(["ask", "-n", "12", "Which city is named?"],
                     input="The capital of France is Paris.\n")
    assert result.stdout == printed(text)


def test_stdin_alone_and_system_prompt(cli, tiny_model: Tiny) -> None:
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    _, text, _ = reference(tiny_model, messages, 10)
    result = run_cli(["ask", "-n", "10", "-s", "Be brief."], input="Hi\n")
    assert result.exit_code == 0
    assert result.stdout == printed(text)


def test_json_output(cli, tiny_model: Tiny) -> None:
    new, text, prompt_len = reference(tiny_model, [{"role": "user", "content": "Hi"}], 9)
    result = run_cli(["ask", "--json", "-n", "9", "Hi"])
    data = json.loads(result.stdout)
    assert list(data) == [
        "text",
        "model",
        "prompt_tokens",
        "completion_tokens",
        "time_to_first_token_s",
        "tokens_per_second",
        "finish_reason",
        "token_ids",
        "decoding",
        "implementation",
        "raw",
    ]
    assert data["implementation"] == {"name": "native", "reason": None}
    assert data["raw"] is False
    assert data["token_ids"] == new
    assert data["decoding"]["strategy"] == "greedy"
    assert data["decoding"]["max_new_tokens"] == 9
    assert isinstance(data["decoding"]["seed"], int)
    assert data["text"] == text
    assert data["model"] == "tiny"
    assert data["prompt_tokens"] == prompt_len
    assert data["completion_tokens"] == len(new) == 9
    assert data["finish_reason"] == "length"
    assert data["time_to_first_token_s"] > 0 and data["tokens_per_second"] > 0


def test_stats_line_on_stderr(cli, tiny_model: Tiny) -> None:
    result = run_cli(["ask", "--stats", "-n", "5", "Hi"])
    assert re.fullmatch(
        r"stats: model=tiny strategy=greedy seed=\d+ prompt_tokens=\d+ completion_tokens=5 "
        r"time_to_first_token=\d+\.\d{3}s tokens_per_second=\d+\.\d finish_reason=length "
        r"implementation=native\n",
        result.stderr,
    )


@pytest.mark.parametrize(("args", "stdin"), [(["ask"], None), (["ask", "  "], "\n \n")])
def test_empty_prompt_is_an_error(cli, args: list[str], stdin: str | None) -> None:
    result = run_cli(args, input=stdin)
    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr == (
        "error: the prompt is empty; "
        'hint: pass a question, e.g. chatcli ask "Why is the sky blue?"\n'
    )


def test_unknown_model_is_one_line_exit_2(cli) -> None:
    result = run_cli(["ask", "-m", "nope", "hi"])
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith(
        "error: unknown model 'nope' (known: llama3.2-1b, local-server, qwen2.5-0.5b, "
        "qwen2.5-1.5b, smollm2-1.7b, smollm2-135m, smollm2-360m, tiny); hint: "
    )


def test_invalid_utf8_stdin_is_replaced_with_warning(cli) -> None:
    result = run_cli(["ask", "-n", "3", "--json"], input=b"caf\xe9 au lait")
    assert result.exit_code == 0
    assert result.stderr == (
        "warning: stdin is not valid UTF-8 (first bad byte at offset 3); "
        "invalid bytes were replaced with U+FFFD\n"
    )
    assert json.loads(result.stdout)["completion_tokens"] == 3


def test_prompt_longer_than_context_window(cli, home: Path) -> None:
    with (home / "models.toml").open("a") as f:
        f.write("context_window = 64\n")
    result = run_cli(["ask", "-n", "16", "word " * 100])
    assert result.exit_code == 1
    match = re.fullmatch(
        r"error: the newest message needs (\d+) tokens but the budget is 48 tokens "
        r"\(context window minus max new tokens\); hint: lower --max-new-tokens, shorten the "
        r"message or the system prompt, or choose a model with a larger context window \(-m\)\n",
        result.stderr,
    )
    assert match and int(match.group(1)) > 64


def test_max_new_tokens_must_leave_room(cli, home: Path) -> None:
    with (home / "models.toml").open("a") as f:
        f.write("context_window = 64\n")
    result = run_cli(["ask", "-n", "64", "Hi"])
    assert result.exit_code == 1
    assert result.stderr == (
        "error: max_new_tokens (64) leaves no room in the context window of 64 tokens; "
        "hint: lower -n to at most 51 (in chat: /set max_new_tokens N)\n"
    )


def test_bad_option_is_one_line_usage_error(cli) -> None:
    result = run_cli(["ask", "--max-new-tokens", "0", "hi"])
    assert result.exit_code == 2
    assert result.stderr == (
        "error: --max-new-tokens must be an integer >= 1 (got 0); "
        "hint: 'chatcli strategies' lists every parameter\n"
    )
    result = run_cli(["ask", "--max-new-tokens", "many", "hi"])
    assert result.exit_code == 2
    assert result.stderr.startswith("error: Invalid value for '--max-new-tokens' / '-n': ")
    assert result.stderr.endswith("; hint: see 'chatcli ask --help'\n")


def test_bad_device_names_valid_values(cli) -> None:
    result = run_cli(["ask", "--device", "tpu", "hi"])
    assert result.exit_code == 2
    assert result.stderr == (
        "error: --device must be one of auto, cpu, cuda, mps (got 'tpu'); hint: use --device auto\n"
    )


def test_debug_env_shows_traceback(cli, monkeypatch: pytest.MonkeyPatch) -> None:
    from chatcli.errors import UnknownModelError

    monkeypatch.setenv("CHATCLI_DEBUG", "1")
    with pytest.raises(UnknownModelError):
        run_cli(["ask", "-m", "nope", "hi"])


def _subprocess_env(home: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["CHATCLI_HOME"] = str(home)
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1])
    return env


def test_closed_pipe_ends_quietly(home: Path) -> None:
    """`chatcli ask ... | head -c 1`: no traceback, exit 0."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "chatcli", "ask", "-n", "200", "Hello"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        env=_subprocess_env(home),
    )
    assert proc.stdout is not None
    proc.stdout.read(1)
    proc.stdout.close()
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0
    assert err == b""


def test_help_does_not_import_torch(home: Path) -> None:
    code = (
        "import sys\n"
        "from chatcli.cli.app import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "heavy = [m for m in ('torch', 'transformers', 'huggingface_hub') if m in sys.modules]\n"
        "print('heavy:', heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=_subprocess_env(home), check=True)
    assert out.stdout.endswith("heavy: []\n")
    assert "ask" in out.stdout and "models" in out.stdout
