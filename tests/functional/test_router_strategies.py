"""Routing strategies (issue 6): each fake upstream counts what it got, with 2 gateway workers in front.

simple-shuffle by weight, least-busy across workers, latency-based, usage-based,
and rpm caps: a deployment at its cap is skipped by every worker; all at cap → 429.
"""
from __future__ import annotations

import os
import signal
import time
from collections import Counter

import openai
import pytest
import requests

from .router_wire import (AUTH, CHAT, ENV, Fakes, chat, deployment, minute_left, module_gateway, pin_workers,
                          retry_after, router_config, routing, sdk, send_many, wait_for)
from .wire import assert_openai_error


@pytest.fixture
def fakes():
    made = Fakes()
    yield made
    made.stop()


def test_weighted_shuffle_follows_the_weights(fakes, start_gateway):
    weights = {"w1": 1, "w2": 2, "w7": 7}
    upstreams = fakes.named(*weights)
    gateway = start_gateway(router_config(*(deployment("weighted", name, upstreams[name], weight=weight)
                                            for name, weight in weights.items())), env=ENV)
    responses = send_many(gateway, [chat("weighted")] * 1000, threads=8)
    assert [r.status_code for r in responses] == [200] * 1000
    counts = {name: fake.count() for name, fake in upstreams.items()}
    assert sum(counts.values()) == 1000, counts
    assert Counter(r.headers.get("x-litellm-model-id") for r in responses) == counts, \
        "x-litellm-model-id disagrees with what the upstreams received"
    total = sum(weights.values())
    for name, weight in weights.items():
        assert abs(counts[name] / 1000 - weight / total) <= 0.05, f"{counts} for weights {weights}"


def test_least_busy_counts_the_streams_every_worker_holds(fakes, start_gateway):
    """Each new call goes to a deployment with the fewest calls in flight, counted over both workers:
    streams held open by worker 1 steer worker 2's next call away, and the other way round."""
    upstreams = fakes.named("busy-a", "busy-b", "busy-c")
    # every stream at these upstreams lasts 10 s (100 chunks, 100 ms apart): it stays in flight
    gateway = start_gateway(router_config(*(deployment("busy", name, fake, "slow-100-100")
                                            for name, fake in upstreams.items()),
                                          routing_strategy="least-busy"), env=ENV)
    first, second = pin_workers(gateway, per_worker=3)
    held = dict.fromkeys(upstreams, 0)
    try:
        # a stream that ended is no longer in flight: its deployment still gets its share of calls
        for fake in upstreams.values():
            fake.misbehave("quick")              # a whole 5-chunk stream at once
        ended = requests.post(f"{gateway.url}{CHAT}", json=chat("busy", stream=True), headers=AUTH, timeout=20)
        assert ended.status_code == 200 and ended.text.endswith("data: [DONE]\n\n"), ended.text[-300:]
        for fake in upstreams.values():
            fake.heal()
        wait_for(lambda: sum(fake.active_streams for fake in upstreams.values()) == 0)
        after = Counter(routing(r.headers)["x-litellm-model-id"]
                        for r in send_many(gateway, [chat("busy")] * 24, threads=1, fresh=True))
        assert after[routing(ended.headers)["x-litellm-model-id"]] > 0, \
            f"a stream that ended still counts as in flight: the next 24 calls went {dict(after)}"
        before = {name: fake.count() for name, fake in upstreams.items()}

        for connection in (first[0], second[0], first[1], second[1], first[2]):
            assert {name: fake.active_streams for name, fake in upstreams.items()} == held
            response = connection.send(chat("busy", stream=True))
            assert response.status == 200, response.read()[:300]
            served = routing(response.headers)["x-litellm-model-id"]
            assert held[served] == min(held.values()), \
                f"worker {connection.pid} sent a stream to {served} while {held} were in flight"
            held[served] += 1
            connection.served = served
        assert sorted(held.values()) == [1, 2, 2]
        idle = min(held, key=held.get)
        response, body = second[2].post(chat("busy"))
        assert response.status == 200, body
        assert routing(response.headers)["x-litellm-model-id"] == idle, \
            f"a call went to a deployment holding slow streams: {held}"
        assert upstreams[idle].count() - before[idle] == 2
        assert {name: fake.active_streams for name, fake in upstreams.items()} == held
        # a stream the client walks away from stops counting: its deployment is the least busy again
        freed = next(name for name, count in held.items() if count == 2)
        for connection in first + second[:2]:
            if connection.served == freed:
                connection.close()
        held[freed] = 0
        wait_for(lambda: {name: fake.active_streams for name, fake in upstreams.items()} == held)
        time.sleep(0.2)
        response, body = second[2].post(chat("busy"))
        assert response.status == 200, body
        assert routing(response.headers)["x-litellm-model-id"] == freed, \
            f"the streams a client closed on {freed} still count as in flight"
    finally:
        for connection in first + second:
            connection.close()


