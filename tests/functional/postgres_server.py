"""PostgreSQL for tests: a schema of the test's own on the machine's server, or a private cluster.

`isolated_postgres_url()` gives a test its own freshly created schema on the
machine's PostgreSQL (127.0.0.1:5432, database `test`) and drops it
afterwards: the URL selects the schema through libpq's `options`
(search_path), so every table the gateway creates lands there.

`PostgresServer` is a cluster of the test's own (initdb + postgres, run as
the `postgres` OS user, trust auth, a free loopback port) for tests that stop
and start the database; the machine's server on 5432 is never stopped.
"""
from __future__ import annotations

import glob
import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator
from urllib.parse import quote

import psycopg

from .gateway_process import free_port

MACHINE_URL = os.environ.get("SHIN_TEST_POSTGRES_URL", "postgresql://root@127.0.0.1:5432/test")
# Trust auth ignores it; it is in the URL so tests can check that no message or log ever shows it.
PASSWORD = "pg-s3cret-pw-4k9z"


@contextmanager
def isolated_postgres_url(base: str = MACHINE_URL) -> Iterator[str]:
    """A URL whose tables live in a new, empty schema, dropped with everything in it afterwards."""
    schema = f"t_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(base, autocommit=True, connect_timeout=5) as connection:
        connection.execute(f"CREATE SCHEMA {schema}")
    try:
        yield f"{base}{'&' if '?' in base else '?'}options={quote(f'-csearch_path={schema}')}"
    finally:
        with psycopg.connect(base, autocommit=True, connect_timeout=5) as connection:
            connection.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


def _bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"),
                   key=lambda path: int(Path(path).parts[-3]) if Path(path).parts[-3].isdigit() else 0)
    if not found:
        raise RuntimeError(f"{name} not found under /usr/lib/postgresql/*/bin")
    return found[-1]


class PostgresServer:
    """A private PostgreSQL cluster on a free loopback port; `url` connects as `postgres` with a password."""

    def __init__(self):
        self.port = free_port()
        # Not under pytest's tmp_path: its parents are root's alone, and the server runs as postgres.
        self.folder = Path(tempfile.mkdtemp(prefix="shin-pg-"))
        self.data = self.folder / "data"
        self.url = f"postgresql://postgres:{PASSWORD}@127.0.0.1:{self.port}/postgres"
        self.process: subprocess.Popen | None = None
        shutil.chown(self.folder, "postgres", "postgres")

    def start(self) -> "PostgresServer":
        if not self.data.exists():
            subprocess.run(["runuser", "-u", "postgres", "--", _bin("initdb"), "-D", str(self.data), "-A", "trust",
                            "-U", "postgres", "-E", "UTF8", "--locale=C", "--no-sync"],
                           check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        command = ["runuser", "-u", "postgres", "--", _bin("postgres"), "-D", str(self.data),
                   "-p", str(self.port), "-c", "listen_addresses=127.0.0.1",
                   "-c", f"unix_socket_directories={self.folder}", "-c", "fsync=off",
                   "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
                   "-c", "max_connections=60"]
        with open(self.folder / "server.log", "ab") as log:
            self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"postgres exited: {(self.folder / 'server.log').read_text()[-2000:]}")
            try:
                with psycopg.connect(self.url, connect_timeout=1):
                    return self
            except psycopg.OperationalError:
                time.sleep(0.05)
        raise RuntimeError(f"postgres on port {self.port} did not come up")

    def stop(self) -> None:
        """Fast shutdown: open connections are cut, as when a real server goes away."""
        if self.process is None or self.process.poll() is not None:
            return
        try:
            postmaster = int((self.data / "postmaster.pid").read_text().split()[0])
            os.kill(postmaster, signal.SIGINT)     # runuser would not pass the signal on
        except (OSError, ValueError, IndexError):
            self.process.terminate()
        self.process.wait(timeout=30)

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.folder, ignore_errors=True)

    def __enter__(self) -> "PostgresServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()
