"""The shipped nginx site file, run for real in front of the gateway (nginx/shin-gateway.conf)."""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
import requests
from requests.adapters import HTTPAdapter

from .conftest import MASTER_KEY, UPSTREAM_KEY, standard_config
from .gateway_process import ROOT, free_port
from .wire import SSEResponse, assert_no_leak, assert_openai_error, assert_sse_framing, chat_body

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
SITE = ROOT / "nginx" / "shin-gateway.conf"
CHAT = "/v1/chat/completions"
AUTH = {"Authorization": f"Bearer {MASTER_KEY}"}

pytestmark = pytest.mark.skipif(not Path(NGINX).exists(), reason="nginx is not installed")


class Nginx:
    """nginx with the site file pointed at one gateway, everything it writes kept inside `folder`."""

    def __init__(self, folder: Path, gateway_hostport: str, edits: dict[str, str] | None = None):
        """`edits`: exact strings of the site file to replace (shorter timeouts for a test); each must occur."""
        self.folder = folder
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        site_text = SITE.read_text()
        assert "127.0.0.1:4000" in site_text and "listen 80;" in site_text, "the site file changed shape"
        for old, new in (edits or {}).items():
            assert site_text.count(old) == 1, f"the site file no longer has exactly one {old!r}"
            site_text = site_text.replace(old, new)
        site = folder / "shin-gateway.conf"
        site.write_text(site_text.replace("127.0.0.1:4000", gateway_hostport)
                        .replace("listen 80;", f"listen 127.0.0.1:{self.port};"))
        temp = {name: folder / name for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")}
        for path in temp.values():
            path.mkdir()
        user = "user root;\n" if os.geteuid() == 0 else ""   # workers may then read the 0700 tmp folder
        self.conf = folder / "nginx.conf"
        self.conf.write_text(f"""{user}daemon off;
master_process on;
worker_processes 1;
pid {folder}/nginx.pid;
error_log {folder}/error.log info;
events {{ worker_connections 256; }}
http {{
    access_log {folder}/access.log;
    client_body_temp_path {temp['client_body']};
    proxy_temp_path {temp['proxy']};
    fastcgi_temp_path {temp['fastcgi']};
    uwsgi_temp_path {temp['uwsgi']};
    scgi_temp_path {temp['scgi']};
    include {site};
}}
""")
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 10.0) -> "Nginx":
        check = subprocess.run([NGINX, "-t", "-c", str(self.conf), "-p", str(self.folder), "-e",
                                str(self.folder / "error.log")], capture_output=True, text=True, timeout=10)
        assert check.returncode == 0, f"nginx -t failed:\n{check.stderr}"
        self.proc = subprocess.Popen([NGINX, "-c", str(self.conf), "-p", str(self.folder), "-e",
                                      str(self.folder / "error.log")],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"nginx exited with {self.proc.returncode}: {self.proc.stderr.read()!r}\n"
                                   f"{self.error_log()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return self
            except OSError:
                time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"nginx did not listen within {timeout}s:\n{self.error_log()}")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)      # fast shutdown of master and workers
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        if self.proc and self.proc.stderr:
            self.proc.stderr.close()

    def error_log(self) -> str:
        path = self.folder / "error.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""


@pytest.fixture(scope="module")
def nginx(gateway, tmp_path_factory):
    server = Nginx(tmp_path_factory.mktemp("nginx"), f"127.0.0.1:{gateway.port}").start()
    yield server
    server.stop()


def assert_json_error(response, status: int, code: str) -> dict:
    assert response.status_code == status, (response.status_code, response.text[:300])
    assert response.headers.get("Content-Type", "").split(";")[0] == "application/json", \
        (response.headers.get("Content-Type"), response.text[:300])
    assert "<html" not in response.text.lower()
    assert_no_leak(response.text)
    error = response.json()["error"]
    assert {"message", "type", "param", "code"} <= set(error), error
    assert error["code"] == code, error
    return error


def test_stream_arrives_chunk_by_chunk_through_nginx(nginx):
    with SSEResponse.open(nginx.url, CHAT, chat_body("slow-stream", stream=True), AUTH) as stream:
        events = stream.read_all()
    assert_sse_framing(stream, behind_nginx=True)
    assert "content-length" not in stream.headers
    first = events[0].at - stream.sent_at
    whole = events[-1].at - stream.sent_at
    assert first < 1.0, f"first data line after {first:.2f}s through nginx: something buffers"
    assert whole >= 2.0, f"the whole stream took {whole:.2f}s"
    content = [e for e in events[:-1] if e.json()["choices"] and e.json()["choices"][0]["delta"].get("content")]
    assert len(content) == 40
    assert content[19].at - stream.sent_at < whole - 0.6, "chunks arrived in bursts"


