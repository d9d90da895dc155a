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
    assert single(unit, "Service", "EnvironmentFile") == "/etc/shin-gateway/shin-gateway.env"
    assert single(unit, "Install", "WantedBy") == "multi-user.target"
    assert "network-online.target" in values(unit, "Unit", "After")
    # gunicorn's arbiter sends READY=1 (gunicorn/systemd.py), so `systemctl start` waits for the bind.
    assert single(unit, "Service", "Type") == "notify"


UNIT_CHECK = f"{INSTALL_DIR}/.venv/bin/shin-gateway check-config --config ${{SHIN_GATEWAY_CONFIG}} --require-master-key"


def test_unit_reload_is_sighup_to_gunicorn_after_a_config_check(unit):
    reload_commands = values(unit, "Service", "ExecReload")
    assert reload_commands[-1] == "/bin/kill -HUP $MAINPID"
    assert reload_commands[:-1] == [UNIT_CHECK]
    assert values(unit, "Service", "ExecStartPre") == [UNIT_CHECK]


# --- keyless by accident: the unit must not come up without a master key ----------------------

def test_unit_requires_its_env_file(unit):
    # "-/etc/…" would start the service without its keys when the file is missing.
    env_file = single(unit, "Service", "EnvironmentFile")
    assert not env_file.startswith("-"), env_file
    assert env_file == "/etc/shin-gateway/shin-gateway.env"


def test_unit_start_and_reload_checks_demand_a_master_key(unit):
    checks = values(unit, "Service", "ExecStartPre") + values(unit, "Service", "ExecReload")[:-1]
    assert checks and all("check-config" in c.split() and "--require-master-key" in c.split() for c in checks)
    # Not skippable: "-" would ignore a failed check, "+"/"!" would run it with other credentials.
    assert all(c.startswith(f"{INSTALL_DIR}/") for c in checks), checks


def test_unit_stops_gracefully_and_restarts_on_failure(unit):
    assert single(unit, "Service", "Restart") == "on-failure"
    assert single(unit, "Service", "KillMode") == "mixed"
    assert single(unit, "Service", "KillSignal") == "SIGTERM"
    assert 30 <= int(single(unit, "Service", "TimeoutStopSec")) <= 900   # > graceful_timeout (615 s by default)
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
    first = subprocess.run([SYSTEMD_ANALYZE, "--version"], capture_output=True, text=True, timeout=30).stdout
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


def run_unit_check(unit, config: Path, **variables: str) -> subprocess.CompletedProcess:
    """The unit's ExecStartPre on `config`, with LITELLM_MASTER_KEY only if given in `variables`."""
    argv = check_config_argv(unit, config)
    if not Path(argv[0]).exists():
        pytest.skip("shin-gateway is not installed in this venv (tests/run installs it)")
    env = {k: v for k, v in os.environ.items() if k != "LITELLM_MASTER_KEY" and not k.startswith("SHIN_GATEWAY_")}
    return subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=60, env={**env, **variables})


def production_config(tmp_path: Path) -> Path:
    """The shipped config after the guide's `sed -i … /etc/shin-gateway/config.yaml` commands (step 4)."""
    guide = (DOCS / "deployment.md").read_text(encoding="utf-8")
    commands = re.findall(r"^sed -i .* /etc/shin-gateway/config\.yaml$", guide, re.M)
    assert len(commands) >= 2, "the guide should point the database and the master key"
    config = tmp_path / "config.yaml"
    shutil.copy(REPO / "config" / "config.yaml", config)
    for command in commands:
        subprocess.run(["bash", "-c", command.replace("/etc/shin-gateway/config.yaml", str(config))],
                       check=True, timeout=30)
    return config


MASTER = "sk-unit-check-0123456789"


def test_unit_check_passes_on_the_guides_production_config_with_the_key_set(unit, tmp_path):
    done = run_unit_check(unit, production_config(tmp_path), LITELLM_MASTER_KEY=MASTER)
    assert done.returncode == 0, done.stdout + done.stderr
    assert MASTER not in done.stdout + done.stderr


