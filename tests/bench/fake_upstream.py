"""A deliberately fast fake OpenAI-compatible upstream for the benchmark.

Why not reuse a web framework: the benchmark compares "direct to upstream"
against "through the gateway", so the upstream must cost as little CPU as
possible or it becomes the thing being measured. This is a bare
``asyncio.Protocol`` speaking just enough HTTP/1.1 (keep-alive, pipelining,
``Content-Length`` bodies) and answering instantly.

* ``POST /v1/chat/completions`` -> a realistic ``chat.completion`` JSON body.
* Same with ``"stream": true`` -> ``text/event-stream`` over chunked transfer
  encoding: a role chunk, ``--chunks`` content chunks, a finish chunk and
  ``data: [DONE]``, each ``--chunk-delay-ms`` apart (so a default stream
  lasts about one second, like a short real completion).
* ``POST /v1/messages`` -> the same answers in Anthropic's Messages format,
  for ``anthropic/`` deployments (``--providers``): a ``message`` JSON body, or
  with ``"stream": true`` the named SSE events Anthropic sends
  (``message_start``, ``content_block_start``, ``ping``, one
  ``content_block_delta``/``text_delta`` per content chunk,
  ``content_block_stop``, ``message_delta`` with usage, ``message_stop``) with
  the same chunk count and delays. It answers 401 unless the request carries
  ``x-api-key: bench-upstream-key`` and an ``anthropic-version`` header.
* ``POST /v1beta/models/<m>:generateContent`` and ``:streamGenerateContent``
  -> Gemini's format, for ``gemini/`` deployments: a ``GenerateContentResponse``,
  or one CRLF-framed ``data:`` event per content chunk (cumulative
  ``usageMetadata``; the last carries ``finishReason``), the body ending with
  no terminator, as Gemini's does. 400 API_KEY_INVALID unless
  ``x-goog-api-key: bench-upstream-key``.
* ``POST /model/<id>/converse`` and ``/converse-stream`` -> Bedrock Converse,
  for ``bedrock/`` deployments: JSON, or AWS event-stream binary frames
  (``messageStart``, one ``contentBlockDelta`` per content chunk,
  ``contentBlockStop``, ``messageStop``, ``metadata``), precomputed at start.
  Requests must carry a SigV4 ``Authorization`` header (not verified here:
  the functional tests do that; the gateway's signing cost is what counts).
* ``GET /health`` -> 200, used by the runner as a readiness probe.

Run: ``python tests/bench/fake_upstream.py --port 8100 [--procs 2]``.
With ``--procs N`` it forks N serving processes that share the port through
``SO_REUSEPORT`` so one Python process is never the ceiling.
"""
from __future__ import annotations

import argparse
import asyncio
import binascii
import json
import os
import signal
import socket
import struct
import sys
import time

MAX_HEAD = 64 * 1024
MAX_BODY = 4 * 1024 * 1024
BACKLOG = 4096  # 200 simultaneous stream connects must not overflow the accept queue

COMPLETION = (
    '{"id":"chatcmpl-bench%d","object":"chat.completion","created":%d,"model":%s,'
    '"system_fingerprint":"fp_bench","choices":[{"index":0,"message":{"role":"assistant",'
    '"content":"Connection pooling reuses established connections, which removes the '
    'handshake cost from every request. It also caps concurrent sockets, protecting both '
    'the client and the server under load.","refusal":null},"logprobs":null,'
    '"finish_reason":"stop"}],"usage":{"prompt_tokens":31,"completion_tokens":36,'
    '"total_tokens":67}}'
)
CHUNK = (
    '{"id":"chatcmpl-bench%d","object":"chat.completion.chunk","created":%d,"model":%s,'
    '"system_fingerprint":"fp_bench","choices":[{"index":0,"delta":%s,"logprobs":null,'
    '"finish_reason":%s}]}'
)
WORDS = ("Connection", " pooling", " reuses", " sockets", ",", " which", " saves",
         " a", " handshake", " per", " request", ".")
STREAM_HEAD = (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
               b"Cache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n\r\n")
DONE_EVENT = b"data: [DONE]\n\n"

