"""Start the real gateway (gunicorn + gevent workers) on a free loopback port for a test."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class GatewayProcess:
    started: list["GatewayProcess"] = []    # every gateway of this test session, for the log audit

    def __init__(self, config_path: Path, *, workers: int = 2, env: dict | None = None):
        self.config_path = Path(config_path)
        self.workers = workers
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = self.config_path.with_suffix(".log")
        self.extra_env = env or {}
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 20.0) -> "GatewayProcess":
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("SHIN_GATEWAY_") and k != "PROMETHEUS_MULTIPROC_DIR"}
        env.update({"SHIN_GATEWAY_CONFIG": str(self.config_path), "PYTHONUNBUFFERED": "1"}, **self.extra_env)
        self._log = open(self.log_path, "wb")
        GatewayProcess.started.append(self)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", "config/gunicorn.conf.py", "--bind",
             f"127.0.0.1:{self.port}", "--workers", str(self.workers), "wsgi:app"],
            cwd=ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gateway exited with {self.proc.returncode}:\n{self.logs()}")
            try:
                if requests.get(f"{self.url}/health/liveliness", timeout=1).status_code == 200:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"gateway did not come up in {timeout}s:\n{self.logs()}")

    def worker_pids(self) -> list[int]:
        out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(self.proc.pid)], capture_output=True, text=True)
        return [int(p) for p in out.stdout.split()]

    def reload(self) -> None:
        os.kill(self.proc.pid, signal.SIGHUP)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        if getattr(self, "_log", None):
            self._log.close()

    def logs(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""
