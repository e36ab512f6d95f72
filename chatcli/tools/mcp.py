"""MCP servers over stdio as tools: `--mcp 'CMD ARGS'`.

Contract: `MCPServer(command)` starts the command (no shell) and speaks JSON-RPC 2.0 to
it, one JSON message per line on its stdin and stdout (the Model Context Protocol's
stdio transport): `initialize`, then `notifications/initialized`; `tools()` lists its
tools (`tools/list`, every page) as `chatcli.tools.functions.Tool`s whose `call` is a
`tools/call`; a call's text content is its result, `isError` a failure the model reads.
`close()` ends the process (closing its stdin, then terminating it); `close_all()` ends
every one still running (the CLI's entry point calls it on the way out). A command that does
not start, a server that exits, says something that is not JSON-RPC, answers an error,
or stays silent past `timeout` raises `MCPError`: one line naming the command, with
the last line it wrote on stderr where that says why.

Knows nothing about models, prompts or the terminal.
"""

from __future__ import annotations

import itertools
import json
import queue
import shlex
import subprocess
import threading
from collections import deque
from typing import Any

from chatcli import __version__
from chatcli.errors import UsageError
from chatcli.tools.functions import Tool

PROTOCOL = "2025-06-18"


class MCPError(UsageError):
    """An MCP server that cannot be used (see the module)."""


_open: list[MCPServer] = []  # started and not closed yet: `close_all()` at the end


def close_all() -> None:
    """End every MCP server this process started (the CLI's exit does)."""
    while _open:
        _open.pop().close()


class MCPServer:
    def __init__(self, command: str, timeout: float = 30.0) -> None:
        self.command = command
        self.timeout = timeout
        self._ids = itertools.count(1)
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._stderr: deque[str] = deque(maxlen=5)
        self._lock = threading.Lock()  # one request at a time
        try:
            argv = shlex.split(command)
        except ValueError as exc:
            raise MCPError(f"--mcp {command!r}: {exc}",
                           "quote the command as a shell would") from None
        if not argv:
            raise MCPError("--mcp '': no command", "e.g. --mcp 'python my_server.py'")
        try:
            self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=subprocess.PIPE, text=True, encoding="utf-8",
                                         errors="replace", bufsize=1)
        except OSError as exc:
            raise MCPError(f"--mcp {command!r}: cannot start {argv[0]}: "
                           f"{exc.strerror or exc}", "check the command and its PATH") from None
        _open.append(self)
        threading.Thread(target=self._read, args=(self.proc.stdout, self._lines),
                         daemon=True).start()
        self._err_reader = threading.Thread(target=self._read_err, daemon=True)
        self._err_reader.start()
        try:
            self._request("initialize", {"protocolVersion": PROTOCOL, "capabilities": {},
                                         "clientInfo": {"name": "chatcli",
                                                        "version": __version__}})
            self._send({"jsonrpc": "2.0", "method": "notifications/initialized"})
        except MCPError:
            self.close()
            raise

    # -- the pipe ----------------------------------------------------------------------
    @staticmethod
    def _read(stream: Any, lines: queue.Queue[str | None]) -> None:
        for line in stream:
            lines.put(line)
        lines.put(None)

    def _read_err(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            if line.strip():
                self._stderr.append(line.strip())

    def _fail(self, what: str) -> MCPError:
        if self.proc.poll() is not None:  # what it wrote before it exited, read to the end
            self._err_reader.join(timeout=2)
        said = f" (it said: {self._stderr[-1][:200]})" if self._stderr else ""
        return MCPError(f"MCP server {self.command!r} {what}{said}",
                        "run the command by hand to see what it does")

    def _send(self, message: dict[str, Any]) -> None:
        try:
            assert self.proc.stdin is not None
            self.proc.stdin.write(json.dumps(message) + "\n")
            self.proc.stdin.flush()
        except (OSError, ValueError):
            raise self._fail(f"exited (code {self.proc.poll()})") from None

    def _request(self, method: str, params: dict[str, Any]) -> Any:
        with self._lock:
            ident = next(self._ids)
            self._send({"jsonrpc": "2.0", "id": ident, "method": method, "params": params})
            while True:
                try:
                    line = self._lines.get(timeout=self.timeout)
                except queue.Empty:
                    raise self._fail(f"did not answer {method} within {self.timeout:g} s") \
                        from None
                if line is None:
                    self.proc.wait(timeout=5)
                    raise self._fail(f"exited (code {self.proc.returncode}) before it "
                                     f"answered {method}")
                if not line.strip():
                    continue
                try:
                    message = json.loads(line)
                except ValueError:
                    raise self._fail(f"wrote something that is not JSON-RPC: "
                                     f"{line.strip()[:80]!r}") from None
                if not isinstance(message, dict) or message.get("id") != ident:
                    continue  # a notification, or the answer to a call that timed out
                if "error" in message:
                    error = message["error"]
                    text = error.get("message") if isinstance(error, dict) else error
                    raise self._fail(f"answered {method} with an error: {text}")
                return message.get("result")

    # -- tools -------------------------------------------------------------------------
    def tools(self) -> list[Tool]:
        found: list[Tool] = []
        cursor = None
        while True:
            result = self._request("tools/list", {"cursor": cursor} if cursor else {})
            if not isinstance(result, dict) or not isinstance(result.get("tools"), list):
                raise self._fail("answered tools/list without a list of tools")
            for entry in result["tools"]:
                if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
                    raise self._fail("listed a tool without a name")
                schema = entry.get("inputSchema") or {"type": "object", "properties": {}}
                name = entry["name"]
                found.append(Tool(name, str(entry.get("description") or ""), schema,
                                  self._caller(name), f"mcp {self.command!r}"))
            cursor = result.get("nextCursor")
            if not cursor:
                return found

    def _caller(self, name: str) -> Any:
        def call(**arguments: Any) -> str:
            return self.call(name, arguments)

        return call

    def call(self, name: str, arguments: dict[str, Any]) -> str:
        """The text of a tools/call's result; a result marked isError raises."""
        result = self._request("tools/call", {"name": name, "arguments": arguments})
        content = result.get("content", []) if isinstance(result, dict) else []
        text = "\n".join(str(c.get("text", "")) for c in content
                         if isinstance(c, dict) and c.get("type") == "text")
        if isinstance(result, dict) and result.get("isError"):
            raise RuntimeError(text or "the tool failed")
        return text

    def close(self) -> None:
        if self in _open:
            _open.remove(self)
        if self.proc.poll() is None:
            try:
                assert self.proc.stdin is not None
                self.proc.stdin.close()
                self.proc.wait(timeout=2)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.terminate()
                try:
                    self.proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
