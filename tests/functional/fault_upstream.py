"""A fault-injecting OpenAI-compatible upstream on raw sockets, for the fault matrix.

Unlike fake_upstream.py (http.server), this one writes HTTP/1.1 byte by byte
itself, so it can misbehave at any point of an answer: hang before the status
line, reset the connection mid-body, drip one byte at a time, stream 300 MB
generated on the fly, go silent after `data: [DONE]`. Threads, 127.0.0.1,
port 0; poll(2) only (descriptors may exceed 1024), never select(2).

The upstream model name in the request body picks the behaviour (`_SCENARIOS`);
a name that does not start with `fault-` gets a normal answer, JSON or SSE,
on a kept-alive connection. Each request is recorded (`Record`): what came in,
how many bytes went out, marks such as when `[DONE]` was sent, and when the
connection ended and whether the peer (the gateway) closed it. Every writer
stops the moment the peer goes away, so a 300 MB body does not keep flowing
into a closed socket.
"""
from __future__ import annotations

import email.utils
import json
import select
import socket
import struct
import threading
import time
import zlib
from dataclasses import dataclass, field

from .fake_upstream import _completion, _error, _generated_events

SILENCE = 30.0            # how long "hang" and "silence" scenarios stay quiet
DRIP_INTERVAL = 0.1       # seconds between dripped bytes
STALL_LIMIT = 30.0        # a peer that takes no bytes for this long is given up on
IDLE_LIMIT = 120.0        # a kept-alive connection with no next request is closed
PIECE = 1 << 20           # generated bodies go out 1 MB at a time
HUGE_BODY = 300 * PIECE   # fault-huge-body: Content-Length of the JSON answer
HUGE_LINE = 200 * PIECE   # fault-huge-sse-line: bytes of the single `data:` line
FLOOD_EVENTS = 100_000    # fault-sse-flood: events without content before the first content

_REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found", 429: "Too Many Requests",
            500: "Internal Server Error", 502: "Bad Gateway", 503: "Service Unavailable"}

# What an upstream 5xx may say that must never reach a client.
TRACE_MESSAGE = ('Traceback (most recent call last):\n'
                 '  File "/opt/inference/vllm/engine/llm_engine.py", line 1234, in step\n'
                 '    outputs = self.model_executor.execute_model(req)\n'
                 'RuntimeError: CUDA out of memory on gpu-node-17.inference.corp.internal:8000 '
                 '(see /var/log/vllm/worker-3.log)')
TRACE_LEAKS = ("Traceback", "/opt/inference", "llm_engine.py", "execute_model", "gpu-node-17",
               "corp.internal", "/var/log/vllm", "CUDA out of memory", "RuntimeError")
HTML_502 = (b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
            b"<center><h1>502 Bad Gateway</h1></center>\r\n"
            b"<hr><center>nginx/1.18.0 (Ubuntu) lb-3.gpu-pool.corp.internal</center>\r\n</body>\r\n</html>\r\n")
HTML_LEAKS = ("<html", "<center>", "nginx/1.18.0", "lb-3.gpu-pool", "corp.internal")
# A 200 `application/json` error body on a stream request: the message must be kept, the key redacted.
JSON_ERROR_MESSAGES = {
    429: "Rate limit reached for requests on api_key=upstream-secret-key-123 (org-7d2a): limit 3/min",
    400: "Invalid value for 'temperature': must be between 0 and 2 (api_key=upstream-secret-key-123)",
    500: "The engine is overloaded, please retry later",
}
JSON_ERROR_KEPT = {429: "Rate limit reached for requests", 400: "Invalid value for 'temperature'"}

# Usage objects of the wrong type (fault-usage-<kind>).
BAD_USAGE = {
    "str": {"prompt_tokens": "11", "completion_tokens": "7", "total_tokens": "18"},
    "null": {"prompt_tokens": None, "completion_tokens": None, "total_tokens": None},
    "dict": {"prompt_tokens": {"text": 11}, "completion_tokens": {"n": 7}, "total_tokens": {}},
    "list": [11, 7, 18],
    "text": {"prompt_tokens": "eleven", "completion_tokens": "7.5", "total_tokens": "1e400"},
    "huge": {"prompt_tokens": 1e300, "completion_tokens": -5, "total_tokens": 2 ** 70},
}


