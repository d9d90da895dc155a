"""gateway/routing/router.py: attempts, retries, exclusions and fallbacks before the first byte."""
from __future__ import annotations

import random
from collections import Counter

import pytest

from gateway.errors import (BadUpstreamResponse, ContentPolicyViolation, ContextLengthExceeded, GatewayError,
                            ModelNotFound, UpstreamAuthFailed, UpstreamClientError, UpstreamFailed,
                            UpstreamRateLimited, UpstreamTimeout)
from gateway.routing import Router
from gateway.routing.policy import BACKOFF_CAP, backoff
from gateway.routing.selection import simple_shuffle
from gateway.store.shared_memory import SharedMemoryState
from gateway.types import Deployment, EntityStats, RouterSettings, Trace


def deployment(id: str, group: str = "g", **kw) -> Deployment:
    return Deployment(id=id, model_name=group, provider="openai", upstream_model=f"up-{id}", **kw)


class Upstreams:
    """The attempt function: each deployment id answers from a script (an error or "ok"), then "ok"."""

    def __init__(self, script: dict[str, list] | None = None, default=None):
        self.script = {k: list(v) for k, v in (script or {}).items()}
        self.default = default
        self.calls: list[str] = []

    def __call__(self, d: Deployment, deadline: float | None = None):
        self.calls.append(d.id)
        queue = self.script.get(d.id)
        outcome = queue.pop(0) if queue else self.default
        if isinstance(outcome, BaseException):
            raise outcome
        if callable(outcome):
            raise outcome()
        return f"answer from {d.id}"


class Sleeps(list):
    def __call__(self, seconds: float) -> None:
        self.append(seconds)


def make_router(deployments, *, num_retries=2, fallbacks=(), seed=0, cooldown_time=0.0):
    """Cooldowns off unless asked for: these tests count attempts, tests/unit/test_cooldowns.py cooldowns."""
    sleeps = Sleeps()
    settings = RouterSettings(num_retries=num_retries, fallbacks=tuple(fallbacks), cooldown_time=cooldown_time)
    router = Router(tuple(deployments), settings, SharedMemoryState.private(), rng=random.Random(seed), sleep=sleeps)
    return router, sleeps


def failed():
    return UpstreamFailed("boom")


# --- the happy path and unknown models ---------------------------------------------------------

def test_first_attempt_success_makes_one_call():
    router, sleeps = make_router([deployment("a")])
    upstreams = Upstreams()
    assert router.call("g", upstreams, Trace()) == "answer from a"
    assert upstreams.calls == ["a"] and sleeps == []


def test_unknown_model_raises_model_not_found_without_any_attempt():
    router, _ = make_router([deployment("a")])
    upstreams = Upstreams()
    with pytest.raises(ModelNotFound):
        router.call("other", upstreams, Trace())
    assert upstreams.calls == []


def test_model_names_and_membership():
    router, _ = make_router([deployment("a", "x"), deployment("b", "y"), deployment("c", "x")])
    assert router.model_names == ("x", "y")
    assert "x" in router and "z" not in router


# --- retries within the group ---------------------------------------------------------------

@pytest.mark.parametrize("num_retries", [0, 1, 2, 5])
def test_at_most_one_plus_num_retries_attempts_across_the_group(num_retries):
    router, _ = make_router([deployment("a"), deployment("b"), deployment("c")], num_retries=num_retries)
    upstreams = Upstreams(default=failed)
    with pytest.raises(UpstreamFailed):
        router.call("g", upstreams, Trace())
    assert len(upstreams.calls) == 1 + num_retries


def test_a_retry_succeeds():
    router, _ = make_router([deployment("a")], num_retries=2)
    upstreams = Upstreams({"a": [failed(), failed()]})
    assert router.call("g", upstreams, Trace()) == "answer from a"
    assert upstreams.calls == ["a", "a", "a"]


@pytest.mark.parametrize("seed", range(20))
def test_an_untried_sibling_is_preferred(seed):
    router, sleeps = make_router([deployment("a"), deployment("b"), deployment("c")], num_retries=2, seed=seed)
    upstreams = Upstreams(default=failed)
    with pytest.raises(UpstreamFailed):
        router.call("g", upstreams, Trace())
    assert sorted(upstreams.calls) == ["a", "b", "c"]
    assert sleeps == []          # moving to a sibling needs no backoff


def test_after_every_sibling_was_tried_it_retries_with_backoff():
    router, sleeps = make_router([deployment("a"), deployment("b")], num_retries=3)
    upstreams = Upstreams(default=failed)
    with pytest.raises(UpstreamFailed):
        router.call("g", upstreams, Trace())
    assert len(upstreams.calls) == 4
    assert sorted(upstreams.calls[:2]) == ["a", "b"]
    assert len(sleeps) == 2 and all(0 < s <= BACKOFF_CAP for s in sleeps)


