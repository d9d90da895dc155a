"""Validate at the edge, by decorator, then pass a typed ModelRequest inward.

Order of checks: media type, size (Flask's MAX_CONTENT_LENGTH), JSON, object,
screening (fields a client must never set, at any depth; nesting depth), then
the marshmallow schema. The first failing field path becomes OpenAI's `param`.
Large bodies are walked in slices that give the event loop a turn (cooperative.py).
"""
from __future__ import annotations

from functools import wraps

import orjson
from flask import current_app, g, request
from marshmallow import Schema

from ..errors import InvalidRequest, RequestTooLarge, UnsupportedMediaType
from ..types import ModelRequest
from .cooperative import Pacer
from .screening import check_parse_cost, screen

LARGE_BODY = 1 << 20   # bytes past which reading and parsing a body give the event loop a turn between them


def validated(schema: Schema, endpoint: str):
    """Turn the request body into a ModelRequest for `endpoint`, or raise a 4xx GatewayError."""
    known = frozenset(schema.fields)
    streams = "stream" in known  # embeddings never stream, whatever the body says

    def decorator(view):
        @wraps(view)
        def wrapper(*args, **kwargs):
            pacer = Pacer()
            body = read_json_object(pacer)
            screen(body, pacer)
            errors = schema.validate(body)
            if errors:
                raise schema_error(errors)
            stream = streams and body.get("stream") is True
            options = body.get("stream_options") or {}
            call = ModelRequest(
                endpoint=endpoint, model=body["model"],
                params={k: v for k, v in body.items() if k in known},
                extra={k: v for k, v in body.items() if k not in known},
                stream=stream, include_usage=stream and options.get("include_usage") is True,
                request_id=g.request_id)
            return view(call, *args, **kwargs)
        return wrapper
    return decorator


def read_json_object(pacer: Pacer) -> dict:
    content_type = request.mimetype
    if content_type and content_type != "application/json" and not content_type.endswith("+json"):
        raise UnsupportedMediaType(f"Unsupported Content-Type '{content_type}': "
                                   f"send the body as JSON with 'Content-Type: application/json'.")
    raw = request.get_data(cache=False)
    if request.content_length is None and len(raw) >= current_app.config["MAX_CONTENT_LENGTH"]:
        # a chunked body is cut at the limit rather than refused: refuse it here
        raise RequestTooLarge()
    if not raw:
        raise InvalidRequest("The request body is empty: send a JSON object.")
    check_parse_cost(raw, pacer)
    if len(raw) > LARGE_BODY:
        pacer.rest()   # counting and parsing are each a single step that cannot yield: not both in one turn
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        if str(exc).startswith(("depth limit exceeded", "recursion limit")):
            # orjson's own nesting limit (1,024) comes before ours (screening.MAX_DEPTH)
            raise InvalidRequest("The request body is nested too deeply.", code="nesting_too_deep") from None
        raise InvalidRequest(f"We could not parse the JSON body of your request: {exc}.") from None
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    return body


def schema_error(errors: dict) -> InvalidRequest:
    path, message = _first_error(errors)
    return InvalidRequest(f"Invalid value for '{path}': {message}", param=path)


def _first_error(errors, prefix: str = "") -> tuple[str, str]:
    if isinstance(errors, dict):
        key, value = next(iter(errors.items()))
        if key == "_schema":
            return _first_error(value, prefix)
        if isinstance(key, int):
            return _first_error(value, f"{prefix}[{key}]")
        return _first_error(value, f"{prefix}.{key}" if prefix else str(key))
    if isinstance(errors, list) and errors:
        first = errors[0]
        if isinstance(first, (dict, list)):
            return _first_error(first, prefix)
        message = str(first)
        if message == "Missing data for required field.":
            message = "is required."
        return prefix, message
    return prefix, str(errors)
