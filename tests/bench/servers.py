"""Launch the fake upstream and the gateway under test, and wait until they serve.

The gateway is launched exactly as an operator would: gunicorn with the
project's ``config/gunicorn.conf.py`` and a config file named by
``SHIN_GATEWAY_CONFIG``, with ``--bind`` and ``--workers`` on the command line.
``--gateway-cmd`` lets the runner benchmark any other launch command with the
same placeholders.

"Time to first 200" is measured from just before ``Popen`` to the first 200
from ``GET /health/liveliness``, polled every few milliseconds with a raw
socket so the probe itself costs next to nothing while the gateway boots.
"""
from __future__ import annotations

import http.client
import json
import os
import shlex
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from procs import Children

HOST = "127.0.0.1"
MASTER_KEY = "bench-master-key"  # every generated config's general_settings.master_key
REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
DEFAULT_GATEWAY_CMD = (
    "{bin}/gunicorn -c config/gunicorn.conf.py --bind {host}:{port} --workers {workers} wsgi:app"
)
CONFIG_TEMPLATE = """\
model_list:
  - model_name: bench-model
    litellm_params:
      model: openai/bench-upstream-model
      api_base: http://{host}:{upstream_port}/v1
      api_key: bench-upstream-key
general_settings:
  master_key: {master_key}
"""


class StartError(RuntimeError):
    """A process did not come up; the message points at its log."""


@dataclass
class Started:
    proc: subprocess.Popen
    port: int
    log: Path
    first_200: float = 0.0  # seconds from launch to the first 200 health answer
    api_key: str = MASTER_KEY  # what the load sends as ``Authorization: Bearer`` (a variant's virtual key)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def http_status(port: int, path: str, timeout: float = 1.0) -> int | None:
    """Status code of a bare GET, or None if nothing answered properly."""
    try:
        with socket.create_connection((HOST, port), timeout=timeout) as sock:
            sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\nConnection: close\r\n\r\n".encode())
            head = sock.recv(64)
    except OSError:
        return None
    parts = head.split(b" ", 2)
    return int(parts[1]) if len(parts) >= 2 and parts[1].isdigit() else None


def wait_for_200(started: Started, path: str, launched_at: float, timeout: float) -> float:
    """Poll until ``path`` answers 200; return seconds since ``launched_at``."""
    deadline = launched_at + timeout
    while time.perf_counter() < deadline:
        if started.proc.poll() is not None:
            raise StartError(f"exited with code {started.proc.returncode} during start-up; see {started.log}")
        if http_status(started.port, path, timeout=0.5) == 200:
            return time.perf_counter() - launched_at
        time.sleep(0.005)
    raise StartError(f"no 200 from {path} within {timeout:.0f} s; see {started.log}")


def start_upstream(children: Children, workdir: Path, procs: int, chunks: int, delay_ms: float) -> Started:
    port = free_port()
    log = workdir / "upstream.log"
    cmd = [sys.executable, str(Path(__file__).with_name("fake_upstream.py")), "--port", str(port),
           "--procs", str(procs), "--chunks", str(chunks), "--chunk-delay-ms", str(delay_ms)]
    launched = time.perf_counter()
    started = Started(children.start(cmd, log=log), port, log)
    started.first_200 = wait_for_200(started, "/health", launched, timeout=15.0)
    return started


def write_config(workdir: Path, upstream_port: int, text: str | None = None, name: str = "gateway") -> Path:
    """``<workdir>/<name>.yaml``: by default the one config every gateway of a plain or
    ``--baseline`` run reads (valid for old and new revisions); ``text`` for a variant's."""
    config = workdir / f"{name}.yaml"
    config.write_text(text if text is not None else CONFIG_TEMPLATE.format(host=HOST, upstream_port=upstream_port,
                                                                           master_key=MASTER_KEY))
    return config


def readiness(port: int) -> str:
    """The body of ``GET /health/readiness`` (its checks name the router state backend), compact."""
    conn = http.client.HTTPConnection(HOST, port, timeout=5.0)
    try:
        conn.request("GET", "/health/readiness")
        response = conn.getresponse()
        body = response.read().decode("utf-8", "replace")
    except OSError as exc:
        return f"unreachable: {exc}"
    finally:
        conn.close()
    try:
        body = json.dumps(json.loads(body), separators=(",", ":"))
    except ValueError:
        pass
    return f"{response.status} {body}"


def served_by(port: int, requests: int, body: bytes, api_key: str = MASTER_KEY) -> dict[str, int]:
    """How many of ``requests`` chat calls each deployment served, by the
    ``x-litellm-model-id`` response header (``"-"`` when the header is absent)."""
    counts: dict[str, int] = {}
    conn = http.client.HTTPConnection(HOST, port, timeout=10.0)
    headers = {"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"}
    try:
        for _ in range(requests):
            conn.request("POST", "/v1/chat/completions", body=body, headers=headers)
            response = conn.getresponse()
            response.read()
            key = response.getheader("x-litellm-model-id") or "-"
            if response.status != 200:
                key = f"HTTP {response.status}"
            counts[key] = counts.get(key, 0) + 1
    finally:
        conn.close()
    return counts


def start_gateway(children: Children, workdir: Path, config: Path, workers: int, cmd_template: str,
                  timeout: float = 60.0, *, name: str = "gateway", source: Path = REPO,
                  env: dict[str, str] | None = None) -> Started:
    """Launch from ``source`` (the repo root, or a checkout of another revision with
    ``env`` putting it on ``PYTHONPATH``); the log is ``<workdir>/<name>.log``."""
    port = free_port()
    log = workdir / f"{name}.log"
    cmd = shlex.split(cmd_template.format(bin=VENV_BIN, host=HOST, port=port, workers=workers, config=config))
    env = dict(os.environ if env is None else env, SHIN_GATEWAY_CONFIG=str(config))
    launched = time.perf_counter()
    started = Started(children.start(cmd, env=env, cwd=str(source), log=log), port, log)
    started.first_200 = wait_for_200(started, "/health/liveliness", launched, timeout)
    return started
