"""llama.cpp's OpenAI-compatible server for the slow tests (tests/test_openai_server.py,
tests/test_llamacpp_constraints.py): started on a free loopback port, serving the default
model's GGUF (pulled once into the session's real home).

`require_llama_cpp()` skips without `pip install -e ".[server-tests]"`, except under CI
(CI set), where that is a failure. `LlamaServer(gguf)` starts it and waits until it
answers (120 s at most); `request`, `greedy` (its own answer, without chatcli),
`completions` (how many chat completions its access log shows) and `stop`.
`default_gguf(real_home)` is the default model's GGUF.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

from conftest import http_json, pull_default


def require_llama_cpp() -> None:
    try:
        import llama_cpp.server  # noqa: F401
    except ImportError as exc:
        if os.environ.get("CI"):
            pytest.fail(f"llama-cpp-python[server] is required in CI: {exc}")
        pytest.skip('llama.cpp\'s server is not installed (pip install -e ".[server-tests]")')


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LlamaServer:
    def __init__(self, gguf: Path) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        # The server logs a lot: a file, never a pipe that could fill and block it.
        self.log = tempfile.TemporaryFile()  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--model_alias",
             "smollm2", "--host", "127.0.0.1", "--port", str(self.port), "--n_ctx", "2048"],
            stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.log.seek(0)
                raise RuntimeError(f"llama.cpp's server exited: {self.log.read()[-2000:]!r}")
            try:
                if self.request("GET", "/v1/models")[0] == 200:
                    return
            except OSError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError("llama.cpp's server did not answer within 120 s")

    def request(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        return http_json(self.port, method, path, body, timeout=120)

    def greedy(self, messages: list[dict[str, str]], max_tokens: int) -> str:
        """llama.cpp's own greedy answer, not streamed and without chatcli."""
        status, data = self.request("POST", "/v1/chat/completions", {
            "messages": messages, "max_tokens": max_tokens, "temperature": 0.0,
            "repeat_penalty": 1.0})
        assert status == 200, data
        return str(data["choices"][0]["message"]["content"])

    def completions(self) -> int:
        """How many chat completions the server has logged (uvicorn's access log)."""
        self.log.seek(0)
        return self.log.read().count(b"POST /v1/chat/completions")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=30)
        self.log.close()


def default_gguf(real_home: Path) -> Path:
    from chatcli import sources
    from chatcli.registry import load_registry

    pull_default(real_home)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CHATCLI_HOME", str(real_home))
        weights = sources.locate(load_registry().resolve("smollm2-135m"))
    assert weights is not None and weights.gguf_path is not None
    return weights.gguf_path
