"""Deployment health: each deployment probed with its cheapest call, all at once, each within its own budget.

`GET /health` and the background loop share this. The loop runs in every
worker, but `claim_probe` lets only one of them probe per interval; it
publishes the report to the shared state, so every worker answers `/health`
with the same last result, and `on_result` (the router) takes a failing
deployment out of rotation in every worker at once.

A report names models, deployment ids and bases, never a credential: bases
lose their user-info, query and fragment, errors are the adapters' messages
(already redacted) and anything else that goes wrong is logged, not shown.
"""
from __future__ import annotations

import logging
import time
from dataclasses import replace
from typing import Callable, Iterable
from urllib.parse import urlsplit, urlunsplit

import gevent
import orjson

from .errors import GatewayError, UpstreamCredentialsMissing, UpstreamTimeout
from .redact import Redactor
from .types import Deployment, ModelRequest, RouterState

PROBE_TIMEOUT_CAP = 30.0        # seconds: a probe never waits longer unless health_check_timeout says so
BACKSTOP = 1.0                  # seconds past its budget before a probe that ignores its deadline is cut
MAX_ERROR_CHARS = 500           # of each error in the report (it is kept in shared memory)
PROBE_TEXT = "ping"
PROBE_REQUEST_ID = "shin-gateway-health-check"   # sent upstream as X-Request-Id: probes are easy to spot
UNEXPECTED = "the health check failed inside the gateway (see the gateway log)"

OnResult = Callable[[Deployment, "GatewayError | None"], None]