# Anthropic Messages API (tests/reference/fixtures/anthropic/messages-stream-text.sse has a recorded stream)
ANTHROPIC_KEY = "bench-upstream-key"
MESSAGE = (
    '{"id":"msg_bench%d","type":"message","role":"assistant","model":%s,"content":[{"type":"text",'
    '"text":"Connection pooling reuses established connections, which removes the handshake cost from '
    'every request. It also caps concurrent sockets, protecting both the client and the server under '
    'load."}],"stop_reason":"end_turn","stop_sequence":null,"usage":{"input_tokens":31,'
    '"cache_creation_input_tokens":0,"cache_read_input_tokens":0,"output_tokens":36}}'
)
ANTHROPIC_START = (
    'event: message_start\ndata: {"type":"message_start","message":{"id":"msg_bench%d","type":"message",'
    '"role":"assistant","model":%s,"content":[],"stop_reason":null,"stop_sequence":null,"usage":'
    '{"input_tokens":31,"cache_creation_input_tokens":0,"cache_read_input_tokens":0,"output_tokens":1}}}\n\n'
)
ANTHROPIC_BLOCK_START = (b'event: content_block_start\ndata: {"type":"content_block_start","index":0,'
                         b'"content_block":{"type":"text","text":""}}\n\n')
ANTHROPIC_PING = b'event: ping\ndata: {"type": "ping"}\n\n'
ANTHROPIC_DELTA = ('event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
                   '"delta":{"type":"text_delta","text":%s}}\n\n')
ANTHROPIC_BLOCK_STOP = b'event: content_block_stop\ndata: {"type":"content_block_stop","index":0}\n\n'
ANTHROPIC_MESSAGE_DELTA = ('event: message_delta\ndata: {"type":"message_delta","delta":{"stop_reason":"end_turn",'
                           '"stop_sequence":null},"usage":{"output_tokens":%d}}\n\n')
ANTHROPIC_MESSAGE_STOP = b'event: message_stop\ndata: {"type":"message_stop"}\n\n'
ANTHROPIC_AUTH_ERROR = (b'{"type":"error","error":{"type":"authentication_error","message":"invalid x-api-key"},'
                        b'"request_id":"req_bench"}')


# Gemini generateContent (tests/reference/fixtures/gemini/googleai/streaming-success-basic-reply-short.txt)
GEMINI_EVENT = ('data: {"candidates":[{"content":{"parts":[{"text":%s}],"role":"model"},"index":0%s}],'
                '"usageMetadata":{"promptTokenCount":31,"candidatesTokenCount":%d,"totalTokenCount":%d},'
                '"modelVersion":"bench-upstream-model","responseId":"bench%d"}\r\n\r\n')
GEMINI_ANSWER = ('{"candidates":[{"content":{"parts":[{"text":"Connection pooling reuses established connections, '
                 'which removes the handshake cost from every request."}],"role":"model"},"finishReason":"STOP",'
                 '"index":0}],"usageMetadata":{"promptTokenCount":31,"candidatesTokenCount":36,'
                 '"totalTokenCount":67},"modelVersion":"bench-upstream-model","responseId":"bench%d"}')
GEMINI_KEY_ERROR = (b'{"error":{"code":400,"message":"API key not valid. Please pass a valid API key.",'
                    b'"status":"INVALID_ARGUMENT","details":[{"@type":"type.googleapis.com/google.rpc.ErrorInfo",'
                    b'"reason":"API_KEY_INVALID","domain":"googleapis.com"}]}}')

# Bedrock Converse (tests/reference/fixtures/bedrock/converse-stream-tool-use.bin has a recorded-shape stream)
CONVERSE_ANSWER = ('{"output":{"message":{"role":"assistant","content":[{"text":"Connection pooling reuses '
                   'established connections."}]}},"stopReason":"end_turn","usage":{"inputTokens":31,'
                   '"outputTokens":36,"totalTokens":67},"metrics":{"latencyMs":5}}')


