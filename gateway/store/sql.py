"""The queries both SQL backends run: keys, spend rows, migrations.

A backend supplies cursors (`_reading`, `_writing`: one transaction, with
errors already turned into StorageUnavailable) and its few dialect strings;
everything a caller can observe is decided here once, so SQLite and
PostgreSQL cannot drift apart. SQL is written with `?` placeholders.
"""
from __future__ import annotations

import functools
import time
from contextlib import AbstractContextManager
from typing import Mapping, Sequence

from ..errors import DuplicateKey, StorageUnavailable
from ..types import KeyRecord, SpendRow
from . import schema
from .schema import KEY_COLUMNS, KEYS, SPEND, SPEND_COLUMNS, VERSION

_KEY_SELECT = f"SELECT {', '.join(KEY_COLUMNS)} FROM {KEYS}"
_SPEND_SELECT = f"SELECT {', '.join(SPEND_COLUMNS)} FROM {SPEND}"
_UPDATABLE = frozenset(KEY_COLUMNS) - {"token"}
_CHUNK = 500        # ids per IN (...): well under either backend's parameter limit


class StaleConnection(StorageUnavailable):
    """A pooled connection the server dropped (it restarted, say): the call is tried once more."""


def _once_more_if_stale(method):
    """Nothing of the call reached the database on a dropped connection, so one retry is safe.

    (Were the connection lost in the middle of COMMIT, a retried insert_key
    would answer DuplicateKey; spend writes are idempotent by row id.)
    """
    @functools.wraps(method)
    def call(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except StaleConnection:
            return method(self, *args, **kwargs)
    return call


class SqlDatabase:
    backend: str
    day_of_started_at: str      # SQL giving the UTC day ("YYYY-MM-DD") of `started_at`

    def _reading(self) -> AbstractContextManager:
        raise NotImplementedError

    def _writing(self, *, migration: bool = False) -> AbstractContextManager:
        raise NotImplementedError

    # --- schema --------------------------------------------------------------------------

    @_once_more_if_stale
    def migrate(self) -> int:
        """Apply the migrations this database lacks, under the backend's write lock.

        Every gunicorn worker calls this at start-up; the lock makes the others
        wait and then find nothing left to do.
        """
        with self._writing(migration=True) as cur:
            cur.execute(schema.VERSION_TABLE)
            cur.execute(f"SELECT MAX(version) FROM {VERSION}")
            current = cur.fetchone()[0] or 0
            for number, statements in schema.MIGRATIONS:
                if number > current:
                    for statement in statements:
                        cur.execute(statement)
                    cur.execute(f"INSERT INTO {VERSION} (version, applied_at) VALUES (?, ?)",
                                (number, time.time()))
                    current = number
            return current

    @_once_more_if_stale
    def ping(self) -> None:
        with self._reading() as cur:
            cur.execute("SELECT 1")
            cur.fetchone()

    # --- keys ----------------------------------------------------------------------------

    @_once_more_if_stale
    def insert_key(self, record: KeyRecord) -> None:
        with self._writing() as cur:
            _refuse_taken(cur, record.token, record.key_alias, exclude=None)
            cur.execute(f"INSERT INTO {KEYS} ({', '.join(KEY_COLUMNS)}) "
                        f"VALUES ({', '.join('?' * len(KEY_COLUMNS))})", schema.key_values(record))

    @_once_more_if_stale
    def get_key(self, token: str) -> KeyRecord | None:
        with self._reading() as cur:
            cur.execute(f"{_KEY_SELECT} WHERE token = ?", (token,))
            row = cur.fetchone()
        return schema.key_record(row) if row else None

    @_once_more_if_stale
    def get_key_by_alias(self, alias: str) -> KeyRecord | None:
        with self._reading() as cur:
            cur.execute(f"{_KEY_SELECT} WHERE key_alias = ?", (alias,))
            row = cur.fetchone()
        return schema.key_record(row) if row else None

    @_once_more_if_stale
    def update_key(self, token: str, changes: Mapping) -> KeyRecord | None:
        unknown = set(changes) - _UPDATABLE
        if unknown:
            raise ValueError(f"not updatable key fields: {', '.join(sorted(unknown))}")
        changes = {"updated_at": time.time(), **changes}
        names = sorted(changes)
        with self._writing() as cur:
            if changes.get("key_alias") is not None:
                _refuse_taken(cur, None, changes["key_alias"], exclude=token)
            cur.execute(f"UPDATE {KEYS} SET {', '.join(f'{name} = ?' for name in names)} WHERE token = ?",
                        (*(schema.key_value(name, changes[name]) for name in names), token))
            if cur.rowcount == 0:
                return None
            cur.execute(f"{_KEY_SELECT} WHERE token = ?", (token,))
            return schema.key_record(cur.fetchone())

    @_once_more_if_stale
    def replace_token(self, token: str, new_token: str, new_key_name: str) -> KeyRecord | None:
        """Regenerate: the key keeps its settings and spend, and its spend rows follow it."""
        with self._writing() as cur:
            cur.execute(f"SELECT 1 FROM {KEYS} WHERE token = ?", (token,))
            if cur.fetchone() is None:
                return None
            if new_token != token:
                _refuse_taken(cur, new_token, None, exclude=None)
            cur.execute(f"UPDATE {KEYS} SET token = ?, key_name = ?, updated_at = ? WHERE token = ?",
                        (new_token, new_key_name, time.time(), token))
            cur.execute(f"UPDATE {SPEND} SET key_token = ? WHERE key_token = ?", (new_token, token))
            cur.execute(f"{_KEY_SELECT} WHERE token = ?", (new_token,))
            return schema.key_record(cur.fetchone())

    @_once_more_if_stale
    def delete_keys(self, tokens: Sequence[str]) -> list[str]:
        tokens = list(dict.fromkeys(tokens))
        with self._writing() as cur:
            present = _existing(cur, KEYS, "token", tokens)
            for chunk in _chunks([t for t in tokens if t in present]):
                cur.execute(f"DELETE FROM {KEYS} WHERE token IN ({_marks(chunk)})", chunk)
        return [t for t in tokens if t in present]

    @_once_more_if_stale
    def list_keys(self, *, offset: int, limit: int, user_id=None, team_id=None,
                  key_alias=None) -> tuple[list[KeyRecord], int]:
        where, params = _where(user_id=user_id, team_id=team_id, key_alias=key_alias)
        with self._reading() as cur:
            cur.execute(f"SELECT COUNT(*) FROM {KEYS}{where}", params)
            total = int(cur.fetchone()[0])
            cur.execute(f"{_KEY_SELECT}{where} ORDER BY created_at DESC, token LIMIT ? OFFSET ?",
                        (*params, limit, offset))
            rows = cur.fetchall()
        return [schema.key_record(row) for row in rows], total

    # --- spend ---------------------------------------------------------------------------

    @_once_more_if_stale
    def write_spend(self, rows: Sequence[SpendRow]) -> None:
        """Insert new rows and add their cost to their keys, once, however often a batch is retried."""
        first: dict[str, SpendRow] = {}
        for row in rows:
            first.setdefault(row.id, row)
        fresh = list(first.values())
        if not fresh:
            return
        with self._writing() as cur:
            present = _existing(cur, SPEND, "id", [row.id for row in fresh])
            fresh = [row for row in fresh if row.id not in present]
            if not fresh:
                return
            cur.executemany(f"INSERT INTO {SPEND} ({', '.join(SPEND_COLUMNS)}) "
                            f"VALUES ({', '.join('?' * len(SPEND_COLUMNS))}) ON CONFLICT (id) DO NOTHING",
                            [schema.spend_values(row) for row in fresh])
            changes = _key_spend(fresh)
            if changes:
                cur.executemany(
                    f"UPDATE {KEYS} SET "
                    f"spend = CASE WHEN spend_period = ? THEN spend + ? "
                    f"WHEN spend_period < ? THEN ? ELSE spend END, "
                    f"spend_period = CASE WHEN spend_period < ? THEN ? ELSE spend_period END "
                    f"WHERE token = ?",
                    [(period, cost, period, cost, period, period, token)
                     for token, (period, cost) in changes.items()])

    @_once_more_if_stale
    def spend_logs(self, *, offset: int, limit: int, key_token=None, key_alias=None, user_id=None,
                   team_id=None, model_group=None, request_id=None, start=None,
                   end=None) -> tuple[list[SpendRow], int]:
        where, params = _where(key_token=key_token, key_alias=key_alias, user_id=user_id, team_id=team_id,
                               model_group=model_group, request_id=request_id, start=start, end=end)
        with self._reading() as cur:
            cur.execute(f"SELECT COUNT(*) FROM {SPEND}{where}", params)
            total = int(cur.fetchone()[0])
            cur.execute(f"{_SPEND_SELECT}{where} ORDER BY started_at DESC, id DESC LIMIT ? OFFSET ?",
                        (*params, limit, offset))
            rows = cur.fetchall()
        return [schema.spend_row(row) for row in rows], total

    @_once_more_if_stale
    def global_spend(self, *, start=None, end=None, key_token=None) -> dict:
        where, params = _where(key_token=key_token, start=start, end=end)
        with self._reading() as cur:
            cur.execute(f"SELECT SUM(cost), COUNT(*), SUM(prompt_tokens), SUM(completion_tokens) "
                        f"FROM {SPEND}{where}", params)
            spend, requests, prompt, completion = cur.fetchone()
        return {"spend": float(spend or 0.0), "requests": int(requests), "prompt_tokens": int(prompt or 0),
                "completion_tokens": int(completion or 0)}

    @_once_more_if_stale
    def spend_report(self, *, start: float, end: float, group_by: str) -> list[dict]:
        if group_by not in ("model", "key"):
            raise ValueError(f"group_by must be 'model' or 'key', not {group_by!r}")
        group, alias = ("model_group", "NULL") if group_by == "model" else ("key_token", "MAX(key_alias)")
        where, params = _where(start=start, end=end)
        with self._reading() as cur:
            cur.execute(f"SELECT {self.day_of_started_at}, {group}, {alias}, SUM(cost), COUNT(*), "
                        f"SUM(prompt_tokens), SUM(completion_tokens) FROM {SPEND}{where} GROUP BY 1, 2",
                        params)
            rows = cur.fetchall()
        report = [{"day": day, "group": name, "key_alias": key_alias, "spend": float(spend),
                   "requests": int(requests), "prompt_tokens": int(prompt), "completion_tokens": int(completion)}
                  for day, name, key_alias, spend, requests, prompt, completion in rows]
        # Sorted here: the two backends order NULLs (the master key's rows) differently.
        return sorted(report, key=lambda item: (item["day"], item["group"] is not None, item["group"] or ""))


def _refuse_taken(cur, token: str | None, alias: str | None, *, exclude: str | None) -> None:
    if token is not None:
        cur.execute(f"SELECT 1 FROM {KEYS} WHERE token = ?", (token,))
        if cur.fetchone():
            raise duplicate("key")
    if alias is not None:
        cur.execute(f"SELECT token FROM {KEYS} WHERE key_alias = ?", (alias,))
        row = cur.fetchone()
        if row and row[0] != exclude:
            raise duplicate("key_alias")


def duplicate(param: str) -> DuplicateKey:
    what = "key" if param == "key" else "key_alias"
    return DuplicateKey(f"Another virtual key already has this {what}.", param=param)


def _key_spend(rows: Sequence[SpendRow]) -> dict[str, tuple[float, float]]:
    """Per key: its newest period in the batch and that period's cost.

    Applying rows one by one (same period adds, newer replaces, older is
    ignored) ends in the same state as applying this one pair, whatever the order.
    """
    changes: dict[str, tuple[float, float]] = {}
    for row in rows:
        if row.key_token is None:
            continue
        period, cost = changes.get(row.key_token, (row.spend_period, 0.0))
        if row.spend_period > period:
            period, cost = row.spend_period, 0.0
        if row.spend_period == period:
            cost += row.cost
        changes[row.key_token] = (period, cost)
    return changes


def _existing(cur, table: str, column: str, values: list[str]) -> set[str]:
    found: set[str] = set()
    for chunk in _chunks(values):
        cur.execute(f"SELECT {column} FROM {table} WHERE {column} IN ({_marks(chunk)})", chunk)
        found.update(row[0] for row in cur.fetchall())
    return found


def _where(*, start=None, end=None, **equal) -> tuple[str, tuple]:
    """A WHERE clause of equalities on the given columns, and `start <= started_at < end`."""
    clauses = [f"{name} = ?" for name, value in equal.items() if value is not None]
    params = [value for value in equal.values() if value is not None]
    if start is not None:
        clauses.append("started_at >= ?")
        params.append(float(start))
    if end is not None:
        clauses.append("started_at < ?")
        params.append(float(end))
    return (" WHERE " + " AND ".join(clauses) if clauses else ""), tuple(params)


def _chunks(values: list) -> list[list]:
    """Lists of exactly _CHUNK values (the last padded with repeats, which `IN` ignores).

    One statement text for every batch size: the driver caches prepared
    statements by text, and a differently sized `IN (…)` per batch would fill
    its cache with hundreds of near-copies (megabytes per worker).
    """
    chunks = [values[i:i + _CHUNK] for i in range(0, len(values), _CHUNK)]
    if chunks and len(chunks[-1]) < _CHUNK:
        chunks[-1] = chunks[-1] + [chunks[-1][-1]] * (_CHUNK - len(chunks[-1]))
    return chunks


def _marks(values: list) -> str:
    return ", ".join("?" * len(values))
