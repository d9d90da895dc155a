"""gateway/routing/cooldown.py, through the Router and a real SharedMemoryState on a controllable clock.

When a deployment leaves rotation, for how long, what a client hears while a
whole group is out, and that every worker sharing the segment agrees.
"""
from __future__ import annotations

import os

import pytest

from gateway.errors import (BadUpstreamResponse, ContentPolicyViolation, ContextLengthExceeded, GatewayError,
                            NoHealthyDeployment, UpstreamAuthFailed, UpstreamClientError, UpstreamCredentialsMissing,
                            UpstreamFailed, UpstreamRateLimited, UpstreamTimeout)
from gateway.store.shared_memory import SharedMemoryState, create_segment
from gateway.types import Cooldown, Trace
from tests.unit.test_router import Clock, Upstreams, clocked_router, deployment, failed
from tests.unit.test_shared_memory import Pipe, joined, run_forked


def cooling_router(deployments, clock, **settings):
    """Cooldowns on: one failure cools for 30 s unless the test says otherwise."""
    settings.setdefault("allowed_fails", 1)
    settings.setdefault("cooldown_time", 30.0)
    return clocked_router(deployments, clock, **settings)


def cooldown_of(state, name):
    return state.stats([name])[0].cooldown


def seconds_left(state, name, clock) -> float:
    """Of `name`'s cooldown (a difference: pytest.approx is relative, and wall times are large)."""
    return cooldown_of(state, name).until - clock.wall()


def call(router, upstreams, model="g"):
    """One client call; its answer or the GatewayError it ended with."""
    trace = Trace()
    try:
        answer = router.call(model, upstreams, trace)
    except GatewayError as error:
        return error
    router.finished(trace)
    return answer


def rate_limited(retry_after=None):
    return lambda: UpstreamRateLimited("slow down", retry_after=retry_after)


def auth_failed():
    return UpstreamAuthFailed("bad upstream key")


@pytest.fixture
def segment():
    fd = create_segment()
    yield fd
    os.close(fd)


# --- allowed_fails within the window -------------------------------------------------------------

def test_allowed_fails_failures_cool_the_deployment_for_cooldown_time():
    clock = Clock()
    router, state = cooling_router([deployment("a")], clock, allowed_fails=3)
    upstreams = Upstreams({"a": [failed(), failed(), failed()]})
    for _ in range(2):
        assert isinstance(call(router, upstreams), UpstreamFailed)
        assert cooldown_of(state, "a") is None
    assert isinstance(call(router, upstreams), UpstreamFailed)
    assert seconds_left(state, "a", clock) == pytest.approx(30)
    assert len(upstreams.calls) == 3
    clock.advance(29.5)
    assert isinstance(call(router, upstreams), NoHealthyDeployment)
    assert len(upstreams.calls) == 3             # no attempt on it while it cools
    clock.advance(1)
    assert call(router, upstreams) == "answer from a"
    assert len(upstreams.calls) == 4


def test_a_cooling_deployment_gets_no_traffic_and_gets_it_back_after():
    clock = Clock()
    router, state = cooling_router([deployment("a"), deployment("b")], clock, cooldown_time=20.0)
    upstreams = Upstreams({"a": [failed()]})
    while "a" not in upstreams.calls:
        call(router, upstreams)
    assert cooldown_of(state, "a") is not None
    upstreams.calls.clear()
    for _ in range(60):
        assert call(router, upstreams) == "answer from b"
    clock.advance(20.5)
    for _ in range(60):
        call(router, upstreams)
    assert 10 < upstreams.calls[60:].count("a") < 50


@pytest.mark.parametrize("gap, cools", [(0.0, True), (30.0, True), (59.0, True), (61.0, False), (300.0, False)])
def test_failures_count_together_only_within_60_seconds(gap, cools):
    clock = Clock()
    router, state = cooling_router([deployment("a")], clock, allowed_fails=2)
    upstreams = Upstreams({"a": [failed(), failed()]})
    call(router, upstreams)
    clock.advance(gap)
    call(router, upstreams)
    assert (cooldown_of(state, "a") is not None) is cools
    answer = call(router, upstreams)
    if cools:
        assert isinstance(answer, NoHealthyDeployment) and len(upstreams.calls) == 2
    else:
        assert answer == "answer from a" and len(upstreams.calls) == 3