def _frame(event_type: str, payload: bytes) -> bytes:
    """One AWS event-stream message: prelude (lengths + CRC), string headers, payload, message CRC."""
    headers = b""
    for name, value in ((":event-type", event_type), (":content-type", "application/json"),
                        (":message-type", "event")):
        headers += bytes([len(name)]) + name.encode() + b"\x07" + struct.pack(">H", len(value)) + value.encode()
    total = 12 + len(headers) + len(payload) + 4
    prelude = struct.pack(">II", total, len(headers))
    prelude += struct.pack(">I", binascii.crc32(prelude))
    message = prelude + headers + payload
    return message + struct.pack(">I", binascii.crc32(message))


CONVERSE_START = _frame("messageStart", b'{"role":"assistant"}')
CONVERSE_WORDS = [_frame("contentBlockDelta", b'{"contentBlockIndex":0,"delta":{"text":%s}}' % json.dumps(word).encode())
                  for word in WORDS]
CONVERSE_END = (_frame("contentBlockStop", b'{"contentBlockIndex":0}') + _frame("messageStop", b'{"stopReason":"end_turn"}'))
EVENTSTREAM_HEAD = (b"HTTP/1.1 200 OK\r\nContent-Type: application/vnd.amazon.eventstream\r\n"
                    b"Transfer-Encoding: chunked\r\n\r\n")
GEMINI_STREAM_HEAD = (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                      b"Transfer-Encoding: chunked\r\n\r\n")


def _chunked(payload: bytes) -> bytes:
    """Frame one payload as an HTTP/1.1 chunk."""
    return b"%x\r\n%s\r\n" % (len(payload), payload)


def _response(status: str, body: bytes, ctype: bytes = b"application/json", close: bool = False) -> bytes:
    head = b"HTTP/1.1 %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n" % (
        status.encode(), ctype, len(body))
    if close:
        head += b"Connection: close\r\n"
    return head + b"\r\n" + body