def test_plain_completion_through_nginx(nginx):
    own_id = "nginx-trace-1"
    response = requests.post(f"{nginx.url}{CHAT}", json=chat_body("shin-llama-3-1-8b", "via nginx"),
                             headers={**AUTH, "X-Request-Id": own_id}, timeout=10)
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"] == "echo: via nginx"
    assert response.json()["model"] == "shin-llama-3-1-8b"
    assert response.headers.get("x-request-id") == own_id


def test_gateway_errors_pass_through_nginx_untouched(nginx, gateway):
    """proxy_intercept_errors off: the gateway's own 4xx/5xx JSON reaches the client as it is."""
    for body, status in ((chat_body("shin-llama-3-1-8b", temperature=7), 400),
                         (chat_body("no-such-model"), 404), (chat_body("unreachable"), 502)):
        direct = requests.post(f"{gateway.url}{CHAT}", json=body, headers=AUTH, timeout=20)
        proxied = requests.post(f"{nginx.url}{CHAT}", json=body, headers=AUTH, timeout=20)
        assert direct.status_code == proxied.status_code == status, (direct.text, proxied.text)
        assert proxied.json()["error"]["code"] == direct.json()["error"]["code"]
        assert proxied.json()["error"]["message"] == direct.json()["error"]["message"]


def test_oversize_body_gets_json_413(nginx):
    body = chat_body("shin-llama-3-1-8b", "x" * (11 * 1024 * 1024))   # over nginx's 10m (and the gateway's 1 MB)
    response = requests.post(f"{nginx.url}{CHAT}", json=body, headers=AUTH, timeout=30)
    assert_json_error(response, 413, "request_too_large")
    assert response.json()["error"]["type"] == "invalid_request_error"


def test_unknown_route_through_nginx_is_json(nginx):
    response = requests.get(f"{nginx.url}/definitely/not/here.html", headers=AUTH, timeout=10)
    assert_json_error(response, 404, "not_found")


def test_gateway_down_gives_json_502(upstream, start_gateway, tmp_path):
    own = start_gateway(standard_config(upstream), workers=1, env={"TEST_UPSTREAM_KEY": UPSTREAM_KEY})
    folder = tmp_path / "nginx-down"
    folder.mkdir()
    server = Nginx(folder, f"127.0.0.1:{own.port}").start()
    try:
        alive = requests.get(f"{server.url}/health/liveliness", timeout=10)
        assert alive.status_code == 200, alive.text
        # Down hard, as after a crash. (A graceful stop would wait for nginx's idle keep-alive
        # connection to gunicorn to close, which the harness cuts short only after 10 s.)
        os.killpg(own.proc.pid, signal.SIGKILL)
        own.proc.wait(timeout=10)
        response = requests.post(f"{server.url}{CHAT}", json=chat_body("shin-llama-3-1-8b"), headers=AUTH, timeout=10)
        error = assert_json_error(response, 502, "upstream_error")
        assert error["type"] == "api_error"
        assert response.headers.get("Retry-After") == "1"
        assert response.headers.get("x-request-id")
    finally:
        server.stop()


# --- per-address limits and slow clients ------------------------------------------------------
# The shipped limits are tested as they are; only the slow-client tests shorten nginx's
# timeouts, in their own copy of the site file. Each test runs its own nginx, so the limit
# zones start empty and the shared nginx above is not affected.

OTHER_ADDRESS = "127.0.0.2"   # still loopback: a second client address for the per-address limits


def site_setting(pattern: str) -> int:
    """A number from the shipped site file's directives (comments ignored)."""
    text = "\n".join(line.split("#", 1)[0] for line in SITE.read_text().splitlines())
    found = re.findall(pattern, text)
    assert len(found) == 1, (pattern, found)
    return int(found[0])


class FromAddress(HTTPAdapter):
    """Connections from another local source address (a different client to nginx's limits)."""

    def __init__(self, source: str):
        self.source = source
        super().__init__()

    def init_poolmanager(self, *args, **kwargs):
        kwargs["source_address"] = (self.source, 0)
        super().init_poolmanager(*args, **kwargs)


