"""The compiled decode step, built for the user: in the background after an answer, or
now with `chatcli compile`; one build of a package at a time.

Contract:
- `after_answer(backend)`: ask and chat call it once an answer is shown. It starts a
  background build of the model's compiled decode step when all hold: a local model on
  chatcli's native forward pass, on the CPU, in a quantized mode; its load found no
  package whose key is current for this model x mode x CPU x torch (the key decides:
  `chatcli.lm.compiled.expected_key`; a package with a current key that does not load
  is never rebuilt on its own: the load's note tells the user to run `chatcli compile`);
  automatic builds are on (`compile = "never"` in models.toml, at the top level or per
  alias, and CHATCLI_AUTO_COMPILE=0 switch them off); no build of that package runs
  now (its lock is free); and none failed for this torch and chatcli version (a failure
  is tried again after either changes, or after `chatcli compile`), nor was stopped
  `MAX_ATTEMPTS` times before it finished. Once per package per process; never
  raises; prints nothing; costs a few milliseconds (one process started, not waited
  for).
- The background build is `python -m chatcli.autocompile FOLDER ...` (`main`): its own
  session (the terminal's Ctrl-C and hang-up never reach it; it has no controlling
  terminal), stdin /dev/null and stdout/stderr the package's log file (never the
  terminal), the lowest priority (SCHED_IDLE where the system has it, which also puts
  its disk reads in the idle I/O class, nice 19, and its session's autogroup at nice
  19: set by the process that starts it as soon as it exists, before its interpreter
  is up, and again by itself), one
  inductor compile worker, and the intra-op threads answers use (inductor compiles
  that count into the kernels: fewer would give a slower step): it takes CPU time only
  when nothing else wants it.
  Its temp folder (TMPDIR) is a folder beside the package, removed when it ends;
  CHATCLI_AUTO_COMPILE=quick builds without autotuning (the tests' setting).
- Files beside the package `<key>.pt2` in chatcli's cache: `<key>.pt2.lock` (held
  with flock by the build for its whole life, its pid inside, removed at its end: the
  lock file of a builder that died is free, and taken over), `.log` (the background
  build's output, removed after a success), `.state.json` ("building" with its pid and
  how many times it started, or "failed" with the reason and the log). The package
  only appears whole (renamed into place by `chatcli.lm.compiled.build`): a builder
  killed mid-build leaves none, and the next build removes the work folders it left.
- `compile_now(spec, runtime, reporter, autotune)` is `chatcli compile`: it stops a
  background build of the same package (SIGTERM to its process group; it removes what
  it made and records nothing) and builds in the foreground under the lock, at the
  user's priority with their options; it waits for another `chatcli compile` of the
  same package instead. It clears a recorded failure (and the log) first; its own
  failure is on the user's terminal, not recorded.
- `status(spec)`, for `models list` and `models show`: the alias's compiled step in the
  mode it runs by default (`Status`: built, building, failed, not built), or None when
  there is nothing to compile (a remote alias, weights not on disk, the exact path,
  transformers' implementation); it does not import torch.

Knows nothing about the terminal, decoding, or how the step is compiled.
"""

from __future__ import annotations

import json
import os
import sys
import time
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ENV = "CHATCLI_AUTO_COMPILE"
MAX_ATTEMPTS = 3
"""A build stopped this many times before it finished (killed, out of memory, the machine
turned off) counts as failed."""
_OFF = ("0", "never", "off", "no", "false")
_considered: set[Path] = set()  # packages this process has looked at after an answer
_children: list[Any] = []  # builders started by this process, until reaped


# -- the files beside a package ---------------------------------------------------------------
def _beside(package: Path, suffix: str) -> Path:
    return package.with_name(package.name + suffix)


def lock_path(package: Path) -> Path:
    return _beside(package, ".lock")


def log_path(package: Path) -> Path:
    return _beside(package, ".log")


def state_path(package: Path) -> Path:
    return _beside(package, ".state.json")


