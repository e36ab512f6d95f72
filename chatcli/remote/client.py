"""HTTP to an OpenAI-compatible server, with the standard library only.

Contract: `Client(base_url, timeout, api_key_env)` sends requests under
`base_url` (e.g. `http://127.0.0.1:8080/v1`). `get_json(path)` returns a decoded
JSON body; `stream_chat(body)` POSTs to `/chat/completions` with `"stream": true`
and yields each chunk of the server-sent events until `[DONE]`, checked by
`chatcli.remote.shape` (a `shape.Chunk`); `stream_completion(body)` does the same at
`/completions` (a raw text completion). Every failure is a `RemoteError` with a
one-line message and a hint: connection refused or unknown host, a timeout, an
answer that is not HTTP, 401/403, 404, 400/422, 5xx, a malformed stream
(`MalformedStreamError`: not UTF-8, not JSON, JSON of the wrong shape) and a
stream that stops before `[DONE]` (`StreamCutError`). A 429 is retried at most
`retries` times, each after the server's Retry-After (seconds or an HTTP date)
capped at `max_wait` seconds, or 1, 2, 4... s without one.

The API key is read from the environment variable named by `api_key_env` when
a request is made, sent as a bearer token, and never put in any message:
server text quoted in an error has the key masked, then is made one printable line
(line breaks, control characters and runs of white space become one space) and cut
to 200 characters with an ellipsis.

Knows nothing about decoding settings, conversations or the terminal.
"""

from __future__ import annotations

import email.utils
import http.client
import json
import os
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit

from chatcli.errors import MalformedStreamError, RemoteError, StreamCutError
from chatcli.remote.shape import CHUNK_HINT, Chunk, read_chunk
from chatcli.remote.sse import SSEParser

RETRIES = 3
MAX_WAIT = 30.0
QUOTE_LIMIT = 200  # characters of server text in an error line
_REASONS = {401: "Unauthorized", 403: "Forbidden", 404: "Not Found", 429: "Too Many Requests"}


