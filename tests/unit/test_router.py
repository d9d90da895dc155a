"""gateway/routing/router.py: attempts, retries, exclusions and fallbacks before the first byte."""
from __future__ import annotations

import random
from collections import Counter

import pytest

from gateway.errors import (BadUpstreamResponse, ContextLengthExceeded, GatewayError, ModelNotFound,
                            UpstreamAuthFailed, UpstreamClientError, UpstreamFailed, UpstreamRateLimited,
                            UpstreamTimeout)
from gateway.routing import Router
from gateway.routing.policy import BACKOFF_CAP, RETRY_AFTER_CAP, backoff
from gateway.routing.selection import simple_shuffle
from gateway.types import Deployment, RouterSettings


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


def make_router(deployments, *, num_retries=2, fallbacks=(), seed=0):
    sleeps = Sleeps()
    router = Router(tuple(deployments), RouterSettings(num_retries=num_retries, fallbacks=tuple(fallbacks)),
                    rng=random.Random(seed), sleep=sleeps)
    return router, sleeps


def failed():
    return UpstreamFailed("boom")


# --- the happy path and unknown models ---------------------------------------------------------

def test_first_attempt_success_makes_one_call():
    router, sleeps = make_router([deployment("a")])
    upstreams = Upstreams()
    assert router.call("g", upstreams) == "answer from a"
    assert upstreams.calls == ["a"] and sleeps == []


def test_unknown_model_raises_model_not_found_without_any_attempt():
    router, _ = make_router([deployment("a")])
    upstreams = Upstreams()
    with pytest.raises(ModelNotFound):
        router.call("other", upstreams)
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
        router.call("g", upstreams)
    assert len(upstreams.calls) == 1 + num_retries


def test_a_retry_succeeds():
    router, _ = make_router([deployment("a")], num_retries=2)
    upstreams = Upstreams({"a": [failed(), failed()]})
    assert router.call("g", upstreams) == "answer from a"
    assert upstreams.calls == ["a", "a", "a"]


@pytest.mark.parametrize("seed", range(20))
def test_an_untried_sibling_is_preferred(seed):
    router, sleeps = make_router([deployment("a"), deployment("b"), deployment("c")], num_retries=2, seed=seed)
    upstreams = Upstreams(default=failed)
    with pytest.raises(UpstreamFailed):
        router.call("g", upstreams)
    assert sorted(upstreams.calls) == ["a", "b", "c"]
    assert sleeps == []          # moving to a sibling needs no backoff


def test_after_every_sibling_was_tried_it_retries_with_backoff():
    router, sleeps = make_router([deployment("a"), deployment("b")], num_retries=3)
    upstreams = Upstreams(default=failed)
    with pytest.raises(UpstreamFailed):
        router.call("g", upstreams)
    assert len(upstreams.calls) == 4
    assert sorted(upstreams.calls[:2]) == ["a", "b"]
    assert len(sleeps) == 2 and all(0 < s <= BACKOFF_CAP for s in sleeps)


def test_the_last_error_is_raised():
    router, _ = make_router([deployment("a")], num_retries=1)
    upstreams = Upstreams({"a": [UpstreamFailed("first"), UpstreamTimeout("second")]})
    with pytest.raises(UpstreamTimeout, match="second"):
        router.call("g", upstreams)


@pytest.mark.parametrize("error", [UpstreamFailed("x"), UpstreamTimeout("x"), UpstreamRateLimited("x")])
def test_retryable_errors_are_retried(error):
    router, _ = make_router([deployment("a")], num_retries=1)
    upstreams = Upstreams({"a": [error]})
    assert router.call("g", upstreams) == "answer from a"
    assert upstreams.calls == ["a", "a"]