def retry_after_value(form: str) -> str | None:
    """The Retry-After header a `fault-429-<form>` upstream sends (None = no header)."""
    now = time.time()
    return {
        "seconds": "1",
        "overdeadline": "3",    # ≤ 5 s, but past the 2 s deadline of the fault models
        "date": email.utils.formatdate(now + 30, usegmt=True),
        "pastdate": "Wed, 21 Oct 2015 07:28:00 GMT",
        "negative": "-5",
        "huge": "99999999",
        "inf": "inf",
        "nan": "nan",
        "missing": None,
    }[form]


@dataclass
class Record:
    """One request the upstream received and what became of it."""
    model: str
    path: str
    stream: bool
    body: dict
    tag: str                      # the last user message (tests put a unique tag there)
    at: float                     # monotonic time the request was read whole
    sent: int = 0                 # body bytes written (head excluded)
    marks: dict = field(default_factory=dict)   # name → monotonic time (e.g. "done": [DONE] sent)
    ended_at: float | None = None  # the connection carrying it was closed (by either side)
    peer_closed: bool = False     # …and it was the peer (the gateway) that went away first


class _Gone(Exception):
    """The peer closed the connection (or stopped taking bytes for STALL_LIMIT)."""


class _Peer:
    """One accepted connection: non-blocking socket, poll(2) for every wait."""

    def __init__(self, sock: socket.socket, upstream: "FaultUpstream"):
        self.sock = sock
        self.upstream = upstream
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setblocking(False)
        self.buffer = b""
        self.record: Record | None = None
        self.closed = False

    def _wait(self, events: int, timeout: float) -> int:
        poller = select.poll()
        poller.register(self.sock, events)
        ready = poller.poll(max(0, int(timeout * 1000)))
        return ready[0][1] if ready else 0

    def _gone(self) -> None:
        if self.record is not None and not self.closed:
            self.record.peer_closed = True
        raise _Gone()

    # --- reading ---------------------------------------------------------------------

    def _recv(self) -> bytes:
        try:
            return self.sock.recv(65536)
        except BlockingIOError:
            return b"?"  # spurious wake-up: nothing to read, not an EOF
        except OSError:
            return b""

    def read_request(self) -> tuple[str, str, dict, bytes] | None:
        """(method, path, headers, body) of the next request; None when the peer closes or idles out."""
        deadline = time.monotonic() + IDLE_LIMIT
        while b"\r\n\r\n" not in self.buffer:
            if self.upstream.stopping.is_set() or len(self.buffer) > 65536:
                return None
            left = deadline - time.monotonic()
            if left <= 0 or not self._wait(select.POLLIN, min(left, 0.5)):
                if left <= 0:
                    return None
                continue
            data = self._recv()
            if data == b"":
                return None
            if data != b"?":
                self.buffer += data
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        method, path, _version = lines[0].split(" ", 2)
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length") or 0)
        while len(self.buffer) < length:
            if not self._wait(select.POLLIN, 10.0):
                return None
            data = self._recv()
            if data == b"":
                return None
            if data != b"?":
                self.buffer += data
        body, self.buffer = self.buffer[:length], self.buffer[length:]
        return method, path, headers, body

    def idle(self, seconds: float) -> None:
        """Stay silent for `seconds`; raise _Gone the moment the peer closes."""
        deadline = time.monotonic() + seconds
        while True:
            if self.upstream.stopping.is_set():
                raise _Gone()
            left = deadline - time.monotonic()
            if left <= 0:
                return
            events = self._wait(select.POLLIN, min(left, 0.5))
            if events & (select.POLLHUP | select.POLLERR | select.POLLNVAL):
                self._gone()
            if events & select.POLLIN:
                data = self._recv()
                if data == b"":
                    self._gone()
                if data != b"?":
                    self.buffer += data[:65536]

    # --- writing ---------------------------------------------------------------------

    def send(self, data: bytes, *, counted: bool = True) -> None:
        """Write all of `data`; raise _Gone as soon as the peer is gone."""
        view = memoryview(data)
        while view:
            if self.upstream.stopping.is_set():
                raise _Gone()
            try:
                n = self.sock.send(view[:PIECE])
            except BlockingIOError:
                events = self._wait(select.POLLOUT, STALL_LIMIT)
                if not events or events & (select.POLLHUP | select.POLLERR | select.POLLNVAL):
                    self._gone()
                continue
            except OSError:
                self._gone()
            if counted and self.record is not None:
                self.record.sent += n
            view = view[n:]

    def head(self, status: int, headers: dict) -> None:
        lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Status')}"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        self.send(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"), counted=False)

    def chunk(self, data: bytes) -> None:
        """One chunk of a chunked body (b"" = the terminating chunk)."""
        self.send(b"%x\r\n" % len(data) + data + b"\r\n")

    def drip(self, data: bytes, *, chunked: bool) -> None:
        """Send `data` one byte at a time, DRIP_INTERVAL apart."""
        for i in range(len(data)):
            byte = data[i:i + 1]
            if chunked:
                self.chunk(byte)
            else:
                self.send(byte)
            self.idle(DRIP_INTERVAL)

    def reset(self) -> None:
        """Close with an RST (SO_LINGER 0), as a crashed upstream host does."""
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
        self.close()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            if self.record is not None and self.record.ended_at is None:
                self.record.ended_at = time.monotonic()
            try:
                self.sock.close()
            except OSError:
                pass


