"""The compiled decode step built for the user in the background (`chatcli.autocompile`).

Every other test runs with CHATCLI_AUTO_COMPILE=0 (conftest.py); these unset it. Most
replace the build itself by a stand-in that the builder process loads through a
`sitecustomize` module (the real `start()` and `python -m chatcli.autocompile` run, in
their own processes; only `chatcli.loader.compile_folder` is replaced): it reports how
it runs, prints compiler-like noise, waits for the test's go and then builds a package,
fails, or runs out of disk. One slow test builds the real package of the tiny model
(quick options) from a pseudo-terminal.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from chatcli import autocompile
from conftest import Tiny, run_cli
from screen import ROOT, Terminal

QUESTION = ["ask", "-m", "q4", "-n", "12", "hello there"]

FAKE = '''
import json, os, sys, time
from pathlib import Path

CONTROL = Path(os.environ["CHATCLI_TEST_FAKE_BUILD"])

def fake_compile_folder(alias, folder, runtime, reporter, autotune=True):
    import errno
    from chatcli import paths
    from chatcli.loader import compiled_package
    path = compiled_package(folder, runtime)
    with open("/proc/self/stat") as f:
        tty = int(f.read().rsplit(")", 1)[1].split()[4])
    facts = {"pid": os.getpid(), "alias": alias, "folder": str(folder),
             "threads": runtime.threads, "dtype": runtime.dtype, "quantize": runtime.quantize,
             "autotune": autotune, "policy": os.sched_getscheduler(0),
             "nice": os.getpriority(os.PRIO_PROCESS, 0), "sid": os.getsid(0),
             "pgid": os.getpgid(0), "tty": tty,
             "fds": [os.readlink(f"/proc/self/fd/{fd}") for fd in (0, 1, 2)],
             "tmpdir": os.environ.get("TMPDIR"),
             "autogroup": open("/proc/self/autogroup").read().split()[-1]
             if os.path.exists("/proc/self/autogroup") else None,
             "compile_threads": os.environ.get("TORCHINDUCTOR_COMPILE_THREADS")}
    print("COMPILER NOISE on stdout", flush=True)
    print("COMPILER NOISE on stderr", file=sys.stderr, flush=True)
    work = path.parent / f".{path.name}.build-fake"
    (work / "inductor").mkdir(parents=True, exist_ok=True)
    (work / "inductor" / "kernel.so").write_bytes(b"half")
    partial = CONTROL / f"facts-{os.getpid()}.partial"
    partial.write_text(json.dumps(facts))
    os.replace(partial, CONTROL / f"facts-{os.getpid()}.json")
    deadline = time.monotonic() + 60
    while not (CONTROL / "go").exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    print("MORE COMPILER NOISE, after chatcli ended", file=sys.stderr, flush=True)
    mode = (CONTROL / "mode").read_text().strip() if (CONTROL / "mode").exists() else "build"
    if mode == "disk-full":
        raise paths.cache_write_error("the compiled decode step", path.parent, errno.ENOSPC)
    if mode == "fail":
        raise RuntimeError("C++ compile error\\nmore lines")
    import shutil
    shutil.rmtree(work)
    from chatcli.lm.package_key import expected_fields, folder_fingerprint, key_path
    path.write_bytes(b"package")
    mode_name = f"{runtime.dtype}/{runtime.quantize}"
    key = {**expected_fields(folder_fingerprint(folder), mode_name), "package_bytes": 7}
    key_path(path).write_text(json.dumps(key))
    with (CONTROL / "built").open("a") as f:
        f.write(f"{os.getpid()}\\n")
    return path, key, 0.0

if os.environ.get("CHATCLI_TEST_FAKE_BUILD"):
    import chatcli.loader
    chatcli.loader.compile_folder = fake_compile_folder
'''


def _alias(home: Path, tiny: Tiny, extra: str = "") -> None:
    with (home / "models.toml").open("a") as f:
        f.write(f'\n[models.q4]\nsource = "path"\npath = "{tiny.folder}"\n'
                f'dtype = "float32"\nquantize = "int4"\n{extra}')


def _package(home: Path, tiny: Tiny) -> Path:
    """Where q4's package lives in `home` (float32, int4)."""
    from chatcli.loader import compiled_package
    from chatcli.runtime import Runtime

    return home / "cache" / "compiled" / compiled_package(
        tiny.folder, Runtime("cpu", "float32", None, "int4")).name


