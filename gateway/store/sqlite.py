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
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from ..errors import StorageUnavailable
from .sql import SqlDatabase

BUSY_TIMEOUT_MS = 5000


class SqliteDatabase(SqlDatabase):
    backend = "sqlite"
    day_of_started_at = "strftime('%Y-%m-%d', started_at, 'unixepoch')"

    def __init__(self, path: str | Path, log: logging.Logger):
        self.path = Path(path)
        self.where = str(self.path)     # for messages
        self._log = log
        self._lock = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageUnavailable(f"Cannot create the directory {self.path.parent} for the SQLite "
                                     f"database: {exc.strerror or exc}") from None
        try:
            self._conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None,
                                         check_same_thread=False)
            self._conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            mode = self._conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            self._conn.execute("PRAGMA synchronous = NORMAL")
        except sqlite3.Error as exc:
            raise StorageUnavailable(f"Cannot open the SQLite database {self.path}: {exc}") from None
        if mode.lower() != "wal":
            log.warning("SQLite database %s stays in %s journal mode (WAL unsupported here): "
                        "workers will wait for each other's reads", self.path, mode)

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

    def close(self) -> None:
        with self._lock:
            self._conn.close()


def _unavailable(exc: sqlite3.Error) -> bool:
    """Locked, unreadable or corrupt (the file's fault), as opposed to a mistake in our SQL."""
    return isinstance(exc, (sqlite3.OperationalError, sqlite3.InternalError)) or type(exc) is sqlite3.DatabaseError