class FaultUpstream:
    def __init__(self, api_key: str = "upstream-secret-key-123"):
        self.api_key = api_key
        self.lock = threading.Lock()
        self.records: list[Record] = []
        self.stopping = threading.Event()
        self._peers: set[_Peer] = set()
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(512)
        self.port = self._listener.getsockname()[1]
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        # "Refuses": a port bound but never listened on, held for our lifetime so nobody else takes it.
        self._refusing = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._refusing.bind(("127.0.0.1", 0))
        self.refused_url = f"http://127.0.0.1:{self._refusing.getsockname()[1]}/v1"
        self._thread = threading.Thread(target=self._accept_loop, name="fault-upstream", daemon=True)

    def start(self) -> "FaultUpstream":
        self._thread.start()
        return self

    def stop(self) -> None:
        self.stopping.set()
        self._thread.join(timeout=5)
        self._listener.close()
        self._refusing.close()
        with self.lock:
            peers = list(self._peers)
        for peer in peers:
            try:
                peer.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def requests_for(self, model: str, tag: str | None = None, since: float = 0.0) -> list[Record]:
        with self.lock:
            return [r for r in self.records
                    if r.model == model and (tag is None or r.tag == tag) and r.at >= since]

    # --- serving -----------------------------------------------------------------------

    def _accept_loop(self) -> None:
        poller = select.poll()
        poller.register(self._listener, select.POLLIN)
        while not self.stopping.is_set():
            if not poller.poll(200):
                continue
            try:
                sock, _ = self._listener.accept()
            except OSError:
                continue
            peer = _Peer(sock, self)
            with self.lock:
                self._peers.add(peer)
            threading.Thread(target=self._serve, args=(peer,), daemon=True).start()

    def _serve(self, peer: _Peer) -> None:
        try:
            while True:
                request = peer.read_request()
                if request is None:
                    if peer.record is not None and not self.stopping.is_set():
                        peer.record.peer_closed = True
                    return
                if not self._answer(peer, *request):
                    return
        except _Gone:
            return
        except Exception:  # a bug in a scenario must not look like a gateway fault: close loudly
            import traceback
            traceback.print_exc()
        finally:
            peer.close()
            with self.lock:
                self._peers.discard(peer)

    def _answer(self, peer: _Peer, method: str, path: str, headers: dict, raw: bytes) -> bool:
        """Answer one request; False = close the connection afterwards."""
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        if not isinstance(body, dict):
            body = {}
        record = Record(model=str(body.get("model", "")), path=path, stream=bool(body.get("stream")),
                        body=body, tag=_last_user_text(body), at=time.monotonic())
        if peer.record is not None and peer.record.ended_at is None:
            peer.record.ended_at = record.at   # the previous answer on this connection was whole
        peer.record = record
        with self.lock:
            self.records.append(record)
        if method != "POST" or path not in ("/v1/chat/completions", "/v1/completions"):
            return _json(peer, 404, _error(f"no route {method} {path}", "invalid_request_error"))
        if headers.get("authorization") != f"Bearer {self.api_key}":
            return _json(peer, 401, _error("Incorrect API key provided", "invalid_request_error",
                                           code="invalid_api_key"))
        legacy = path == "/v1/completions"
        for prefix, scenario in _SCENARIOS:
            if record.model.startswith(prefix):
                return scenario(peer, record, legacy)
        return _normal(peer, record, legacy)


