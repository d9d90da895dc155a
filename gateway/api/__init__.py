"""The HTTP API: blueprints under `/v1` and at the root, request ids, CORS, JSON errors."""
from __future__ import annotations

import re
import uuid

from flask import Flask, Response, g, request

from . import chat, completions, embeddings, errorhandlers, health, keys, metrics, models, openapi, spend, telemetry

OPENAI_BLUEPRINTS = (chat.bp, completions.bp, embeddings.bp, models.bp)
_CLIENT_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:@/+=-]{1,128}$")
EXPOSED_HEADERS = ("x-request-id, retry-after, x-ratelimit-limit-requests, x-ratelimit-remaining-requests, "
                   "x-ratelimit-limit-tokens, x-ratelimit-remaining-tokens, x-litellm-model-group, "
                   "x-litellm-model-id, x-litellm-attempted-retries, x-litellm-attempted-fallbacks, "
                   "x-litellm-response-duration-ms, x-litellm-overhead-duration-ms, "
                   "x-litellm-response-cost, x-litellm-key-spend")


def register(app: Flask, cors_allow_origins: tuple[str, ...]) -> None:
    for blueprint in OPENAI_BLUEPRINTS:
        app.register_blueprint(blueprint, url_prefix="/v1", name=f"{blueprint.name}_v1")
        app.register_blueprint(blueprint)
    app.register_blueprint(health.bp)
    app.register_blueprint(keys.bp)      # admin routes: at the root only, as the peer serves them
    app.register_blueprint(spend.bp)
    app.register_blueprint(openapi.bp)
    app.register_blueprint(metrics.bp)
    errorhandlers.register(app)
    cors = _Cors(cors_allow_origins)
    kinds = telemetry.route_kinds(app)
    app.before_request(lambda: _before(kinds))
    app.after_request(lambda response: telemetry.answered(cors.decorate(_tag(response))))
    app.teardown_request(telemetry.unwound)


def _before(kinds: dict[str, str]):
    client_id = request.headers.get("x-request-id")
    telemetry.begin(client_id if client_id and _CLIENT_REQUEST_ID.match(client_id) else None, kinds)
    if request.method == "OPTIONS":
        preflight = Response(status=204)
        del preflight.headers["Content-Type"]
        return preflight


def _tag(response: Response) -> Response:
    response.headers["x-request-id"] = g.get("request_id") or uuid.uuid4().hex
    return response


class _Cors:
    """Browsers call the gateway directly (`dangerouslyAllowBrowser`): answer preflights per config."""

    def __init__(self, allowed: tuple[str, ...]):
        self.any_origin = "*" in allowed
        self.allowed = frozenset(allowed)

    def decorate(self, response: Response) -> Response:
        origin = request.headers.get("Origin")
        if not origin or not (self.any_origin or origin in self.allowed):
            return response
        headers = response.headers
        headers["Access-Control-Allow-Origin"] = "*" if self.any_origin else origin
        if not self.any_origin:
            headers["Vary"] = "Origin"
        headers["Access-Control-Expose-Headers"] = EXPOSED_HEADERS
        if request.method == "OPTIONS":
            headers["Access-Control-Allow-Methods"] = "GET, POST, PUT, PATCH, DELETE, OPTIONS"
            headers["Access-Control-Allow-Headers"] = (request.headers.get("Access-Control-Request-Headers")
                                                       or "Authorization, Content-Type")
            headers["Access-Control-Max-Age"] = "600"
        return response
