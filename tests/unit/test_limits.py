"""gateway/limits.py: a key's asks, refusals as the client sees them, budget periods on a test clock."""
from __future__ import annotations

import pytest

from gateway.errors import BudgetExceeded, RateLimited
from gateway.limits import Limiter, budget_period
from gateway.store.shared_memory import SharedMemoryState
from gateway.tokens import completion_reserve, estimate_prompt_tokens
from gateway.types import KeyRecord, ModelRequest, Principal

DAY = 86400.0
START = 1_700_000_000.0 - 1_700_000_000.0 % DAY     # midnight UTC, so minutes and days line up


class Clock:
    def __init__(self, now: float = START + 15):
        self.now = now

    def __call__(self) -> float:
        return self.now


def key(**fields) -> Principal:
    record = KeyRecord(token="t" * 64, key_name="sk-...abcd", created_at=START, **fields)
    return Principal(name="app", key=record)


def call(model="gpt", max_tokens=10, content="hello there") -> ModelRequest:
    params = {"model": model, "messages": [{"role": "user", "content": content}], "max_tokens": max_tokens}
    return ModelRequest("chat/completions", model, params, {})


@pytest.fixture
def state():
    state = SharedMemoryState.private()
    yield state
    state.close()


def limiter(state, clock, prices=None) -> Limiter:
    return Limiter(state.limits(), prices or {"gpt": (0.001, 0.002)}, lease_seconds=600, clock=clock)


def test_the_master_key_is_not_limited(state):
    assert limiter(state, Clock()).admit(Principal(name="master", is_master=True), call()) is None


def test_rpm_refusal_is_a_429_with_retry_after_and_rate_headers(state):
    clock = Clock()
    limits = limiter(state, clock)
    principal = key(rpm_limit=2)
    first = limits.admit(principal, call())
    assert first.headers == {"x-ratelimit-limit-requests": "2", "x-ratelimit-remaining-requests": "1"}
    limits.admit(principal, call())
    with pytest.raises(RateLimited) as refused:
        limits.admit(principal, call())
    error = refused.value
    assert (error.status, error.code) == (429, "rate_limit_exceeded")
    headers = error.headers()
    assert headers["Retry-After"] == "45" and headers["x-ratelimit-remaining-requests"] == "0"
    assert "2 requests per minute" in error.message


def test_a_reservation_holds_the_estimate_and_settling_replaces_it(state):
    clock = Clock()
    limits = limiter(state, clock)
    principal = key(tpm_limit=1000, max_parallel_requests=1)
    request = call(max_tokens=50)
    estimate = estimate_prompt_tokens(request.endpoint, request.params) + completion_reserve(request.endpoint,
                                                                                             request.params)
    ticket = limits.admit(principal, request)
    assert ticket.headers["x-ratelimit-remaining-tokens"] == str(1000 - estimate)
    with pytest.raises(RateLimited, match="requests in flight"):
        limits.admit(principal, request)
    assert ticket.settle(18, 0.5) == pytest.approx(0.5)
    assert ticket.settle(18, 0.5) is None                  # exactly once
    assert limits.admit(principal, request).headers["x-ratelimit-remaining-tokens"] == str(1000 - 18 - estimate)


def test_per_model_limits_apply_to_their_model_only(state):
    limits = limiter(state, Clock())
    principal = key(model_rpm_limit={"gpt": 1})
    limits.admit(principal, call("gpt"))
    with pytest.raises(RateLimited, match="for the model `gpt`"):
        limits.admit(principal, call("gpt"))
    assert limits.admit(principal, call("other")) is not None


def test_a_spent_budget_refuses_until_the_period_ends_and_then_resets(state):
    clock = Clock()
    limits = limiter(state, clock, {"gpt": (0.0, 0.0)})
    principal = key(max_budget=1.0, budget_duration="1d", budget_anchor=START)
    limits.admit(principal, call()).settle(100, 1.25)
    with pytest.raises(BudgetExceeded) as refused:
        limits.admit(principal, call())
    error = refused.value
    assert (error.status, error.code, error.type) == (429, "budget_exceeded", "rate_limit_error")
    assert error.headers()["x-should-retry"] == "false"
    assert float(error.headers()["Retry-After"]) > 0
    clock.now = START + DAY + 1                            # the test clock crosses into the next period
    ticket = limits.admit(principal, call())
    assert ticket.spend == 0.0


def test_a_budget_without_duration_never_resets(state):
    clock = Clock()
    limits = limiter(state, clock, {"gpt": (0.0, 0.0)})
    principal = key(max_budget=0.5, spend=0.5)             # spent already, as the database says
    with pytest.raises(BudgetExceeded, match="no budget_duration"):
        limits.admit(principal, call())
    clock.now += 400 * DAY
    with pytest.raises(BudgetExceeded):
        limits.admit(principal, call())


def test_the_budget_estimate_uses_the_groups_prices(state):
    limits = limiter(state, Clock(), {"gpt": (0.01, 0.01)})
    principal = key(max_budget=1.0)
    held = []
    with pytest.raises(BudgetExceeded):
        for _ in range(100):
            held.append(limits.admit(principal, call(max_tokens=10, content="x" * 40)))
    # each reserves (10 prompt + 4 overhead + 10 completion) × 0.01 = 0.24: four fit in 1.0
    assert len(held) == 4


def test_budget_period_follows_the_anchor():
    record = KeyRecord(token="t", key_name="n", budget_duration="30d", budget_anchor=START, spend=3.0,
                       spend_period=START)
    assert budget_period(record, START + 5) == (START, START + 30 * DAY, 3.0)
    later = budget_period(record, START + 31 * DAY)
    assert later == (START + 30 * DAY, START + 60 * DAY, 0.0)     # the stored spend is an older period's
    assert budget_period(KeyRecord(token="t", key_name="n", spend=2.0), START) == (0.0, None, 2.0)


def test_removing_budget_duration_keeps_counting_in_a_new_endless_period(state):
    clock = Clock()
    limits = limiter(state, clock, {"gpt": (0.0, 0.0)})
    with_duration = key(max_budget=10.0, budget_duration="1d", budget_anchor=START)
    limits.admit(with_duration, call()).settle(10, 2.0)
    clock.now += 60
    # what /key/update stores when the duration goes: a new anchor, the period's spend carried over
    without = key(max_budget=10.0, budget_anchor=clock.now, spend=2.0, spend_period=clock.now)
    ticket = limits.admit(without, call())
    assert ticket.spend == pytest.approx(2.0)
    assert ticket.settle(10, 1.0) == pytest.approx(3.0)
