"""The adapter for every OpenAI-compatible server (OpenAI, vLLM, llama.cpp, Ollama /v1, Together, Groq, …).

The request body goes upstream as the client sent it (vendor extras included),
with only `model` swapped for the upstream name. Stream chunks pass through
byte for byte, except that the `model` value is replaced in place; they are
parsed (orjson, about a microsecond each) only to be inspected, never re-encoded.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Iterator
from urllib.parse import urlsplit

import orjson

from ..errors import (BadUpstreamResponse, ContextLengthExceeded, GatewayError, UpstreamAuthFailed,
                      UpstreamClientError, UpstreamFailed, UpstreamRateLimited, UpstreamTimeout)
from ..redact import Redactor
from ..types import Completion, Deployment, ModelRequest, Usage
from . import OPENAI_COMPATIBLE_BASES
from .auth import HeaderAuth, bearer
from .base import Chunk, PrimedStream, carries_content
from .sse import SSEDecoder
from .transport import Transport, UpstreamResponse

CONNECT_TIMEOUT = 5.0
ENDPOINTS = ("chat/completions", "completions", "embeddings")

# How OpenAI-compatible servers say "prompt longer than the context window" when
# they send no `context_length_exceeded` code (vLLM, llama.cpp, TGI-based hosts).
CONTEXT_WINDOW_SIGNALS = (
    "maximum context length",
    "context length exceeded",
    "exceeds the available context size",
    "context window",
    "must be <= ",
)
_PASSED_THROUGH_STATUSES = (400, 404, 422)


@dataclass(frozen=True)
class _Upstream:
    """Everything about one deployment that does not change between requests."""
    transport: Transport
    urls: dict
    headers: dict
    auth: HeaderAuth | None
    where: str


class OpenAICompatibleAdapter:
    def __init__(self, deployments: list[Deployment], *, pool_maxsize: int, redactor: Redactor):
        self._redact = redactor
        transports: dict[str, Transport] = {}
        self._upstreams: dict[str, _Upstream] = {}
        for deployment in deployments:
            base = deployment.api_base or OPENAI_COMPATIBLE_BASES[deployment.provider]
            origin = "{0.scheme}://{0.netloc}".format(urlsplit(base))
            transport = transports.get(origin) or transports.setdefault(origin, Transport(pool_maxsize))
            headers = {"Content-Type": "application/json", "Accept": "application/json",
                       "User-Agent": "shin-gateway"}
            if deployment.organization:
                headers["OpenAI-Organization"] = deployment.organization
            headers.update(deployment.extra_headers)
            self._upstreams[deployment.id] = _Upstream(
                transport=transport, urls={e: f"{base}/{e}" for e in ENDPOINTS}, headers=headers,
                auth=bearer(deployment.api_key), where=f"deployment {deployment.id}")
        self._transports = list(transports.values())

    def complete(self, deployment: Deployment, request: ModelRequest) -> Completion:
        response = self._post(deployment, request, stream=False)
        try:
            body = orjson.loads(response.content)
        except orjson.JSONDecodeError:
            body = None
        if not isinstance(body, dict) or ("choices" not in body and "data" not in body):
            raise BadUpstreamResponse(f"the upstream sent an answer that is not an OpenAI response "
                                      f"({self._upstreams[deployment.id].where})")
        body["model"] = request.model
        return Completion(body, Usage.from_openai(body.get("usage")))

    def stream(self, deployment: Deployment, request: ModelRequest) -> PrimedStream:
        response = self._post(deployment, request, stream=True)
        chunks = self._chunks(response, request.model.encode())
        return PrimedStream(chunks, response.close).prime()

    def close(self) -> None:
        for transport in self._transports:
            transport.close()

    # --- internals -------------------------------------------------------------------

    def _post(self, deployment: Deployment, request: ModelRequest, *, stream: bool) -> UpstreamResponse:
        upstream = self._upstreams[deployment.id]
        payload = dict(request.params)
        payload.update(request.extra)
        payload["model"] = deployment.upstream_model
        headers = dict(upstream.headers)
        if request.request_id:
            headers["X-Request-Id"] = request.request_id
        read_timeout = (deployment.stream_timeout or deployment.timeout) if stream else deployment.timeout
        response = upstream.transport.post(
            upstream.urls[request.endpoint], orjson.dumps(payload), headers,
            timeout=(min(CONNECT_TIMEOUT, deployment.timeout), read_timeout),
            auth=upstream.auth, stream=stream, where=upstream.where)
        if response.status != 200:
            if stream:
                response.read()
            response.close()
            raise self._status_error(response)
        return response

    def _chunks(self, response: UpstreamResponse, alias: bytes) -> Iterator[Chunk]:
        """Upstream SSE → framed events for the client; ends at [DONE], raises on in-band errors.

        Until the first content-bearing chunk every event is parsed (the stream
        is being primed). After it, a network read holding exactly one plain
        event — the usual case — is relayed as it came, model renamed in
        place, without decoding; anything else takes the decoding path.
        """
        decoder = SSEDecoder()
        rename = None
        done = finished = primed = False
        for data in response.iter_bytes():
            if done:
                continue  # drain what follows [DONE], so the connection can go back to the pool
            if primed and decoder.idle and _is_plain_event(data):
                finished = finished or _FINISH in data or _FINISH_SPACED in data
                yield rename(data), None
                continue
            for payload in _data_of(decoder.feed(data)):
                if done:
                    continue
                if payload == b"[DONE]":
                    done = True
                    continue
                chunk = self._parse_chunk(payload, response.where)
                if not chunk.get("choices") and not chunk.get("usage"):
                    continue  # nothing for the client: a content-filter preamble or similar
                if rename is None:
                    rename = _model_renamer(chunk.get("model"), alias)
                finished = finished or any(c.get("finish_reason") for c in chunk.get("choices") or ())
                primed = primed or carries_content(chunk)
                yield b"data: " + rename(payload) + b"\n\n", chunk
        if not done:
            for payload in _data_of(decoder.flush()):
                done = done or payload == b"[DONE]"
        if not (done or finished):
            raise UpstreamFailed(f"the upstream stream ended before it was complete ({response.where})")

    def _parse_chunk(self, payload: bytes, where: str) -> dict:
        try:
            chunk = orjson.loads(payload)
        except orjson.JSONDecodeError:
            raise BadUpstreamResponse(f"the upstream sent a stream chunk that is not JSON ({where})") from None
        if not isinstance(chunk, dict):
            raise BadUpstreamResponse(f"the upstream sent a stream chunk that is not an object ({where})")
        if chunk.get("error"):
            error = chunk["error"] if isinstance(chunk["error"], dict) else {"message": str(chunk["error"])}
            raise UpstreamFailed(self._redact(str(error.get("message") or "the upstream failed mid-stream")))
        return chunk

    def _status_error(self, response: UpstreamResponse) -> GatewayError:
        status = response.status
        error = _error_fields(response.content)
        message = self._redact(str(error.get("message") or f"the upstream answered HTTP {status}"))[:2000]
        code = error.get("code") if isinstance(error.get("code"), str) else None
        retry_after = _retry_after(response.headers)
        where = response.where
        if status in (401, 403):
            return UpstreamAuthFailed(f"the upstream rejected the gateway's credentials ({where})")
        if status == 429:
            return UpstreamRateLimited(f"the upstream is rate limiting: {message}", retry_after=retry_after)
        if status in _PASSED_THROUGH_STATUSES:
            lowered = message.lower()
            if code == "context_length_exceeded" or any(s in lowered for s in CONTEXT_WINDOW_SIGNALS):
                return ContextLengthExceeded(message, param="messages")
            param = error.get("param") if isinstance(error.get("param"), str) else None
            return UpstreamClientError(message, status=status, param=param, code=code,
                                       type=error.get("type") if isinstance(error.get("type"), str) else None)
        if status == 408:
            return UpstreamTimeout(f"the upstream timed out ({where})")
        if status >= 500 or status == 409:
            return UpstreamFailed(f"the upstream failed with HTTP {status} ({where}): {message}",
                                  retry_after=retry_after)
        error = UpstreamFailed(f"the upstream answered HTTP {status} ({where}): {message}")
        error.retryable = False
        return error


_FINISH = b'"finish_reason":"'
_FINISH_SPACED = b'"finish_reason": "'
# Events that must be decoded: they may carry usage, an error, or nothing for the client.
_NEEDS_DECODING = re.compile(rb'"usage": ?\{|"error"|"choices": ?\[\]')


def _is_plain_event(data: bytes) -> bool:
    """Exactly one `data: {…}` event, LF-framed, with nothing the gateway must look at.

    JSON text cannot hold a raw newline or CR, so two LFs and no CR mean one
    single-line event; a false "not plain" only costs the decoding path.
    """
    return (data.startswith(b"data: {") and data.endswith(b"}\n\n") and data.count(b"\n") == 2
            and b"\r" not in data and _NEEDS_DECODING.search(data) is None)


def _data_of(events):
    for _event, payload in events:
        yield payload


def _model_renamer(upstream_model, alias: bytes):
    """Replace `"model":"<upstream>"` with the client's name, in place, without re-encoding."""
    if not isinstance(upstream_model, str):
        return _unchanged
    new = orjson.dumps(alias.decode())
    values = {orjson.dumps(upstream_model), json.dumps(upstream_model).encode()}  # raw UTF-8 or \u-escaped
    values.discard(new)
    if not values:
        return _unchanged
    pairs = [(prefix + value, prefix + new) for value in values for prefix in (b'"model":', b'"model": ')]

    def rename(payload: bytes) -> bytes:
        for old, replacement in pairs:
            if old in payload:
                return payload.replace(old, replacement, 1)
        return payload
    return rename


def _unchanged(payload: bytes) -> bytes:
    return payload


def _error_fields(content: bytes) -> dict:
    """The error object of an OpenAI-style body, or vLLM's older top-level one."""
    try:
        body = orjson.loads(content)
    except orjson.JSONDecodeError:
        text = content[:500].decode("utf-8", "replace").strip()
        return {"message": text} if text and not text.startswith("<") else {}
    if isinstance(body, dict):
        error = body.get("error", body)
        if isinstance(error, dict):
            return error
        if isinstance(error, str):
            return {"message": error}
    return {}


def _retry_after(headers) -> float | None:
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        value = headers.get(name)
        if value:
            try:
                return max(0.0, float(value) * scale)
            except ValueError:
                continue
    return None
