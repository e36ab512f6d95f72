"""chatcli's folders when they cannot be written: one line that names what and why.

The cache on a full disk names the disk and the folder and leaves no partial file:
writing the quantized model (`ask`, `chat`) warns and answers all the same with the
model quantized in memory; `compile` stops with an error, also when the disk fills
during the build itself (the compiler then says only "C++ compile error": a build that
fails with next to nothing free is named a full disk); the one-time GGUF conversion
stops with an error. The full disk is injected where the bytes are written:
safetensors' `save_file` writes part of the file, then raises the exception the real
library raises there (`SafetensorError`, "... No space left on device (os error 28)").
One test makes it real: a 64 KiB tmpfs mounted in a user namespace (`unshare`; skipped
where that is not allowed).

A CHATCLI_HOME that is a file, lies under a file, cannot be created (/proc) or cannot
be written is one error line for every command that writes, before anything is read or
written; the commands that only read still work.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from chatcli import paths
from conftest import Tiny, run_cli

REPO = Path(__file__).resolve().parents[1]
NO_SPACE = "Error while serializing: I/O error: No space left on device (os error 28)"


def mounted_at(path: Path) -> str:
    """Where the disk holding `path` is mounted, as df says."""
    done = subprocess.run(["df", "--output=target", str(path)], capture_output=True, text=True,
                          check=True)
    return done.stdout.splitlines()[-1].strip()


class FullDisk:
    """safetensors' save_file writes half a file, then finds the disk full; `tried` holds
    the paths it was given, `restore()` makes the disk roomy again."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        import safetensors.torch

        self.monkeypatch = monkeypatch
        self.real = safetensors.torch.save_file
        self.tried: list[Path] = []
        monkeypatch.setattr(safetensors.torch, "save_file", self.save_file)

    def save_file(self, tensors: Any, filename: str, metadata: Any = None) -> None:
        from safetensors import SafetensorError

        self.tried.append(Path(filename))
        Path(filename).write_bytes(b"\0" * 512)
        raise SafetensorError(NO_SPACE)

    def restore(self) -> None:
        import safetensors.torch

        self.monkeypatch.setattr(safetensors.torch, "save_file", self.real)


@pytest.fixture
def full_disk(monkeypatch: pytest.MonkeyPatch) -> FullDisk:
    return FullDisk(monkeypatch)


def test_mount_point_is_where_df_says(tmp_path: Path) -> None:
    assert str(paths.mount_point(tmp_path)) == mounted_at(tmp_path)
    assert paths.mount_point(tmp_path / "not" / "yet") == paths.mount_point(tmp_path)
    assert paths.mount_point(Path("/")) == Path("/")


def test_ask_answers_when_the_quantized_cache_cannot_be_written(
        home: Path, full_disk: FullDisk) -> None:
    cache = home / "cache" / "quantized"
    result = run_cli(["ask", "--quantize", "int8", "-n", "8", "hello"])
    assert result.exit_code == 0, result.stderr
    assert result.stderr == (
        "chatcli: Quantizing to int8 (one time only)\n"
        f"warning: cannot write the quantized model to {cache}: the disk mounted at "
        f"{mounted_at(home)} is full; the model runs quantized from memory this time (the "
        "next load quantizes it again); free some space on it, or set CHATCLI_HOME to a "
        "folder on another disk\n")
    assert [p.parent for p in full_disk.tried] == [cache]
    assert list(cache.iterdir()) == []  # the half-written file is gone
    # The answer is the one given with a cache that can be written.
    full_disk.restore()
    again = run_cli(["ask", "--quantize", "int8", "-n", "8", "hello"])
    assert again.exit_code == 0, again.stderr
    assert again.stdout == result.stdout
    assert again.stderr == "chatcli: Quantizing to int8 (one time only)\n"
    assert [p.suffix for p in cache.iterdir()] == [".safetensors"]


