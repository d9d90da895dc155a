"""The one object the views call: authenticate, check, limit, route, call the provider, close the books."""
from __future__ import annotations

import hmac
import logging
import time
import uuid

from .accounting import cost_of
from .errors import AuthenticationFailed, GatewayError, ModelNotFound, PermissionDenied, RouteNotFound, \
    UpstreamCredentialsMissing
from .keys import KeyChecker
from .limits import Limiter, Ticket
from .routing import Router
from .settings import Settings
from .types import (CLIENT_GONE, MODEL_ROUTE, PROBE_ROUTE, ChunkStream, Completion, Deployment, ModelRequest, Principal,
                    RouterState, SpendRow, Trace, Usage)



class Service:
    """What the views call: who is calling, may they, and the model call itself through the router."""

    def __init__(self, settings: Settings, keys: KeyChecker, router: Router, adapters: dict,
                 state: RouterState, health=None, *, limiter: Limiter | None = None, spend=None,
                 database=None, admin=None, spend_reports=None, metrics=None, request_log=None,
                 wall=time.time):
        self.settings = settings
        self._keys = keys
        self._router = router
        self._adapters = adapters
        self._state = state
        self._health = health
        self._limiter = limiter
        self._spend = spend             # SpendWriter: rows reach the database off the hot path
        self._database = database
        self.admin = admin              # KeyAdmin, for the /key/* views
        self.spend_reports = spend_reports
        self._metrics = metrics         # Metrics, or None when general_settings.disable_metrics is set
        self._request_log = request_log
        self._wall = wall
        self._deployments = {d.id: d for d in settings.deployments}
        self._lifetimes = {d.id: settings.stream_lifetime(d) for d in settings.deployments}
        self._database_checked = (float("-inf"), "ok")
        self._created = int(time.time())

    def authenticate(self, presented_key: str | None) -> Principal:
        return self._keys.authenticate(presented_key)

    def run(self, principal: Principal, call: ModelRequest, trace: Trace) -> Completion | ChunkStream:
        """A whole answer, or a stream primed up to its first content (every retry is over by then).

        `trace` records what the router did, for the response headers (on
        errors too). From the key's admission on, every outcome closes the
        books exactly once: the reservation is settled and one spend row written.
        """
        trace.stream = call.stream
        key = principal.key
        if key is not None:
            trace.key_label = key.key_alias or key.token[:12]
        if call.model in self._router:
            trace.model_group = call.model
        self._check_model(principal, call.model)
        books = _Books(self, principal, call, trace, self._wall())
        try:
            books.ticket = self._limiter.admit(principal, call) if self._limiter else None
        except GatewayError as error:
            books.close(None, error.status)
            raise
        if books.ticket is not None:
            trace.limit_headers = books.ticket.headers
            trace.key_spend = books.ticket.spend
        adapters = self._adapters

        def attempt(deployment: Deployment, deadline: float):
            if deployment.unset_env:
                raise _keyless(deployment)
            adapter = adapters[deployment.provider]
            if call.stream:
                return adapter.stream(deployment, call, deadline)
            return adapter.complete(deployment, call, deadline)
        try:
            answer = self._router.call(call.model, attempt, trace, call.stream)
        except GatewayError as error:
            books.close(None, error.status)
            raise
        except BaseException:   # the client went away (or a bug of ours): the books still close
            books.close(None, CLIENT_GONE)
            raise
        if call.stream:
            return _Finishing(answer, self._router, books)
        self._router.finished(trace, answer.usage.total_tokens if answer.usage else 0)
        books.close(answer.usage, 200)
        return answer

    def stream_ends_by(self, trace: Trace) -> float:
        """When a stream from the deployment that serves `trace` must be over (monotonic)."""
        return trace.started + self._lifetimes.get(trace.deployment_id, self.settings.request_timeout)

    # --- each request's end: metrics and its log line ---------------------------------------

    def request_started(self, kind: str) -> None:
        if kind == MODEL_ROUTE and self._metrics is not None:
            self._metrics.request_started()

    def request_finished(self, trace: Trace, method: str, path: str, status: int, kind: str) -> None:
        """The request is over (its answer built, its stream closed, or its client gone): count it, log it."""
        ended = time.monotonic()
        if kind == MODEL_ROUTE and self._metrics is not None:
            self._metrics.request_finished(trace, status, ended)
        log = self._request_log
        if log is not None and log.enabled(kind == PROBE_ROUTE):
            log.write(trace, method, path, status, ended, quiet=kind == PROBE_ROUTE)

    def stream_started(self) -> None:
        if self._metrics is not None:
            self._metrics.stream_started()

    def stream_ended(self) -> None:
        if self._metrics is not None:
            self._metrics.stream_ended()

    def metrics_text(self, presented_key: str | None) -> bytes:
        """The Prometheus text; behind `metrics_token` (or the master key) when one is set."""
        if self._metrics is None:
            raise RouteNotFound("Metrics are off (general_settings.disable_metrics).")
        token = self.settings.metrics_token
        if token and not (presented_key and (hmac.compare_digest(presented_key.encode(), token.encode())
                                             or self._keys.is_master(presented_key))):
            raise AuthenticationFailed("GET /metrics needs the metrics token: Authorization: Bearer <metrics_token>.")
        return self._metrics.render()

    def cooldown_started(self, deployment: Deployment, cooldown, error: GatewayError) -> None:
        """The router took a deployment out of rotation: count it and say so in the log."""
        if self._metrics is not None:
            self._metrics.cooldown_started(deployment.id)
        logging.getLogger("gateway.router").warning(
            "deployment %s of %s cools down for %.0f s after %s", deployment.id, deployment.model_name,
            max(0.0, cooldown.until - self._wall()), error.code or error.type,
            extra={"event": "cooldown", "deployment": deployment.id, "model_group": deployment.model_name,
                   "seconds": round(max(0.0, cooldown.until - self._wall()), 1), "error_type": error.code})

    def models(self, principal: Principal) -> list[dict]:
        return [self._model_card(name) for name in self._router.model_names if principal.may_use(name)]

    def model(self, principal: Principal, model_id: str) -> dict:
        if model_id not in self._router or not principal.may_use(model_id):
            raise ModelNotFound(model_id)
        return self._model_card(model_id)

    def health(self) -> dict:
        return self._health.report()

    def readiness(self) -> tuple[bool, dict]:
        """Ready when every check says "ok"; the body also names the router state's backend."""
        status = dict(self._state.status())
        backend = status.pop("state")
        checks = {"config": "ok", **status, **(self._limiter.status() if self._limiter else {})}
        if self._database is not None:
            checks["database"] = self._database_status()
        ready = all(value == "ok" for value in checks.values())
        return ready, {"status": "ready" if ready else "not ready", "checks": checks, "state_backend": backend}

    def close(self) -> None:
        """Graceful stop: queued spend rows reach the database before the worker goes."""
        if self._spend is not None:
            written = self._spend.close()
            logging.getLogger("gateway").info(
                "worker stopping: spend rows %s", "flushed" if written else "NOT all written (see above)",
                extra={"event": "shutdown", "spend_rows_flushed": written})
        for adapter in self._adapters.values():
            adapter.close()
        if self._limiter is not None:
            self._limiter.close()
        self._state.close()
        if self._database is not None:
            self._database.close()

    def _database_status(self) -> str:
        """Asked of the database at most once a second: readiness needs no auth, so anyone may poll it."""
        now = time.monotonic()
        if now - self._database_checked[0] >= 1.0:
            try:
                self._database.ping()
                self._database_checked = (now, "ok")
            except GatewayError:
                self._database_checked = (now, "unreachable")
        return self._database_checked[1]

    def _record(self, books: "_Books", usage: Usage | None, status: int) -> None:
        """Settle the key's reservation and queue the request's spend row."""
        trace, principal = books.trace, books.principal
        deployment = self._deployments.get(trace.deployment_id)
        cost = cost_of(deployment, usage) if deployment is not None and usage is not None else 0.0
        trace.cost = cost
        trace.usage = usage
        tokens = usage.total_tokens if usage else 0
        key = principal.key
        if books.ticket is not None:
            spend = books.ticket.settle(tokens, cost)
            if spend is not None:
                trace.key_spend = spend
        if self._spend is None:
            return
        period = books.ticket.asks[0].period if books.ticket is not None else 0.0
        self._spend.add(SpendRow(
            id=uuid.uuid4().hex, request_id=books.call.request_id, key_token=key.token if key else None,
            key_alias=key.key_alias if key else None, user_id=key.user_id if key else None,
            team_id=key.team_id if key else None, model_group=trace.model_group or books.call.model,
            deployment_id=trace.deployment_id, prompt_tokens=usage.prompt_tokens if usage else 0,
            completion_tokens=usage.completion_tokens if usage else 0, cost=cost,
            latency_ms=int((time.monotonic() - trace.started) * 1000), status=status,
            started_at=books.started_at, spend_period=period))

    def _check_model(self, principal: Principal, model: str) -> None:
        if model not in self._router:
            raise ModelNotFound(model)
        if not principal.may_use(model):
            raise PermissionDenied(f"This key is not allowed to use the model `{model}`.", param="model")

    def _model_card(self, name: str) -> dict:
        return {"id": name, "object": "model", "created": self._created, "owned_by": "shin-gateway"}