@pytest.mark.parametrize("error", [
    UpstreamClientError("bad", status=400), UpstreamClientError("nope", status=404),
    UpstreamClientError("unprocessable", status=422), ContextLengthExceeded("too long"),
    BadUpstreamResponse("garbage"),
])
def test_non_retryable_errors_raise_at_once(error):
    router, sleeps = make_router([deployment("a"), deployment("b")], num_retries=3,
                                 fallbacks=[("g", ("h",))])
    router_with_fallback, _ = make_router([deployment("a"), deployment("b"), deployment("f", "h")],
                                          num_retries=3, fallbacks=[("g", ("h",))])
    for r in (router, router_with_fallback):
        upstreams = Upstreams(default=lambda: error)
        with pytest.raises(type(error)) as info:
            r.call("g", upstreams)
        assert info.value is error
        assert len(upstreams.calls) == 1
    assert sleeps == []


def test_an_unknown_exception_is_not_swallowed():
    router, _ = make_router([deployment("a"), deployment("b")])
    upstreams = Upstreams(default=lambda: RuntimeError("our bug"))
    with pytest.raises(RuntimeError):
        router.call("g", upstreams)
    assert len(upstreams.calls) == 1


# --- upstream 401/403 ---------------------------------------------------------------------------

def test_auth_failure_excludes_the_deployment_and_moves_to_a_sibling():
    for seed in range(10):
        router, sleeps = make_router([deployment("a"), deployment("b")], num_retries=3, seed=seed)
        upstreams = Upstreams({"a": [UpstreamAuthFailed("bad key")] * 5, "b": [failed()] * 5})
        with pytest.raises(GatewayError):
            router.call("g", upstreams)
        assert upstreams.calls.count("a") == 1, upstreams.calls
        assert upstreams.calls.count("b") == 3, upstreams.calls


def test_auth_failure_on_the_only_deployment_is_not_retried():
    router, sleeps = make_router([deployment("a")], num_retries=4)
    upstreams = Upstreams(default=lambda: UpstreamAuthFailed("bad key"))
    with pytest.raises(UpstreamAuthFailed):
        router.call("g", upstreams)
    assert upstreams.calls == ["a"] and sleeps == []


def test_auth_failure_falls_back():
    router, _ = make_router([deployment("a"), deployment("f", "h")], fallbacks=[("g", ("h",))])
    upstreams = Upstreams({"a": [UpstreamAuthFailed("bad key")]})
    assert router.call("g", upstreams) == "answer from f"
    assert upstreams.calls == ["a", "f"]


# --- per-deployment max_retries ------------------------------------------------------------

@pytest.mark.parametrize("max_retries", [0, 1, 2])
def test_max_retries_caps_attempts_on_that_deployment(max_retries):
    router, _ = make_router([deployment("a", max_retries=max_retries)], num_retries=5)
    upstreams = Upstreams(default=failed)
    with pytest.raises(UpstreamFailed):
        router.call("g", upstreams)
    assert upstreams.calls == ["a"] * (1 + max_retries)


def test_max_retries_of_one_deployment_leaves_the_budget_to_its_sibling():
    for seed in range(10):
        router, _ = make_router([deployment("a", max_retries=0), deployment("b")], num_retries=3, seed=seed)
        upstreams = Upstreams(default=failed)
        with pytest.raises(UpstreamFailed):
            router.call("g", upstreams)
        assert Counter(upstreams.calls) == {"a": 1, "b": 3}, upstreams.calls


# --- backoff and Retry-After -----------------------------------------------------------------

def test_retry_after_is_honoured_before_retrying_the_same_deployment():
    router, sleeps = make_router([deployment("a")], num_retries=1)
    upstreams = Upstreams({"a": [UpstreamRateLimited("slow down", retry_after=1.5)]})
    assert router.call("g", upstreams) == "answer from a"
    assert sleeps == [1.5]


def test_a_retry_after_longer_than_the_cap_is_not_waited_for():
    router, sleeps = make_router([deployment("a")], num_retries=3)
    upstreams = Upstreams({"a": [UpstreamRateLimited("slow down", retry_after=RETRY_AFTER_CAP + 55)]})
    with pytest.raises(UpstreamRateLimited) as info:
        router.call("g", upstreams)
    assert upstreams.calls == ["a"] and sleeps == []
    assert info.value.retry_after == RETRY_AFTER_CAP + 55


