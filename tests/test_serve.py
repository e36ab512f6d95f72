"""The resident server (`chatcli serve`) and the commands that answer through it.

Real processes and a real socket: the server runs as `python -m chatcli serve` (or,
where a test needs a slow answer to act mid-way, the same entry point with each token
frame held back a little), and the commands run as the real entry point, in this
process or as subprocesses. Served answers must equal in-process ones token for token
(the same code runs on the same shapes in both); faults must end in one clear line,
the answer so far kept.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from conftest import run_cli
from screen import ROOT

SLOW = """
import os, sys, time
from chatcli.serve import wire
send = wire.send
def slow(sock, *frame):
    if frame and frame[0] == "event":
        time.sleep(float(sys.argv[1]))
    if frame and frame[0] == "started":
        time.sleep(float(os.environ.get("FIRST_DELAY", "0")))
    send(sock, *frame)
wire.send = slow
from chatcli.cli.app import main
main(["serve", *sys.argv[2:]])
"""


# A long answer whatever the random weights say: the constraint allows no end before it.
LONG = ["-n", "200", "--regex", "[a-z ]{150}", "The capital of France"]


def env(home: Path, **extra: str) -> dict[str, str]:
    out = {k: v for k, v in os.environ.items() if k not in ("CHATCLI_DEBUG", "CHATCLI_SERVER")}
    out.update(CHATCLI_HOME=str(home), PYTHONPATH=str(ROOT), **extra)
    return out


def sock_path() -> Path:
    from chatcli.serve import wire

    return wire.socket_path()


class Served:
    def __init__(self, proc: subprocess.Popen[bytes], log: Path) -> None:
        self.proc, self.log = proc, log

    def text(self) -> str:
        return self.log.read_text()

    def wait_for(self, needle: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while needle not in self.text():
            assert time.monotonic() < deadline, self.text()
            time.sleep(0.02)


def start_server(home: Path, *args: str, delay: float | None = None,
                 first_delay: float = 0.0) -> Served:
    log = home / f"serve-{time.monotonic_ns()}.log"
    cmd = ([sys.executable, "-c", SLOW, str(delay)] if delay is not None
           else [sys.executable, "-m", "chatcli", "serve"])
    with log.open("w") as out:
        proc = subprocess.Popen([*cmd, *args], env=env(home, FIRST_DELAY=str(first_delay)),
                                stdout=out, stderr=out,
                                stdin=subprocess.DEVNULL)
    served = Served(proc, log)
    try:
        served.wait_for("listening at")
    except BaseException:  # a server that did not come up is not left running
        proc.kill()
        proc.wait(timeout=30)
        raise
    return served


@pytest.fixture
def server(home: Path) -> Iterator[Served]:
    served = start_server(home)
    yield served
    stop(served)


def stop(served: Served) -> None:
    if served.proc.poll() is None:
        served.proc.send_signal(signal.SIGTERM)
        assert served.proc.wait(timeout=30) == 0, served.text()
    assert not sock_path().exists(), "the socket outlived its server"


def ask_json(*args: str) -> dict:
    result = run_cli(["ask", "--json", *args])
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


def without_timing(out: dict, seeded: bool) -> dict:
    """`--json` output without what differs from run to run: the timings, and the seed
    drawn at random where none was given (a greedy answer does not use it)."""
    out = {k: v for k, v in out.items() if k not in ("time_to_first_token_s",
                                                      "tokens_per_second")}
    if not seeded:
        out["decoding"] = {k: v for k, v in out["decoding"].items() if k != "seed"}
    if "speculation" in out:  # an estimate from the run's timings
        out["speculation"] = {k: v for k, v in out["speculation"].items()
                              if k != "speed_up_estimate"}
    return out


def start_ask(home: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "chatcli", "ask", *args], env=env(home),
                            text=True, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)


def first_output(proc: subprocess.Popen[str]) -> str:
    """What the answer printed first (read from the pipe itself: nothing is buffered)."""
    assert proc.stdout is not None
    got = os.read(proc.stdout.fileno(), 4096).decode()
    assert got, proc.stderr.read() if proc.stderr else ""
    return got


# -- the socket ---------------------------------------------------------------------------
def test_the_socket_is_private_and_removed_on_stop(home: Path, server: Served) -> None:
    path = sock_path()
    info = os.lstat(path)
    assert stat.S_ISSOCK(info.st_mode)
    assert stat.S_IMODE(info.st_mode) == 0o600
    assert stat.S_IMODE(os.stat(path.parent).st_mode) == 0o700
    assert info.st_uid == os.getuid()
    result = run_cli(["serve", "--stop"])
    assert result.exit_code == 0, result.stderr
    assert result.stderr == f"chatcli: stopped the chatcli server (pid {server.proc.pid})\n"
    assert server.proc.wait(timeout=30) == 0
    assert not path.exists()
    assert run_cli(["serve", "--status", "--json"]).stdout == "null\n"


def test_a_second_server_is_refused(home: Path, server: Served) -> None:
    result = run_cli(["serve"])
    assert result.exit_code == 2
    assert result.stderr == (f"error: a chatcli server already runs (pid {server.proc.pid}) at "
                             f"{sock_path()}; hint: use it as it is, or stop it first: chatcli "
                             "serve --stop\n")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_a_signal_stops_the_server_cleanly(home: Path, server: Served,
                                           sig: signal.Signals) -> None:
    assert run_cli(["ask", "-n", "3", "hi"]).exit_code == 0  # a model loaded, a client gone
    server.proc.send_signal(sig)
    assert server.proc.wait(timeout=30) == 0
    assert not sock_path().exists()
    assert server.text().endswith(f"stopping ({sig.name})\n" + server.text().split(
        "\n")[-2] + "\n")
    assert server.text().rstrip().endswith("stopped")
    assert "Traceback" not in server.text()


SLOW_HANDLER = """
import os, signal, threading, time
from chatcli.serve.server import Server
server = Server(keep_alive=None)
def handler(signum, frame):
    time.sleep(0.4)  # longer than any time-out the wait for a job might have had
    server.stop()
