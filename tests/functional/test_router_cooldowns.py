"""Cooldowns and retries (issue 6, CONTRACT §3), counted at fake upstreams behind 2 gateway workers.

A deployment that fails `allowed_fails` times, or once with 401/403, or once with
a 429 whose Retry-After outlasts the call, leaves rotation in every worker; a
Retry-After that fits is waited out; a whole group cooling answers by the class
of its failures, with Retry-After. A "weight: 10000" deployment is the one a
group tries first, so that a test knows which deployment each call starts on.
"""
from __future__ import annotations

import time

import openai
import pytest
import requests

from .router_wire import (AUTH, CHAT, ENV, Fakes, chat, deployment, module_gateway, pin_workers, retry_after,
                          router_config, routing, sdk, send_many)
from .wire import SSEResponse, assert_openai_error, assert_sse_framing

FIRST = 10000   # the weight that makes a deployment its group's first choice (1 in 10,001 calls is not)


@pytest.fixture
def fakes():
    made = Fakes()
    yield made
    made.stop()


def served_by(response) -> str:
    return routing(response.headers)["x-litellm-model-id"]


@pytest.mark.parametrize("failing_in", ["one worker", "both workers"])
def test_a_deployment_failing_allowed_fails_times_cools_in_both_workers(fakes, start_gateway, failing_in):
    """Failures are counted over both workers, and the cooldown they cause holds in both.

    Calls during the cooldown stop 2 s before its end: on a slow, loaded machine one
    round of them (two calls, then four on fresh connections) has taken over 1 s.
    """
    cooldown = 4.0
    flaky, steady = fakes(2)
    gateway = start_gateway(router_config(
        deployment("flaky", "flaky-a", flaky, weight=FIRST), deployment("flaky", "flaky-b", steady, weight=1),
        num_retries=1, allowed_fails=2, cooldown_time=cooldown), env=ENV)
    (first,), (second,) = pin_workers(gateway)
    try:
        flaky.misbehave("status-500")
        for connection in (first, first if failing_in == "one worker" else second):
            response, body = connection.post(chat("flaky"))
            assert response.status == 200, body
            assert served_by(response) == "flaky-b"
            assert response.headers["x-litellm-attempted-retries"] == "1"
        assert flaky.count() == 2 and steady.count() == 2
        cooled_at = flaky.times()[-1]
        flaky.heal()             # it would answer now: only the cooldown keeps calls away from it
        calls = 0
        while time.monotonic() < cooled_at + cooldown - 2.0:
            for connection in (second, first):
                response, body = connection.post(chat("flaky"))
                assert response.status == 200, body
                assert served_by(response) == "flaky-b", f"worker {connection.pid} called a cooling deployment"
                calls += 1
            fresh = send_many(gateway, [chat("flaky")] * 4, threads=4, fresh=True)
            assert [served_by(r) for r in fresh] == ["flaky-b"] * 4
            calls += 4
        assert flaky.count() == 2, "a cooling deployment got calls"
        assert calls >= 12, f"only {calls} calls during the cooldown: the machine is too slow for this test"
        time.sleep(max(0.0, cooled_at + cooldown + 0.4 - time.monotonic()))
        for connection in (second, first):
            response, body = connection.post(chat("flaky"))
            assert response.status == 200, body
            assert served_by(response) == "flaky-a", f"worker {connection.pid}: no calls after the cooldown"
        assert flaky.count() == 4
    finally:
        first.close()
        second.close()


# --- one failure that cools at once, Retry-After, malformed answers --------------------------