def test_a_long_retry_after_still_lets_a_sibling_be_tried():
    for seed in range(10):
        router, sleeps = make_router([deployment("a"), deployment("b")], num_retries=3, seed=seed)
        upstreams = Upstreams(default=lambda: UpstreamRateLimited("slow", retry_after=60))
        with pytest.raises(UpstreamRateLimited):
            router.call("g", upstreams)
        assert sorted(upstreams.calls) == ["a", "b"] and sleeps == []


def test_backoff_grows_and_is_capped():
    error = UpstreamFailed("x")
    delays = [backoff(n, error) for n in range(8)]
    assert delays == sorted(delays) and delays[0] > 0
    assert max(delays) == BACKOFF_CAP


# --- fallbacks ---------------------------------------------------------------------------------

def test_fallback_groups_are_tried_in_order():
    deployments = [deployment("a"), deployment("x1", "x"), deployment("y1", "y"), deployment("z1", "z")]
    router, _ = make_router(deployments, num_retries=0, fallbacks=[("g", ("x", "y", "z"))])
    upstreams = Upstreams({"a": [failed()], "x1": [failed()], "y1": [UpstreamTimeout("t")]})
    assert router.call("g", upstreams) == "answer from z1"
    assert upstreams.calls == ["a", "x1", "y1", "z1"]


def test_each_fallback_group_gets_its_own_retry_budget():
    deployments = [deployment("a"), deployment("f1", "f"), deployment("f2", "f")]
    router, _ = make_router(deployments, num_retries=1, fallbacks=[("g", ("f",))])
    upstreams = Upstreams(default=failed)
    with pytest.raises(UpstreamFailed):
        router.call("g", upstreams)
    assert upstreams.calls[:2] == ["a", "a"]
    assert sorted(upstreams.calls[2:]) == ["f1", "f2"]


def test_when_every_fallback_fails_a_gateway_error_is_raised():
    deployments = [deployment("a"), deployment("f1", "f")]
    router, _ = make_router(deployments, num_retries=0, fallbacks=[("g", ("f",))])
    upstreams = Upstreams({"a": [UpstreamTimeout("primary")], "f1": [failed()]})
    with pytest.raises((UpstreamTimeout, UpstreamFailed)):
        router.call("g", upstreams)
    assert upstreams.calls == ["a", "f1"]


def test_a_non_retryable_error_in_a_fallback_stops_the_chain():
    deployments = [deployment("a"), deployment("x1", "x"), deployment("y1", "y")]
    router, _ = make_router(deployments, num_retries=0, fallbacks=[("g", ("x", "y"))])
    upstreams = Upstreams({"a": [failed()], "x1": [ContextLengthExceeded("too long")]})
    with pytest.raises(ContextLengthExceeded):
        router.call("g", upstreams)
    assert upstreams.calls == ["a", "x1"]


def test_fallbacks_are_not_used_when_the_primary_succeeds_after_a_retry():
    deployments = [deployment("a"), deployment("f1", "f")]
    router, _ = make_router(deployments, num_retries=1, fallbacks=[("g", ("f",))])
    upstreams = Upstreams({"a": [failed()]})
    assert router.call("g", upstreams) == "answer from a"
    assert upstreams.calls == ["a", "a"]


def test_fallbacks_belong_to_their_group_only():
    deployments = [deployment("a"), deployment("f1", "f")]
    router, _ = make_router(deployments, num_retries=0, fallbacks=[("f", ("g",))])
    upstreams = Upstreams({"a": [failed()]})
    with pytest.raises(UpstreamFailed):
        router.call("g", upstreams)
    assert upstreams.calls == ["a"]


# --- selection -------------------------------------------------------------------------------

def test_simple_shuffle_follows_the_weights():
    rng = random.Random(7)
    heavy, light = deployment("heavy", weight=9), deployment("light", weight=1)
    picks = Counter(simple_shuffle([heavy, light], rng).id for _ in range(2000))
    assert 0.85 < picks["heavy"] / 2000 < 0.95


def test_simple_shuffle_uses_every_candidate():
    rng = random.Random(3)
    candidates = [deployment(str(i)) for i in range(4)]
    assert {simple_shuffle(candidates, rng).id for _ in range(200)} == {"0", "1", "2", "3"}