def test_the_last_error_is_raised():
    router, _ = make_router([deployment("a")], num_retries=1)
    upstreams = Upstreams({"a": [UpstreamFailed("first"), UpstreamTimeout("second")]})
    with pytest.raises(UpstreamTimeout, match="second"):
        router.call("g", upstreams, Trace())


@pytest.mark.parametrize("error", [UpstreamFailed("x"), UpstreamTimeout("x"), UpstreamRateLimited("x"),
                                   BadUpstreamResponse("not an OpenAI answer")])
def test_retryable_errors_are_retried(error):
    router, _ = make_router([deployment("a")], num_retries=1)
    upstreams = Upstreams({"a": [error]})
    assert router.call("g", upstreams, Trace()) == "answer from a"
    assert upstreams.calls == ["a", "a"]


@pytest.mark.parametrize("error", [
    UpstreamClientError("bad", status=400), UpstreamClientError("nope", status=404),
    UpstreamClientError("unprocessable", status=422), ContextLengthExceeded("too long"),
])
def test_non_retryable_errors_raise_at_once(error):
    router, sleeps = make_router([deployment("a"), deployment("b")], num_retries=3,
                                 fallbacks=[("g", ("h",))])
    router_with_fallback, _ = make_router([deployment("a"), deployment("b"), deployment("f", "h")],
                                          num_retries=3, fallbacks=[("g", ("h",))])
    for r in (router, router_with_fallback):
        upstreams = Upstreams(default=lambda: error)
        with pytest.raises(type(error)) as info:
            r.call("g", upstreams, Trace())
        assert info.value is error
        assert len(upstreams.calls) == 1
    assert sleeps == []


def test_an_unknown_exception_is_not_swallowed():
    router, _ = make_router([deployment("a"), deployment("b")])
    upstreams = Upstreams(default=lambda: RuntimeError("our bug"))
    with pytest.raises(RuntimeError):
        router.call("g", upstreams, Trace())
    assert len(upstreams.calls) == 1


# --- upstream 401/403 ---------------------------------------------------------------------------

def test_auth_failure_excludes_the_deployment_and_moves_to_a_sibling():
    for seed in range(10):
        router, sleeps = make_router([deployment("a"), deployment("b")], num_retries=3, seed=seed)
        upstreams = Upstreams({"a": [UpstreamAuthFailed("bad key")] * 5, "b": [failed()] * 5})
        with pytest.raises(GatewayError):
            router.call("g", upstreams, Trace())
        assert upstreams.calls.count("a") == 1, upstreams.calls
        assert upstreams.calls.count("b") == 3, upstreams.calls


def test_auth_failure_on_the_only_deployment_is_not_retried():
    router, sleeps = make_router([deployment("a")], num_retries=4)
    upstreams = Upstreams(default=lambda: UpstreamAuthFailed("bad key"))
    with pytest.raises(UpstreamAuthFailed):
        router.call("g", upstreams, Trace())
    assert upstreams.calls == ["a"] and sleeps == []


def test_auth_failure_falls_back():
    router, _ = make_router([deployment("a"), deployment("f", "h")], fallbacks=[("g", ("h",))])
    upstreams = Upstreams({"a": [UpstreamAuthFailed("bad key")]})
    assert router.call("g", upstreams, Trace()) == "answer from f"
    assert upstreams.calls == ["a", "f"]


# --- per-deployment max_retries ------------------------------------------------------------

@pytest.mark.parametrize("max_retries", [0, 1, 2])
def test_max_retries_caps_attempts_on_that_deployment(max_retries):
    router, _ = make_router([deployment("a", max_retries=max_retries)], num_retries=5)
    upstreams = Upstreams(default=failed)
    with pytest.raises(UpstreamFailed):
        router.call("g", upstreams, Trace())
    assert upstreams.calls == ["a"] * (1 + max_retries)


def test_max_retries_of_one_deployment_leaves_the_budget_to_its_sibling():
    for seed in range(10):
        router, _ = make_router([deployment("a", max_retries=0), deployment("b")], num_retries=3, seed=seed)
        upstreams = Upstreams(default=failed)
        with pytest.raises(UpstreamFailed):
            router.call("g", upstreams, Trace())
        assert Counter(upstreams.calls) == {"a": 1, "b": 3}, upstreams.calls


# --- backoff and Retry-After -----------------------------------------------------------------

def test_retry_after_is_honoured_before_retrying_the_same_deployment():
    router, sleeps = make_router([deployment("a")], num_retries=1)
    upstreams = Upstreams({"a": [UpstreamRateLimited("slow down", retry_after=1.5)]})
    assert router.call("g", upstreams, Trace()) == "answer from a"
    assert sleeps == [1.5]