def test_a_read_only_cache_costs_the_next_load_its_time_only(
        home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import safetensors.torch
    from safetensors import SafetensorError

    def save_file(tensors: Any, filename: str, metadata: Any = None) -> None:
        raise SafetensorError("Error while serializing: I/O error: Read-only file system "
                              "(os error 30)")

    monkeypatch.setattr(safetensors.torch, "save_file", save_file)
    result = run_cli(["ask", "--quantize", "int8", "-n", "2", "hello"])
    assert (result.exit_code, result.stderr) == (0, "chatcli: Quantizing to int8 (one time "
                                                    "only)\n")
    assert list((home / "cache" / "quantized").iterdir()) == []


def test_compile_stops_when_the_quantized_cache_cannot_be_written(
        home: Path, full_disk: FullDisk) -> None:
    cache = home / "cache"
    result = run_cli(["compile", "--quantize", "int8", "--quick"])
    assert (result.exit_code, result.stdout) == (1, "")
    assert result.stderr == (
        "chatcli: Quantizing to int8 (one time only)\n"
        f"error: cannot write the quantized model to {cache / 'quantized'}: the disk mounted "
        f"at {mounted_at(home)} is full; hint: free some space on it, or set CHATCLI_HOME to "
        "a folder on another disk\n")
    assert len(full_disk.tried) == 1
    assert sorted(str(p.relative_to(cache)) for p in cache.rglob("*")) == ["quantized"]


def test_conversion_on_a_full_disk_names_it_and_leaves_nothing(
        home: Path, tiny_model: Tiny, monkeypatch: pytest.MonkeyPatch) -> None:
    from safetensors import SafetensorError

    from chatcli import loader

    gguf = home / "weights" / "m.gguf"
    gguf.parent.mkdir()
    gguf.write_bytes(b"GGUF-stand-in")

    def export(spec: Any, weights: Any, folder: Path) -> None:  # save_pretrained, half done
        shutil.copy(tiny_model.folder / "config.json", folder / "config.json")
        (folder / "model.safetensors").write_bytes(b"\0" * 512)
        raise SafetensorError(NO_SPACE)

    monkeypatch.setattr(loader, "_export", export)
    with (home / "models.toml").open("a") as f:
        # converted (dequantized): a GGUF read as stored converts nothing
        f.write(f'\n[models.packed]\nsource = "path"\npath = "{gguf}"\nquantize = "none"\n')
    result = run_cli(["pull", "packed"])
    converted = home / "cache" / "converted"
    assert (result.exit_code, result.stdout) == (1, "")
    assert result.stderr == (
        "chatcli: Converting m.gguf to safetensors (one time only, about 15 s; later loads "
        "take under a second)\n"
        f"error: model 'packed': cannot write the converted model to {converted}: the disk "
        f"mounted at {mounted_at(home)} is full; hint: free some space on it, or set "
        "CHATCLI_HOME to a folder on another disk\n")
    assert list(converted.iterdir()) == []


class CompilerOutOfSpace:
    """The build's compiler finds the disk full and says only "C++ compile error" (what
    inductor raises on a 9 MB tmpfs), or the package writer raises an ENOSPC OSError."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, free: int, chained: bool) -> None:
        import torch._inductor

        from chatcli.lm import compiled

        self.free, self.chained, self.folders = free, chained, []
        monkeypatch.setattr(torch._inductor, "aoti_compile_and_package", self.compile)
        real = shutil.disk_usage
        monkeypatch.setattr(compiled.shutil, "disk_usage", self.disk_usage(real))

    def disk_usage(self, real: Any) -> Any:
        def usage(folder: Any) -> Any:
            self.folders.append(Path(folder))
            total, used, _ = real(folder)
            return type(real(folder))(total, used, self.free)
        return usage

    def compile(self, exported: Any, package_path: str, **_: Any) -> str:
        Path(package_path).write_bytes(b"\0" * 512)  # half a package
        if self.chained:
            raise RuntimeError("enforce fail at inline_container.cc:664] . unexpected pos") \
                from OSError(28, "No space left on device")
        raise RuntimeError("C++ compile error")


@pytest.mark.parametrize(("free", "chained"), [(4096, False), (10 << 30, True)])
def test_compile_names_a_disk_that_filled_during_the_build(
        home: Path, monkeypatch: pytest.MonkeyPatch, free: int, chained: bool) -> None:
    disk = CompilerOutOfSpace(monkeypatch, free, chained)
    result = run_cli(["compile", "--quantize", "int8", "--quick"])
    compiled = home / "cache" / "compiled"
    assert (result.exit_code, result.stdout) == (1, "")
    assert result.stderr.endswith(
        f"error: cannot write the compiled decode step to {compiled}: the disk mounted at "
        f"{mounted_at(home)} is full; hint: free some space on it, or set CHATCLI_HOME to a "
        "folder on another disk\n")
    # the half package, the build folder and the build's lock are gone, and so is the
    # folder they were in
    assert not compiled.exists()
    assert disk.folders == ([] if chained else [compiled])


def test_compile_failing_with_room_left_is_not_called_a_full_disk(
        home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    CompilerOutOfSpace(monkeypatch, 10 << 30, chained=False)
    result = run_cli(["compile", "--quantize", "int8", "--quick"])
    assert (result.exit_code, result.stdout) == (1, "")
    assert result.stderr.endswith("error: could not compile the decode step: C++ compile "
                                  "error; hint: decode eagerly (the native model)\n")


# -- a real full disk ------------------------------------------------------------------
REAL = """
set -e
mount -t tmpfs -o size=64k tmpfs "$CHATCLI_HOME/cache"
head -c 61440 /dev/zero > "$CHATCLI_HOME/cache/fill"
"$PYTHON" -m chatcli ask --quantize int8 -n 8 hello || echo "exit $?"
echo left: $(ls -A "$CHATCLI_HOME/cache/quantized")
"$PYTHON" -m chatcli compile --quantize int8 --quick || echo "exit $?"
echo left: $(ls -A "$CHATCLI_HOME/cache/quantized") $(ls -A "$CHATCLI_HOME/cache")
"""


def test_a_real_full_disk(home: Path) -> None:
    unshare = shutil.which("unshare")
    probe = [unshare or "unshare", "--user", "--map-root-user", "--mount", "true"]
    if unshare is None or subprocess.run(probe, capture_output=True).returncode != 0:
        pytest.skip("no user namespaces here: cannot mount a small tmpfs")
    (home / "cache").mkdir()
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHON": sys.executable,
           "CHATCLI_HOME": str(home)}
    done = subprocess.run([unshare, "--user", "--map-root-user", "--mount", "sh", "-c", REAL],
                          capture_output=True, text=True, env=env, cwd=REPO,
                          stdin=subprocess.DEVNULL, timeout=300)
    cache = home / "cache"
    warning = (f"cannot write the quantized model to {cache / 'quantized'}: the disk mounted at "
               f"{cache} is full")
    hint = "free some space on it, or set CHATCLI_HOME to a folder on another disk"
    assert done.stderr == (
        "chatcli: Quantizing to int8 (one time only)\n"
        f"warning: {warning}; the model runs quantized from memory this time (the next load "
        f"quantizes it again); {hint}\n"
        "chatcli: Quantizing to int8 (one time only)\n"
        f"error: {warning}; hint: {hint}\n")
    tail = "left:\nexit 1\nleft: fill quantized\n"
    assert done.stdout.endswith(tail)
    answer = done.stdout[:-len(tail)]
    assert answer == run_cli(["ask", "--quantize", "int8", "-n", "8", "hello"]).stdout


# -- CHATCLI_HOME that cannot be used ----------------------------------------------------
HOME_HINT = "hint: set CHATCLI_HOME to a folder you can write, or unset it\n"
WRITING = [["ask", "-n", "2", "hi"], ["chat", "-n", "2"], ["compare", "-S", "greedy", "hi"],
           ["pull", "smollm2-135m"], ["compile", "--quick"], ["history", "rm", "1"]]
READING = {("models", "list"): "", ("models", "show", "smollm2-135m"): "",
           ("history", "list"): "no conversations yet\n", ("strategies",): ""}  # -> stderr


def unusable_home(kind: str, tmp_path: Path) -> tuple[Path, str]:
    """A CHATCLI_HOME of `kind`, and what the error says of it."""
    if kind == "a file":
        home = tmp_path / "home-file"
        home.write_text("not a folder\n")
        return home, f"CHATCLI_HOME={home} is a file, not a folder"
    if kind == "under a file":
        (tmp_path / "file").write_text("not a folder\n")
        home = tmp_path / "file" / "home"
        return home, f"CHATCLI_HOME={home} cannot be created: {tmp_path / 'file'} is a file, " \
                     "not a folder"
    home = Path("/proc/chatcli-home")
    if not Path("/proc/self").is_dir():
        pytest.skip("no /proc here")
    return home, f"CHATCLI_HOME={home} cannot be created in /proc: No such file or directory"


@pytest.mark.parametrize("kind", ["a file", "under a file", "in /proc"])
def test_an_unusable_chatcli_home_is_one_line_for_every_command_that_writes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str) -> None:
    home, what = unusable_home(kind, tmp_path)
    monkeypatch.setenv("CHATCLI_HOME", str(home))
    before = sorted(tmp_path.rglob("*"))
    for args in WRITING:
        result = run_cli(args, input="piped question\n")
        assert (result.exit_code, result.stdout) == (1, ""), args
        assert result.stderr == f"error: {what}; {HOME_HINT}", args
    for args, stderr in READING.items():  # commands that only read still work
        result = run_cli(list(args))
        assert (result.exit_code, result.stderr) == (0, stderr), args
    assert sorted(tmp_path.rglob("*")) == before  # nothing was written anywhere


def test_a_read_only_chatcli_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from test_history_faults import read_only

    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("CHATCLI_HOME", str(home))
    with read_only(home):
        result = run_cli(["ask", "-n", "2", "hi"])
        listed = run_cli(["history", "list"])
    assert (result.exit_code, result.stdout) == (1, "")
    assert result.stderr == f"error: CHATCLI_HOME={home} is a folder you cannot write; {HOME_HINT}"
    assert (listed.exit_code, listed.stdout, listed.stderr) == (0, "", "no conversations yet\n")


def test_a_missing_chatcli_home_is_created(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           tiny_model: Tiny) -> None:
    home = tmp_path / "new" / "home"
    monkeypatch.setenv("CHATCLI_HOME", str(home))
    models = tmp_path / "models.toml"
    models.write_text(f'[models.tiny]\nsource = "path"\npath = "{tiny_model.folder}"\n'
                      'dtype = "float32"\n')
    result = run_cli(["ask", "--models-file", str(models), "-m", "tiny", "-n", "2", "hi"])
    assert (result.exit_code, result.stderr) == (0, "")
    assert (home / "data" / "history.db").is_file()


def test_the_history_of_a_pseudo_file_system_is_not_called_full(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """/proc has no free blocks, and is no full disk: the error says what the system said."""
    if not Path("/proc/self").is_dir():
        pytest.skip("no /proc here")
    from chatcli.errors import ChatcliError
    from chatcli.store import Store

    path = Path("/proc/chatcli-data/history.db")
    with pytest.raises(ChatcliError) as err:
        Store.open(path)
    assert (err.value.message, err.value.hint) == (
        f"cannot open the history database {path}: No such file or directory",
        "check the permissions of its folder, or set CHATCLI_HOME to another one")


def test_a_chatcli_home_that_cannot_be_looked_into(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A folder on the way that this user may not enter (root enters any: the check is
    made to fail as the system fails it for others)."""
    locked = tmp_path / "locked"
    real = Path.exists

    def exists(self: Path, *args: Any, **kwargs: Any) -> bool:
        if self.is_relative_to(locked) and self != locked:
            raise PermissionError(13, "Permission denied", str(self))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "exists", exists)
    monkeypatch.setenv("CHATCLI_HOME", str(locked / "home"))
    result = run_cli(["ask", "hi"])
    assert (result.exit_code, result.stdout) == (1, "")
    assert result.stderr == (f"error: CHATCLI_HOME={locked / 'home'} cannot be used: "
                             f"Permission denied; {HOME_HINT}")
