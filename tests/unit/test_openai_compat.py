"""gateway/providers/openai_compat.py against a faked wire (`responses`): requests out, answers and errors in."""
from __future__ import annotations

import io
import json
import socket

import pytest
import requests
import responses

from gateway.errors import (BadUpstreamResponse, ContextLengthExceeded, GatewayError, UpstreamAuthFailed,
                            UpstreamClientError, UpstreamFailed, UpstreamRateLimited, UpstreamTimeout)
from gateway.providers.openai_compat import OpenAICompatibleAdapter
from gateway.redact import Redactor
from gateway.types import Deployment, ModelRequest
from tests.unit.network_pieces import Pieces

BASE = "http://upstream.test/v1"
CHAT_URL = f"{BASE}/chat/completions"
UPSTREAM_KEY = "upstream-secret-key-123"
ALIAS = "shin-llama"
UPSTREAM_MODEL = "meta-llama/Llama-3.1-8B-Instruct"


def deployment(**kw) -> Deployment:
    fields = dict(id="dep1", model_name=ALIAS, provider="openai", upstream_model=UPSTREAM_MODEL, api_base=BASE,
                  api_key=UPSTREAM_KEY, timeout=20.0, stream_timeout=7.0)
    fields.update(kw)
    return Deployment(**fields)


def chat_request(*, stream=False, include_usage=False, extra=None, **params) -> ModelRequest:
    body = {"model": ALIAS, "messages": [{"role": "user", "content": "hi"}], **params}
    if stream:
        body["stream"] = True
    return ModelRequest(endpoint="chat/completions", model=ALIAS, params=body, extra=extra or {},
                        stream=stream, include_usage=include_usage, request_id="req-123")


@pytest.fixture
def dep():
    return deployment()


@pytest.fixture
def adapter(dep):
    adapter = OpenAICompatibleAdapter([dep], pool_maxsize=4, redactor=Redactor([UPSTREAM_KEY]))
    yield adapter
    adapter.close()


@pytest.fixture
def wire():
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        yield mock


def error_body(message, type_="invalid_request_error", param=None, code=None) -> dict:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def completion_body(model=UPSTREAM_MODEL) -> dict:
    return {"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "hello"},
                         "finish_reason": "stop", "logprobs": None}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}}


def sse(*pieces) -> io.BufferedReader:
    return io.BufferedReader(Pieces(pieces))


def add_stream(wire, *pieces, status=200):
    wire.add(responses.POST, CHAT_URL, body=sse(*pieces), status=status, stream=True,
             content_type="text/event-stream")