def test_a_retry_after_past_the_deadline_is_not_waited_for():
    router, sleeps = make_router([deployment("a", timeout=30)], num_retries=3)
    upstreams = Upstreams({"a": [UpstreamRateLimited("slow down", retry_after=45)]})
    with pytest.raises(UpstreamRateLimited) as info:
        router.call("g", upstreams, Trace())
    assert upstreams.calls == ["a"] and sleeps == []
    assert info.value.retry_after == 45


def test_a_long_retry_after_still_lets_a_sibling_be_tried():
    for seed in range(10):
        router, sleeps = make_router([deployment("a", timeout=30), deployment("b", timeout=30)], num_retries=3,
                                     seed=seed)
        upstreams = Upstreams(default=lambda: UpstreamRateLimited("slow", retry_after=60))
        with pytest.raises(UpstreamRateLimited):
            router.call("g", upstreams, Trace())
        assert sorted(upstreams.calls) == ["a", "b"] and sleeps == []


def test_backoff_grows_with_jitter_and_is_capped():
    error = UpstreamFailed("x")
    rng = random.Random(5)
    for n in range(8):
        delays = [backoff(n, error, 60.0, rng) for _ in range(50)]
        ceiling = min(0.25 * 2 ** n, BACKOFF_CAP)
        assert all(ceiling / 2 <= d <= ceiling for d in delays)
        assert len(set(delays)) > 40          # jittered: workers do not retry in step
    assert backoff(3, error, 0.5, rng) is None or backoff(3, error, 0.5, rng) < 0.5


# --- fallbacks ---------------------------------------------------------------------------------

def test_fallback_groups_are_tried_in_order():
    deployments = [deployment("a"), deployment("x1", "x"), deployment("y1", "y"), deployment("z1", "z")]
    router, _ = make_router(deployments, num_retries=0, fallbacks=[("g", ("x", "y", "z"))])
    upstreams = Upstreams({"a": [failed()], "x1": [failed()], "y1": [UpstreamTimeout("t")]})
    assert router.call("g", upstreams, Trace()) == "answer from z1"
    assert upstreams.calls == ["a", "x1", "y1", "z1"]


def test_each_fallback_group_gets_its_own_retry_budget():
    deployments = [deployment("a"), deployment("f1", "f"), deployment("f2", "f")]
    router, _ = make_router(deployments, num_retries=1, fallbacks=[("g", ("f",))])
    upstreams = Upstreams(default=failed)
    with pytest.raises(UpstreamFailed):
        router.call("g", upstreams, Trace())
    assert upstreams.calls[:2] == ["a", "a"]
    assert sorted(upstreams.calls[2:]) == ["f1", "f2"]


def test_when_every_fallback_fails_a_gateway_error_is_raised():
    deployments = [deployment("a"), deployment("f1", "f")]
    router, _ = make_router(deployments, num_retries=0, fallbacks=[("g", ("f",))])
    upstreams = Upstreams({"a": [UpstreamTimeout("primary")], "f1": [failed()]})
    with pytest.raises((UpstreamTimeout, UpstreamFailed)):
        router.call("g", upstreams, Trace())
    assert upstreams.calls == ["a", "f1"]


def test_a_non_retryable_error_in_a_fallback_stops_the_chain():
    deployments = [deployment("a"), deployment("x1", "x"), deployment("y1", "y")]
    router, _ = make_router(deployments, num_retries=0, fallbacks=[("g", ("x", "y"))])
    upstreams = Upstreams({"a": [failed()], "x1": [ContextLengthExceeded("too long")]})
    with pytest.raises(ContextLengthExceeded):
        router.call("g", upstreams, Trace())
    assert upstreams.calls == ["a", "x1"]


def test_fallbacks_are_not_used_when_the_primary_succeeds_after_a_retry():
    deployments = [deployment("a"), deployment("f1", "f")]
    router, _ = make_router(deployments, num_retries=1, fallbacks=[("g", ("f",))])
    upstreams = Upstreams({"a": [failed()]})
    assert router.call("g", upstreams, Trace()) == "answer from a"
    assert upstreams.calls == ["a", "a"]


def test_fallbacks_belong_to_their_group_only():
    deployments = [deployment("a"), deployment("f1", "f")]
    router, _ = make_router(deployments, num_retries=0, fallbacks=[("f", ("g",))])
    upstreams = Upstreams({"a": [failed()]})
    with pytest.raises(UpstreamFailed):
        router.call("g", upstreams, Trace())
    assert upstreams.calls == ["a"]


# --- selection -------------------------------------------------------------------------------

