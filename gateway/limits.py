"""A virtual key's limits: reserve before the call, settle with the real usage after it.

The counters live in a LimitState (the router-state segment on one machine,
Redis across machines), which checks and reserves in one atomic step, so
concurrent requests can never all take the last unit of a limit. Tokens and
cost are unknown until the answer: the reservation holds an estimate (the
prompt's size plus the completion it may produce) and settling replaces it
with what was really used.
"""
from __future__ import annotations

import time
import uuid
from typing import Callable, Mapping

from .durations import budget_period
from .errors import BudgetExceeded, RateLimited
from .tokens import completion_reserve, estimate_prompt_tokens
from .types import Ask, LimitState, ModelRequest, Principal, Verdict

LEASE_SLACK = 60.0     # seconds a reservation outlives the longest call before a dead holder's is freed


class Ticket:
    """One admitted request's reservation: settled exactly once, whatever happens to the call."""
    __slots__ = ("_limiter", "asks", "lease", "verdict", "headers", "_settled")

    def __init__(self, limiter: "Limiter", asks: list[Ask], lease: str, verdict: Verdict):
        self._limiter, self.asks, self.lease, self.verdict = limiter, asks, lease, verdict
        self.headers = _rate_headers(asks[0], verdict)
        self._settled = False

    @property
    def spend(self) -> float:
        """The key's spend in this budget period before this request."""
        return self.verdict.spend

    def settle(self, tokens: int, cost: float) -> float | None:
        """The key's spend after this request; None when it was already settled."""
        if self._settled:
            return None
        self._settled = True
        return self._limiter.settle(self, tokens, cost)


class Limiter:
    """Builds a request's asks from its key and model, and turns a refusal into the error the client gets."""

    def __init__(self, state: LimitState, prices: Mapping[str, tuple[float, float]],
                 lease_seconds: float, clock: Callable[[], float] = time.time):
        self._state = state
        self._prices = prices           # model group → (highest input, highest output) cost per token
        self._lease_seconds = lease_seconds + LEASE_SLACK
        self._clock = clock

    def admit(self, principal: Principal, call: ModelRequest) -> Ticket | None:
        """A Ticket for a virtual key's request, None for the master key; raises when a limit refuses."""
        key = principal.key
        if key is None:
            return None
        now = self._clock()
        prompt = estimate_prompt_tokens(call.endpoint, call.params)
        completion = completion_reserve(call.endpoint, call.params)
        input_price, output_price = self._prices.get(call.model, (0.0, 0.0))
        period, period_end, base_spend = budget_period(key, now)
        tokens = prompt + completion
        asks = [Ask(key.token, key.rpm_limit, key.tpm_limit, key.max_parallel_requests, key.max_budget,
                    period, base_spend, tokens, prompt * input_price + completion * output_price)]
        model_rpm, model_tpm = key.model_rpm_limit.get(call.model), key.model_tpm_limit.get(call.model)
        if model_rpm is not None or model_tpm is not None:
            asks.append(Ask(f"{key.token}|{call.model}", model_rpm, model_tpm, None, None, 0.0, 0.0, tokens, 0.0))
        lease = uuid.uuid4().hex
        verdict = self._state.reserve(asks, now, lease, now + self._lease_seconds)
        if not verdict.ok:
            raise _refusal(verdict, asks, call.model, period_end - now if period_end else None)
        return Ticket(self, asks, lease, verdict)

    def settle(self, ticket: Ticket, tokens: int, cost: float) -> float:
        """The key's spend after this request; reckoned from before it when the state settles later."""
        spend = self._state.settle(ticket.asks, ticket.lease, tokens, cost, self._clock())
        return ticket.verdict.spend + cost if spend is None else spend

    def status(self) -> dict[str, str]:
        """The counters' backend health, for readiness (the embedded one has nothing to report)."""
        status = getattr(self._state, "status", None)
        return status() if status else {}

    def close(self) -> None:
        close = getattr(self._state, "close", None)
        if close:
            close()


def _refusal(verdict: Verdict, asks: list[Ask], model: str, to_period_end: float | None) -> RateLimited:
    ask = next(a for a in asks if a.name == verdict.name)
    scope = f" for the model `{model}`" if ask is not asks[0] else ""
    if verdict.refused_by == "budget":
        when = "until its budget period ends" if to_period_end else "(it has no budget_duration)"
        error = BudgetExceeded(f"This key has spent its budget of {ask.budget:g} {when}.",
                               retry_after=to_period_end)
    elif verdict.refused_by == "parallel":
        error = RateLimited(f"This key already has {ask.parallel} requests in flight, its max_parallel_requests.",
                            retry_after=verdict.retry_after)
    elif verdict.refused_by == "tpm":
        error = RateLimited(f"This key has reached its limit of {ask.tpm} tokens per minute{scope}.",
                            retry_after=verdict.retry_after)
    else:
        error = RateLimited(f"This key has reached its limit of {ask.rpm} requests per minute{scope}.",
                            retry_after=verdict.retry_after)
    error.extra_headers = _rate_headers(asks[0], verdict)
    return error


def _rate_headers(ask: Ask, verdict: Verdict) -> dict[str, str]:
    """OpenAI's `x-ratelimit-*` headers, for the limits this key has."""
    headers = {}
    if ask.rpm is not None:
        headers["x-ratelimit-limit-requests"] = str(ask.rpm)
        headers["x-ratelimit-remaining-requests"] = str(verdict.remaining_requests)
    if ask.tpm is not None:
        headers["x-ratelimit-limit-tokens"] = str(ask.tpm)
        headers["x-ratelimit-remaining-tokens"] = str(verdict.remaining_tokens)
    return headers
