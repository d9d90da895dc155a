"""Many concurrent SSE chat streams from one cheap asyncio client.

Why hand-rolled: 200 streams x ~100 events/s is ~20k events per second, and
the box has two cores shared with the gateway and the upstream. A general
HTTP client would spend more CPU than the gateway under test and blur the
"direct vs gateway" comparison. This speaks only the HTTP/1.1 needed here:
one request per connection, a status line, headers, and a chunked (or
``Content-Length`` / close-delimited) body carrying ``data:`` events.

Every stream is verified, not just timed: status 200, exactly the expected
number of content-bearing chunks, and ``data: [DONE]`` as the last event.
"""
from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field

try:  # the gateway depends on orjson; fall back so the client runs anywhere
    from orjson import loads as _loads
except ImportError:  # pragma: no cover
    _loads = json.loads

MAX_HEAD = 64 * 1024


@dataclass
class StreamResult:
    """What one stream did; ``error`` is empty only for a complete, valid stream."""

    ttfb: float | None = None  # seconds from connect start to the first data: event
    elapsed: float | None = None  # seconds from connect start to [DONE] + end of body
    content_chunks: int = 0
    events: int = 0
    error: str = ""


@dataclass
class StreamRun:
    """All streams of one run (direct or through the gateway)."""

    results: list[StreamResult] = field(default_factory=list)
    total: float = 0.0  # wall-clock seconds until the last stream finished

    @property
    def failures(self) -> list[str]:
        return [r.error for r in self.results if r.error]


class _SSEStream(asyncio.Protocol):
    """Parse one response incrementally; resolve ``done`` exactly once."""

    def __init__(self, request: bytes, expected: int, started: float, done: asyncio.Future) -> None:
        self.request = request
        self.expected = expected
        self.started = started
        self.done = done
        self.result = StreamResult()
        self.raw = bytearray()  # undecoded bytes from the socket
        self.events = bytearray()  # decoded body bytes not yet split into events
        self.head_done = False
        self.chunked = False
        self.remaining: int | None = None  # Content-Length left; None = until close
        self.body_done = False
        self.saw_done = False
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.write(self.request)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        self.raw += data
        try:
            if not self.head_done and not self._parse_head():
                return
            self._parse_body()
            self._parse_events()
        except ValueError as exc:
            self._finish(f"protocol error: {exc}")
            return
        if self.body_done:
            self._finish()

    def eof_received(self) -> bool:
        if self.head_done and not self.chunked and self.remaining is None:
            self.body_done = True  # close-delimited body ends here
            self._parse_events()
        self._finish()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._finish(f"connection lost: {exc}" if exc else "")

    # --- parsing ----------------------------------------------------------------------
    def _parse_head(self) -> bool:
        end = self.raw.find(b"\r\n\r\n")
        if end < 0:
            if len(self.raw) > MAX_HEAD:
                raise ValueError("response head too large")
            return False
        lines = bytes(self.raw[:end]).decode("latin-1").split("\r\n")
        del self.raw[:end + 4]
        status = lines[0].split(" ", 2)
        if len(status) < 2 or status[1] != "200":
            raise ValueError(f"status {lines[0]!r}")
        for line in lines[1:]:
            name, _, value = line.partition(":")
            name, value = name.strip().lower(), value.strip().lower()
            if name == "transfer-encoding" and "chunked" in value:
                self.chunked = True
            elif name == "content-length":
                self.remaining = int(value)
        self.head_done = True
        return True

    def _parse_body(self) -> None:
        """Move decoded body bytes from ``raw`` to ``events``."""
        if not self.chunked:
            take = len(self.raw) if self.remaining is None else min(self.remaining, len(self.raw))
            self.events += self.raw[:take]
            del self.raw[:take]
            if self.remaining is not None:
                self.remaining -= take
                self.body_done = self.remaining == 0
            return
        while not self.body_done:  # each pass consumes one chunk or returns
            line_end = self.raw.find(b"\r\n")
            if line_end < 0:
                return
            size = int(bytes(self.raw[:line_end]).split(b";", 1)[0], 16)
            if size == 0:  # last chunk; trailers are not used by SSE
                if self.raw.find(b"\r\n\r\n", line_end) < 0:  # wait for the end of trailers
                    return
                self.body_done = True
                return
            if len(self.raw) < line_end + 2 + size + 2:
                return
            self.events += self.raw[line_end + 2:line_end + 2 + size]
            del self.raw[:line_end + 2 + size + 2]

    def _parse_events(self) -> None:
        while True:
            lf, crlf = self.events.find(b"\n\n"), self.events.find(b"\r\n\r\n")
            if lf < 0 and crlf < 0:
                return
            end, sep = (lf, 2) if crlf < 0 or (0 <= lf < crlf) else (crlf, 4)
            event = bytes(self.events[:end])
            del self.events[:end + sep]
            for line in event.splitlines():
                if line.startswith(b"data:"):
                    self._on_data(line[5:].strip())

    def _on_data(self, payload: bytes) -> None:
        now = time.perf_counter()
        if self.result.ttfb is None:
            self.result.ttfb = now - self.started
        if self.saw_done:
            raise ValueError("data after [DONE]")
        if payload == b"[DONE]":
            self.saw_done = True
            return
        self.result.events += 1
        chunk = _loads(payload)
        choices = chunk.get("choices") or [{}]
        if (choices[0].get("delta") or {}).get("content"):
            self.result.content_chunks += 1

    def _finish(self, error: str = "") -> None:
        if self.done.done():
            return
        result = self.result
        result.elapsed = time.perf_counter() - self.started
        if not error:
            if not self.body_done:
                error = "stream cut before the end of the body"
            elif not self.saw_done:
                error = "no data: [DONE]"
            elif result.content_chunks != self.expected:
                error = f"{result.content_chunks} content chunks, expected {self.expected}"
        result.error = error
        if self.transport is not None:
            self.transport.close()
        self.done.set_result(result)