def test_failures_before_a_cooldown_do_not_count_again_after_it():
    clock = Clock()
    router, state = cooling_router([deployment("a")], clock, allowed_fails=2, cooldown_time=10.0)
    upstreams = Upstreams({"a": [failed()] * 3})
    call(router, upstreams)
    call(router, upstreams)
    assert cooldown_of(state, "a") is not None
    clock.advance(11)
    assert isinstance(call(router, upstreams), UpstreamFailed)
    assert cooldown_of(state, "a") is None       # one fresh failure of the two allowed
    assert call(router, upstreams) == "answer from a"


def test_allowed_fails_zero_cools_on_the_first_failure():
    clock = Clock()
    router, state = cooling_router([deployment("a")], clock, allowed_fails=0)
    call(router, Upstreams(default=failed))
    assert cooldown_of(state, "a") is not None


def test_failures_are_counted_per_deployment():
    clock = Clock()
    router, state = cooling_router([deployment("a", "g"), deployment("b", "h")], clock, allowed_fails=2)
    upstreams = Upstreams(default=failed)
    call(router, upstreams, "g")
    call(router, upstreams, "h")
    assert cooldown_of(state, "a") is None and cooldown_of(state, "b") is None


# --- what cools at once ------------------------------------------------------------------------------

@pytest.mark.parametrize("status", [401, 403])
def test_upstream_auth_failure_cools_at_once(status):
    clock = Clock()
    router, state = cooling_router([deployment("a")], clock, allowed_fails=3)
    upstreams = Upstreams({"a": [UpstreamAuthFailed("bad key", status=status)]})
    assert isinstance(call(router, upstreams), UpstreamAuthFailed)
    assert cooldown_of(state, "a").kind == "auth"
    assert isinstance(call(router, upstreams), UpstreamAuthFailed)
    assert upstreams.calls == ["a"]


def test_a_429_asking_for_longer_than_the_deadline_cools_at_once():
    clock = Clock()
    router, state = cooling_router([deployment("a", timeout=30)], clock, allowed_fails=3, cooldown_time=5.0)
    upstreams = Upstreams({"a": [UpstreamRateLimited("slow down", retry_after=45)]})
    assert isinstance(call(router, upstreams), UpstreamRateLimited)
    cooldown = cooldown_of(state, "a")
    assert (cooldown.kind, cooldown.retry_after) == ("rate_limit", 45)
    assert cooldown.until - clock.wall() == pytest.approx(45)
    clock.advance(44)
    error = call(router, upstreams)
    assert isinstance(error, UpstreamRateLimited) and upstreams.calls == ["a"]
    clock.advance(2)
    assert call(router, upstreams) == "answer from a"


def test_a_429_within_the_deadline_is_waited_for_and_counted():
    clock = Clock()
    router, state = cooling_router([deployment("a", timeout=30)], clock, allowed_fails=2, num_retries=1)
    upstreams = Upstreams({"a": [UpstreamRateLimited("slow down", retry_after=2)]})
    assert call(router, upstreams) == "answer from a"
    assert clock.sleeps == [2] and upstreams.calls == ["a", "a"]
    assert cooldown_of(state, "a") is None
    upstreams.script["a"] = [UpstreamRateLimited("slow down", retry_after=2)]
    assert isinstance(call(router, upstreams), UpstreamRateLimited)    # the second of two allowed
    assert cooldown_of(state, "a").kind == "rate_limit"
    assert upstreams.calls == ["a", "a", "a"] and clock.sleeps == [2]


@pytest.mark.parametrize("cooldown_time, error, seconds", [
    (30.0, failed, 30),
    (30.0, rate_limited(), 30),
    (30.0, rate_limited(10), 30),
    (30.0, rate_limited(100), 100),
    (30.0, rate_limited(1000), 300),         # past the deadline: cooled at once, still capped
    (0.5, rate_limited(2), 2),
    (30.0, auth_failed, 30),
    (30.0, lambda: UpstreamFailed("503", retry_after=120), 120),
])
def test_a_cooldown_lasts_cooldown_time_or_the_longer_retry_after_capped(cooldown_time, error, seconds):
    clock = Clock()
    router, state = cooling_router([deployment("a")], clock, cooldown_time=cooldown_time)
    call(router, Upstreams(default=error))
    assert seconds_left(state, "a", clock) == pytest.approx(seconds)


