"""Render a Completion as JSON, or a PrimedStream as server-sent events.

Everything about a stream is decided before the first byte (status, headers,
retries); after it, an upstream failure becomes one in-band error event and
the stream ends without `[DONE]`, so no client mistakes a cut answer for a
whole one. A client that goes away closes the upstream response at once.
"""
from __future__ import annotations

import logging
import socket

import orjson
from flask import Response, request

from ..errors import GatewayError, UpstreamFailed
from ..providers.base import PrimedStream
from ..types import Completion

log = logging.getLogger("gateway.streaming")

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
DONE = b"data: [DONE]\n\n"


def respond(result: Completion | PrimedStream) -> Response:
    if isinstance(result, Completion):
        return json_response(result.body)
    return sse_response(result)


def json_response(body: dict, status: int = 200, headers: dict | None = None) -> Response:
    return Response(orjson.dumps(body), status=status, headers=headers, mimetype="application/json")


def sse_response(stream: PrimedStream) -> Response:
    watcher = _watch_client(request.environ.get("gunicorn.socket"), stream)
    return Response(_events(stream, watcher), mimetype="text/event-stream", headers=SSE_HEADERS)


def _events(stream: PrimedStream, watcher):
    try:
        for payload in stream:
            yield b"data: " + payload + b"\n\n"
        yield DONE
    except GatewayError as error:
        yield _error_event(error)
    except Exception:  # a bug of ours mid-stream: still end the stream in-band
        log.exception("stream failed")
        yield _error_event(UpstreamFailed("the stream failed inside the gateway"))
    finally:
        if watcher is not None:
            watcher.kill(block=False)
        stream.close()


def _error_event(error: GatewayError) -> bytes:
    code = error.code if error.code in ("upstream_error", "upstream_timeout") else "upstream_error"
    body = {"error": {"message": error.message, "type": "api_error", "code": code, "param": None}}
    return b"data: " + orjson.dumps(body) + b"\n\n"


def _watch_client(client_socket, stream: PrimedStream):
    """Close the upstream response as soon as the client hangs up, even while the upstream is silent."""
    if client_socket is None:
        return None
    try:
        import gevent
        from gevent.socket import wait_read
    except ImportError:
        return None

    def watch():
        try:
            wait_read(client_socket.fileno())
            if client_socket.recv(1, socket.MSG_PEEK) != b"":
                return  # the client sent more (a pipelined request): not a hang-up
        except OSError:
            pass
        stream.close()

    return gevent.spawn(watch)