# --- answers -------------------------------------------------------------------------------------

def _last_user_text(body: dict) -> str:
    for message in reversed(body.get("messages") or []):
        if isinstance(message, dict) and message.get("role") == "user":
            return str(message.get("content"))
    return str(body.get("prompt", ""))


def _json(peer: _Peer, status: int, body, headers: dict | None = None, *, raw: bytes | None = None,
          content_type: str = "application/json") -> bool:
    data = raw if raw is not None else json.dumps(body).encode()
    peer.head(status, {"Content-Type": content_type, "Content-Length": len(data),
                       "x-request-id": "req_faultupstream", **(headers or {})})
    peer.send(data)
    return True


def _sse_head(peer: _Peer) -> None:
    peer.head(200, {"Content-Type": "text/event-stream; charset=utf-8", "Transfer-Encoding": "chunked",
                    "Cache-Control": "no-cache"})


def _events(record: Record, legacy: bool, count: int = 3) -> list[bytes]:
    include_usage = (record.body.get("stream_options") or {}).get("include_usage") is True
    return _generated_events(record.body, count, legacy, include_usage=include_usage)


def _chunk_event(record: Record, payload: dict) -> bytes:
    chunk = {"id": "chatcmpl-fault", "object": "chat.completion.chunk", "created": 1727346168,
             "model": f"{record.model}-served", "system_fingerprint": "fp_fault", **payload}
    return b"data: " + json.dumps(chunk, separators=(",", ":")).encode() + b"\n\n"


def _normal(peer: _Peer, record: Record, legacy: bool) -> bool:
    if not record.stream:
        return _json(peer, 200, _completion(record.body, legacy))
    _sse_head(peer)
    for event in _events(record, legacy, count=5):
        peer.chunk(event)
    peer.chunk(b"")
    return True


def _head_of_stream(peer: _Peer, record: Record, legacy: bool) -> None:
    """SSE head, the role event and two content events: the stream has begun."""
    _sse_head(peer)
    for event in _events(record, legacy)[:3]:
        peer.chunk(event)
    record.marks["content"] = time.monotonic()