def _request(host: str, port: int, body: bytes, api_key: str) -> bytes:
    return (b"POST /v1/chat/completions HTTP/1.1\r\nHost: %s:%d\r\n"
            b"Authorization: Bearer %s\r\nContent-Type: application/json\r\n"
            b"Accept: text/event-stream\r\nContent-Length: %d\r\n\r\n%s") % (
                host.encode(), port, api_key.encode(), len(body), body)


def _open(loop: asyncio.AbstractEventLoop, host: str, port: int, request: bytes, expected: int,
          ) -> tuple[_SSEStream, asyncio.Future]:
    """Start one stream; a failed connect resolves its future with an error."""
    done: asyncio.Future = loop.create_future()
    stream = _SSEStream(request, expected, time.perf_counter(), done)

    def connected(task: asyncio.Task) -> None:
        if not task.cancelled() and task.exception() is not None and not done.done():
            done.set_result(StreamResult(error=f"connect failed: {task.exception()!r}"))

    loop.create_task(loop.create_connection(lambda: stream, host, port)).add_done_callback(connected)
    return stream, done


async def _run(host: str, port: int, streams: int, expected: int, timeout: float, api_key: str,
               model: str) -> StreamRun:
    body = json.dumps({
        "model": model,
        "messages": [{"role": "user", "content": "Stream a short answer about connection pooling."}],
        "stream": True,
        "max_tokens": 256,
    }, separators=(",", ":")).encode()
    request = _request(host, port, body, api_key)
    loop = asyncio.get_running_loop()
    started = time.perf_counter()
    opened = [_open(loop, host, port, request, expected) for _ in range(streams)]
    await asyncio.wait([done for _, done in opened], timeout=timeout)
    total = time.perf_counter() - started
    for stream, _ in opened:  # anything still open after the deadline counts as cut
        stream._finish(f"no complete stream within {timeout:.0f} s")
    return StreamRun(results=[done.result() for _, done in opened], total=total)


def run_streams(host: str, port: int, streams: int, expected_chunks: int, timeout: float = 60.0,
                api_key: str = "bench-master-key", model: str = "bench-model") -> StreamRun:
    """Open ``streams`` concurrent streaming requests (``Authorization: Bearer <api_key>``, ``model``)
    and wait for all."""
    return asyncio.run(_run(host, port, streams, expected_chunks, timeout, api_key, model))