def temp_path(package: Path) -> Path:
    """The background build's temp folder (TMPDIR)."""
    return _beside(package, ".tmp")


def read_state(package: Path) -> dict[str, Any]:
    try:
        data = json.loads(state_path(package).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_state(package: Path, state: dict[str, Any]) -> None:
    target = state_path(package)
    tmp = target.with_name(f".{target.name}.{os.getpid()}")
    try:
        tmp.write_text(json.dumps(state, indent=1) + "\n")
        os.replace(tmp, target)
    except OSError:
        tmp.unlink(missing_ok=True)


def versions() -> dict[str, str]:
    """What a recorded failure is tied to: the torch and chatcli versions."""
    import chatcli
    from chatcli.lm.package_key import torch_version

    return {"torch": torch_version(), "chatcli": chatcli.__version__}


def _same_versions(state: dict[str, Any]) -> bool:
    return all(state.get(k) == v for k, v in versions().items())


# -- the lock ---------------------------------------------------------------------------------
class BuildLock:
    """The package's lock: an flock on `<package>.lock`, held for the whole build (the
    kernel frees it when the holder ends, however it ends), with the holder's pid and
    whether it builds in the background written inside. The holder removes the file
    when it is done; a file left by a holder that died is free, and taken over."""

    def __init__(self, package: Path) -> None:
        self.path = lock_path(package)
        self.fd: int | None = None

    def acquire(self, background: bool, wait: float = 0.0) -> bool:
        """Take the lock (trying for `wait` seconds, at least a few times: a status check
        holds it shared for a moment); False when another build holds it."""
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + max(wait, 0.3)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                if time.monotonic() > deadline:
                    return False
                time.sleep(0.05)
                continue
            try:  # the file a releasing holder removed is not the lock any more
                if os.stat(self.path).st_ino == os.fstat(fd).st_ino:
                    break
            except FileNotFoundError:
                pass
            os.close(fd)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {'background' if background else 'foreground'}\n"
                  .encode(), 0)
        self.fd = fd
        return True

    def release(self) -> None:
        """Remove the lock file (and the cache's compiled folder, if that leaves it empty),
        then free the lock."""
        if self.fd is None:
            return
        with suppress(OSError):
            self.path.unlink()
        with suppress(OSError):
            self.path.parent.rmdir()
        os.close(self.fd)
        self.fd = None


