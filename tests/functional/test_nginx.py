"""The shipped nginx site file, run for real in front of the gateway (nginx/shin-gateway.conf)."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
import requests

from .conftest import MASTER_KEY, UPSTREAM_KEY, standard_config
from .gateway_process import ROOT, free_port
from .wire import SSEResponse, assert_no_leak, assert_sse_framing, chat_body

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
SITE = ROOT / "nginx" / "shin-gateway.conf"
CHAT = "/v1/chat/completions"
AUTH = {"Authorization": f"Bearer {MASTER_KEY}"}

pytestmark = pytest.mark.skipif(not Path(NGINX).exists(), reason="nginx is not installed")


class Nginx:
    """nginx with the site file pointed at one gateway, everything it writes kept inside `folder`."""

    def __init__(self, folder: Path, gateway_hostport: str):
        self.folder = folder
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        site_text = SITE.read_text()
        assert "127.0.0.1:4000" in site_text and "listen 80;" in site_text, "the site file changed shape"
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
