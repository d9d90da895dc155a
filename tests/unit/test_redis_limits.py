"""gateway/store/redis_limits.py: key limits exact across instances through Redis, per instance without it.

Every test talks to a redis-server of its own (tests/functional/redis_server.py),
never to the machine's Redis. Two RedisLimits objects over one URL are two
gateway instances; each has its own embedded state (a private segment) to fall
back on. Times are given explicitly: `now` is an argument of every call, and
the fallback's once-a-second retry reads the `clock` the test hands in.
"""
from __future__ import annotations

import logging
from collections import Counter
import socket
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from pathlib import Path

import pytest
import redis

from gateway.store.redis_limits import OUTAGE_RETRY, TTL, RedisLimits
from gateway.store.shared_memory import SharedMemoryState
from gateway.types import Ask, Verdict
from tests.functional.redis_server import PASSWORD, RedisServer
from tests.unit.limit_model import LimitModel, compare, run

LOGGER = "tests.redis_limits"
NOW = 1_700_000_020.0           # 40 s into a minute (2023-11-14T22:13:40Z)
LEASE = 60.0


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    running = RedisServer(tmp_path_factory.mktemp("redis-limits")).start()
    yield running
    running.stop()


@pytest.fixture
def own_server(tmp_path):
    """A server the test may stop and start again."""
    running = RedisServer(tmp_path).start()
    yield running
    running.stop()


@pytest.fixture
def log(caplog) -> logging.Logger:
    caplog.set_level(logging.INFO, logger=LOGGER)
    return logging.getLogger(LOGGER)


class Clock:
    def __init__(self, now: float = NOW):
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def instance(server, log):
    """instance(url=server.url, prefix=…, clock=…) → (RedisLimits, its own local limits). One prefix per test."""
    prefix = f"test:{uuid.uuid4().hex[:8]}:"
    made = []

    def make(url: str = server.url, clock=time.time, prefix: str = prefix):
        segment = SharedMemoryState.private()
        local = segment.limits()
        limits = RedisLimits(local, url, log, prefix=prefix, clock=clock)
        made.append((limits, segment))
        return limits, local

    yield make
    for limits, segment in made:
        limits.close()
        segment.close()


@pytest.fixture
def client(server):
    with redis.Redis.from_url(server.url, decode_responses=True) as connection:
        yield connection


def ask(name="k", rpm=None, tpm=None, parallel=None, budget=None, period=0.0, base_spend=0.0, tokens=0,
        cost=0.0) -> Ask:
    return Ask(name, rpm, tpm, parallel, budget, period, base_spend, tokens, cost)


def lease() -> str:
    return uuid.uuid4().hex


# --- exact across instances ------------------------------------------------------------------

