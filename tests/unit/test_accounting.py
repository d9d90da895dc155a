"""gateway/accounting.py: cost, and the SpendWriter's batches, order, outages, overflow and graceful stop.

The database is an in-test stand-in that records what `write_spend` received
(the SQL stores have their own tests); everything else is the real writer,
under real gevent.
"""
from __future__ import annotations

import logging

import gevent
import gevent.event
import pytest

from gateway.accounting import SpendWriter, cost_of
from gateway.errors import StorageUnavailable
from gateway.types import Deployment, SpendRow, Usage

SECRET_TOKEN = "f" * 64


def row(n: int) -> SpendRow:
    return SpendRow(id=f"row-{n}", request_id=f"req-{n}", key_token=SECRET_TOKEN, key_alias="team-a",
                    user_id="u", team_id="t", model_group="m", deployment_id="d", prompt_tokens=n,
                    completion_tokens=1, cost=0.5, latency_ms=3, status=200, started_at=1.0)


class FakeDatabase:
    """Takes spend rows; fails the next `failures` writes; can hold a write open until released."""

    def __init__(self, failures: int = 0, error: Exception | None = None, hold: bool = False):
        self.batches: list[list[str]] = []
        self.failures = failures
        self.error = error or StorageUnavailable("the database is unreachable")
        self.attempts = 0
        self.writing = gevent.event.Event()
        self.release = gevent.event.Event()
        if not hold:
            self.release.set()

    def write_spend(self, rows):
        self.attempts += 1
        self.writing.set()
        gevent.sleep(0)          # a real driver yields to other greenlets while it waits on the network
        self.release.wait()
        if self.failures:
            self.failures -= 1
            raise self.error
        self.batches.append([r.id for r in rows])

    @property
    def written(self) -> list[str]:
        return [rid for batch in self.batches for rid in batch]


class FakeTime:
    """A clock that moves only when the writer sleeps: retries and timeouts without waiting."""

    def __init__(self):
        self.now = 0.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        gevent.sleep(0)


@pytest.fixture
def log():
    return logging.getLogger("test.accounting")


def writer(database, log, fake_time=None, **kw) -> SpendWriter:
    if fake_time is not None:
        kw.update(sleep=fake_time.sleep, clock=fake_time.clock)
    return SpendWriter(database, log, **kw)


def messages(caplog, level) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == level and r.name == "test.accounting"]


def wait_until(predicate, timeout=5.0):
    with gevent.Timeout(timeout, AssertionError("condition not reached")):
        while not predicate():
            gevent.sleep(0.005)


# --- cost ---------------------------------------------------------------------------------------

def test_cost_is_usage_times_the_deployment_prices():
    deployment = Deployment(id="d", model_name="m", provider="openai", upstream_model="x",
                            input_cost_per_token=0.000002, output_cost_per_token=0.00001)
    assert cost_of(deployment, Usage(1000, 200, 1200)) == pytest.approx(0.002 + 0.002)
    assert cost_of(deployment, None) == 0.0
    assert cost_of(None, Usage(1, 1, 2)) == 0.0
    free = Deployment(id="d", model_name="m", provider="openai", upstream_model="x")
    assert cost_of(free, Usage(1000, 200, 1200)) == 0.0


# --- batches and order ----------------------------------------------------------------------------

def test_rows_are_written_in_batches_in_the_order_added(log):
    database = FakeDatabase()
    spend = writer(database, log, batch=3)
    for n in range(7):
        spend.add(row(n))
    assert spend.pending == 7
    assert spend.flush(timeout=5) is True
    assert database.batches == [["row-0", "row-1", "row-2"], ["row-3", "row-4", "row-5"], ["row-6"]]
    assert spend.pending == 0 and spend.dropped == 0


def test_the_greenlet_writes_what_requests_queue(log):
    database = FakeDatabase()
    spend = writer(database, log, batch=2, interval=0.01).start()
    try:
        for n in range(5):
            spend.add(row(n))
        wait_until(lambda: spend.pending == 0)
        assert database.written == [f"row-{n}" for n in range(5)]
        assert all(len(batch) <= 2 for batch in database.batches)
        spend.add(row(5))
        wait_until(lambda: spend.pending == 0)
        assert database.written[-1] == "row-5"
    finally:
        spend.close(timeout=5)


def test_flushing_an_empty_queue_writes_nothing(log):
    database = FakeDatabase()
    assert writer(database, log).flush(timeout=1) is True
    assert database.attempts == 0


# --- outages -----------------------------------------------------------------------------------

def test_an_outage_keeps_the_rows_retries_with_growing_pauses_and_logs_once_each_way(log, caplog):
    caplog.set_level(logging.INFO, logger="test.accounting")
    database = FakeDatabase(failures=6)
    fake = FakeTime()
    spend = writer(database, log, fake, batch=2)
    for n in range(3):
        spend.add(row(n))
    assert spend.flush(timeout=60) is True
    assert fake.sleeps == [1.0, 2.0, 4.0, 5.0, 5.0, 5.0]
    assert database.written == ["row-0", "row-1", "row-2"]        # each once, in order
    warnings, infos = messages(caplog, logging.WARNING), messages(caplog, logging.INFO)
    assert len(warnings) == 1 and "unreachable" in warnings[0]
    assert len(infos) == 1 and "again" in infos[0]
    logged = " ".join(warnings + infos)
    assert SECRET_TOKEN not in logged and "row-" not in logged and "team-a" not in logged


