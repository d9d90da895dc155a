"""The keys-and-spend database: one contract, run against SQLite files and real PostgreSQL.

Each PostgreSQL test gets a schema of its own on the machine's server;
tests that stop the database use a private cluster (tests/functional/postgres_server.py).
"""
from __future__ import annotations

import json
import logging
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import psycopg
import pytest

from gateway.cli import main as cli
from gateway.errors import DuplicateKey, StorageUnavailable
from gateway.store.database import open_database
from gateway.store.postgres import PostgresDatabase
from gateway.store.schema import LATEST
from gateway.types import KeyRecord, SpendRow
from tests.functional.gateway_process import free_port
from tests.functional.postgres_server import PASSWORD, PostgresServer, isolated_postgres_url

ROOT = Path(__file__).resolve().parents[2]
LOG = logging.getLogger("test.store")
DAY = 86400.0
T0 = 1_700_000_000.0            # 2023-11-14 22:13:20 UTC


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request, tmp_path):
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/state/gateway.db"
    else:
        with isolated_postgres_url() as isolated:
            yield isolated


@pytest.fixture
def db(url):
    database = open_database(url, LOG)
    database.migrate()
    yield database
    database.close()


def key(token="t1", **fields) -> KeyRecord:
    return KeyRecord(token=token, key_name=f"sk-...{token[-4:]}", created_at=T0, updated_at=T0, **fields)


def spend(id, *, key_token="t1", cost=0.5, started_at=T0, period=0.0, **fields) -> SpendRow:
    values = dict(request_id=f"req-{id}", key_token=key_token, key_alias=None, user_id=None, team_id=None,
                  model_group="gpt", deployment_id="d1", prompt_tokens=10, completion_tokens=5, cost=cost,
                  latency_ms=12, status=200, started_at=started_at, spend_period=period)
    values.update(fields)
    return SpendRow(id=id, **values)


# --- schema ----------------------------------------------------------------------------------

def test_migrate_is_idempotent_and_reports_the_version(url):
    database = open_database(url, LOG)
    try:
        assert database.migrate() == LATEST
        assert database.migrate() == LATEST
        database.ping()
    finally:
        database.close()


MIGRATE_AT_ONCE = """
import logging, sys, time
from gateway.store.database import open_database
time.sleep(max(0.0, float(sys.argv[2]) - time.time()))     # as gunicorn workers do, all at once
database = open_database(sys.argv[1], logging.getLogger("w"))
print(database.migrate())
database.close()
"""


