"""The adapter for every OpenAI-compatible server (OpenAI, vLLM, llama.cpp, Ollama /v1, Together, Groq, …).

The request body goes upstream as the client sent it (vendor extras included),
with only `model` swapped for the upstream name, and a stream always asking for
its usage (`stream_options.include_usage`: spend and tpm need it). Stream chunks
pass through byte for byte, except that the `model` value is replaced in place;
they are parsed (orjson, about a microsecond each) only to be inspected, never
re-encoded. The usage chunk the client did not ask for is kept from it.
"""
from __future__ import annotations

import json
import re
import time
from typing import Iterator

import orjson

from ..errors import BadUpstreamResponse, UpstreamFailed, UpstreamTimeout
from ..tokens import estimate_completion_tokens, estimate_prompt_tokens
from ..types import Completion, Deployment, ModelRequest, Usage
from . import OPENAI_COMPATIBLE_BASES
from .auth import bearer
from .base import MAX_HEAD_EVENTS, Chunk, carries_content, clean_usage
from .failures import CONTENT_POLICY, CONTEXT_LENGTH, UpstreamError, has_signal
from .http import MAX_EVENT, HTTPProvider, StreamState, error_fields
from .sse import EventTooLarge, SSEDecoder
from .transport import UpstreamResponse

# How OpenAI-compatible servers say "prompt longer than the context window" when
# they send no `context_length_exceeded` code (vLLM, llama.cpp, TGI-based hosts).
# OpenAI's code for a refused prompt, and Azure OpenAI's content filter's.
CONTENT_POLICY_CODES = ("content_policy_violation", "content_filter")
CONTEXT_WINDOW_SIGNALS = (
    "maximum context length",
    "context length exceeded",
    "exceeds the available context size",
    "context window",
    "`max_new_tokens` must be <=",   # TGI: "`inputs` tokens + `max_new_tokens` must be <= 4096"
)
_CLIENT_ERROR_STATUSES = (400, 404, 422)


