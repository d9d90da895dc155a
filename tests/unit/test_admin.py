"""gateway/admin.py: KeyAdmin and SpendReports against a real SQLite database, with a test clock."""
from __future__ import annotations

import hashlib
import json
import logging
import uuid
from datetime import datetime, timezone

import pytest

from gateway.admin import KeyAdmin, SpendReports, iso, parse_when, token_for
from gateway.errors import DuplicateKey, KeyNotFound
from gateway.store.database import open_database
from gateway.types import SpendRow

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=timezone.utc).timestamp()
DAY = 86400


class Clock:
    def __init__(self, now: float = T0):
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def db(tmp_path):
    database = open_database(f"sqlite:///{tmp_path / 'gateway.db'}", logging.getLogger("test"))
    database.migrate()
    yield database
    database.close()


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def forgotten():
    return []


@pytest.fixture
def admin(db, clock, forgotten):
    return KeyAdmin(db, forgotten.append, clock=clock)


@pytest.fixture
def reports(db, clock):
    return SpendReports(db, clock=clock)


def spend(db, token, cost, *, at=T0, model="m1", alias=None, period=0.0, prompt=10, completion=5, **extra):
    row = SpendRow(id=uuid.uuid4().hex, request_id=extra.get("request_id", uuid.uuid4().hex), key_token=token,
                   key_alias=alias, user_id=extra.get("user_id"), team_id=extra.get("team_id"),
                   model_group=model, deployment_id="dep-1", prompt_tokens=prompt, completion_tokens=completion,
                   cost=cost, latency_ms=250, status=extra.get("status", 200), started_at=at, spend_period=period)
    db.write_spend([row])
    return row


# --- generate / info ------------------------------------------------------------------------

def test_generate_returns_the_plaintext_once_and_stores_only_its_hash(admin, db, tmp_path):
    made = admin.generate({"key_alias": "app", "models": ["m1"], "metadata": {"team": "x"}})
    plaintext = made["key"]
    assert plaintext.startswith("sk-") and len(plaintext) > 40
    assert made["token"] == hashlib.sha256(plaintext.encode()).hexdigest()
    assert made["key_name"] == "sk-..." + plaintext[-4:]
    assert made["models"] == ["m1"] and made["metadata"] == {"team": "x"} and made["key_alias"] == "app"
    assert made["expires"] is None and made["spend"] == 0 and made["blocked"] is False
    assert made["created_at"] == iso(T0) == "2025-03-01T12:00:00.000Z"
    for by in (plaintext, made["token"]):
        info = admin.info(by)
        assert info["key"] == made["token"]
        assert "key" not in info["info"] and plaintext not in json.dumps(info)
        assert info["info"] == {k: v for k, v in made.items() if k != "key"}
    db.close()
    for path in tmp_path.iterdir():
        assert plaintext.encode() not in path.read_bytes()


def test_generate_keeps_every_field(admin):
    fields = {"key_alias": "full", "models": ["a", "b"], "max_budget": 2.5, "rpm_limit": 5, "tpm_limit": 100,
              "max_parallel_requests": 2, "model_rpm_limit": {"a": 1}, "model_tpm_limit": {"b": 9},
              "metadata": {"k": [1, 2]}, "user_id": "u1", "team_id": "t1"}
    made = admin.generate(fields)
    assert {k: made[k] for k in fields} == fields


def test_two_keys_differ(admin):
    assert admin.generate({})["key"] != admin.generate({})["key"]


def test_caller_supplied_key_and_its_duplicate(admin):
    made = admin.generate({"key": "sk-my-own-key-1"})
    assert made["key"] == "sk-my-own-key-1" and made["token"] == token_for("sk-my-own-key-1")
    with pytest.raises(DuplicateKey) as caught:
        admin.generate({"key": "sk-my-own-key-1"})
    assert caught.value.param == "key" and caught.value.status == 400


def test_duplicate_alias(admin):
    admin.generate({"key_alias": "same"})
    with pytest.raises(DuplicateKey) as caught:
        admin.generate({"key_alias": "same"})
    assert caught.value.param == "key_alias" and caught.value.code == "duplicate_key"


def test_duration_sets_expires(admin):
    made = admin.generate({"duration": "30d"})
    assert made["expires"] == iso(T0 + 30 * DAY)