def test_the_pause_starts_over_after_a_recovery(log, caplog):
    caplog.set_level(logging.INFO, logger="test.accounting")
    database = FakeDatabase(failures=2)
    fake = FakeTime()
    spend = writer(database, log, fake)
    spend.add(row(0))
    assert spend.flush(timeout=60)
    database.failures = 1
    spend.add(row(1))
    assert spend.flush(timeout=60)
    assert fake.sleeps == [1.0, 2.0, 1.0]
    assert len(messages(caplog, logging.WARNING)) == 2 and len(messages(caplog, logging.INFO)) == 2


def test_an_unexpected_error_is_an_outage_too_and_its_text_is_not_logged(log, caplog):
    caplog.set_level(logging.INFO, logger="test.accounting")
    database = FakeDatabase(failures=1, error=RuntimeError(f"duplicate row for {SECRET_TOKEN}"))
    spend = writer(database, log, FakeTime())
    spend.add(row(0))
    assert spend.flush(timeout=60)
    assert database.written == ["row-0"]
    warnings = messages(caplog, logging.WARNING)
    assert len(warnings) == 1 and "RuntimeError" in warnings[0] and SECRET_TOKEN not in warnings[0]


def test_flush_gives_up_at_its_timeout_and_keeps_the_rows(log):
    database = FakeDatabase(failures=10_000)
    fake = FakeTime()
    spend = writer(database, log, fake)
    spend.add(row(0))
    spend.add(row(1))
    assert spend.flush(timeout=12) is False
    assert fake.now == pytest.approx(12)
    assert spend.pending == 2 and database.written == []
    database.failures = 0
    assert spend.flush(timeout=12) is True
    assert database.written == ["row-0", "row-1"]


def test_the_greenlet_retries_until_the_database_is_back(log, caplog):
    caplog.set_level(logging.INFO, logger="test.accounting")
    database = FakeDatabase(failures=3)
    fake = FakeTime()
    spend = writer(database, log, fake, interval=0.01).start()
    try:
        spend.add(row(0))
        wait_until(lambda: spend.pending == 0)
        assert database.written == ["row-0"] and database.attempts == 4
        assert [s for s in fake.sleeps if s >= 1] == [1.0, 2.0, 4.0]
        assert len(messages(caplog, logging.INFO)) == 1
    finally:
        spend.close(timeout=5)


# --- a full queue ----------------------------------------------------------------------------------

def test_a_full_queue_drops_the_oldest_counts_them_and_warns_once(log, caplog):
    caplog.set_level(logging.INFO, logger="test.accounting")
    database = FakeDatabase()
    spend = writer(database, log, max_queue=5)
    for n in range(8):
        spend.add(row(n))
    assert spend.dropped == 3 and spend.pending == 5
    assert len(messages(caplog, logging.WARNING)) == 1
    assert spend.flush(timeout=5)
    assert database.written == [f"row-{n}" for n in range(3, 8)]
    for n in range(8, 14):          # a second episode, after the queue drained: warned again
        spend.add(row(n))
    assert spend.dropped == 4 and len(messages(caplog, logging.WARNING)) == 2


def test_rows_that_fail_while_the_queue_fills_stay_within_the_bound(log):
    database = FakeDatabase(failures=1, hold=True)
    spend = writer(database, log, FakeTime(), max_queue=4, batch=2)
    for n in range(4):
        spend.add(row(n))
    flushing = gevent.spawn(spend.flush, 60)
    database.writing.wait()           # rows 0 and 1 are being written (and will fail)
    for n in range(4, 7):
        spend.add(row(n))
    database.release.set()
    assert flushing.get(timeout=5) is True      # what was queued when it was called has left the queue
    assert spend.flush(timeout=60) is True and spend.pending == 0
    assert database.written == ["row-3", "row-4", "row-5", "row-6"]
    assert spend.dropped == 3                   # rows 0 to 2: the oldest


# --- graceful stop and concurrency -------------------------------------------------------------------

def test_close_stops_the_greenlet_and_flushes(log):
    database = FakeDatabase()
    spend = writer(database, log, interval=60).start()    # the greenlet would not write for a minute
    for n in range(3):
        spend.add(row(n))
    assert spend.close(timeout=5) is True
    assert database.written == ["row-0", "row-1", "row-2"]
    spend.add(row(3))                                      # after close: queued, never an error
    assert spend.pending == 1


def test_close_while_the_greenlet_is_writing_writes_each_row_once(log):
    database = FakeDatabase(hold=True)
    spend = writer(database, log, batch=2, interval=0.001).start()
    for n in range(5):
        spend.add(row(n))
    database.writing.wait(timeout=5)
    closing = gevent.spawn(spend.close, 5)
    gevent.sleep(0.01)
    database.release.set()
    assert closing.get(timeout=5) is True
    assert database.written == [f"row-{n}" for n in range(5)]


def test_close_with_the_database_down_says_so(log, caplog):
    caplog.set_level(logging.INFO, logger="test.accounting")
    spend = writer(FakeDatabase(failures=10_000), log, FakeTime())
    spend.add(row(0))
    assert spend.close(timeout=3) is False
    assert any("1 spend rows not written" in m for m in messages(caplog, logging.WARNING))


def test_rows_added_by_many_greenlets_during_flushes_are_each_written_once_in_order(log):
    database = FakeDatabase()
    spend = writer(database, log, batch=7, interval=0.001).start()
    added: list[str] = []
    counter = iter(range(10_000))

    def request(count):
        for _ in range(count):
            r = row(next(counter))
            added.append(r.id)
            spend.add(r)
            gevent.sleep(0)

    requests = [gevent.spawn(request, 50) for _ in range(20)]
    flushes = [gevent.spawn(spend.flush, 5) for _ in range(5)]
    gevent.joinall(requests + flushes, timeout=10, raise_error=True)
    assert spend.close(timeout=5) is True
    assert len(added) == 1000
    assert database.written == added      # none twice, none lost, in the order added
    assert spend.pending == 0 and spend.dropped == 0