def test_rpm_is_exact_with_50_concurrent_reserves_over_two_instances(instance):
    instances = [instance()[0], instance()[0]]
    asks = [ask(rpm=5)]
    start = threading.Barrier(50)
    verdicts: list[Verdict] = []

    def call(number: int):
        start.wait()
        verdicts.append(instances[number % 2].reserve(asks, NOW, lease(), NOW + LEASE))

    threads = [threading.Thread(target=call, args=(number,)) for number in range(50)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    granted = [verdict for verdict in verdicts if verdict.ok]
    assert len(granted) == 5
    assert sorted(verdict.remaining_requests for verdict in granted) == [0, 1, 2, 3, 4]
    refused = {(v.refused_by, v.name, v.retry_after, v.remaining_requests) for v in verdicts if not v.ok}
    assert refused == {("rpm", "k", 20.0, 0)}
    for limits in instances:
        assert limits.status() == {"limits": "ok"}


def test_parallel_is_exact_under_concurrency_and_settling_frees_a_slot(instance):
    instances = [instance()[0], instance()[0]]
    asks = [ask(parallel=3)]
    start = threading.Barrier(50)
    granted: list[str] = []

    def call(number: int):
        start.wait()
        held = lease()
        if instances[number % 2].reserve(asks, NOW, held, NOW + LEASE).ok:
            granted.append(held)

    threads = [threading.Thread(target=call, args=(number,)) for number in range(50)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(granted) == 3
    refused = instances[0].reserve(asks, NOW + 1, lease(), NOW + LEASE)
    assert (refused.ok, refused.refused_by, refused.retry_after) == (False, "parallel", 1.0)
    instances[1].settle(asks, granted[0], 0, 0.0, NOW + 1)     # settled by another instance than reserved it
    assert instances[0].reserve(asks, NOW + 1, lease(), NOW + LEASE).ok
    assert not instances[1].reserve(asks, NOW + 1, lease(), NOW + LEASE).ok


# --- each branch of the algorithm ------------------------------------------------------------

def test_tpm_holds_estimates_counts_usage_and_lets_a_lone_request_through(instance):
    limits, _ = instance()
    first = lease()
    verdict = limits.reserve([ask(tpm=100, tokens=60)], NOW, first, NOW + LEASE)
    assert verdict == Verdict(True, None, None, 0.0, None, 40, 0.0)
    verdict = limits.reserve([ask(tpm=100, tokens=60)], NOW, lease(), NOW + LEASE)
    assert verdict == Verdict(False, "tpm", "k", 20.0, None, 40, 0.0)
    limits.settle([ask(tpm=100, tokens=60)], first, 30, 0.0, NOW + 1)          # used less than it held
    second = lease()
    assert limits.reserve([ask(tpm=100, tokens=60)], NOW + 1, second, NOW + LEASE).remaining_tokens == 10
    limits.settle([ask(tpm=100, tokens=60)], second, 50, 0.0, NOW + 2)
    # 80 used, nothing in flight: a request estimated over the rest still goes, alone
    alone = lease()
    assert limits.reserve([ask(tpm=100, tokens=500)], NOW + 2, alone, NOW + LEASE).remaining_tokens == 0
    assert limits.reserve([ask(tpm=100, tokens=0)], NOW + 2, lease(), NOW + LEASE).refused_by == "tpm"
    limits.settle([ask(tpm=100, tokens=500)], alone, 40, 0.0, NOW + 3)
    # 120 used: not even a lone request until the next minute
    verdict = limits.reserve([ask(tpm=100, tokens=0)], NOW + 3, lease(), NOW + LEASE)
    assert (verdict.refused_by, verdict.remaining_tokens, verdict.retry_after) == ("tpm", 0, 17.0)
    assert limits.reserve([ask(tpm=100, tokens=0)], NOW + 20, lease(), NOW + LEASE).ok


def test_a_spent_limit_refuses_even_a_request_estimated_at_nothing(instance):
    limits, _ = instance()
    held = lease()
    assert limits.reserve([ask(tpm=100, budget=1.0, tokens=10, cost=0.5)], NOW, held, NOW + LEASE).ok
    assert limits.settle([ask(tokens=10, cost=0.5)], held, 100, 1.0, NOW) == 1.0
    verdict = limits.reserve([ask(tpm=101, budget=1.0)], NOW, lease(), NOW + LEASE)
    assert (verdict.refused_by, verdict.remaining_tokens, verdict.spend) == ("budget", 1, 1.0)
    assert limits.reserve([ask(tpm=100, budget=1.5)], NOW, lease(), NOW + LEASE).refused_by == "tpm"
    assert limits.reserve([ask(tpm=101, budget=1.5)], NOW, lease(), NOW + LEASE).ok


def test_budget_is_seeded_once_per_period_held_by_estimates_and_reset_by_a_new_period(instance):
    limits, _ = instance()
    period_1, period_2 = 1_699_999_000.0, 1_700_000_000.0
    first = lease()
    verdict = limits.reserve([ask(budget=1.0, period=period_1, base_spend=0.5, cost=0.25)], NOW, first, NOW + LEASE)
    assert verdict == Verdict(True, None, None, 0.0, None, None, 0.5)
    # the seed counts only the first time a period is met: a stale base_spend changes nothing
    verdict = limits.reserve([ask(budget=1.0, period=period_1, base_spend=0.0, cost=0.5)], NOW, lease(), NOW + LEASE)
    assert verdict == Verdict(False, "budget", "k", 0.0, None, None, 0.5)
    assert limits.settle([ask(period=period_1, cost=0.25)], first, 0, 0.625, NOW) == 1.125
    # over budget and nothing in flight: refused even alone
    assert limits.reserve([ask(budget=1.0, period=period_1, cost=0.0)], NOW, lease(), NOW + LEASE).refused_by == "budget"
    # a new period starts from the database's spend for it
    late = lease()
    verdict = limits.reserve([ask(budget=1.0, period=period_2, base_spend=0.125, cost=0.25)], NOW, late, NOW + LEASE)
    assert verdict.ok and verdict.spend == 0.125
    # a request of the old period settling now adds nothing to the new period's spend, nor moves it back
    assert limits.settle([ask(period=period_1)], lease(), 0, 0.5, NOW) == 0.125
    assert limits.settle([ask(period=period_2, cost=0.25)], late, 0, 0.375, NOW) == 0.5
    verdict = limits.reserve([ask(budget=1.0, period=period_1, base_spend=0.9)], NOW, lease(), NOW + LEASE)
    assert verdict.spend == 0.5


def test_a_spend_of_decimal_costs_reads_back_as_the_very_double_added(instance):
    limits, _ = instance()
    spend = 0.0
    for cost in (0.1, 0.2, 0.000123, 1 / 3):
        held = lease()
        assert limits.reserve([ask(budget=10.0, cost=cost)], NOW, held, NOW + LEASE).ok
        spend += cost
        assert limits.settle([ask(cost=cost)], held, 0, cost, NOW) == spend


def test_asks_are_granted_all_or_none_and_the_first_failing_names_itself(instance):
    limits, _ = instance()
    key, per_model = ask("k", rpm=10, tokens=5), ask("k|m", rpm=1, tokens=5)
    assert limits.reserve([key, per_model], NOW, lease(), NOW + LEASE).remaining_requests == 9
    verdict = limits.reserve([key, per_model], NOW, lease(), NOW + LEASE)
    assert verdict == Verdict(False, "rpm", "k|m", 20.0, 9, None, 0.0)
    # the refused request took nothing from the key: one request so far, one in flight
    assert limits.reserve([key], NOW, lease(), NOW + LEASE).remaining_requests == 8
    limited = ask("k", parallel=2)
    assert limits.reserve([limited], NOW, lease(), NOW + LEASE).refused_by == "parallel"
    # in order: the key's own limit refuses first
    verdict = limits.reserve([ask("k", rpm=2), per_model], NOW, lease(), NOW + LEASE)
    assert (verdict.refused_by, verdict.name) == ("rpm", "k")


def test_the_checks_of_one_ask_go_rpm_tpm_parallel_budget(instance):
    limits, _ = instance()
    limits.reserve([ask(tokens=10, cost=1.0)], NOW, lease(), NOW + LEASE)
    everything = dict(rpm=1, tpm=5, parallel=1, budget=0.5, tokens=10, cost=1.0)
    assert limits.reserve([ask(**everything)], NOW, lease(), NOW + LEASE).refused_by == "rpm"
    assert limits.reserve([ask(**everything | {"rpm": 9})], NOW, lease(), NOW + LEASE).refused_by == "tpm"
    assert limits.reserve([ask(**everything | {"rpm": 9, "tpm": 99})], NOW, lease(), NOW + LEASE).refused_by == "parallel"
    verdict = limits.reserve([ask(**everything | {"rpm": 9, "tpm": 99, "parallel": 9})], NOW, lease(), NOW + LEASE)
    assert verdict == Verdict(False, "budget", "k", 0.0, 8, 89, 0.0)


def test_an_expired_lease_frees_what_a_dead_instance_held(instance):
    dead, _ = instance()
    alive, _ = instance()
    orphan = lease()
    asks = [ask(tpm=100, parallel=1, budget=1.0, tokens=40, cost=0.75)]
    assert dead.reserve(asks, NOW, orphan, NOW + 30).ok
    dead.close()
    verdict = alive.reserve(asks, NOW + 10, lease(), NOW + 40)
    assert (verdict.refused_by, verdict.remaining_tokens) == ("parallel", 60)
    assert alive.reserve([ask(budget=1.0, cost=0.5)], NOW + 10, lease(), NOW + 40).refused_by == "budget"
    verdict = alive.reserve(asks, NOW + 30, lease(), NOW + 60)       # the lease ran out at NOW + 30
    assert verdict.ok and verdict.remaining_tokens == 60
    # settling the expired lease late still counts its usage, and releases nobody else's hold
    assert alive.settle(asks, orphan, 15, 0.125, NOW + 31) == 0.125
    verdict = alive.reserve(asks, NOW + 31, lease(), NOW + 60)
    assert (verdict.refused_by, verdict.remaining_tokens) == ("parallel", 45)


def test_a_new_minute_resets_requests_and_tokens_and_a_slow_clock_never_moves_it_back(instance):
    fast, _ = instance()
    slow, _ = instance()
    asks = [ask(rpm=2, tpm=100, tokens=10)]
    end_of_minute = NOW + 19.5
    for _ in range(2):
        held = lease()
        fast.reserve(asks, end_of_minute, held, end_of_minute + LEASE)
        fast.settle(asks, held, 40, 0.0, end_of_minute)
    verdict = fast.reserve(asks, end_of_minute, lease(), end_of_minute + LEASE)
    assert (verdict.refused_by, verdict.retry_after, verdict.remaining_requests, verdict.remaining_tokens) == \
        ("rpm", 0.5, 0, 20)
    verdict = fast.reserve(asks, NOW + 20, lease(), NOW + 20 + LEASE)
    assert (verdict.ok, verdict.remaining_requests, verdict.remaining_tokens) == (True, 1, 90)
    verdict = slow.reserve(asks, NOW + 19.9, lease(), NOW + 19.9 + LEASE)   # still the old minute by its clock
    assert (verdict.ok, verdict.remaining_requests, verdict.remaining_tokens) == (True, 0, 80)
    assert fast.reserve(asks, NOW + 21, lease(), NOW + 21 + LEASE).refused_by == "rpm"


def test_every_key_expires_and_the_constructor_does_not_talk_to_redis(instance, client):
    limits, _ = instance(prefix="ttl-check:")
    held = lease()
    limits.reserve([ask("k", tokens=3, cost=0.5), ask("k|m")], NOW, held, NOW + 3 * 86400)
    keys = sorted(client.scan_iter("ttl-check:*"))
    assert keys == ["ttl-check:held:k", "ttl-check:held:k|m", "ttl-check:leases:k", "ttl-check:leases:k|m",
                    "ttl-check:row:k", "ttl-check:row:k|m"]
    for key in keys:
        assert 3 * 86400 < client.ttl(key) <= 3 * 86400 + 60     # a long lease keeps its keys at least as long
    limits.settle([ask("k"), ask("k|m")], held, 3, 0.5, NOW)
    assert sorted(client.scan_iter("ttl-check:*")) == ["ttl-check:row:k", "ttl-check:row:k|m"]
    assert TTL - 5 < client.ttl("ttl-check:row:k") <= TTL
    assert client.hgetall("ttl-check:row:k") == {
        "minute": str(int(NOW // 60)), "requests": "1", "tokens": "3", "period": "0", "spend": "0.5",
        "reserved_tokens": "0", "reserved_cost": "0"}
    started = time.monotonic()
    nowhere, _ = instance(url=f"redis://127.0.0.1:{_closed_port()}/0")     # built without a word to Redis
    assert time.monotonic() - started < 0.1
    assert nowhere.status()["limits"].startswith("unreachable since ")     # readiness asks Redis itself


def test_readiness_follows_redis_back_without_any_key_traffic(tmp_path, caplog):
    server = RedisServer(tmp_path).start()
    clock = Clock()
    limits = RedisLimits(SharedMemoryState.private().limits(), server.url, logging.getLogger("test"), clock=clock)
    try:
        assert limits.status() == {"limits": "ok"}
        server.stop()
        clock.now += OUTAGE_RETRY
        assert limits.status()["limits"].startswith("unreachable since ")
        server.start()
        clock.now += OUTAGE_RETRY
        assert limits.status() == {"limits": "ok"}
    finally:
        limits.close()
        server.stop()


def test_a_redis_that_forgot_the_scripts_gets_them_again(instance, client):
    limits, _ = instance()
    assert limits.reserve([ask(rpm=2)], NOW, lease(), NOW + LEASE).ok
    client.script_flush()
    assert limits.reserve([ask(rpm=2)], NOW, lease(), NOW + LEASE).remaining_requests == 0
    assert limits.status() == {"limits": "ok"}


def test_a_reserve_and_a_settle_are_one_script_call_each(instance, client):
    limits, _ = instance()
    asks = [ask("k", rpm=9, tokens=5), ask("k|m", tpm=99, tokens=5)]
    warm = lease()
    limits.reserve(asks, NOW, warm, NOW + LEASE)                   # loads the scripts
    limits.settle(asks, warm, 1, 0.0, NOW)
    client.config_resetstat()
    held = lease()
    limits.reserve(asks, NOW, held, NOW + LEASE)
    limits.settle(asks, held, 1, 0.0, NOW)
    stats = client.info("commandstats")
    assert stats["cmdstat_evalsha"]["calls"] == 2
    assert not {"cmdstat_eval", "cmdstat_script|load", "cmdstat_ping"} & set(stats)


@pytest.mark.parametrize("background", [False, True], ids=["settled-inline", "settled-in-background"])
def test_greenlets_on_patched_sockets_count_exactly(server, background):
    """Under gevent (as in a gunicorn worker), 50 greenlets over two instances: exactly the limit goes.

    Settled in the background (the gateway's way), a finished request frees its
    slot a moment later, and closing sends every queued settle: no lease is left.
    """
    program = textwrap.dedent("""
        from gevent import monkey; monkey.patch_all()
        import logging, sys, uuid
        import gevent
        from gateway.store.redis_limits import RedisLimits
        from gateway.store.shared_memory import SharedMemoryState
        from gateway.types import Ask
        prefix = "greenlets:%s:" % uuid.uuid4().hex
        pair = [RedisLimits(SharedMemoryState.private().limits(), sys.argv[1], logging.getLogger(), prefix=prefix,
                            background=sys.argv[2] == "1") for _ in range(2)]
        now = 1_700_000_020.0
        flying = peak = 0
        def request(number, asks):
            global flying, peak
            limits, held = pair[number % 2], uuid.uuid4().hex
            if not limits.reserve(asks, now, held, now + 60).ok:
                return 0
            counted = asks is at_once
            flying += counted
            peak = max(peak, flying)
            gevent.sleep(0.05)
            flying -= counted
            limits.settle(asks, held, 0, 0.0, now)
            return 1
        per_minute = [Ask("rpm", 5, None, None, None, 0.0, 0.0, 0, 0.0)]
        at_once = [Ask("parallel", None, None, 2, None, 0.0, 0.0, 0, 0.0)]
        jobs = [gevent.spawn(request, number, asks) for number in range(50) for asks in (per_minute, at_once)]
        gevent.joinall(jobs, raise_error=True)
        granted = sum(job.value for job in jobs[::2])
        served = sum(job.value for job in jobs[1::2])
        statuses = [pair[0].status()["limits"], pair[1].status()["limits"]]
        for limits in pair:
            limits.close()
        import redis
        left = redis.Redis.from_url(sys.argv[1]).zcard(prefix + "leases:parallel")
        print(granted, peak, served, left, *statuses)
    """)
    result = subprocess.run([sys.executable, "-c", program, server.url, "1" if background else "0"],
                            capture_output=True, text=True, timeout=60, cwd=Path(__file__).resolve().parents[2])
    assert result.returncode == 0, result.stderr
    granted, peak, served, left, *statuses = result.stdout.split()
    assert (granted, statuses) == ("5", ["ok", "ok"])
    assert peak == "2"      # never more than 2 in flight, and 2 at some moment
    assert int(served) >= 2 and left == "0"     # every settle reached Redis


# --- without Redis ---------------------------------------------------------------------------

def test_an_outage_falls_back_to_the_instance_logs_once_retries_once_a_second_and_recovers(
        own_server, instance, caplog):
    clock = Clock()
    limits, local = instance(url=own_server.url, clock=clock)
    in_redis = lease()
    assert limits.reserve([ask(parallel=5, rpm=3)], NOW, in_redis, NOW + LEASE).remaining_requests == 2
    own_server.stop()

    locally = lease()
    verdict = limits.reserve([ask(parallel=5, rpm=3)], NOW, locally, NOW + LEASE)
    assert verdict.ok and verdict.remaining_requests == 2        # this instance's count: its first request
    status = limits.status()["limits"]
    assert status.startswith("unreachable since 2023-11-14T22:13:40+00:00: ConnectionError")
    assert status.endswith(", enforcing per instance")
    warnings = [record for record in caplog.records if record.name == LOGGER and record.levelno == logging.WARNING]
    assert len(warnings) == 1
    message = warnings[0].getMessage()
    assert "127.0.0.1" in message and "***@" in message and PASSWORD not in message
    assert PASSWORD not in status

    own_server.start()                      # back, but within the second after the failure: not tried yet
    clock.now += 0.5
    assert limits.reserve([ask(parallel=5, rpm=3)], NOW, lease(), NOW + LEASE).remaining_requests == 1
    assert limits.status()["limits"].startswith("unreachable")
    assert len([r for r in caplog.records if r.name == LOGGER and r.levelno == logging.WARNING]) == 1

    clock.now += 0.6
    verdict = limits.reserve([ask(parallel=5, rpm=3)], NOW, lease(), NOW + LEASE)
    assert verdict.ok and verdict.remaining_requests == 2         # Redis's count again (a fresh server)
    assert limits.status() == {"limits": "ok"}
    infos = [record.getMessage() for record in caplog.records if record.name == LOGGER and record.levelno == logging.INFO]
    assert len(infos) == 1 and "reachable again" in infos[0] and PASSWORD not in infos[0]

    # a lease reserved on the instance is settled there, Redis or not: it frees one of the instance's two
    limits.settle([ask(parallel=5, rpm=3)], locally, 7, 0.0, NOW)
    assert local.reserve([ask(parallel=2)], NOW, lease(), NOW + LEASE).ok
    assert local.reserve([ask(parallel=2)], NOW, lease(), NOW + LEASE).refused_by == "parallel"


def test_a_redis_lease_settled_during_an_outage_counts_locally_without_freeing_another_hold(
        own_server, instance):
    clock = Clock()
    limits, local = instance(url=own_server.url, clock=clock)
    period = 1_700_000_000.0
    asks = [ask(parallel=1, budget=1.0, period=period, base_spend=0.25, cost=0.125)]
    in_redis = lease()
    assert limits.reserve(asks, NOW, in_redis, NOW + LEASE).ok
    own_server.stop()
    assert limits.reserve(asks, NOW, lease(), NOW + LEASE).ok               # the instance's only slot
    assert limits.settle(asks, in_redis, 10, 0.5, NOW) == 0.75               # counted on the instance
    verdict = limits.reserve(asks, NOW, lease(), NOW + LEASE)
    assert (verdict.ok, verdict.refused_by, verdict.spend) == (False, "parallel", 0.75)


def test_a_redis_that_accepts_but_never_answers_costs_a_request_a_fraction_of_a_second(instance):
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        limits, _ = instance(url=f"redis://127.0.0.1:{silent.getsockname()[1]}/0")
        started = time.monotonic()
        assert limits.reserve([ask(rpm=1)], NOW, lease(), NOW + LEASE).ok
        assert time.monotonic() - started < 1.0
        assert "TimeoutError" in limits.status()["limits"]
        started = time.monotonic()
        assert limits.reserve([ask(rpm=1)], NOW, lease(), NOW + LEASE).refused_by == "rpm"   # local, at once
        assert time.monotonic() - started < 0.05


# --- the model -------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5])
def test_redis_answers_a_random_run_exactly_as_the_model(instance, seed):
    limits, _ = instance()
    granted = compare(limits, seed, ops=300, prefix=f"seed{seed}")
    assert granted > 20
    assert limits.status() == {"limits": "ok"}


def test_the_random_run_reaches_every_refusal_and_expiry():
    """The run is worth comparing on: it refuses by each limit, by a second ask, and lets leases run out."""
    verdicts = []
    for seed in (1, 2, 3, 4, 5):
        model = LimitModel()
        verdicts += [answer for kind, _, answer in run(model, seed) if kind == "reserve"]
        assert model.expired > 10
    refusals = Counter((verdict.refused_by, verdict.name) for verdict in verdicts)
    assert {limit for limit, _ in refusals} == {None, "rpm", "tpm", "parallel", "budget"}
    assert refusals["rpm", "key-a|model"] > 0 and refusals["tpm", "key-a|model"] > 0


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