@pytest.mark.parametrize("error", [failed, auth_failed, rate_limited(), rate_limited(1000),
                                   lambda: UpstreamTimeout("slow"), lambda: BadUpstreamResponse("junk")])
def test_cooldown_time_zero_never_cools(error):
    clock = Clock()
    router, state = cooling_router([deployment("a", timeout=30)], clock, cooldown_time=0.0)
    upstreams = Upstreams(default=error)
    for _ in range(5):
        assert isinstance(call(router, upstreams), GatewayError)
    assert upstreams.calls == ["a"] * 5
    assert cooldown_of(state, "a") is None


@pytest.mark.parametrize("error", [
    lambda: UpstreamClientError("bad", status=400), lambda: UpstreamClientError("nope", status=404),
    lambda: UpstreamClientError("unprocessable", status=422), lambda: ContextLengthExceeded("too long"),
    lambda: ContentPolicyViolation("filtered"),
])
def test_client_errors_never_count(error):
    clock = Clock()
    router, state = cooling_router([deployment("a")], clock, allowed_fails=0)
    upstreams = Upstreams(default=error)
    for _ in range(5):
        assert isinstance(call(router, upstreams), UpstreamClientError)
    assert upstreams.calls == ["a"] * 5
    assert cooldown_of(state, "a") is None


def test_missing_upstream_credentials_move_on_without_cooling():
    """Nobody was called: the deployment is skipped for this call, but not held against it."""
    clock = Clock()
    router, state = cooling_router([deployment("a"), deployment("b")], clock, allowed_fails=0, num_retries=3)
    for _ in range(10):
        upstreams = Upstreams({"a": [UpstreamCredentialsMissing("OPENAI_API_KEY is not set")]})
        assert call(router, upstreams) == "answer from b"
        assert upstreams.calls.count("a") <= 1
    assert cooldown_of(state, "a") is None


@pytest.mark.parametrize("error", [lambda: UpstreamTimeout("slow"), lambda: BadUpstreamResponse("junk"),
                                   lambda: UpstreamFailed("502")])
def test_timeouts_bad_answers_and_5xx_count(error):
    clock = Clock()
    router, state = cooling_router([deployment("a")], clock)
    call(router, Upstreams(default=error))
    assert cooldown_of(state, "a").kind == "failure"


# --- a whole group cooling ---------------------------------------------------------------------------

@pytest.mark.parametrize("a_error, b_error, answer, retry_after", [
    (rate_limited(), rate_limited(), UpstreamRateLimited, 20),
    (rate_limited(45), rate_limited(45), UpstreamRateLimited, 45),     # the upstream's own value
    (auth_failed, auth_failed, UpstreamAuthFailed, 20),
    (auth_failed, failed, NoHealthyDeployment, 20),
    (rate_limited(), failed, NoHealthyDeployment, 20),
    (failed, failed, NoHealthyDeployment, 20),
    (lambda: UpstreamTimeout("slow"), lambda: BadUpstreamResponse("junk"), NoHealthyDeployment, 20),
])
def test_every_deployment_cooling_answers_by_the_class_of_failure(a_error, b_error, answer, retry_after):
    clock = Clock()
    router, state = cooling_router([deployment("a", timeout=30), deployment("b", timeout=30)], clock,
                                   num_retries=1)
    upstreams = Upstreams({"a": [a_error()], "b": [b_error()]})
    call(router, upstreams)
    assert sorted(upstreams.calls) == ["a", "b"]
    clock.advance(10)
    error = call(router, upstreams)
    assert type(error) is answer
    assert error.retry_after == pytest.approx(retry_after)
    assert error.headers()["Retry-After"] == str(retry_after)
    assert len(upstreams.calls) == 2


def test_retry_after_of_a_cooling_group_is_the_soonest_cooldown():
    clock = Clock()
    router, state = cooling_router([deployment("a", timeout=30), deployment("b", timeout=30)], clock,
                                   num_retries=1)
    upstreams = Upstreams({"a": [rate_limited(100)()], "b": [failed()]})
    call(router, upstreams)
    clock.advance(12)
    error = call(router, upstreams)
    assert isinstance(error, NoHealthyDeployment)
    assert error.retry_after == pytest.approx(18)      # b's 30 s, not a's 100 s


def test_retry_after_of_a_cooling_group_is_at_least_one_second():
    clock = Clock()
    router, state = cooling_router([deployment("a")], clock)
    call(router, Upstreams(default=failed))
    clock.advance(29.75)
    error = call(router, Upstreams())
    assert isinstance(error, NoHealthyDeployment) and error.retry_after == 1


