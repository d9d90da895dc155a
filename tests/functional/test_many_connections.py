"""Many connections: one worker carries its full worker_connections (1,000) of concurrent streams.

The gateway's worker then holds 2,000+ sockets (clients and upstream), so anything calling
select(2) on a descriptor of 1024 or more fails. All 1,000 streams must run at once and end with
`data: [DONE]`, and the worker must keep answering plain requests afterwards.
"""
from __future__ import annotations

import errno
import json
import resource
import selectors
import socket
import time

import pytest
import requests

from .conftest import MASTER_KEY, UPSTREAM_KEY, quiet_config
from .fake_upstream import FakeUpstream
from .gateway_process import GatewayProcess

STREAMS = 1000                  # gateway/server.py WORKER_CONNECTIONS
CHUNKS, GAP_MS = 20, 400        # each stream lasts ~8 s: long enough for all 1,000 to be open at once
TIME_LIMIT = 90.0
PLAIN_REQUESTS = 50


@pytest.fixture
def wide_upstream():
    """A fake upstream of this test's own, with a listen backlog for a thousand connections at once."""
    server = FakeUpstream(api_key=UPSTREAM_KEY)
    server.server.socket.listen(2048)       # socketserver's default backlog is 5
    server.start()
    yield server
    server.stop()


def raise_open_files_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    # this process: 1,000 client sockets + 1,000 fake-upstream sockets (+ threads' files)
    assert soft >= 2 * STREAMS + 500, f"RLIMIT_NOFILE {soft} is too low for this test"


class Stream:
    __slots__ = ("index", "sock", "data", "connected_at", "first_data_at", "ended_at", "error")

    def __init__(self, index: int, sock: socket.socket):
        self.index = index
        self.sock = sock
        self.data = bytearray()
        self.connected_at = self.first_data_at = self.ended_at = None
        self.error: str | None = None


def request_bytes(port: int) -> bytes:
    body = json.dumps({"model": "slow", "stream": True,
                       "messages": [{"role": "user", "content": "many"}]}).encode()
    head = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Authorization: Bearer {MASTER_KEY}\r\nContent-Type: application/json\r\n"
            f"Accept: text/event-stream\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n")
    return head.encode() + body


def run_streams(port: int, count: int, deadline: float) -> list[Stream]:
    """Open `count` streams at once and read them all to the end (EOF), on one selector."""
    request = request_bytes(port)
    selector = selectors.DefaultSelector()      # epoll: no descriptor limit
    streams = []
    for index in range(count):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        code = sock.connect_ex(("127.0.0.1", port))
        stream = Stream(index, sock)
        streams.append(stream)
        if code not in (0, errno.EINPROGRESS):
            stream.error = f"connect: {errno.errorcode.get(code, code)}"
            sock.close()
            continue
        selector.register(sock, selectors.EVENT_WRITE, stream)
    open_count = len(selector.get_map())
    while open_count and time.monotonic() < deadline:
        for key, mask in selector.select(timeout=0.5):
            stream: Stream = key.data
            sock = stream.sock
            try:
                if mask & selectors.EVENT_WRITE:
                    error = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    if error:
                        raise OSError(error, f"connect: {errno.errorcode.get(error, error)}")
                    stream.connected_at = time.monotonic()
                    sent = sock.send(request)
                    assert sent == len(request), "a ~400-byte request did not fit the socket buffer"
                    selector.modify(sock, selectors.EVENT_READ, stream)
                    continue
                chunk = sock.recv(65536)
            except OSError as exc:
                stream.error = f"{type(exc).__name__}: {exc}"
                chunk = b""
            if chunk:
                stream.data += chunk
                if stream.first_data_at is None and b"data: " in stream.data:
                    stream.first_data_at = time.monotonic()
                continue
            stream.ended_at = time.monotonic()
            selector.unregister(sock)
            sock.close()
            open_count -= 1
    for key in list(selector.get_map().values()):
        key.data.error = key.data.error or "still open at the deadline"
        key.fileobj.close()
    selector.close()
    return streams