def test_workers_migrating_at_the_same_moment_all_succeed(url):
    at = time.time() + 1.0
    workers = [subprocess.Popen([sys.executable, "-c", MIGRATE_AT_ONCE, url, str(at)], cwd=ROOT,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(4)]
    results = [worker.communicate(timeout=30) for worker in workers]
    assert [worker.returncode for worker in workers] == [0] * 4, results
    assert [out.strip() for out, _ in results] == [str(LATEST)] * 4


# --- keys ------------------------------------------------------------------------------------

def test_a_key_round_trips_exactly(db):
    record = key("a" * 64, key_alias="app", models=("gpt-4o", "claude"), max_budget=12.5,
                 budget_duration="30d", budget_anchor=T0 + 0.25, spend=1.125, spend_period=T0, rpm_limit=5,
                 tpm_limit=1000, max_parallel_requests=2, model_rpm_limit={"gpt-4o": 3},
                 model_tpm_limit={"claude": 70}, metadata={"team": "x", "tags": ["a", 1], "n": {"k": None}},
                 user_id="u1", team_id="tm1", expires=T0 + 30 * DAY, blocked=True)
    db.insert_key(record)
    assert db.get_key(record.token) == record
    assert db.get_key_by_alias("app") == record
    assert isinstance(db.get_key(record.token).models, tuple)
    assert db.get_key("nope") is None and db.get_key_by_alias("nope") is None


def test_a_taken_token_or_alias_is_a_duplicate_naming_the_field(db):
    db.insert_key(key("t1", key_alias="app"))
    db.insert_key(key("t2"))
    db.insert_key(key("t3"))        # several keys without an alias
    with pytest.raises(DuplicateKey) as taken:
        db.insert_key(key("t1"))
    assert taken.value.param == "key" and taken.value.status == 400
    with pytest.raises(DuplicateKey) as alias:
        db.insert_key(key("t4", key_alias="app"))
    assert alias.value.param == "key_alias"
    assert db.get_key("t4") is None


def test_update_key_changes_fields_and_refuses_a_taken_alias(db):
    db.insert_key(key("t1", key_alias="one"))
    db.insert_key(key("t2", key_alias="two"))
    before = time.time()
    updated = db.update_key("t1", {"rpm_limit": 7, "models": ["m"], "metadata": {"a": 1}, "key_alias": "uno",
                                   "blocked": True})
    assert updated == db.get_key("t1")
    assert (updated.rpm_limit, updated.models, updated.metadata, updated.key_alias, updated.blocked) == \
        (7, ("m",), {"a": 1}, "uno", True)
    assert updated.updated_at >= before and updated.created_at == T0
    assert db.update_key("t1", {"key_alias": "uno"}).key_alias == "uno"    # its own alias again
    with pytest.raises(DuplicateKey) as clash:
        db.update_key("t1", {"key_alias": "two"})
    assert clash.value.param == "key_alias"
    assert db.update_key("missing", {"rpm_limit": 1}) is None
    with pytest.raises(ValueError):
        db.update_key("t1", {"token": "other"})


def test_replace_token_keeps_settings_spend_and_spend_rows(db):
    db.insert_key(key("old", key_alias="app", rpm_limit=3))
    db.insert_key(key("taken"))
    db.write_spend([spend("r1", key_token="old", cost=2.0)])
    with pytest.raises(DuplicateKey) as clash:
        db.replace_token("old", "taken", "sk-...aken")
    assert clash.value.param == "key"
    fresh = db.replace_token("old", "new", "sk-...0new")
    assert (fresh.token, fresh.key_name, fresh.key_alias, fresh.rpm_limit, fresh.spend) == \
        ("new", "sk-...0new", "app", 3, 2.0)
    assert db.get_key("old") is None and db.get_key("new") == fresh
    assert db.global_spend(key_token="new")["spend"] == 2.0
    assert db.replace_token("old", "x", "sk-...x") is None


def test_delete_keys_answers_the_ones_that_existed(db):
    for token in ("t1", "t2", "t3"):
        db.insert_key(key(token))
    assert db.delete_keys(["t3", "nope", "t1", "t1"]) == ["t3", "t1"]
    assert db.get_key("t1") is None and db.get_key("t2") is not None
    assert db.delete_keys([]) == []


def test_list_keys_pages_newest_first_with_filters(db):
    for n in range(7):
        db.insert_key(replace(key(f"t{n}", user_id="u" if n % 2 else None, team_id="tm"),
                              created_at=T0 + n, key_alias=f"a{n}"))
    page, total = db.list_keys(offset=2, limit=3)
    assert total == 7 and [r.token for r in page] == ["t4", "t3", "t2"]
    mine, total = db.list_keys(offset=0, limit=10, user_id="u")
    assert total == 3 and [r.token for r in mine] == ["t5", "t3", "t1"]
    assert db.list_keys(offset=0, limit=10, key_alias="a2")[0][0].token == "t2"
    assert db.list_keys(offset=0, limit=10, team_id="other") == ([], 0)


# --- spend -----------------------------------------------------------------------------------

def test_write_spend_is_idempotent_and_adds_to_the_key(db):
    db.insert_key(key("t1"))
    batch = [spend("a", cost=0.5), spend("b", cost=0.25), spend("c", key_token=None, cost=4.0),
             spend("d", key_token="deleted-key", cost=1.0)]
    db.write_spend(batch)
    db.write_spend(batch)                             # a retried batch
    db.write_spend([spend("a", cost=0.5), spend("e", cost=1.0), spend("e", cost=1.0)])
    assert db.get_key("t1").spend == 1.75
    assert db.spend_logs(offset=0, limit=100)[1] == 5
    assert db.global_spend()["spend"] == 6.75


def test_key_spend_follows_budget_periods(db):
    db.insert_key(key("t1", budget_duration="1d", budget_anchor=T0))
    db.write_spend([spend("a", cost=1.0, period=T0), spend("b", cost=2.0, period=T0)])
    assert (db.get_key("t1").spend, db.get_key("t1").spend_period) == (3.0, T0)
    # A newer period replaces; in one batch, rows of the old period before it do not count.
    db.write_spend([spend("c", cost=4.0, period=T0), spend("d", cost=0.5, period=T0 + DAY),
                    spend("e", cost=0.25, period=T0 + DAY)])
    assert (db.get_key("t1").spend, db.get_key("t1").spend_period) == (0.75, T0 + DAY)
    db.write_spend([spend("f", cost=8.0, period=T0)])           # late row of an older period
    assert (db.get_key("t1").spend, db.get_key("t1").spend_period) == (0.75, T0 + DAY)
    assert db.global_spend(key_token="t1")["spend"] == 15.75    # every row is still logged


def test_500_rows_in_one_batch_are_quick(db):
    db.insert_key(key("t1"))
    timings = []
    for batch in range(3):
        rows = [spend(f"{batch}-{n}", key_token=f"t{n % 2}", cost=0.5) for n in range(500)]
        started = time.perf_counter()
        db.write_spend(rows)
        timings.append(time.perf_counter() - started)
    assert db.get_key("t1").spend == 375.0
    limit = 0.1 if db.backend == "sqlite" else 0.5
    assert min(timings) < limit, timings


WRITE_SPEND = """
import logging, sys, time
from gateway.store.database import open_database
from gateway.types import SpendRow
database = open_database(sys.argv[1], logging.getLogger("w"))
time.sleep(max(0.0, float(sys.argv[2]) - time.time()))
for batch in range(5):
    database.write_spend([SpendRow(f"{sys.argv[3]}-{batch}-{n}", "r", "t1", None, None, None, "gpt", "d", 1, 1,
                                   0.5, 1, 200, 1.7e9 + n) for n in range(100)])
database.close()
"""


def test_workers_writing_spend_at_once_lose_nothing(db, url):
    db.insert_key(key("t1"))
    at = time.time() + 1.5
    workers = [subprocess.Popen([sys.executable, "-c", WRITE_SPEND, url, str(at), str(w)], cwd=ROOT,
                                stderr=subprocess.PIPE, text=True) for w in range(3)]
    errors = [worker.communicate(timeout=60)[1] for worker in workers]
    assert [worker.returncode for worker in workers] == [0] * 3, errors
    assert db.get_key("t1").spend == 3 * 5 * 100 * 0.5
    assert db.global_spend()["requests"] == 1500


def test_spend_logs_newest_first_with_paging_and_filters(db):
    db.write_spend([spend(f"r{n}", started_at=T0 + n, key_token="t1" if n < 6 else "t2", user_id=f"u{n % 2}",
                          team_id="tm", key_alias="app" if n < 6 else None,
                          model_group="gpt" if n % 3 else "claude") for n in range(10)])
    page, total = db.spend_logs(offset=1, limit=3)
    assert total == 10 and [r.id for r in page] == ["r8", "r7", "r6"]
    assert page[0] == spend("r8", started_at=T0 + 8, key_token="t2", user_id="u0", team_id="tm", key_alias=None,
                            model_group="gpt")
    assert db.spend_logs(offset=0, limit=100, key_token="t2")[1] == 4
    assert db.spend_logs(offset=0, limit=100, key_alias="app")[1] == 6
    assert db.spend_logs(offset=0, limit=100, user_id="u1")[1] == 5
    assert db.spend_logs(offset=0, limit=100, team_id="tm")[1] == 10
    assert db.spend_logs(offset=0, limit=100, model_group="claude")[1] == 4
    assert [r.id for r in db.spend_logs(offset=0, limit=100, request_id="req-r3")[0]] == ["r3"]
    window, total = db.spend_logs(offset=0, limit=100, start=T0 + 2, end=T0 + 5)      # [start, end)
    assert total == 3 and [r.id for r in window] == ["r4", "r3", "r2"]


def test_global_spend_sums(db):
    assert db.global_spend() == {"spend": 0.0, "requests": 0, "prompt_tokens": 0, "completion_tokens": 0}
    db.write_spend([spend("a", cost=0.5, started_at=T0), spend("b", cost=1.5, started_at=T0 + 10, key_token="t2"),
                    spend("c", cost=2.0, started_at=T0 + 20)])
    assert db.global_spend() == {"spend": 4.0, "requests": 3, "prompt_tokens": 30, "completion_tokens": 15}
    assert db.global_spend(start=T0 + 5, end=T0 + 20)["spend"] == 1.5
    assert db.global_spend(key_token="t1")["requests"] == 2


def test_spend_report_by_utc_day_and_model_or_key(db):
    midnight = T0 - T0 % DAY + DAY          # 2023-11-15 00:00 UTC
    db.write_spend([
        spend("a", started_at=midnight - 1, cost=1.0, model_group="gpt", key_token="t1", key_alias="app"),
        spend("b", started_at=midnight, cost=2.0, model_group="gpt", key_token="t1", key_alias="app"),
        spend("c", started_at=midnight + 5, cost=4.0, model_group="claude", key_token=None),
        spend("d", started_at=midnight + 6, cost=8.0, model_group="gpt", key_token="t2"),
        spend("e", started_at=midnight + 3 * DAY, cost=16.0),                      # outside the window
    ])
    by_model = db.spend_report(start=midnight - DAY, end=midnight + DAY, group_by="model")
    assert [(r["day"], r["group"], r["spend"], r["requests"]) for r in by_model] == [
        ("2023-11-14", "gpt", 1.0, 1), ("2023-11-15", "claude", 4.0, 1), ("2023-11-15", "gpt", 10.0, 2)]
    assert by_model[2]["prompt_tokens"] == 20 and by_model[2]["completion_tokens"] == 10
    by_key = db.spend_report(start=midnight - DAY, end=midnight + DAY, group_by="key")
    assert [(r["day"], r["group"], r["key_alias"], r["spend"]) for r in by_key] == [
        ("2023-11-14", "t1", "app", 1.0), ("2023-11-15", None, None, 4.0), ("2023-11-15", "t1", "app", 2.0),
        ("2023-11-15", "t2", None, 8.0)]
    with pytest.raises(ValueError):
        db.spend_report(start=0, end=1, group_by="team")


# --- opening ---------------------------------------------------------------------------------

def test_an_unknown_scheme_is_refused_without_echoing_the_url():
    with pytest.raises(ValueError, match="mysql") as refused:
        open_database(f"mysql://u:{PASSWORD}@h/db", LOG)
    assert PASSWORD not in str(refused.value)
    with pytest.raises(ValueError) as bare:
        open_database(f"u:{PASSWORD}@h/db", LOG)
    assert PASSWORD not in str(bare.value)


def test_sqlite_is_in_wal_mode_and_makes_its_directory(tmp_path):
    path = tmp_path / "a" / "b" / "gw.db"
    database = open_database(f"sqlite:///{path}", LOG)
    database.migrate()
    database.close()
    import sqlite3
    with sqlite3.connect(path) as connection:
        assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_sqlite_that_cannot_be_opened_says_which_file(tmp_path):
    (tmp_path / "dir.db").mkdir()
    with pytest.raises(StorageUnavailable, match="dir.db"):
        open_database(f"sqlite:///{tmp_path}/dir.db", LOG)


# --- PostgreSQL when the server goes away ------------------------------------------------------

@pytest.fixture
def server():
    cluster = PostgresServer()
    yield cluster
    cluster.close()


def test_private_postgres_starts_stops_and_restarts(server):
    server.start()
    with psycopg.connect(server.url) as connection:
        assert connection.execute("SELECT 1").fetchone() == (1,)
    server.stop()
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(server.url, connect_timeout=1)
    server.start()
    with psycopg.connect(server.url) as connection:
        assert connection.execute("SELECT 2").fetchone() == (2,)


def test_postgres_down_at_start_then_up_recovers_by_itself(server, caplog):
    caplog.set_level(logging.INFO)
    database = open_database(server.url, LOG)         # the server is not running yet: no error here
    try:
        started = time.monotonic()
        with pytest.raises(StorageUnavailable) as down:
            database.ping()
        assert time.monotonic() - started < 4
        assert f"127.0.0.1:{server.port}" in str(down.value) and PASSWORD not in str(down.value)
        started = time.monotonic()
        with pytest.raises(StorageUnavailable):
            database.get_key("t1")                    # known down: fails fast
        assert time.monotonic() - started < 1
        server.start()
        assert _eventually(lambda: database.migrate() == LATEST, within=10)
    finally:
        database.close()
    assert PASSWORD not in caplog.text
    assert "unreachable" in caplog.text and "reachable again" in caplog.text


def test_postgres_restart_fails_no_call_on_stale_connections(server):
    server.start()
    database = open_database(server.url, LOG)
    try:
        database.migrate()
        database.insert_key(key("t1"))
        threads = [threading.Thread(target=lambda: [database.get_key("t1") for _ in range(30)]) for _ in range(6)]
        [thread.start() for thread in threads]
        [thread.join() for thread in threads]
        server.stop()
        server.start()
        assert database.get_key("t1") == key("t1")   # a stale connection is retried on a fresh one
        assert database.get_key("t1") == key("t1")
        server.stop()
        with pytest.raises(StorageUnavailable):
            database.get_key("t1")
        server.start()
        assert _eventually(lambda: database.get_key("t1") == key("t1"), within=10)
    finally:
        database.close()


def test_postgres_statement_timeout_is_storage_unavailable():
    with isolated_postgres_url() as url:
        database = PostgresDatabase(url, LOG, statement_timeout=0.5)
        try:
            database.migrate()
            database.insert_key(key("t1"))
            with psycopg.connect(url) as locker:
                locker.execute("SELECT * FROM virtual_keys WHERE token = 't1' FOR UPDATE")
                started = time.monotonic()
                with pytest.raises(StorageUnavailable, match="statement timeout"):
                    database.update_key("t1", {"rpm_limit": 1})
                assert time.monotonic() - started < 3
            assert database.update_key("t1", {"rpm_limit": 2}).rpm_limit == 2
        finally:
            database.close()


UNDER_GEVENT = """
from gevent import monkey; monkey.patch_all()
import json, logging, sys, time
import gevent, psycopg
from gateway.store.database import open_database
from gateway.types import KeyRecord

database = open_database(sys.argv[1], logging.getLogger("g"))
database.migrate()
database.insert_key(KeyRecord(token="t1", key_name="sk-...t1"))
database.insert_key(KeyRecord(token="t2", key_name="sk-...t2"))
locker = psycopg.connect(sys.argv[1])
locker.execute("SELECT * FROM virtual_keys WHERE token = 't1' FOR UPDATE")
ticks, lookups = [0], []

def tick():
    while True:
        gevent.sleep(0.01)
        ticks[0] += 1

def look_up():
    gevent.sleep(0.2)
    started = time.monotonic()
    database.get_key("t2")
    lookups.append(time.monotonic() - started)

def release():
    gevent.sleep(1.0)
    locker.rollback()

gevent.spawn(tick), gevent.spawn(look_up), gevent.spawn(release)
started = time.monotonic()
database.update_key("t1", {"rpm_limit": 3})        # waits on the row lock for ~1 s
print(json.dumps({"blocked": time.monotonic() - started, "ticks": ticks[0], "lookups": lookups}))
"""


def test_a_slow_postgres_call_does_not_block_other_greenlets():
    with isolated_postgres_url() as url:
        done = subprocess.run([sys.executable, "-c", UNDER_GEVENT, url], cwd=ROOT, capture_output=True,
                              text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    assert seen["blocked"] >= 0.9, seen
    assert seen["ticks"] >= 40, seen                            # the other greenlets ran meanwhile
    assert seen["lookups"] and seen["lookups"][0] < 0.5, seen   # and so did a lookup, on another connection


def _eventually(check, *, within: float) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            if check():
                return True
        except StorageUnavailable:
            pass
        time.sleep(0.1)
    return False


# --- shin-gateway db upgrade -----------------------------------------------------------------

def test_db_upgrade_creates_the_schema_and_prints_its_version(tmp_path, capsys):
    config = tmp_path / "config.yaml"
    config.write_text("model_list: []\ngeneral_settings:\n  database_url: sqlite:///data/keys.db\n")
    assert cli(["db", "upgrade", "--config", str(config)]) == 0
    assert f"schema version {LATEST}" in capsys.readouterr().out
    assert (tmp_path / "data" / "keys.db").exists()
    assert cli(["db", "upgrade", "--config", str(config)]) == 0     # again: nothing to do


def test_db_upgrade_on_postgres_and_when_it_is_unreachable(tmp_path, capsys):
    config = tmp_path / "config.yaml"
    with isolated_postgres_url() as url:
        config.write_text(f"model_list: []\ngeneral_settings:\n  database_url: '{url}'\n")
        assert cli(["db", "upgrade", "--config", str(config)]) == 0
        with psycopg.connect(url) as connection:
            assert connection.execute("SELECT MAX(version) FROM schema_version").fetchone() == (LATEST,)
    capsys.readouterr()
    port = free_port()
    config.write_text(f"model_list: []\ngeneral_settings:\n  database_url: "
                      f"postgresql://gw:{PASSWORD}@127.0.0.1:{port}/gw\n")
    assert cli(["db", "upgrade", "--config", str(config)]) == 1
    err = capsys.readouterr().err
    assert f"127.0.0.1:{port}" in err and "unavailable" in err and PASSWORD not in err


def test_sqlite_keeps_its_wal_from_growing_while_two_workers_write(tmp_path):
    from gateway.store.sqlite import SqliteDatabase

    path = tmp_path / "gateway.db"
    first, second = (SqliteDatabase(path, logging.getLogger("test"), checkpoint_every=0.0) for _ in range(2))
    try:
        first.migrate()
        for batch in range(20):
            writer = first if batch % 2 else second
            writer.write_spend([spend(f"r{batch}-{i}", key_token=None) for i in range(200)])
            assert Path(f"{path}-wal").stat().st_size == 0      # truncated after each checkpoint
        assert first.global_spend()["requests"] == 4000
    finally:
        first.close()
        second.close()
