"""One pooled requests HTTPAdapter per upstream, per worker, shared by all its greenlets.

We call the adapter's `send()` with a request we build ourselves instead of
going through `requests.Session`: the Session's per-call merging of settings,
hooks and cookies was the largest single cost of a relayed call. Transport
retries are off (a retried POST can be a second paid completion); retries
belong to routing/. Foreign exceptions become GatewayErrors here, and only here.

Everything read from an upstream is bounded: a whole body in bytes (over the
cap: 502, connection dropped) and the call in time (a deadline that covers
connecting, waiting for headers and reading, so an upstream that drip-feeds
bytes still ends at it). Sockets are polled, never select(2)ed, which fails on
descriptors of 1024 and above.
"""
from __future__ import annotations

import socket
import time
from contextlib import contextmanager, nullcontext
from typing import Iterator

import gevent
import requests
import urllib3
from requests.adapters import HTTPAdapter
from requests.models import PreparedRequest, Response
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from gevent.monkey import get_original

from ..errors import BadUpstreamResponse, GatewayError, UpstreamFailed, UpstreamTimeout

_poll = get_original("select", "poll")     # the real poll(2), even in a gevent-patched worker
_POLLIN = get_original("select", "POLLIN")

READ_SIZE = 65536
WHOLE_READ_SIZE = 262144
DONE_GRACE = 0.25   # seconds an upstream has, after `[DONE]`, to end its body and keep its connection

# First match wins, so subclasses stand before their bases.
_EXCEPTION_TABLE: tuple[tuple[type[BaseException], type[GatewayError], str], ...] = (
    (requests.exceptions.ConnectTimeout, UpstreamTimeout, "timed out connecting to the upstream"),
    (requests.exceptions.Timeout, UpstreamTimeout, "the upstream did not answer in time"),
    (urllib3.exceptions.TimeoutError, UpstreamTimeout, "the upstream did not answer in time"),
    (socket.timeout, UpstreamTimeout, "the upstream did not answer in time"),
    (requests.exceptions.SSLError, UpstreamFailed, "TLS handshake with the upstream failed"),
    (requests.exceptions.ConnectionError, UpstreamFailed, "the upstream is unreachable"),
    (requests.exceptions.ChunkedEncodingError, UpstreamFailed, "the upstream broke off its answer"),
    (urllib3.exceptions.ProtocolError, UpstreamFailed, "the upstream broke off its answer"),
    (urllib3.exceptions.HTTPError, UpstreamFailed, "the upstream answer could not be read"),
    (requests.exceptions.RequestException, UpstreamFailed, "the upstream request failed"),
    (OSError, UpstreamFailed, "the upstream connection failed"),
)


@contextmanager
def upstream_errors(where: str) -> Iterator[None]:
    """Translate transport exceptions into GatewayErrors, while sending and while reading."""
    try:
        yield
    except GatewayError:
        raise
    except Exception as exc:
        for exc_type, error_type, message in _EXCEPTION_TABLE:
            if isinstance(exc, exc_type):
                raise error_type(f"{message} ({where})") from None
        raise


def within(deadline: float | None, where: str):
    """Raise UpstreamTimeout in whatever upstream I/O is waiting when `deadline` (monotonic) passes."""
    if deadline is None:
        return nullcontext()
    error = UpstreamTimeout(f"the upstream did not answer in time ({where})")
    left = deadline - time.monotonic()
    if left <= 0:
        raise error
    return gevent.Timeout(left, error)


def _still_open(connection) -> bool:
    """Has the upstream closed this idle pooled connection? One non-blocking poll(2).

    urllib3 asks this before reusing a connection; its own check goes through
    gevent's emulated poll(), which cost ~7% of a relayed request.
    """
    if connection.sock is None:
        return False
    poller = _poll()
    poller.register(connection.sock.fileno(), _POLLIN)
    return not poller.poll(0)


class _Connection(HTTPConnection):
    is_connected = property(_still_open)


class _TLSConnection(HTTPSConnection):
    is_connected = property(_still_open)


class _Pool(HTTPConnectionPool):
    ConnectionCls = _Connection


class _TLSPool(HTTPSConnectionPool):
    ConnectionCls = _TLSConnection


class _LeanAdapter(HTTPAdapter):
    """An HTTPAdapter whose responses skip the cookie jar: upstream cookies are never wanted."""

    def init_poolmanager(self, *args, **kwargs):
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": _Pool, "https": _TLSPool}

    def build_response(self, req: PreparedRequest, resp) -> Response:
        response = Response()
        response.status_code = resp.status
        response.headers = resp.headers
        response.raw = resp
        response.reason = resp.reason
        response.url = req.url
        response.request = req
        response.connection = self
        return response