def other_client() -> requests.Session:
    session = requests.Session()
    session.mount("http://", FromAddress(OTHER_ADDRESS))
    return session


def assert_rate_limited(response) -> None:
    """nginx's own 429: OpenAI-shaped, retryable after 1 s (the SDKs honour Retry-After)."""
    assert_openai_error(response, 429, "rate_limit_error", code="rate_limit_exceeded", param=None)
    assert response.headers.get("Retry-After") == "1", dict(response.headers)
    assert "nginx" not in response.text


def served_by_the_gateway(session: requests.Session, url: str) -> None:
    response = session.post(f"{url}{CHAT}", json=chat_body("shin-llama-3-1-8b", "still served"),
                            headers=AUTH, timeout=10)
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"] == "echo: still served"


def test_a_request_flood_from_one_address_gets_json_429_while_another_address_is_served(gateway, tmp_path):
    burst = site_setting(r"limit_req zone=shin_gateway_req burst=(\d+) nodelay;")
    server = Nginx(tmp_path, f"127.0.0.1:{gateway.port}").start()
    responses: list[requests.Response] = []
    lock, stop = threading.Lock(), threading.Event()

    def flood():
        with requests.Session() as session:
            while not stop.is_set() and len(responses) < 4000:
                response = session.get(f"{server.url}/health/liveliness", timeout=10)
                with lock:
                    responses.append(response)

    threads = [threading.Thread(target=flood, daemon=True) for _ in range(12)]
    try:
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 15
        while not any(r.status_code == 429 for r in list(responses)):
            assert time.monotonic() < deadline, Counter(r.status_code for r in list(responses))
            time.sleep(0.05)
        # While this address is being refused, another one is served as usual.
        with other_client() as other:
            served_by_the_gateway(other, server.url)
            assert other.get(f"{server.url}/health/liveliness", timeout=10).status_code == 200
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=15)
        server.stop()
    statuses = Counter(r.status_code for r in responses)
    assert set(statuses) == {200, 429}, statuses
    assert statuses[200] >= burst, f"the burst of {burst} was not served in full: {statuses}"
    assert_rate_limited(next(r for r in responses if r.status_code == 429))


