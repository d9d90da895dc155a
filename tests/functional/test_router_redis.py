"""Two gateway instances (2 gevent workers each) sharing Redis: a cooldown caused through one holds in the
other, and a Redis that stops leaves both serving on their local state, saying so in /health/readiness.

Deployment ids carry a random suffix per run, so runs (and other suites using the
same Redis on 127.0.0.1:6379) never share keys. A "weight: 10000" deployment is
its group's first choice, so an instance that did not know of the cooldown would
call it on nearly every request.
"""
from __future__ import annotations

import re
import time
import uuid

import pytest
import requests
import yaml

from .conftest import MASTER_KEY
from .redis_server import PASSWORD, RedisServer
from .router_wire import ENV, Fakes, chat, deployment, pin_workers, routing

SHARED_REDIS = "redis://127.0.0.1:6379/0"
FIRST = 10000
COOLDOWN = 3.0
UNREACHABLE = re.compile(r"unreachable since \S+: \S.*, serving on local state")


@pytest.fixture
def fakes():
    made = Fakes()
    yield made
    made.stop()


@pytest.fixture
def private_redis(tmp_path):
    """A redis-server of this test's own (with a password), which the test stops and starts again."""
    server = RedisServer(tmp_path)
    yield server.start()
    server.stop()


def config(redis_url: str, flaky, steady, run: str) -> str:
    """Group "pooled": flaky-<run> (first choice) and steady-<run>; one retry, so a call still succeeds."""
    return yaml.safe_dump({
        "model_list": [deployment("pooled", f"flaky-{run}", flaky, weight=FIRST),
                       deployment("pooled", f"steady-{run}", steady, weight=1)],
        "router_settings": {"num_retries": 1, "allowed_fails": 2, "cooldown_time": COOLDOWN},
        "general_settings": {"master_key": MASTER_KEY, "redis_url": redis_url},
    }, sort_keys=False)


def served_by(response) -> str:
    return routing(response.headers)["x-litellm-model-id"]


def readiness(gateway) -> tuple[int, dict]:
    """One readiness answer, on a fresh connection (so either worker may give it)."""
    response = requests.get(f"{gateway.url}/health/readiness", headers={"Connection": "close"}, timeout=5)
    return response.status_code, response.json()


def settled_readiness(gateway, check, timeout: float = 5.0, answers: int = 8) -> list[tuple[int, dict]]:
    """Wait until `answers` readiness answers in a row satisfy `check` (every worker agrees); return them."""
    deadline = time.monotonic() + timeout
    streak: list[tuple[int, dict]] = []
    while time.monotonic() < deadline and len(streak) < answers:
        answer = readiness(gateway)
        streak = streak + [answer] if check(answer[1]) else []
        if not streak:
            time.sleep(0.1)
    assert len(streak) >= answers, f"readiness never settled: last answer {answer}"
    return streak


