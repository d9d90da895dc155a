"""gateway/store/redis_state.py: instances that share Redis agree on counters and cooldowns, and serve alone
when it is gone.

Two RedisState objects over two different private SharedMemoryStates are two
instances. They talk to the real Redis on 127.0.0.1:6379 (names are unique per
test, so runs never share keys), or to a redis-server this file starts and
stops. `sync()` is one exchange (the sync greenlet's tick): the first one
publishes, the next one reads what the other instances published.
"""
from __future__ import annotations

import logging
import re
import time
import uuid

import gevent
import pytest
import redis

from gateway.store.redis_state import PREFIX, STALE, WORKER_TTL, RedisState
from gateway.store.shared_memory import SharedMemoryState
from gateway.types import Cooldown
from tests.functional.gateway_process import free_port
from tests.functional.redis_server import PASSWORD, RedisServer

REDIS_URL = "redis://127.0.0.1:6379/0"
LOGGER = "tests.redis_state"
UNREACHABLE = re.compile(r"unreachable since \d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00: \S.*, serving on local state")


@pytest.fixture
def log(caplog) -> logging.Logger:
    caplog.set_level(logging.INFO, logger=LOGGER)
    return logging.getLogger(LOGGER)


@pytest.fixture
def instance(log):
    """instance(url=REDIS_URL, interval=...) → a RedisState over its own private shared memory."""
    made: list[RedisState] = []

    def make(url: str = REDIS_URL, interval: float = 60.0) -> RedisState:
        state = RedisState(SharedMemoryState.private(), url, log, interval=interval)
        made.append(state)
        return state

    yield make
    for state in made:
        state.close()


@pytest.fixture
def name() -> str:
    return f"test-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def client():
    with redis.Redis.from_url(REDIS_URL, decode_responses=True) as connection:
        yield connection


def exchange(*states: RedisState) -> None:
    """Everyone publishes, then everyone reads."""
    for state in states:
        assert state.sync()
    for state in states:
        assert state.sync()


def in_future(seconds: float, kind: str = "failure", retry_after: float | None = None) -> Cooldown:
    return Cooldown(time.time() + seconds, kind, retry_after)


@pytest.fixture
def private_redis(tmp_path):
    server = RedisServer(tmp_path).start()
    yield server
    server.stop()


# --- two instances agree ---------------------------------------------------------------------

def test_instances_add_up_each_others_in_flight_and_usage(instance, name):
    a, b = instance(), instance()
    a.begin(name)
    a.begin(name)
    a.add_tokens(name, 50)
    b.begin(name)
    b.add_tokens(name, 7)
    exchange(a, b)
    for state in (a, b):
        seen = state.stats([name])[0]
        assert (seen.in_flight, seen.requests, seen.tokens) == (3, 3, 57)
    a.end(name)
    a.end(name)
    exchange(a, b)
    assert b.stats([name])[0].in_flight == 1
    assert a.stats([name])[0].in_flight == 1
    assert a.stats([name])[0].requests == 3      # ended, but started this minute


def test_latencies_are_averaged_over_instances(instance, name):
    a, b = instance(), instance()
    a.observe_latency(name, 1.0, first_token=False)
    b.observe_latency(name, 3.0, first_token=False)
    b.observe_latency(name, 0.5, first_token=True)
    a.stats([name])
    exchange(a, b)
    for state in (a, b):
        seen = state.stats([name])[0]
        assert seen.latency == pytest.approx(2.0)
        assert seen.ttft == pytest.approx(0.5)


def test_a_cooldown_set_by_one_instance_holds_in_the_other(instance, name, client):
    a, b = instance(), instance()
    cooldown = in_future(30, "auth", retry_after=12.0)
    b.stats([name])                   # b's router routes over this name
    a.cool(name, cooldown)
    assert a.stats([name])[0].cooldown == cooldown      # at once, before any exchange
    assert b.stats([name])[0].cooldown is None
    exchange(a, b)
    assert b.stats([name])[0].cooldown == cooldown
    assert 28_000 < client.pttl(f"{PREFIX}cool:{name}") <= 30_000


def test_a_local_cooldown_holds_while_the_other_instances_counts_are_fresh(instance, name):
    """With counters from another instance in hand, this instance's own new cooldown must still show
    at once (not only after the next exchange brings it back from Redis)."""
    a, b = instance(), instance()
    b.begin(name)
    exchange(a, b)
    assert a.stats([name])[0].in_flight == 1              # b's request, as a sees it
    cooldown = in_future(30)
    assert a.record_failure(name, 1, cooldown) == cooldown
    (stats,) = a.stats([name])
    assert stats.cooldown == cooldown and stats.in_flight == 1


def test_failures_on_two_instances_add_up_to_the_threshold(instance, name, client):
    a, b = instance(), instance()
    cooldown = in_future(20)
    assert a.record_failure(name, 3, cooldown) is None
    assert b.record_failure(name, 3, cooldown) is None
    assert b.record_failure(name, 3, cooldown) is None   # 2 < 3 on b alone
    assert a.stats([name])[0].cooldown is None
    exchange(a, b)
    for state in (a, b):
        assert state.stats([name])[0].cooldown == cooldown
    assert client.exists(f"{PREFIX}fails:{name}") == 0     # the window starts afresh after cooling
    assert a.record_failure(name, 3, in_future(1)) == cooldown


def test_a_cooldown_is_never_shortened(instance, name, client):
    a, b = instance(), instance()
    long = in_future(60, "rate_limit", retry_after=60.0)
    b.stats([name])
    a.cool(name, long)
    exchange(a, b)
    b.cool(name, in_future(5))
    assert b.record_failure(name, 1, in_future(3)) == long
    exchange(a, b)
    assert client.get(f"{PREFIX}cool:{name}").split(" ")[0] == repr(long.until)
    assert client.pttl(f"{PREFIX}cool:{name}") > 55_000
    for state in (a, b):
        assert state.stats([name])[0].cooldown == long