class Transport:
    """The connection pool to one upstream origin."""

    def __init__(self, pool_maxsize: int):
        self.adapter = _LeanAdapter(pool_connections=1, pool_maxsize=pool_maxsize, max_retries=0)

    def post(self, url: str, body: bytes, headers: dict, *, timeout: tuple[float, float],
             auth=None, stream: bool = False, where: str = "upstream", deadline: float | None = None,
             max_body: int = 32 << 20) -> "UpstreamResponse":
        """Send; for a whole answer (`stream` false) also read the body, at most `max_body` bytes.

        `headers` is never written to: adapters share one dict between requests.
        """
        request = PreparedRequest()
        request.method = "POST"
        request.url = url
        request.headers = {**headers, "Content-Length": str(len(body))}
        request.body = body
        if auth is not None:
            auth(request)
        with upstream_errors(where), within(deadline, where):  # one timer for sending and reading
            response = self.adapter.send(request, stream=True, timeout=timeout)
            upstream = UpstreamResponse(response.raw, where)
            if not stream:
                upstream.read(max_body)
        return upstream

    def close(self) -> None:
        self.adapter.close()


class UpstreamResponse:
    """The status, headers and body of one upstream answer; the body read whole or as a stream."""
    __slots__ = ("raw", "status", "headers", "content", "where", "_finished", "_reader", "_closed")

    def __init__(self, raw, where: str):
        self.raw = raw
        self.status = raw.status
        self.headers = raw.headers
        self.content = b""
        self.where = where
        self._finished = False
        self._reader: Iterator[bytes] | None = None
        self._closed = False

    def read(self, max_bytes: int = 32 << 20, deadline: float | None = None) -> bytes:
        """The whole body, or 502 past `max_bytes` and 504 past `deadline` (the connection is dropped)."""
        raw, parts, size = self.raw, [], 0
        # A plain body of known length is read in one call of exactly its size
        # (http.client allocates the whole read size up front); others in slices.
        exact = raw.length_remaining is not None and not raw.headers.get("content-encoding")
        try:
            with upstream_errors(self.where), within(deadline, self.where):
                while True:
                    left = raw.length_remaining if exact else None
                    data = raw.read(min(left, max_bytes + 1) if left else WHOLE_READ_SIZE, decode_content=True)
                    if not data:
                        break
                    size += len(data)
                    if size > max_bytes:
                        raise BadUpstreamResponse(f"the upstream answer is larger than the gateway accepts "
                                                  f"({max_bytes >> 20} MB, {self.where})")
                    parts.append(data)
                    if exact and raw.length_remaining == 0:
                        break
        except BaseException:
            # The error's traceback keeps this frame alive while the router
            # retries elsewhere: it must not keep what was read with it.
            parts.clear()
            data = None
            self.close()
            raise
        self.content = parts[0] if len(parts) == 1 else b"".join(parts)
        self._finished = True
        return self.content

    def iter_bytes(self) -> Iterator[bytes]:
        """Body bytes as they arrive (one HTTP chunk at a time when chunked); one reader per response.

        A caller that stops early (at `[DONE]`) leaves the reader where it
        is, so that close() can still read the body's end and keep the connection.
        """
        if self._reader is None:
            self._reader = self._read_body()
        return self._reader

    def _read_body(self) -> Iterator[bytes]:
        raw = self.raw
        with upstream_errors(self.where):
            if raw.chunked and raw.supports_chunked_reads():
                yield from raw.read_chunked(READ_SIZE, decode_content=True)
            else:
                while True:
                    data = raw.read1(READ_SIZE, decode_content=True)
                    if not data:
                        break
                    yield data
        self._finished = True

    def close(self, drain: bool = False) -> None:
        """Give a fully read connection back to the pool; close one cut off mid-answer.

        `drain`: the answer is complete (`[DONE]` came), so wait DONE_GRACE at
        most for the body's end, to keep the connection; an upstream that stays
        open after it loses the connection instead of holding the request.
        """
        if self._closed:
            return
        self._closed = True
        if drain and not self._finished and self._reader is not None:
            self._drain()
        if not self._finished:
            self.raw.close()
        self.raw.release_conn()

    def _drain(self) -> None:
        left = READ_SIZE
        try:
            with gevent.Timeout(DONE_GRACE, False):
                for data in self._reader:
                    left -= len(data)
                    if left < 0:
                        return
        except GatewayError:
            pass