def test_unknown_key_is_404(admin):
    for call in (lambda: admin.info("sk-nope-nope"), lambda: admin.info("ab" * 32),
                 lambda: admin.update({"key": "sk-nope-nope", "rpm_limit": 1}),
                 lambda: admin.block("sk-nope-nope"), lambda: admin.regenerate("sk-nope-nope", {})):
        with pytest.raises(KeyNotFound) as caught:
            call()
        assert caught.value.status == 404 and caught.value.code == "key_not_found"


# --- budgets: spend shown is the current period's --------------------------------------------

def test_spend_shown_is_the_current_period(admin, db, clock):
    made = admin.generate({"max_budget": 10, "budget_duration": "1d"})
    assert made["budget_reset_at"] == iso(T0 + DAY)
    spend(db, made["token"], 1.5, period=T0)
    assert admin.info(made["token"])["info"]["spend"] == pytest.approx(1.5)
    clock.now = T0 + DAY + 1          # the next period: nothing spent in it yet
    info = admin.info(made["token"])["info"]
    assert info["spend"] == 0 and info["budget_reset_at"] == iso(T0 + 2 * DAY)


def test_lifetime_spend_without_budget_duration(admin, db, clock):
    made = admin.generate({"max_budget": 10})
    spend(db, made["token"], 0.25)
    spend(db, made["token"], 0.25)
    clock.now += 100 * DAY
    info = admin.info(made["key"])["info"]
    assert info["spend"] == pytest.approx(0.5) and info["budget_reset_at"] is None


def test_resending_the_same_budget_duration_does_not_reset_the_budget(admin, db, clock):
    made = admin.generate({"budget_duration": "1d", "max_budget": 5})
    spend(db, made["token"], 2.0, period=T0)
    clock.now = T0 + 3600
    updated = admin.update({"key": made["key"], "budget_duration": "1d", "max_budget": 6})
    assert updated["spend"] == pytest.approx(2.0) and updated["max_budget"] == 6
    assert updated["budget_reset_at"] == iso(T0 + DAY)
    changed = admin.update({"key": made["key"], "budget_duration": "7d"})   # a new schedule starts now
    assert changed["spend"] == 0 and changed["budget_reset_at"] == iso(T0 + 3600 + 7 * DAY)


def test_removing_budget_duration_keeps_the_current_spend_as_lifetime(admin, db):
    made = admin.generate({"budget_duration": "1d"})
    spend(db, made["token"], 2.0, period=T0)
    updated = admin.update({"key": made["token"], "budget_duration": None})
    assert updated["spend"] == pytest.approx(2.0) and updated["budget_duration"] is None
    spend(db, made["token"], 1.0, period=T0)          # the endless period starts when the duration went
    assert admin.info(made["token"])["info"]["spend"] == pytest.approx(3.0)


# --- update / delete / list ---------------------------------------------------------------------

def test_update_changes_only_named_fields_and_forgets_the_key(admin, clock, forgotten):
    made = admin.generate({"key_alias": "a1", "rpm_limit": 5, "models": ["m1"], "user_id": "u"})
    clock.now += 60
    updated = admin.update({"key": made["key"], "rpm_limit": 7, "models": [], "duration": "1h"})
    assert updated["rpm_limit"] == 7 and updated["models"] == [] and updated["key_alias"] == "a1"
    assert updated["user_id"] == "u" and updated["expires"] == iso(T0 + 60 + 3600)
    assert updated["updated_at"] == iso(T0 + 60) and updated["created_at"] == iso(T0)
    assert forgotten == [made["token"]]
    cleared = admin.update({"key": made["token"], "key_alias": None, "duration": None, "metadata": None})
    assert cleared["key_alias"] is None and cleared["expires"] is None and cleared["metadata"] == {}


def test_update_to_a_taken_alias(admin):
    admin.generate({"key_alias": "taken"})
    other = admin.generate({})
    with pytest.raises(DuplicateKey) as caught:
        admin.update({"key": other["key"], "key_alias": "taken"})
    assert caught.value.param == "key_alias"