class Upstream(asyncio.Protocol):
    """One client connection. Requests are handled strictly in order; while a
    stream is being written, later pipelined requests wait in the buffer."""

    counter = 0  # per process; only makes response ids unique-looking

    def __init__(self, chunks: int, delay: float) -> None:
        self.chunks = chunks
        self.delay = delay
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.streaming = False
        self.timer: asyncio.TimerHandle | None = None

    # --- connection -------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.transport = None

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if not self.streaming:
            self._drain_requests()

    # --- request parsing --------------------------------------------------------------
    def _drain_requests(self) -> None:
        """Handle every complete request in the buffer (bounded by its size)."""
        while self.transport is not None and not self.streaming:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buf) > MAX_HEAD:
                    self._fail("431 Request Header Fields Too Large")
                return
            lines = bytes(self.buf[:end]).decode("latin-1").split("\r\n")
            parts = lines[0].split(" ")
            if len(parts) != 3:
                self._fail("400 Bad Request")
                return
            method, path, version = parts
            length, keep_alive = 0, version == "HTTP/1.1"
            api_key = version_header = goog_key = authorization = None
            for line in lines[1:]:
                name, _, value = line.partition(":")
                name = name.strip().lower()
                if name == "content-length":
                    length = int(value) if value.strip().isdigit() else -1
                elif name == "connection":
                    token = value.strip().lower()
                    keep_alive = token == "keep-alive" or (keep_alive and token != "close")
                elif name == "transfer-encoding":
                    length = -1  # chunked request bodies are not needed by any client here
                elif name == "x-api-key":
                    api_key = value.strip()
                elif name == "anthropic-version":
                    version_header = value.strip()
                elif name == "x-goog-api-key":
                    goog_key = value.strip()
                elif name == "authorization":
                    authorization = value.strip()
            if length < 0 or length > MAX_BODY:
                self._fail("400 Bad Request")
                return
            if len(self.buf) < end + 4 + length:
                return
            body = bytes(self.buf[end + 4:end + 4 + length])
            del self.buf[:end + 4 + length]
            path = path.split("?", 1)[0]
            if path == "/v1/messages" and (api_key != ANTHROPIC_KEY or not version_header):
                self._reply("401 Unauthorized", ANTHROPIC_AUTH_ERROR, keep_alive)
                continue
            if path.startswith("/v1beta/") and goog_key != ANTHROPIC_KEY:
                self._reply("400 Bad Request", GEMINI_KEY_ERROR, keep_alive)
                continue
            if path.startswith("/model/") and not (authorization or "").startswith("AWS4-HMAC-SHA256 "):
                self._reply("403 Forbidden", b'{"message":"Missing Authentication Token"}', keep_alive)
                continue
            self._dispatch(method, path, body, keep_alive)

    def _fail(self, status: str) -> None:
        assert self.transport is not None
        self.transport.write(_response(status, b'{"error":{"message":"bad request"}}', close=True))
        self.transport.close()
        self.transport = None

    # --- routing ----------------------------------------------------------------------
    def _dispatch(self, method: str, path: str, body: bytes, keep_alive: bool) -> None:
        assert self.transport is not None
        if path == "/health" and method == "GET":
            self._reply("200 OK", b'{"status":"ok"}', keep_alive)
        elif path not in ("/v1/chat/completions", "/v1/messages") and not _is_gemini(path) \
                and not _is_converse(path):
            self._reply("404 Not Found", b'{"error":{"message":"not found"}}', keep_alive)
        elif method != "POST":
            self._reply("405 Method Not Allowed", b'{"error":{"message":"use POST"}}', keep_alive)
        else:
            try:
                request = json.loads(body)
                model = json.dumps(str(request.get("model", "bench-upstream-model")))
            except (ValueError, AttributeError):
                self._reply("400 Bad Request", b'{"error":{"message":"invalid JSON"}}', keep_alive)
                return
            Upstream.counter += 1
            anthropic = path == "/v1/messages"
            if _is_gemini(path):
                if path.endswith(":streamGenerateContent"):
                    self._start_stream(model, keep_alive, wire="gemini")
                else:
                    self._reply("200 OK", (GEMINI_ANSWER % Upstream.counter).encode(), keep_alive)
            elif _is_converse(path):
                if path.endswith("/converse-stream"):
                    self._start_stream(model, keep_alive, wire="bedrock")
                else:
                    self._reply("200 OK", CONVERSE_ANSWER.encode(), keep_alive)
            elif request.get("stream") is True:
                self._start_stream(model, keep_alive, "anthropic" if anthropic else "openai")
            elif anthropic:
                self._reply("200 OK", (MESSAGE % (Upstream.counter, model)).encode(), keep_alive)
            else:
                body = (COMPLETION % (Upstream.counter, int(time.time()), model)).encode()
                self._reply("200 OK", body, keep_alive)

    def _reply(self, status: str, body: bytes, keep_alive: bool) -> None:
        assert self.transport is not None
        self.transport.write(_response(status, body, close=not keep_alive))
        if not keep_alive:
            self.transport.close()
            self.transport = None

    # --- streaming --------------------------------------------------------------------
    def _start_stream(self, model: str, keep_alive: bool, wire: str = "openai") -> None:
        """Send headers plus the role chunk (Anthropic: message_start, content_block_start
        and ping; Bedrock: messageStart; Gemini: nothing before its first text) now;
        the rest on a timer chain."""
        assert self.transport is not None
        self.streaming = True
        self.keep_alive = keep_alive
        self.wire = wire
        self.stream_id = Upstream.counter
        self.model = model
        self.created = int(time.time())
        self.sent = 0
        if wire == "anthropic":
            start = (ANTHROPIC_START % (self.stream_id, model)).encode()
            self.transport.write(STREAM_HEAD + _chunked(start) + _chunked(ANTHROPIC_BLOCK_START)
                                 + _chunked(ANTHROPIC_PING))
        elif wire == "bedrock":
            self.transport.write(EVENTSTREAM_HEAD + _chunked(CONVERSE_START))
        elif wire == "gemini":
            self.transport.write(GEMINI_STREAM_HEAD)
        else:
            first = self._event('{"role":"assistant","content":""}', "null")
            self.transport.write(STREAM_HEAD + _chunked(first))
        self.timer = asyncio.get_running_loop().call_later(self.delay, self._next_chunk)

    def _event(self, delta: str, finish: str) -> bytes:
        return b"data: %s\n\n" % (CHUNK % (self.stream_id, self.created, self.model, delta, finish)).encode()

    def _next_chunk(self) -> None:
        self.timer = None
        if self.transport is None:
            return
        if self.sent < self.chunks:
            word = json.dumps(WORDS[self.sent % len(WORDS)])
            last = self.sent == self.chunks - 1
            if self.wire == "anthropic":
                self.transport.write(_chunked((ANTHROPIC_DELTA % word).encode()))
            elif self.wire == "bedrock":
                self.transport.write(_chunked(CONVERSE_WORDS[self.sent % len(WORDS)]))
            elif self.wire == "gemini":   # usage is cumulative; the last event carries the finish reason
                finish = ',"finishReason":"STOP"' if last else ""
                event = GEMINI_EVENT % (word, finish, self.sent + 1, 31 + self.sent + 1, self.stream_id)
                self.transport.write(_chunked(event.encode()))
            else:
                self.transport.write(_chunked(self._event('{"content":%s}' % word, "null")))
            self.sent += 1
            self.timer = asyncio.get_running_loop().call_later(self.delay, self._next_chunk)
            return
        if self.wire == "anthropic":
            delta = (ANTHROPIC_MESSAGE_DELTA % (self.chunks + 1)).encode()  # output_tokens is cumulative
            self.transport.write(_chunked(ANTHROPIC_BLOCK_STOP) + _chunked(delta) + _chunked(ANTHROPIC_MESSAGE_STOP)
                                 + b"0\r\n\r\n")
        elif self.wire == "bedrock":
            usage = b'{"usage":{"inputTokens":31,"outputTokens":%d,"totalTokens":%d},"metrics":{"latencyMs":5}}' % (
                self.chunks, 31 + self.chunks)
            self.transport.write(_chunked(CONVERSE_END + _frame("metadata", usage)) + b"0\r\n\r\n")
        elif self.wire == "gemini":
            self.transport.write(b"0\r\n\r\n")   # no terminator event: the body just ends
        else:
            self.transport.write(_chunked(self._event("{}", '"stop"')) + _chunked(DONE_EVENT) + b"0\r\n\r\n")
        self.streaming = False
        if not self.keep_alive:
            self.transport.close()
            self.transport = None
        elif self.buf:
            self._drain_requests()


