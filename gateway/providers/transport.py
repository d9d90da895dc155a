"""One pooled requests HTTPAdapter per upstream, per worker, shared by all its greenlets.

We call the adapter's `send()` with a request we build ourselves instead of
going through `requests.Session`: the Session's per-call merging of settings,
hooks and cookies was the largest single cost of a relayed call. Transport
retries are off (a retried POST can be a second paid completion); retries
belong to routing/. Foreign exceptions become GatewayErrors here, and only here.
"""
from __future__ import annotations

import socket
from contextlib import contextmanager
from typing import Iterator

import requests
import urllib3
from requests.adapters import HTTPAdapter
from requests.models import PreparedRequest, Response
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

try:  # the real select(2), even in a gevent-patched worker
    from gevent.monkey import get_original
    _select = get_original("select", "select")
except ImportError:  # pragma: no cover - outside gevent
    from select import select as _select

from ..errors import GatewayError, UpstreamFailed, UpstreamTimeout

READ_SIZE = 65536

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


def _still_open(connection) -> bool:
    """Has the upstream closed this idle pooled connection? One non-blocking select(2).

    urllib3 asks this before reusing a connection; its own check goes through
    gevent's emulated poll(), which cost ~7% of a relayed request.
    """
    if connection.sock is None:
        return False
    readable, _, _ = _select([connection.sock], [], [], 0)
    return not readable


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
             auth=None, stream: bool = False, where: str = "upstream") -> "UpstreamResponse":
        request = PreparedRequest()
        request.method = "POST"
        request.url = url
        request.headers = headers
        request.body = body
        headers["Content-Length"] = str(len(body))
        if auth is not None:
            auth(request)
        with upstream_errors(where):
            response = self.adapter.send(request, stream=True, timeout=timeout)
        upstream = UpstreamResponse(response.raw, where)
        if not stream:
            upstream.read()
        return upstream

    def close(self) -> None:
        self.adapter.close()


class UpstreamResponse:
    """The status, headers and body of one upstream answer; the body read whole or as a stream."""
    __slots__ = ("raw", "status", "headers", "content", "where", "_finished")

    def __init__(self, raw, where: str):
        self.raw = raw
        self.status = raw.status
        self.headers = raw.headers
        self.content = b""
        self.where = where
        self._finished = False

    def read(self) -> bytes:
        with upstream_errors(self.where):
            self.content = self.raw.read(decode_content=True)
        self._finished = True
        return self.content

    def iter_bytes(self) -> Iterator[bytes]:
        """Yield body bytes as they arrive (one HTTP chunk at a time when chunked)."""
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

    def close(self) -> None:
        """Give a fully read connection back to the pool; close one cut off mid-answer."""
        if self._finished:
            self.raw.release_conn()
        else:
            self.raw.close()
            self.raw.release_conn()
