"""Client-side helpers for the functional tests: OpenAI error checks and a raw-socket SSE reader.

The SSE reader speaks HTTP/1.1 over a plain socket so a test sees every byte
the gateway (or nginx) sent, when it arrived, and can hang up at any moment.
"""
from __future__ import annotations

import json
import socket
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

from .conftest import MASTER_KEY, UPSTREAM_KEY, standard_config
from .gateway_process import GatewayProcess

from .openapi_schemas import validate as _spec_validate

ERROR_KEYS = {"message", "type", "param", "code"}
CHUNK_SCHEMAS = {"chat.completion.chunk": "CreateChatCompletionStreamResponse",
                 "text_completion": "CreateCompletionStreamChunk"}


def spec_check(schema: str, instance) -> None:
    """Validate against OpenAI's spec (raises SpecViolation; never a no-op)."""
    _spec_validate(schema, instance)


LEAKS = (MASTER_KEY, UPSTREAM_KEY, "Traceback", 'File "')


def assert_no_leak(text: str) -> None:
    for secret in LEAKS:
        assert secret not in text, f"response carries {secret!r}: {text[:500]}"


def assert_openai_error(response, status, type_, *, code=..., param=...) -> dict:
    """A requests.Response is an OpenAI-shaped JSON error; `...` = do not check that field."""
    statuses = status if isinstance(status, (tuple, set, frozenset)) else (status,)
    assert response.status_code in statuses, (response.status_code, response.text[:500])
    assert response.headers.get("Content-Type", "").split(";")[0].strip() == "application/json", \
        (response.headers.get("Content-Type"), response.text[:300])
    assert response.headers.get("x-request-id"), dict(response.headers)
    assert_no_leak(response.text)
    assert_no_leak(str(response.headers))
    body = response.json()
    assert isinstance(body, dict) and set(body) == {"error"}, body
    error = body["error"]
    assert isinstance(error, dict) and ERROR_KEYS <= set(error), error
    assert isinstance(error["message"], str) and error["message"].strip(), error
    assert error["type"] == type_, error
    if code is not ...:
        assert error["code"] == code, error
    if param is not ...:
        assert error["param"] == param, error
    spec_check("ErrorResponse", body)
    return error


@dataclass
class Event:
    raw: bytes            # the whole event, `data: …\n\n` included
    at: float             # monotonic time its last byte was received

    @property
    def data(self) -> bytes:
        assert self.raw.startswith(b"data: ") and self.raw.endswith(b"\n\n"), self.raw[:200]
        return self.raw[len(b"data: "):-2]

    def json(self):
        return json.loads(self.data)