def test_a_cooling_group_falls_back():
    clock = Clock()
    router, state = cooling_router([deployment("a"), deployment("f1", "h")], clock, fallbacks=(("g", ("h",)),))
    upstreams = Upstreams({"a": [failed()]})
    assert call(router, upstreams) == "answer from f1"
    assert upstreams.calls == ["a", "f1"] and cooldown_of(state, "a") is not None
    trace = Trace()
    assert router.call("g", upstreams, trace) == "answer from f1"
    assert upstreams.calls == ["a", "f1", "f1"]
    assert (trace.model_group, trace.deployment_id, trace.fallbacks, trace.retries) == ("h", "f1", 1, 0)


def test_a_group_cooling_from_rate_limits_falls_back_to_the_defaults():
    clock = Clock()
    router, state = cooling_router([deployment("a"), deployment("d1", "d")], clock, default_fallbacks=("d",))
    state.cool("a", Cooldown(clock.wall() + 60, "rate_limit"))
    upstreams = Upstreams()
    assert call(router, upstreams) == "answer from d1"
    assert upstreams.calls == ["d1"]


# --- never shortened; health probes ---------------------------------------------------------------------

def test_a_cooldown_is_never_shortened():
    clock = Clock()
    a = deployment("a", timeout=30)
    router, state = cooling_router([a], clock, cooldown_time=10.0)
    call(router, Upstreams(default=rate_limited(200)))
    until = cooldown_of(state, "a").until
    assert until - clock.wall() == pytest.approx(200)
    clock.advance(5)
    router.note_probe(a, UpstreamFailed("probe failed"))      # would cool for 10 s
    assert cooldown_of(state, "a").until == until
    assert cooldown_of(state, "a").kind == "rate_limit"


def test_a_longer_cooldown_extends_a_shorter_one():
    clock = Clock()
    a = deployment("a")
    router, state = cooling_router([a], clock, cooldown_time=10.0)
    call(router, Upstreams(default=failed))
    router.note_probe(a, UpstreamRateLimited("slow down", retry_after=100))
    assert seconds_left(state, "a", clock) == pytest.approx(100)


def test_a_failed_health_probe_cools_at_once():
    clock = Clock()
    a = deployment("a")
    router, state = cooling_router([a], clock, allowed_fails=5)
    router.note_probe(a, UpstreamTimeout("no answer"))
    assert seconds_left(state, "a", clock) == pytest.approx(30)
    upstreams = Upstreams()
    assert isinstance(call(router, upstreams), NoHealthyDeployment) and upstreams.calls == []


@pytest.mark.parametrize("error", [None, UpstreamClientError("bad", status=400), ContextLengthExceeded("long")])
def test_a_passing_probe_or_a_client_error_does_not_cool(error):
    clock = Clock()
    a = deployment("a")
    router, state = cooling_router([a], clock, allowed_fails=0)
    router.note_probe(a, error)
    assert cooldown_of(state, "a") is None


def test_a_failed_probe_does_not_cool_when_cooldowns_are_off():
    clock = Clock()
    a = deployment("a")
    router, state = cooling_router([a], clock, cooldown_time=0.0)
    router.note_probe(a, auth_failed())
    router.note_probe(a, UpstreamRateLimited("slow down", retry_after=100))
    assert cooldown_of(state, "a") is None


# --- workers sharing one segment ---------------------------------------------------------------------

def two_workers(fd, clock, deployments, **settings):
    first = cooling_router(deployments, clock, state=SharedMemoryState.open(fd, clock.wall), **settings)
    second = cooling_router(deployments, clock, state=SharedMemoryState.open(fd, clock.wall), seed=1,
                            **settings)
    return first, second


def test_workers_on_one_segment_see_each_others_cooldowns(segment):
    clock = Clock()
    (one, one_state), (two, two_state) = two_workers(segment, clock, [deployment("a"), deployment("b")])
    try:
        upstreams = Upstreams({"a": [failed()]})
        while "a" not in upstreams.calls:
            call(one, upstreams)
        seen_by_two = Upstreams()
        for _ in range(40):
            assert call(two, seen_by_two) == "answer from b"
        clock.advance(31)
        for _ in range(40):
            call(two, seen_by_two)
        assert "a" in seen_by_two.calls
    finally:
        one_state.close()
        two_state.close()