def test_simple_shuffle_follows_the_weights():
    rng = random.Random(7)
    heavy, light = deployment("heavy", weight=9), deployment("light", weight=1)
    picks = Counter(simple_shuffle([(heavy, EntityStats()), (light, EntityStats())], rng, False).id
                    for _ in range(2000))
    assert 0.85 < picks["heavy"] / 2000 < 0.95


def test_simple_shuffle_uses_every_candidate():
    rng = random.Random(3)
    candidates = [(deployment(str(i)), EntityStats()) for i in range(4)]
    assert {simple_shuffle(candidates, rng, False).id for _ in range(200)} == {"0", "1", "2", "3"}


# --- a controllable clock, for the tests below and tests/unit/test_cooldowns.py ---------------

class Clock:
    """Monotonic and wall time that move only when a test (or the router's sleep) moves them."""
    MINUTE = 1_700_000_040.0          # a wall time on a calendar minute

    def __init__(self, into_minute: float = 15.0):
        self.now = 0.0
        self.base = self.MINUTE + into_minute
        self.sleeps = Sleeps()

    def monotonic(self) -> float:
        return self.now

    def wall(self) -> float:
        return self.base + self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps(seconds)
        self.now += seconds

    def advance(self, seconds: float) -> None:
        self.now += seconds


def clocked_router(deployments, clock: Clock, *, state=None, seed=0, **settings):
    """A Router on `clock` (and a state on its wall time); cooldowns off unless asked for."""
    settings.setdefault("num_retries", 0)
    settings.setdefault("cooldown_time", 0.0)
    state = state if state is not None else SharedMemoryState.private(clock=clock.wall)
    router = Router(tuple(deployments), RouterSettings(**settings), state, rng=random.Random(seed),
                    sleep=clock.sleep, clock=clock.monotonic, wall=clock.wall)
    return router, state


class Slow(Upstreams):
    """Upstreams whose every attempt takes `seconds` on the clock, and which note the in-flight count."""

    def __init__(self, clock: Clock, seconds: float, state, script=None, default=None):
        super().__init__(script, default)
        self.clock, self.seconds, self.state = clock, seconds, state
        self.in_flight: list[int] = []

    def __call__(self, d: Deployment, deadline: float | None = None):
        self.in_flight.append(self.state.stats([d.id])[0].in_flight)
        self.clock.advance(self.seconds)
        return super().__call__(d, deadline)


# --- rpm / tpm caps ------------------------------------------------------------------------------

def test_a_deployment_at_its_rpm_this_minute_is_skipped():
    clock = Clock()
    router, state = clocked_router([deployment("a", rpm=2), deployment("b", rpm=1000)], clock)
    for _ in range(2):              # two requests this minute on "a", from another worker say
        state.begin("a")
        state.end("a")
    upstreams = Upstreams()
    for _ in range(50):
        trace = Trace()
        router.call("g", upstreams, trace)
        router.finished(trace)
    assert upstreams.calls == ["b"] * 50


def test_a_deployment_under_its_rpm_still_gets_traffic():
    clock = Clock()
    router, state = clocked_router([deployment("a", rpm=2), deployment("b", rpm=2)], clock)
    state.begin("a")
    state.end("a")
    upstreams = Upstreams()
    for _ in range(3):
        router.call("g", upstreams, Trace())
    assert sorted(upstreams.calls) == ["a", "b", "b"]


@pytest.mark.parametrize("into_minute", [0.0, 15.0, 59.5])
def test_every_deployment_at_its_rpm_answers_429_until_the_next_minute(into_minute):
    clock = Clock(into_minute)
    router, _ = clocked_router([deployment("a", rpm=1), deployment("b", rpm=1)], clock)
    upstreams = Upstreams()
    for _ in range(2):
        router.call("g", upstreams, Trace())
    assert sorted(upstreams.calls) == ["a", "b"]
    clock.advance(0.25)
    with pytest.raises(UpstreamRateLimited) as info:
        router.call("g", upstreams, Trace())
    assert info.value.retry_after == pytest.approx(60 - (into_minute + 0.25) % 60)
    assert len(upstreams.calls) == 2
    clock.advance(info.value.retry_after)
    assert router.call("g", upstreams, Trace()).startswith("answer from")


def test_failed_attempts_count_towards_rpm():
    clock = Clock()
    router, _ = clocked_router([deployment("a", rpm=2)], clock)
    upstreams = Upstreams({"a": [failed(), failed()]})
    for _ in range(2):
        with pytest.raises(UpstreamFailed):
            router.call("g", upstreams, Trace())
    with pytest.raises(UpstreamRateLimited):
        router.call("g", upstreams, Trace())
    assert upstreams.calls == ["a", "a"]


