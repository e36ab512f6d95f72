"""`chatcli compile`: the compiled decode step built once, used by later answers, and
never by the exact path.

The slow tests build a package of the tiny test model (int4, --quick:
about 20-60 s here) once for the module, then check: `--stats` names it, the answer
equals the eager int4 answer, `--quantize none` (the exact path) ignores it, and a
damaged package is not used (a note says so, the answer is still given). The fast
tests check the refusals, which happen before anything is built.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import Tiny, run_cli

QUESTION = ["ask", "-m", "q4", "-n", "12", "--stats", "hello there"]


def _alias(home: Path, tiny: Tiny, extra: str = "") -> None:
    with (home / "models.toml").open("a") as f:
        f.write(f'\n[models.q4]\nsource = "path"\npath = "{tiny.folder}"\n'
                f'dtype = "float32"\nquantize = "int4"\n{extra}')


def _stats(stderr: str) -> str:
    return stderr.splitlines()[-1]


# -- refusals (fast) --------------------------------------------------------------------
def test_the_exact_path_is_never_compiled(home: Path, tiny_model: Tiny) -> None:
    _alias(home, tiny_model)
    result = run_cli(["compile", "q4", "--quantize", "none"])
    assert (result.exit_code, result.stdout) == (2, "")
    assert result.stderr == (
        "error: 'q4' runs unquantized, the exact path, which is never compiled (it would no "
        "longer be bit-identical to transformers); hint: compile a quantized mode: --quantize "
        "int4 or int8\n")


def test_only_the_native_forward_pass_is_compiled(home: Path, tiny_model: Tiny) -> None:
    _alias(home, tiny_model, 'implementation = "transformers"\n')
    result = run_cli(["compile", "q4"])
    assert (result.exit_code, result.stdout) == (2, "")
    assert result.stderr.startswith(
        f"error: 'q4' cannot be compiled: implementation = \"transformers\" in "
        f"{home / 'models.toml'}; hint: compile an alias that runs chatcli's native forward "
        "pass on the CPU")


def test_a_server_has_nothing_to_compile(home: Path) -> None:
    with (home / "models.toml").open("a") as f:
        f.write('\n[models.far]\nbackend = "openai"\nbase_url = "http://127.0.0.1:9/v1"\n'
                'model = "m"\n')
    result = run_cli(["compile", "far"])
    assert (result.exit_code, result.stdout) == (2, "")
    assert result.stderr == ("error: 'far' runs on backend openai: there is no decode step to "
                             "compile here; hint: compile a local alias\n")


# -- a real package (slow) --------------------------------------------------------------
@pytest.fixture(scope="module")
def compiled_home(tmp_path_factory: pytest.TempPathFactory, tiny_model: Tiny
                  ) -> Iterator[tuple[Path, str]]:
    """A home with the alias q4, its eager answer, then its package built."""
    mp = pytest.MonkeyPatch()
    home = tmp_path_factory.mktemp("compiled-home")
    (home / "models.toml").write_text('default = "q4"\n')
    _alias(home, tiny_model)
    mp.setenv("CHATCLI_HOME", str(home))
    mp.setenv("HF_HUB_OFFLINE", "1")
    mp.delenv("CHATCLI_DEBUG", raising=False)
    eager = run_cli(QUESTION)
    assert eager.exit_code == 0, eager.stderr
    assert _stats(eager.stderr).endswith(" implementation=native+int4")
    built = run_cli(["compile", "q4", "--quick"])
    assert built.exit_code == 0, built.stderr
    assert built.stdout.startswith("q4: decode step compiled (float32/int4) in ")
    yield home, eager.stdout
    mp.undo()


@pytest.mark.slow
def test_later_answers_use_it(compiled_home: tuple[Path, str]) -> None:
    _, eager = compiled_home
    result = run_cli(QUESTION)
    assert result.exit_code == 0, result.stderr
    assert _stats(result.stderr).endswith(" implementation=native+int4+compiled")
    assert result.stdout == eager  # float32: the same tokens as the eager int4 model


@pytest.mark.slow
def test_the_exact_path_ignores_it(compiled_home: tuple[Path, str]) -> None:
    result = run_cli([*QUESTION, "--quantize", "none"])
    assert result.exit_code == 0, result.stderr
    assert _stats(result.stderr).endswith(" implementation=native")


@pytest.mark.slow
def test_a_damaged_package_is_not_used(compiled_home: tuple[Path, str]) -> None:
    home, eager = compiled_home
    (package,) = (home / "cache" / "compiled").glob("*.pt2")
    saved = package.read_bytes()
    try:
        package.write_bytes(saved[: len(saved) // 2])
        result = run_cli(QUESTION)
        assert result.exit_code == 0, result.stderr
        assert result.stdout == eager
        assert result.stderr.startswith("chatcli: The compiled decode step of 'q4' is not used (")
        assert result.stderr.splitlines()[0].endswith("; run 'chatcli compile q4' again")
        assert _stats(result.stderr).endswith(" implementation=native+int4")
    finally:
        package.write_bytes(saved)


def test_a_busy_machine_is_named_before_autotuning() -> None:
    from chatcli.loader import busy_note

    assert busy_note(0.9, 2) is None and busy_note(1.0, 2) is None
    assert busy_note(2.8, 2) == (
        "The machine is busy (load average 2.8 on 2 cores): autotuning times kernels now, so "
        "the compiled step may come out slower; compile again on an idle machine for the "
        "fastest one")
    assert busy_note(7.9, 16) is None
