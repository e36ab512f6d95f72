"""The resident server: models stay loaded between commands, one answer per model at a time.

Contract: `Server(keep_alive, log).run()` listens on `wire.socket_path()` (0600, in a
0700 folder; refused when a live server already answers there, a stale socket file is
replaced) until `stop()`, a "stop" frame, SIGTERM, SIGHUP or Ctrl-C (a clean stop, in
the main thread's own time), and removes its socket on the way out. Each connection
is served by its own thread:

* "hello" first: both ends say their `wire.VERSION` (the client decides what a
  mismatch means); a peer of another user id is closed at once.
* "defaults" (spec): the alias's generation_config.json as read before loading (the
  client resolves its settings with it), answered at once.
* "open" (spec, device, dtype, threads, quantize): the alias is loaded with the local
  backend exactly as a command loads it in-process (`LocalBackend.runtime_for`, then
  `open`), once per spec and runtime, and kept; what the load reports (notes, warnings,
  busy steps) goes to the client as frames. The answer is a handle and what the client
  needs to know of the model.
* "call" (handle, method, ...): counting, checks, token text, prompt text, attention,
  distributions — the local backend's own methods. Those that read the tokenizer only
  (`wire.FREE_CALLS`) are answered at once; the others wait for the model like an answer.
* "stream" / "alternative": "started" once the request is accepted (a bad constraint is
  refused before), then the answer's `StepEvent`s, one frame each with the stats so far
  and the prompt tokens the cache reused, and on the last one what the generation
  found (hypotheses, pruned beams, whether the constraint was met); "end" only where no
  event carried a finish reason. A client that goes away mid-answer stops the
  generation at the next token, and the prompt cache is forgotten (as an interrupted
  answer's is in-process).

One answer at a time: every load, answer and forward pass runs on the model thread,
the process's main thread (`Worker`: torch's OpenMP team stays the same one whichever
client asks; connections are accepted and read by threads of their own), in the order
asked; a request that must wait gets a "waiting" frame first (the client says so on
stderr). The server keeps no conversation: every request carries
its packed prompt, and the local backend's prompt cache reuses the longest token prefix
it still holds. A model no connection holds is unloaded after its keep-alive without a
request (the alias's own `keep_alive` in models.toml, else the server's `keep_alive`
seconds; 0: at once; None: never). After each answer the local backend's
background build of a missing compiled step starts as after an in-process answer
(`chatcli.autocompile.after_answer`); a resident model whose compiled step became
ready is loaded again, with it, before its next request. For a runtime without
--threads, torch's threads are the cores other processes leave free
(`chatcli.runtime.BusyMeter`, windows of 0.6 s), as a command in-process decides them
at its start: before each answer, from the last window less the client's own start-up
(its pid from the socket), and again during the answer each time a window lies inside
it (a neighbour that came or went).

Knows nothing about the terminal; it writes one log line per event to `log`.
"""

from __future__ import annotations

import dataclasses
import gc
import os
import queue
import socket
import stat
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from typing import Any, TextIO

from chatcli.errors import ChatcliError, UsageError
from chatcli.serve import wire


@dataclass
class Resident:
    """One loaded model (a `LocalBackend`) and who uses it."""

    key: str
    alias: str
    backend: Any
    runtime: Any
    keep_alive: float | None  # seconds idle before it is unloaded (None: never)
    users: int = 0  # connections that opened it and are still open
    last_used: float = field(default_factory=time.monotonic)
    busy: str = ""  # what it is doing now, for "waiting" and status


class Worker:
    """Runs the server's torch work (loads, answers, forward passes) in the thread that
    calls `serve` (the main thread), one job at a time in the order asked.

    OpenMP keeps a team of threads per calling thread: torch called from each
    connection's own thread would start a new team per client, and teams left behind
    can spin on the cores the answering one needs. (On the 2-core Xeon, decode measured
    the same within noise either way; docs/benchmarks.md has the served figures.)"""

    def __init__(self) -> None:
        self.jobs: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self.pending = 0  # jobs queued or running
        self.current = ""  # what the running job does, for "waiting" ("tiny is answering")
        self._count = threading.Lock()

    def serve(self, stopping: threading.Event) -> None:
        """Run jobs in this thread (the process's main thread) until `stopping` is set
        and `wake()` was called.

        The wait has no time-out: CPython 3.11's `SimpleQueue.get(timeout=...)`, once a
        signal handler has run during it past its deadline, waits for ever (a negative
        time left is taken as "no limit"); a SIGTERM then left the server running."""
        while not stopping.is_set():
            job = self.jobs.get()
            if job is not None:
                job()

    def wake(self) -> None:
        """End the wait for a job (`serve` then looks at `stopping`); safe in a signal
        handler (`SimpleQueue.put` is reentrant)."""
        self.jobs.put(None)

    def run(self, fn: Callable[[], Any], what: str) -> Any:
        """`fn()` on the worker, from a connection's thread: its value, or its exception."""
        done = threading.Event()
        box: dict[str, Any] = {}

        def job() -> None:
            self.current = what
            try:
                box["value"] = fn()
            except BaseException as exc:  # raised again in the asking thread
                box["error"] = exc
            finally:
                self.current = ""
                with self._count:
                    self.pending -= 1
                done.set()

        with self._count:
            self.pending += 1
        self.jobs.put(job)
        done.wait()
        if "error" in box:
            raise box["error"]
        return box.get("value")