class Builds:
    """The stand-in build's control folder: what each builder process reported."""

    def __init__(self, control: Path) -> None:
        self.control = control

    def facts(self) -> list[dict[str, Any]]:
        return [json.loads(p.read_text()) for p in sorted(self.control.glob("facts-*.json"))]

    def wait_started(self, count: int = 1, timeout: float = 60) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while len(self.facts()) < count:
            assert time.monotonic() < deadline, "no background build started"
            time.sleep(0.05)
        return self.facts()

    def go(self, mode: str = "build") -> None:
        (self.control / "mode").write_text(mode)
        (self.control / "go").touch()

    def built(self) -> list[int]:
        done = self.control / "built"
        return [int(line) for line in done.read_text().split()] if done.exists() else []


@pytest.fixture
def auto(home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Builds]:
    """Background builds on (the tests' opt-out removed), the stand-in build loaded by
    every chatcli process started from here; builders left running end with the test."""
    control = tmp_path / "control"
    control.mkdir()
    (control / "sitecustomize.py").write_text(FAKE)
    monkeypatch.delenv("CHATCLI_AUTO_COMPILE")
    monkeypatch.setenv("CHATCLI_TEST_FAKE_BUILD", str(control))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(control), str(ROOT)]))
    monkeypatch.setattr(autocompile, "_considered", set())
    builds = Builds(control)
    yield builds
    (control / "go").touch()
    for child in autocompile._children:
        try:
            child.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait()
    autocompile._children.clear()