@pytest.mark.parametrize("variables", [{}, {"LITELLM_MASTER_KEY": ""}], ids=["unset", "empty"])
def test_unit_check_refuses_the_production_config_without_its_key(unit, tmp_path, variables):
    # An env file that lacks the line (or has LITELLM_MASTER_KEY=) must not give an open gateway.
    done = run_unit_check(unit, production_config(tmp_path), **variables)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "LITELLM_MASTER_KEY" in done.stderr
    assert "not set or empty" in done.stderr


def test_unit_check_refuses_a_config_without_a_master_key(unit, tmp_path):
    # Such a config serves without auth on loopback (local use); the unit must never run it.
    keyless = tmp_path / "config.yaml"
    keyless.write_text("model_list:\n  - {model_name: mock, litellm_params: {model: mock/shin-mock}}\n")
    done = run_unit_check(unit, keyless, LITELLM_MASTER_KEY=MASTER)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "master_key" in done.stderr
    # Without the flag the same config is valid: it is the unit that demands a key.
    argv = [a for a in check_config_argv(unit, keyless) if a != "--require-master-key"]
    assert subprocess.run(argv, cwd=REPO, capture_output=True, timeout=60).returncode == 0


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
    proc = subprocess.Popen(nginx_argv(tmp_path, conf), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
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


@needs_nginx
def test_nginx_answers_json_400_to_oversize_headers_and_garbage(nginx_in_front_of):
    base = nginx_in_front_of(f"127.0.0.1:{closed_port()}")
    response = requests.get(f"{base}/v1/models", headers={"X-Big": "m" * 20000}, timeout=10)
    assert_openai_error(response, 400, "invalid_request_error", "request_header_too_large")
    port = int(base.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"GARBAGE\r\n\r\n")
        raw = b""
        while chunk := sock.recv(65536):
            raw += chunk
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 ")
    assert b"\r\nContent-Type: application/json\r\n" in head
    assert json.loads(body)["error"]["code"] == "bad_request"


@needs_nginx
def test_nginx_error_uris_are_not_reachable_from_outside(nginx_in_front_of):
    base = nginx_in_front_of(f"127.0.0.1:{closed_port()}")
    response = requests.get(f"{base}/_shin_gateway_error/500", timeout=10)
    assert_openai_error(response, 404, "invalid_request_error", "not_found")


class FakeGateway(BaseHTTPRequestHandler):
    """Answers like the gateway: JSON errors, an SSE stream that waits between chunks."""

    protocol_version = "HTTP/1.1"
    seen: list[dict] = []
    release_stream = threading.Event()

    def log_message(self, *args):
        pass

    def read_body(self) -> bytes | None:
        """The request body, or None when the client side was cut off mid-body."""
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            body = b""
            while True:
                size_line = self.rfile.readline()
                if not size_line.strip():
                    return None
                size = int(size_line.split(b";")[0], 16)
                chunk = self.rfile.read(size + 2)
                if len(chunk) != size + 2:
                    return None
                if size == 0:
                    return body
                body += chunk[:-2]
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        return body if len(body) == length else None

    def do_GET(self):
        self.handle_any()

    def do_POST(self):
        self.handle_any()

    def handle_any(self):
        body = self.read_body()
        type(self).seen.append({"path": self.path, "headers": dict(self.headers),
                                "body_length": None if body is None else len(body)})
        if body is None:
            self.close_connection = True
            return
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
def test_nginx_cuts_off_an_oversize_chunked_body_with_json_413(nginx_in_front_of, fake_gateway):
    base = nginx_in_front_of(fake_gateway)

    def eleven_megabytes():   # no Content-Length: nginx counts while streaming it on
        for _ in range(11):
            yield b"x" * MB

    response = requests.post(f"{base}/v1/chat/completions", data=eleven_megabytes(), timeout=30)
    assert_openai_error(response, 413, "invalid_request_error", "request_too_large")
    # The gateway saw at most a body cut short, never a complete oversize request.
    assert all(seen["body_length"] is None for seen in FakeGateway.seen)


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


def tls_site(tmp_path: Path, upstream: str, https_port: int, http_port: int, cert: Path, key: Path) -> str:
    """The site file after the HTTPS step of docs/deployment.md (its own sed command), on test ports."""
    guide = (REPO / "docs" / "deployment.md").read_text(encoding="utf-8")
    sed = re.search(r"^sed -i .*#tls .* shin-gateway$", guide, re.M).group(0)
    copy = tmp_path / "shin-gateway"
    shutil.copy(SITE, copy)
    subprocess.run(["bash", "-c", sed], cwd=tmp_path, env={**os.environ, "HOST": "gw.test"}, check=True, timeout=30)
    text = copy.read_text(encoding="utf-8")
    assert not re.search(r"^\s*#tls ", text, re.M)
    assert "listen 80;" not in text and "gateway.example.com" not in text
    text = "\n".join(line for line in text.splitlines() if "[::]" not in line)   # IPv6 may be absent here
    text = text.replace("127.0.0.1:4000", upstream)
    text = text.replace("listen 443 ssl http2;", f"listen 127.0.0.1:{https_port} ssl http2;")
    text = text.replace("listen 80 default_server;", f"listen 127.0.0.1:{http_port} default_server;")
    text = text.replace("/etc/letsencrypt/live/gw.test/fullchain.pem", str(cert))
    return text.replace("/etc/letsencrypt/live/gw.test/privkey.pem", str(key))


@needs_nginx
@pytest.mark.skipif(OPENSSL is None, reason="openssl is not installed")
@pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")
def test_tls_example_works_when_enabled(tmp_path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run([OPENSSL, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True, timeout=60)
    https_port, http_port = free_port(), free_port()
    conf = write_nginx_conf(tmp_path, tls_site(tmp_path, f"127.0.0.1:{closed_port()}", https_port, http_port, cert, key))
    done = nginx_test(tmp_path, conf)
    assert done.returncode == 0, done.stderr
    with running_nginx(tmp_path, conf, https_port):
        redirect = requests.get(f"http://127.0.0.1:{http_port}/v1/models", allow_redirects=False, timeout=10)
        assert redirect.status_code == 301
        assert redirect.headers["Location"] == "https://127.0.0.1/v1/models"   # $host: the client's Host
        response = requests.get(f"https://127.0.0.1:{https_port}/v1/models", verify=False, timeout=10)
        assert_openai_error(response, 502, "api_error", "upstream_error")


# --- the unit's command line behind the site file, end to end ---------------------------------

def listening_addresses(port: int) -> set[str]:
    """Local IPv4 addresses with a socket in LISTEN state on `port` (from /proc/net/tcp)."""
    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        address, _, port_hex = local.partition(":")
        if state == "0A" and int(port_hex, 16) == port:
            found.add(socket.inet_ntoa(bytes.fromhex(address)[::-1]))
    return found


@contextlib.contextmanager
def gateway_started_like_the_unit(unit, tmp_path: Path, port: int):
    """ExecStart from the unit, with its Environment=, in this checkout; the config sets a master key."""
    config = tmp_path / "etc" / "config.yaml"
    config.parent.mkdir()
    config.write_text("model_list:\n  - {model_name: mock, litellm_params: {model: mock/shin-mock}}\n"
                      "general_settings:\n  master_key: os.environ/LITELLM_MASTER_KEY\n"
                      "  database_url: sqlite:///gateway.db\n")
    runtime = tmp_path / "run"
    runtime.mkdir(mode=0o700)
    env = {**os.environ, **environment(unit), "SHIN_GATEWAY_CONFIG": str(config),
           "XDG_RUNTIME_DIR": str(runtime), "LITELLM_MASTER_KEY": "sk-master-test"}
    env["GUNICORN_CMD_ARGS"] = env["GUNICORN_CMD_ARGS"].replace(":4000", f":{port}") + " --workers=2"
    argv = single(unit, "Service", "ExecStart").replace(f"{INSTALL_DIR}/.venv/bin/", f"{VENV_BIN}/").split()
    log = open(tmp_path / "gunicorn.log", "wb")
    proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, (tmp_path / "gunicorn.log").read_text()
            with contextlib.suppress(requests.RequestException):
                if requests.get(f"http://127.0.0.1:{port}/health/liveliness", timeout=1).status_code == 200:
                    break
            assert time.monotonic() < deadline, "gateway did not come up"
            time.sleep(0.2)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@needs_nginx
def test_gateway_started_like_the_unit_serves_through_nginx(unit, tmp_path):
    port, nginx_port = free_port(), free_port()
    with gateway_started_like_the_unit(unit, tmp_path, port) as gunicorn:
        # A master key is set, yet only loopback listens: nginx is the only way in.
        assert listening_addresses(port) == {"127.0.0.1"}
        conf = write_nginx_conf(tmp_path, site_for_test(f"127.0.0.1:{port}", nginx_port))
        # nginx stops first: its idle upstream connections would hold gunicorn's graceful stop.
        with running_nginx(tmp_path, conf, nginx_port) as base:
            auth = {"Authorization": "Bearer sk-master-test"}

            denied = requests.get(f"{base}/v1/models", timeout=10)
            assert denied.status_code == 401
            assert denied.json()["error"]["type"] == "authentication_error"   # the gateway's own error

            models = requests.get(f"{base}/v1/models", headers={**auth, "X-Request-Id": "e2e-1"}, timeout=10)
            assert models.status_code == 200
            assert [m["id"] for m in models.json()["data"]] == ["mock"]
            assert models.headers["X-Request-Id"] == "e2e-1"

            body = {"model": "mock", "stream": True, "messages": [{"role": "user", "content": "Count to 3"}]}
            with requests.post(f"{base}/v1/chat/completions", json=body, headers=auth, stream=True,
                               timeout=30) as stream:
                assert stream.status_code == 200
                assert stream.headers["Content-Type"].startswith("text/event-stream")
                events = [line for line in stream.iter_lines() if line]
            assert events[-1] == b"data: [DONE]"
            assert all(json.loads(e.removeprefix(b"data: "))["object"] == "chat.completion.chunk"
                       for e in events[:-1])

            # `systemctl reload`: ExecReload's signal makes the same master serve the edited config.
            add_model_and_reload(unit, tmp_path, gunicorn)
            fresh = requests.get(f"http://127.0.0.1:{port}/v1/models", timeout=10,
                                 headers={**auth, "Connection": "close"})
            assert sorted(m["id"] for m in fresh.json()["data"]) == ["mock", "mock-2"]
            assert gunicorn.poll() is None
            assert requests.get(f"{base}/v1/models", headers=auth, timeout=10).status_code == 200


def add_model_and_reload(unit, tmp_path: Path, gunicorn: subprocess.Popen):
    config = tmp_path / "etc" / "config.yaml"
    config.write_text(config.read_text().replace(
        "model_list:\n", "model_list:\n  - {model_name: mock-2, litellm_params: {model: mock/two}}\n"))
    reload_command = values(unit, "Service", "ExecReload")[-1].replace("$MAINPID", str(gunicorn.pid))
    subprocess.run(reload_command.split(), check=True, timeout=10)
    time.sleep(2)   # new workers boot


@needs_nginx
def test_reload_reaches_clients_behind_nginx_promptly(unit, tmp_path):
    port, nginx_port = free_port(), free_port()
    with gateway_started_like_the_unit(unit, tmp_path, port) as gunicorn:
        conf = write_nginx_conf(tmp_path, site_for_test(f"127.0.0.1:{port}", nginx_port))
        with running_nginx(tmp_path, conf, nginx_port) as base:
            auth = {"Authorization": "Bearer sk-master-test"}
            for _ in range(4):   # warm nginx's pool of upstream connections
                assert requests.get(f"{base}/v1/models", headers=auth, timeout=10).status_code == 200
            add_model_and_reload(unit, tmp_path, gunicorn)
            deadline = time.monotonic() + 10
            while True:
                after = requests.get(f"{base}/v1/models", headers=auth, timeout=10)
                if sorted(m["id"] for m in after.json()["data"]) == ["mock", "mock-2"]:
                    break
                assert time.monotonic() < deadline, "the reloaded config is not served through nginx"
                time.sleep(0.5)


@needs_nginx
def test_stop_is_prompt_while_nginx_holds_idle_connections(unit, tmp_path):
    port, nginx_port = free_port(), free_port()
    with gateway_started_like_the_unit(unit, tmp_path, port) as gunicorn:
        conf = write_nginx_conf(tmp_path, site_for_test(f"127.0.0.1:{port}", nginx_port))
        with running_nginx(tmp_path, conf, nginx_port) as base:
            auth = {"Authorization": "Bearer sk-master-test"}
            assert requests.get(f"{base}/v1/models", headers=auth, timeout=10).status_code == 200
            gunicorn.terminate()   # what `systemctl stop` sends (KillMode=mixed: the master only)
            try:
                gunicorn.wait(timeout=15)
            except subprocess.TimeoutExpired:
                pytest.fail("gunicorn still draining idle keep-alive connections 15 s after SIGTERM")


# --- the docs that describe these files ---------------------------------------------------------

DOCS = REPO / "docs"


def test_every_checkout_path_the_docs_and_unit_name_exists():
    texts = [(DOCS / "deployment.md").read_text(encoding="utf-8"), UNIT.read_text(encoding="utf-8")]
    named = {m for text in texts for m in re.findall(rf"{INSTALL_DIR}/([\w./-]+\w)", text)}
    named = {path for path in named if not path.startswith(".venv/")}
    assert {"systemd/shin-gateway.service", "nginx/shin-gateway.conf", "config/config.yaml",
            "docs/deployment.md"} <= named
    missing = sorted(path for path in named if not (REPO / path).exists())
    assert missing == []


def test_configuration_reference_example_is_a_valid_config(tmp_path):
    from gateway.providers import ADAPTERS
    from gateway.settings import load_settings

    example = re.search(r"```yaml\n(.*?)```", (DOCS / "configuration.md").read_text(encoding="utf-8"), re.S)
    config = tmp_path / "config.yaml"
    config.write_text(example.group(1))
    # The keys it names that fail closed (master_key, metrics_token) must be set; model keys need not.
    text = example.group(1)
    environ = {name: "set-for-the-test" for key in ("master_key", "metrics_token")
               for name in re.findall(rf"^\s*{key}: os\.environ/(\w+)", text, re.M)}
    settings = load_settings(config, providers=ADAPTERS, environ=environ)
    assert settings.model_names == ("shin-llama-3-1-70b", "shin-llama-3-1-8b")
    assert settings.database_url == f"sqlite:///{tmp_path.resolve() / 'gateway.db'}"   # relative to the config's folder


def test_deployment_guide_puts_the_database_where_the_sandbox_lets_it_write(tmp_path):
    # The unit makes everything but /var/lib/shin-gateway read-only; the guide's sed must get it there.
    from gateway.settings import load_settings

    settings = load_settings(production_config(tmp_path), environ={"LITELLM_MASTER_KEY": MASTER})
    assert settings.database_url == "sqlite:////var/lib/shin-gateway/gateway.db"
    assert settings.master_key == MASTER


def test_deployment_guide_shows_the_production_general_settings(tmp_path):
    guide = (DOCS / "deployment.md").read_text(encoding="utf-8")
    shown = re.search(r"```yaml\n(general_settings:\n.*?)```", guide, re.S)
    assert shown, "the guide should show the production general_settings block"
    assert "  master_key: os.environ/LITELLM_MASTER_KEY" in shown.group(1)
    produced = production_config(tmp_path).read_text(encoding="utf-8")
    for line in shown.group(1).splitlines():
        setting = line.split("#", 1)[0].rstrip()
        if setting and "…" not in setting:
            assert re.search(rf"^{re.escape(setting)}\s*(#.*)?$", produced, re.M), (setting, produced)
