"""The shared half of every HTTP provider adapter: send, refuse, frame and end a stream.

A provider module subclasses HTTPProvider and holds only its translation
(URLs, headers, request body, answer, stream events, error body). What every
upstream needs alike lives here once: one pooled Transport per origin, the
(connect, read) timeouts and the call's deadline, bounded bodies, status →
GatewayError through failures.py, the stream's framing, stall timeout and
end-of-stream check, and the usage estimate when an upstream reports none.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Iterable, Iterator, Protocol
from urllib.parse import urlsplit

import orjson

from ..errors import BadUpstreamResponse, GatewayError, InvalidRequest, UpstreamFailed, UpstreamTimeout
from ..tokens import estimate_prompt_tokens
from ..types import Completion, Deployment, ModelRequest, Usage
from .base import Chunk, PrimedStream
from .chunks import ChunkWriter
from .failures import StreamFailure, UpstreamError, gateway_error
from .legacy import LEGACY_ONLY, as_chat, text_completion
from .sse import EventTooLarge, SSEDecoder
from .transport import Transport, UpstreamResponse, within

CONNECT_TIMEOUT = 5.0
MAX_ERROR_BODY = 1 << 20
MAX_EVENT = 4 << 20
# Largest whole answer read from an upstream: an embeddings batch (2,048 inputs of
# 3,072 floats as JSON) is the biggest legitimate one.
MAX_BODY = {"embeddings": 256 << 20}
DEFAULT_MAX_BODY = 32 << 20
# Values of OpenAI parameters that ask for nothing: a provider without the parameter can
# still take the request (UIs send `presence_penalty: 0`, SDKs `logprobs: false`).
NEUTRAL_VALUES = {"n": 1, "logprobs": False, "store": False, "presence_penalty": 0, "frequency_penalty": 0,
                  "parallel_tool_calls": True, "modalities": ["text"], "echo": False, "best_of": 1}
# Exceptions a translator raises on an upstream answer of an unexpected shape.
_SHAPE_ERRORS = (KeyError, IndexError, TypeError, ValueError, AttributeError)


@dataclass(frozen=True)
class Upstream:
    """Everything about one deployment that does not change between requests."""
    transport: Transport
    urls: dict          # (endpoint, stream) → URL
    headers: dict
    auth: object        # a requests AuthBase, or None
    where: str


class Translator(Protocol):
    """Turns one upstream stream's events into OpenAI chunks.

    `done` set during feed() ends the read at once (the upstream's own end
    marker: Anthropic's message_stop); a provider without one leaves it for
    end(), called when the body ends, to set.
    """
    done: bool          # the upstream ended its stream properly

    def feed(self, event) -> Iterable[Chunk]: ...

    def end(self) -> Iterable[Chunk]: ...


class StreamState:
    """What a relay learned that close() needs: did the upstream end properly, how many
    content-bearing events went to the client (for the usage estimate)?"""
    __slots__ = ("done", "relayed")

    def __init__(self) -> None:
        self.done = False
        self.relayed = 0


class HTTPProvider:
    label = ""
    default_base: str | None = None
    endpoints: tuple[str, ...] = ("chat/completions",)
    stream_content_types: tuple[str, ...] = ("text/event-stream",)
    # Event names that only keep a connection alive (Anthropic's `ping`): they do not
    # reset the stall timer, or an upstream pinging forever would hold a stream forever.
    keepalive_events: frozenset = frozenset()

    def __init__(self, deployments: list[Deployment], *, pool_maxsize: int, redactor):
        self._redact = redactor
        transports: dict[str, Transport] = {}
        self._upstreams: dict[str, Upstream] = {}
        for deployment in deployments:
            base = self.base_url(deployment).rstrip("/")
            origin = "{0.scheme}://{0.netloc}".format(urlsplit(base))
            transport = transports.get(origin) or transports.setdefault(origin, Transport(pool_maxsize))
            headers = {"Content-Type": "application/json", "Accept": "application/json",
                       "Accept-Encoding": "identity", "User-Agent": "shin-gateway",
                       **self.headers(deployment), **deployment.extra_headers}
            urls = {(endpoint, stream): self.url(deployment, base, endpoint, stream)
                    for endpoint in self.endpoints for stream in (False, True)
                    if not (stream and endpoint == "embeddings")}
            self._upstreams[deployment.id] = Upstream(transport, urls, headers, self.auth(deployment),
                                                      f"deployment {deployment.id}")
        self._transports = list(transports.values())
        # A provider that only chats answers legacy completions through its chat (legacy.py).
        self._chats_for_completions = "completions" not in self.endpoints and "chat/completions" in self.endpoints

    # --- the hooks a provider implements ----------------------------------------------------

    def base_url(self, deployment: Deployment) -> str:
        """`api_base`, else the provider's documented base (settings refuses a config with neither)."""
        return deployment.api_base or self.default_base or ""

    def url(self, deployment: Deployment, base: str, endpoint: str, stream: bool) -> str:
        raise NotImplementedError

    def headers(self, deployment: Deployment) -> dict:
        return {}

    def auth(self, deployment: Deployment):
        return None

    def request_body(self, deployment: Deployment, request: ModelRequest, stream: bool) -> dict:
        raise NotImplementedError

    def completion(self, deployment: Deployment, request: ModelRequest, body: dict) -> Completion:
        raise NotImplementedError

    def translator(self, deployment: Deployment, request: ModelRequest, out: ChunkWriter) -> Translator:
        raise NotImplementedError

    def describe_error(self, status: int, content: bytes, headers) -> UpstreamError:
        error = error_fields(content)
        return UpstreamError(status, str(error.get("message") or ""), code=_text(error.get("code")),
                             type=_text(error.get("type")), param=_text(error.get("param")))

    def in_band_error(self, body: dict) -> UpstreamError | None:
        """An error sent with HTTP 200 (as a whole answer, or instead of a stream), if `body` is one."""
        return None

    def stream_decoder(self):
        """Bytes → events for the translator; feed(bytes) → list, flush() → list."""
        return SSEDecoder(MAX_EVENT)

    # --- what the router calls --------------------------------------------------------------

    def complete(self, deployment: Deployment, request: ModelRequest, deadline: float | None = None) -> Completion:
        if request.endpoint == "completions" and self._chats_for_completions:
            return text_completion(self.complete(deployment, self._as_chat(deployment, request), deadline))
        upstream = self._upstreams[deployment.id]
        response = self._send(upstream, deployment, request, False, deadline)
        try:
            body = orjson.loads(response.content)
        except orjson.JSONDecodeError:
            body = None
        if not isinstance(body, dict):
            raise BadUpstreamResponse(f"the upstream sent an answer that is not JSON ({upstream.where})")
        refused = self.in_band_error(body)
        if refused is not None:
            raise gateway_error(refused, response.headers, upstream.where, self._redact)
        try:
            return self.completion(deployment, request, body)
        except GatewayError:
            raise
        except StreamFailure as failure:
            raise gateway_error(failure.error, response.headers, upstream.where, self._redact) from None
        except _SHAPE_ERRORS:
            raise BadUpstreamResponse(f"the upstream sent an answer of an unexpected shape ({upstream.where})") \
                from None

    def stream(self, deployment: Deployment, request: ModelRequest, deadline: float | None = None) -> PrimedStream:
        """A stream primed within the call's deadline; after the first byte `stream_timeout` bounds each gap."""
        if request.endpoint == "completions" and self._chats_for_completions:
            request = self._as_chat(deployment, request)
        upstream = self._upstreams[deployment.id]
        with within(deadline, upstream.where):  # one timer for the request and the read-ahead alike
            response = self._send(upstream, deployment, request, True, None)
            gap = deployment.stream_timeout or deployment.timeout
            state = StreamState()
            chunks = self.chunks(deployment, request, response, gap, state)
            return PrimedStream(chunks, lambda: response.close(drain=state.done),
                                lambda: estimated_usage(request, state.relayed)).prime()

    def close(self) -> None:
        for transport in self._transports:
            transport.close()

    # --- shared machinery -------------------------------------------------------------------

    def refuse_unsupported(self, deployment: Deployment, request: ModelRequest, names: Iterable[str]) -> set[str]:
        """The parameters of `names` this request sets, to be left out when `drop_params` is on; else 400.

        A parameter counts as set when its value is neither null nor one that
        asks for nothing (NEUTRAL_VALUES: `n: 1`, `logprobs: false`, a zero penalty, …).
        """
        present = []
        for name in names:
            value = request.params.get(name)
            if value is None:
                value = request.extra.get(name)
            if value is None or (name in NEUTRAL_VALUES and value == NEUTRAL_VALUES[name]):
                continue
            present.append(name)
        if present and not deployment.drop_params:
            name = present[0]
            raise InvalidRequest(f"'{name}' is not supported by {self.label} (model '{request.model}'): "
                                 f"remove it, or set `drop_params: true` to have the gateway drop it.",
                                 param=name, code="unsupported_parameter")
        return set(present)

    def _as_chat(self, deployment: Deployment, request: ModelRequest) -> ModelRequest:
        self.refuse_unsupported(deployment, request, LEGACY_ONLY)
        return as_chat(request)

    def _send(self, upstream: Upstream, deployment: Deployment, request: ModelRequest, stream: bool,
              deadline: float | None) -> UpstreamResponse:
        url = upstream.urls.get((request.endpoint, stream))
        if url is None:
            raise InvalidRequest(f"{self.label} deployments do not serve /v1/{request.endpoint} "
                                 f"(model '{request.model}').", code="unsupported_endpoint")
        body = orjson.dumps(self.request_body(deployment, request, stream))
        headers = upstream.headers
        if request.request_id:
            headers = {**headers, "X-Request-Id": request.request_id}
        read_timeout = (deployment.stream_timeout or deployment.timeout) if stream else deployment.timeout
        response = upstream.transport.post(
            url, body, headers, timeout=(min(CONNECT_TIMEOUT, deployment.timeout), read_timeout),
            auth=upstream.auth, stream=stream, where=upstream.where, deadline=deadline,
            max_body=MAX_BODY.get(request.endpoint, DEFAULT_MAX_BODY))
        if response.status != 200:
            if stream:
                response.read(MAX_ERROR_BODY, deadline)
            response.close()
            refused = self.describe_error(response.status, response.content, response.headers)
            raise gateway_error(refused, response.headers, upstream.where, self._redact)
        if stream and not _is_stream(response.headers, self.stream_content_types):
            # A JSON (or other) body where a stream was asked for: usually an error
            # sent with status 200. Its message and status must reach the client.
            response.read(MAX_ERROR_BODY, deadline)
            response.close()
            try:
                body = orjson.loads(response.content)
            except orjson.JSONDecodeError:
                body = None
            refused = self.in_band_error(body) if isinstance(body, dict) else None
            if refused is not None:
                raise gateway_error(refused, response.headers, upstream.where, self._redact)
            raise BadUpstreamResponse(f"the upstream answered a stream request without a stream ({upstream.where})")
        return response

    def chunks(self, deployment: Deployment, request: ModelRequest, response: UpstreamResponse, gap: float,
               state: StreamState) -> Iterator[Chunk]:
        """Upstream stream → OpenAI chunk events, through the provider's translator.

        Reading stops as soon as the translator says the upstream is done (the
        client gets `[DONE]` without waiting for the body's end); a body that
        ends before that is a cut stream, never a complete answer. More than
        `gap` seconds without an event (bytes trickling in and keep-alive events
        do not count) is a timeout.
        """
        where = response.where
        translator = self.translator(deployment, request, ChunkWriter(request.model, request.include_usage,
                                                                      as_text=request.as_text))
        decoder = self.stream_decoder()
        keepalives = self.keepalive_events
        last_event = time.monotonic()
        try:
            for data in response.iter_bytes():
                events = decoder.feed(data)
                for event in events:
                    for chunk in translator.feed(event):
                        state.relayed += bool(chunk[0]) and (chunk[1] is None or bool(chunk[1]["choices"]))
                        yield chunk
                    if translator.done:
                        state.done = True
                        return
                if events and (not keepalives or any(event[0] not in keepalives for event in events)):
                    last_event = time.monotonic()
                elif time.monotonic() - last_event > gap:
                    raise UpstreamTimeout(f"the upstream stream stalled for over {gap:g} s ({where})")
            for event in decoder.flush():
                yield from translator.feed(event)
            if not translator.done:
                yield from translator.end()
            if not translator.done:
                raise UpstreamFailed(f"the upstream stream ended before it was complete ({where})")
            state.done = True
        except EventTooLarge as exc:
            raise BadUpstreamResponse(f"{exc} ({where})") from None
        except StreamFailure as failure:
            raise gateway_error(failure.error, response.headers, where, self._redact) from None
        except GatewayError:
            raise
        except _SHAPE_ERRORS:
            raise BadUpstreamResponse(f"the upstream sent a stream event of an unexpected shape ({where})") from None


def estimated_usage(request: ModelRequest, relayed: int) -> Usage:
    """A stream's usage when the upstream reported none: the prompt estimated, one token per content event.

    Most servers send one token per chunk, so the count of content-bearing
    events is close to the completion's tokens, at no cost on the hot path.
    """
    prompt = estimate_prompt_tokens(request.endpoint, request.params)
    return Usage(prompt, relayed, prompt + relayed)


def error_fields(content: bytes) -> dict:
    """The error object of a JSON error body (`{"error": {…}}`, or the body itself), else its text."""
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


def _text(value) -> str | None:
    return value if isinstance(value, str) else None


def _is_stream(headers, content_types: tuple[str, ...]) -> bool:
    content_type = headers.get("content-type") or ""
    return not content_type or content_type.startswith(content_types)