def holder(package: Path) -> tuple[int, bool] | None:
    """(pid, whether it builds in the background) of the build holding the package's
    lock now (pid 0: not written yet); None when no build runs."""
    import fcntl

    try:
        fd = os.open(lock_path(package), os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            words = os.pread(fd, 64, 0).decode(errors="replace").split()
            pid = int(words[0]) if words and words[0].isdigit() else 0
            return pid, words[1:2] == ["background"]
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


# -- settings ---------------------------------------------------------------------------------
def env_setting() -> str:
    """CHATCLI_AUTO_COMPILE: "never" (0, never, off, no, false), "quick" (background
    builds without autotuning), else "auto" (models.toml decides)."""
    value = os.environ.get(ENV, "").strip().lower()
    if value in _OFF:
        return "never"
    return "quick" if value == "quick" else "auto"


def switched_off(spec: Any) -> str | None:
    """Why chatcli does not build the alias's step in the background (None: it does)."""
    if env_setting() == "never":
        return f"{ENV}={os.environ.get(ENV, '')}"
    if getattr(spec, "compile", None) == "never":
        return 'compile = "never" in models.toml'
    return None


# -- after an answer --------------------------------------------------------------------------
def after_answer(backend: Any) -> None:
    """Start a background build of the answering model's compiled step if it has none
    (see the module docstring); never raises, prints nothing."""
    try:
        _after_answer(backend)
    except Exception:
        if os.environ.get("CHATCLI_DEBUG", "") not in ("", "0"):
            raise


def _after_answer(backend: Any) -> None:
    for child in [c for c in _children if c.poll() is not None]:  # reaped: no zombie
        _children.remove(child)
    loaded = getattr(backend, "loaded", None)  # a local backend's LoadedModel
    if loaded is None or loaded.folder is None:
        return
    runtime = loaded.runtime
    if (runtime.device != "cpu" or runtime.quantize == "none"
            or loaded.implementation != "native" or getattr(loaded.lm, "compiled", False)):
        return
    if switched_off(loaded.spec) is not None:
        return
    from chatcli.loader import compiled_package

    package = compiled_package(loaded.folder, runtime)
    if package in _considered:
        return
    _considered.add(package)
    if _has_current_key(package, loaded) or not may_start(package):
        return
    start(loaded.spec.alias, loaded.folder, runtime, package)


def compiled_ready(loaded: Any) -> bool:
    """Whether `loaded` (a LoadedModel) runs without its compiled step while a package
    current for it is now in the cache (a resident model would load again, with it)."""
    if loaded.folder is None or getattr(loaded.lm, "compiled", False):
        return False
    runtime = loaded.runtime
    if runtime.device != "cpu" or runtime.quantize == "none" or loaded.implementation != "native":
        return False
    from chatcli.loader import compiled_package

    return _has_current_key(compiled_package(loaded.folder, runtime), loaded)


def _has_current_key(package: Path, loaded: Any) -> bool:
    """Whether the package is there with a key current for the loaded model (then it
    was loaded, or the load said why not: it is not rebuilt on its own)."""
    model = getattr(loaded.lm, "model", None)
    if model is None or not package.is_file():
        return False
    from chatcli.lm.compiled import expected_key, key_path, stale_fields

    try:
        key = json.loads(key_path(package).read_text())
        model_id = _model_id(loaded.folder, loaded.runtime)
    except (OSError, ValueError):
        return False
    return isinstance(key, dict) and not stale_fields(key, expected_key(model, model_id))


def may_start(package: Path) -> bool:
    """No build of the package runs, none failed for these versions, and none was
    stopped `MAX_ATTEMPTS` times."""
    if holder(package) is not None:
        return False
    state = read_state(package)
    if not state or not _same_versions(state):
        return True
    if state.get("state") == "failed":
        return False
    return not (state.get("state") == "building"
                and int(state.get("attempts", 0)) >= MAX_ATTEMPTS)


def start(alias: str, folder: Path, runtime: Any, package: Path) -> Any:
    """Start the background build of `package` (a `subprocess.Popen`, not waited for)."""
    import subprocess

    import chatcli

    threads = runtime.threads or _cores()
    args = [sys.executable, "-m", "chatcli.autocompile", str(folder), "--alias", alias,
            "--dtype", runtime.dtype, "--quantize", runtime.quantize,
            "--threads", str(threads)]
    if env_setting() == "quick":
        args.append("--quick")
    env = dict(os.environ)
    env["TORCHINDUCTOR_COMPILE_THREADS"] = "1"
    root = str(Path(chatcli.__file__).resolve().parent.parent)  # this chatcli, not another
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    package.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path(package), "ab") as log:
        child = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                 start_new_session=True, close_fds=True, env=env,
                                 cwd=package.parent)
    lower_priority(child.pid)  # now, not once its interpreter has started: its start-up
    # must not compete with the rest of this process
    _children.append(child)  # reaped by a later answer (a chat), or orphaned at exit
    return child


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS
        return os.cpu_count() or 1


# -- the background build ---------------------------------------------------------------------
def lower_priority(pid: int = 0) -> None:
    """Process `pid` (0: this one; and the threads and processes it starts afterwards) at
    the lowest priority: SCHED_IDLE (the kernel gives such a process the idle I/O class
    too) and nice 19, and its session's autogroup at nice 19 where Linux groups
    sessions (sched_autogroup_enabled: a session of its own otherwise takes a fair
    share of the CPU against the user's, whatever its processes' priority: measured,
    the build took 3 of every 5 CPU-seconds while an answer ran)."""
    with suppress(AttributeError, OSError):
        os.sched_setscheduler(pid, os.SCHED_IDLE, os.sched_param(0))  # type: ignore[attr-defined]
    with suppress(OSError):
        os.setpriority(os.PRIO_PROCESS, pid, 19)
    with suppress(OSError), open(f"/proc/{pid or 'self'}/autogroup", "w") as group:
        group.write("19")


