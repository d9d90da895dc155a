"""One handler renders every GatewayError; werkzeug's HTTP errors and our own bugs become the same shape."""
from __future__ import annotations

import logging

from flask import Flask, g, request
from werkzeug.exceptions import HTTPException

from ..errors import (GatewayError, InvalidRequest, MethodNotAllowed, RequestTooLarge, RouteNotFound)
from .streaming import json_response

log = logging.getLogger("gateway.api")


def render(error: GatewayError):
    trace = g.get("trace")
    if trace is not None:
        trace.error_code = error.code or error.type
    return json_response(error.body(), error.status, error.headers())


def _http_error(error: HTTPException):
    if error.code == 404:
        return render(RouteNotFound(f"Unknown request URL: {request.method} {request.path}. "
                                    f"The gateway serves /v1/chat/completions, /v1/completions, "
                                    f"/v1/embeddings and /v1/models."))
    if error.code == 405:
        return render(MethodNotAllowed(f"Method {request.method} is not allowed on {request.path}."))
    if error.code == 413:
        return render(RequestTooLarge())
    if error.code and 400 <= error.code < 500:
        return render(InvalidRequest(error.description or "Bad request.", status=error.code))
    return _unexpected(error)


def _unexpected(error: Exception):
    log.error("unhandled error on %s %s", request.method, request.path, exc_info=error,
              extra={"event": "internal_error"})
    return render(GatewayError("The gateway hit an internal error; it has been logged."))


def register(app: Flask) -> None:
    app.register_error_handler(GatewayError, render)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(Exception, _unexpected)