def _wait_for(test: Any, timeout: float = 60, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not test():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _ended(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    with open(f"/proc/{pid}/stat") as f:  # a zombie has ended too
        return f.read().rsplit(")", 1)[1].split()[0] == "Z"


# -- when a build starts ----------------------------------------------------------------------
def test_an_answer_starts_one_background_build_that_leaves_the_answer_as_it_was(
        auto: Builds, home: Path, tiny_model: Tiny, monkeypatch: pytest.MonkeyPatch) -> None:
    _alias(home, tiny_model)
    first = run_cli(QUESTION)
    assert first.exit_code == 0, first.stderr
    (facts,) = auto.wait_started()
    package = _package(home, tiny_model)
    assert {k: facts[k] for k in ("alias", "folder", "threads", "dtype", "quantize",
                                  "autotune")} == {
        "alias": "q4", "folder": str(tiny_model.folder), "threads": len(os.sched_getaffinity(0)),
        "dtype": "float32", "quantize": "int4", "autotune": True}
    # the lowest priority, its own session without a terminal, its output in the log
    assert (facts["policy"], facts["nice"]) == (os.SCHED_IDLE, 19)
    if Path("/proc/self/autogroup").exists():  # Linux groups sessions: its group at 19
        assert facts["autogroup"] == "19"
    assert facts["sid"] == facts["pgid"] == facts["pid"] != os.getsid(0)
    assert facts["tty"] == 0
    log = autocompile.log_path(package)
    assert facts["fds"] == ["/dev/null", str(log), str(log)]
    assert (facts["tmpdir"], facts["compile_threads"]) == (
        str(autocompile.temp_path(package)), "1")
    # the answer is the one given without background builds
    monkeypatch.setenv("CHATCLI_AUTO_COMPILE", "0")
    assert run_cli(QUESTION).stdout == first.stdout
    monkeypatch.delenv("CHATCLI_AUTO_COMPILE")
    # building: models list and show say so; the same process and another one start none
    assert run_cli(QUESTION).exit_code == 0
    listed = json.loads(run_cli(["models", "list", "--json"]).stdout)
    (q4,) = [item for item in listed if item["alias"] == "q4"]
    assert q4["compiled"] == {"state": "building", "mode": "float32/int4",
                              "path": str(package), "pid": facts["pid"], "log": str(log),
                              "reason": None, "automatic": True, "automatic_off": None}
    shown = run_cli(["models", "show", "q4"]).stdout.splitlines()
    assert f"compiled step      building (float32/int4) in the background (pid {facts['pid']}; " \
           f"log {log})" in shown
    autocompile._considered.clear()
    assert run_cli(QUESTION).exit_code == 0
    auto.go()
    _wait_for(lambda: _ended(facts["pid"]), what="the build to end")
    assert len(auto.facts()) == 1 and auto.built() == [facts["pid"]]
    assert not log.exists()  # removed after a success
    assert sorted(p.name for p in package.parent.iterdir()) == [
        package.name, package.name + ".json"]  # no lock, state, work or temp folder left
    listed = json.loads(run_cli(["models", "list", "--json"]).stdout)
    (q4,) = [item for item in listed if item["alias"] == "q4"]
    assert q4["compiled"]["state"] == "built"
    assert f"compiled step      built (float32/int4): {package}" in \
        run_cli(["models", "show", "q4"]).stdout.splitlines()


@pytest.mark.parametrize("setting", [
    ("env", "0"), ("top", 'compile = "never"\n'), ("alias", 'compile = "never"\n'),
    ("flag", "--quantize none")])
def test_what_switches_it_off(auto: Builds, home: Path, tiny_model: Tiny,
                              monkeypatch: pytest.MonkeyPatch, setting: tuple[str, str]) -> None:
    calls: list[Any] = []
    monkeypatch.setattr(autocompile, "start", lambda *args: calls.append(args))
    where, value = setting
    _alias(home, tiny_model, value if where == "alias" else "")
    args = QUESTION
    if where == "env":
        monkeypatch.setenv("CHATCLI_AUTO_COMPILE", value)
    elif where == "top":
        toml = home / "models.toml"
        toml.write_text(value + toml.read_text())
    elif where == "flag":
        args = [*QUESTION, *value.split()]
    result = run_cli(args)
    assert result.exit_code == 0, result.stderr
    assert calls == []
    if where == "flag":
        return
    shown = json.loads(run_cli(["models", "show", "q4", "--json"]).stdout)
    off = "CHATCLI_AUTO_COMPILE=0" if where == "env" else 'compile = "never" in models.toml'
    assert (shown["compiled"]["automatic"], shown["compiled"]["automatic_off"]) == (False, off)
    assert shown["compile"] == ("auto" if where == "env" else "never")
    line = [x for x in run_cli(["models", "show", "q4"]).stdout.splitlines()
            if x.startswith("compiled step")]
    assert line == [f"compiled step      not built (float32/int4); automatic builds are off "
                    f"({off}): 'chatcli compile q4' builds it"]


def test_an_alias_that_says_auto_wins_over_the_top_level(
        auto: Builds, home: Path, tiny_model: Tiny, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[Any] = []
    monkeypatch.setattr(autocompile, "start", lambda *args: calls.append(args))
    _alias(home, tiny_model, 'compile = "auto"\n')
    toml = home / "models.toml"
    toml.write_text('compile = "never"\n' + toml.read_text())
    assert run_cli(QUESTION).exit_code == 0
    assert [(alias, runtime.quantize) for alias, _, runtime, _ in calls] == [("q4", "int4")]


def test_a_bad_setting_is_one_error_line(home: Path, tiny_model: Tiny) -> None:
    toml = home / "models.toml"
    toml.write_text('compile = "yes"\n' + toml.read_text())
    result = run_cli(["models", "list"])
    assert (result.exit_code, result.stdout) == (1, "")
    assert result.stderr == (
        f"error: {toml}:1: 'compile' must be \"auto\" or \"never\" (got 'yes'); hint: "
        'compile = "never" stops chatcli building compiled decode steps in the background\n')
    toml.write_text(toml.read_text().replace('compile = "yes"\n', ""))
    _alias(home, tiny_model, "compile = false\n")
    line = toml.read_text().splitlines().index("compile = false") + 1
    result = run_cli(["models", "list"])
    assert (result.exit_code, result.stdout) == (1, "")
    assert result.stderr == (f"error: {toml}:{line}: [models.q4] 'compile' must be a string, "
                             "got False; hint: fix 'compile'\n")
    toml.write_text(toml.read_text().replace("compile = false", 'compile = "sometimes"'))
    result = run_cli(["models", "list"])
    assert result.stderr == (
        f"error: {toml}:{line}: [models.q4] 'compile' must be \"auto\" or \"never\" (got "
        "'sometimes'); hint: compile = \"never\" stops chatcli building its compiled decode "
        "step in the background\n")


def test_a_failed_build_is_recorded_and_not_tried_again_until_versions_change(
        auto: Builds, home: Path, tiny_model: Tiny, monkeypatch: pytest.MonkeyPatch) -> None:
    _alias(home, tiny_model)
    assert run_cli(QUESTION).exit_code == 0
    (facts,) = auto.wait_started()
    auto.go("disk-full")
    _wait_for(lambda: _ended(facts["pid"]), what="the build to end")
    package = _package(home, tiny_model)
    compiled = package.parent
    log = autocompile.log_path(package)
    state = autocompile.read_state(package)
    from chatcli.paths import mount_point

    reason = (f"cannot write the compiled decode step to {compiled}: the disk mounted at "
              f"{mount_point(compiled)} is full; free some space on it, or set CHATCLI_HOME "
              "to a folder on another disk")
    assert {k: state[k] for k in ("state", "reason", "log")} == {
        "state": "failed", "reason": reason, "log": str(log)}
    said = log.read_text()
    assert "COMPILER NOISE on stderr" in said and "CacheWriteError" in said  # the traceback
    # nothing half-made is left: no package, no work or temp folder, no lock
    assert sorted(p.name for p in compiled.iterdir()) == [log.name, package.name +
                                                         ".state.json"]
    shown = run_cli(["models", "show", "q4"]).stdout.splitlines()
    assert (f"compiled step      failed (float32/int4): {reason} (log {log}); 'chatcli "
            "compile q4' tries again") in shown
    autocompile._considered.clear()
    calls: list[Any] = []
    monkeypatch.setattr(autocompile, "start", lambda *args: calls.append(args))
    assert run_cli(QUESTION).exit_code == 0
    assert calls == []  # not tried again with the same torch and chatcli
    import chatcli

    monkeypatch.setattr(chatcli, "__version__", chatcli.__version__ + ".1")
    autocompile._considered.clear()
    assert run_cli(QUESTION).exit_code == 0
    assert len(calls) == 1  # a new chatcli tries again


def test_a_current_package_that_does_not_load_is_not_rebuilt_on_its_own(
        auto: Builds, home: Path, tiny_model: Tiny, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from chatcli.lm import compiled
    from chatcli.lm.llama import NativeCausalLM

    _alias(home, tiny_model)
    model = NativeCausalLM.from_folder(tiny_model.folder, torch.float32, "cpu")
    model.quantize("int4")
    package = _package(home, tiny_model)
    package.parent.mkdir(parents=True)
    package.write_bytes(b"not a package")
    key = {**compiled.expected_key(model, compiled.folder_fingerprint(tiny_model.folder)),
           "package_bytes": 13, "package_sha256": "0" * 64}
    compiled.key_path(package).write_text(json.dumps(key))
    calls: list[Any] = []
    monkeypatch.setattr(autocompile, "start", lambda *args: calls.append(args))
    result = run_cli(QUESTION)
    assert result.exit_code == 0, result.stderr
    assert result.stderr.splitlines()[-1] == (
        f"chatcli: The compiled decode step of 'q4' is not used (the compiled decode step "
        f"{package} is damaged (its content differs from what was built)); run 'chatcli "
        "compile q4' again")
    assert calls == []
    # a stale one (another torch) is rebuilt
    compiled.key_path(package).write_text(json.dumps({**key, "torch": "2.0.0"}))
    autocompile._considered.clear()
    assert run_cli(QUESTION).exit_code == 0
    assert len(calls) == 1
    shown = json.loads(run_cli(["models", "show", "q4", "--json"]).stdout)["compiled"]
    assert (shown["state"], shown["reason"]) == (
        "not built", "the package there is stale: torch changed")


# -- the lock ---------------------------------------------------------------------------------
def _holding(package: Path, background: bool = True) -> subprocess.Popen[str]:
    """Another process holding the package's lock (in its own session), until killed."""
    code = ("import sys, time\nfrom pathlib import Path\nfrom chatcli import autocompile\n"
            f"lock = autocompile.BuildLock(Path({str(package)!r}))\n"
            f"assert lock.acquire(background={background})\n"
            "print('held', flush=True)\ntime.sleep(120)\n")
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                             start_new_session=True)
    assert child.stdout is not None and child.stdout.readline() == "held\n"
    return child


def test_a_running_build_holds_the_lock_and_a_dead_ones_lock_is_taken_over(
        auto: Builds, home: Path, tiny_model: Tiny, monkeypatch: pytest.MonkeyPatch) -> None:
    _alias(home, tiny_model)
    package = _package(home, tiny_model)
    calls: list[Any] = []
    monkeypatch.setattr(autocompile, "start", lambda *args: calls.append(args))
    holder = _holding(package)
    try:
        assert autocompile.holder(package) == (holder.pid, True)
        assert run_cli(QUESTION).exit_code == 0
        assert calls == []
    finally:
        holder.kill()
        holder.wait()
    # killed: its lock file stays, with its pid, and is free
    assert autocompile.lock_path(package).read_text() == f"{holder.pid} background\n"
    assert autocompile.holder(package) is None
    autocompile._considered.clear()
    assert run_cli(QUESTION).exit_code == 0
    assert len(calls) == 1
    lock = autocompile.BuildLock(package)
    assert lock.acquire(background=True)
    assert autocompile.lock_path(package).read_text() == f"{os.getpid()} background\n"
    lock.release()
    assert not autocompile.lock_path(package).exists()


def test_two_answers_at_once_start_one_build(auto: Builds, home: Path,
                                             tiny_model: Tiny) -> None:
    _alias(home, tiny_model)
    env = {**os.environ, "CHATCLI_HOME": str(home), "HF_HUB_OFFLINE": "1"}
    asks = [subprocess.Popen([sys.executable, "-m", "chatcli", *QUESTION], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for _ in range(2)]
    outputs = [ask.communicate(timeout=120) for ask in asks]
    assert [ask.returncode for ask in asks] == [0, 0], outputs
    assert outputs[0][0] == outputs[1][0]
    time.sleep(1.0)  # a second builder, if one was started, has reached its lock by now
    auto.go()
    (facts,) = auto.wait_started()
    _wait_for(lambda: auto.built() != [], what="the build")
    time.sleep(0.5)
    assert len(auto.facts()) == 1 and auto.built() == [facts["pid"]]


def test_a_builder_killed_mid_build_leaves_nothing_used_and_the_next_one_cleans_up(
        auto: Builds, home: Path, tiny_model: Tiny, monkeypatch: pytest.MonkeyPatch) -> None:
    _alias(home, tiny_model)
    package = _package(home, tiny_model)
    work = package.parent / f".{package.name}.build-fake"
    for attempt in range(1, autocompile.MAX_ATTEMPTS + 1):
        autocompile._considered.clear()
        result = run_cli(QUESTION)
        assert result.exit_code == 0, result.stderr
        facts = auto.wait_started(attempt)[-1]
        os.killpg(facts["pid"], signal.SIGKILL)
        _wait_for(lambda pid=facts["pid"]: _ended(pid), what="the kill")
        assert not package.exists()
        assert autocompile.holder(package) is None  # its lock is free
        assert autocompile.read_state(package)["attempts"] == attempt
        assert (work / "inductor" / "kernel.so").exists()  # what a killed build leaves
        status = json.loads(run_cli(["models", "show", "q4", "--json"]).stdout)["compiled"]
        if attempt < autocompile.MAX_ATTEMPTS:
            assert (status["state"], status["reason"]) == ("not built", None)
        answer = run_cli(QUESTION)  # never the half-built package
        assert answer.stdout == result.stdout and "compiled" not in answer.stderr
    assert (status["state"], status["reason"]) == (
        "failed", "the background build stopped 3 times before it finished (killed, or out "
        "of memory?)")
    autocompile._considered.clear()
    assert run_cli(QUESTION).exit_code == 0
    time.sleep(1.0)
    assert len(auto.facts()) == autocompile.MAX_ATTEMPTS  # not started a fourth time
    # chatcli compile builds it, once what the killed builds left is removed
    seen: list[bool] = []
    monkeypatch.setattr("chatcli.loader.compile_folder", _built_here(package, seen, work))
    result = run_cli(["compile", "q4"])
    assert (result.exit_code, result.stderr) == (0, "")
    assert seen == [False]
    assert sorted(p.name for p in package.parent.iterdir()) == [
        package.name, package.name + ".json"]
    assert json.loads(run_cli(["models", "show", "q4", "--json"]).stdout)["compiled"][
        "state"] == "built"


def _built_here(package: Path, seen: list[bool], work: Path) -> Any:
    """A stand-in for `compile_folder` in this process: writes a package with a current
    key; `seen` gets whether `work` (a killed build's leftovers) was still there."""
    from chatcli.lm.package_key import expected_fields, folder_fingerprint, key_path

    def build(alias: str, folder: Path, runtime: Any, reporter: Any,
              autotune: bool = True) -> tuple[Path, dict[str, Any], float]:
        seen.append(work.exists())
        package.write_bytes(b"package")
        key = {**expected_fields(folder_fingerprint(folder), "float32/int4"),
               "package_bytes": 7_000_000}
        key_path(package).write_text(json.dumps(key))
        return package, key, 1.0

    return build


def test_chatcli_compile_stops_a_background_build_and_builds_in_front(
        auto: Builds, home: Path, tiny_model: Tiny, monkeypatch: pytest.MonkeyPatch) -> None:
    _alias(home, tiny_model)
    package = _package(home, tiny_model)
    work = package.parent / f".{package.name}.build-fake"
    assert run_cli(QUESTION).exit_code == 0
    (facts,) = auto.wait_started()  # waiting for a go that does not come
    (background,) = autocompile._children
    seen: list[bool] = []
    monkeypatch.setattr("chatcli.loader.compile_folder", _built_here(package, seen, work))
    result = run_cli(["compile", "q4", "--quick"])
    assert background.wait(timeout=30) == 0  # it stopped as asked (SIGTERM), not killed
    assert result.exit_code == 0, result.stderr
    assert result.stderr == (
        f"chatcli: A background build of this step is running (pid {facts['pid']}); stopping "
        "it to build here\n")
    assert result.stdout == f"q4: decode step compiled (float32/int4) in 1 s, 7 MB at {package}\n"
    assert seen == [False] and auto.built() == []
    assert sorted(p.name for p in package.parent.iterdir()) == [
        package.name, package.name + ".json"]


def test_chatcli_compile_waits_for_another_chatcli_compile(
        home: Path, tiny_model: Tiny, monkeypatch: pytest.MonkeyPatch) -> None:
    _alias(home, tiny_model)
    package = _package(home, tiny_model)
    holder = _holding(package, background=False)
    shown = run_cli(["models", "show", "q4", "--json"])
    assert json.loads(shown.stdout)["compiled"] == {
        "state": "building", "mode": "float32/int4", "path": str(package), "pid": holder.pid,
        "log": None, "reason": None, "automatic": False,
        "automatic_off": "CHATCLI_AUTO_COMPILE=0"}
    assert (f"compiled step      building (float32/int4) by 'chatcli compile' (pid "
            f"{holder.pid})") in run_cli(["models", "show", "q4"]).stdout.splitlines()
    from chatcli import loader

    def built(*args: Any, **kwargs: Any) -> tuple[Path, dict[str, Any], float]:
        return package, {"mode": "float32/int4", "package_bytes": 7_000_000}, 1.0

    monkeypatch.setattr(loader, "compile_folder", built)
    import threading

    ended = threading.Timer(1.5, holder.kill)
    ended.start()
    try:
        result = run_cli(["compile", "q4", "--quick"])
    finally:
        ended.cancel()
        holder.kill()
        holder.wait()
    assert result.exit_code == 0, result.stderr
    assert result.stderr == (f"chatcli: Another 'chatcli compile' is building this step (pid "
                             f"{holder.pid}); waiting for it to end\n")
    assert result.stdout == f"q4: decode step compiled (float32/int4) in 1 s, 7 MB at {package}\n"


# -- what the terminal shows ------------------------------------------------------------------
def test_the_terminal_shows_nothing_of_the_build_even_after_chatcli_ends(
        auto: Builds, home: Path, tiny_model: Tiny, tmp_path: Path) -> None:
    """The builder keeps running after chatcli ends, prints to its stdout and stderr, and
    fails: the terminal shows the answer as without it, and reaches its end (no process
    holds it) while the builder still runs; what it printed is in its log."""
    _alias(home, tiny_model)
    assert run_cli(QUESTION).exit_code == 0  # quantized once, and one build started
    (first,) = auto.wait_started()
    auto.go("fail")
    _wait_for(lambda: _ended(first["pid"]), what="the first build")
    for name in ("go", "mode"):
        (auto.control / name).unlink()
    (home / "cache" / "compiled" / (_package(home, tiny_model).name + ".state.json")).unlink()
    env = {"PYTHONPATH": os.environ["PYTHONPATH"]}
    without = Terminal(home, QUESTION, env={**env, "CHATCLI_AUTO_COMPILE": "0"})
    assert without.finish(timeout=60) == 0
    with_build = Terminal(home, QUESTION, env=env)
    assert with_build.finish(timeout=30) == 0  # at its end while the builder waits
    (_, facts) = auto.wait_started(2)
    assert not _ended(facts["pid"])
    auto.go("fail")
    _wait_for(lambda: _ended(facts["pid"]), what="the build to end")
    assert with_build.lines() == without.lines()
    assert b"NOISE" not in with_build.raw and b"Compiling" not in with_build.raw
    log = autocompile.log_path(_package(home, tiny_model)).read_text()
    for noise in ("COMPILER NOISE on stdout", "COMPILER NOISE on stderr",
                  "MORE COMPILER NOISE, after chatcli ended", "RuntimeError: C++ compile error"):
        assert noise in log


@pytest.mark.slow
def test_a_real_background_build_of_the_tiny_model(
        home: Path, tiny_model: Tiny, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """From a terminal, as a user: the answer, the build in the background (quick options:
    a minute here) leaving the temp folder empty, answers unchanged while it runs, then
    the next answer decodes through the package with the same tokens."""
    _alias(home, tiny_model)
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR")  # chatcli's processes use the default
    monkeypatch.setattr(autocompile, "_considered", set())
    temp = tmp_path / "temp"
    temp.mkdir()
    plain = run_cli([*QUESTION, "--stats"])  # quantized once; no build (the tests' setting)
    assert plain.exit_code == 0, plain.stderr
    assert plain.stderr.splitlines()[-1].endswith(" implementation=native+int4")
    package = _package(home, tiny_model)
    env = {"TMPDIR": str(temp)}
    without = Terminal(home, QUESTION, env={**env, "CHATCLI_AUTO_COMPILE": "0"})
    assert without.finish() == 0
    starting = Terminal(home, QUESTION, env={**env, "CHATCLI_AUTO_COMPILE": "quick"})
    assert starting.finish() == 0
    assert starting.lines() == without.lines()
    _wait_for(lambda: autocompile.holder(package) is not None, what="the build to start")
    meanwhile = Terminal(home, QUESTION, env={**env, "CHATCLI_AUTO_COMPILE": "quick"})
    assert meanwhile.finish() == 0
    assert meanwhile.lines() == without.lines()
    _wait_for(lambda: autocompile.holder(package) is None, timeout=600, what="the build")
    assert list(temp.iterdir()) == []
    assert sorted(p.name for p in package.parent.iterdir()) == [
        package.name, package.name + ".json", package.name + ".unpacked"]
    listed = json.loads(run_cli(["models", "list", "--json"]).stdout)
    assert [item["compiled"]["state"] for item in listed if item["alias"] == "q4"] == ["built"]
    after = run_cli([*QUESTION, "--stats"])
    assert after.exit_code == 0, after.stderr
    assert after.stderr.splitlines()[-1].endswith(" implementation=native+int4+compiled")
    assert after.stdout == plain.stdout  # float32: the eager int4 model's tokens