def hold_open_request(port: int) -> socket.socket:
    """A chat request whose head is complete and whose body never is: in progress until closed."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(f"POST {CHAT} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {MASTER_KEY}\r\n"
                 "Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{".encode())
    return sock


def test_requests_in_progress_past_the_per_address_limit_get_json_429(gateway, tmp_path):
    limit = site_setting(r"limit_conn shin_gateway_conn (\d+);")
    server = Nginx(tmp_path, f"127.0.0.1:{gateway.port}").start()
    held: list[socket.socket] = []
    try:
        held.extend(hold_open_request(server.port) for _ in range(limit))
        with requests.Session() as client:
            # nginx counts a request once it has read its head: retry until all `limit` are counted.
            deadline = time.monotonic() + 5
            while True:
                one_more = client.get(f"{server.url}/health/liveliness", timeout=10)
                if one_more.status_code == 429 or time.monotonic() > deadline:
                    break
                assert one_more.status_code == 200, one_more.text
                time.sleep(0.05)
            assert_rate_limited(one_more)
            refused = client.post(f"{server.url}{CHAT}", json=chat_body("shin-llama-3-1-8b"), headers=AUTH,
                                  timeout=10)
            assert_rate_limited(refused)
            with other_client() as other:
                served_by_the_gateway(other, server.url)
            # A request that ends frees its slot at once.
            held.pop().close()
            deadline = time.monotonic() + 5
            while (again := client.get(f"{server.url}/health/liveliness", timeout=10)).status_code == 429:
                assert time.monotonic() < deadline, "the slot of a closed request was not freed"
                time.sleep(0.05)
            assert again.status_code == 200, again.text
    finally:
        for sock in held:
            sock.close()
        server.stop()


def wait_until_dropped(sock: socket.socket, limit: float) -> tuple[float, bytes]:
    """Read until nginx closes or resets the connection; (seconds it took, bytes received)."""
    started = time.monotonic()
    sock.settimeout(limit)
    received = b""
    try:
        while chunk := sock.recv(65536):
            received += chunk
    except ConnectionResetError:
        pass
    except socket.timeout:
        pytest.fail(f"still open after {limit:.1f}s; received {received[:300]!r}")
    return time.monotonic() - started, received


def assert_dropped_or_408(received: bytes) -> None:
    """nginx (1.22 at least) resets a timed-out connection without an answer; if it answers, it is JSON 408."""
    if not received:
        return
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 "), received[:300]
    assert b"\r\nContent-Type: application/json\r\n" in head, head
    error = json.loads(body)["error"]
    assert (error["type"], error["code"], error["param"]) == ("invalid_request_error", "request_timeout", None)


SLOW_CLIENT_TIMEOUT = 2   # seconds, in a copy of the site file (shipped: 10 s head, 30 s body)


def test_slow_heads_and_bodies_are_dropped_while_a_normal_client_is_served(gateway, tmp_path):
    edits = {"client_header_timeout 10s;": f"client_header_timeout {SLOW_CLIENT_TIMEOUT}s;",
             "client_body_timeout 30s;": f"client_body_timeout {SLOW_CLIENT_TIMEOUT}s;"}
    server = Nginx(tmp_path, f"127.0.0.1:{gateway.port}", edits=edits).start()
    outcomes: dict[str, list[tuple[float, bytes]]] = {"head": [], "body": []}
    sockets: list[socket.socket] = []

    def slow_client(kind: str):
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        sockets.append(sock)
        if kind == "head":   # the head never ends
            sock.sendall(f"POST {CHAT} HTTP/1.1\r\nHost: 127.0.0.1\r\n".encode())
        else:                # a complete head, then a body that stops after its first byte
            sock.sendall(f"POST {CHAT} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {MASTER_KEY}\r\n"
                         "Content-Type: application/json\r\nContent-Length: 500\r\n\r\n{".encode())
        outcome = wait_until_dropped(sock, SLOW_CLIENT_TIMEOUT + 3)
        outcomes[kind].append(outcome)

    threads = [threading.Thread(target=slow_client, args=(kind,), daemon=True)
               for kind in ("head", "body") for _ in range(10)]
    try:
        for thread in threads:
            thread.start()
        time.sleep(0.3)   # the slow clients are in
        with requests.Session() as client:
            started = time.monotonic()
            served_by_the_gateway(client, server.url)
            assert time.monotonic() - started < 2.0
        for thread in threads:
            thread.join(timeout=SLOW_CLIENT_TIMEOUT + 5)
    finally:
        for sock in sockets:
            sock.close()
        server.stop()
    for kind, results in outcomes.items():
        assert len(results) == 10, (kind, results)
        for took, received in results:
            assert SLOW_CLIENT_TIMEOUT - 0.5 < took < SLOW_CLIENT_TIMEOUT + 1.5, (kind, took)
            assert_dropped_or_408(received)


def test_a_body_dripping_under_nginxs_read_timeout_is_cut_by_the_gateway_with_json_408(
        upstream, start_gateway, tmp_path):
    """nginx's client_body_timeout bounds the pause between reads only; the gateway's BODY_TIMEOUT
    bounds the whole body, and its 408 reaches the client through nginx."""
    body_timeout = 2
    own = start_gateway(standard_config(upstream), workers=1,
                        env={"TEST_UPSTREAM_KEY": UPSTREAM_KEY, "SHIN_GATEWAY_BODY_TIMEOUT": str(body_timeout)})
    server = Nginx(tmp_path, f"127.0.0.1:{own.port}").start()   # shipped timeouts
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
            sock.sendall(f"POST {CHAT} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {MASTER_KEY}\r\n"
                         "Content-Type: application/json\r\nContent-Length: 500\r\n\r\n{".encode())
            started = time.monotonic()
            sock.settimeout(0.25)
            received = b""
            while time.monotonic() - started < body_timeout + 3:
                try:
                    chunk = sock.recv(65536)
                except socket.timeout:
                    sock.sendall(b" ")   # one byte every 0.25 s: never a pause nginx would notice
                    continue
                except ConnectionResetError:
                    break
                if not chunk:
                    break
                received += chunk
                if b"\r\n\r\n" in received and received.rstrip().endswith(b"}"):
                    break
            took = time.monotonic() - started
    finally:
        server.stop()
    assert took < body_timeout + 1.5, took
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 "), received[:300]
    error = json.loads(body)["error"]
    assert (error["type"], error["code"]) == ("invalid_request_error", "request_timeout"), error