class _Books:
    """One request's accounting: closed exactly once, on whichever path the request ends."""
    __slots__ = ("_service", "principal", "call", "trace", "started_at", "ticket", "_closed")

    def __init__(self, service: Service, principal: Principal, call: ModelRequest, trace: Trace, started_at: float):
        self._service, self.principal, self.call, self.trace = service, principal, call, trace
        self.started_at = started_at
        self.ticket: Ticket | None = None
        self._closed = False

    def close(self, usage: Usage | None, status: int) -> None:
        if not self._closed:
            self._closed = True
            self._service._record(self, usage, status)


class _Finishing:
    """A stream that tells the router and the books when it is over (however it ends), exactly once."""
    __slots__ = ("_stream", "_router", "_books")

    def __init__(self, stream: ChunkStream, router: Router, books: _Books):
        self._stream, self._router, self._books = stream, router, books

    @property
    def usage(self):
        return self._stream.usage

    def __iter__(self):
        return iter(self._stream)

    def close(self) -> None:
        router, self._router = self._router, None
        try:
            self._stream.close()
        finally:
            if router is not None:
                usage = self._stream.usage
                router.finished(self._books.trace, usage.total_tokens if usage else 0)
                self._books.close(usage, 200)


def _keyless(deployment: Deployment) -> UpstreamCredentialsMissing:
    """A credential the config names is missing from the environment: say which, call nobody."""
    names = ", ".join(deployment.unset_env)
    return UpstreamCredentialsMissing(f"the gateway has no upstream credentials for deployment {deployment.id}: "
                              f"environment variable {names} is not set")