def test_a_cooldown_caused_through_one_instance_holds_in_the_other(fakes, start_gateway):
    run = uuid.uuid4().hex[:10]
    flaky, steady = fakes(2)
    text = config(SHARED_REDIS, flaky, steady, run)
    first, second = start_gateway(text, env=ENV), start_gateway(text, env=ENV)
    a_workers = [connections[0] for connections in pin_workers(first)]
    b_workers = [connections[0] for connections in pin_workers(second)]
    try:
        for gateway in (first, second):
            status, body = readiness(gateway)
            assert status == 200 and body["state_backend"] == "redis" and body["checks"]["redis"] == "ok", body
        for connection in b_workers:     # B serves the group: its first choice is the flaky deployment
            response, body = connection.post(chat("pooled"))
            assert response.status == 200 and served_by(response) == f"flaky-{run}", body
        assert flaky.count() == 2

        flaky.misbehave("status-500")
        for connection in a_workers:     # one failure in each of A's workers: allowed_fails (2) reached
            response, body = connection.post(chat("pooled"))
            assert response.status == 200, body
            assert served_by(response) == f"steady-{run}"
            assert response.headers["x-litellm-attempted-retries"] == "1"
        assert flaky.count() == 4
        cooled_at = flaky.times()[-1]
        flaky.heal()                     # it would answer now: only the cooldown keeps calls away from it
        time.sleep(0.3)                  # a few sync ticks

        calls = 0
        while time.monotonic() < cooled_at + COOLDOWN - 1.0:
            for connection in b_workers:
                response, body = connection.post(chat("pooled"))
                assert response.status == 200, body
                assert served_by(response) == f"steady-{run}", \
                    f"instance B's worker {connection.pid} called a deployment that instance A cooled"
                calls += 1
        assert flaky.count() == 4, "a cooling deployment got calls from instance B"
        assert calls >= 6, f"only {calls} calls during the cooldown: the machine is too slow for this test"

        time.sleep(max(0.0, cooled_at + COOLDOWN + 0.4 - time.monotonic()))
        for connection in b_workers + a_workers:
            response, body = connection.post(chat("pooled"))
            assert response.status == 200, body
            assert served_by(response) == f"flaky-{run}", f"worker {connection.pid}: no calls after the cooldown"
        assert flaky.count() == 8
    finally:
        for connection in a_workers + b_workers:
            connection.close()


def test_redis_stopped_mid_test_leaves_both_instances_serving_on_local_state(fakes, start_gateway, private_redis):
    run = uuid.uuid4().hex[:10]
    flaky, steady = fakes(2)
    text = config(private_redis.url, flaky, steady, run)
    gateways = [start_gateway(text, env=ENV), start_gateway(text, env=ENV)]
    for gateway in gateways:
        pin_workers(gateway)[0][0].close()      # both workers are up
        settled_readiness(gateway, lambda body: body["checks"].get("redis") == "ok")

    private_redis.stop()
    seen_status = set()
    for gateway in gateways:
        answers = settled_readiness(gateway, lambda body: UNREACHABLE.fullmatch(body["checks"].get("redis", "")))
        seen_status |= {status for status, _ in answers}
        assert all(body["state_backend"] == "redis" for _, body in answers)
        assert all(PASSWORD not in str(body) for _, body in answers)
    # The contract answers 503 while a configured Redis is unusable; the detail above is what this file checks.
    print(f"readiness status while Redis is down: {sorted(seen_status)}")

    for gateway in gateways:
        for _ in range(10):
            started = time.monotonic()
            response = requests.post(f"{gateway.url}/v1/chat/completions", json=chat("pooled"), timeout=10,
                                     headers={"Authorization": f"Bearer {MASTER_KEY}", "Connection": "close"})
            assert response.status_code == 200, response.text
            assert time.monotonic() - started < 1.0, "a request waited on the stopped Redis"

    # Cooldowns still work inside each instance: two failures through A's workers cool flaky in both of them.
    a_workers = [connections[0] for connections in pin_workers(gateways[0])]
    try:
        flaky.misbehave("status-500")
        for connection in a_workers:
            response, body = connection.post(chat("pooled"))
            assert response.status == 200 and served_by(response) == f"steady-{run}", body
        failed = flaky.count()
        flaky.heal()
        for connection in a_workers:
            response, body = connection.post(chat("pooled"))
            assert response.status == 200 and served_by(response) == f"steady-{run}", body
        assert flaky.count() == failed
    finally:
        for connection in a_workers:
            connection.close()

    private_redis.start()
    for gateway in gateways:
        settled_readiness(gateway, lambda body: body["checks"].get("redis") == "ok")
        status, body = readiness(gateway)
        assert status == 200, body
        logs = gateway.logs()
        # one warning per worker and per part (router state; key limits, when a probe asked them), for the
        # whole outage: whether a worker's limits were asked while Redis was down depends on the probes' timing
        assert logs.count("serving on this instance's router state") == 2, logs
        assert logs.count("key limits are enforced per instance") <= 2, logs
        assert logs.count("router state is shared with other instances") == 2, logs
        assert logs.count("key limits are exact across instances") <= logs.count("key limits are enforced per instance")
        assert PASSWORD not in logs