def _is_gemini(path: str) -> bool:
    return path.startswith("/v1beta/models/") and path.endswith((":generateContent", ":streamGenerateContent"))


def _is_converse(path: str) -> bool:
    return path.startswith("/model/") and path.endswith(("/converse", "/converse-stream"))


# --- process plumbing -----------------------------------------------------------------

def _listen_socket(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(BACKLOG)
    sock.setblocking(False)
    return sock


async def _serve(host: str, port: int, chunks: int, delay: float) -> None:
    loop = asyncio.get_running_loop()
    stop = loop.create_future()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda: stop.done() or stop.set_result(None))
    server = await loop.create_server(lambda: Upstream(chunks, delay), sock=_listen_socket(host, port),
                                      backlog=BACKLOG)
    async with server:
        await stop


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--procs", type=int, default=1, help="serving processes sharing the port")
    parser.add_argument("--chunks", type=int, default=100, help="content chunks per stream")
    parser.add_argument("--chunk-delay-ms", type=float, default=10.0)
    args = parser.parse_args(argv)
    if args.host != "127.0.0.1":
        parser.error("the fake upstream only listens on 127.0.0.1")

    children = []
    for _ in range(max(0, args.procs - 1)):
        pid = os.fork()
        if pid == 0:  # child: serve until signalled, never return into the parent's code
            try:
                asyncio.run(_serve(args.host, args.port, args.chunks, args.chunk_delay_ms / 1000))
            finally:
                os._exit(0)
        children.append(pid)
    try:
        asyncio.run(_serve(args.host, args.port, args.chunks, args.chunk_delay_ms / 1000))
    finally:
        for pid in children:
            try:
                os.kill(pid, signal.SIGTERM)
                os.waitpid(pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