class Client:
    def __init__(
        self,
        base_url: str,
        timeout: float = 60.0,
        api_key_env: str | None = None,
        *,
        retries: int = RETRIES,
        max_wait: float = MAX_WAIT,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise RemoteError(f"base_url {base_url!r} is not an http(s) URL",
                              'e.g. --base-url http://127.0.0.1:8080/v1')
        if timeout <= 0 or retries < 0 or max_wait < 0:
            raise ValueError("timeout must be positive, retries and max_wait >= 0")
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.api_key_env = api_key_env
        self.retries = retries
        self.max_wait = max_wait
        self.sleep = sleep
        self._scheme = parts.scheme
        self._host = parts.hostname
        self._port = parts.port
        self._prefix = parts.path.rstrip("/")
        self._key: str | None = None

    # -- requests ------------------------------------------------------------------
    def get_json(self, path: str) -> Any:
        response, conn = self._request("GET", path, None)
        try:
            raw = self._read_all(response)
        finally:
            conn.close()
        try:
            return _json(raw)
        except ValueError as exc:
            raise MalformedStreamError(
                f"{self.base_url}{path} did not answer with JSON",
                "check that base_url is the server's API root (often ending in /v1)",
            ) from exc

    def stream_chat(self, body: dict[str, Any]) -> Iterator[Chunk]:
        """Send a streamed chat completion now; iterate the result for its chunks.

        Failures before the answer starts (connection, status) raise here, not later.
        """
        return self._start("/chat/completions", body, "chat completions")

    def stream_completion(self, body: dict[str, Any]) -> Iterator[Chunk]:
        """`stream_chat` for a (text) completion: POST /completions."""
        return self._start("/completions", body, "completions")

    def _start(self, path: str, body: dict[str, Any], what: str) -> Iterator[Chunk]:
        response, conn = self._request("POST", path, {**body, "stream": True})
        kind = response.getheader("Content-Type", "")
        if "text/event-stream" not in kind:
            conn.close()
            raise MalformedStreamError(
                f"{self.base_url} answered a streaming request with "
                f"{self._quote(kind) or 'no content type'}, not text/event-stream",
                f"check that the server supports streaming {what}",
            )
        return self._stream(response, conn)

    def _stream(
        self, response: http.client.HTTPResponse, conn: http.client.HTTPConnection
    ) -> Iterator[Chunk]:
        try:
            yield from self._chunks(response)
        finally:
            conn.close()

    def _chunks(self, response: http.client.HTTPResponse) -> Iterator[Chunk]:
        parser = SSEParser()
        finished = False
        try:
            for event in parser.parse(self._lines(response)):
                if event.data.strip() == "[DONE]":
                    return
                try:
                    data = _json(event.data)
                except ValueError as exc:
                    raise MalformedStreamError(
                        f"the server sent an event that is not JSON: {self._quote(event.data)}",
                        CHUNK_HINT,
                    ) from exc
                if not isinstance(data, dict):
                    raise MalformedStreamError(
                        f"the server sent an event that is not a JSON object: "
                        f"{self._quote(event.data)}",
                        CHUNK_HINT,
                    )
                if data.get("error") is not None:
                    raise RemoteError(
                        f"the server failed in the middle of the answer: "
                        f"{self._message(data) or 'no details'}",
                        f"{CHUNK_HINT}; see the server's log",
                    )
                chunk = read_chunk(data)
                finished = finished or chunk.finished
                yield chunk
        except TimeoutError as exc:
            raise StreamCutError(
                f"the answer from {self.base_url} was cut off: nothing arrived for "
                f"{self.timeout:g} s (timeout)",
                "the partial answer is kept in the history, marked interrupted; raise timeout "
                "in models.toml if the server is just slow",
            ) from exc
        except (OSError, http.client.HTTPException) as exc:
            raise self._cut("the connection broke") from exc
        if not finished:
            raise self._cut("the stream ended before the answer was complete")
        # A final chunk with its finish_reason arrived; a missing [DONE] loses nothing.

    def _cut(self, why: str) -> StreamCutError:
        return StreamCutError(
            f"the answer from {self.base_url} was cut off: {why}",
            "the partial answer is kept in the history, marked interrupted; is the server "
            "still running?",
        )

    @staticmethod
    def _lines(response: http.client.HTTPResponse) -> Iterator[bytes]:
        while True:
            line = response.readline()
            if not line:
                return
            yield line

    def _read_all(self, response: http.client.HTTPResponse) -> bytes:
        try:
            return response.read()
        except TimeoutError as exc:
            raise self._timeout() from exc
        except (OSError, http.client.HTTPException) as exc:
            raise RemoteError(
                f"cannot read the answer of {self.base_url}: the connection broke",
                "is the server still running?",
            ) from exc

    def _connection(self) -> http.client.HTTPConnection:
        cls = (http.client.HTTPSConnection if self._scheme == "https"
               else http.client.HTTPConnection)
        return cls(self._host, self._port, timeout=self.timeout)  # type: ignore[arg-type]

    def _headers(self, has_body: bool) -> dict[str, str]:
        headers = {"Accept": "application/json, text/event-stream", "User-Agent": "chatcli"}
        if has_body:
            headers["Content-Type"] = "application/json"
        if self.api_key_env:
            key = os.environ.get(self.api_key_env)
            if not key:
                raise RemoteError(
                    f"the environment variable {self.api_key_env} (api_key_env) is not set",
                    f"export {self.api_key_env}=YOUR_KEY (the key never goes in models.toml)",
                )
            self._key = key
            headers["Authorization"] = f"Bearer {key}"
        return headers

    def _request(
        self, method: str, path: str, body: dict[str, Any] | None
    ) -> tuple[http.client.HTTPResponse, http.client.HTTPConnection]:
        data = None if body is None else json.dumps(body).encode("utf-8")
        headers = self._headers(data is not None)
        attempt = 0
        while True:
            conn = self._connection()
            try:
                conn.request(method, self._prefix + path, body=data, headers=headers)
                response = conn.getresponse()
            except ConnectionRefusedError as exc:
                conn.close()
                raise RemoteError(
                    f"cannot reach {self.base_url}: connection refused",
                    "is the server running? start it, or fix base_url (--base-url)",
                ) from exc
            except socket.gaierror as exc:
                conn.close()
                raise RemoteError(
                    f"cannot reach {self.base_url}: unknown host {self._host}",
                    "check the host name in base_url (--base-url)",
                ) from exc
            except TimeoutError as exc:
                conn.close()
                raise self._timeout() from exc
            except http.client.RemoteDisconnected as exc:  # also a BadStatusLine
                conn.close()
                raise RemoteError(
                    f"cannot reach {self.base_url}: the server closed the connection "
                    "without answering",
                    "is the server running, and is base_url (--base-url) right?",
                ) from exc
            except http.client.BadStatusLine as exc:
                conn.close()
                raise self._not_http(exc) from exc
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                raise RemoteError(
                    f"cannot reach {self.base_url}: {self._quote(str(exc)) or type(exc).__name__}",
                    "is the server running, and is base_url (--base-url) right?",
                ) from exc
            if response.status < 400:
                return response, conn
            try:
                text = self._read_all(response)
            finally:
                conn.close()
            if response.status == 429 and attempt < self.retries:
                attempt += 1
                self.sleep(self._retry_after(response, attempt))
                continue
            raise self._status_error(response, text, path, attempt)

    # -- errors --------------------------------------------------------------------
    def _timeout(self) -> RemoteError:
        return RemoteError(
            f"no answer from {self.base_url} within {self.timeout:g} s (timeout)",
            "the server may be busy or still loading the model; raise timeout in models.toml",
        )

    def _not_http(self, exc: http.client.BadStatusLine) -> RemoteError:
        """A first line that is not `HTTP/x.y NNN ...` (an SSH or mail server, TLS, noise)."""
        line = exc.line if isinstance(exc.line, str) else ""
        sent = self._quote(line)
        said = f" (it sent '{sent}')" if sent else ""
        return RemoteError(
            f"{self.base_url} did not answer in HTTP{said}",
            "check the host and port in base_url (--base-url): they must be the HTTP API's "
            "(https:// for TLS)",
        )

    def _retry_after(self, response: http.client.HTTPResponse, attempt: int) -> float:
        value = (response.getheader("Retry-After") or "").strip()
        wait: float | None = None
        if value:
            try:
                wait = float(value)
            except ValueError:
                try:
                    when = email.utils.parsedate_to_datetime(value)
                    wait = when.timestamp() - time.time()
                except (TypeError, ValueError):
                    wait = None
        if wait is None:
            wait = float(2 ** (attempt - 1))
        return min(max(wait, 0.0), self.max_wait)

    def _quote(self, text: str) -> str:
        """Server text fit for one error line: key masked, one line, 200 characters."""
        if self._key:
            text = text.replace(self._key, "***")
        line = " ".join(_printable(text[: QUOTE_LIMIT * 20]).split())
        if self._key:  # a key the server broke with control characters, joined again
            line = line.replace(self._key, "***")
        if len(line) > QUOTE_LIMIT:
            line = line[: QUOTE_LIMIT - 1].rstrip() + "…"
        return line

    def _message(self, data: Any) -> str:
        """The human part of an error body ({"error": {"message"}}, {"detail"}, ...)."""
        found: Any = data
        if isinstance(data, dict):
            found = data.get("error", data.get("detail", data.get("message", data)))
            if isinstance(found, dict):
                found = found.get("message", found)
        if isinstance(found, list) and found and isinstance(found[0], dict):  # pydantic detail
            found = found[0].get("msg", found[0])
        return self._quote(found if isinstance(found, str) else json.dumps(found))

    def _status_error(
        self, response: http.client.HTTPResponse, raw: bytes, path: str, retried: int
    ) -> RemoteError:
        status = response.status
        reason = self._quote(response.reason or "") or _REASONS.get(status, "")
        text = raw.decode("utf-8", errors="replace")
        try:
            detail = self._message(_json(text))
        except ValueError:
            detail = self._quote(text)
        code = f"{status} {reason}".strip()
        said = f": {detail}" if detail else ""
        if status in (401, 403):
            hint = (f"check the key in ${self.api_key_env} (api_key_env)" if self.api_key_env
                    else "set api_key_env for the alias to the NAME of the environment "
                    "variable that holds the key")
            return RemoteError(f"{self.base_url} refused the request ({code}){said}", hint)
        if status == 404:
            return RemoteError(
                f"{self.base_url}{path}: not found ({code}){said}",
                "check model in models.toml (GET /models lists what the server serves) and "
                "that base_url is the API root, often ending in /v1",
            )
        if status == 429:
            return RemoteError(
                f"{self.base_url} is rate limiting ({code}) and still was after {retried} "
                f"retries{said}", "wait a little and try again",
            )
        if status >= 500:
            return RemoteError(f"{self.base_url} failed ({code}){said}",
                               "see the server's log; try again once it is healthy")
        return RemoteError(
            f"{self.base_url} rejected the request ({code}){said}",
            "a decoding parameter may be out of the server's range, or the prompt too long "
            "for its context",
        )


def _json(text: str | bytes) -> Any:
    """`json.loads`, with nesting too deep to decode as one more `ValueError`."""
    try:
        return json.loads(text)
    except RecursionError as exc:
        raise ValueError("JSON nested too deeply") from exc


def _printable(text: str) -> str:
    """`text` with each character that is not printable (line breaks, control and format
    characters such as escapes and bidi marks, lone surrogates, unassigned code points)
    as a space."""
    return "".join(c if c.isprintable() else " " for c in text)