def test_a_worker_killed_holding_streams_leaves_nothing_in_flight(fakes, start_gateway):
    """kill -9 a worker in the middle of three streams: the master frees its share of the shared
    state, so least-busy does not shun the deployments it was calling for ever after."""
    upstreams = fakes.named("kill-a", "kill-b")
    gateway = start_gateway(router_config(*(deployment("killed", name, fake, "slow-100-100")
                                            for name, fake in upstreams.items()),
                                          routing_strategy="least-busy"), env=ENV)
    doomed, other = pin_workers(gateway, per_worker=3)
    for connection in other:
        connection.close()
    for connection in doomed:
        assert connection.send(chat("killed", stream=True)).status == 200
    assert sorted(fake.active_streams for fake in upstreams.values()) == [1, 2]
    pid = doomed[0].pid
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: pid not in gateway.worker_pids() and len(gateway.worker_pids()) == 2, timeout=15)
    wait_for(lambda: sum(fake.active_streams for fake in upstreams.values()) == 0)
    for connection in doomed:
        connection.close()
    served = Counter(routing(r.headers)["x-litellm-model-id"]
                     for r in send_many(gateway, [chat("killed")] * 12, threads=1, fresh=True))
    assert set(served) == set(upstreams), f"the dead worker's streams still count as in flight: {dict(served)}"


def test_latency_based_sends_less_to_a_slow_deployment(fakes, start_gateway):
    """JSON calls by response time, streams by time to first token (the slow fake is slow before
    its first byte): after warm-up, the slow deployment gets under a quarter of the calls."""
    slow_json, fast_json, slow_stream, fast_stream = fakes(4)
    slow_json.delay = slow_stream.delay = 0.15
    gateway = start_gateway(router_config(
        deployment("lat-json", "lat-json-slow", slow_json), deployment("lat-json", "lat-json-fast", fast_json),
        deployment("lat-stream", "lat-stream-slow", slow_stream),
        deployment("lat-stream", "lat-stream-fast", fast_stream),
        routing_strategy="latency-based-routing"), env=ENV)
    for group, slow, fast, extra in (("lat-json", slow_json, fast_json, {}),
                                     ("lat-stream", slow_stream, fast_stream, {"stream": True})):
        warm = send_many(gateway, [chat(group, **extra)] * 6, threads=1, fresh=True)
        assert [r.status_code for r in warm] == [200] * 6
        assert slow.count() >= 1 and fast.count() >= 1, "an unmeasured deployment was not tried first"
        before = slow.count(), fast.count()
        responses = send_many(gateway, [chat(group, **extra)] * 40, threads=4, fresh=True)
        assert [r.status_code for r in responses] == [200] * 40
        slow_calls, fast_calls = slow.count() - before[0], fast.count() - before[1]
        assert slow_calls + fast_calls == 40
        assert slow_calls < 0.25 * 40, f"{group}: the slow deployment got {slow_calls} of 40 calls"


