"""When a deployment leaves rotation, for how long, and what a client hears while a whole group is out.

The counts and cooldowns themselves live in the shared RouterState, so every
worker (and, with Redis, every instance) takes a failing deployment out at once.
"""
from __future__ import annotations

import time
from typing import Callable, Sequence

from ..errors import (RETRY_AFTER_MAX, GatewayError, NoHealthyDeployment, UpstreamAuthFailed,
                      UpstreamRateLimited)
from ..types import Cooldown, Deployment, RouterState


OnCooldown = Callable[[Deployment, Cooldown, GatewayError], None]


class Cooldowns:
    def __init__(self, state: RouterState, allowed_fails: int, cooldown_time: float,
                 wall: Callable[[], float] = time.time, on_cooldown: OnCooldown | None = None):
        self._state = state
        self._allowed_fails = allowed_fails
        self._cooldown_time = cooldown_time
        self._wall = wall
        self._on_cooldown = on_cooldown   # told of each cooldown this process starts (metrics, log)

    def failed(self, deployment: Deployment, error: GatewayError, remaining: float) -> None:
        """A retryable failure: count it, or cool at once for credentials and long rate limits."""
        if self._cooldown_time <= 0:
            return
        cooldown = self._cooldown_for(error)
        if cooldown.kind == "auth" or (cooldown.kind == "rate_limit" and error.retry_after is not None
                                       and error.retry_after > remaining):
            self._state.cool(deployment.id, cooldown)
        else:
            now = self._state.record_failure(deployment.id, self._allowed_fails, cooldown)
            if now is None or now.until != cooldown.until:
                return   # under the threshold, or cooling already (another worker started it)
        if self._on_cooldown is not None:
            self._on_cooldown(deployment, cooldown, error)

    def probe_failed(self, deployment: Deployment, error: GatewayError) -> None:
        """A health probe failed: the cheapest call did not work, so real ones will not either."""
        if self._cooldown_time > 0:
            cooldown = self._cooldown_for(error)
            cooling = self._state.stats([deployment.id])[0].cooldown is not None
            self._state.cool(deployment.id, cooldown)
            if self._on_cooldown is not None and not cooling:   # a new cooldown, not a probe extending one
                self._on_cooldown(deployment, cooldown, error)

    def _cooldown_for(self, error: GatewayError) -> Cooldown:
        retry_after = error.retry_after
        seconds = max(self._cooldown_time, min(retry_after or 0.0, RETRY_AFTER_MAX))
        return Cooldown(self._wall() + seconds, kind_of(error), retry_after)

    def unavailable(self, model: str, cooling: Sequence[Cooldown]) -> GatewayError:
        """Every deployment of `model` is cooling: answer with the class of what cooled them."""
        soonest = min(cooling, key=lambda c: c.until)
        wait = soonest.retry_after if soonest.retry_after is not None else soonest.until - self._wall()
        wait = max(1.0, wait)
        kinds = {c.kind for c in cooling}
        if kinds == {"rate_limit"}:
            return UpstreamRateLimited(f"every deployment of `{model}` is cooling down after upstream rate limits",
                                       retry_after=wait)
        if kinds == {"auth"}:
            return UpstreamAuthFailed(f"every deployment of `{model}` is cooling down: the upstream rejected "
                                      f"the gateway's credentials", retry_after=wait)
        return NoHealthyDeployment(f"every deployment of `{model}` is cooling down after upstream failures",
                                   retry_after=wait)


def kind_of(error: GatewayError) -> str:
    if isinstance(error, UpstreamRateLimited):
        return "rate_limit"
    if isinstance(error, UpstreamAuthFailed):
        return "auth"
    return "failure"