class SSEResponse:
    """A streaming response read over a raw socket, event by event as the bytes arrive."""

    def __init__(self, sock: socket.socket, sent_at: float):
        self.sock = sock
        self.sent_at = sent_at
        self.status = 0
        self.headers: dict[str, str] = {}
        self.events: list[Event] = []
        self.body = b""                 # the decoded body so far
        self._buffer = b""              # raw bytes received, not yet decoded
        self._pending = b""             # decoded body bytes not yet split into events
        self._chunked = False
        self._chunk_left = 0            # bytes left in the current chunk (chunked coding)
        self._length_left: int | None = None
        self._eof = False

    @classmethod
    def open(cls, url: str, path: str, body: dict | bytes, headers: dict | None = None,
             timeout: float = 10.0, read_head: bool = True) -> "SSEResponse":
        parts = urlsplit(url)
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        sock = socket.create_connection((parts.hostname, parts.port), timeout=timeout)
        head = {"Host": parts.netloc, "Content-Type": "application/json", "Accept": "text/event-stream",
                "Content-Length": str(len(data)), "Connection": "close", **(headers or {})}
        request = f"POST {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in head.items()) + "\r\n"
        response = cls(sock, time.monotonic())
        sock.sendall(request.encode() + data)
        if read_head:
            response._read_head()
        return response

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())

    def next_event(self) -> Event | None:
        """The next whole event (stamped with its arrival time), or None at the end of the body."""
        while True:
            end = self._pending.find(b"\n\n")
            if end >= 0:
                raw, self._pending = self._pending[:end + 2], self._pending[end + 2:]
                event = Event(raw, time.monotonic())
                self.events.append(event)
                return event
            if self._eof:
                return None
            self._feed_body()

    def read_all(self) -> list[Event]:
        while self.next_event() is not None:
            pass
        assert not self._pending, f"the stream ended inside an event: {self._pending[:200]!r}"
        return self.events

    def read_body(self) -> bytes:
        while not self._eof:
            self._feed_body()
        return self.body

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> "SSEResponse":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- internals -------------------------------------------------------------------

    def _more(self) -> bool:
        data = self.sock.recv(65536)
        self._buffer += data
        return bool(data)

    def _read_head(self) -> None:
        while b"\r\n\r\n" not in self._buffer:
            if not self._more():
                raise AssertionError(f"connection closed before the response head: {self._buffer!r}")
        head, self._buffer = self._buffer.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        self.status = int(lines[0].split()[1])
        for line in lines[1:]:
            name, _, value = line.partition(":")
            self.headers[name.strip().lower()] = value.strip()
        self._chunked = "chunked" in self.headers.get("transfer-encoding", "").lower()
        if not self._chunked and "content-length" in self.headers:
            self._length_left = int(self.headers["content-length"])

    def _deliver(self, data: bytes) -> None:
        self.body += data
        self._pending += data

    def _feed_body(self) -> None:
        """Decode at least one more piece of the body, or set `_eof`."""
        if not self._chunked:
            if self._length_left == 0 or (not self._buffer and not self._more()):
                self._eof = True
                return
            data, self._buffer = self._buffer, b""
            if self._length_left is not None:
                data = data[:self._length_left]
                self._length_left -= len(data)
            self._deliver(data)
            return
        while not self._chunk_left:               # at a chunk-size line (or the CRLF before one)
            while b"\r\n" not in self._buffer:
                if not self._more():
                    self._eof = True              # cut off: the caller sees what came
                    return
            line, self._buffer = self._buffer.split(b"\r\n", 1)
            if not line:
                continue                          # the CRLF that ends a chunk's data
            size = int(line.split(b";")[0], 16)
            if size == 0:
                self._eof = True
                return
            self._chunk_left = size
        if not self._buffer and not self._more():
            self._eof = True
            return
        data = self._buffer[:self._chunk_left]
        self._buffer = self._buffer[len(data):]
        self._chunk_left -= len(data)
        self._deliver(data)


def chat_body(model: str, content: str = "hi", **extra) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": content}], **extra}


def assert_sse_framing(response: SSEResponse, *, behind_nginx: bool = False) -> None:
    """Status 200, SSE headers, `data: <json>\n\n` events ending with `data: [DONE]\n\n`.

    nginx consumes `X-Accel-Buffering` (it is addressed to nginx), so it is checked only on the
    gateway's own responses."""
    assert response.status == 200, (response.status, response.body[:300])
    assert response.header("content-type").split(";")[0].strip() == "text/event-stream", response.headers
    if not behind_nginx:
        assert (response.header("x-accel-buffering") or "").lower() == "no", response.headers
    assert response.header("x-request-id"), response.headers
    assert response.events, "the stream carried no events"
    assert response.events[-1].raw == b"data: [DONE]\n\n", response.events[-1].raw[:200]
    assert sum(1 for e in response.events if e.raw == b"data: [DONE]\n\n") == 1
    for event in response.events[:-1]:
        assert event.raw.startswith(b"data: ") and event.raw.endswith(b"\n\n"), event.raw[:200]
        assert b"\n" not in event.data, f"multi-line event: {event.raw[:200]!r}"
        chunk = event.json()
        assert isinstance(chunk, dict), event.raw[:200]
        if chunk.get("object") in CHUNK_SCHEMAS:
            spec_check(CHUNK_SCHEMAS[chunk["object"]], chunk)
    assert_no_leak(response.body.decode("utf-8", "replace"))


def start_isolated_gateway(upstream, folder, *, allowed_fails: int = 1000) -> GatewayProcess:
    """A gateway on the standard config of its own, so that upstream attempts counted here are not
    skewed by cooldowns other tests caused on the shared gateway (`allowed_fails` high: none here)."""
    text = standard_config(upstream).replace("num_retries: 1\n", f"num_retries: 1\n  allowed_fails: {allowed_fails}\n")
    assert f"allowed_fails: {allowed_fails}" in text
    path = folder / "config.yaml"
    path.write_text(text)
    return GatewayProcess(path, workers=2, env={"TEST_UPSTREAM_KEY": UPSTREAM_KEY}).start()