def test_tokens_counted_by_finished_reach_the_tpm_cap():
    clock = Clock()
    router, state = clocked_router([deployment("a", tpm=100)], clock)
    upstreams = Upstreams()
    trace = Trace()
    router.call("g", upstreams, trace)
    router.finished(trace, 99)
    assert state.stats(["a"])[0].tokens == 99
    trace = Trace()
    router.call("g", upstreams, trace)
    router.finished(trace, 1)
    with pytest.raises(UpstreamRateLimited) as info:
        router.call("g", upstreams, Trace())
    assert info.value.retry_after == pytest.approx(45)
    assert upstreams.calls == ["a", "a"]
    clock.advance(45)
    assert router.call("g", upstreams, Trace()) == "answer from a"


def test_a_capped_group_falls_back():
    clock = Clock()
    router, _ = clocked_router([deployment("a", rpm=1), deployment("f", "h")], clock, fallbacks=(("g", ("h",)),))
    upstreams = Upstreams()
    router.call("g", upstreams, Trace())
    trace = Trace()
    assert router.call("g", upstreams, trace) == "answer from f"
    assert (trace.model_group, trace.deployment_id, trace.fallbacks) == ("h", "f", 1)


# --- the trace and in-flight counts ----------------------------------------------------------------

def test_trace_of_a_first_attempt_success():
    clock = Clock()
    router, _ = clocked_router([deployment("a")], clock)
    trace = Trace()
    router.call("g", Upstreams(), trace)
    assert (trace.model_group, trace.deployment_id, trace.retries, trace.fallbacks) == ("g", "a", 0, 0)


def test_trace_counts_retries_within_the_group_and_time_upstream():
    clock = Clock()
    router, state = clocked_router([deployment("a")], clock, num_retries=3)
    upstreams = Slow(clock, 2.0, state, {"a": [UpstreamRateLimited("slow", retry_after=1.5), failed()]})
    trace = Trace()
    assert router.call("g", upstreams, trace) == "answer from a"
    assert (trace.model_group, trace.deployment_id, trace.retries, trace.fallbacks) == ("g", "a", 2, 0)
    assert clock.sleeps[0] == 1.5 and len(clock.sleeps) == 2
    assert trace.upstream_seconds == pytest.approx(3 * 2.0 + sum(clock.sleeps))
    assert len(upstreams.calls) == 1 + trace.retries + trace.fallbacks


def test_trace_counts_fallbacks_and_the_retries_of_each_group():
    clock = Clock()
    deployments = [deployment("a"), deployment("x1", "x"), deployment("y1", "y")]
    router, state = clocked_router(deployments, clock, num_retries=1, fallbacks=(("g", ("x", "y")),))
    upstreams = Slow(clock, 1.0, state, {"a": [failed(), failed()], "x1": [failed(), failed()],
                                         "y1": [UpstreamTimeout("slow")]})
    trace = Trace()
    assert router.call("g", upstreams, trace) == "answer from y1"
    assert upstreams.calls == ["a", "a", "x1", "x1", "y1", "y1"]
    assert (trace.model_group, trace.deployment_id) == ("y", "y1")
    assert trace.fallbacks == 2
    assert trace.retries == 3                  # one attempt beyond the first in each of g, x and y
    assert len(upstreams.calls) == 1 + trace.retries + trace.fallbacks
    assert trace.upstream_seconds == pytest.approx(6.0 + sum(clock.sleeps))


def test_trace_of_a_failed_call_names_the_group_asked_for_and_no_deployment():
    clock = Clock()
    router, _ = clocked_router([deployment("a"), deployment("f1", "f")], clock, num_retries=1,
                               fallbacks=(("g", ("f",)),))
    trace = Trace()
    with pytest.raises(UpstreamFailed):
        router.call("g", Upstreams(default=failed), trace)
    assert (trace.model_group, trace.deployment_id, trace.retries, trace.fallbacks) == ("g", "", 2, 1)


def test_in_flight_goes_up_during_an_attempt_and_down_after_a_failure():
    clock = Clock()
    router, state = clocked_router([deployment("a")], clock, num_retries=2)
    upstreams = Slow(clock, 0.1, state, {"a": [failed(), failed()]})
    trace = Trace()
    router.call("g", upstreams, trace)
    assert upstreams.in_flight == [1, 1, 1]           # the failed attempts did not stay counted
    assert state.stats(["a"])[0].in_flight == 1       # the answer is still being served
    router.finished(trace, 10)
    assert state.stats(["a"])[0].in_flight == 0


def test_in_flight_drops_after_every_attempt_of_a_failed_call():
    clock = Clock()
    router, state = clocked_router([deployment("a"), deployment("b")], clock, num_retries=3)
    with pytest.raises(UpstreamFailed):
        router.call("g", Upstreams(default=failed), Trace())
    assert [s.in_flight for s in state.stats(["a", "b"])] == [0, 0]