class OpenAICompatibleAdapter(HTTPProvider):
    label = "this OpenAI-compatible server"
    endpoints = ("chat/completions", "completions", "embeddings")

    def base_url(self, deployment: Deployment) -> str:
        return deployment.api_base or OPENAI_COMPATIBLE_BASES[deployment.provider]

    def url(self, deployment: Deployment, base: str, endpoint: str, stream: bool) -> str:
        return f"{base}/{endpoint}"

    def headers(self, deployment: Deployment) -> dict:
        return {"OpenAI-Organization": deployment.organization} if deployment.organization else {}

    def auth(self, deployment: Deployment):
        return bearer(deployment.api_key)

    def request_body(self, deployment: Deployment, request: ModelRequest, stream: bool) -> dict:
        payload = dict(request.params)
        payload.update(request.extra)
        payload["model"] = deployment.upstream_model
        if stream and request.endpoint in _USAGE_ENDPOINTS:
            options = payload.get("stream_options")
            payload["stream_options"] = {**options, "include_usage": True} if isinstance(options, dict) \
                else {"include_usage": True}
        return payload

    def completion(self, deployment: Deployment, request: ModelRequest, body: dict) -> Completion:
        if "choices" not in body and "data" not in body:
            raise BadUpstreamResponse(f"the upstream sent an answer that is not an OpenAI response "
                                      f"({self._upstreams[deployment.id].where})")
        body["model"] = request.model
        usage = body.get("usage")
        if usage is not None:
            cleaned = clean_usage(usage)
            if cleaned is None:
                del body["usage"]
            elif cleaned is not usage:
                body["usage"] = cleaned
        counted = Usage.from_openai(body.get("usage"))
        if counted is None:   # the client's body stays as the upstream sent it; only the books get an estimate
            prompt = estimate_prompt_tokens(request.endpoint, request.params)
            completion = estimate_completion_tokens(body)
            counted = Usage(prompt, completion, prompt + completion)
        return Completion(body, counted)

    def describe_error(self, status: int, content: bytes, headers) -> UpstreamError:
        error = error_fields(content)
        message = str(error.get("message") or "")
        code = error.get("code") if isinstance(error.get("code"), str) else None
        kind = None
        if status in _CLIENT_ERROR_STATUSES:
            if code == "context_length_exceeded" or has_signal(message, CONTEXT_WINDOW_SIGNALS):
                kind = CONTEXT_LENGTH
            elif code in CONTENT_POLICY_CODES:
                kind = CONTENT_POLICY
        return UpstreamError(status, message, kind=kind, code=code,
                             type=error.get("type") if isinstance(error.get("type"), str) else None,
                             param=error.get("param") if isinstance(error.get("param"), str) else None)

    def in_band_error(self, body: dict) -> UpstreamError | None:
        """An error object sent with HTTP 200: mapped by the status or code it names."""
        if "error" not in body or "choices" in body or "data" in body:
            return None
        error = body["error"] if isinstance(body["error"], dict) else {"message": str(body["error"])}
        status = _status_named(error) or _status_named(body) or 502
        return self.describe_error(status, orjson.dumps({"error": error}), None)

    def chunks(self, deployment: Deployment, request: ModelRequest, response: UpstreamResponse, gap: float,
               state: StreamState) -> Iterator[Chunk]:
        return self._chunks(response, request.model.encode(), gap, state, request.include_usage)

    # --- internals -------------------------------------------------------------------

    def _chunks(self, response: UpstreamResponse, alias: bytes, gap: float, state: StreamState,
                include_usage: bool) -> Iterator[Chunk]:
        """Upstream SSE → framed events for the client; ends at [DONE], raises on in-band errors.

        Until the first content-bearing chunk every event is parsed (the stream
        is being primed). After it, a network read holding exactly one plain
        event — the usual case — is relayed as it came, model renamed in
        place, without decoding; anything else takes the decoding path.
        `[DONE]` ends the iteration at once: the client gets it without
        waiting for whatever the upstream does next. More than `gap` seconds
        without a data event (bytes trickling in do not count) is a timeout.

        The usage-only chunk goes to the client only when it asked for one
        (`include_usage`); otherwise it is yielded with empty bytes, for the
        stream's usage alone. Content-bearing events are counted in `state`
        (plain ones by a byte search, never decoded) for when no usage comes.
        """
        decoder = SSEDecoder(MAX_EVENT)
        rename = None
        finished = primed = False
        where = response.where
        last_event = time.monotonic()
        empty = 0   # events with nothing for the client, before the first content
        for data in response.iter_bytes():
            if primed and decoder.idle and _is_plain_event(data):
                if _FINISH in data or _FINISH_SPACED in data:
                    finished = True
                    state.relayed += not any(marker in data for marker in _NOTHING_NEW)   # the last, empty chunk
                else:
                    state.relayed += 1
                last_event = time.monotonic()
                yield rename(data), None
                continue
            try:
                payloads = list(_data_of(decoder.feed(data)))
            except EventTooLarge as exc:
                raise BadUpstreamResponse(f"{exc} ({where})") from None
            yielded = False
            for payload in payloads:
                if payload == b"[DONE]":
                    state.done = True
                    return
                chunk = self._parse_chunk(payload, where)
                usage = chunk.get("usage")
                cleaned = usage if usage is None else clean_usage(usage)
                if cleaned is not usage:
                    if cleaned is None:
                        del chunk["usage"]
                    else:
                        chunk["usage"] = cleaned
                    payload = orjson.dumps(chunk)   # the only chunks ever re-encoded: bad usage
                choices = chunk.get("choices")
                if not choices:
                    if not chunk.get("usage"):
                        # nothing for the client: a content-filter preamble or similar
                        empty += not primed
                        if empty > MAX_HEAD_EVENTS:
                            raise BadUpstreamResponse(f"the upstream stream sent {empty} events with nothing "
                                                      f"for the client before any content ({where})")
                        continue
                    if not include_usage:   # asked for by the gateway, for the books only
                        yielded = primed = True
                        yield b"", chunk
                        continue
                elif _bears_text(choices):
                    state.relayed += 1
                yielded = True
                if rename is None:
                    rename = _model_renamer(chunk.get("model"), alias)
                finished = finished or any(isinstance(c, dict) and c.get("finish_reason")
                                           for c in chunk.get("choices") or ())
                primed = primed or carries_content(chunk)
                yield b"data: " + rename(payload) + b"\n\n", chunk
            if yielded:
                last_event = time.monotonic()
            elif primed and time.monotonic() - last_event > gap:
                raise UpstreamTimeout(f"the upstream stream stalled for over {gap:g} s ({where})")
        try:
            tail = list(_data_of(decoder.flush()))
        except EventTooLarge as exc:
            raise BadUpstreamResponse(f"{exc} ({where})") from None
        if b"[DONE]" in tail:
            state.done = True
        elif not finished:
            raise UpstreamFailed(f"the upstream stream ended before it was complete ({where})")

    def _parse_chunk(self, payload: bytes, where: str) -> dict:
        try:
            chunk = orjson.loads(payload)
        except orjson.JSONDecodeError:
            raise BadUpstreamResponse(f"the upstream sent a stream chunk that is not JSON ({where})") from None
        if not isinstance(chunk, dict) or not isinstance(chunk.get("choices", []), list):
            raise BadUpstreamResponse(f"the upstream sent a stream chunk that is not an OpenAI chunk ({where})")
        if chunk.get("error"):
            error = chunk["error"] if isinstance(chunk["error"], dict) else {"message": str(chunk["error"])}
            raise UpstreamFailed(self._redact(str(error.get("message") or "the upstream failed mid-stream"))[:500])
        return chunk


