"""Each request's end, however it ends, reaches the service once: counted in the metrics and logged.

A whole answer ends when its response is built (after_request), or when its
greenlet unwinds without one (teardown: the client went away); a stream ends
when the server closes its body, which streaming.py hands the same callback.
"""
from __future__ import annotations

import time
import uuid

from flask import Flask, Response, g, request

from ..types import CLIENT_GONE, MODEL_ROUTE, OTHER_ROUTE, PROBE_ROUTE, Trace
from .auth import service

MODEL_BLUEPRINTS = frozenset({"chat", "completions", "embeddings"})
PROBES = frozenset({"health.liveliness", "health.readiness", "metrics.metrics"})


def route_kinds(app: Flask) -> dict[str, str]:
    """Endpoint → kind, worked out once: the model routes are counted, probes are logged quietly."""
    kinds = {}
    for rule in app.url_map.iter_rules():
        blueprint = rule.endpoint.partition(".")[0].removesuffix("_v1")
        kinds[rule.endpoint] = (MODEL_ROUTE if blueprint in MODEL_BLUEPRINTS and not rule.endpoint.endswith(".models")
                                else PROBE_ROUTE if rule.endpoint in PROBES else OTHER_ROUTE)
    return kinds


def begin(client_request_id: str | None, kinds: dict[str, str]) -> None:
    g.started = started = time.monotonic()
    g.request_id = request_id = client_request_id or uuid.uuid4().hex
    g.kind = kind = OTHER_ROUTE if request.method == "OPTIONS" else kinds.get(request.endpoint, OTHER_ROUTE)
    g.trace = Trace(started=started, request_id=request_id)
    service().request_started(kind)


def answered(response: Response) -> Response:
    """The response is built: a whole one ends here, a stream when its body closes."""
    g.status = response.status_code
    body = response.response
    if getattr(body, "on_close", False) is None:    # a stream body (streaming._Body) not yet told
        g.handed_over = True
        body.on_close = _finisher(g.trace, request.method, request.path, g.kind)
        service().stream_started()
    return response


def unwound(_error) -> None:
    if "trace" not in g or g.get("handed_over"):
        return
    _finisher(g.trace, request.method, request.path, g.kind)(g.get("status", CLIENT_GONE), streamed=False)


def _finisher(trace: Trace, method: str, path: str, kind: str):
    gateway = service()

    def finish(status: int, streamed: bool = True) -> None:
        if streamed:
            gateway.stream_ended()
        gateway.request_finished(trace, method, path, status, kind)
    return finish
