"""A redis-server of a test's own, with a password, which the test may stop and start again.

Tests of the Redis backend use it wherever they take Redis away mid-test; the
machine's shared Redis on 6379 is never stopped.
"""
from __future__ import annotations

import subprocess
import time

import redis

from .gateway_process import free_port

PASSWORD = "redis-s3cret-pw-7q8r"


class RedisServer:
    """A private redis-server on a free loopback port; `url` carries the password."""

    def __init__(self, folder):
        self.port = free_port()
        self.folder = folder
        self.url = f"redis://:{PASSWORD}@127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen | None = None

    def start(self) -> "RedisServer":
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--daemonize", "no", "--requirepass", PASSWORD, "--dir", str(self.folder)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with redis.Redis.from_url(self.url, socket_timeout=0.5) as connection:
                    if connection.ping():
                        return self
            except redis.RedisError:
                time.sleep(0.05)
        raise RuntimeError(f"redis-server on port {self.port} did not come up")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)