def chunk(content=None, finish=None, model=UPSTREAM_MODEL, **extra) -> bytes:
    delta = {} if content is None else {"content": content}
    body = {"id": "chatcmpl-s", "object": "chat.completion.chunk", "created": 1, "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}], **extra}
    return b"data: " + json.dumps(body, separators=(",", ":")).encode() + b"\n\n"


DONE = b"data: [DONE]\n\n"


# --- the request that goes upstream ---------------------------------------------------------------

def test_body_is_client_params_plus_extras_with_the_model_swapped(adapter, dep, wire):
    wire.add(responses.POST, CHAT_URL, json=completion_body())
    call = chat_request(temperature=0.2, extra={"top_k": 40, "chat_template_kwargs": {"enable_thinking": False}})
    adapter.complete(dep, call)
    sent = wire.calls[0].request
    assert json.loads(sent.body) == {"model": UPSTREAM_MODEL, "messages": [{"role": "user", "content": "hi"}],
                                     "temperature": 0.2, "top_k": 40,
                                     "chat_template_kwargs": {"enable_thinking": False}}
    assert call.params["model"] == ALIAS           # the client's request object is not mutated


def test_authorization_comes_from_the_config_only(adapter, dep, wire):
    wire.add(responses.POST, CHAT_URL, json=completion_body())
    adapter.complete(dep, chat_request(extra={"Authorization": "Bearer client-chosen"}))
    headers = wire.calls[0].request.headers
    assert headers["Authorization"] == f"Bearer {UPSTREAM_KEY}"
    assert headers["Content-Type"] == "application/json"
    assert headers["X-Request-Id"] == "req-123"


def test_no_api_key_sends_no_authorization(wire):
    dep = deployment(api_key=None)
    adapter = OpenAICompatibleAdapter([dep], pool_maxsize=2, redactor=Redactor())
    wire.add(responses.POST, CHAT_URL, json=completion_body())
    adapter.complete(dep, chat_request())
    assert "Authorization" not in wire.calls[0].request.headers


def test_organization_and_extra_headers_from_the_config(wire):
    dep = deployment(organization="org-1", extra_headers={"X-Team": "research"})
    adapter = OpenAICompatibleAdapter([dep], pool_maxsize=2, redactor=Redactor())
    wire.add(responses.POST, CHAT_URL, json=completion_body())
    adapter.complete(dep, chat_request())
    headers = wire.calls[0].request.headers
    assert headers["OpenAI-Organization"] == "org-1" and headers["X-Team"] == "research"


def test_headers_of_one_call_do_not_leak_into_the_next(adapter, dep, wire):
    wire.add(responses.POST, CHAT_URL, json=completion_body())
    wire.add(responses.POST, CHAT_URL, json=completion_body())
    adapter.complete(dep, chat_request())
    adapter.complete(dep, ModelRequest(endpoint="chat/completions", model=ALIAS,
                                       params={"model": ALIAS, "messages": [{"role": "user", "content": "x"}]},
                                       extra={}))
    assert "X-Request-Id" not in wire.calls[1].request.headers


@pytest.mark.parametrize("endpoint", ["chat/completions", "completions", "embeddings"])
def test_each_endpoint_goes_to_its_url(adapter, dep, wire, endpoint):
    body = ({"object": "list", "data": [{"object": "embedding", "index": 0, "embedding": [0.1]}], "model": "x"}
            if endpoint == "embeddings" else completion_body())
    wire.add(responses.POST, f"{BASE}/{endpoint}", json=body)
    call = ModelRequest(endpoint=endpoint, model=ALIAS, params={"model": ALIAS, "input": "x"}, extra={})
    assert adapter.complete(dep, call).body["model"] == ALIAS
    assert wire.calls[0].request.url == f"{BASE}/{endpoint}"


def test_default_base_url_of_the_provider(wire):
    dep = deployment(api_base=None, provider="groq")
    adapter = OpenAICompatibleAdapter([dep], pool_maxsize=2, redactor=Redactor())
    wire.add(responses.POST, "https://api.groq.com/openai/v1/chat/completions", json=completion_body())
    adapter.complete(dep, chat_request())
    assert len(wire.calls) == 1


def test_timeouts_connect_and_read(adapter, dep, wire):
    wire.add(responses.POST, CHAT_URL, json=completion_body())
    add_stream(wire, chunk("a", "stop"), DONE)
    adapter.complete(dep, chat_request())
    list(adapter.stream(dep, chat_request(stream=True)))
    whole, streamed = (call.request.req_kwargs["timeout"] for call in wire.calls)
    assert whole == (5.0, 20.0)
    assert streamed == (5.0, 7.0)


# --- whole answers ---------------------------------------------------------------------------------

def test_completion_is_returned_with_the_client_model_name_and_usage(adapter, dep, wire):
    wire.add(responses.POST, CHAT_URL, json=completion_body())
    result = adapter.complete(dep, chat_request())
    assert result.body["model"] == ALIAS
    assert result.body["choices"][0]["message"]["content"] == "hello"
    assert (result.usage.prompt_tokens, result.usage.completion_tokens, result.usage.total_tokens) == (3, 2, 5)


@pytest.mark.parametrize("body, content_type", [
    (b"<html>not json</html>", "text/html"),
    (b"", "application/json"),
    (b'{"id": "x"}', "application/json"),
    (b"[1, 2]", "application/json"),
    (b'{"choices": [', "application/json"),
])
def test_a_200_that_is_not_an_openai_answer_is_a_bad_upstream_response(adapter, dep, wire, body, content_type):
    """Retryable, per the contract: another deployment may well answer properly."""
    wire.add(responses.POST, CHAT_URL, body=body, content_type=content_type)
    with pytest.raises(BadUpstreamResponse) as info:
        adapter.complete(dep, chat_request())
    assert (info.value.status, info.value.code, info.value.retryable) == (502, "upstream_error", True)


# --- upstream statuses → GatewayErrors ------------------------------------------------------------

@pytest.mark.parametrize("status", [400, 404, 422])
def test_client_errors_are_passed_through(adapter, dep, wire, status):
    wire.add(responses.POST, CHAT_URL, status=status,
             json=error_body(f"Invalid value for temperature ({status})", param="temperature", code="invalid_value"))
    with pytest.raises(UpstreamClientError) as info:
        adapter.complete(dep, chat_request())
    error = info.value
    assert type(error) is UpstreamClientError
    assert error.status == status and error.retryable is False
    assert error.body() == {"error": {"message": f"Invalid value for temperature ({status})",
                                      "type": "invalid_request_error", "param": "temperature",
                                      "code": "invalid_value"}}


def test_vllm_top_level_error_shape_is_read(adapter, dep, wire):
    wire.add(responses.POST, CHAT_URL, status=400,
             json={"object": "error", "message": "bad stop", "type": "BadRequestError", "param": None, "code": 400})
    with pytest.raises(UpstreamClientError) as info:
        adapter.complete(dep, chat_request())
    assert info.value.message == "bad stop" and info.value.status == 400


def test_client_error_messages_are_redacted(adapter, dep, wire):
    wire.add(responses.POST, CHAT_URL, status=400,
             json=error_body(f"key {UPSTREAM_KEY} and Bearer sk-abcdef123456 rejected"))
    with pytest.raises(UpstreamClientError) as info:
        adapter.complete(dep, chat_request())
    assert UPSTREAM_KEY not in info.value.message and "sk-abcdef123456" not in info.value.message


def test_context_length_exceeded_by_code(adapter, dep, wire):
    wire.add(responses.POST, CHAT_URL, status=400,
             json=error_body("Too many tokens.", param="messages", code="context_length_exceeded"))
    with pytest.raises(ContextLengthExceeded) as info:
        adapter.complete(dep, chat_request())
    error = info.value
    assert (error.status, error.type, error.code, error.param) == (400, "invalid_request_error",
                                                                   "context_length_exceeded", "messages")
    assert error.message == "Too many tokens."


@pytest.mark.parametrize("status, message", [
    (400, "This model's maximum context length is 8192 tokens. However, you requested 9000 tokens."),
    (400, "the request exceeds the available context size, try increasing it"),
    (422, "Input validation error: context length exceeded"),
    (404, "Prompt does not fit: Context Window is 4096"),
])
def test_context_length_exceeded_by_message_signal(adapter, dep, wire, status, message):
    wire.add(responses.POST, CHAT_URL, status=status, json=error_body(message, code=None))
    with pytest.raises(ContextLengthExceeded) as info:
        adapter.complete(dep, chat_request())
    assert info.value.status == 400 and info.value.code == "context_length_exceeded"
    assert info.value.message == message


@pytest.mark.parametrize("status", [401, 403])
def test_upstream_auth_failure(adapter, dep, wire, status):
    wire.add(responses.POST, CHAT_URL, status=status,
             json=error_body(f"Incorrect API key provided: {UPSTREAM_KEY}", code="invalid_api_key"))
    with pytest.raises(UpstreamAuthFailed) as info:
        adapter.complete(dep, chat_request())
    error = info.value
    assert (error.status, error.type, error.code) == (502, "api_error", "upstream_auth_error")
    assert UPSTREAM_KEY not in error.message


@pytest.mark.parametrize("headers, expected", [
    ({"Retry-After": "7"}, 7.0),
    ({"retry-after-ms": "1500"}, 1.5),
    ({"retry-after-ms": "250", "Retry-After": "9"}, 0.25),
    ({"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}, 0.0),      # a date in the past: retry now
    ({"Retry-After": "-5"}, 0.0),
    ({"Retry-After": "86400"}, 300.0),                              # capped
    ({"Retry-After": "inf"}, None),
    ({"Retry-After": "nan"}, None),
    ({"Retry-After": "soon"}, None),
    ({}, None),
])
def test_rate_limit_with_retry_after(adapter, dep, wire, headers, expected):
    wire.add(responses.POST, CHAT_URL, status=429, headers=headers,
             json=error_body("Rate limit reached for requests", "requests", code="rate_limit_exceeded"))
    with pytest.raises(UpstreamRateLimited) as info:
        adapter.complete(dep, chat_request())
    error = info.value
    assert (error.status, error.type, error.code, error.retryable) == (429, "rate_limit_error",
                                                                       "rate_limit_exceeded", True)
    assert error.retry_after == expected
    assert 1 <= int(error.headers()["Retry-After"]) <= 300   # every 429 carries one, upstream's or not


def test_retry_after_as_a_future_http_date(adapter, dep, wire):
    from email.utils import formatdate
    import time
    wire.add(responses.POST, CHAT_URL, status=429, headers={"Retry-After": formatdate(time.time() + 30, usegmt=True)},
             json=error_body("Rate limit reached for requests", "requests", code="rate_limit_exceeded"))
    with pytest.raises(UpstreamRateLimited) as info:
        adapter.complete(dep, chat_request())
    assert 27 <= info.value.retry_after <= 31


@pytest.mark.parametrize("status", [500, 502, 503, 504, 529])
def test_server_errors_are_retryable_upstream_failures(adapter, dep, wire, status):
    wire.add(responses.POST, CHAT_URL, status=status, headers={"Retry-After": "2"},
             json=error_body("The server had an error", "server_error"))
    with pytest.raises(UpstreamFailed) as info:
        adapter.complete(dep, chat_request())
    error = info.value
    assert type(error) is UpstreamFailed
    assert (error.status, error.code, error.retryable, error.retry_after) == (502, "upstream_error", True, 2.0)


def test_an_html_error_page_is_not_echoed(adapter, dep, wire):
    wire.add(responses.POST, CHAT_URL, status=502, body=b"<html><body>Bad Gateway</body></html>",
             content_type="text/html")
    with pytest.raises(UpstreamFailed) as info:
        adapter.complete(dep, chat_request())
    assert "<html" not in info.value.message and "502" in info.value.message


def test_408_is_an_upstream_timeout(adapter, dep, wire):
    wire.add(responses.POST, CHAT_URL, status=408, json=error_body("timeout", "server_error"))
    with pytest.raises(UpstreamTimeout) as info:
        adapter.complete(dep, chat_request())
    assert (info.value.status, info.value.code, info.value.retryable) == (504, "upstream_timeout", True)


def test_a_streaming_request_maps_error_statuses_the_same_way(adapter, dep, wire):
    wire.add(responses.POST, CHAT_URL, status=429, headers={"Retry-After": "3"},
             json=error_body("slow down", "requests", code="rate_limit_exceeded"), stream=True)
    with pytest.raises(UpstreamRateLimited) as info:
        adapter.stream(dep, chat_request(stream=True))
    assert info.value.retry_after == 3.0


# --- the transport's exception table ------------------------------------------------------------

@pytest.mark.parametrize("exc, expected", [
    (requests.exceptions.ConnectionError("refused"), UpstreamFailed),
    (requests.exceptions.SSLError("bad cert"), UpstreamFailed),
    (requests.exceptions.ConnectTimeout("connect timed out"), UpstreamTimeout),
    (requests.exceptions.ReadTimeout("read timed out"), UpstreamTimeout),
    (requests.exceptions.ChunkedEncodingError("broken"), UpstreamFailed),
    (ConnectionResetError("reset"), UpstreamFailed),
])
def test_transport_exceptions_become_gateway_errors(adapter, dep, wire, exc, expected):
    wire.add(responses.POST, CHAT_URL, body=exc)
    with pytest.raises(expected) as info:
        adapter.complete(dep, chat_request())
    assert type(info.value) is expected
    assert info.value.retryable is True
    assert "dep1" in info.value.message


def test_the_upstream_url_and_key_are_not_in_transport_errors(adapter, dep, wire):
    wire.add(responses.POST, CHAT_URL,
             body=requests.exceptions.ConnectionError(f"cannot reach {CHAT_URL} with {UPSTREAM_KEY}"))
    with pytest.raises(UpstreamFailed) as info:
        adapter.complete(dep, chat_request())
    assert UPSTREAM_KEY not in info.value.message and "upstream.test" not in info.value.message


# --- streams ---------------------------------------------------------------------------------------
# A stream yields SSE bytes for the client: whole `data: {chunk}\n\n` events (one or more per item).

def relayed(items) -> bytes:
    """The bytes the client gets, after checking that every item is made of whole events."""
    items = list(items)
    for item in items:
        assert item.startswith(b"data: ") and item.endswith(b"\n\n"), item
    return b"".join(items)


def events(data: bytes) -> list[bytes]:
    """The data payloads of an SSE byte string (which the gateway frames with LF only)."""
    assert b"\r" not in data
    return [event[len(b"data: "):] for event in data.split(b"\n\n") if event]


def chunks_of(items) -> list[dict]:
    return [json.loads(payload) for payload in events(relayed(items))]


def collect_until_error(stream) -> tuple[bytes, BaseException | None]:
    got = []
    try:
        for item in stream:
            got.append(item)
    except GatewayError as error:
        return relayed(got), error
    return relayed(got), None


def test_stream_chunks_pass_through_with_only_the_model_renamed(adapter, dep, wire):
    raw = (b'{"id":"c1","object":"chat.completion.chunk","created":1,"model":"meta-llama/Llama-3.1-8B-Instruct",'
           b'"system_fingerprint":"fp_x","choices":[{"index":0,"delta":{"content":"h\\u00e9 \\"model\\":\\"x\\"",'
           b'"custom":1.50},"finish_reason":null}]}')
    more = (b'{"id":"c1","object":"chat.completion.chunk","created":1,"model":"meta-llama/Llama-3.1-8B-Instruct",'
            b'"choices":[{"index":0,"delta":{"content":"\\ud83d\\ude00 next"},"finish_reason":null}]}')
    spaced = (b'{"id": "c1", "model": "meta-llama/Llama-3.1-8B-Instruct", "choices": [{"index": 0, '
              b'"delta": {}, "finish_reason": "stop"}]}')
    add_stream(wire, b"data: " + raw + b"\n\n", b"data: " + more + b"\n\n", b"data: " + spaced + b"\n\n", DONE)
    out = relayed(adapter.stream(dep, chat_request(stream=True)))
    renamed = [raw.replace(b'"model":"meta-llama/Llama-3.1-8B-Instruct"', b'"model":"shin-llama"'),
               more.replace(b'"model":"meta-llama/Llama-3.1-8B-Instruct"', b'"model":"shin-llama"'),
               spaced.replace(b'"model": "meta-llama/Llama-3.1-8B-Instruct"', b'"model": "shin-llama"')]
    assert out == b"".join(b"data: " + r + b"\n\n" for r in renamed)


def test_stream_model_already_equal_to_the_alias_is_untouched(wire):
    dep = deployment(upstream_model=ALIAS)
    adapter = OpenAICompatibleAdapter([dep], pool_maxsize=2, redactor=Redactor())
    sent = [chunk("a", model=ALIAS), chunk("b", model=ALIAS), chunk(finish="stop", model=ALIAS)]
    add_stream(wire, *sent, DONE)
    assert relayed(adapter.stream(dep, chat_request(stream=True))) == b"".join(sent)


@pytest.mark.parametrize("size", [1, 7, 50, 4096])
@pytest.mark.parametrize("ending", [b"\n", b"\r\n", b"\r"], ids=["LF", "CRLF", "CR"])
def test_stream_events_split_across_reads_any_line_ending(adapter, dep, wire, size, ending):
    whole = (chunk("Hel") + b": ping\n\n" + chunk("lo") + chunk(" world") + chunk(finish="stop") + DONE)
    whole = whole.replace(b"\n", ending)
    add_stream(wire, *[whole[i:i + size] for i in range(0, len(whole), size)])
    out = chunks_of(adapter.stream(dep, chat_request(stream=True)))
    assert [c["choices"][0]["delta"].get("content") for c in out] == ["Hel", "lo", " world", None]
    assert all(c["model"] == ALIAS for c in out)


def test_several_events_in_one_read(adapter, dep, wire):
    add_stream(wire, chunk("a") + chunk("b") + chunk("c"), chunk("d") + chunk(finish="stop") + DONE)
    out = chunks_of(adapter.stream(dep, chat_request(stream=True)))
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in out) == "abcd"
    assert all(c["model"] == ALIAS for c in out)


def test_keepalives_and_empty_preambles_are_dropped(adapter, dep, wire):
    preamble = b'data: {"id":"","object":"","created":0,"model":"","choices":[],"prompt_filter_results":[]}\n\n'
    add_stream(wire, b": keep-alive\n\n", preamble, chunk("a"), b": ping\n\n", chunk("b"), b": ping\n\n",
               chunk(finish="stop"), DONE)
    out = chunks_of(adapter.stream(dep, chat_request(stream=True)))
    assert len(out) == 3 and all(c["model"] == ALIAS for c in out)


def test_stream_usage_chunk_is_recorded(adapter, dep, wire):
    usage_chunk = (b'data: {"id":"c","object":"chat.completion.chunk","created":1,"model":"'
                   + UPSTREAM_MODEL.encode() + b'","choices":[],"usage":{"prompt_tokens":4,"completion_tokens":2,'
                   b'"total_tokens":6}}\n\n')
    add_stream(wire, chunk("a"), chunk("b"), chunk(finish="stop"), usage_chunk, DONE)
    stream = adapter.stream(dep, chat_request(stream=True, include_usage=True,
                                              stream_options={"include_usage": True}))
    out = chunks_of(stream)
    assert len(out) == 4 and out[-1]["choices"] == [] and out[-1]["model"] == ALIAS
    assert (stream.usage.prompt_tokens, stream.usage.completion_tokens, stream.usage.total_tokens) == (4, 2, 6)


def test_events_after_done_are_ignored(adapter, dep, wire):
    add_stream(wire, chunk("a"), chunk(finish="stop"), DONE, chunk("late"))
    out = chunks_of(adapter.stream(dep, chat_request(stream=True)))
    assert [c["choices"][0]["delta"].get("content") for c in out] == ["a", None]


def test_events_after_done_in_the_same_read_are_ignored(adapter, dep, wire):
    add_stream(wire, chunk("a"), chunk(finish="stop") + DONE + chunk("late"))
    out = chunks_of(adapter.stream(dep, chat_request(stream=True)))
    assert [c["choices"][0]["delta"].get("content") for c in out] == ["a", None]


def test_a_stream_ending_without_done_or_finish_is_an_error(adapter, dep, wire):
    add_stream(wire, chunk("a"), chunk("b"), chunk("c"))
    got, error = collect_until_error(adapter.stream(dep, chat_request(stream=True)))
    assert len(events(got)) == 3
    assert isinstance(error, UpstreamFailed) and error.code == "upstream_error"


def test_a_stream_with_finish_but_no_done_is_complete(adapter, dep, wire):
    add_stream(wire, chunk("a"), chunk("b"), chunk(finish="stop"))
    assert len(chunks_of(adapter.stream(dep, chat_request(stream=True)))) == 3


def test_a_finish_reason_null_is_not_a_finish(adapter, dep, wire):
    add_stream(wire, chunk("a"), chunk("b", finish=None))
    _, error = collect_until_error(adapter.stream(dep, chat_request(stream=True)))
    assert isinstance(error, UpstreamFailed)


def test_a_final_done_without_its_blank_line_still_ends_the_stream(adapter, dep, wire):
    add_stream(wire, chunk("a"), chunk("b"), b"data: [DONE]")
    assert len(chunks_of(adapter.stream(dep, chat_request(stream=True)))) == 2


def test_an_empty_stream_fails_before_the_first_byte(adapter, dep, wire):
    add_stream(wire, b": keep-alive\n\n")
    with pytest.raises(UpstreamFailed) as info:
        adapter.stream(dep, chat_request(stream=True))
    assert info.value.retryable is True


def test_an_in_band_error_before_content_fails_the_call(adapter, dep, wire):
    add_stream(wire, b'data: {"error":{"message":"overloaded","type":"server_error","code":"overloaded"}}\n\n',
               DONE)
    with pytest.raises(UpstreamFailed) as info:
        adapter.stream(dep, chat_request(stream=True))
    assert "overloaded" in info.value.message and info.value.retryable is True


@pytest.mark.parametrize("error_event", [
    b'data: {"error":{"message":"engine died, key KEY","type":"server_error","param":null,"code":null}}\n\n',
    b'data: {"error": {"message": "engine died, key KEY", "type": "server_error"}}\n\n',
    b'data: {"object":"error","error":"engine died, key KEY"}\n\n',
])
def test_an_in_band_error_mid_stream_raises_upstream_failed(adapter, dep, wire, error_event):
    error_event = error_event.replace(b"KEY", UPSTREAM_KEY.encode())
    add_stream(wire, chunk("a"), chunk("b"), error_event, DONE)
    got, error = collect_until_error(adapter.stream(dep, chat_request(stream=True)))
    assert len(events(got)) == 2 and b"engine died" not in got
    assert isinstance(error, UpstreamFailed)
    assert "engine died" in error.message and UPSTREAM_KEY not in error.message


@pytest.mark.parametrize("bad", [b"data: {not json\n\n", b"data: [1,2]\n\n"])
def test_a_malformed_chunk_is_a_bad_upstream_response(adapter, dep, wire, bad):
    add_stream(wire, chunk("a"), bad, DONE)
    stream = adapter.stream(dep, chat_request(stream=True))
    with pytest.raises(BadUpstreamResponse):
        list(stream)


def test_a_connection_reset_mid_stream_is_upstream_failed(adapter, dep, wire):
    add_stream(wire, chunk("a"), chunk("b"), ConnectionResetError("reset by peer"))
    got, error = collect_until_error(adapter.stream(dep, chat_request(stream=True)))
    assert isinstance(error, UpstreamFailed) and type(error) is UpstreamFailed
    assert len(events(got)) == 2


def test_a_read_timeout_mid_stream_is_upstream_timeout(adapter, dep, wire):
    add_stream(wire, chunk("a"), chunk("b"), socket.timeout("timed out"))
    _, error = collect_until_error(adapter.stream(dep, chat_request(stream=True)))
    assert isinstance(error, UpstreamTimeout)


def test_a_timeout_before_the_first_content_fails_the_call(adapter, dep, wire):
    role = (b'data: {"id":"c","model":"' + UPSTREAM_MODEL.encode()
            + b'","choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}\n\n')
    add_stream(wire, role, socket.timeout("timed out"))
    with pytest.raises(UpstreamTimeout):
        adapter.stream(dep, chat_request(stream=True))


def test_priming_reads_only_up_to_the_first_content(adapter, dep, wire):
    role = (b'data: {"id":"c","model":"' + UPSTREAM_MODEL.encode()
            + b'","choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}\n\n')
    # The error sits after the first content chunk: priming must not reach it.
    add_stream(wire, role, chunk("first"), ConnectionResetError("later"))
    stream = adapter.stream(dep, chat_request(stream=True))
    iterator = iter(stream)
    head = next(iterator)
    assert b'"role":"assistant"' in head and b'"first"' in head
    with pytest.raises(UpstreamFailed):
        next(iterator)


# --- bounds and odd answers (hardening) ------------------------------------------------------------

def test_a_whole_answer_over_the_cap_is_a_bad_upstream_response(adapter, dep, wire, monkeypatch):
    from gateway.providers import http
    monkeypatch.setitem(http.MAX_BODY, "chat/completions", 1000)
    wire.add(responses.POST, CHAT_URL, body=sse(b'{"choices": ["' + b"x" * 600, b"y" * 600 + b'"]}'),
             stream=True, content_type="application/json")
    with pytest.raises(BadUpstreamResponse) as info:
        adapter.complete(dep, chat_request())
    assert info.value.status == 502 and "larger than the gateway accepts" in info.value.message


def test_a_stream_event_over_the_cap_is_a_bad_upstream_response(adapter, dep, wire, monkeypatch):
    from gateway.providers import openai_compat
    monkeypatch.setattr(openai_compat, "MAX_EVENT", 4096)
    add_stream(wire, b"data: {\"choices\": [\"", *([b"x" * 1024] * 8), b"\"]}\n\n", DONE)
    with pytest.raises(BadUpstreamResponse) as info:
        adapter.stream(dep, chat_request(stream=True))
    assert "larger than" in info.value.message


def test_a_stream_with_no_content_in_its_first_events_fails(adapter, dep, wire):
    role = chunk()   # an empty delta: nothing for the client yet
    add_stream(wire, *([role] * 300), chunk("late"), DONE)
    with pytest.raises(BadUpstreamResponse):
        adapter.stream(dep, chat_request(stream=True))


def test_done_ends_the_stream_at_once(adapter, dep, wire):
    """Whatever follows [DONE] is never read into the answer: the relay stops there."""
    add_stream(wire, chunk("hi"), chunk(finish="stop"), DONE, RuntimeError("read after [DONE]"))
    out, error = collect_until_error(adapter.stream(dep, chat_request(stream=True)))
    assert error is None and [c["choices"][0]["delta"] for c in chunks_of_bytes(out)] == [{"content": "hi"}, {}]


def chunks_of_bytes(data: bytes) -> list[dict]:
    return [json.loads(payload) for payload in events(data)]


@pytest.mark.parametrize("body, status, cls", [
    ({"error": {"message": "Rate limit reached", "type": "rate_limit_error", "code": "rate_limit_exceeded"}},
     429, UpstreamRateLimited),
    ({"error": {"message": "Internal failure", "code": 500}}, 502, UpstreamFailed),
    ({"error": {"message": "max_tokens is too large", "type": "invalid_request_error", "code": 400}},
     400, UpstreamClientError),
    ({"error": "overloaded"}, 502, UpstreamFailed),
])
def test_a_json_error_with_status_200_to_a_stream_request_is_mapped(adapter, dep, wire, body, status, cls):
    wire.add(responses.POST, CHAT_URL, json=body, status=200)
    with pytest.raises(cls) as info:
        adapter.stream(dep, chat_request(stream=True))
    assert info.value.status == status
    if status != 502:
        assert body["error"]["message"] in info.value.message
    if status == 429:
        assert info.value.headers()["Retry-After"] == "1"


def test_a_json_error_with_status_200_to_a_whole_request_is_mapped(adapter, dep, wire):
    wire.add(responses.POST, CHAT_URL, status=200, json={"error": {"message": "slow down", "type": "rate_limit"}})
    with pytest.raises(UpstreamRateLimited):
        adapter.complete(dep, chat_request())


def test_5xx_text_is_summarised_never_echoed(adapter, dep, wire):
    trace = ('Traceback (most recent call last):\n  File "/srv/vllm/engine.py", line 12, in run\n'
             'ConnectionError: inference-node-7.internal.corp:8001 refused')
    wire.add(responses.POST, CHAT_URL, status=500, json={"error": {"message": trace, "type": "server_error"}})
    with pytest.raises(UpstreamFailed) as info:
        adapter.complete(dep, chat_request())
    message = info.value.message
    assert message == "the upstream failed with HTTP 500 (deployment dep1)"


@pytest.mark.parametrize("usage", [
    {"prompt_tokens": "11", "completion_tokens": None, "total_tokens": {"x": 1}},
    {"prompt_tokens": 1.5, "completion_tokens": True, "total_tokens": -3},
    "lots", [1, 2], None,
])
def test_usage_of_the_wrong_type_never_fails_a_good_answer(adapter, dep, wire, usage):
    body = completion_body()
    body["usage"] = usage
    wire.add(responses.POST, CHAT_URL, json=body)
    completion = adapter.complete(dep, chat_request())
    assert completion.body["choices"][0]["message"]["content"] == "hello"


def test_vllm_parameter_bounds_are_not_context_errors(adapter, dep, wire):
    wire.add(responses.POST, CHAT_URL, status=400, json=error_body("temperature must be <= 2.0, got 3.0"))
    with pytest.raises(UpstreamClientError) as info:
        adapter.complete(dep, chat_request())
    assert not isinstance(info.value, ContextLengthExceeded)


def test_a_flood_of_empty_events_before_content_fails(adapter, dep, wire):
    empty = b'data: {"id":"x","object":"chat.completion.chunk","created":1,"model":"m","choices":[]}\n\n'
    add_stream(wire, *([empty] * 300), chunk("late"), DONE)
    with pytest.raises(BadUpstreamResponse):
        adapter.stream(dep, chat_request(stream=True))


@pytest.mark.parametrize("usage, expected", [
    ({"prompt_tokens": "11", "completion_tokens": 7, "total_tokens": None},
     {"prompt_tokens": 0, "completion_tokens": 7, "total_tokens": 7}),
    ({"prompt_tokens": 2.0, "completion_tokens": -1, "total_tokens": 1e300},
     {"prompt_tokens": 2, "completion_tokens": 0, "total_tokens": 2}),
    ([11, 7, 18], None),
])
def test_usage_of_the_wrong_type_is_cleaned_to_the_openai_shape(adapter, dep, wire, usage, expected):
    body = completion_body()
    body["usage"] = usage
    wire.add(responses.POST, CHAT_URL, json=body)
    completion = adapter.complete(dep, chat_request())
    assert completion.body.get("usage") == expected
    add_stream(wire, chunk("hi"), chunk(finish="stop"),
               b"data: " + json.dumps({"id": "c", "model": UPSTREAM_MODEL, "choices": [], "usage": usage}).encode()
               + b"\n\n", DONE)
    streamed = chunks_of_bytes(relayed(adapter.stream(dep, chat_request(stream=True, include_usage=True))))
    usages = [c["usage"] for c in streamed if "usage" in c]
    assert usages == ([expected] if expected else [])


def test_clean_usage_keeps_good_usage_as_it_is():
    from gateway.providers.base import clean_usage
    usage = {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3, "prompt_tokens_details": {"x": 1}}
    assert clean_usage(usage) is usage


# --- usage of streams: always asked for, shown only when the client asked ---------------------------

USAGE = {"prompt_tokens": 4, "completion_tokens": 2, "total_tokens": 6}


def usage_chunk(usage=USAGE) -> bytes:
    body = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": UPSTREAM_MODEL, "choices": [],
            "usage": usage}
    return b"data: " + json.dumps(body, separators=(",", ":")).encode() + b"\n\n"


def sent_body(wire, index=0) -> dict:
    return json.loads(wire.calls[index].request.body)


@pytest.mark.parametrize("options, expected", [
    (None, {"include_usage": True}),
    ({"include_usage": False}, {"include_usage": True}),
    ({"include_obfuscation": False}, {"include_obfuscation": False, "include_usage": True}),
    ({"include_usage": True, "include_obfuscation": True}, {"include_usage": True, "include_obfuscation": True}),
])
def test_a_stream_always_asks_the_upstream_for_its_usage(adapter, dep, wire, options, expected):
    add_stream(wire, chunk("a", "stop"), DONE)
    params = {} if options is None else {"stream_options": options}
    call = chat_request(stream=True, **params)
    list(adapter.stream(dep, call))
    body = sent_body(wire)
    assert body["stream_options"] == expected
    assert {k: v for k, v in body.items() if k not in ("stream_options", "model")} == \
        {k: v for k, v in call.params.items() if k not in ("stream_options", "model")}
    assert call.params.get("stream_options") == options   # the client's request object is not mutated


def test_a_legacy_completions_stream_asks_for_usage_too(adapter, dep, wire):
    legacy = (b'data: {"id":"c","object":"text_completion","model":"m","choices":[{"index":0,"text":"hi",'
              b'"finish_reason":"stop"}]}\n\n')
    wire.add(responses.POST, f"{BASE}/completions", body=sse(legacy, DONE), stream=True,
             content_type="text/event-stream")
    call = ModelRequest(endpoint="completions", model=ALIAS, params={"model": ALIAS, "prompt": "x", "stream": True},
                        extra={}, stream=True)
    list(adapter.stream(dep, call))
    assert sent_body(wire)["stream_options"] == {"include_usage": True}


def test_a_whole_answer_request_gets_no_stream_options(adapter, dep, wire):
    wire.add(responses.POST, CHAT_URL, json=completion_body())
    adapter.complete(dep, chat_request())
    assert "stream_options" not in sent_body(wire)


def test_the_usage_chunk_nobody_asked_for_is_kept_from_the_client_but_counted(adapter, dep, wire):
    add_stream(wire, chunk("a"), chunk("b"), chunk(finish="stop"), usage_chunk(), DONE)
    stream = adapter.stream(dep, chat_request(stream=True))
    items = list(stream)
    stream.close()
    out = chunks_of(items)
    assert [c["choices"][0]["delta"].get("content") for c in out] == ["a", "b", None]
    assert all(c["choices"] for c in out) and all("usage" not in c for c in out)
    assert (stream.usage.prompt_tokens, stream.usage.completion_tokens, stream.usage.total_tokens) == (4, 2, 6)


def test_the_usage_chunk_the_client_asked_for_reaches_it(adapter, dep, wire):
    add_stream(wire, chunk("a"), chunk(finish="stop"), usage_chunk(), DONE)
    stream = adapter.stream(dep, chat_request(stream=True, include_usage=True, stream_options={"include_usage": True}))
    out = chunks_of(stream)
    assert out[-1]["choices"] == [] and out[-1]["usage"] == USAGE and out[-1]["model"] == ALIAS
    assert stream.usage.total_tokens == 6


def test_a_usage_chunk_in_the_same_read_as_others_is_kept_from_the_client(adapter, dep, wire):
    add_stream(wire, chunk("a"), chunk(finish="stop") + usage_chunk() + DONE)
    stream = adapter.stream(dep, chat_request(stream=True))
    data = relayed(stream)
    stream.close()
    assert b'"usage"' not in data and len(events(data)) == 2
    assert stream.usage.total_tokens == 6


def test_a_stream_whose_only_event_after_the_role_is_usage_yields_no_empty_bytes(adapter, dep, wire):
    role = (b'data: {"id":"c","model":"' + UPSTREAM_MODEL.encode()
            + b'","choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":"stop"}]}\n\n')
    add_stream(wire, role, usage_chunk(), DONE)
    stream = adapter.stream(dep, chat_request(stream=True))
    items = list(stream)
    assert items and all(items), items
    assert len(events(relayed(items))) == 1


def test_chunks_with_choices_and_usage_pass_through_unchanged(adapter, dep, wire):
    """vLLM's continuous usage stats: usage on every chunk, which is content the client gets."""
    first = chunk("a", usage={"prompt_tokens": 4, "completion_tokens": 1, "total_tokens": 5})
    last = chunk(finish="stop", usage={"prompt_tokens": 4, "completion_tokens": 2, "total_tokens": 6})
    add_stream(wire, first, last, DONE)
    stream = adapter.stream(dep, chat_request(stream=True))
    data = relayed(stream)
    stream.close()
    assert data == (first + last).replace(UPSTREAM_MODEL.encode(), ALIAS.encode())
    assert stream.usage.completion_tokens == 2


@pytest.mark.parametrize("split", [False, True], ids=["one-event-per-read", "events-split-across-reads"])
def test_a_stream_without_usage_is_estimated_at_close(adapter, dep, wire, split):
    role = (b'data: {"id":"c","model":"' + UPSTREAM_MODEL.encode()
            + b'","choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}\n\n')
    pieces = [role, chunk("one"), chunk(" two"), chunk(" three"), chunk(" four"), chunk(finish="stop"), DONE]
    if split:
        whole = b"".join(pieces)
        pieces = [whole[i:i + 9] for i in range(0, len(whole), 9)]
    add_stream(wire, *pieces)
    call = chat_request(stream=True, messages=[{"role": "user", "content": "x" * 40}])
    stream = adapter.stream(dep, call)
    assert len(chunks_of(stream)) == 6
    stream.close()
    # prompt: ceil(40 / 4) + 4 for the message; completion: the four content-bearing chunks
    assert (stream.usage.prompt_tokens, stream.usage.completion_tokens, stream.usage.total_tokens) == (14, 4, 18)


def test_a_legacy_stream_without_usage_counts_its_text_chunks(adapter, dep, wire):
    def legacy(text, finish=None):
        return (b'data: {"id":"c","object":"text_completion","model":"m","choices":[{"index":0,"text":'
                + json.dumps(text).encode() + b',"finish_reason":' + json.dumps(finish).encode() + b'}]}\n\n')
    wire.add(responses.POST, f"{BASE}/completions", stream=True, content_type="text/event-stream",
             body=sse(legacy("a"), legacy("b"), legacy("c"), legacy("", "stop"), DONE))
    call = ModelRequest(endpoint="completions", model=ALIAS, params={"model": ALIAS, "prompt": "abcdefgh",
                                                                     "stream": True}, extra={}, stream=True)
    stream = adapter.stream(dep, call)
    list(stream)
    stream.close()
    assert (stream.usage.prompt_tokens, stream.usage.completion_tokens) == (2, 3)


def test_a_stream_cut_short_is_billed_for_what_was_relayed(adapter, dep, wire):
    add_stream(wire, chunk("a"), chunk("b"), ConnectionResetError("reset by peer"))
    stream = adapter.stream(dep, chat_request(stream=True))
    _, error = collect_until_error(stream)
    stream.close()
    assert isinstance(error, UpstreamFailed)
    assert stream.usage.completion_tokens == 2 and stream.usage.prompt_tokens == 5   # "hi": 1 + 4


def test_a_whole_answer_without_usage_is_estimated_for_the_books_only(adapter, dep, wire):
    body = completion_body()
    del body["usage"]
    body["choices"][0]["message"]["content"] = "y" * 21
    wire.add(responses.POST, CHAT_URL, json=body)
    result = adapter.complete(dep, chat_request())
    assert "usage" not in result.body
    assert (result.usage.prompt_tokens, result.usage.completion_tokens, result.usage.total_tokens) == (5, 6, 11)
