"""Runs one client call against a model group: pick, attempt, retry, cool down, fall back.

At most `1 + num_retries` upstream attempts per group (a deployment's own
`max_retries` caps attempts on it), then each fallback group in order under
the same rule. Only errors raised before the first byte reach this module.

Each group call has a deadline, retries and backoff included: the group's
`timeout` (the longest of its deployments'). An attempt receives it, as a
monotonic time, and must not run past it; no retry starts after it, and no
backoff sleeps past it.

A call that succeeds leaves its deployment counted as in flight; the caller
ends it with `finished` once the answer (or the stream) is over.
"""
from __future__ import annotations

import random
import time
from typing import Callable, TypeVar

from ..errors import GatewayError, ModelNotFound, UpstreamRateLimited, UpstreamTimeout
from ..types import Deployment, RouterSettings, RouterState, Trace
from . import policy
from .cooldown import Cooldowns, OnCooldown
from .selection import STRATEGIES, at_cap

T = TypeVar("T")


class Router:
    def __init__(self, deployments: tuple[Deployment, ...], settings: RouterSettings, state: RouterState,
                 rng: random.Random | None = None, sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time,
                 on_cooldown: OnCooldown | None = None):
        self._groups: dict[str, tuple[Deployment, ...]] = {}
        for deployment in deployments:
            self._groups[deployment.model_name] = self._groups.get(deployment.model_name, ()) + (deployment,)
        self._fallbacks = {
            "general": dict(settings.fallbacks),
            "context_window": dict(settings.context_window_fallbacks),
            "content_policy": dict(settings.content_policy_fallbacks),
        }
        self._default_fallbacks = settings.default_fallbacks
        self._max_fallbacks = settings.max_fallbacks
        self._num_retries = settings.num_retries
        self._pick = STRATEGIES[settings.routing_strategy]
        self._state = state
        self._cooldowns = Cooldowns(state, settings.allowed_fails, settings.cooldown_time, wall, on_cooldown)
        self._rng = rng or random.Random()
        self._sleep = sleep
        self._clock = clock
        self._wall = wall
        self._timeouts = {name: max(d.timeout for d in group) for name, group in self._groups.items()}
        self._ids = {name: [d.id for d in group] for name, group in self._groups.items()}
        self._capped = {d.id for d in deployments if d.rpm is not None or d.tpm is not None}
        # Name every deployment to the state now: a shared backend then learns
        # their cooldowns before this worker routes its first request.
        state.stats([d.id for d in deployments])

    @property
    def model_names(self) -> tuple[str, ...]:
        return tuple(self._groups)

    def __contains__(self, model: str) -> bool:
        return model in self._groups

    def call(self, model: str, attempt: Callable[[Deployment, float], T], trace: Trace, stream: bool = False) -> T:
        """`attempt(deployment, deadline)` until one succeeds, a client error, or the rules say stop."""
        if model not in self._groups:
            raise ModelNotFound(model)
        trace.model_group = model     # until a deployment serves: the group asked for
        try:
            return self._call_group(model, attempt, trace, stream)
        except GatewayError as error:
            kind = policy.fallback_kind(error)
            targets = self._fallback_targets(model, kind)
            if not targets:
                raise
            for fallback in targets:
                trace.fallbacks += 1
                try:
                    return self._call_group(fallback, attempt, trace, stream)
                except GatewayError as fallback_error:
                    # A failing fallback lets the next one try; a client error other than
                    # the one the chain is for (say, a bad request) would fail everywhere.
                    if policy.fallback_kind(fallback_error) not in ("general", kind):
                        raise
            raise

    def finished(self, trace: Trace, tokens: int = 0) -> None:
        """The answer served by `trace.deployment_id` is over: no longer in flight; count its tokens."""
        self._state.end(trace.deployment_id)
        self._state.add_tokens(trace.deployment_id, tokens)

    def note_probe(self, deployment: Deployment, error: GatewayError | None) -> None:
        """A health probe's result: a failed one takes the deployment out of rotation."""
        if error is not None and error.counts_as_failure and policy.is_retryable(error):
            self._cooldowns.probe_failed(deployment, error)

    def _fallback_targets(self, model: str, kind: str | None) -> tuple[str, ...]:
        if kind is None:
            return ()
        targets = self._fallbacks[kind].get(model)
        if targets is None and kind == "general":
            targets = tuple(name for name in self._default_fallbacks if name != model)
        return tuple(targets or ())[:self._max_fallbacks]

    def _call_group(self, model: str, attempt: Callable[[Deployment, float], T], trace: Trace, stream: bool) -> T:
        group = self._groups[model]
        clock = self._clock
        deadline = clock() + self._timeouts[model]
        attempts: dict[str, int] = {}
        errors: dict[str, GatewayError] = {}       # each deployment's last, for its own backoff
        excluded: set[str] = set()
        last_error: GatewayError | None = None
        made = 0
        while made < 1 + self._num_retries:      # each pass attempts, excludes a deployment, or stops
            if excluded:
                group = tuple(d for d in group if d.id not in excluded)
                excluded.clear()
                if not group:
                    break
            candidates = self._open(model, group, last_error)
            if candidates is None:
                break
            if attempts:
                candidates = [c for c in candidates if c[0].id not in attempts] or candidates
            deployment = candidates[0][0] if len(candidates) == 1 else self._pick(candidates, self._rng, stream)
            if deployment.id in errors:
                delay = policy.backoff(attempts[deployment.id] - 1, errors[deployment.id], deadline - clock(),
                                       self._rng)
                if delay is None:
                    excluded.add(deployment.id)
                    continue
                self._sleep(delay)
                trace.upstream_seconds += delay
            if last_error is not None and clock() >= deadline:
                break
            if made:
                trace.retries += 1
            made += 1
            attempts[deployment.id] = attempts.get(deployment.id, 0) + 1
            self._state.begin(deployment.id)
            started = clock()
            try:
                result = attempt(deployment, deadline)
            except GatewayError as error:
                elapsed = clock() - started
                trace.upstream_seconds += elapsed
                self._state.end(deployment.id)
                if trace.failures is None:
                    trace.failures = []
                trace.failures.append((deployment.id, error))
                if not policy.is_retryable(error):
                    raise
                if isinstance(error, UpstreamTimeout):
                    self._state.observe_latency(deployment.id, elapsed, stream)
                if error.counts_as_failure:
                    self._cooldowns.failed(deployment, error, deadline - clock())
                last_error = errors[deployment.id] = error
                cap = deployment.max_retries
                if not policy.retry_same_deployment(error) or (cap is not None and attempts[deployment.id] > cap):
                    excluded.add(deployment.id)
                continue
            except BaseException:
                self._state.end(deployment.id)
                raise
            elapsed = clock() - started
            trace.upstream_seconds += elapsed
            self._state.observe_latency(deployment.id, elapsed, stream)
            trace.model_group, trace.deployment_id = model, deployment.id
            return result
        assert last_error is not None  # the first pass either attempts or raises
        raise last_error

    def _open(self, model, group, last_error):
        """Candidates not cooling and under their rpm/tpm caps; None = stop and raise `last_error`.

        With no attempt made yet, a group with nothing open answers for itself:
        by the class of its cooldowns, or 429 when every deployment is at its cap.
        """
        stats = self._state.stats(self._ids[model] if len(group) == len(self._groups[model]) else
                                  [d.id for d in group])
        candidates = [(d, s) for d, s in zip(group, stats, strict=True)
                      if s.cooldown is None and (d.id not in self._capped or not at_cap(d, s))]
        if candidates:
            return candidates
        if all(s.cooldown is not None for s in stats):
            if last_error is not None:
                return None
            raise self._cooldowns.unavailable(model, [s.cooldown for s in stats])
        if last_error is not None:
            return None
        raise UpstreamRateLimited(f"every deployment of `{model}` reached its rpm/tpm limit for this minute",
                                  retry_after=60 - self._wall() % 60)
