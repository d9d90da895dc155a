"""The narrow interface to where keys and spend rows live, and the URL that picks the backend.

The service, the keys API and the spend writer see only `Database`; which
SQL engine is behind it is decided once, here, from `database_url`.
"""
from __future__ import annotations

import logging
from typing import Mapping, Protocol, Sequence

from ..types import KeyRecord, SpendRow


class Database(Protocol):
    backend: str                                   # "sqlite" | "postgresql"
    where: str                                     # the file, or host:port/database: for messages, no password

    def migrate(self) -> int: ...                  # idempotent, safe from N workers at once; the schema version
    def ping(self) -> None: ...                    # StorageUnavailable when unreachable
    def insert_key(self, record: KeyRecord) -> None: ...
    def get_key(self, token: str) -> KeyRecord | None: ...
    def get_key_by_alias(self, alias: str) -> KeyRecord | None: ...
    def update_key(self, token: str, changes: Mapping) -> KeyRecord | None: ...
    def replace_token(self, token: str, new_token: str, new_key_name: str) -> KeyRecord | None: ...
    def delete_keys(self, tokens: Sequence[str]) -> list[str]: ...
    def list_keys(self, *, offset: int, limit: int, user_id=None, team_id=None,
                  key_alias=None) -> tuple[list[KeyRecord], int]: ...
    def write_spend(self, rows: Sequence[SpendRow]) -> None: ...
    def spend_logs(self, *, offset: int, limit: int, key_token=None, key_alias=None, user_id=None,
                   team_id=None, model_group=None, request_id=None, start=None,
                   end=None) -> tuple[list[SpendRow], int]: ...
    def global_spend(self, *, start=None, end=None, key_token=None) -> dict: ...
    def spend_report(self, *, start: float, end: float, group_by: str) -> list[dict]: ...
    def close(self) -> None: ...


def open_database(url: str, log: logging.Logger) -> Database:
    """The backend for `url`: sqlite:///path or postgresql://… (imported only when used).

    Nothing is created here: `migrate()` makes the tables.
    """
    if url.startswith("sqlite:///"):
        from .sqlite import SqliteDatabase
        path = url[len("sqlite:///"):]      # sqlite:////abs/file.db, or relative to the working directory
        if not path:
            raise ValueError("general_settings.database_url: sqlite:/// needs a file path")
        return SqliteDatabase(path, log)
    if url.startswith(("postgresql://", "postgres://")):
        from .postgres import PostgresDatabase
        return PostgresDatabase(url, log)
    scheme = repr(url.split("://", 1)[0]) if "://" in url else "without a scheme"   # never echo a password
    raise ValueError(f"general_settings.database_url: unsupported database URL {scheme}: use "
                     f"sqlite:////absolute/path.db or postgresql://user:password@host:port/database")

