"""Record the replayed responses of tests/test_openai_replay.py from a real server.

Usage: python tests/data/openai/record.py PATH/TO/SmolLM2-135M-Instruct.Q4_1.gguf

Starts llama.cpp's OpenAI-compatible server (`pip install "llama-cpp-python[server]"`)
twice on loopback (once with an API key), sends the requests in requests.json and
writes each raw answer as NAME.http: the status line, the headers the replay needs,
a blank line, then the body exactly as received. The error cases the server cannot
produce on demand (429, a malformed or cut stream) are built by the tests from these.
"""

from __future__ import annotations

import http.client
import json
import socket
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
KEY = "test-key-123"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start(gguf: str, *extra: str) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "llama_cpp.server", "--model", gguf, "--model_alias", "smollm2",
         "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048", *extra],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(600):
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", "/v1/models", headers={"Authorization": f"Bearer {KEY}"})
            if conn.getresponse().status == 200:
                return proc, port
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("the server did not start")


def record(port: int, name: str, method: str, path: str, body: object = None) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    data = None if body is None else json.dumps(body).encode()
    conn.request(method, path, body=data, headers={"Content-Type": "application/json"})
    response = conn.getresponse()
    raw = response.read()
    head = f"{response.status} {response.reason}\n"
    head += f"Content-Type: {response.getheader('Content-Type')}\n\n"
    (HERE / f"{name}.http").write_bytes(head.encode() + raw)
    print(f"{name}: {response.status}, {len(raw)} bytes")


def main() -> None:
    gguf = sys.argv[1]
    requests = json.loads((HERE / "requests.json").read_text())
    proc, port = start(gguf)
    try:
        for name, (method, path, body) in requests.items():
            if name != "unauthorized":
                record(port, name, method, path, body)
    finally:
        proc.kill()
        proc.wait()
    proc, port = start(gguf, "--api_key", KEY)
    try:
        method, path, body = requests["unauthorized"]
        record(port, "unauthorized", method, path, body)
    finally:
        proc.kill()
        proc.wait()


if __name__ == "__main__":
    main()
