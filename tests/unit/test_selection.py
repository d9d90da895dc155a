"""gateway/routing/selection.py: which deployment each strategy picks, and when one is at its cap."""
from __future__ import annotations

import random
from collections import Counter

import pytest

from gateway.routing.selection import (STRATEGIES, at_cap, least_busy, lowest_latency, lowest_usage,
                                       simple_shuffle, usage_share)
from gateway.types import EntityStats
from tests.unit.test_router import deployment

PICKS = 4000
SLACK = 0.03      # a share may stray this far from its expectation over PICKS seeded picks


def shares(strategy, candidates, *, stream=False, picks=PICKS, seed=11) -> dict[str, float]:
    rng = random.Random(seed)
    counts = Counter(strategy(candidates, rng, stream).id for _ in range(picks))
    return {d.id: counts[d.id] / picks for d, _ in candidates}


def idle(*deployments):
    return [(d, EntityStats()) for d in deployments]


def assert_shares(observed: dict[str, float], expected: dict[str, float]):
    assert observed.keys() == expected.keys()
    for name, share in expected.items():
        assert abs(observed[name] - share) <= SLACK, (name, observed)


# --- simple-shuffle --------------------------------------------------------------------------

def test_simple_shuffle_follows_weight():
    candidates = idle(deployment("a", weight=6), deployment("b", weight=3), deployment("c", weight=1))
    assert_shares(shares(simple_shuffle, candidates), {"a": 0.6, "b": 0.3, "c": 0.1})


def test_simple_shuffle_prefers_weight_over_rpm_and_tpm():
    candidates = idle(deployment("a", weight=1, rpm=900, tpm=10), deployment("b", weight=1, rpm=100, tpm=990))
    assert_shares(shares(simple_shuffle, candidates), {"a": 0.5, "b": 0.5})


def test_simple_shuffle_by_rpm_when_no_weight_is_set():
    candidates = idle(deployment("a", rpm=300, tpm=1), deployment("b", rpm=100, tpm=999))
    assert_shares(shares(simple_shuffle, candidates), {"a": 0.75, "b": 0.25})


def test_simple_shuffle_by_tpm_when_neither_weight_nor_rpm_is_set():
    candidates = idle(deployment("a", tpm=1000), deployment("b", tpm=3000))
    assert_shares(shares(simple_shuffle, candidates), {"a": 0.25, "b": 0.75})


def test_simple_shuffle_is_uniform_without_weight_rpm_or_tpm():
    candidates = idle(*(deployment(str(i)) for i in range(4)))
    assert_shares(shares(simple_shuffle, candidates), {str(i): 0.25 for i in range(4)})


def test_simple_shuffle_ignores_load():
    """Unlike least-busy, the counters do not move the weights."""
    candidates = [(deployment("a"), EntityStats(in_flight=50, requests=900)), (deployment("b"), EntityStats())]
    assert_shares(shares(simple_shuffle, candidates), {"a": 0.5, "b": 0.5})


def test_a_single_candidate_is_picked_by_every_strategy():
    only = deployment("only", weight=3, rpm=10)
    for strategy in STRATEGIES.values():
        for stream in (False, True):
            assert strategy([(only, EntityStats(in_flight=7, latency=9.0))], random.Random(0), stream) is only


# --- least-busy ------------------------------------------------------------------------------

def test_least_busy_picks_the_fewest_in_flight():
    candidates = [(deployment("a"), EntityStats(in_flight=3)), (deployment("b"), EntityStats(in_flight=1)),
                  (deployment("c"), EntityStats(in_flight=2))]
    assert shares(least_busy, candidates, picks=500) == {"a": 0.0, "b": 1.0, "c": 0.0}


def test_least_busy_breaks_ties_at_random():
    candidates = [(deployment("a"), EntityStats(in_flight=0)), (deployment("b"), EntityStats(in_flight=5)),
                  (deployment("c"), EntityStats(in_flight=0))]
    assert_shares(shares(least_busy, candidates), {"a": 0.5, "b": 0.0, "c": 0.5})


def test_least_busy_ignores_weights():
    candidates = [(deployment("a", weight=100), EntityStats(in_flight=1)),
                  (deployment("b", weight=1), EntityStats(in_flight=0))]
    assert shares(least_busy, candidates, picks=200)["b"] == 1.0


# --- latency-based-routing -----------------------------------------------------------------------

def test_lowest_latency_tries_unmeasured_deployments_first():
    candidates = [(deployment("fast"), EntityStats(latency=0.01, ttft=0.01)), (deployment("new1"), EntityStats()),
                  (deployment("new2"), EntityStats())]
    for stream in (False, True):
        assert_shares(shares(lowest_latency, candidates, stream=stream), {"fast": 0.0, "new1": 0.5, "new2": 0.5})


def test_lowest_latency_uses_time_to_first_token_for_streams():
    candidates = [(deployment("quick-start"), EntityStats(latency=2.0, ttft=0.1)),
                  (deployment("quick-end"), EntityStats(latency=0.5, ttft=0.4))]
    assert shares(lowest_latency, candidates, stream=True, picks=300)["quick-start"] == 1.0
    assert shares(lowest_latency, candidates, stream=False, picks=300)["quick-end"] == 1.0