def test_delete_by_key_and_by_alias(admin, forgotten):
    one, two, three = admin.generate({}), admin.generate({"key_alias": "two"}), admin.generate({})
    assert admin.delete(keys=[one["key"], "sk-missing-key"]) == {"deleted_keys": [one["key"]]}
    assert admin.delete(key_aliases=["two", "nobody"]) == {"deleted_keys": ["two"]}
    assert admin.delete(keys=[three["token"]]) == {"deleted_keys": [three["token"]]}
    assert sorted(forgotten) == sorted([one["token"], two["token"], three["token"]])
    with pytest.raises(KeyNotFound):
        admin.info(two["token"])
    with pytest.raises(KeyNotFound) as caught:
        admin.delete(key_aliases=["two"])
    assert caught.value.param == "key_aliases"


def test_list_pages_and_filters(admin, clock):
    made = []
    for i in range(7):
        clock.now += 1
        made.append(admin.generate({"user_id": "u1" if i < 5 else "u2", "team_id": "t", "key_alias": f"k{i}"}))
    first = admin.list(page=1, size=3)
    assert first["total_count"] == 7 and first["total_pages"] == 3 and first["current_page"] == 1
    tokens = first["keys"] + admin.list(page=2, size=3)["keys"] + admin.list(page=3, size=3)["keys"]
    assert sorted(tokens) == sorted(m["token"] for m in made)
    assert admin.list(page=4, size=3)["keys"] == []
    assert admin.list(user_id="u2")["total_count"] == 2
    assert admin.list(team_id="nope")["total_count"] == 0
    full = admin.list(key_alias="k3", return_full_object=True)
    assert full["keys"] == [{k: v for k, v in made[3].items() if k != "key"}]


# --- regenerate / block ----------------------------------------------------------------------

def test_regenerate_replaces_the_plaintext_and_keeps_the_rest(admin, db, forgotten):
    made = admin.generate({"key_alias": "re", "rpm_limit": 3})
    spend(db, made["token"], 0.5)
    again = admin.regenerate(made["key"], {"rpm_limit": 4})
    assert again["key"] != made["key"] and again["token"] == token_for(again["key"])
    assert again["key_alias"] == "re" and again["rpm_limit"] == 4 and again["spend"] == pytest.approx(0.5)
    assert forgotten == [made["token"]]
    with pytest.raises(KeyNotFound):
        admin.info(made["key"])
    assert admin.info(again["key"])["info"]["rpm_limit"] == 4


def test_regenerate_to_a_chosen_key(admin):
    made, other = admin.generate({}), admin.generate({"key": "sk-taken-key-1"})
    again = admin.regenerate(made["token"], {"new_key": "sk-chosen-key-1"})
    assert again["key"] == "sk-chosen-key-1"
    with pytest.raises(DuplicateKey) as caught:
        admin.regenerate(again["key"], {"new_key": other["key"]})
    assert caught.value.param == "new_key"


def test_block_and_unblock(admin, forgotten):
    made = admin.generate({})
    assert admin.block(made["key"])["blocked"] is True
    assert admin.info(made["token"])["info"]["blocked"] is True
    assert admin.unblock(made["token"])["blocked"] is False
    assert forgotten == [made["token"]] * 2


# --- spend reports ------------------------------------------------------------------------------

@pytest.fixture
def history(admin, db):
    a, b = admin.generate({"key_alias": "alpha"}), admin.generate({"key_alias": "beta"})
    rows = [spend(db, a["token"], 0.1, at=T0, model="m1", alias="alpha", user_id="u1", team_id="t1"),
            spend(db, a["token"], 0.2, at=T0 + 60, model="m2", alias="alpha", user_id="u1", team_id="t1"),
            spend(db, b["token"], 0.4, at=T0 + DAY, model="m1", alias="beta", request_id="req-b", status=429),
            spend(db, None, 0.8, at=T0 + 2 * DAY, model="m1")]
    return a, b, rows


def test_logs_as_a_plain_list_newest_first(reports, history):
    a, _, rows = history
    logs = reports.logs({})
    assert [r["request_id"] for r in logs] == [r.request_id for r in reversed(rows)]
    newest = logs[0]
    assert set(newest) == {"request_id", "api_key", "key_alias", "user", "team_id", "model_group", "model_id",
                           "prompt_tokens", "completion_tokens", "total_tokens", "spend", "status",
                           "latency_ms", "startTime", "endTime"}
    oldest = logs[-1]
    assert oldest["api_key"] == a["token"] and oldest["key_alias"] == "alpha" and oldest["user"] == "u1"
    assert oldest["model_id"] == "dep-1" and oldest["total_tokens"] == 15 and oldest["spend"] == pytest.approx(0.1)
    assert oldest["startTime"] == iso(T0) and oldest["endTime"] == iso(T0 + 0.25)