_USAGE_ENDPOINTS = ("chat/completions", "completions")
_FINISH = b'"finish_reason":"'
_FINISH_SPACED = b'"finish_reason": "'
_NOTHING_NEW = (b'"delta":{}', b'"delta": {}', b'"text":""', b'"text": ""')
# Events that must be decoded: they may carry usage, an error, or nothing for the client.
_NEEDS_DECODING = re.compile(rb'"usage": ?[^n ]|"error"|"choices": ?\[\]')


def _is_plain_event(data: bytes) -> bool:
    """Exactly one `data: {…}` event, LF-framed, with nothing the gateway must look at.

    JSON text cannot hold a raw newline or CR, so two LFs and no CR mean one
    single-line event; a false "not plain" only costs the decoding path.
    """
    return (data.startswith(b"data: {") and data.endswith(b"}\n\n") and data.count(b"\n") == 2
            and b"\r" not in data and _NEEDS_DECODING.search(data) is None)


def _bears_text(choices) -> bool:
    """Does a decoded chunk's choice carry generated text (content, a tool call, legacy `text`)?"""
    for choice in choices:
        if isinstance(choice, dict):
            if choice.get("text"):
                return True
            delta = choice.get("delta")
            if isinstance(delta, dict) and any(value for key, value in delta.items() if key != "role"):
                return True
    return False


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


def _status_named(error: dict) -> int | None:
    """The HTTP status an in-band error object names, by number or by its well-known codes."""
    for key in ("status", "code", "status_code"):
        value = error.get(key)
        if isinstance(value, str) and value.isdigit():
            value = int(value)
        if isinstance(value, int) and not isinstance(value, bool) and 400 <= value <= 599:
            return value
    words = " ".join(str(error.get(k) or "") for k in ("type", "code", "status")).lower()
    if "rate_limit" in words or "resource_exhausted" in words or "too_many_requests" in words:
        return 429
    if "context_length" in words or "invalid_request" in words or "invalid_argument" in words:
        return 400
    if "auth" in words or "permission" in words or "invalid_api_key" in words:
        return 401
    return None