def test_status_is_ok_and_every_key_expires(instance, name, client):
    a, b = instance(), instance()
    a.begin(name)
    a.record_failure(name, 5, in_future(10))
    b.cool(f"{name}-cool", in_future(10))
    exchange(a, b)
    assert a.status() == {"state": "redis", "redis": "ok"}
    assert a.backend == "redis"
    keys = [f"{PREFIX}workers", f"{PREFIX}fails:{name}", f"{PREFIX}cool:{name}-cool",
            *(f"{PREFIX}worker:{state._member}" for state in (a, b))]
    for key in keys:
        assert client.exists(key), key
        assert client.pttl(key) > 0, f"{key} never expires"
    assert client.pttl(f"{PREFIX}worker:{a._member}") <= WORKER_TTL * 1000


def test_a_closed_instance_leaves_nothing_in_flight(instance, name, client):
    a, b = instance(), instance()
    b.begin(name)
    exchange(a, b)
    assert a.stats([name])[0].in_flight == 1
    b.close()
    assert client.exists(f"{PREFIX}worker:{b._member}") == 0
    exchange(a)
    assert a.stats([name])[0].in_flight == 0


def test_a_dead_instance_is_forgotten_after_its_ttl(instance, name):
    a, b = instance(), instance()
    b.begin(name)
    exchange(a, b)
    assert a.stats([name])[0].in_flight == 1
    time.sleep(WORKER_TTL + 0.3)      # b stops syncing, as if killed (its greenlet never gets to run)
    exchange(a)
    assert a.stats([name])[0].in_flight == 0


def test_the_sync_greenlet_pushes_at_once_and_pulls_every_interval(instance, name):
    a, b = instance(interval=0.05), instance(interval=0.05)
    b.stats([name])
    cooldown = in_future(20, "auth")
    a.begin(name)
    assert a.record_failure(name, 1, cooldown) == cooldown
    gevent.sleep(0.4)
    seen = b.stats([name])[0]
    assert seen.cooldown == cooldown
    assert seen.in_flight == 1


def test_a_name_asked_about_first_is_fetched_without_waiting_for_the_tick(instance, name):
    a = instance()
    cooldown = in_future(20)
    a.cool(name, cooldown)
    assert a.sync()
    b = instance(interval=60.0)                  # no tick for a minute
    assert b.stats([name])[0].cooldown is None   # the hot path never waits on Redis...
    gevent.sleep(0.1)
    assert b.stats([name])[0].cooldown == cooldown   # ...but the sync greenlet fetched it straight away


# --- Redis unreachable -----------------------------------------------------------------------

@pytest.mark.parametrize("where", ["nothing listens", "an error reply"])
def test_without_redis_the_hot_path_serves_on_local_state(instance, name, caplog, where):
    if where == "nothing listens":
        url = f"redis://user:{PASSWORD}@127.0.0.1:{free_port()}/0"
    else:
        url = f"redis://intruder:{PASSWORD}@127.0.0.1:6379/0"    # no such user: WRONGPASS
    started = time.monotonic()
    state = instance(url, interval=0.05)
    assert time.monotonic() - started < 1.5
    assert not state.sync()
    began = time.monotonic()
    state.begin(name)
    state.add_tokens(name, 5)
    state.observe_latency(name, 0.2, first_token=False)
    cooldown = in_future(10)
    assert state.record_failure(name, 1, cooldown) == cooldown
    state.cool(f"{name}-b", in_future(10, "auth"))
    seen = state.stats([name, f"{name}-b"])
    state.end(name)
    assert time.monotonic() - began < 0.05
    assert (seen[0].in_flight, seen[0].requests, seen[0].tokens, seen[0].cooldown) == (1, 1, 5, cooldown)
    assert seen[1].cooldown.kind == "auth"
    gevent.sleep(0.3)                 # the greenlet keeps trying, quietly
    status = state.status()
    assert status["state"] == "redis" and UNREACHABLE.fullmatch(status["redis"]), status
    warnings = [r for r in caplog.records if r.name == LOGGER and r.levelno == logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert PASSWORD not in str(status) and PASSWORD not in caplog.text
    state.close()


def test_redis_stopped_mid_run_then_back(instance, name, private_redis, caplog):
    a, b = instance(private_redis.url), instance(private_redis.url)
    a.begin(name)
    exchange(a, b)
    assert b.stats([name])[0].in_flight == 1
    assert a.status()["redis"] == "ok"

    private_redis.stop()
    assert not a.sync() and not b.sync()
    for state in (a, b):
        assert UNREACHABLE.fullmatch(state.status()["redis"]), state.status()
    a.begin(name)
    cooldown = in_future(30, "auth")
    a.cool(name, cooldown)                       # held for Redis until it is back
    assert a.stats([name])[0] [:3] == (2, 2, 0)
    assert a.stats([name])[0].cooldown == cooldown
    assert b.stats([name])[0].in_flight == 1     # a's last report, while it is fresh
    time.sleep(STALE + 0.2)
    assert b.stats([name])[0].in_flight == 0     # then dropped

    private_redis.start()
    exchange(a, b)
    for state in (a, b):
        assert state.status() == {"state": "redis", "redis": "ok"}
    seen = b.stats([name])[0]
    assert seen.in_flight == 2 and seen.cooldown == cooldown
    records = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == LOGGER]
    assert [level for level, _ in records] == [logging.WARNING] * 2 + [logging.INFO] * 2, records
    assert PASSWORD not in caplog.text
    assert f"127.0.0.1:{private_redis.port}" in records[0][1]
