"""Keys and spend in PostgreSQL: for several instances behind one database.

psycopg 3 waits on its sockets through gevent's patched select when gevent
has monkey-patched the process, so a slow query blocks only its greenlet.
The pool keeps connections across requests; it is opened without waiting,
so the gateway starts (and answers from its key cache, or 503) while the
server is down, and every failure to reach it is a StorageUnavailable whose
message names host, port and database, never the password.
"""
from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from functools import lru_cache
from typing import Iterator

import psycopg
from psycopg import conninfo
from psycopg_pool import ConnectionPool, PoolTimeout

from ..errors import StorageUnavailable
from .schema import ALIAS_CONSTRAINT, TOKEN_CONSTRAINT
from .sql import SqlDatabase, StaleConnection, duplicate

MIGRATION_LOCK = 0x5348494E47570001      # pg_advisory_xact_lock key: "SHINGW" + 1
_DOWN_WAIT = 0.3    # s to wait for a pooled connection while the server is known to be unreachable
_DUPLICATE_PARAM = {TOKEN_CONSTRAINT: "key", ALIAS_CONSTRAINT: "key_alias"}


class PostgresDatabase(SqlDatabase):
    backend = "postgresql"
    day_of_started_at = "to_char(to_timestamp(started_at) AT TIME ZONE 'UTC', 'YYYY-MM-DD')"

    def __init__(self, url: str, log: logging.Logger, *, connect_timeout: float = 2.0,
                 statement_timeout: float = 5.0, pool_timeout: float = 2.0, max_size: int = 10):
        params = _params(url)
        # For messages: where the database is, without the credentials.
        self.where = f"{params.get('host') or 'localhost'}:{params.get('port') or 5432}/" \
                     f"{params.get('dbname') or params.get('user') or ''}"
        self._password = params.get("password")
        self._log = log
        self._pool_timeout = pool_timeout
        self._down_since: float | None = None
        self._down_reason = ""
        params.setdefault("connect_timeout", str(max(1, round(connect_timeout))))
        params.setdefault("application_name", "shin-gateway")
        params["options"] = f"{params.get('options', '')} -c statement_timeout={int(statement_timeout * 1000)}".strip()
        self._conninfo = conninfo.make_conninfo("", **params)
        # The pool warns at every reconnection attempt; we log each outage once, and its end.
        logging.getLogger("psycopg.pool").setLevel(logging.ERROR)
        # reconnect_timeout: the pool gives up a failing reconnection after 5 s and
        # starts afresh on the next request, so its backoff never grows past ~2 s.
        self._pool = ConnectionPool(self._conninfo, min_size=1, max_size=max_size,
                                    open=True, timeout=pool_timeout, reconnect_timeout=5.0,
                                    kwargs={"autocommit": True}, name="shin-gateway")

    @contextmanager
    def _reading(self) -> Iterator["_Cursor"]:
        with self._connection() as connection:
            yield _Cursor(connection.cursor())

    @contextmanager
    def _writing(self, *, migration: bool = False) -> Iterator["_Cursor"]:
        with self._connection() as connection:
            try:
                with connection.transaction():
                    cursor = _Cursor(connection.cursor())
                    if migration:
                        cursor.execute("SELECT pg_advisory_xact_lock(?)", (MIGRATION_LOCK,))
                    yield cursor
            except psycopg.errors.UniqueViolation as exc:
                param = _DUPLICATE_PARAM.get(exc.diag.constraint_name or "")
                if param is None:
                    raise
                raise duplicate(param) from None

    @contextmanager
    def _connection(self) -> Iterator[psycopg.Connection]:
        wait = _DOWN_WAIT if self._down_since is not None else self._pool_timeout
        connection = None
        try:
            with self._pool.connection(timeout=wait) as connection:
                yield connection
        except PoolTimeout as exc:
            raise self._unavailable(exc, "no connection") from None
        except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
            if connection is not None and connection.broken:
                self._pool.check()      # the other idle connections died with this one: drop them all now
                raise self._unavailable(exc, "connection lost", stale=self._down_since is None) from None
            raise self._unavailable(exc, "query failed") from None
        self._recovered()

    def _unavailable(self, exc: Exception, what: str, *, stale: bool = False) -> StorageUnavailable:
        """The error to raise; the first one of an outage is logged, with the reason it is kept for."""
        if what == "query failed":
            return StorageUnavailable(f"The database (PostgreSQL at {self.where}) failed: {self._scrub(exc)}")
        if self._down_since is None:
            if isinstance(exc, PoolTimeout):
                exc = self._why_no_connection(exc)
            self._down_since, self._down_reason = time.monotonic(), self._scrub(exc)
            self._log.warning("PostgreSQL at %s is unreachable (%s): %s", self.where, what, self._down_reason,
                              extra={"event": "database_down"})
        error = StaleConnection if stale else StorageUnavailable
        return error(f"The database (PostgreSQL at {self.where}) is unavailable: {self._down_reason}")

    def _scrub(self, exc: Exception) -> str:
        text = str(exc).strip()
        detail = text.splitlines()[0] if text else type(exc).__name__
        return detail.replace(self._password, "***") if self._password else detail

    def _why_no_connection(self, timeout: PoolTimeout) -> Exception:
        """The pool only says it timed out: one direct attempt, when an outage begins, tells why."""
        try:
            psycopg.connect(self._conninfo).close()
        except psycopg.Error as exc:
            return exc
        return timeout      # reachable after all: the pool was busy

    def _recovered(self) -> None:
        if self._down_since is not None:
            self._log.info("PostgreSQL at %s is reachable again after %.1f s", self.where,
                           time.monotonic() - self._down_since, extra={"event": "database_back"})
            self._down_since = None

    def close(self) -> None:
        self._pool.close(timeout=5.0)


class _Cursor:
    """A psycopg cursor that takes the `?` placeholders the common SQL is written with."""

    def __init__(self, cursor: psycopg.Cursor):
        self._cursor = cursor

    def execute(self, sql: str, params=()) -> None:
        self._cursor.execute(_dialect(sql), params or None)

    def executemany(self, sql: str, params) -> None:
        self._cursor.executemany(_dialect(sql), params)

    def fetchone(self):
        return self._cursor.fetchone()

    def fetchall(self):
        return self._cursor.fetchall()

    @property
    def rowcount(self) -> int:
        return self._cursor.rowcount


@lru_cache(maxsize=256)
def _dialect(sql: str) -> str:
    return sql.replace("?", "%s")


def _params(url: str) -> dict:
    try:
        return conninfo.conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        # psycopg's message may quote the URL, password and all.
        raise ValueError("general_settings.database_url is not a valid PostgreSQL URL "
                         "(postgresql://user:password@host:port/database)") from None
