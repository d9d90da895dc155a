"""The keys and spend admin API behind the views: what `/key/*`, `/spend/logs` and `/global/spend*` do.

Requests arrive validated (api/admin_schemas.py); answers use the peer's (LiteLLM
proxy's) names, so admin scripts written for it keep working. A key's plaintext
exists only while `generate`/`regenerate` answer: the database holds its SHA-256
(`token`), and every change tells this worker's key cache to forget the key, so
the change is seen here at once (other workers within their cache TTL).
"""
from __future__ import annotations

import math
import secrets
import time
from datetime import date, datetime, timedelta, timezone
from typing import Callable, Mapping

from .durations import budget_period, parse_duration
from .errors import DuplicateKey, KeyNotFound
from .keys import token_of
from .types import KeyRecord, SpendRow

PLAIN_FIELDS = ("key_alias", "max_budget", "rpm_limit", "tpm_limit", "max_parallel_requests",
                "model_rpm_limit", "model_tpm_limit", "metadata", "user_id", "team_id", "blocked")
LOGS_WITHOUT_PAGE = 1000      # `/spend/logs` without `page`: the newest rows, as a plain list (the peer's shape)


def new_plaintext() -> str:
    return "sk-" + secrets.token_urlsafe(32)


def key_name(plaintext: str) -> str:
    """Enough to recognise a key in a list, never enough to use it."""
    return "sk-..." + plaintext[-4:]


def token_for(key: str) -> str:
    """A key named by its plaintext (`sk-…`) or by its token: tokens never start with "sk-"."""
    return token_of(key) if key.startswith("sk-") else key.lower()


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_when(text: str, *, end: bool = False) -> float:
    """`YYYY-MM-DD` (UTC midnight; as an end, the day is included) or an ISO 8601 time (UTC unless zoned)."""
    try:
        day = date.fromisoformat(text)
    except (TypeError, ValueError):
        day = None
    if day is not None:
        moment = datetime(day.year, day.month, day.day, tzinfo=timezone.utc)
        return (moment + timedelta(days=1) if end else moment).timestamp()
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))   # ValueError on anything else
    return (moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)).timestamp()


class KeyAdmin:
    def __init__(self, database, forget: Callable[[str], None], clock=time.time):
        self._db = database
        self._forget = forget
        self._clock = clock

    def generate(self, data: Mapping) -> dict:
        now = self._clock()
        plaintext = data.get("key") or new_plaintext()
        changes = self._changes(data, None, now)
        record = KeyRecord(token=token_of(plaintext), key_name=key_name(plaintext), created_at=now,
                           updated_at=now, **changes)
        self._db.insert_key(record)        # DuplicateKey naming `key` or `key_alias` on a clash
        return {"key": plaintext, **self._view(record, now)}

    def update(self, data: Mapping) -> dict:
        token, old = self._find(data["key"])
        now = self._clock()
        record = self._db.update_key(token, {**self._changes(data, old, now), "updated_at": now})
        return self._changed(token, record, now)

    def delete(self, keys=None, key_aliases=None) -> dict:
        named = [(key, token_for(key)) for key in keys or ()]
        for alias in key_aliases or ():
            record = self._db.get_key_by_alias(alias)
            if record is not None:
                named.append((alias, record.token))
        deleted = set(self._db.delete_keys([token for _, token in named])) if named else set()
        for token in deleted:
            self._forget(token)
        if not deleted:
            raise KeyNotFound("None of the keys to delete exists.", param="keys" if keys else "key_aliases")
        return {"deleted_keys": [given for given, token in named if token in deleted]}

    def info(self, key: str) -> dict:
        token, record = self._find(key)
        return {"key": token, "info": self._view(record, self._clock())}

    def list(self, page: int = 1, size: int = 10, user_id=None, team_id=None, key_alias=None,
             return_full_object: bool = False) -> dict:
        records, total = self._db.list_keys(offset=(page - 1) * size, limit=size, user_id=user_id,
                                            team_id=team_id, key_alias=key_alias)
        now = self._clock()
        keys = [self._view(r, now) for r in records] if return_full_object else [r.token for r in records]
        return {"keys": keys, "total_count": total, "current_page": page,
                "total_pages": math.ceil(total / size) if size else 0}

    def regenerate(self, key: str, data: Mapping) -> dict:
        """A new plaintext for the same key (settings, spend, alias kept): the old plaintext stops working."""
        token, old = self._find(key)
        now = self._clock()
        plaintext = data.get("new_key") or new_plaintext()
        new_token = token_of(plaintext)
        if new_token == token or self._db.get_key(new_token) is not None:
            raise DuplicateKey("A virtual key with this value already exists.", param="new_key")
        changes = self._changes({k: v for k, v in data.items() if k not in ("key", "new_key")}, old, now)
        self._db.update_key(token, {**changes, "updated_at": now})
        record = self._db.replace_token(token, new_token, key_name(plaintext))
        self._forget(token)
        if record is None:
            raise KeyNotFound("The key does not exist.", param="key")
        return {"key": plaintext, **self._view(record, now)}

    def block(self, key: str) -> dict:
        return self._set_blocked(key, True)

    def unblock(self, key: str) -> dict:
        return self._set_blocked(key, False)

    def _set_blocked(self, key: str, blocked: bool) -> dict:
        token, _ = self._find(key)
        now = self._clock()
        return self._changed(token, self._db.update_key(token, {"blocked": blocked, "updated_at": now}), now)

    def _find(self, key: str) -> tuple[str, KeyRecord]:
        token = token_for(key)
        record = self._db.get_key(token)
        if record is None:
            raise KeyNotFound("The key does not exist.", param="key")
        return token, record

    def _changed(self, token: str, record: KeyRecord | None, now: float) -> dict:
        self._forget(token)
        if record is None:          # deleted between our read and our write
            raise KeyNotFound("The key does not exist.", param="key")
        return self._view(record, now)

    @staticmethod
    def _changes(data: Mapping, old: KeyRecord | None, now: float) -> dict:
        """KeyRecord fields from validated request fields; only the fields the request names change.

        A new `budget_duration` starts a new budget period now (spend 0); sending the
        one the key already has changes nothing, so a script that re-sends a key's whole
        settings cannot reset its budget. Removing it keeps the current period's
        spend as the key's lifetime spend.
        """
        changes = {name: data[name] for name in PLAIN_FIELDS if name in data}
        for name, empty in (("metadata", {}), ("model_rpm_limit", {}), ("model_tpm_limit", {}), ("blocked", False)):
            if name in changes and changes[name] is None:
                changes[name] = empty
        if "models" in data:
            changes["models"] = tuple(data["models"] or ())
        if "duration" in data:
            changes["expires"] = now + parse_duration(data["duration"]) if data["duration"] else None
        if "budget_duration" in data and (old is None or data["budget_duration"] != old.budget_duration):
            duration = data["budget_duration"]
            changes["budget_duration"] = duration
            changes["budget_anchor"] = now          # a new period starts now, with or without a duration
            spend = budget_period(old, now)[2] if old is not None and not duration else 0.0
            changes.update(spend=spend, spend_period=now)
        return changes

    @staticmethod
    def _view(record: KeyRecord, now: float) -> dict:
        _, reset_at, spend = budget_period(record, now)
        return {
            "key_name": record.key_name, "token": record.token, "key_alias": record.key_alias,
            "expires": iso(record.expires), "models": list(record.models), "max_budget": record.max_budget,
            "budget_duration": record.budget_duration, "budget_reset_at": iso(reset_at), "spend": spend,
            "rpm_limit": record.rpm_limit, "tpm_limit": record.tpm_limit,
            "max_parallel_requests": record.max_parallel_requests,
            "model_rpm_limit": dict(record.model_rpm_limit), "model_tpm_limit": dict(record.model_tpm_limit),
            "metadata": dict(record.metadata), "user_id": record.user_id, "team_id": record.team_id,
            "blocked": record.blocked, "created_at": iso(record.created_at), "updated_at": iso(record.updated_at),
        }


