"""Slow clients: trickled bodies and heads are dropped at their deadlines; normal clients are served.

The gateway runs with short deadlines (SHIN_GATEWAY_HEAD_TIMEOUT=2, SHIN_GATEWAY_BODY_TIMEOUT=3)
on one worker. 300 connections send a head announcing a 100,000-byte body and then trickle one
byte a second; others send half a request line and stop, trickle the head itself, or send
nothing. Meanwhile a normal client keeps getting 200s in under 2 s, and every slow connection is
closed by the gateway (with nothing, or a 408 JSON `request_timeout` first) within its deadline
plus 2 s.
"""
from __future__ import annotations

import json
import selectors
import socket
import textwrap
import threading
import time

import requests

from .conftest import MASTER_KEY
from .gateway_process import GatewayProcess

HEAD_TIMEOUT, BODY_TIMEOUT = 2.0, 3.0
SLACK = 2.0
NORMAL_LIMIT = 2.0
KINDS = {                 # kind: how many connections
    "slow-body": 300,     # whole head, Content-Length: 100000, then a byte a second
    "half-line": 40,      # "POST /v1/chat/comp" and nothing more
    "slow-head": 20,      # the head itself, a byte every 0.3 s
    "silent": 20,         # connects, sends nothing
}

BODY = json.dumps({"model": "mock", "messages": [{"role": "user", "content": "x" * 99_950}]}).encode()[:100_000]
HEAD = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: gateway\r\nAuthorization: Bearer {MASTER_KEY}\r\n"
        f"Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n").encode()


class Slow:
    __slots__ = ("kind", "sock", "started", "deadline", "to_send", "next_send", "interval", "received",
                 "closed_at", "how")

    def __init__(self, kind: str, sock: socket.socket):
        self.kind = kind
        self.sock = sock
        self.started = time.monotonic()
        self.received = b""
        self.closed_at: float | None = None
        self.how = ""
        self.next_send = self.started
        if kind == "slow-body":
            sock.sendall(HEAD)
            self.started = time.monotonic()          # the body's deadline runs from the head
            self.deadline = self.started + BODY_TIMEOUT + SLACK
            self.to_send, self.interval = BODY, 1.0
            self.next_send = self.started            # the first body byte at once
        elif kind == "half-line":
            sock.sendall(b"POST /v1/chat/comp")
            self.deadline = self.started + HEAD_TIMEOUT + SLACK
            self.to_send, self.interval = b"", 0
        elif kind == "slow-head":
            self.deadline = self.started + HEAD_TIMEOUT + SLACK
            self.to_send, self.interval = HEAD, 0.3
        else:
            self.deadline = self.started + HEAD_TIMEOUT + SLACK
            self.to_send, self.interval = b"", 0

    def problem(self) -> str | None:
        """None when the gateway dropped this connection in time, as the contract says."""
        if self.closed_at is None:
            return f"{self.kind}: still open {time.monotonic() - self.started:.1f}s after it began"
        if self.closed_at > self.deadline:
            return f"{self.kind}: closed only after {self.closed_at - self.started:.1f}s"
        if self.received:
            head, _, body = self.received.partition(b"\r\n\r\n")
            if not head.startswith(b"HTTP/1.1 408"):
                return f"{self.kind}: answered {self.received[:300]!r}"
            try:
                error = json.loads(body)["error"]
            except (ValueError, KeyError, TypeError):
                return f"{self.kind}: the 408 is not an OpenAI JSON error: {self.received[:300]!r}"
            if error.get("type") != "invalid_request_error" or error.get("code") != "request_timeout":
                return f"{self.kind}: the 408 says {error!r}"
        return None


def drive(slow: list[Slow], until: float) -> None:
    """Trickle bytes and watch for the gateway closing each connection, on one selector."""
    selector = selectors.DefaultSelector()
    for conn in slow:
        conn.sock.setblocking(False)
        selector.register(conn.sock, selectors.EVENT_READ, conn)
    open_ = set(slow)
    while open_ and time.monotonic() < until:
        for key, _ in selector.select(timeout=0.05):
            conn: Slow = key.data
            try:
                data = conn.sock.recv(65536)
            except OSError as exc:
                data, conn.how = b"", type(exc).__name__
            if data:
                conn.received += data
                continue
            conn.closed_at = time.monotonic()
            conn.how = conn.how or "EOF"
            selector.unregister(conn.sock)
            conn.sock.close()
            open_.discard(conn)
        now = time.monotonic()
        for conn in list(open_):
            if conn.to_send and now >= conn.next_send:
                try:
                    conn.sock.send(conn.to_send[:1])
                except OSError:
                    pass           # closed by the gateway: the selector reports it next
                conn.to_send = conn.to_send[1:]
                conn.next_send = now + conn.interval
    for conn in open_:
        selector.unregister(conn.sock)
        conn.sock.close()
    selector.close()


def test_slow_clients_are_dropped_while_a_normal_client_is_served(start_gateway):
    gateway: GatewayProcess = start_gateway(textwrap.dedent(f"""
        model_list:
          - model_name: mock
            litellm_params:
              model: mock/shin-mock
        general_settings:
          master_key: {MASTER_KEY}
        """), workers=1, env={"SHIN_GATEWAY_HEAD_TIMEOUT": str(HEAD_TIMEOUT),
                              "SHIN_GATEWAY_BODY_TIMEOUT": str(BODY_TIMEOUT)})
    worker = gateway.worker_pids()
    slow = []
    for kind, count in KINDS.items():
        for _ in range(count):
            slow.append(Slow(kind, socket.create_connection(("127.0.0.1", gateway.port), timeout=5)))
    until = max(c.deadline for c in slow) + 1.0
    driver = threading.Thread(target=drive, args=(slow, until), daemon=True)
    driver.start()

    auth = {"Authorization": f"Bearer {MASTER_KEY}"}
    normal = []
    while driver.is_alive() and len(normal) < 40:
        started = time.monotonic()
        try:
            response = requests.post(f"{gateway.url}/v1/chat/completions", headers=auth, timeout=10,
                                     json={"model": "mock", "messages": [{"role": "user", "content": "normal"}]})
            outcome = response.status_code
        except requests.RequestException as exc:
            outcome = type(exc).__name__
        normal.append((round(started - slow[0].started, 1), outcome, time.monotonic() - started))
        time.sleep(0.25)
    driver.join(5)
    assert not driver.is_alive()

    bad_normal = [(at, outcome, round(took, 2)) for at, outcome, took in normal
                  if outcome != 200 or took >= NORMAL_LIMIT]
    assert len(normal) >= 10 and not bad_normal, \
        f"normal requests (started at s, outcome, took s) failed or were slow: {bad_normal[:10]}"

    problems = [p for c in slow if (p := c.problem())]
    assert not problems, (f"{len(problems)} of {len(slow)} slow connections were not dropped as they should be, "
                          f"e.g. {problems[:6]}")

    response = requests.post(f"{gateway.url}/v1/chat/completions", headers=auth, timeout=10,
                             json={"model": "mock", "messages": [{"role": "user", "content": "after"}]})
    assert response.status_code == 200, response.text[:300]
    assert gateway.worker_pids() == worker, "the worker died or was replaced"
