"""Runs one client call against a model group: pick, attempt, retry, fall back.

At most `1 + num_retries` upstream attempts per group (a deployment's own
`max_retries` caps attempts on it), then each fallback group in order under
the same rule. Only errors raised before the first byte reach this module.

Each group call has a deadline, retries and backoff included: the group's
`timeout` (the longest of its deployments'). An attempt receives it, as a
monotonic time, and must not run past it; no retry starts after it, and no
backoff sleeps past it.
"""
from __future__ import annotations

import random
import time
from typing import Callable, TypeVar

from ..errors import GatewayError, ModelNotFound
from ..types import Deployment, RouterSettings
from . import policy
from .selection import simple_shuffle

T = TypeVar("T")


class Router:
    def __init__(self, deployments: tuple[Deployment, ...], settings: RouterSettings,
                 rng: random.Random | None = None, sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.monotonic):
        self._groups: dict[str, tuple[Deployment, ...]] = {}
        for deployment in deployments:
            self._groups[deployment.model_name] = self._groups.get(deployment.model_name, ()) + (deployment,)
        self._fallbacks = dict(settings.fallbacks)
        self._num_retries = settings.num_retries
        self._rng = rng or random.Random()
        self._sleep = sleep
        self._clock = clock
        self._timeouts = {name: max(d.timeout for d in group) for name, group in self._groups.items()}

    @property
    def model_names(self) -> tuple[str, ...]:
        return tuple(self._groups)

    def __contains__(self, model: str) -> bool:
        return model in self._groups

    def call(self, model: str, attempt: Callable[[Deployment, float], T]) -> T:
        """`attempt(deployment, deadline)` until one succeeds, a client error, or the rules say stop."""
        if model not in self._groups:
            raise ModelNotFound(model)
        try:
            return self._call_group(model, attempt)
        except GatewayError as error:
            if not policy.is_retryable(error):
                raise
            for fallback in self._fallbacks.get(model, ()):
                try:
                    return self._call_group(fallback, attempt)
                except GatewayError as fallback_error:
                    if not policy.is_retryable(fallback_error):
                        raise
            raise

    def _call_group(self, model: str, attempt: Callable[[Deployment, float], T]) -> T:
        group = self._groups[model]
        deadline = self._clock() + self._timeouts[model]
        attempts: dict[str, int] = {}
        excluded: set[str] = set()
        last_error: GatewayError | None = None
        for retry_number in range(1 + self._num_retries):
            candidates = [d for d in group if d.id not in excluded]
            if not candidates:
                break
            fresh = [d for d in candidates if d.id not in attempts]
            deployment = simple_shuffle(fresh or candidates, self._rng)
            if deployment.id in attempts and last_error is not None:
                delay = policy.backoff(retry_number - 1, last_error)
                if delay is None or self._clock() + delay >= deadline:
                    break
                self._sleep(delay)
            if last_error is not None and self._clock() >= deadline:
                break
            attempts[deployment.id] = attempts.get(deployment.id, 0) + 1
            try:
                return attempt(deployment, deadline)
            except GatewayError as error:
                if not policy.is_retryable(error):
                    raise
                last_error = error
                cap = deployment.max_retries
                if not policy.retry_same_deployment(error) or (cap is not None and attempts[deployment.id] > cap):
                    excluded.add(deployment.id)
        assert last_error is not None  # the first attempt is always made
        raise last_error