def test_workers_on_one_segment_see_each_others_in_flight(segment):
    clock = Clock()
    (one, one_state), (two, two_state) = two_workers(segment, clock, [deployment("a"), deployment("b")],
                                                     routing_strategy="least-busy")
    try:
        held = Trace()
        one.call("g", Upstreams(), held)
        other = "b" if held.deployment_id == "a" else "a"
        upstreams = Upstreams()
        for _ in range(30):
            call(two, upstreams)
        assert upstreams.calls == [other] * 30
        one.finished(held)
        for _ in range(60):
            call(two, upstreams)
        assert upstreams.calls[30:].count(held.deployment_id) > 10
    finally:
        one_state.close()
        two_state.close()


def test_a_forked_worker_cools_a_deployment_for_its_parent(segment):
    clock = Clock()
    deployments = [deployment("a"), deployment("b")]
    parent, parent_state = cooling_router(deployments, clock, state=SharedMemoryState.open(segment, clock.wall))

    def worker():
        router, state = cooling_router(deployments, clock, state=SharedMemoryState.open(segment, clock.wall))
        upstreams = Upstreams({"a": [failed()]})
        while "a" not in upstreams.calls:
            call(router, upstreams)
        state.close()
    try:
        assert joined(run_forked(worker)) == 0
        upstreams = Upstreams()
        for _ in range(40):
            assert call(parent, upstreams) == "answer from b"
        assert cooldown_of(parent_state, "a").kind == "failure"
    finally:
        parent_state.close()


def test_a_forked_worker_holding_a_request_steers_least_busy_in_its_parent(segment):
    clock = Clock()
    deployments = [deployment("a"), deployment("b")]
    parent, parent_state = cooling_router(deployments, clock, state=SharedMemoryState.open(segment, clock.wall),
                                          routing_strategy="least-busy")
    started, release = Pipe(), Pipe()

    def worker():
        router, state = cooling_router(deployments, clock, state=SharedMemoryState.open(segment, clock.wall),
                                       routing_strategy="least-busy")
        trace = Trace()
        router.call("g", Upstreams(), trace)
        started.send(trace.deployment_id.encode())
        release.receive()
        router.finished(trace, 5)
        state.close()
    pid = run_forked(worker)
    try:
        held = started.receive().decode()
        assert held in ("a", "b")
        assert parent_state.stats([held])[0].in_flight == 1
        upstreams = Upstreams()
        for _ in range(30):
            call(parent, upstreams)
        assert set(upstreams.calls) == {"b" if held == "a" else "a"}
    finally:
        release.send(b"go")
        assert joined(pid) == 0
        started.close()
        release.close()
    assert parent_state.stats([held])[0][:3] == (0, 1, 5)       # its request and tokens still count
    parent_state.close()


# --- what the metrics and the log are told ----------------------------------------------------------

def test_each_cooldown_started_is_reported_once_and_each_failed_attempt_is_traced():
    clock = Clock()
    state = SharedMemoryState.private(clock=clock.wall)
    reported = []
    from gateway.routing import Router
    from gateway.types import RouterSettings
    a = deployment("a")
    router = Router((a,), RouterSettings(num_retries=1, allowed_fails=2, cooldown_time=30.0), state,
                    sleep=clock.sleep, clock=clock.monotonic, wall=clock.wall,
                    on_cooldown=lambda d, cooldown, error: reported.append((d.id, error.code)))
    upstreams = Upstreams({"a": [failed(), failed()]})
    first = Trace()
    with pytest.raises(UpstreamFailed):
        router.call("g", upstreams, first)          # the attempt and its retry both fail: the second cools it
    assert [(name, type(error)) for name, error in first.failures] == [("a", UpstreamFailed)] * 2
    assert reported == [("a", "upstream_error")]
    second = Trace()
    with pytest.raises(NoHealthyDeployment):
        router.call("g", upstreams, second)         # cooling: no attempt, nothing failed upstream
    assert second.failures is None
    router.note_probe(a, UpstreamFailed("probe failed"))   # a probe of a cooling deployment: no new report
    assert reported == [("a", "upstream_error")]
    clock.advance(31)
    router.note_probe(a, UpstreamFailed("probe failed"))   # cooled down, then a failed probe: a new cooldown
    assert reported == [("a", "upstream_error")] * 2