def test_in_flight_drops_after_a_client_error_and_an_unknown_exception():
    clock = Clock()
    router, state = clocked_router([deployment("a")], clock)
    with pytest.raises(UpstreamClientError):
        router.call("g", Upstreams(default=lambda: UpstreamClientError("bad", status=400)), Trace())
    with pytest.raises(KeyError):
        router.call("g", Upstreams(default=lambda: KeyError("ours")), Trace())
    assert state.stats(["a"])[0].in_flight == 0


def test_successful_calls_stay_in_flight_until_finished():
    clock = Clock()
    router, state = clocked_router([deployment("a")], clock)
    traces = [Trace() for _ in range(3)]
    for trace in traces:
        router.call("g", Upstreams(), trace)
    assert state.stats(["a"])[0].in_flight == 3
    for left, trace in zip((2, 1, 0), traces, strict=True):
        router.finished(trace)
        assert state.stats(["a"])[0].in_flight == left


def test_latency_is_measured_per_kind_of_call():
    clock = Clock()
    router, state = clocked_router([deployment("a")], clock)
    router.call("g", Slow(clock, 2.0, state), Trace())
    router.call("g", Slow(clock, 0.5, state), Trace(), stream=True)
    stats = state.stats(["a"])[0]
    assert (stats.latency, stats.ttft) == (pytest.approx(2.0), pytest.approx(0.5))


# --- strategies through the router ---------------------------------------------------------------

class Timed(Upstreams):
    """Each deployment id takes its own number of seconds on the clock."""

    def __init__(self, clock: Clock, seconds: dict[str, float]):
        super().__init__()
        self.clock, self.seconds = clock, seconds

    def __call__(self, d: Deployment, deadline: float | None = None):
        self.clock.advance(self.seconds[d.id])
        return super().__call__(d, deadline)


@pytest.mark.parametrize("stream", [False, True])
def test_latency_based_routing_measures_each_then_keeps_to_the_fast_one(stream):
    clock = Clock()
    router, state = clocked_router([deployment("slow"), deployment("fast"), deployment("fine")], clock,
                                   routing_strategy="latency-based-routing")
    upstreams = Timed(clock, {"slow": 5.0, "fast": 1.0, "fine": 1.05})
    for _ in range(60):
        trace = Trace()
        router.call("g", upstreams, trace, stream=stream)
        router.finished(trace)
    assert sorted(upstreams.calls[:3]) == ["fast", "fine", "slow"]      # each measured once first
    later = Counter(upstreams.calls[3:])
    assert later["slow"] == 0 and later["fast"] > 15 and later["fine"] > 15
    measured = state.stats(["slow"])[0]
    assert (measured.ttft if stream else measured.latency) == pytest.approx(5.0)


def test_latency_based_routing_counts_a_timeout_as_slow():
    clock = Clock()
    router, state = clocked_router([deployment("a"), deployment("b")], clock, num_retries=1,
                                   routing_strategy="latency-based-routing")

    def attempt(d, deadline):
        clock.advance(30.0 if d.id == "a" else 1.0)
        if d.id == "a":
            raise UpstreamTimeout("no answer")
        return f"answer from {d.id}"
    for _ in range(20):
        trace = Trace()
        assert router.call("g", attempt, trace) == "answer from b"
        router.finished(trace)
    assert state.stats(["a"])[0].latency == pytest.approx(30.0)


def test_usage_based_routing_spreads_by_remaining_rpm():
    clock = Clock()
    router, _ = clocked_router([deployment("small", rpm=100), deployment("big", rpm=300)], clock,
                               routing_strategy="usage-based-routing")
    upstreams = Upstreams()
    for _ in range(80):
        trace = Trace()
        router.call("g", upstreams, trace)
        router.finished(trace)
    assert Counter(upstreams.calls) == {"small": 20, "big": 60}


def test_least_busy_routing_avoids_deployments_holding_requests():
    clock = Clock()
    router, state = clocked_router([deployment("a"), deployment("b"), deployment("c")], clock,
                                   routing_strategy="least-busy")
    upstreams = Upstreams()
    held = []
    for _ in range(9):                         # nothing finished: each call goes to the least loaded
        trace = Trace()
        router.call("g", upstreams, trace)
        held.append(trace)
    assert Counter(upstreams.calls) == {"a": 3, "b": 3, "c": 3}
    for trace in held:
        if trace.deployment_id == "b":
            router.finished(trace)
    for _ in range(3):
        router.call("g", upstreams, Trace())
    assert upstreams.calls[9:] == ["b", "b", "b"]