def main(argv: list[str] | None = None) -> int:
    """The background builder: `python -m chatcli.autocompile FOLDER --alias A --dtype D
    --quantize Q --threads N [--quick]`. Exits 0 when built, when another build holds the
    lock, or when stopped (SIGTERM); 1 when the build failed (recorded)."""
    lower_priority()
    import argparse

    parser = argparse.ArgumentParser(prog="python -m chatcli.autocompile")
    parser.add_argument("folder", type=Path)
    parser.add_argument("--alias", required=True)
    parser.add_argument("--dtype", required=True)
    parser.add_argument("--quantize", required=True)
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)

    from chatcli import interrupts
    from chatcli.loader import compiled_package
    from chatcli.runtime import Runtime

    interrupts.install()  # SIGTERM (chatcli compile taking over) unwinds: work removed
    runtime = Runtime("cpu", args.dtype, args.threads, args.quantize)
    package = compiled_package(args.folder, runtime)
    lock = BuildLock(package)
    if not lock.acquire(background=True):
        return 0  # another build of it runs
    try:
        return _build_locked(args.alias, args.folder, runtime, package, not args.quick)
    finally:
        lock.release()


def _build_locked(alias: str, folder: Path, runtime: Any, package: Path,
                  autotune: bool) -> int:
    import tempfile

    log = log_path(package)
    with suppress(OSError):  # the log is this build's own (a builder that lost the lock
        os.truncate(log, 0)  # wrote nothing)
    if current(package, folder, runtime):  # built meanwhile (by `chatcli compile`)
        state_path(package).unlink(missing_ok=True)
        log.unlink(missing_ok=True)
        return 0
    previous = read_state(package)
    attempts = 1
    if previous.get("state") == "building" and _same_versions(previous):
        attempts = int(previous.get("attempts", 0)) + 1
    _write_state(package, {"state": "building", "pid": os.getpid(), "started": time.time(),
                           "attempts": attempts, "log": str(log), **versions()})
    remove_leftovers(package)
    temp = temp_path(package)
    temp.mkdir(exist_ok=True)
    os.environ["TMPDIR"] = str(temp)  # the compiler's files too: never the user's temp folder
    tempfile.tempdir = None
    try:
        from chatcli.loader import compile_folder
        from chatcli.ui.console import UI

        compile_folder(alias, folder, runtime, UI(), autotune)
    except KeyboardInterrupt:  # SIGTERM: `chatcli compile` takes over (or a shutdown)
        state_path(package).unlink(missing_ok=True)
        print("chatcli: stopped before the end; nothing was kept", file=sys.stderr)
        return 0
    except BaseException as exc:
        import traceback

        traceback.print_exc()
        record_failure(package, exc, log)
        return 1
    finally:
        remove_leftovers(package)
    state_path(package).unlink(missing_ok=True)
    log.unlink(missing_ok=True)
    return 0


def record_failure(package: Path, exc: BaseException, log: Path | None) -> None:
    """Record that the package's build failed (and why), for these versions."""
    from chatcli.errors import ChatcliError

    if isinstance(exc, ChatcliError):
        reason = exc.message + (f"; {exc.hint}" if exc.hint else "")
    else:
        text = str(exc).strip()
        reason = f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__
    _write_state(package, {"state": "failed", "reason": reason, "when": time.time(),
                           "log": str(log) if log is not None else None, **versions()})


