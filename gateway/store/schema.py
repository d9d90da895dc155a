"""The tables of keys and spend, as numbered migrations both SQL backends apply in order.

The DDL sticks to types SQLite and PostgreSQL read alike (TEXT, BIGINT,
DOUBLE PRECISION, BOOLEAN), so one text serves both and a migration is
written once. JSON columns are TEXT everywhere: the gateway never queries
inside them, and a plain text column round-trips on either backend.
"""
from __future__ import annotations

import json
from dataclasses import fields

from ..types import KeyRecord, SpendRow

KEYS = "virtual_keys"
SPEND = "spend_rows"
VERSION = "schema_version"

# Named so PostgreSQL's unique-violation diagnostics say which field clashed.
TOKEN_CONSTRAINT = "virtual_keys_token_pkey"
ALIAS_CONSTRAINT = "virtual_keys_alias_unique"

MIGRATIONS: tuple[tuple[int, tuple[str, ...]], ...] = (
    (1, (
        f"""CREATE TABLE {KEYS} (
            token TEXT NOT NULL,
            key_name TEXT NOT NULL,
            key_alias TEXT,
            models TEXT NOT NULL DEFAULT '[]',
            max_budget DOUBLE PRECISION,
            budget_duration TEXT,
            budget_anchor DOUBLE PRECISION,
            spend DOUBLE PRECISION NOT NULL DEFAULT 0,
            spend_period DOUBLE PRECISION NOT NULL DEFAULT 0,
            rpm_limit BIGINT,
            tpm_limit BIGINT,
            max_parallel_requests BIGINT,
            model_rpm_limit TEXT NOT NULL DEFAULT '{{}}',
            model_tpm_limit TEXT NOT NULL DEFAULT '{{}}',
            metadata TEXT NOT NULL DEFAULT '{{}}',
            user_id TEXT,
            team_id TEXT,
            expires DOUBLE PRECISION,
            blocked BOOLEAN NOT NULL DEFAULT FALSE,
            created_at DOUBLE PRECISION NOT NULL,
            updated_at DOUBLE PRECISION NOT NULL,
            CONSTRAINT {TOKEN_CONSTRAINT} PRIMARY KEY (token),
            CONSTRAINT {ALIAS_CONSTRAINT} UNIQUE (key_alias)
        )""",
        f"CREATE INDEX {KEYS}_user_idx ON {KEYS} (user_id)",
        f"CREATE INDEX {KEYS}_team_idx ON {KEYS} (team_id)",
        f"""CREATE TABLE {SPEND} (
            id TEXT NOT NULL PRIMARY KEY,
            request_id TEXT NOT NULL,
            key_token TEXT,
            key_alias TEXT,
            user_id TEXT,
            team_id TEXT,
            model_group TEXT NOT NULL,
            deployment_id TEXT NOT NULL,
            prompt_tokens BIGINT NOT NULL,
            completion_tokens BIGINT NOT NULL,
            cost DOUBLE PRECISION NOT NULL,
            latency_ms BIGINT NOT NULL,
            status INTEGER NOT NULL,
            started_at DOUBLE PRECISION NOT NULL,
            spend_period DOUBLE PRECISION NOT NULL DEFAULT 0
        )""",
        f"CREATE INDEX {SPEND}_key_started_idx ON {SPEND} (key_token, started_at)",
        f"CREATE INDEX {SPEND}_started_idx ON {SPEND} (started_at)",
        f"CREATE INDEX {SPEND}_request_idx ON {SPEND} (request_id)",
    )),
)

LATEST = MIGRATIONS[-1][0]

VERSION_TABLE = f"CREATE TABLE IF NOT EXISTS {VERSION} (version INTEGER NOT NULL PRIMARY KEY, " \
                f"applied_at DOUBLE PRECISION NOT NULL)"

KEY_COLUMNS = tuple(f.name for f in fields(KeyRecord))
SPEND_COLUMNS = tuple(f.name for f in fields(SpendRow))
_JSON = {"models", "model_rpm_limit", "model_tpm_limit", "metadata"}


def key_value(name: str, value):
    """A KeyRecord field as the column stores it."""
    if name in _JSON:
        return json.dumps(list(value) if name == "models" else dict(value), separators=(",", ":"))
    if name == "blocked":
        return bool(value)
    return value


def key_values(record: KeyRecord) -> tuple:
    return tuple(key_value(name, getattr(record, name)) for name in KEY_COLUMNS)


def key_record(row) -> KeyRecord:
    values = dict(zip(KEY_COLUMNS, row, strict=True))
    values["models"] = tuple(json.loads(values["models"]))
    for name in ("model_rpm_limit", "model_tpm_limit", "metadata"):
        values[name] = json.loads(values[name])
    values["blocked"] = bool(values["blocked"])
    return KeyRecord(**values)


def spend_values(row: SpendRow) -> tuple:
    return tuple(getattr(row, name) for name in SPEND_COLUMNS)


def spend_row(row) -> SpendRow:
    return SpendRow(*row)
