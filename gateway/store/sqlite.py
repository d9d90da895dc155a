"""Keys and spend in a SQLite file: the default, with nothing to run beside the gateway.

One connection per Database object, so one per gunicorn worker, used by all
of the worker's greenlets. sqlite3 calls never yield to gevent, so each
method runs as one uninterrupted sequence of them and no two greenlets
interleave inside a transaction; the lock only matters to real threads.
Between workers, WAL lets readers go on while one writer holds
BEGIN IMMEDIATE, and busy_timeout makes the others wait instead of failing.
"""
from __future__ import annotations

import logging
import sqlite3
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from ..errors import StorageUnavailable
from .sql import SqlDatabase

BUSY_TIMEOUT_MS = 5000


CACHE_KIB = 512
CHECKPOINT_EVERY = 10.0       # seconds between WAL truncations by one worker


class SqliteDatabase(SqlDatabase):
    backend = "sqlite"
    day_of_started_at = "strftime('%Y-%m-%d', started_at, 'unixepoch')"

    def __init__(self, path: str | Path, log: logging.Logger, checkpoint_every: float = CHECKPOINT_EVERY):
        self.path = Path(path)
        self.where = str(self.path)     # for messages
        self._log = log
        self._lock = threading.Lock()
        self._checkpointed = time.monotonic()
        self._checkpoint_every = checkpoint_every
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageUnavailable(f"Cannot create the directory {self.path.parent} for the SQLite "
                                     f"database: {exc.strerror or exc}") from None
        try:
            self._conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None,
                                         check_same_thread=False)
            self._conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            mode = self._wal()
            self._conn.execute("PRAGMA synchronous = NORMAL")
            # Point lookups and appends need few pages; SQLite's default 2 MB cache per worker is RSS.
            self._conn.execute(f"PRAGMA cache_size = -{CACHE_KIB}")
        except sqlite3.Error as exc:
            raise StorageUnavailable(f"Cannot open the SQLite database {self.path}: {exc}") from None
        if mode.lower() != "wal":
            log.warning("SQLite database %s stays in %s journal mode (WAL unsupported here): "
                        "workers will wait for each other's reads", self.path, mode,
                        extra={"event": "sqlite_journal_mode"})

    def _wal(self) -> str:
        """Switch to WAL; several workers opening a new file at once may find it locked for a moment.

        The busy timeout does not cover this switch, so it is retried here.
        """
        deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
        while True:
            try:
                return self._conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            except sqlite3.OperationalError as exc:
                if exc.sqlite_errorcode != sqlite3.SQLITE_BUSY or time.monotonic() > deadline:
                    raise
                time.sleep(0.01)

    @contextmanager
    def _reading(self) -> Iterator[sqlite3.Cursor]:
        with self._lock, self._translated():
            yield self._conn.cursor()

    @contextmanager
    def _writing(self, *, migration: bool = False) -> Iterator[sqlite3.Cursor]:
        """One transaction holding the file's write lock from its first statement.

        BEGIN IMMEDIATE (not a deferred BEGIN that upgrades later) is what
        makes concurrent migrate() calls from several workers wait their turn.
        """
        with self._lock, self._translated():
            cursor = self._conn.cursor()
            cursor.execute("BEGIN IMMEDIATE")
            try:
                yield cursor
            except BaseException:
                self._rollback()
                raise
            cursor.execute("COMMIT")

    def _rollback(self) -> None:
        try:
            if self._conn.in_transaction:
                self._conn.execute("ROLLBACK")
        except sqlite3.Error:
            pass    # the error that made us roll back is the one worth raising

    @contextmanager
    def _translated(self) -> Iterator[None]:
        try:
            yield
        except sqlite3.Error as exc:
            if not _unavailable(exc):
                raise
            raise StorageUnavailable(f"The SQLite database {self.path} is unavailable: {exc}") from None

    def write_spend(self, rows) -> None:
        super().write_spend(rows)
        now = time.monotonic()
        if now - self._checkpointed >= self._checkpoint_every:
            self._checkpointed = now
            self._checkpoint()

    def _checkpoint(self) -> None:
        """Copy the WAL into the database and empty it.

        SQLite's automatic checkpoints never get to restart the WAL while
        several workers keep writing, so under steady load it grows without
        end (70 MB a minute at 2,000 req/s), and each connection's memory with
        it. Readers hold the WAL for microseconds here, so the wait is short.
        """
        try:
            with self._lock:
                self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        except sqlite3.Error as exc:
            self._log.info("SQLite checkpoint of %s skipped: %s", self.path, exc,
                           extra={"event": "sqlite_checkpoint_skipped"})

    def close(self) -> None:
        with self._lock:
            self._conn.close()


def _unavailable(exc: sqlite3.Error) -> bool:
    """Locked, unreadable or corrupt (the file's fault), as opposed to a mistake in our SQL."""
    return isinstance(exc, (sqlite3.OperationalError, sqlite3.InternalError)) or type(exc) is sqlite3.DatabaseError