@pytest.fixture(scope="module")
def one_shot(tmp_path_factory):
    """num_retries 1, allowed_fails 5, cooldown_time 1: only at-once cooldowns happen here."""
    made = Fakes()
    fakes = made.named("auth-a", "auth-b", "long-a", "long-b", "patient", "junk-a", "junk-b")
    config = router_config(
        deployment("auth", "auth-a", fakes["auth-a"], weight=FIRST),
        deployment("auth", "auth-b", fakes["auth-b"], weight=1),
        deployment("long", "long-a", fakes["long-a"], weight=FIRST, timeout=2),
        deployment("long", "long-b", fakes["long-b"], weight=1, timeout=2),
        deployment("patient", "patient", fakes["patient"]),
        deployment("junk", "junk-a", fakes["junk-a"], "garbage", weight=FIRST),
        deployment("junk", "junk-b", fakes["junk-b"], weight=1),
        num_retries=1, allowed_fails=5, cooldown_time=1)
    gateway = module_gateway(tmp_path_factory, "router-one-shot", config)
    yield gateway, fakes
    gateway.stop()
    made.stop()


def test_upstream_401_cools_a_deployment_at_once(one_shot):
    gateway, fakes = one_shot
    (first,), (second,) = pin_workers(gateway)
    try:
        fakes["auth-a"].misbehave("status-401", times=1)
        response, body = first.post(chat("auth"))
        assert response.status == 200, body
        assert served_by(response) == "auth-b" and response.headers["x-litellm-attempted-retries"] == "1"
        assert fakes["auth-a"].count() == 1 and fakes["auth-b"].count() == 1
        for connection in (second, first, second):   # within cooldown_time (1 s); auth-a answers again
            response, body = connection.post(chat("auth"))
            assert response.status == 200, body
            assert served_by(response) == "auth-b", f"worker {connection.pid} called a deployment the upstream " \
                                                    f"had refused with 401 (allowed_fails is 5)"
        assert fakes["auth-a"].count() == 1
    finally:
        first.close()
        second.close()


def test_upstream_429_retry_after_past_the_deadline_cools_at_once_for_that_long(one_shot):
    """Retry-After 30 s outlasts the call's 2 s timeout: no retry on that deployment, a sibling serves,
    and the deployment cools for the upstream's 30 s, not the configured 1 s."""
    gateway, fakes = one_shot
    fakes["long-a"].retry_after = "30"
    fakes["long-a"].misbehave("status-429", times=1)
    (first,), (second,) = pin_workers(gateway)
    try:
        started = time.monotonic()
        response, body = first.post(chat("long"))
        assert response.status == 200, body
        assert time.monotonic() - started < 1.0, "the gateway waited on a Retry-After past its deadline"
        assert served_by(response) == "long-b"
        assert fakes["long-a"].count() == 1 and fakes["long-b"].count() == 1
        time.sleep(1.5)          # past cooldown_time; long-a answers again
        for connection in (second, first):
            response, body = connection.post(chat("long"))
            assert response.status == 200, body
            assert served_by(response) == "long-b", f"worker {connection.pid} called a deployment cooling for 30 s"
        assert fakes["long-a"].count() == 1
    finally:
        first.close()
        second.close()


def test_upstream_429_retry_after_1_is_waited_out(one_shot):
    gateway, fakes = one_shot
    patient = fakes["patient"]
    patient.misbehave("status-429", times=1)          # with Retry-After: 1
    response = requests.post(f"{gateway.url}{CHAT}", json=chat("patient"), headers=AUTH, timeout=20)
    assert response.status_code == 200, response.text
    first, second = patient.times()
    assert second - first >= 1.0, f"the retry came {second - first:.3f}s after the 429 with Retry-After: 1"
    headers = routing(response.headers)
    assert headers["x-litellm-attempted-retries"] == "1" and headers["x-litellm-model-id"] == "patient"
    assert int(headers["x-litellm-response-duration-ms"]) >= 1000
    assert int(headers["x-litellm-overhead-duration-ms"]) < 300, "the Retry-After wait counted as overhead"


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_a_malformed_answer_is_retried_on_a_sibling(one_shot, stream):
    """200 with an HTML body is not an OpenAI answer: a retryable failure, like a 5xx."""
    gateway, fakes = one_shot
    before = fakes["junk-a"].count(), fakes["junk-b"].count()
    if stream:
        with SSEResponse.open(gateway.url, CHAT, chat("junk", stream=True), AUTH) as response:
            response.read_all()
        assert_sse_framing(response)
        headers = routing(response.headers)
    else:
        answer = requests.post(f"{gateway.url}{CHAT}", json=chat("junk"), headers=AUTH, timeout=20)
        assert answer.status_code == 200, answer.text
        assert answer.json()["choices"][0]["message"]["content"] == "echo: hi"
        headers = routing(answer.headers)
    assert headers["x-litellm-model-id"] == "junk-b" and headers["x-litellm-attempted-retries"] == "1"
    assert (fakes["junk-a"].count() - before[0], fakes["junk-b"].count() - before[1]) == (1, 1)