def test_lowest_latency_shares_traffic_within_ten_percent_of_the_best():
    candidates = [(deployment("best"), EntityStats(latency=1.0)), (deployment("close"), EntityStats(latency=1.09)),
                  (deployment("slow"), EntityStats(latency=1.2))]
    assert_shares(shares(lowest_latency, candidates), {"best": 0.5, "close": 0.5, "slow": 0.0})


@pytest.mark.parametrize("stream", [False, True])
def test_lowest_latency_never_picks_a_slow_one_while_a_fast_one_exists(stream):
    candidates = [(deployment("slow"), EntityStats(latency=5.0, ttft=3.0)),
                  (deployment("fast"), EntityStats(latency=0.2, ttft=0.1)),
                  (deployment("slower"), EntityStats(latency=9.0, ttft=8.0))]
    assert shares(lowest_latency, candidates, stream=stream) == {"slow": 0.0, "fast": 1.0, "slower": 0.0}


# --- usage-based-routing ---------------------------------------------------------------------

def test_usage_share_is_the_larger_of_requests_and_tokens_shares():
    assert usage_share(deployment("a", rpm=100, tpm=1000), EntityStats(requests=50, tokens=100)) == 0.5
    assert usage_share(deployment("a", rpm=100, tpm=1000), EntityStats(requests=10, tokens=800)) == 0.8
    assert usage_share(deployment("a", rpm=100), EntityStats(requests=25, tokens=10 ** 9)) == 0.25
    assert usage_share(deployment("a", tpm=1000), EntityStats(requests=10 ** 6, tokens=100)) == 0.1
    assert usage_share(deployment("a"), EntityStats(requests=10 ** 6, tokens=10 ** 9)) == 0.0


def test_lowest_usage_picks_the_lowest_share_of_its_limits():
    candidates = [(deployment("half", rpm=100, tpm=1000), EntityStats(requests=50, tokens=100)),
                  (deployment("tokens", rpm=100, tpm=1000), EntityStats(requests=10, tokens=800)),
                  (deployment("third", rpm=30), EntityStats(requests=12))]
    assert shares(lowest_usage, candidates, picks=300) == {"half": 0.0, "tokens": 0.0, "third": 1.0}


def test_lowest_usage_spreads_by_remaining_rpm_not_by_raw_counts():
    """More requests so far, but on a bigger limit: the big one still has more room."""
    candidates = [(deployment("big", rpm=1000), EntityStats(requests=100)),
                  (deployment("small", rpm=10), EntityStats(requests=5))]
    assert shares(lowest_usage, candidates, picks=300)["big"] == 1.0


def test_lowest_usage_counts_an_unlimited_deployment_as_unused():
    candidates = [(deployment("limited", rpm=1000), EntityStats(requests=1)),
                  (deployment("unlimited"), EntityStats(requests=500, tokens=10 ** 6, in_flight=40))]
    assert shares(lowest_usage, candidates, picks=300)["unlimited"] == 1.0


def test_lowest_usage_breaks_ties_at_random():
    candidates = [(deployment("a", rpm=100), EntityStats(requests=10)),
                  (deployment("b", rpm=10), EntityStats(requests=1)),
                  (deployment("c", rpm=100), EntityStats(requests=90))]
    assert_shares(shares(lowest_usage, candidates), {"a": 0.5, "b": 0.5, "c": 0.0})


# --- caps ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("requests, capped", [(0, False), (4, False), (5, True), (6, True)])
def test_at_cap_by_rpm(requests, capped):
    assert at_cap(deployment("a", rpm=5), EntityStats(requests=requests, tokens=10 ** 9)) is capped


@pytest.mark.parametrize("tokens, capped", [(0, False), (99, False), (100, True), (5000, True)])
def test_at_cap_by_tpm(tokens, capped):
    assert at_cap(deployment("a", tpm=100), EntityStats(requests=10 ** 6, tokens=tokens)) is capped


def test_at_cap_when_either_limit_is_reached():
    both = deployment("a", rpm=10, tpm=100)
    assert not at_cap(both, EntityStats(requests=9, tokens=99))
    assert at_cap(both, EntityStats(requests=10, tokens=0))
    assert at_cap(both, EntityStats(requests=0, tokens=100))


def test_no_limit_is_no_cap():
    assert not at_cap(deployment("a"), EntityStats(in_flight=10 ** 4, requests=10 ** 9, tokens=10 ** 12))


@pytest.mark.parametrize("limit", [{"rpm": 0}, {"tpm": 0}])
def test_a_zero_limit_is_always_at_cap(limit):
    assert at_cap(deployment("a", **limit), EntityStats())


def test_every_configured_strategy_has_a_picker():
    assert set(STRATEGIES) == {"simple-shuffle", "least-busy", "latency-based-routing", "usage-based-routing"}
    candidates = idle(deployment("a"), deployment("b"))
    for strategy in STRATEGIES.values():
        assert strategy(candidates, random.Random(1), False).id in {"a", "b"}