def test_log_filters(reports, history):
    a, b, rows = history

    def ids(**filters):
        return [r["request_id"] for r in reports.logs(filters)]
    assert ids(api_key=a["key"]) == ids(api_key=a["token"]) == [rows[1].request_id, rows[0].request_id]
    assert ids(key_alias="beta") == ids(request_id="req-b") == ["req-b"]
    assert len(ids(user_id="u1")) == 2 and len(ids(team_id="t1")) == 2
    assert len(ids(model="m1")) == 3
    assert ids(start_date="2025-03-02", end_date="2025-03-02") == ["req-b"]      # end_date: the whole day
    assert len(ids(end_date="2025-03-01")) == 2
    assert ids(start_date="2025-03-01T12:00:30Z", end_date="2025-03-01T13:00:00+00:00") == [rows[1].request_id]


def test_log_pages(reports, history):
    _, _, rows = history
    page = reports.logs({}, page=2, page_size=3)
    assert page["total"] == 4 and page["page"] == 2 and page["page_size"] == 3 and page["total_pages"] == 2
    assert [r["request_id"] for r in page["data"]] == [rows[0].request_id]


def test_global_spend(reports, history):
    a, _, _ = history
    total = reports.global_spend({})
    assert total == {"spend": pytest.approx(1.5), "max_budget": None, "requests": 4,
                     "prompt_tokens": 40, "completion_tokens": 20}
    assert reports.global_spend({"api_key": a["key"]})["spend"] == pytest.approx(0.3)
    assert reports.global_spend({"start_date": "2025-03-02"})["requests"] == 2


def test_report_by_day_and_model(reports, history):
    by_model = reports.report("2025-03-01", "2025-03-02", "model")
    assert [(r["group_by_day"], r["model"], r["requests"]) for r in by_model] == [
        ("2025-03-01", "m1", 1), ("2025-03-01", "m2", 1), ("2025-03-02", "m1", 1)]
    assert by_model[0] == {"group_by_day": "2025-03-01", "model": "m1", "spend": pytest.approx(0.1), "requests": 1,
                           "prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}


def test_report_by_day_and_key(reports, history):
    a, b, _ = history
    by_key = reports.report("2025-03-01", "2025-03-03", "api_key")
    assert [(r["group_by_day"], r["api_key"], r["key_alias"], r["requests"]) for r in by_key
            if r["api_key"]] == [("2025-03-01", a["token"], "alpha", 2), ("2025-03-02", b["token"], "beta", 1)]
    assert by_key[0]["spend"] == pytest.approx(0.3)


def test_parse_when():
    assert parse_when("2025-03-01") == datetime(2025, 3, 1, tzinfo=timezone.utc).timestamp()
    assert parse_when("2025-03-01", end=True) == datetime(2025, 3, 2, tzinfo=timezone.utc).timestamp()
    assert parse_when("2025-03-01T12:00:00") == T0 == parse_when("2025-03-01T13:00:00+01:00")
    with pytest.raises(ValueError):
        parse_when("yesterday")


# --- what fuzzing /openapi.json found: inputs that used to end in a 500 are 400s now ---------------

@pytest.mark.parametrize("schema, data, field", [
    ("ListKeys", {"page": str(10 ** 30)}, "page"),
    ("SpendLogs", {"page": str(10 ** 30)}, "page"),
    ("SpendLogs", {"end_date": "9999-12-31"}, "end_date"),
    ("GenerateKey", {"duration": "731598.03w"}, "duration"),
    ("GenerateKey", {"budget_duration": "99999999999999999999d"}, "budget_duration"),
])
def test_values_past_what_the_database_or_a_date_can_hold_are_refused(schema, data, field):
    from gateway.api import admin_schemas
    errors = getattr(admin_schemas, schema)().validate(data)
    assert field in errors, errors


def test_a_century_is_the_longest_duration():
    from gateway.durations import parse_duration
    assert parse_duration("36500d") == 36500 * 86400
    with pytest.raises(ValueError, match="at most 100 years"):
        parse_duration("5300w")