# --- no sibling, no retries; a whole group cooling ----------------------------------------

@pytest.fixture(scope="module")
def strict(tmp_path_factory):
    """num_retries 0, allowed_fails 1, cooldown_time 5: every failure cools its deployment."""
    made = Fakes()
    fakes = made.named("solo", "limited-a", "limited-b", "down-a", "down-b")
    config = router_config(
        deployment("solo", "solo", fakes["solo"], "status-429"),
        deployment("limited", "limited-a", fakes["limited-a"], "status-429"),
        deployment("limited", "limited-b", fakes["limited-b"], "status-429"),
        deployment("down", "down-a", fakes["down-a"], "status-500"),
        deployment("down", "down-b", fakes["down-b"], "status-500"),
        num_retries=0, allowed_fails=1, cooldown_time=5)
    gateway = module_gateway(tmp_path_factory, "router-strict", config)
    yield gateway, fakes
    gateway.stop()
    made.stop()


def test_upstream_429_with_no_sibling_and_no_retries_is_rate_limit_error(strict):
    gateway, fakes = strict
    with sdk(gateway) as client, pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(model="solo", messages=[{"role": "user", "content": "hi"}])
    assert caught.value.status_code == 429
    assert retry_after(caught.value.response.headers) >= 1
    assert fakes["solo"].count() == 1


@pytest.mark.parametrize("group, status, type_, code, first_status", [
    ("limited", 429, "rate_limit_error", "rate_limit_exceeded", 429),
    ("down", 503, "api_error", "no_healthy_deployment", 502),
], ids=["429s", "5xx"])
def test_a_group_cooling_entirely_answers_by_failure_class_with_retry_after(strict, group, status, type_, code,
                                                                            first_status):
    gateway, fakes = strict
    a, b = fakes[f"{group}-a"], fakes[f"{group}-b"]
    (first,), (second,) = pin_workers(gateway)
    try:
        for connection in (first, first):      # each call cools the deployment it tried
            response, body = connection.post(chat(group))
            assert response.status == first_status, body
        assert (a.count(), b.count()) == (1, 1), "a cooling deployment was called"
        for connection in (second, first):
            response, body = connection.post(chat(group))
            assert response.status == status, body
            assert body["error"]["type"] == type_ and body["error"]["code"] == code, body
            wait = retry_after(response.headers)
            # a router-made answer carries the routing headers too: nothing was attempted
            assert (response.headers.get("x-litellm-attempted-retries"),
                    response.headers.get("x-litellm-attempted-fallbacks")) == ("0", "0"), dict(response.headers)
            if group == "limited":
                assert wait == 1, "Retry-After is not the upstream's own value (1 s)"
            else:
                assert 1 <= wait <= 5, f"Retry-After {wait} is not the seconds left of a 5 s cooldown"
        assert (a.count(), b.count()) == (1, 1), "a cooling deployment was called"
    finally:
        first.close()
        second.close()
    response = requests.post(f"{gateway.url}{CHAT}", json=chat(group), headers=AUTH, timeout=20)
    assert_openai_error(response, status, type_, code=code)