# --- deadlines ---------------------------------------------------------------------------------------

def test_the_deadline_is_the_groups_longest_timeout_and_each_fallback_gets_its_own():
    clock = Clock()
    deployments = [deployment("a", timeout=10), deployment("b", timeout=40), deployment("f1", "h", timeout=7)]
    router, _ = clocked_router(deployments, clock, num_retries=1, fallbacks=(("g", ("h",)),))
    deadlines = {}

    def attempt(d, deadline):
        deadlines[d.id] = deadline - clock.monotonic()
        clock.advance(1)
        if d.id != "f1":
            raise UpstreamFailed("down")
        return "ok"
    assert router.call("g", attempt, Trace()) == "ok"
    assert sorted([deadlines["a"], deadlines["b"]]) == [39, 40]      # one deadline for the group's call
    assert deadlines["f1"] == 7


def test_no_retry_starts_after_the_deadline():
    clock = Clock()
    router, _ = clocked_router([deployment("a", timeout=30), deployment("b", timeout=30)], clock, num_retries=3)
    upstreams = Timed(clock, {"a": 31.0, "b": 31.0})
    upstreams.default = failed
    with pytest.raises(UpstreamFailed):
        router.call("g", upstreams, Trace())
    assert len(upstreams.calls) == 1


def test_no_backoff_sleeps_past_the_deadline():
    clock = Clock()
    router, _ = clocked_router([deployment("a", timeout=30)], clock, num_retries=3)
    upstreams = Timed(clock, {"a": 29.95})
    upstreams.default = failed
    with pytest.raises(UpstreamFailed):
        router.call("g", upstreams, Trace())
    assert upstreams.calls == ["a"] and clock.sleeps == []
    assert clock.monotonic() <= 30


# --- fallback kinds ------------------------------------------------------------------------------

def fallback_router(deployments, **settings):
    return clocked_router(deployments, Clock(), **settings)[0]


def test_context_window_fallbacks_answer_a_context_length_error():
    router = fallback_router([deployment("a"), deployment("big1", "big"), deployment("h1", "h")],
                             fallbacks=(("g", ("h",)),), context_window_fallbacks=(("g", ("big",)),))
    upstreams = Upstreams({"a": [ContextLengthExceeded("too long")]})
    trace = Trace()
    assert router.call("g", upstreams, trace) == "answer from big1"
    assert upstreams.calls == ["a", "big1"] and trace.fallbacks == 1 and trace.model_group == "big"


def test_a_context_length_error_does_not_use_general_or_default_fallbacks():
    router = fallback_router([deployment("a"), deployment("h1", "h"), deployment("d1", "d")],
                             fallbacks=(("g", ("h",)),), default_fallbacks=("d",),
                             content_policy_fallbacks=(("g", ("h",)),))
    upstreams = Upstreams({"a": [ContextLengthExceeded("too long")]})
    with pytest.raises(ContextLengthExceeded):
        router.call("g", upstreams, Trace())
    assert upstreams.calls == ["a"]


def test_content_policy_fallbacks_answer_a_content_policy_violation():
    router = fallback_router([deployment("a"), deployment("lenient1", "lenient"), deployment("big1", "big")],
                             context_window_fallbacks=(("g", ("big",)),),
                             content_policy_fallbacks=(("g", ("lenient",)),))
    upstreams = Upstreams({"a": [ContentPolicyViolation("filtered")]})
    trace = Trace()
    assert router.call("g", upstreams, trace) == "answer from lenient1"
    assert upstreams.calls == ["a", "lenient1"] and trace.fallbacks == 1


def test_a_content_policy_violation_without_its_fallbacks_is_raised():
    router = fallback_router([deployment("a"), deployment("h1", "h")], fallbacks=(("g", ("h",)),),
                             default_fallbacks=("h",))
    upstreams = Upstreams({"a": [ContentPolicyViolation("filtered")]})
    with pytest.raises(ContentPolicyViolation):
        router.call("g", upstreams, Trace())
    assert upstreams.calls == ["a"]


def test_a_context_window_chain_goes_on_past_another_context_error():
    router = fallback_router([deployment("a"), deployment("m1", "m"), deployment("l1", "l")],
                             context_window_fallbacks=(("g", ("m", "l")),))
    upstreams = Upstreams({"a": [ContextLengthExceeded("too long")], "m1": [ContextLengthExceeded("still")]})
    assert router.call("g", upstreams, Trace()) == "answer from l1"
    assert upstreams.calls == ["a", "m1", "l1"]


