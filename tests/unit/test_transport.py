"""gateway/providers/transport.py: foreign exceptions become GatewayErrors; no transport-level retries."""
from __future__ import annotations

import socket

import pytest
import requests
import responses
import urllib3

from gateway.errors import GatewayError, UpstreamClientError, UpstreamFailed, UpstreamTimeout
from gateway.providers.transport import Transport, upstream_errors


@pytest.mark.parametrize("exc, expected", [
    (requests.exceptions.ConnectTimeout("x"), UpstreamTimeout),
    (requests.exceptions.ReadTimeout("x"), UpstreamTimeout),
    (urllib3.exceptions.ReadTimeoutError(None, "/", "x"), UpstreamTimeout),
    (socket.timeout("x"), UpstreamTimeout),
    (TimeoutError("x"), UpstreamTimeout),
    (requests.exceptions.SSLError("x"), UpstreamFailed),
    (requests.exceptions.ConnectionError("x"), UpstreamFailed),
    (requests.exceptions.ChunkedEncodingError("x"), UpstreamFailed),
    (urllib3.exceptions.ProtocolError("x"), UpstreamFailed),
    (urllib3.exceptions.DecodeError("x"), UpstreamFailed),
    (requests.exceptions.InvalidURL("x"), UpstreamFailed),
    (ConnectionRefusedError("x"), UpstreamFailed),
    (BrokenPipeError("x"), UpstreamFailed),
])
def test_exception_table(exc, expected):
    with pytest.raises(GatewayError) as info:
        with upstream_errors("deployment d1"):
            raise exc
    assert type(info.value) is expected
    assert info.value.message.endswith("(deployment d1)")
    assert info.value.__suppress_context__      # the foreign exception (maybe with a URL) is not chained


def test_gateway_errors_pass_unchanged():
    error = UpstreamClientError("upstream said no", status=422)
    with pytest.raises(UpstreamClientError) as info:
        with upstream_errors("d"):
            raise error
    assert info.value is error


def test_other_exceptions_are_not_disguised():
    with pytest.raises(KeyError):
        with upstream_errors("d"):
            raise KeyError("a bug of ours")


def test_errors_while_iterating_a_generator_are_translated():
    def body():
        with upstream_errors("d"):
            yield b"a"
            raise urllib3.exceptions.ProtocolError("Connection broken")

    chunks = body()
    assert next(chunks) == b"a"
    with pytest.raises(UpstreamFailed):
        next(chunks)


def test_no_transport_level_retries():
    transport = Transport(pool_maxsize=8)
    assert transport.adapter.max_retries.total == 0
    with responses.RequestsMock() as wire:
        wire.add(responses.POST, "http://up.test/v1/x", body=requests.exceptions.ConnectionError("refused"))
        with pytest.raises(UpstreamFailed):
            transport.post("http://up.test/v1/x", b"{}", {}, timeout=(1, 1))
        assert len(wire.calls) == 1
    transport.close()


def test_content_length_and_auth_are_set_per_request():
    """The adapter's headers dict is shared by every request: post() must never write into it."""
    transport = Transport(pool_maxsize=2)
    headers = {"Content-Type": "application/json"}
    before = dict(headers)
    bearer = lambda key: lambda r: (r.headers.__setitem__("Authorization", f"Bearer {key}"), r)[1]  # noqa: E731
    with responses.RequestsMock() as wire:
        wire.add(responses.POST, "http://up.test/v1/x", body=b"ok")
        wire.add(responses.POST, "http://up.test/v1/x", body=b"ok")
        response = transport.post("http://up.test/v1/x", b'{"a":1}', headers, timeout=(1, 1), auth=bearer("k1"))
        after_first = dict(headers)
        transport.post("http://up.test/v1/x", b"{}", headers, timeout=(1, 1))
        first, second = (call.request for call in wire.calls)
    assert after_first == before, f"post() mutated the headers dict it was given: {after_first}"
    assert headers == before, f"post() mutated the headers dict it was given: {headers}"
    assert first.headers["Content-Length"] == "7" and first.headers["Authorization"] == "Bearer k1"
    assert second.headers["Content-Length"] == "2" and "Authorization" not in second.headers
    assert first.headers["Content-Type"] == second.headers["Content-Type"] == "application/json"
    assert (response.status, response.content) == (200, b"ok")
    transport.close()