def remove_leftovers(package: Path) -> None:
    """What a build killed halfway left beside the package (its work folder, inductor's
    cache in it, its temp folder); only called by the lock's holder."""
    import shutil

    for folder in (*package.parent.glob(f".{package.name}.build-*"), temp_path(package)):
        shutil.rmtree(folder, ignore_errors=True)


def current(package: Path, folder: Path, runtime: Any) -> bool:
    """Whether the package is there with a key current for the model in `folder` in
    `runtime`'s mode, here and now (torch-free: the model's shape is not compared)."""
    from chatcli.lm.package_key import expected_fields, key_path, stale_fields

    if not package.is_file():
        return False
    try:
        key = json.loads(key_path(package).read_text())
        expected = expected_fields(_model_id(folder, runtime), _mode(runtime))
    except (OSError, ValueError):
        return False
    return isinstance(key, dict) and not stale_fields(key, expected)


def _mode(runtime: Any) -> str:
    return f"{runtime.dtype}/{runtime.quantize}"


def _model_id(folder: Path, runtime: Any) -> str:
    """The weights' identity a current key records (`chatcli.loader.weights_id`): the
    folder's, or the GGUF's it reads at its stored precision; torch-free. A folder that
    does not name its GGUF raises ValueError (then no key is current)."""
    from chatcli.errors import ChatcliError
    from chatcli.loader import gguf_of, weights_id

    try:
        return weights_id(folder, gguf_of(folder, runtime))
    except ChatcliError as exc:
        raise ValueError(exc.message) from exc


# -- chatcli compile --------------------------------------------------------------------------
def compile_now(spec: Any, runtime: Any, reporter: Any,
                autotune: bool) -> tuple[Path, dict[str, Any], float]:
    """`chatcli compile`: build the alias's step here, now, under the package's lock (a
    background build of it is stopped first; another `chatcli compile` is waited for)."""
    from chatcli.loader import compile_folder, compile_target, compiled_package

    folder = compile_target(spec, runtime, reporter)
    package = compiled_package(folder, runtime)
    lock = BuildLock(package)
    if not lock.acquire(background=False):
        _take_over(package, lock, reporter)
    try:
        state_path(package).unlink(missing_ok=True)
        log_path(package).unlink(missing_ok=True)
        remove_leftovers(package)
        return compile_folder(spec.alias, folder, runtime, reporter, autotune)
    finally:
        lock.release()


def _take_over(package: Path, lock: BuildLock, reporter: Any) -> None:
    """Wait for the lock held by another build: a background one is stopped first."""
    import signal

    from chatcli.errors import ChatcliError

    held = holder(package)
    pid, background = held if held is not None else (0, False)
    if background and pid > 0:
        reporter.notify(f"A background build of this step is running (pid {pid}); stopping "
                        "it to build here")
        for sig, wait in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
            with suppress(OSError):  # OSError: it ended meanwhile
                if os.getpgid(pid) == pid:  # the builder leads its group (its compilers too)
                    os.killpg(pid, sig)
            if lock.acquire(background=False, wait=wait):
                return
    elif pid > 0:
        with reporter.busy(f"Another 'chatcli compile' is building this step (pid {pid}); "
                           "waiting for it to end"):
            while not lock.acquire(background=False, wait=1.0):
                pass
        return
    if not lock.acquire(background=False, wait=10):
        raise ChatcliError(f"another build of this step holds {lock.path}"
                           + (f" (pid {pid})" if pid else ""),
                           "wait for it to end, then run chatcli compile again")


