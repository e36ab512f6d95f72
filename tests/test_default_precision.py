"""The default model runs at its own precision; `--quantize none` is the exact path.

The built-in default alias is a GGUF file, so it runs at the file's own precision by
default (`quantize` gguf: its Q4_1 layers and Q8_0 head read as stored, see
tests/test_gguf_model.py). An alias's `quantize` applies where quantized layers exist
(chatcli's native forward pass on the CPU) and gives way elsewhere (here: the
transformers implementation), while `--quantize` typed on the command line is refused
where it cannot apply. `--stats` names the precision that ran.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from chatcli.registry import load_registry
from conftest import Tiny, run_cli


def test_the_builtin_default_runs_its_own_precision(home: Path) -> None:
    spec = load_registry().models["smollm2-135m"]
    assert (spec.quantize, spec.is_gguf) == ("gguf", True)


def _alias(home: Path, tiny: Tiny, name: str, extra: str) -> None:
    with (home / "models.toml").open("a") as f:
        f.write(f'\n[models.{name}]\nsource = "path"\npath = "{tiny.folder}"\n'
                f'dtype = "float32"\nquantize = "int4"\n{extra}')


def _stats(result: object) -> str:
    return result.stderr.splitlines()[-1]  # type: ignore[attr-defined]


@pytest.mark.parametrize(("flags", "label"), [
    ([], "implementation=native+int4"),
    (["--quantize", "none"], "implementation=native"),
    (["--quantize", "int8"], "implementation=native+int8"),
])
def test_the_alias_precision_and_the_exact_path(home: Path, tiny_model: Tiny, flags: list[str],
                                                label: str) -> None:
    _alias(home, tiny_model, "q4", "")
    result = run_cli(["ask", "-m", "q4", "-n", "4", "--stats", *flags, "Hi"])
    assert result.exit_code == 0, result.stderr
    assert _stats(result).endswith(f" {label}")


def test_an_alias_quantize_gives_way_where_it_cannot_apply(home: Path,
                                                          tiny_model: Tiny) -> None:
    _alias(home, tiny_model, "hfq", 'implementation = "transformers"\n')
    result = run_cli(["ask", "-m", "hfq", "-n", "4", "--stats", "Hi"])
    assert result.exit_code == 0, result.stderr
    assert _stats(result).endswith(
        ' implementation=transformers (implementation = "transformers" in '
        f'{home / "models.toml"})')
    refused = run_cli(["ask", "-m", "hfq", "-n", "4", "--quantize", "int4", "Hi"])
    assert (refused.exit_code, refused.stdout) == (2, "")
    assert refused.stderr == (
        "error: --quantize int4 is not available for 'hfq': it runs on transformers' "
        "implementation; hint: use --quantize none, or run on the CPU with the native "
        "implementation\n")
