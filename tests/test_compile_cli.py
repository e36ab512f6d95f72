"""`chatcli compile`: the compiled decode step built once, used by later answers, and
never by the exact path.

The slow tests build a package of the tiny test model (int4, autotuned as a user builds
it: about 30-90 s here) once for the module, then check: the build prints chatcli's
lines only (no autotuning tables or library warnings), `--stats` names it, the answer
equals the eager int4 answer, `--quantize none` (the exact path) ignores it, neither
the build nor later answers leave a file in the temp folder, and a damaged package is
not used (a note says so, the answer is still given). The fast tests check the
refusals, which happen before anything is built, and the note for a directory in the
package's place.
"""

from __future__ import annotations

import os
import subprocess
import sys
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


def _package(home: Path, tiny: Tiny) -> Path:
    """Where q4's package lives in `home` (float32, int4)."""
    from chatcli.loader import compiled_package
    from chatcli.runtime import Runtime

    return home / "cache" / "compiled" / compiled_package(
        tiny.folder, Runtime("cpu", "float32", None, "int4")).name


def _process(args: list[str], home: Path, temp: Path) -> subprocess.CompletedProcess[str]:
    """`chatcli ARGS` as its own process, with `temp` as its temp folder (TMPDIR)."""
    env = {k: v for k, v in os.environ.items() if k != "TORCHINDUCTOR_CACHE_DIR"}  # the default
    env.update(CHATCLI_HOME=str(home), HF_HUB_OFFLINE="1", TMPDIR=str(temp))
    env.pop("CHATCLI_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "chatcli", *args], capture_output=True,
                          text=True, env=env, timeout=600)


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


def test_a_directory_in_its_place_is_named(home: Path, tiny_model: Tiny) -> None:
    _alias(home, tiny_model)
    eager = run_cli(QUESTION)
    assert eager.exit_code == 0, eager.stderr
    package = _package(home, tiny_model)
    package.mkdir(parents=True)
    result = run_cli(QUESTION)
    assert (result.exit_code, result.stdout) == (0, eager.stdout)
    assert result.stderr.splitlines()[0] == (
        f"chatcli: The compiled decode step of 'q4' is not used (the compiled decode step "
        f"{package} is not a file); run 'chatcli compile q4' again")
    assert _stats(result.stderr).endswith(" implementation=native+int4")


# -- a real package (slow) --------------------------------------------------------------
@pytest.fixture(scope="module")
def compiled_home(tmp_path_factory: pytest.TempPathFactory, tiny_model: Tiny
                  ) -> Iterator[tuple[Path, str]]:
    """A home with the alias q4, its eager answer, then its package built (by a process
    whose temp folder stays empty)."""
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
    temp = tmp_path_factory.mktemp("compile-temp")
    built = _process(["compile", "q4"], home, temp)  # autotuned, as a user builds it
    assert built.returncode == 0, built.stderr
    assert built.stdout.startswith("q4: decode step compiled (float32/int4) in ")
    # chatcli's own lines only (a busy machine adds a note): no autotuning tables, no
    # library warnings
    said = built.stderr.splitlines()
    assert "chatcli: Compiling the decode step of 'q4' (float32/int4; a real model takes " \
           "minutes, once)" in said
    assert all(line.startswith("chatcli: ") for line in said), built.stderr
    assert list(temp.iterdir()) == []
    yield home, eager.stdout
    mp.undo()


@pytest.mark.slow
def test_answers_leave_nothing_in_the_temp_folder(
    compiled_home: tuple[Path, str], tmp_path: Path
) -> None:
    """Each process loads the package unpacked beside it: nothing is extracted to the
    temp folder (it used to be ~150 MB a process for the default model, never removed)."""
    home, eager = compiled_home
    for _ in range(3):
        result = _process(QUESTION, home, tmp_path)
        assert result.returncode == 0, result.stderr
        assert _stats(result.stderr).endswith(" implementation=native+int4+compiled")
        assert result.stdout == eager
        assert list(tmp_path.iterdir()) == []


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


@pytest.mark.slow
def test_a_package_damaged_in_the_middle_is_not_used(compiled_home: tuple[Path, str]) -> None:
    """Random bytes written into the middle (as `dd` would), the size unchanged."""
    home, eager = compiled_home
    (package,) = (home / "cache" / "compiled").glob("*.pt2")
    saved = package.read_bytes()
    try:
        with package.open("r+b") as f:
            f.seek(len(saved) // 2 - 32 * 1024)
            f.write(os.urandom(64 * 1024))
        result = run_cli(QUESTION)
        assert result.exit_code == 0, result.stderr
        assert result.stdout == eager
        assert result.stderr.splitlines()[0] == (
            f"chatcli: The compiled decode step of 'q4' is not used (the compiled decode step "
            f"{package} is damaged (its content differs from what was built)); run 'chatcli "
            "compile q4' again")
        assert _stats(result.stderr).endswith(" implementation=native+int4")
    finally:
        package.write_bytes(saved)
    restored = run_cli(QUESTION)  # whole again: unpacked again, and used
    assert (restored.exit_code, restored.stdout) == (0, eager)
    assert _stats(restored.stderr).endswith(" implementation=native+int4+compiled")


def test_a_busy_machine_is_named_before_autotuning() -> None:
    from chatcli.loader import busy_note

    assert busy_note(0.9, 2) is None and busy_note(1.0, 2) is None
    assert busy_note(2.8, 2) == (
        "The machine is busy (load average 2.8 on 2 cores): autotuning times kernels now, so "
        "the compiled step may come out slower; compile again on an idle machine for the "
        "fastest one")
    assert busy_note(7.9, 16) is None