class HealthChecker:
    """Probes deployments and renders the `/health` body; in background mode, also the loop that feeds it."""

    def __init__(self, deployments: Iterable[Deployment], adapters: dict, state: RouterState,
                 on_result: OnResult, log: logging.Logger, *, redactor: Redactor, background: bool = False):
        self._deployments = tuple(deployments)
        self._adapters = adapters
        self._state = state
        self._on_result = on_result
        self._log = log
        self._background = background
        self._redact = redactor

    def probe_all(self) -> dict:
        """Probe every deployment in parallel; the report, in config order."""
        greenlets = [gevent.spawn(self._probe, deployment) for deployment in self._deployments]
        gevent.joinall(greenlets)
        healthy, unhealthy = [], []
        for deployment, greenlet in zip(self._deployments, greenlets, strict=True):
            entry = self._entry(deployment)
            error = greenlet.value if greenlet.successful() else GatewayError(UNEXPECTED)
            if error is None:
                healthy.append(entry)
            else:
                entry["error"] = self._scrub(error)
                unhealthy.append(entry)
        return {"healthy_endpoints": healthy, "unhealthy_endpoints": unhealthy,
                "healthy_count": len(healthy), "unhealthy_count": len(unhealthy)}

    def report(self) -> dict:
        """The background loop's last report when there is one; else a probe now."""
        if self._background:
            stored = self._state.health_report()
            if stored:
                try:
                    return orjson.loads(stored)
                except orjson.JSONDecodeError:
                    self._log.warning("the stored health report is unreadable; probing now",
                                      extra={"event": "health_report_unreadable"})
        return self.probe_all()

    def run_background(self, interval: float) -> None:
        """Forever: probe when this worker wins the interval's claim, publish, pause a fifth of it.

        Runs in a greenlet of each worker; no exception ends it (it would end
        the checks silently), only killing the greenlet does.
        """
        self._background = True
        pause = max(0.05, interval / 5)
        while True:
            try:
                if self._state.claim_probe(interval):
                    report = self.probe_all()
                    self._log_changes(self._state.health_report(), report)
                    self._state.publish_health(orjson.dumps(report))
            except Exception:
                self._log.exception("background health check failed", extra={"event": "health_check_failed"})
            gevent.sleep(pause)

    # --- one deployment ------------------------------------------------------------------------

    def _probe(self, deployment: Deployment) -> GatewayError | None:
        """None when the cheapest call answered; else why not. Tells `on_result` either way.

        A bug of ours (or an adapter's) is logged with its stack and reported as a plain sentence.
        """
        try:
            error = self._call(deployment)
        except Exception:
            self._log.exception("health check of deployment %s failed inside the gateway", deployment.id,
                                extra={"event": "health_check_failed", "deployment": deployment.id})
            error = GatewayError(UNEXPECTED)
        try:
            self._on_result(deployment, error)
        except Exception:
            self._log.exception("recording the health of deployment %s failed", deployment.id,
                                extra={"event": "health_check_failed", "deployment": deployment.id})
        return error

    def _call(self, deployment: Deployment) -> GatewayError | None:
        if deployment.unset_env:
            names = ", ".join(deployment.unset_env)
            return UpstreamCredentialsMissing(f"the gateway has no upstream credentials for deployment {deployment.id}: "
                                      f"environment variable {names} is not set")
        budget = probe_timeout(deployment)
        # The deployment as the adapter sees it: its own timeouts cut to the probe's budget, so
        # connecting and reading stop there too, not only the deadline's timer.
        probed = replace(deployment, timeout=min(deployment.timeout, budget))
        late = UpstreamTimeout(f"the health check did not answer within {budget:g} s (deployment {deployment.id})")
        try:
            with gevent.Timeout(budget + BACKSTOP, late):
                self._adapters[deployment.provider].complete(probed, probe_request(deployment),
                                                             time.monotonic() + budget)
        except GatewayError as error:
            return error
        return None

    def _log_changes(self, previous: bytes | None, report: dict) -> None:
        """One line per deployment whose health changed since the last report (any worker's)."""
        try:
            before = orjson.loads(previous) if previous else {}
        except orjson.JSONDecodeError:
            before = {}
        was_down = {e["model_id"] for e in before.get("unhealthy_endpoints", ())}
        for entry in report["unhealthy_endpoints"]:
            if entry["model_id"] not in was_down:
                self._log.warning("deployment %s of %s is unhealthy: %s", entry["model_id"], entry["model_name"],
                                  entry["error"], extra={"event": "health_change", "deployment": entry["model_id"],
                                                         "model_group": entry["model_name"], "healthy": False})
        for entry in report["healthy_endpoints"]:
            if entry["model_id"] in was_down:
                self._log.info("deployment %s of %s is healthy again", entry["model_id"], entry["model_name"],
                               extra={"event": "health_change", "deployment": entry["model_id"],
                                      "model_group": entry["model_name"], "healthy": True})

    def _entry(self, deployment: Deployment) -> dict:
        return {"model_name": deployment.model_name, "model": f"{deployment.provider}/{deployment.upstream_model}",
                "model_id": deployment.id, "api_base": public_base(deployment.api_base)}

    def _scrub(self, error: GatewayError) -> str:
        """The error's message, minus any credential of any deployment (adapters redact; this is a second net)."""
        return self._redact(str(error.message))[:MAX_ERROR_CHARS]


def probe_timeout(deployment: Deployment) -> float:
    """`model_info.health_check_timeout`, else the deployment's timeout up to 30 s."""
    return deployment.health_check_timeout or min(deployment.timeout, PROBE_TIMEOUT_CAP)


def probe_request(deployment: Deployment) -> ModelRequest:
    """The cheapest call `model_info.mode` allows: one token of chat or completion, or one short embedding."""
    name = deployment.model_name
    if deployment.mode == "embedding":
        return ModelRequest(endpoint="embeddings", model=name, params={"model": name, "input": PROBE_TEXT},
                            extra={}, request_id=PROBE_REQUEST_ID)
    if deployment.mode == "completion":
        return ModelRequest(endpoint="completions", model=name,
                            params={"model": name, "prompt": PROBE_TEXT, "max_tokens": 1},
                            extra={}, request_id=PROBE_REQUEST_ID)
    return ModelRequest(endpoint="chat/completions", model=name,
                        params={"model": name, "messages": [{"role": "user", "content": PROBE_TEXT}],
                                "max_tokens": 1},
                        extra={}, request_id=PROBE_REQUEST_ID)


def public_base(api_base: str | None) -> str | None:
    """`api_base` without user-info, query or fragment (where credentials hide in URLs)."""
    if not api_base:
        return None
    try:
        parts = urlsplit(api_base)
    except ValueError:
        return None
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, host, parts.path, "", ""))