class SpendReports:
    """Read-only views of the spend rows the SpendWriter stored: never a prompt, never a plaintext key."""

    def __init__(self, database, clock=time.time):
        self._db = database
        self._clock = clock

    def logs(self, filters: Mapping, page: int | None = None, page_size: int = 50):
        query = self._query(filters)
        if page is None:
            rows, _ = self._db.spend_logs(offset=0, limit=LOGS_WITHOUT_PAGE, **query)
            return [spend_row_json(row) for row in rows]
        rows, total = self._db.spend_logs(offset=(page - 1) * page_size, limit=page_size, **query)
        return {"data": [spend_row_json(row) for row in rows], "total": total, "page": page,
                "page_size": page_size, "total_pages": math.ceil(total / page_size)}

    def global_spend(self, filters: Mapping) -> dict:
        query = self._query(filters)
        totals = self._db.global_spend(start=query["start"], end=query["end"], key_token=query["key_token"])
        return {"spend": float(totals["spend"]), "max_budget": None, "requests": totals["requests"],
                "prompt_tokens": totals["prompt_tokens"], "completion_tokens": totals["completion_tokens"]}

    def report(self, start: str, end: str, group_by: str = "model") -> list[dict]:
        """Spend per UTC day × model group (`group_by=model`) or × key (`group_by=api_key`)."""
        rows = self._db.spend_report(start=parse_when(start), end=parse_when(end, end=True),
                                     group_by="key" if group_by == "api_key" else "model")
        out = []
        for row in rows:
            group = {"model": row["group"]} if group_by == "model" else {"api_key": row["group"],
                                                                       "key_alias": row.get("key_alias")}
            out.append({"group_by_day": row["day"], **group, "spend": float(row["spend"]),
                        "requests": row["requests"], "prompt_tokens": row["prompt_tokens"],
                        "completion_tokens": row["completion_tokens"],
                        "total_tokens": row["prompt_tokens"] + row["completion_tokens"]})
        return out

    @staticmethod
    def _query(filters: Mapping) -> dict:
        api_key = filters.get("api_key")
        return {"key_token": token_for(api_key) if api_key else None, "key_alias": filters.get("key_alias"),
                "user_id": filters.get("user_id"), "team_id": filters.get("team_id"),
                "model_group": filters.get("model"), "request_id": filters.get("request_id"),
                "start": parse_when(filters["start_date"]) if filters.get("start_date") else None,
                "end": parse_when(filters["end_date"], end=True) if filters.get("end_date") else None}


def spend_row_json(row: SpendRow) -> dict:
    return {"request_id": row.request_id, "api_key": row.key_token, "key_alias": row.key_alias,
            "user": row.user_id, "team_id": row.team_id, "model_group": row.model_group,
            "model_id": row.deployment_id, "prompt_tokens": row.prompt_tokens,
            "completion_tokens": row.completion_tokens, "total_tokens": row.prompt_tokens + row.completion_tokens,
            "spend": row.cost, "status": row.status, "latency_ms": row.latency_ms,
            "startTime": iso(row.started_at), "endTime": iso(row.started_at + row.latency_ms / 1000)}