def dechunk(data: bytes) -> bytes:
    out, at = bytearray(), 0
    while True:
        end = data.index(b"\r\n", at)
        size = int(data[at:end].split(b";")[0], 16)
        if size == 0:
            return bytes(out)
        out += data[end + 2:end + 2 + size]
        assert data[end + 2 + size:end + 4 + size] == b"\r\n", "bad chunk framing"
        at = end + 4 + size


def problem(stream: Stream) -> str | None:
    """None when the stream is a complete 200 SSE answer ending with [DONE]; else what is wrong."""
    if stream.error:
        return stream.error
    head, sep, body = bytes(stream.data).partition(b"\r\n\r\n")
    if not sep:
        return f"no response head: {bytes(stream.data[:200])!r}"
    status_line = head.split(b"\r\n", 1)[0]
    if not status_line.startswith(b"HTTP/1.1 200"):
        return f"{status_line!r}: {body[:200]!r}"
    if b"transfer-encoding: chunked" in head.lower():
        try:
            body = dechunk(body)
        except (ValueError, AssertionError) as exc:
            return f"cut off mid-body ({exc}): ...{body[-200:]!r}"
    events = [e for e in body.split(b"\n\n") if e]
    if not events or events[-1] != b"data: [DONE]":
        return f"no [DONE] at the end: ...{body[-200:]!r}"
    content = [e for e in events[:-1] if b'"content":"tok' in e]
    if len(content) != CHUNKS:
        return f"{len(content)} content chunks, not {CHUNKS}"
    return None


def test_one_worker_carries_1000_concurrent_streams_then_answers(wide_upstream, tmp_path):
    started = time.monotonic()
    raise_open_files_limit()
    base = wide_upstream.base_url
    config = tmp_path / "config.yaml"
    config.write_text(quiet_config(base, {"slow": f"slow-{CHUNKS}-{GAP_MS}",
                                          "echo": "meta-llama/Llama-3.1-8B-Instruct"}, stream_timeout=30))
    gateway = GatewayProcess(config, workers=1, env={"TEST_UPSTREAM_KEY": UPSTREAM_KEY}).start()
    try:
        worker = gateway.worker_pids()
        assert len(worker) == 1, worker
        streams = run_streams(gateway.port, STREAMS, deadline=started + TIME_LIMIT - 20)

        problems = {s.index: p for s in streams if (p := problem(s))}
        assert not problems, (f"{len(problems)} of {STREAMS} streams failed, e.g. "
                              f"{list(problems.items())[:5]}\n--- gateway log (tail):\n{gateway.logs()[-3000:]}")
        # All 1,000 were in flight at the same moment: the last to start before the first to end.
        last_start = max(s.first_data_at for s in streams)
        first_end = min(s.ended_at for s in streams)
        assert last_start < first_end, (f"the streams did not all run at once: the last began "
                                        f"{last_start - first_end:.2f}s after the first ended")

        auth = {"Authorization": f"Bearer {MASTER_KEY}"}
        failures = []
        for i in range(PLAIN_REQUESTS):
            model = "echo" if i % 2 else "mock"
            try:
                response = requests.post(f"{gateway.url}/v1/chat/completions", headers=auth, timeout=10,
                                         json={"model": model, "messages": [{"role": "user", "content": f"n{i}"}]})
                if response.status_code != 200 or f"n{i}" not in response.json()["choices"][0]["message"]["content"]:
                    failures.append((i, response.status_code, response.text[:200]))
            except requests.RequestException as exc:
                failures.append((i, type(exc).__name__, str(exc)[:200]))
        assert not failures, f"{len(failures)} of {PLAIN_REQUESTS} plain requests failed: {failures[:5]}"
        assert gateway.worker_pids() == worker, "the worker died or was replaced"
    finally:
        gateway.stop()
    elapsed = time.monotonic() - started
    assert elapsed < TIME_LIMIT, f"took {elapsed:.1f}s"