def _reset(peer: _Peer, record: Record, legacy: bool) -> bool:
    """JSON: head and a third of the body, then RST. Stream: two content events, then RST."""
    if record.stream:
        _head_of_stream(peer, record, legacy)
    else:
        data = json.dumps(_completion(record.body, legacy)).encode()
        peer.head(200, {"Content-Type": "application/json", "Content-Length": len(data)})
        peer.send(data[:len(data) // 3])
    peer.idle(0.05)
    peer.reset()
    return False


def _hang_headers(peer: _Peer, record: Record, legacy: bool) -> bool:
    peer.idle(SILENCE)
    return False


def _drip_headers(peer: _Peer, record: Record, legacy: bool) -> bool:
    data = json.dumps(_completion(record.body, legacy)).encode()
    head = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Padding: " + b"p" * 400 +
            b"\r\nContent-Length: %d\r\n\r\n" % len(data))
    peer.drip(head, chunked=False)
    peer.send(data)
    return False


def _drip(peer: _Peer, record: Record, legacy: bool) -> bool:
    """JSON: the body one byte at a time. Stream: the first event one byte at a time."""
    if record.stream:
        _sse_head(peer)
        peer.drip(b"".join(_events(record, legacy)), chunked=True)
        peer.chunk(b"")
        return False
    data = json.dumps(_completion(record.body, legacy)).encode()
    peer.head(200, {"Content-Type": "application/json", "Content-Length": len(data)})
    peer.drip(data, chunked=False)
    return False


def _drip_stream(peer: _Peer, record: Record, legacy: bool) -> bool:
    """Two content events, then the rest one byte at a time (no event completes within seconds)."""
    _head_of_stream(peer, record, legacy)
    deadline = time.monotonic() + SILENCE
    rest = b"".join(_events(record, legacy)[3:])
    while time.monotonic() < deadline:
        peer.drip(rest, chunked=True)
    peer.chunk(b"")
    return False


def _hang_stream(peer: _Peer, record: Record, legacy: bool) -> bool:
    _head_of_stream(peer, record, legacy)
    peer.idle(SILENCE)
    return False


def _huge_body(peer: _Peer, record: Record, legacy: bool) -> bool:
    """A 300 MB JSON answer (one huge content string), generated as it is sent.

    fault-huge-body: with Content-Length; -chunked: chunked coding, no length;
    -gzip: `Content-Encoding: gzip`, 300 MB once decoded, about 1.3 MB on the wire.
    """
    if record.stream:
        return _huge_sse_line(peer, record, legacy)
    prefix, suffix = _huge_body_ends(record.model)
    variant = record.model[len("fault-huge-body"):]
    if variant == "-gzip":
        data = _gzip_bomb(record.model)
        peer.head(200, {"Content-Type": "application/json", "Content-Encoding": "gzip",
                        "Content-Length": len(data)})
        peer.send(data)
        return False
    chunked = variant == "-chunked"
    if chunked:
        peer.head(200, {"Content-Type": "application/json", "Transfer-Encoding": "chunked"})
        peer.chunk(prefix)
    else:
        peer.head(200, {"Content-Type": "application/json", "Content-Length": HUGE_BODY})
        peer.send(prefix)
    _send_filler(peer, HUGE_BODY - len(prefix) - len(suffix), chunked=chunked)
    if chunked:
        peer.chunk(suffix)
        peer.chunk(b"")
    else:
        peer.send(suffix)
    return False


def _huge_body_ends(model: str) -> tuple[bytes, bytes]:
    prefix = (b'{"id":"chatcmpl-huge","object":"chat.completion","created":1727346142,"model":"'
              + model.encode() + b'-served","choices":[{"index":0,"message":{"role":"assistant",'
              b'"content":"')
    suffix = (b'"},"logprobs":null,"finish_reason":"stop"}],'
              b'"usage":{"prompt_tokens":11,"completion_tokens":7,"total_tokens":18}}')
    return prefix, suffix


_bombs: dict[str, bytes] = {}
_bomb_lock = threading.Lock()


def _gzip_bomb(model: str) -> bytes:
    """The 300 MB answer gzipped (made once, ~0.5 s)."""
    with _bomb_lock:
        if model not in _bombs:
            prefix, suffix = _huge_body_ends(model)
            packer = zlib.compressobj(1, zlib.DEFLATED, 31)
            parts = [packer.compress(prefix)]
            piece, left = b"x" * PIECE, HUGE_BODY - len(prefix) - len(suffix)
            while left > 0:
                parts.append(packer.compress(piece[:left]))
                left -= PIECE
            parts += [packer.compress(suffix), packer.flush()]
            _bombs[model] = b"".join(parts)
        return _bombs[model]


def _huge_line_event(record: Record) -> tuple[bytes, bytes]:
    prefix = (b'data: {"id":"chatcmpl-huge","object":"chat.completion.chunk","created":1727346168,"model":"'
              + record.model.encode() + b'-served","choices":[{"index":0,"delta":{"content":"')
    suffix = b'"},"logprobs":null,"finish_reason":null}]}\n\n'
    return prefix, suffix


def _huge_sse_line(peer: _Peer, record: Record, legacy: bool, *, after_content: bool = False) -> bool:
    """One 200 MB `data:` line (generated as it is sent), then the end of a normal stream."""
    if after_content:
        _head_of_stream(peer, record, legacy)
    else:
        _sse_head(peer)
    prefix, suffix = _huge_line_event(record)
    peer.chunk(prefix)
    _send_filler(peer, HUGE_LINE - len(prefix) - len(suffix), chunked=True)
    peer.chunk(suffix)
    for event in _events(record, legacy)[3:]:
        peer.chunk(event)
    peer.chunk(b"")
    return False


def _huge_sse_line_mid(peer: _Peer, record: Record, legacy: bool) -> bool:
    return _huge_sse_line(peer, record, legacy, after_content=True)


def _send_filler(peer: _Peer, size: int, *, chunked: bool) -> None:
    piece = b"x" * PIECE
    while size > 0:
        data = piece if size >= PIECE else piece[:size]
        if chunked:
            peer.chunk(data)
        else:
            peer.send(data)
        size -= len(data)


def _sse_flood(peer: _Peer, record: Record, legacy: bool) -> bool:
    """100,000 events that carry nothing for the client (≈10 MB) before the first content."""
    _sse_head(peer)
    empty = _chunk_event(record, {"choices": []})
    batch = empty * 500
    for _ in range(FLOOD_EVENTS // 500):
        peer.chunk(batch)
    for event in _events(record, legacy):
        peer.chunk(event)
    peer.chunk(b"")
    return False


def _html_502(peer: _Peer, record: Record, legacy: bool) -> bool:
    return _json(peer, 502, None, raw=HTML_502, content_type="text/html")


def _truncated_json(peer: _Peer, record: Record, legacy: bool) -> bool:
    """JSON: a whole HTTP answer whose body is JSON cut short. Stream: an event that is cut-short JSON."""
    if record.stream:
        _sse_head(peer)
        peer.chunk(b'data: {"id":"chatcmpl-cut","object":"chat.completion.chunk","choices":[{"index":0,'
                   b'"delta":{"content":"hel\n\n')
        peer.chunk(b"data: [DONE]\n\n")
        peer.chunk(b"")
        return True
    data = json.dumps(_completion(record.body, legacy)).encode()
    return _json(peer, 200, None, raw=data[:len(data) // 2])


def _done_then_silence(peer: _Peer, record: Record, legacy: bool) -> bool:
    """A whole stream, `data: [DONE]`, then silence (no terminating chunk) for SILENCE seconds."""
    if not record.stream:
        return _normal(peer, record, legacy)
    _sse_head(peer)
    for event in _events(record, legacy, count=3):
        if event == b"data: [DONE]\n\n":
            record.marks["done"] = time.monotonic()
        peer.chunk(event)
    peer.idle(SILENCE)
    return False


def _rate_limited(peer: _Peer, record: Record, legacy: bool) -> bool:
    form = record.model[len("fault-429-"):]
    value = retry_after_value(form)
    headers = {} if value is None else {"Retry-After": value}
    return _json(peer, 429, _error("Rate limit reached for requests", "requests", code="rate_limit_exceeded"),
                 headers)


def _bad_usage(peer: _Peer, record: Record, legacy: bool) -> bool:
    usage = BAD_USAGE[record.model[len("fault-usage-"):]]
    if not record.stream:
        body = _completion(record.body, legacy)
        body["usage"] = usage
        return _json(peer, 200, body)
    _sse_head(peer)
    events = _events(record, legacy)
    for event in events[:-1]:
        if b'"usage":' in event:
            continue  # the well-typed one, if the client asked for it
        peer.chunk(event)
    peer.chunk(_chunk_event(record, {"choices": [], "usage": usage}))
    peer.chunk(events[-1])
    peer.chunk(b"")
    return True


def _json_error(peer: _Peer, record: Record, legacy: bool) -> bool:
    """200 `application/json` with an error body (OpenRouter, DashScope do this to stream requests)."""
    status = int(record.model.rsplit("-", 1)[1])
    return _json(peer, 200, {"error": {"message": JSON_ERROR_MESSAGES[status], "code": status,
                                       "type": None, "param": None}})


def _trace_5xx(peer: _Peer, record: Record, legacy: bool) -> bool:
    if record.model.endswith("-text"):
        return _json(peer, 503, None, raw=TRACE_MESSAGE.encode(), content_type="text/plain")
    return _json(peer, 500, _error(TRACE_MESSAGE, "server_error", code="internal_error"))


_SCENARIOS = (
    ("fault-reset", _reset),
    ("fault-hang-headers", _hang_headers),
    ("fault-hang-stream", _hang_stream),
    ("fault-drip-headers", _drip_headers),
    ("fault-drip-stream", _drip_stream),
    ("fault-drip", _drip),
    ("fault-huge-body", _huge_body),
    ("fault-huge-sse-line-mid", _huge_sse_line_mid),
    ("fault-huge-sse-line", _huge_sse_line),
    ("fault-sse-flood", _sse_flood),
    ("fault-html-502", _html_502),
    ("fault-truncated-json", _truncated_json),
    ("fault-done-silence", _done_then_silence),
    ("fault-429-", _rate_limited),
    ("fault-usage-", _bad_usage),
    ("fault-json-error-", _json_error),
    ("fault-5xx-trace", _trace_5xx),
)