class Reporter:
    """The loader's reporter (`notify`, `warn`, `busy`), forwarded to the client."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def notify(self, message: str) -> None:
        wire.send(self.sock, "note", message)

    def warn(self, message: str) -> None:
        wire.send(self.sock, "warn", message)

    @contextmanager
    def busy(self, message: str) -> Iterator[None]:
        wire.send(self.sock, "busy", message)
        try:
            yield
        finally:
            wire.send(self.sock, "idle")


class Server:
    def __init__(self, keep_alive: float | None = 300.0, log: TextIO | None = None) -> None:
        self.keep_alive = keep_alive
        self.log_file = log
        self.models: dict[str, Resident] = {}
        self.loading = threading.Lock()  # one load at a time; guards `models`
        self.stopping = threading.Event()
        self.path = wire.socket_path()
        self.started = time.time()
        self.handles = 0
        self.requests = 0
        self.reloaded: set[str] = set()  # keys loaded again for their compiled step
        self.worker = Worker()
        from chatcli.runtime import BusyMeter

        # what other processes keep busy, for torch's threads (windows of 0.6 s: the
        # reaper ticks every 0.2 s)
        self.meter = BusyMeter(window=0.5)
        self.inode = -1  # the socket file this server made (removed on the way out)

    # -- life -------------------------------------------------------------------------
    def log(self, message: str) -> None:
        if self.log_file is not None:
            stamp = time.strftime("%H:%M:%S")
            # (RuntimeError: a signal handler that logs while this thread was writing)
            with suppress(OSError, ValueError, RuntimeError):
                print(f"{stamp} {message}", file=self.log_file, flush=True)

    def bind(self) -> socket.socket:
        from chatcli import paths

        try:
            paths.make_private_dir(self.path.parent)
        except OSError as exc:
            raise ChatcliError(f"cannot make the server's folder {self.path.parent}: "
                               f"{exc.strerror or exc}", paths.HOME_HINT) from None
        problem = wire.owner_problem(self.path)
        if problem is None:
            from chatcli.serve.client import Connection

            try:
                with Connection(self.path, timeout=2.0) as other:
                    pid = other.pid
            except (OSError, ChatcliError):
                self.path.unlink(missing_ok=True)  # stale: nobody answers there
            else:
                raise UsageError(f"a chatcli server already runs (pid {pid}) at {self.path}",
                                 "use it as it is, or stop it first: chatcli serve --stop")
        elif problem != "missing":
            raise ChatcliError(f"cannot listen at {self.path}: {problem}",
                               "remove that file if it is not yours to keep")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            with wire.reachable(self.path) as name:
                sock.bind(name)
        finally:
            os.umask(old)
        os.chmod(self.path, 0o600)
        self.inode = os.lstat(self.path).st_ino
        sock.listen(16)
        return sock

    def run(self) -> None:
        listener = self.bind()
        listener.settimeout(0.25)
        self.log(f"chatcli server {wire.VERSION} (pid {os.getpid()}) listening at {self.path}; "
                 f"keep-alive {_duration(self.keep_alive)}")
        reaper = threading.Thread(target=self._reap, name="chatcli-reaper", daemon=True)
        reaper.start()
        threading.Thread(target=self._accept, args=(listener,), name="chatcli-accept",
                         daemon=True).start()
        restore = self._stop_on_signals()
        try:
            self.worker.serve(self.stopping)  # the model thread is the main thread
        finally:
            restore()
            listener.close()
            self._remove_socket()
            self.log("stopped")

    def _accept(self, listener: socket.socket) -> None:
        while not self.stopping.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError as exc:
                if not self.stopping.is_set():
                    self.log(f"stopping: the socket failed ({exc})")
                    self.stop()
                return
            conn.settimeout(None)
            threading.Thread(target=self._serve, args=(conn,), name="chatcli-client",
                             daemon=True).start()

    def stop(self) -> None:
        self.stopping.set()
        self.worker.wake()

    def _stop_on_signals(self) -> Callable[[], None]:
        """Ctrl-C, SIGTERM and SIGHUP stop the accept loop (a clean stop: exit code 0)
        instead of raising wherever the main thread happens to be; returns the undo."""
        import signal

        if threading.current_thread() is not threading.main_thread():
            return lambda: None
        names = [n for n in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, n)]
        saved = {getattr(signal, n): signal.getsignal(getattr(signal, n)) for n in names}

        def handler(signum: int, frame: Any) -> None:
            self.log(f"stopping ({signal.Signals(signum).name})")
            self.stop()

        for sig in saved:
            signal.signal(sig, handler)

        def restore() -> None:
            for sig, old in saved.items():
                signal.signal(sig, old)

        return restore

    def _remove_socket(self) -> None:
        """Remove the socket if it is still ours (another server may have replaced it)."""
        with suppress(OSError):
            info = os.lstat(self.path)
            if stat.S_ISSOCK(info.st_mode) and info.st_ino == self.inode:
                self.path.unlink()

    def _reap(self) -> None:
        while not self.stopping.wait(0.2):
            self.meter.tick()
            self.unload_idle()

    def _fit_threads(self, resident: Resident, others: float | None) -> None:
        """Torch's threads for the cores that other processes (`others`: the cores they
        keep busy) leave free now, for a runtime without --threads: before an answer,
        and again during one each time a window of the meter lies inside it."""
        runtime = resident.runtime
        if runtime.threads is not None or runtime.device != "cpu" or others is None:
            return
        import torch

        from chatcli.runtime import default_threads

        threads = default_threads(others)
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
            self.log(f"{threads} threads (other processes keep {others:.1f} cores busy)")

    def unload_idle(self) -> None:
        now = time.monotonic()
        unloaded = False
        with self.loading:
            for key, resident in list(self.models.items()):
                idle = now - resident.last_used
                if (resident.users == 0 and not resident.busy and resident.keep_alive is not None
                        and idle >= resident.keep_alive):
                    del self.models[key]
                    self.log(f"unloaded {resident.alias} (idle {idle:.0f} s)")
                    resident.backend = None
                    unloaded = True
        if unloaded:
            gc.collect()

    def keep_alive_of(self, spec: Any) -> float | None:
        """The alias's own keep_alive (models.toml), else the server's."""
        own = spec.keep_alive
        if own is None:
            return self.keep_alive
        from chatcli.serve.keep_alive import duration

        return duration(own)  # checked when models.toml was read

    def status(self) -> dict[str, Any]:
        now = time.monotonic()
        return {"pid": os.getpid(), "version": wire.VERSION, "socket": str(self.path),
                "keep_alive_s": self.keep_alive, "uptime_s": round(time.time() - self.started, 1),
                "requests": self.requests,
                "models": [{"alias": r.alias, "runtime": dataclasses.asdict(r.runtime),
                            "implementation": r.backend.implementation, "users": r.users,
                            "keep_alive_s": r.keep_alive,
                            "idle_s": round(now - r.last_used, 1), "busy": r.busy or None}
                           for r in list(self.models.values())]}

    # -- one connection ----------------------------------------------------------------
    def _serve(self, sock: socket.socket) -> None:
        opened: dict[int, Resident] = {}
        try:
            pid, uid = wire.peer(sock) or (None, None)
            if uid is not None and uid != os.getuid():
                self.log(f"refused a connection of user id {uid}")
                return
            hello = wire.recv(sock)
            wire.send(sock, "hello", wire.VERSION, os.getpid())
            if hello[0] != "hello" or len(hello) < 2 or hello[1] != wire.VERSION:
                return  # the client says what a mismatch means
            while self._handle(sock, wire.recv(sock), opened, pid):
                pass
        except (OSError, wire.ServerGone):  # the client went away
            return
        finally:
            sock.close()
            with self.loading:
                for resident in opened.values():
                    resident.users -= 1
                    resident.last_used = time.monotonic()
            self.unload_idle()  # a keep-alive of 0: at once

    def _handle(self, sock: socket.socket, frame: tuple[Any, ...],
                opened: dict[int, Resident], pid: int | None = None) -> bool:
        """Answer one frame (`pid`: the client's process); False: close the connection."""
        op = frame[0]
        if op == "stop":
            wire.send(sock, "ok", None)
            self.log("stopping (chatcli serve --stop)")
            self.stop()
            return False
        if op == "status":
            wire.send(sock, "ok", self.status())
            return True
        try:
            if op == "defaults":
                from chatcli.backends.local import LocalBackend

                wire.send(sock, "ok", LocalBackend.generation_defaults(frame[1])[0])
            elif op == "open":
                handle, resident = self._open(sock, *frame[1:])
                opened[handle] = resident
                wire.send(sock, "opened", handle, _describe(resident.backend))
            elif op in ("call", "stream", "alternative"):
                resident = opened.get(frame[1])
                if resident is None:
                    raise ChatcliError("the chatcli server has no such model open",
                                       "run the command again")
                if op == "call" and frame[2] in wire.FREE_CALLS:
                    wire.send(sock, "ok", _call(resident.backend, frame[2], *frame[3:]))
                elif op == "call":
                    backend = resident.backend
                    result = self._turn(sock, resident, frame[2],
                                        lambda: _call(backend, frame[2], *frame[3:]))
                    wire.send(sock, "ok", result)
                else:
                    self._stream(sock, resident, op, frame[2:], pid)
            else:
                raise ChatcliError(f"the chatcli server does not know the request '{op}'",
                                   "use the same chatcli version for both")
        except ChatcliError as exc:
            wire.send(sock, *wire.error_frame(exc))
        except (OSError, wire.ServerGone):
            raise
        except Exception as exc:  # a fault of the server: the client gets one line
            self.log("".join(traceback.format_exception(exc)).rstrip())
            wire.send(sock, "error", ChatcliError, f"the chatcli server failed: "
                      f"{type(exc).__name__}: {exc}", f"its log says more: {_log_hint()}", 1)
        return True

    def _open(self, sock: socket.socket, spec: Any, device: str, dtype: str,
              threads: int | None, quantize: str | None) -> tuple[int, Resident]:
        from chatcli.backends.local import LocalBackend

        runtime = LocalBackend.runtime_for(spec, device, dtype, threads, quantize)
        key = repr((spec, runtime))
        with self.loading:
            resident = self.models.get(key)
            if (resident is not None and resident.users == 0 and not resident.busy
                    and key not in self.reloaded and _compiled_now_ready(resident.backend)):
                self.reloaded.add(key)  # once: a package that does not load stays unused
                del self.models[key]
                resident = None
                gc.collect()
                self.log(f"loading {spec.alias} again, with its compiled step")
            if resident is None:
                start = time.perf_counter()
                backend = self.worker.run(
                    lambda: LocalBackend.open(spec, None, Reporter(sock), runtime),
                    f"loading {spec.alias}")
                resident = Resident(key, spec.alias, backend, runtime,
                                    self.keep_alive_of(spec))
                self.models[key] = resident
                import torch

                self.log(f"loaded {spec.alias} ({backend.implementation}) in "
                         f"{time.perf_counter() - start:.1f} s; {torch.get_num_threads()} "
                         "threads")
            resident.users += 1
            resident.last_used = time.monotonic()
            self.handles += 1
            return self.handles, resident

    def _turn(self, sock: socket.socket, resident: Resident, what: str,
              fn: Callable[[], Any]) -> Any:
        """`fn()` for this request alone, on the model thread (`Worker`): a request that
        must wait is told so, naming what the model thread does."""
        if self.worker.pending:
            wire.send(sock, "waiting", self.worker.current or "the model is busy")

        def job() -> Any:
            resident.busy = what
            try:
                return fn()
            finally:
                resident.busy = ""
                resident.last_used = time.monotonic()

        return self.worker.run(job, f"{resident.alias} is answering another request")

    def _stream(self, sock: socket.socket, resident: Resident, op: str,
                args: tuple[Any, ...], pid: int | None) -> None:
        self.requests += 1
        self._turn(sock, resident, "answering",
                   lambda: self._answer(sock, resident, op, args, pid))

    def _answer(self, sock: socket.socket, resident: Resident, op: str,
                args: tuple[Any, ...], pid: int | None) -> None:
        """One answer, streamed to `sock` (on the model thread); `pid`: the client's
        process (its own start-up is not a neighbour's load)."""
        backend = resident.backend
        sent = 0
        self._fit_threads(resident, self.meter.others_besides(pid))
        began, fitted = time.monotonic(), self.meter.span
        start = time.perf_counter()
        if op == "stream":
            packed, settings, max_new, views, constraint, raw = args
            gen = backend.stream(packed, _settings(settings), max_new, views,
                                 constraint=constraint, raw=raw)
            wire.send(sock, "started", None)
        else:
            packed, settings, max_new, views, answer_ids, step, rank, constraint = args
            alt, gen = backend.alternative(packed, _settings(settings), max_new, views,
                                           answer_ids, step, rank, constraint=constraint)
            wire.send(sock, "started", alt)
        search, finished = None, False
        try:
            for event in gen:
                # What the generation found rides on the event that brings it (the
                # last one, normally): a client may stop reading there.
                found = None
                if event.finish_reason is not None or gen.search is not search:
                    search = gen.search
                    found = (gen.hypotheses, gen.pruned, gen.search,
                             gen.constraint_satisfied)
                wire.send(sock, "event", event, _shallow(gen.stats), found,
                          backend.reused)
                sent += 1
                finished = event.finish_reason is not None
                span = self.meter.span
                if span is not fitted and span is not None and span[0] >= began:
                    fitted = span  # a window inside this answer: a neighbour came or went
                    self._fit_threads(resident, self.meter.others)
        except (OSError, wire.ServerGone):
            backend.invalidate()
            self.log(f"{resident.alias}: the client went away after {sent} tokens; "
                     "stopped answering it")
            raise
        if not finished:
            wire.send(sock, "end", _shallow(gen.stats))
        self.log(f"{resident.alias}: answered {sent} tokens in "
                 f"{time.perf_counter() - start:.2f} s")
        from chatcli.autocompile import after_answer

        after_answer(backend)


_CALLS: dict[str, Callable[..., Any]] = {
    "count": lambda b, messages: b.count(messages),
    "count_sizes": lambda b, messages: _measure(b.count, "sizes", messages),
    "count_length": lambda b, first, total: b.count.length(first, total),
    "raw_count": lambda b, messages: b.raw_count(messages),
    "raw_count_sizes": lambda b, messages: _measure(b.raw_count, "sizes", messages),
    "raw_count_length": lambda b, first, total: b.raw_count.length(first, total),
    "check": lambda b, settings, views, constraint: b.check(_settings(settings), views,
                                                            constraint),
    "invalidate": lambda b: b.invalidate(),
    "reused": lambda b: b.reused,
    "token_text": lambda b, token_id: b.token_text(token_id),
    "prompt_text": lambda b, messages: b.prompt_text(messages),
    "attention": lambda b, packed, answer_ids, raw: b.attention(packed, answer_ids, raw=raw),
    "distributions": lambda b, packed, answer_ids, k, constraint: b.distributions(
        packed, answer_ids, k, constraint),
}


def _call(backend: Any, method: str, *args: Any) -> Any:
    if method not in _CALLS:
        raise ChatcliError(f"the chatcli server does not know the call '{method}'",
                           "use the same chatcli version for both")
    return _CALLS[method](backend, *args)


def _measure(render: Any, name: str, messages: Any) -> Any:
    method = getattr(render, name, None)
    return None if method is None else method(messages)


def _settings(settings: Any) -> Any:
    """Decoding settings as sent (their capabilities left out: a strategy's may hold a
    function), with the strategy's capabilities again."""
    from chatcli.decoding.base import capabilities_of
    from chatcli.decoding.registry import strategy_registry

    return dataclasses.replace(settings,
                               capabilities=capabilities_of(strategy_registry().get(
                                   settings.strategy)))


def _describe(backend: Any) -> dict[str, Any]:
    """What the client keeps of an opened model."""
    return {"spec": backend.spec, "context_window": backend.context_window,
            "generation_config": backend.generation_config,
            "implementation": backend.implementation,
            "implementation_name": backend.implementation_name,
            "implementation_note": backend.implementation_note,
            "vocab_size": backend.vocab_size, "has_chat_template": backend.has_chat_template,
            "thinking": backend.thinking}


def _compiled_now_ready(backend: Any) -> bool:
    """Whether a model loaded without its compiled step would now load with it."""
    from chatcli.autocompile import compiled_ready

    loaded = getattr(backend, "loaded", None)
    try:
        return loaded is not None and compiled_ready(loaded)
    except OSError:
        return False


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "never unload"
    return "unload at once" if seconds == 0 else f"{seconds:g} s"


def _log_hint() -> str:
    return "chatcli serve's terminal, or " + str(wire.log_path())


def _shallow(stats: Any) -> tuple[Any, ...]:
    """The fields of `stats` as they are (`dataclasses.astuple` would turn the
    speculation figures into a tuple too)."""
    return tuple(getattr(stats, f.name) for f in dataclasses.fields(stats))