# --- per-minute usage: usage-based routing and rpm caps -------------------------------------

def test_usage_based_spreads_by_remaining_rpm(fakes, start_gateway):
    """Every call goes to the deployment that used the smallest share of its rpm this minute, whichever
    worker serves it: rpm 100 and 300 share 120 calls 30 / 90."""
    low, high = fakes(2)
    gateway = start_gateway(router_config(deployment("spread", "spread-100", low, rpm=100),
                                          deployment("spread", "spread-300", high, rpm=300),
                                          routing_strategy="usage-based-routing"), env=ENV)
    first, second = pin_workers(gateway)
    minute_left(15)
    try:
        for i in range(120):
            before = low.count(), high.count()
            response, body = (first, second)[i % 2][0].post(chat("spread"))
            assert response.status == 200, body
            took_low = low.count() - before[0]
            assert took_low + high.count() - before[1] == 1
            shares = before[0] / 100, before[1] / 300
            chosen, other = (shares[0], shares[1]) if took_low else (shares[1], shares[0])
            assert chosen <= other, f"call {i}: went to the deployment with the larger used share {before}"
    finally:
        for connection in first + second:
            connection.close()
    assert abs(low.count() - 30) <= 1 and abs(high.count() - 90) <= 1, (low.count(), high.count())


@pytest.fixture(scope="module")
def caps(tmp_path_factory):
    """One simple-shuffle gateway with a group per test, each deployment its own fake upstream."""
    made = Fakes()
    fakes = made.named("cap-3", "cap-open", "tiny-a", "tiny-b")
    config = router_config(
        deployment("capped", "cap-3", fakes["cap-3"], weight=10000, rpm=3),
        deployment("capped", "cap-open", fakes["cap-open"], weight=1),
        deployment("tiny", "tiny-a", fakes["tiny-a"], rpm=2),
        deployment("tiny", "tiny-b", fakes["tiny-b"], rpm=2))
    gateway = module_gateway(tmp_path_factory, "router-caps", config)
    yield gateway, fakes
    gateway.stop()
    made.stop()


def test_a_deployment_at_its_rpm_cap_is_skipped_by_both_workers(caps):
    gateway, fakes = caps
    first, second = pin_workers(gateway)
    minute_left(10)
    try:
        for i in range(12):
            response, body = (first, second)[i % 2][0].post(chat("capped"))
            assert response.status == 200, body
    finally:
        for connection in first + second:
            connection.close()
    # cap-3 would take nearly every call by weight; per-worker counting would let it take 6
    assert fakes["cap-3"].count() == 3 and fakes["cap-open"].count() == 9, \
        (fakes["cap-3"].count(), fakes["cap-open"].count())


def test_every_deployment_at_its_cap_is_429_with_retry_after(caps):
    gateway, fakes = caps
    minute_left(10)
    for _ in range(4):
        response = requests.post(f"{gateway.url}{CHAT}", json=chat("tiny"), headers=AUTH, timeout=20)
        assert response.status_code == 200, response.text
    assert fakes["tiny-a"].count() == 2 and fakes["tiny-b"].count() == 2
    with sdk(gateway) as client, pytest.raises(openai.RateLimitError):
        client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}])
    response = requests.post(f"{gateway.url}{CHAT}", json=chat("tiny"), headers=AUTH, timeout=20)
    to_next_minute = 60 - time.time() % 60
    assert_openai_error(response, 429, "rate_limit_error", code="rate_limit_exceeded")
    assert (response.headers.get("x-litellm-attempted-retries"),
            response.headers.get("x-litellm-attempted-fallbacks")) == ("0", "0"), dict(response.headers)
    assert to_next_minute - 1 <= retry_after(response.headers) <= to_next_minute + 2, \
        (response.headers.get("Retry-After"), to_next_minute)
    assert fakes["tiny-a"].count() + fakes["tiny-b"].count() == 4, "a capped deployment was called"