signal.signal(signal.SIGTERM, handler)
threading.Timer(0.1, os.kill, (os.getpid(), signal.SIGTERM)).start()
server.worker.serve(server.stopping)
print("stopped")
"""


def test_the_server_stops_when_a_signal_handler_outlasts_the_wait_for_a_job(
        home: Path) -> None:
    """CPython 3.11's `SimpleQueue.get(timeout=...)` waits for ever once a signal handler
    has run past its deadline: the server left running after SIGTERM (seen in CI)."""
    done = subprocess.run([sys.executable, "-c", SLOW_HANDLER], env=env(home),
                          capture_output=True, text=True, timeout=20)
    assert (done.returncode, done.stdout, done.stderr) == (0, "stopped\n", "")


@pytest.mark.parametrize("value", ["5x", "-2", "soon", "nan", "inf", "-1.5m"])
def test_a_bad_keep_alive_is_one_line(home: Path, value: str) -> None:
    result = run_cli(["serve", "--keep-alive", value])
    assert result.exit_code == 2
    assert result.stderr.startswith(f"error: --keep-alive {value}: ")
    assert result.stderr.count("\n") == 1 and "; hint: e.g. --keep-alive" in result.stderr
    assert not sock_path().exists()


def test_a_bad_keep_alive_in_the_environment_names_the_variable(
        home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHATCLI_KEEP_ALIVE", "soon")
    result = run_cli(["serve"])
    assert result.exit_code == 2
    assert result.stderr == ("error: CHATCLI_KEEP_ALIVE=soon: expected a duration such as 5m, "
                             "30s, 1h, 0 (unload at once) or -1 (never); hint: e.g. "
                             "CHATCLI_KEEP_ALIVE=5m\n")


def test_a_bad_server_mode_is_one_line(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHATCLI_SERVER", "sometimes")
    result = run_cli(["ask", "-n", "2", "hi"])
    assert result.exit_code == 2
    assert result.stderr == ("error: CHATCLI_SERVER=sometimes: expected one of use, start, "
                             "off; hint: use (the default: the server when it runs), start "
                             "(start it when none runs) or off\n")


# -- the same answers -----------------------------------------------------------------------
@pytest.mark.parametrize("args", [
    ["-n", "12"],
    ["-S", "sample", "--seed", "7", "-t", "1.3", "-n", "12"],
    ["--show-candidates", "3", "-n", "6"],
    ["-S", "beam", "--num-beams", "3", "--show-beams", "-n", "6"],
    ["--alt", "2:3", "-n", "8"],
    ["--choice", "yes,no", "-n", "8"],
    ["--explain-context", "-n", "4"],
    ["--raw", "-n", "8"],
    ["--speculate", "ngram:4", "-n", "24"],
    ["-S", "sample", "--seed", "3", "--speculate", "ngram", "--show-candidates", "2",
     "-n", "24"],
], ids=["greedy", "seeded-sample", "candidates", "beams", "alt", "constraint", "attention",
        "raw", "speculate", "speculate-sample"])
def test_served_answers_equal_in_process_ones(home: Path, server: Served,
                                              args: list[str]) -> None:
    served = ask_json(*args, "The capital of France")
    assert server.text().count("answered") >= 1, server.text()
    alone = ask_json("--no-server", *args, "The capital of France")
    seeded = "--seed" in args
    assert without_timing(served, seeded) == without_timing(alone, seeded)
    assert served["token_ids"], served


def test_the_server_tells_the_generation_config_before_loading(
        home: Path, server: Served, tiny_model: object, tmp_path: Path) -> None:
    from test_settings_once import ALT_REFUSED, beamy

    beamy(home, tiny_model.folder, tmp_path)  # type: ignore[attr-defined]
    result = run_cli(["ask", "--alt", "1:2", "hi"])
    assert (result.exit_code, result.stderr) == (2, ALT_REFUSED)
    assert "loaded" not in server.text()
    args = ["-n", "4", "--show-beams", "hi"]  # beams: the generation_config's strategy
    served, alone = ask_json(*args), ask_json("--no-server", *args)
    assert "answered" in server.text()
    assert without_timing(served, False) == without_timing(alone, False)
    assert served["decoding"]["strategy"] == "beam"


def test_a_chat_through_the_server_is_the_same_chat(home: Path, server: Served) -> None:
    # /alt names the tokens (tokenizer calls) before the new answer streams; /candidates
    # makes every answer carry its distributions; /choice constrains; /prompt and
    # /context read the packed prompt; /retry and /undo move in the branch tree.
    turns = ("Hello!\nThe capital of France?\n/alt 2 2\n/alt\n/candidates 3\nAnd the fox?\n"
             "/candidates 0\n/choice yes,no\nIs it?\n/unconstrain\n/retry\n/undo\n"
             "/prompt\n/context\n")
    served = run_cli(["chat", "-n", "10"], input=turns)
    alone = run_cli(["chat", "-n", "10", "--no-server"], input=turns)
    assert served.exit_code == alone.exit_code == 0, served.stderr + alone.stderr
    assert (served.stdout, served.stderr) == (alone.stdout, alone.stderr)
    assert "instead of" in served.stderr + served.stdout  # /alt took another token
    listing = json.loads(run_cli(["history", "list", "--json"]).stdout)
    assert listing[0]["messages"] == listing[1]["messages"]  # each message saved once
    assert server.text().count("answered") == 6, server.text()


def test_the_client_imports_neither_torch_nor_transformers(home: Path, server: Served) -> None:
    code = ("import sys\nfrom chatcli.cli.app import main\n"
            "try:\n    main(['ask', '-n', '4', '--stats', 'hi'])\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in ('torch', 'transformers', 'numpy', 'jinja2', 'tokenizers')"
            " if m in sys.modules), file=sys.stderr)\n")
    done = subprocess.run([sys.executable, "-c", code], env=env(home), capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stderr.endswith("[]\n"), done.stderr
    assert "(chatcli serve)" in done.stderr  # --stats names where it ran


def test_no_server_and_server_off_load_in_process(home: Path, server: Served,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    assert run_cli(["ask", "-n", "3", "--no-server", "hi"]).exit_code == 0
    monkeypatch.setenv("CHATCLI_SERVER", "off")
    assert run_cli(["ask", "-n", "3", "hi"]).exit_code == 0
    assert "answered" not in server.text()


# -- keep-alive -----------------------------------------------------------------------------
def status() -> dict:
    result = run_cli(["serve", "--status", "--json"])
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


def test_an_idle_model_is_unloaded_after_its_keep_alive(home: Path) -> None:
    served = start_server(home, "--keep-alive", "1s")
    try:
        assert run_cli(["ask", "-n", "3", "hi"]).exit_code == 0
        assert [m["alias"] for m in status()["models"]] == ["tiny"]
        served.wait_for("unloaded tiny (idle 1 s)", timeout=20)
        assert status()["models"] == []
        assert run_cli(["ask", "-n", "3", "hi"]).exit_code == 0  # loaded again
        assert served.text().count(" loaded tiny (native)") == 2
    finally:
        stop(served)


def test_keep_alive_zero_unloads_after_each_command(home: Path) -> None:
    served = start_server(home, "--keep-alive", "0")
    try:
        assert run_cli(["ask", "-n", "3", "hi"]).exit_code == 0
        served.wait_for("unloaded tiny")
        assert status()["models"] == []
    finally:
        stop(served)


def test_keep_alive_minus_one_never_unloads(home: Path) -> None:
    served = start_server(home, "--keep-alive", "-1")
    try:
        assert run_cli(["ask", "-n", "3", "hi"]).exit_code == 0
        assert status()["keep_alive_s"] is None
        time.sleep(0.5)
        assert [m["alias"] for m in status()["models"]] == ["tiny"]
    finally:
        stop(served)


def test_models_toml_sets_the_default_keep_alive_below_the_flag_and_the_environment(
        home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    toml = home / "models.toml"
    toml.write_text('keep_alive = "1s"\n' + toml.read_text())
    served = start_server(home)
    try:
        assert status()["keep_alive_s"] == 1.0
        assert run_cli(["ask", "-n", "3", "hi"]).exit_code == 0
        served.wait_for("unloaded tiny (idle ", timeout=20)
    finally:
        stop(served)
    served = start_server(home, "--keep-alive", "-1")
    try:
        assert status()["keep_alive_s"] is None
    finally:
        stop(served)
    monkeypatch.setenv("CHATCLI_KEEP_ALIVE", "2m")  # the servers started here inherit it
    served = start_server(home)
    try:
        assert status()["keep_alive_s"] == 120.0
    finally:
        stop(served)


def test_an_alias_keeps_its_own_keep_alive(home: Path) -> None:
    toml = home / "models.toml"
    toml.write_text(toml.read_text() + 'keep_alive = 0\n')
    served = start_server(home, "--keep-alive", "-1")
    try:
        assert run_cli(["ask", "-n", "3", "hi"]).exit_code == 0
        served.wait_for("unloaded tiny")  # its own 0, whatever the server's -1
        toml.write_text(toml.read_text().replace("keep_alive = 0", 'keep_alive = "-1"'))
        assert run_cli(["ask", "-n", "3", "hi"]).exit_code == 0
        [model] = status()["models"]
        assert model["keep_alive_s"] is None
        listing = run_cli(["serve", "--status"]).stdout
        assert "keep-alive: never unload;" in listing and ", keep-alive" not in listing
    finally:
        stop(served)


@pytest.mark.parametrize(("line", "where", "error"), [
    ('keep_alive = "soon"', "top", "'keep_alive' 'soon': expected a duration such as 5m, 30s, "
     "1h, 0 (unload at once) or -1 (never)"),
    ("keep_alive = -2", "alias", "[models.tiny] 'keep_alive' -2: a negative keep-alive is only "
     "-1 (never unload)"),
    ("keep_alive = true", "top", "'keep_alive' True: expected a string such as \"5m\" or a "
     "number of seconds"),
])
def test_a_bad_keep_alive_in_models_toml_names_its_line(home: Path, line: str, where: str,
                                                         error: str) -> None:
    toml = home / "models.toml"
    text = toml.read_text()
    text = f"{line}\n{text}" if where == "top" else f"{text}{line}\n"
    toml.write_text(text)
    number = text.splitlines().index(line) + 1
    for args in (["serve"], ["ask", "hi"]):
        result = run_cli(args)
        assert result.exit_code != 0
        assert result.stderr.startswith(f"error: {toml}:{number}: {error}; hint: e.g. "
                                        'keep_alive = "30m"'), result.stderr
        assert result.stderr.count("\n") == 1
    assert not sock_path().exists()


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="one core: always one thread")
def test_a_neighbour_that_comes_mid_answer_takes_threads_from_it(home: Path) -> None:
    cores = len(os.sched_getaffinity(0))
    served = start_server(home, delay=0.05)  # 200 tokens: 10 s
    client = start_ask(home, *LONG)
    burn = "import time\nend = time.time() + 2.5\nwhile time.time() < end: pass"
    burners: list[subprocess.Popen[bytes]] = []
    try:
        first_output(client)
        mark = len(served.text())
        burners = [subprocess.Popen([sys.executable, "-c", burn]) for _ in range(cores)]
        served.wait_for("1 threads (other processes keep ", timeout=8)
        assert "answered" not in served.text()[mark:]  # during the answer
    finally:
        for burner in burners:
            burner.wait(timeout=30)
        client.kill()
        client.communicate(timeout=30)
        stop(served)


# -- faults ---------------------------------------------------------------------------------
def history_messages(home: Path) -> list[dict]:
    result = run_cli(["history", "export", "1", "--format", "json"])
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)["messages"]


def test_a_server_killed_mid_answer_keeps_the_partial_reply(home: Path) -> None:
    served = start_server(home, delay=0.05)
    client = start_ask(home, *LONG)
    first = first_output(client)
    served.proc.kill()
    served.proc.wait(timeout=30)
    out, err = client.communicate(timeout=60)
    assert client.returncode == 1
    assert err == ("error: the chatcli server stopped mid-answer; hint: what was answered so "
                   "far is kept; ask again: chatcli answers in-process, or start the server "
                   "again with chatcli serve\n")
    saved = history_messages(home)
    assert [m["role"] for m in saved] == ["user", "assistant"]
    assert saved[1]["interrupted"] is True
    assert saved[1]["content"] and first + out == saved[1]["content"] + "\n"
    # The socket file stays behind; the next command says so and answers in-process.
    assert sock_path().exists()
    result = run_cli(["ask", "-n", "3", "hi"])
    assert result.exit_code == 0
    assert result.stderr == (f"warning: no chatcli server answers at {sock_path()} (a stale "
                             "socket, removed); answering in-process\n")
    assert not sock_path().exists()


def test_a_client_killed_mid_answer_stops_its_generation(home: Path) -> None:
    served = start_server(home, delay=0.05)
    try:
        client = start_ask(home, *LONG)
        first_output(client)
        client.kill()
        client.wait(timeout=30)
        served.wait_for("the client went away after")
        # The model is free again at once: the next answer needs no wait.
        result = run_cli(["ask", "-n", "3", "hi"])
        assert result.exit_code == 0 and "waiting" not in result.stderr, result.stderr
    finally:
        stop(served)


def test_two_clients_take_turns_and_the_second_says_it_waits(home: Path) -> None:
    served = start_server(home, delay=0.02)
    try:
        first = start_ask(home, *LONG)
        first_output(first)
        second = start_ask(home, "-n", "8", "hi")
        out2, err2 = second.communicate(timeout=120)
        _, err1 = first.communicate(timeout=120)
        assert first.returncode == second.returncode == 0, err1 + err2
        assert err2 == ("chatcli: tiny is answering another request in the chatcli server; "
                        "waiting\n")
        assert out2 == run_cli(["ask", "-n", "8", "--no-server", "hi"]).stdout
    finally:
        stop(served)


def test_a_socket_of_another_user_is_not_used(home: Path) -> None:
    if os.getuid() != 0:
        pytest.skip("making a file of another user needs root")
    path = sock_path()
    path.parent.mkdir(parents=True, mode=0o700, exist_ok=True)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    from chatcli.serve import wire

    with wire.reachable(path) as name:
        listener.bind(name)
    try:
        os.chmod(path, 0o600)
        os.chown(path, 54321, 54321)
        result = run_cli(["ask", "-n", "3", "hi"])
        assert result.exit_code == 0
        assert result.stderr == (f"warning: not using the chatcli server: {path} belongs to "
                                 f"user id 54321, not to you (0); answering in-process\n")
        assert path.exists()  # not ours to remove
    finally:
        listener.close()
        path.unlink()


@contextmanager
def fake_server(answer: Callable[[socket.socket], None]) -> Iterator[Path]:
    """A socket where the server should be, private and ours, whose one connection
    `answer` serves (a server of another version, one that sends nonsense)."""
    path = sock_path()
    path.parent.mkdir(parents=True, mode=0o700, exist_ok=True)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    from chatcli.serve import wire

    with wire.reachable(path) as name:
        listener.bind(name)
    os.chmod(path, 0o600)
    listener.listen(1)

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            answer(conn)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield path
    finally:
        thread.join(timeout=10)
        listener.close()
        path.unlink(missing_ok=True)


def test_a_server_of_another_version_is_named_and_not_used(home: Path) -> None:
    from chatcli.serve import wire

    def old_server(conn: socket.socket) -> None:
        wire.recv(conn)
        wire.send(conn, "hello", "0.0.1/0", 4242)

    with fake_server(old_server):
        result = run_cli(["ask", "-n", "3", "hi"])
        assert result.exit_code == 0
        assert result.stderr == (f"warning: the chatcli server (pid 4242) runs version 0.0.1/0, "
                                 f"and this chatcli is {wire.VERSION}; answering in-process "
                                 "(restart it: chatcli serve --stop, then chatcli serve)\n")
        assert result.stdout == run_cli(["ask", "-n", "3", "--no-server", "hi"]).stdout


def test_a_server_that_sends_nonsense_is_one_line(home: Path) -> None:
    def garbage(conn: socket.socket) -> None:
        conn.recv(1000)
        conn.sendall(b"\x00\x00\x00\x05hello")

    with fake_server(garbage) as path:
        result = run_cli(["ask", "-n", "3", "hi"])
        assert result.exit_code == 0
        assert result.stderr == (f"warning: no chatcli server answers at {path} (a stale "
                                 "socket, removed); answering in-process\n")


def test_auto_start_starts_a_server_that_the_next_command_uses(
        home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHATCLI_SERVER", "start")
    first = run_cli(["ask", "-n", "5", "hi"])
    assert first.exit_code == 0, first.stderr
    assert first.stderr.startswith("chatcli: started the chatcli server (pid ")
    try:
        second = run_cli(["ask", "-n", "5", "hi"])
        assert second.exit_code == 0 and second.stderr == ""
        assert second.stdout == first.stdout
        assert [m["alias"] for m in status()["models"]] == ["tiny"]
    finally:
        assert run_cli(["serve", "--stop"]).exit_code == 0
    assert not sock_path().exists()


def start_chat(home: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "chatcli", "chat", *args], env=env(home),
                            text=True, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)


def test_a_chat_whose_server_is_gone_goes_on_in_process(home: Path) -> None:
    served = start_server(home)
    chat = start_chat(home, "-n", "8")
    assert chat.stdin is not None and chat.stdout is not None
    chat.stdin.write("Hello!\n")
    chat.stdin.flush()
    first = chat.stdout.readline()  # the first answer, through the server
    served.proc.kill()
    served.proc.wait(timeout=30)
    out, err = chat.communicate("The capital of France?\n", timeout=120)
    assert chat.returncode == 0, err
    assert err == ("warning: the chatcli server went away: loading tiny in this process\n")
    alone = run_cli(["chat", "-n", "8", "--no-server"], input="Hello!\nThe capital of France?\n")
    assert first + out == alone.stdout
    saved = history_messages(home)
    assert [m["role"] for m in saved] == ["user", "assistant"] * 2


def test_a_chat_whose_server_dies_mid_answer_keeps_it_and_goes_on(home: Path) -> None:
    served = start_server(home, delay=0.05)
    chat = start_chat(home, "-n", "200", "--regex", "[a-z ]{150}")
    assert chat.stdin is not None and chat.stdout is not None
    chat.stdin.write("The capital of France\n")
    chat.stdin.flush()
    first_output(chat)
    served.proc.kill()
    served.proc.wait(timeout=30)
    _, err = chat.communicate("Hello!\n", timeout=120)
    assert chat.returncode == 1  # a piped chat with a failed turn
    assert err == ("error: the chatcli server stopped mid-answer; hint: what was answered so "
                   "far is kept; ask again: chatcli answers in-process, or start the server "
                   "again with chatcli serve\n"
                   "warning: loading tiny in this process\n")
    saved = history_messages(home)
    assert [m["role"] for m in saved] == ["user", "assistant"] * 2
    assert saved[1]["interrupted"] is True and saved[3].get("interrupted") is not True


def test_compare_through_the_server_gives_the_same_answers(home: Path, server: Served) -> None:
    args = ["compare", "--json", "-n", "8", "-S", "greedy", "-S", "sample:seed=3",
            "-S", "beam:num_beams=2", "The capital of France"]
    served, alone = run_cli(args), run_cli([*args, "--no-server"])
    assert served.exit_code == alone.exit_code == 0, served.stderr + alone.stderr

    def answers(out: str) -> list[tuple]:
        found = json.loads(out)
        runs = found["results"] if isinstance(found, dict) else found
        return [(r["label"], r["text"], r["token_ids"], r["logprob"]) for r in runs]

    assert answers(served.stdout) == answers(alone.stdout)
    assert server.text().count("answered") == 3


def test_ctrl_c_in_a_served_chat_stops_the_answer_not_the_chat(home: Path) -> None:
    """SIGINT (Ctrl-C) mid-answer in a chat: what arrived is kept, the server stops
    answering that client, and the next message is answered through the server again."""
    from screen import default_signals

    served = start_server(home, delay=0.1)
    try:
        chat = subprocess.Popen([sys.executable, "-m", "chatcli", "chat", "-n", "200",
                                 "--regex", "[a-z ]{150}"], env=env(home), text=True,
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, preexec_fn=default_signals)
        assert chat.stdin is not None
        chat.stdin.write("The capital of France\n")
        chat.stdin.flush()
        first = first_output(chat)
        chat.send_signal(signal.SIGINT)
        served.wait_for("the client went away after")
        out, err = chat.communicate("/unconstrain\n/set max_new_tokens 4\nHello!\n",
                                    timeout=120)
        assert chat.returncode == 0, err
        assert err == ("warning: answer interrupted; the partial reply is kept in the "
                       "history\nchatcli: answers are free again\nchatcli: max_new_tokens = 4\n")
        replies = history_messages(home)
        assert [m["role"] for m in replies] == ["user", "assistant"] * 2
        assert replies[1]["interrupted"] is True and 0 < len(replies[1]["content"]) < 150
        assert replies[3].get("interrupted") is not True
        assert (first + out).startswith(replies[1]["content"])  # shown is what was kept
        served.wait_for("answered 4 tokens")
    finally:
        stop(served)


def test_the_server_refuses_a_client_of_another_user(home: Path, server: Served) -> None:
    """Even with the socket opened to everyone, a peer of another user id is closed at once
    (the server checks each client's uid)."""
    if os.getuid() != 0:
        pytest.skip("connecting as another user needs root")
    path = sock_path()
    os.chmod(path, 0o666)
    os.chmod(path.parent, 0o755)
    # The folder is handed over open (its parents stay private to root).
    folder = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    code = ("import os, socket, sys\nos.setgid(54321)\nos.setuid(54321)\n"
            "s = socket.socket(socket.AF_UNIX)\n"
            "s.connect(f'/proc/self/fd/{sys.argv[1]}/{sys.argv[2]}')\n"
            "s.sendall(b'\\x00\\x00\\x00\\x01x')\ntry:\n    got = s.recv(100)\n"
            "except ConnectionResetError:\n    got = b''\nprint(repr(got))\n")
    try:
        done = subprocess.run([sys.executable, "-c", code, str(folder), path.name],
                              capture_output=True, text=True, timeout=60, pass_fds=(folder,))
    finally:
        os.close(folder)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "b''\n"  # closed without a word
    server.wait_for("refused a connection of user id 54321")
    os.chmod(path.parent, 0o700)