@pytest.mark.parametrize("kind", ["fallbacks", "context_window_fallbacks"])
def test_a_bad_request_inside_a_fallback_chain_stops_it(kind):
    router = fallback_router([deployment("a"), deployment("x1", "x"), deployment("y1", "y")],
                             **{kind: (("g", ("x", "y")),)})
    first = failed() if kind == "fallbacks" else ContextLengthExceeded("too long")
    upstreams = Upstreams({"a": [first], "x1": [UpstreamClientError("bad request", status=400)]})
    with pytest.raises(UpstreamClientError, match="bad request"):
        router.call("g", upstreams, Trace())
    assert upstreams.calls == ["a", "x1"]


def test_default_fallbacks_serve_a_group_without_its_own():
    router = fallback_router([deployment("a"), deployment("d1", "d"), deployment("e1", "e")],
                             default_fallbacks=("d", "e"))
    upstreams = Upstreams({"a": [failed()], "d1": [UpstreamTimeout("slow")]})
    trace = Trace()
    assert router.call("g", upstreams, trace) == "answer from e1"
    assert upstreams.calls == ["a", "d1", "e1"] and trace.fallbacks == 2


def test_a_group_with_its_own_fallbacks_does_not_use_the_defaults():
    router = fallback_router([deployment("a"), deployment("h1", "h"), deployment("d1", "d")],
                             fallbacks=(("g", ("h",)),), default_fallbacks=("d",))
    upstreams = Upstreams({"a": [failed()], "h1": [failed()]})
    with pytest.raises(UpstreamFailed):
        router.call("g", upstreams, Trace())
    assert upstreams.calls == ["a", "h1"]


def test_a_default_fallback_group_does_not_fall_back_to_itself():
    router = fallback_router([deployment("d1", "d"), deployment("e1", "e")], default_fallbacks=("d", "e"))
    upstreams = Upstreams({"d1": [failed()], "e1": [failed()]})
    with pytest.raises(UpstreamFailed):
        router.call("d", upstreams, Trace())
    assert upstreams.calls == ["d1", "e1"]


@pytest.mark.parametrize("max_fallbacks, tried", [(0, ["a"]), (1, ["a", "x1"]), (2, ["a", "x1", "y1"]),
                                                  (5, ["a", "x1", "y1", "z1"])])
def test_max_fallbacks_bounds_the_chain(max_fallbacks, tried):
    deployments = [deployment("a"), deployment("x1", "x"), deployment("y1", "y"), deployment("z1", "z")]
    for settings in ({"fallbacks": (("g", ("x", "y", "z")),)}, {"default_fallbacks": ("x", "y", "z")}):
        router = fallback_router(deployments, max_fallbacks=max_fallbacks, **settings)
        upstreams = Upstreams(default=failed)
        trace = Trace()
        with pytest.raises(UpstreamFailed):
            router.call("g", upstreams, trace)
        assert upstreams.calls == tried and trace.fallbacks == len(tried) - 1


def test_max_fallbacks_bounds_context_window_chains_too():
    deployments = [deployment("a"), deployment("x1", "x"), deployment("y1", "y")]
    router = fallback_router(deployments, max_fallbacks=1, context_window_fallbacks=(("g", ("x", "y")),))
    upstreams = Upstreams(default=lambda: ContextLengthExceeded("too long"))
    with pytest.raises(ContextLengthExceeded):
        router.call("g", upstreams, Trace())
    assert upstreams.calls == ["a", "x1"]


# --- the retry budget ------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", range(12))
def test_a_deployment_that_cannot_be_retried_in_time_does_not_use_up_the_budget(seed):
    """`a` asks for a wait past the deadline, `b` failed once: the last attempt of the budget goes to `b`."""
    clock = Clock()
    router, _ = clocked_router([deployment("a", timeout=30), deployment("b", timeout=30)], clock, seed=seed,
                               num_retries=2)
    upstreams = Upstreams({"a": [UpstreamRateLimited("slow", retry_after=60)] * 5, "b": [failed()]})
    assert router.call("g", upstreams, Trace()) == "answer from b"
    assert Counter(upstreams.calls) == {"a": 1, "b": 2}


@pytest.mark.parametrize("seed", range(10))
def test_the_wait_before_retrying_a_deployment_follows_its_own_error(seed):
    """`a` asked for 1.5 s; `b`'s auth failure in between must not replace that with a jittered backoff."""
    clock = Clock()
    router, _ = clocked_router([deployment("a"), deployment("b")], clock, seed=seed, num_retries=2)
    upstreams = Upstreams({"a": [UpstreamRateLimited("slow", retry_after=1.5)], "b": [UpstreamAuthFailed("key")]})
    assert router.call("g", upstreams, Trace()) == "answer from a"
    assert sorted(upstreams.calls) == ["a", "a", "b"] and upstreams.calls[-1] == "a"
    assert clock.sleeps == [1.5]
