"""systemd/shin-gateway.service and nginx/shin-gateway.conf, checked by systemd-analyze and a real nginx."""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "systemd" / "shin-gateway.service"
SITE = REPO / "nginx" / "shin-gateway.conf"
GUNICORN_CONF = REPO / "config" / "gunicorn.conf.py"
INSTALL_DIR = "/opt/shin-gateway"
VENV_BIN = Path(sys.executable).parent
NGINX = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
OPENSSL = shutil.which("openssl")
MB = 1024 * 1024

needs_nginx = pytest.mark.skipif(NGINX is None, reason="nginx is not installed (apt-get install nginx)")
needs_systemd_analyze = pytest.mark.skipif(
    SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed (apt-get install systemd)")


# --- the unit file ------------------------------------------------------------------------

def parse_unit(text: str) -> dict[str, list[tuple[str, str]]]:
    """Sections of a systemd unit as ordered (key, value) pairs; keys may repeat."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], [])
            continue
        assert current is not None, f"directive outside a section: {raw!r}"
        assert not line.endswith("\\"), f"line continuations make this file hard to read: {raw!r}"
        key, sep, value = line.partition("=")
        assert sep, f"not a key=value line: {raw!r}"
        current.append((key.strip(), value.strip()))
    return sections


@pytest.fixture(scope="module")
def unit() -> dict[str, list[tuple[str, str]]]:
    return parse_unit(UNIT.read_text(encoding="utf-8"))


def values(unit, section: str, key: str) -> list[str]:
    return [v for k, v in unit.get(section, []) if k == key]


def single(unit, section: str, key: str) -> str:
    found = values(unit, section, key)
    assert len(found) == 1, f"[{section}] {key}= should be set exactly once, found {found}"
    return found[0]


def environment(unit) -> dict[str, str]:
    env = {}
    for assignment in values(unit, "Service", "Environment"):
        name, _, value = assignment.partition("=")
        env[name] = value
    return env


def test_unit_runs_gunicorn_from_the_install_dir_as_its_own_user(unit):
    assert single(unit, "Service", "ExecStart") == \
        f"{INSTALL_DIR}/.venv/bin/gunicorn -c config/gunicorn.conf.py wsgi:app"
    assert single(unit, "Service", "WorkingDirectory") == INSTALL_DIR
    assert single(unit, "Service", "User") == "shin-gateway"
    assert single(unit, "Service", "Group") == "shin-gateway"
    assert environment(unit)["SHIN_GATEWAY_CONFIG"] == "/etc/shin-gateway/config.yaml"
    assert single(unit, "Service", "EnvironmentFile") == "-/etc/shin-gateway/shin-gateway.env"
    assert single(unit, "Install", "WantedBy") == "multi-user.target"
    assert "network-online.target" in values(unit, "Unit", "After")
    # gunicorn's arbiter sends READY=1 (gunicorn/systemd.py), so `systemctl start` waits for the bind.
    assert single(unit, "Service", "Type") == "notify"


def test_unit_reload_is_sighup_to_gunicorn_after_a_config_check(unit):
    reload_commands = values(unit, "Service", "ExecReload")
    assert reload_commands[-1] == "/bin/kill -HUP $MAINPID"
    check = f"{INSTALL_DIR}/.venv/bin/shin-gateway check-config --config ${{SHIN_GATEWAY_CONFIG}}"
    assert reload_commands[:-1] == [check]
    assert values(unit, "Service", "ExecStartPre") == [check]


def test_unit_stops_gracefully_and_restarts_on_failure(unit):
    assert single(unit, "Service", "Restart") == "on-failure"
    assert single(unit, "Service", "KillMode") == "mixed"
    assert single(unit, "Service", "KillSignal") == "SIGTERM"
    assert 30 <= int(single(unit, "Service", "TimeoutStopSec")) <= 600
    assert int(single(unit, "Service", "LimitNOFILE")) >= 65536


HARDENING = {
    "NoNewPrivileges": "yes",
    "ProtectSystem": "strict",
    "ProtectHome": "yes",
    "PrivateTmp": "yes",
    "PrivateDevices": "yes",
    "ProtectKernelTunables": "yes",
    "ProtectKernelModules": "yes",
    "ProtectKernelLogs": "yes",
    "ProtectControlGroups": "yes",
    "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
    "CapabilityBoundingSet": "",
    "LockPersonality": "yes",
    "RestrictSUIDSGID": "yes",
    "RestrictNamespaces": "yes",
    "RestrictRealtime": "yes",
    "SystemCallArchitectures": "native",
    "SystemCallFilter": "@system-service",
    "UMask": "0077",
    "StateDirectory": "shin-gateway",
}


@pytest.mark.parametrize("key, expected", sorted(HARDENING.items()))
def test_unit_hardening_directive(unit, key, expected):
    assert single(unit, "Service", key) == expected


def test_unit_allows_writable_executable_memory_for_gevent(unit):
    # greenlet and cffi may map W+X memory; MemoryDenyWriteExecute would crash workers.
    assert values(unit, "Service", "MemoryDenyWriteExecute") == []


def test_unit_sets_no_directive_twice_unless_it_accumulates(unit):
    accumulating = {"Environment", "ExecStartPre", "ExecReload", "After", "Wants", "Documentation"}
    for section, pairs in unit.items():
        keys = [k for k, _ in pairs if k not in accumulating]
        duplicates = sorted({k for k in keys if keys.count(k) > 1})
        assert duplicates == [], f"[{section}] sets {duplicates} more than once"


def test_unit_binds_gunicorn_where_nginx_proxies_to(unit):
    bind = re.fullmatch(r"--bind=(\S+)", environment(unit)["GUNICORN_CMD_ARGS"])
    assert bind, "GUNICORN_CMD_ARGS should hold exactly one --bind=HOST:PORT"
    upstream = re.search(r"upstream shin_gateway \{\s*server (\S+);", strip_comments(SITE.read_text()))
    assert bind.group(1) == upstream.group(1) == "127.0.0.1:4000"


def test_unit_exec_paths_exist_in_the_repo(unit):
    # ExecStart runs from WorkingDirectory=/opt/shin-gateway, the checkout.
    assert (REPO / "wsgi.py").is_file()
    assert re.search(r"^\s*shin-gateway\s*=", (REPO / "setup.cfg").read_text(), re.M), \
        "setup.cfg must provide the shin-gateway console script the unit calls"


def gunicorn_setting(name: str, tmp_path: Path):
    """The value config/gunicorn.conf.py gives `name` (for a minimal gateway config), or gunicorn's default."""
    config = tmp_path / "config.yaml"
    config.write_text("model_list: []\n")
    code = (
        "import json, runpy, sys\n"
        "from gunicorn.config import Config\n"
        f"ns = runpy.run_path({str(GUNICORN_CONF)!r})\n"
        f"print(json.dumps(ns.get({name!r}, Config().settings[{name!r}].get())))\n"
    )
    env = {**os.environ, "SHIN_GATEWAY_CONFIG": str(config)}
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_unit_stop_timeout_outlasts_gunicorns_graceful_timeout(unit, tmp_path):
    # Otherwise systemd SIGKILLs workers that are still finishing in-flight requests.
    assert int(single(unit, "Service", "TimeoutStopSec")) > int(gunicorn_setting("graceful_timeout", tmp_path))


def test_gunicorn_keepalive_outlasts_nginx_upstream_keepalive(tmp_path):
    # If gunicorn closes an idle connection first, nginx can send a request into
    # the closing socket and answer 502 (a POST is not retried).
    nginx_idle = re.search(r"keepalive_timeout (\d+)s;", strip_comments(SITE.read_text()))
    assert nginx_idle, "set keepalive_timeout in the upstream block"
    assert int(gunicorn_setting("keepalive", tmp_path)) > int(nginx_idle.group(1))


def local_copy_of_unit(tmp_path: Path) -> Path:
    """The unit with /opt/shin-gateway paths pointed at this checkout and its venv."""
    text = UNIT.read_text(encoding="utf-8")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("gunicorn", "shin-gateway"):
        real = VENV_BIN / name
        target = bin_dir / name
        if real.exists():
            target.symlink_to(real)
        else:   # package not installed in this venv (tests/run installs it)
            target.write_text("#!/bin/sh\nexit 0\n")
            target.chmod(0o755)
    text = text.replace(f"{INSTALL_DIR}/.venv/bin/", f"{bin_dir}/")
    text = text.replace(f"WorkingDirectory={INSTALL_DIR}", f"WorkingDirectory={REPO}")
    assert INSTALL_DIR + "/" not in text.replace("file://" + INSTALL_DIR, "")
    copy = tmp_path / "shin-gateway.service"
    copy.write_text(text, encoding="utf-8")
    return copy


@needs_systemd_analyze
def test_systemd_analyze_verify_accepts_the_unit(tmp_path):
    copy = local_copy_of_unit(tmp_path)
    done = subprocess.run([SYSTEMD_ANALYZE, "verify", str(copy)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    # Unknown keys and unparsable values are only warnings ("…, ignoring"): fail on them too.
    ours = [line for line in done.stderr.splitlines() if copy.name in line]
    assert ours == [], "\n".join(ours)


def systemd_version() -> int:
    first = subprocess.run([SYSTEMD_ANALYZE, "--version"], capture_output=True, text=True).stdout
    return int(re.search(r"systemd (\d+)", first).group(1))


@needs_systemd_analyze
def test_systemd_analyze_security_rates_the_unit_well_hardened(tmp_path):
    if systemd_version() < 250:
        pytest.skip("systemd-analyze security --offline needs systemd 250+")
    copy = local_copy_of_unit(tmp_path)
    # Exposure is 0 (locked down) .. 100 (open), printed as 0.0 .. 10.0; fail above 2.0.
    done = subprocess.run([SYSTEMD_ANALYZE, "security", "--offline=yes", "--threshold=20", "--no-pager",
                           str(copy)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr


def check_config_argv(unit, config: Path) -> list[str]:
    command = values(unit, "Service", "ExecStartPre")[0]
    command = command.replace("${SHIN_GATEWAY_CONFIG}", str(config))
    command = command.replace(f"{INSTALL_DIR}/.venv/bin/", f"{VENV_BIN}/")
    return command.split()


def test_start_and_reload_check_passes_on_the_shipped_config(unit):
    argv = check_config_argv(unit, REPO / "config" / "config.yaml")
    if not Path(argv[0]).exists():
        pytest.skip("shin-gateway is not installed in this venv (tests/run installs it)")
    done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "SHIN_GATEWAY_CONFIG": ""})
    assert done.returncode == 0, done.stdout + done.stderr


def test_start_and_reload_check_refuses_a_broken_config(unit, tmp_path):
    bad = tmp_path / "config.yaml"
    bad.write_text("model_list: []\ngeneral_settings:\n  no_such_key: 1\n")
    argv = check_config_argv(unit, bad)
    if not Path(argv[0]).exists():
        pytest.skip("shin-gateway is not installed in this venv (tests/run installs it)")
    done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert "no_such_key" in done.stdout + done.stderr


# --- the nginx site file ------------------------------------------------------------------

def strip_comments(text: str) -> str:
    return "\n".join(line.split("#", 1)[0] for line in text.splitlines())


def test_site_has_exactly_one_upstream_address_and_listen_line():
    text = SITE.read_text(encoding="utf-8")
    # Deployment scripts and the tests below rewrite these two strings.
    assert text.count("127.0.0.1:4000") == 1
    assert text.count("listen 80;") == 1
    assert strip_comments(text).count("127.0.0.1:4000") == 1
    assert strip_comments(text).count("listen 80;") == 1


@pytest.mark.parametrize("directive", [
    "proxy_http_version 1.1;",
    'proxy_set_header Connection "";',
    "proxy_set_header Host $host;",
    "proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;",
    "proxy_set_header X-Forwarded-Proto $scheme;",
    "proxy_set_header X-Real-IP $remote_addr;",
    "proxy_buffering off;",
    "proxy_request_buffering off;",
    "proxy_cache off;",
    "proxy_intercept_errors off;",
    "keepalive 64;",
])
def test_site_sets(directive):
    assert directive in strip_comments(SITE.read_text(encoding="utf-8"))


def seconds(value: str) -> int:
    number, unit = re.fullmatch(r"(\d+)([smh]?)", value).groups()
    return int(number) * {"": 1, "s": 1, "m": 60, "h": 3600}[unit]


def test_site_gives_streams_at_least_an_hour():
    text = strip_comments(SITE.read_text(encoding="utf-8"))
    for directive in ("proxy_read_timeout", "proxy_send_timeout"):
        found = re.findall(rf"\b{directive} (\w+);", text)
        assert found and all(seconds(v) >= 3600 for v in found), directive


def test_site_body_limit_matches_the_gateway_default(tmp_path):
    from gateway.settings import load_settings

    config = tmp_path / "config.yaml"
    config.write_text("model_list: []\n")
    gateway_limit = load_settings(config, environ={}).max_request_body_bytes
    limit = re.search(r"client_max_body_size (\d+)m;", strip_comments(SITE.read_text()))
    assert int(limit.group(1)) * MB == gateway_limit


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def closed_port() -> int:
    """A loopback port nobody listens on (connect is refused)."""
    return free_port()


def site_for_test(upstream: str, listen_port: int) -> str:
    text = SITE.read_text(encoding="utf-8")
    return text.replace("127.0.0.1:4000", upstream).replace("listen 80;", f"listen 127.0.0.1:{listen_port};")


def write_nginx_conf(tmp_path: Path, site_text: str) -> Path:
    """A minimal nginx.conf that includes the site file; every path inside tmp_path."""
    (tmp_path / "logs").mkdir(exist_ok=True)
    (tmp_path / "temp").mkdir(exist_ok=True)
    site = tmp_path / "shin-gateway.conf"
    site.write_text(site_text, encoding="utf-8")
    temp_paths = "\n".join(f"    {kind}_temp_path {tmp_path / 'temp' / kind};"
                           for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    user = "user root root;\n" if os.geteuid() == 0 else ""   # workers must reach tmp_path
    conf = tmp_path / "nginx.conf"
    conf.write_text(
        f"{user}daemon off;\nmaster_process on;\nworker_processes 1;\n"
        f"pid {tmp_path / 'nginx.pid'};\nerror_log {tmp_path / 'logs' / 'error.log'} info;\n"
        "events { worker_connections 256; }\n"
        "http {\n"
        f"    access_log {tmp_path / 'logs' / 'access.log'};\n{temp_paths}\n"
        f"    include {site};\n"
        "}\n", encoding="utf-8")
    return conf


def nginx_argv(tmp_path: Path, conf: Path, *extra: str) -> list[str]:
    return [NGINX, "-p", f"{tmp_path}/", "-e", str(tmp_path / "logs" / "error.log"), "-c", str(conf), *extra]


def nginx_test(tmp_path: Path, conf: Path) -> subprocess.CompletedProcess:
    return subprocess.run(nginx_argv(tmp_path, conf, "-t"), capture_output=True, text=True, timeout=60)


@contextlib.contextmanager
def running_nginx(tmp_path: Path, conf: Path, port: int):
    proc = subprocess.Popen(nginx_argv(tmp_path, conf), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 10
        while True:
            assert proc.poll() is None, f"nginx exited: {(tmp_path / 'logs' / 'error.log').read_text()}"
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
                break
            assert time.monotonic() < deadline, "nginx did not start listening"
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def nginx_in_front_of(tmp_path):
    """Start nginx with the site file proxying to `upstream`; yields its base URL."""
    stack = contextlib.ExitStack()

    def start(upstream: str) -> str:
        port = free_port()
        conf = write_nginx_conf(tmp_path, site_for_test(upstream, port))
        return stack.enter_context(running_nginx(tmp_path, conf, port))

    with stack:
        yield start


def assert_openai_error(response, status: int, error_type: str, code: str):
    assert response.status_code == status
    assert response.headers["Content-Type"].split(";")[0] == "application/json"
    body = response.json()
    assert set(body) == {"error"}
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and error["message"]
    assert (error["type"], error["param"], error["code"]) == (error_type, None, code)
    assert "nginx" not in response.text and "<html" not in response.text.lower()


@needs_nginx
def test_nginx_accepts_the_site_file_in_a_minimal_http_block(tmp_path):
    conf = write_nginx_conf(tmp_path, site_for_test(f"127.0.0.1:{closed_port()}", free_port()))
    done = nginx_test(tmp_path, conf)
    assert done.returncode == 0, done.stderr
    assert "test is successful" in done.stderr


@needs_nginx
def test_nginx_answers_json_502_when_the_gateway_is_down(nginx_in_front_of):
    base = nginx_in_front_of(f"127.0.0.1:{closed_port()}")
    response = requests.post(f"{base}/v1/chat/completions", json={"model": "mock", "messages": []},
                             headers={"X-Request-Id": "req-502"}, timeout=10)
    assert_openai_error(response, 502, "api_error", "upstream_error")
    assert response.headers["X-Request-Id"] == "req-502"
    assert response.headers["Retry-After"] == "1"
    # The OpenAI SDK treats this as retryable; the body must parse whatever the URI's extension.
    html_uri = requests.get(f"{base}/index.html", timeout=10)
    assert_openai_error(html_uri, 502, "api_error", "upstream_error")
    assert re.fullmatch(r"[0-9a-f]{32}", html_uri.headers["X-Request-Id"])


@needs_nginx
def test_nginx_answers_json_413_to_a_body_over_10_mb(nginx_in_front_of):
    base = nginx_in_front_of(f"127.0.0.1:{closed_port()}")
    response = requests.post(f"{base}/v1/chat/completions", data=b"x" * (11 * MB),
                             headers={"Content-Type": "application/json"}, timeout=30)
    assert_openai_error(response, 413, "invalid_request_error", "request_too_large")


@needs_nginx
def test_nginx_answers_json_414_to_an_overlong_uri(nginx_in_front_of):
    base = nginx_in_front_of(f"127.0.0.1:{closed_port()}")
    response = requests.get(f"{base}/v1/models/{'m' * 20000}", timeout=10)
    assert_openai_error(response, 414, "invalid_request_error", "uri_too_long")


class FakeGateway(BaseHTTPRequestHandler):
    """Answers like the gateway: JSON errors, an SSE stream that waits between chunks."""

    protocol_version = "HTTP/1.1"
    seen: list[dict] = []
    release_stream = threading.Event()

    def log_message(self, *args):
        pass

    def read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            body = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                chunk = self.rfile.read(size + 2)[:-2]
                if size == 0:
                    return body
                body += chunk
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def do_GET(self):
        self.handle_any()

    def do_POST(self):
        self.handle_any()

    def handle_any(self):
        body = self.read_body()
        type(self).seen.append({"path": self.path, "headers": dict(self.headers), "body_length": len(body)})
        status = re.fullmatch(r"/status/(\d{3})", self.path)
        if status:
            self.send_json(int(status.group(1)), {"error": {
                "message": f"gateway's own error {status.group(1)}", "type": "api_error",
                "param": None, "code": f"own_{status.group(1)}"}})
        elif self.path == "/v1/chat/completions/stream":
            self.send_stream()
        else:
            self.send_json(200, {"ok": True, "received": len(body)})

    def send_json(self, status: int, payload: dict):
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def send_stream(self):
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for event in (b'data: {"n": 1}\n\n', None, b"data: [DONE]\n\n", b""):
            if event is None:   # hold the rest until the client has seen the first chunk
                type(self).release_stream.wait(timeout=10)
                continue
            self.wfile.write(b"%x\r\n%s\r\n" % (len(event), event))
            self.wfile.flush()


@pytest.fixture
def fake_gateway():
    FakeGateway.seen = []
    FakeGateway.release_stream = threading.Event()
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeGateway)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        FakeGateway.release_stream.set()
        server.shutdown()
        server.server_close()


@needs_nginx
@pytest.mark.parametrize("status", [400, 404, 413, 429, 500, 502, 503, 504])
def test_nginx_passes_the_gateways_own_errors_through_untouched(nginx_in_front_of, fake_gateway, status):
    base = nginx_in_front_of(fake_gateway)
    response = requests.get(f"{base}/status/{status}", timeout=10)
    assert response.status_code == status
    assert response.json()["error"]["code"] == f"own_{status}"


@needs_nginx
def test_nginx_forwards_client_and_request_id_headers(nginx_in_front_of, fake_gateway):
    base = nginx_in_front_of(fake_gateway)
    with requests.Session() as session:
        first = session.post(f"{base}/v1/chat/completions", json={"model": "mock"},
                             headers={"Authorization": "Bearer sk-test", "X-Request-Id": "client-id-1"}, timeout=10)
        second = session.post(f"{base}/v1/chat/completions", json={"model": "mock"}, timeout=10)
    assert first.status_code == second.status_code == 200
    sent_with_id, sent_without = (seen["headers"] for seen in FakeGateway.seen)
    assert sent_with_id["Authorization"] == "Bearer sk-test"
    assert sent_with_id["X-Request-Id"] == "client-id-1"
    assert re.fullmatch(r"[0-9a-f]{32}", sent_without["X-Request-Id"])
    assert sent_with_id["X-Real-IP"] == "127.0.0.1"
    assert sent_with_id["X-Forwarded-For"] == "127.0.0.1"
    assert sent_with_id["X-Forwarded-Proto"] == "http"
    assert sent_with_id["Host"] == base.removeprefix("http://").split(":")[0]
    # HTTP/1.1 keep-alive to the upstream: nginx must not send "Connection: close".
    assert sent_with_id.get("Connection", "").lower() != "close"


@needs_nginx
def test_nginx_passes_a_body_just_under_the_limit(nginx_in_front_of, fake_gateway):
    base = nginx_in_front_of(fake_gateway)
    size = 10 * MB - 4096
    response = requests.post(f"{base}/v1/embeddings", data=b"x" * size,
                             headers={"Content-Type": "application/json"}, timeout=30)
    assert response.status_code == 200
    assert response.json()["received"] == size


@needs_nginx
def test_nginx_streams_each_chunk_without_buffering(nginx_in_front_of, fake_gateway):
    base = nginx_in_front_of(fake_gateway)
    with requests.post(f"{base}/v1/chat/completions/stream", json={"stream": True},
                       stream=True, timeout=5) as response:
        assert response.status_code == 200
        assert response.headers["Content-Type"] == "text/event-stream"
        lines = response.iter_lines()
        # The upstream holds back the rest until released: a buffering proxy would time out here.
        assert next(lines) == b'data: {"n": 1}'
        FakeGateway.release_stream.set()
        rest = [line for line in lines if line]
    assert rest == [b"data: [DONE]"]


def tls_site(upstream: str, https_port: int, http_port: int, cert: Path, key: Path) -> str:
    """The site file with its "#tls " lines enabled, as docs/deployment.md instructs."""
    lines = []
    for line in SITE.read_text(encoding="utf-8").splitlines():
        if line.strip() == "listen 80;":
            continue    # the HTTPS setup replaces the plain-HTTP listener
        line = re.sub(r"^(\s*)#tls ", r"\1", line)
        if "[::]" in line:
            continue    # IPv6 may be absent here
        lines.append(line)
    text = "\n".join(lines).replace("127.0.0.1:4000", upstream)
    text = text.replace("listen 443 ssl http2;", f"listen 127.0.0.1:{https_port} ssl http2;")
    text = text.replace("listen 80 default_server;", f"listen 127.0.0.1:{http_port} default_server;")
    text = re.sub(r"ssl_certificate\s+\S+;", f"ssl_certificate {cert};", text)
    text = re.sub(r"ssl_certificate_key\s+\S+;", f"ssl_certificate_key {key};", text)
    return text


@needs_nginx
@pytest.mark.skipif(OPENSSL is None, reason="openssl is not installed")
@pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")
def test_tls_example_works_when_enabled(tmp_path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run([OPENSSL, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True, timeout=60)
    https_port, http_port = free_port(), free_port()
    conf = write_nginx_conf(tmp_path, tls_site(f"127.0.0.1:{closed_port()}", https_port, http_port, cert, key))
    done = nginx_test(tmp_path, conf)
    assert done.returncode == 0, done.stderr
    with running_nginx(tmp_path, conf, https_port):
        redirect = requests.get(f"http://127.0.0.1:{http_port}/v1/models", allow_redirects=False, timeout=10)
        assert redirect.status_code == 301
        assert redirect.headers["Location"] == "https://127.0.0.1/v1/models"
        response = requests.get(f"https://127.0.0.1:{https_port}/v1/models", verify=False, timeout=10)
        assert_openai_error(response, 502, "api_error", "upstream_error")