# -- models list / show -----------------------------------------------------------------------
@dataclass(frozen=True)
class Status:
    """An alias's compiled step in the mode it runs by default."""

    state: str  # "built" | "building" | "failed" | "not built"
    mode: str  # e.g. "bfloat16/int4"
    path: Path  # the package
    pid: int | None = None  # building: the builder's (None: not known yet)
    log: str | None = None  # building, failed: the background build's log
    reason: str | None = None  # failed: why; not built: why an existing package is not used
    automatic: str | None = None  # why chatcli does not build it by itself (None: it does)
    background: bool = True  # building: in the background (else by `chatcli compile`)

    def as_dict(self) -> dict[str, Any]:
        """What `--json` says: these fields, `automatic` (whether chatcli builds it
        after an answer) and `automatic_off` (why not, or None)."""
        return {"state": self.state, "mode": self.mode, "path": str(self.path),
                "pid": self.pid, "log": self.log, "reason": self.reason,
                "automatic": self.automatic is None, "automatic_off": self.automatic}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Status:
        building_here = data["state"] == "building" and data["log"] is None
        return cls(data["state"], data["mode"], Path(data["path"]), data["pid"], data["log"],
                   data["reason"], data["automatic_off"], background=not building_here)

    def cell(self) -> str:
        """`models list`'s column."""
        return {"built": "yes", "not built": "no"}.get(self.state, self.state)

    def describe(self, alias: str) -> str:
        """`models show`'s line."""
        if self.state == "built":
            return f"built ({self.mode}): {self.path}"
        if self.state == "building" and not self.background:
            pid = f" (pid {self.pid})" if self.pid else ""
            return f"building ({self.mode}) by 'chatcli compile'{pid}"
        if self.state == "building":
            pid = f"pid {self.pid}; " if self.pid else ""
            return f"building ({self.mode}) in the background ({pid}log {self.log})"
        if self.state == "failed":
            log = f" (log {self.log})" if self.log else ""
            return (f"failed ({self.mode}): {self.reason}{log}; 'chatcli compile {alias}' "
                    "tries again")
        why = f" ({self.reason})" if self.reason else ""
        if self.automatic is None:
            return f"not built ({self.mode}){why}; chatcli builds it in the background after " \
                   "an answer"
        return (f"not built ({self.mode}){why}; automatic builds are off ({self.automatic}): "
                f"'chatcli compile {alias}' builds it")


def status(spec: Any) -> Status | None:
    """The alias's compiled step in the mode it runs by default, or None when there is
    nothing to compile (see the module docstring); never imports torch."""
    if spec.backend != "local" or spec.implementation == "transformers" \
            or spec.trust_remote_code:
        return None
    from chatcli.lm.package_key import expected_fields, key_path, stale_fields
    from chatcli.loader import compiled_package, config_folder, read_json
    from chatcli.runtime import resolve_runtime

    folder = config_folder(spec)
    if folder is None:
        return None
    runtime = resolve_runtime("cpu", "auto", None, spec.dtype, None, spec.quantize)
    if runtime.quantize == "none" or not (folder / "config.json").is_file():
        return None
    package, mode = compiled_package(folder, runtime), _mode(runtime)
    off = switched_off(spec)
    log = str(log_path(package))
    held = holder(package)
    if held is not None:  # a foreground build has no log (its output is on its terminal)
        return Status("building", mode, package, pid=held[0] or None,
                      log=log if held[1] else None, automatic=off, background=held[1])
    stale: str | None = None
    if package.is_file():
        key = read_json(key_path(package))
        try:
            fields = stale_fields(key, expected_fields(_model_id(folder, runtime), mode))
        except (OSError, ValueError):
            fields = ["model"]
        if key and not fields:
            return Status("built", mode, package, automatic=off)
        stale = (f"the package there is stale: {', '.join(fields)} changed" if key
                 else "the package there has no key")
    state = read_state(package)
    if state and _same_versions(state):
        if state.get("state") == "failed":
            return Status("failed", mode, package, log=state.get("log"),
                          reason=str(state.get("reason")), automatic=off)
        attempts = int(state.get("attempts", 0))
        if state.get("state") == "building" and attempts >= MAX_ATTEMPTS:
            return Status("failed", mode, package, log=state.get("log"),
                          reason=f"the background build stopped {attempts} times before it "
                          "finished (killed, or out of memory?)", automatic=off)
    return Status("not built", mode, package, reason=stale, automatic=off)


if __name__ == "__main__":
    sys.exit(main())
