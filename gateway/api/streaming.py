"""Render a Completion as JSON, or a ChunkStream as server-sent events.

Everything about a stream is decided before the first byte (status, headers,
retries); after it, an upstream failure becomes one in-band error event and
the stream ends without `[DONE]`, so no client mistakes a cut answer for a
whole one. A client that goes away closes the upstream response at once.
"""
from __future__ import annotations

import logging
import socket
import time

import gevent
import orjson
from flask import Response, g, request
from gevent import GreenletExit

from ..errors import GatewayError, UpstreamFailed, UpstreamTimeout
from ..types import ChunkStream, ModelRequest, Principal, Trace
from .auth import service

log = logging.getLogger("gateway.streaming")

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
DONE = b"data: [DONE]\n\n"


def respond(principal: Principal, call: ModelRequest) -> Response:
    """Run the call and render it: JSON for a whole answer, SSE for a stream.

    Whichever it is, a client that hangs up stops the upstream call at once,
    so an abandoned request spends no more upstream tokens.
    """
    watcher = _watch_client(request.environ)
    trace = g.trace
    gateway = service()
    streaming = False
    try:
        answer = gateway.run(principal, call, trace)
        streaming = call.stream
    except GatewayError as error:
        error.extra_headers = {**(error.extra_headers or {}), **routing_headers(trace)}
        raise
    finally:
        if not streaming:   # a stream's watcher lives until the stream ends
            _stop(watcher)
    if not streaming:
        return json_response(answer.body, headers=routing_headers(trace))
    trace.first_byte = time.monotonic()   # primed up to its first content: sent as soon as this returns
    # direct_passthrough: our bytes go to the server as they are, without
    # werkzeug's per-chunk encoding and closing wrappers.
    return Response(_Body(answer, watcher, trace, gateway.stream_ends_by(trace)), mimetype="text/event-stream",
                    headers={**SSE_HEADERS, **routing_headers(trace)}, direct_passthrough=True)


def routing_headers(trace: Trace) -> dict[str, str]:
    """The peer's `x-litellm-*` headers: which deployment served, after how many retries and fallbacks.

    Overhead is the gateway's own time: the whole so far minus the time spent
    inside upstream attempts and backoff waits.
    """
    elapsed_ms = (time.monotonic() - trace.started) * 1000
    headers = {"x-litellm-attempted-retries": str(trace.retries),
               "x-litellm-attempted-fallbacks": str(trace.fallbacks),
               "x-litellm-response-duration-ms": str(int(elapsed_ms)),
               "x-litellm-overhead-duration-ms": str(max(0, int(elapsed_ms - trace.upstream_seconds * 1000)))}
    if trace.model_group:
        headers["x-litellm-model-group"] = trace.model_group
    if trace.deployment_id:
        headers["x-litellm-model-id"] = trace.deployment_id
    if trace.limit_headers:
        headers.update(trace.limit_headers)
    if trace.cost is not None:
        headers["x-litellm-response-cost"] = repr(trace.cost)
    if trace.key_spend is not None:
        headers["x-litellm-key-spend"] = repr(trace.key_spend)
    return headers


def json_response(body: dict, status: int = 200, headers: dict | None = None) -> Response:
    return Response(orjson.dumps(body), status=status, headers=headers, mimetype="application/json")


class _Body:
    """The SSE body: closes the stream even when the server closes us before the first chunk.

    A generator that never started skips its `finally`; the server always
    calls `close()`, so the upstream response, the books and `on_close` (the
    request's metrics and log line, set by telemetry.py) close here too.
    """
    __slots__ = ("_events", "_stream", "_watcher", "on_close")

    def __init__(self, stream: ChunkStream, watcher, trace: Trace, ends_by: float):
        self._events = _events(stream, watcher, trace, ends_by)
        self._stream, self._watcher = stream, watcher
        self.on_close = None

    def __iter__(self):
        return self._events

    def close(self) -> None:
        try:
            self._events.close()
            _stop(self._watcher)
            self._stream.close()
        finally:
            finish, self.on_close = self.on_close, None
            if finish:
                finish(200)


def _events(stream: ChunkStream, watcher, trace: Trace, ends_by: float):
    """The stream's events, then `[DONE]`; past `ends_by` (its longest allowed time) an in-band timeout."""
    clock = time.monotonic
    try:
        for event in stream:
            if clock() > ends_by:
                raise UpstreamTimeout("the stream ran past the longest time a stream may take "
                                      "(litellm_settings.request_timeout)")
            yield event
        yield DONE
    except GatewayError as error:
        _failed(trace, error)
        yield _error_event(error)
    except Exception:  # a bug of ours mid-stream: still end the stream in-band
        log.exception("stream failed", extra={"event": "stream_failed", "request_id": trace.request_id})
        error = UpstreamFailed("the stream failed inside the gateway")
        trace.error_code = error.code
        yield _error_event(error)
    finally:
        _stop(watcher)
        stream.close()


def _failed(trace: Trace, error: GatewayError) -> None:
    """An upstream failure after the first byte: the request's error, and a failed upstream attempt."""
    trace.error_code = error.code if error.code in ("upstream_error", "upstream_timeout") else "upstream_error"
    if trace.failures is None:
        trace.failures = []
    trace.failures.append((trace.deployment_id, error))


def _error_event(error: GatewayError) -> bytes:
    code = error.code if error.code in ("upstream_error", "upstream_timeout") else "upstream_error"
    body = {"error": {"message": error.message, "type": "api_error", "code": code, "param": None}}
    return b"data: " + orjson.dumps(body) + b"\n\n"


class ClientDisconnected(GreenletExit):
    """The client hung up: unwinds the request's greenlet wherever it waits.

    A GreenletExit, so no `except Exception` on the way (ours, Flask's,
    urllib3's) mistakes it for an error; urllib3 closes the upstream
    connection it was using, which is what the upstream sees.
    """


def _watch_client(environ):
    """Stop all work for this request the moment its client goes away, even while the upstream is silent.

    A bare libev read watcher on the client's socket, not a greenlet: about
    1.5 µs a request instead of ~55 µs for a greenlet that waits and is killed.
    """
    client_socket = environ.get("gunicorn.sock") or environ.get("gunicorn.socket")
    if client_socket is None:
        return None
    request_greenlet = gevent.getcurrent()
    watcher = gevent.get_hub().loop.io(client_socket.fileno(), 1)

    def readable():
        watcher.stop()
        try:
            gone = client_socket.recv(1, socket.MSG_PEEK) == b""
        except OSError as exc:
            gone = not isinstance(exc, BlockingIOError)
        except Exception:  # noqa: BLE001 - a wake-up with nothing to read: not a hang-up
            gone = False
        if gone:
            gevent.kill(request_greenlet, ClientDisconnected)
        # else: the client sent more (a pipelined request): not a hang-up, stop watching

    watcher.start(readable)
    return watcher


def _stop(watcher) -> None:
    if watcher is not None:
        watcher.stop()
        watcher.close()
