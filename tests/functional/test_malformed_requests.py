"""Malformed requests, bad keys, unknown routes and methods: an OpenAI-shaped JSON 4xx, never the upstream."""
from __future__ import annotations

import json

import pytest
import requests

from .conftest import MASTER_KEY
from .wire import assert_openai_error, chat_body

CHAT = "/v1/chat/completions"
MODEL = "shin-llama-3-1-70b"
USER = [{"role": "user", "content": "hi"}]
INVALID = "invalid_request_error"
BIG = 1024 * 1024 + 200_000     # over the gateway's max_request_body_mb: 1


def chat(**fields) -> dict:
    """A valid chat body with `fields` merged in (a value of None removes that key)."""
    body = chat_body(MODEL)
    body.update(fields)
    return {k: v for k, v in body.items() if v is not None}


def msg(**fields) -> dict:
    return chat(messages=[fields])


def parts(*content_parts) -> dict:
    return chat(messages=[{"role": "user", "content": list(content_parts)}])


def row(id_, body, status=400, param=None, *, path=CHAT, type_=INVALID, code=..., raw=None,
        content_type="application/json"):
    return pytest.param(path, body, raw, content_type, status, type_, code, param, id=id_)


# (path, JSON body or None, raw bytes (a list: sent chunked) or None, Content-Type, status, type, code, param)
CASES = [
    # --- not a JSON object ---
    row("non-json", None, raw=b'{"model": "shin-llama-3-1-70b", "messages": [', param=None),
    row("json-array", None, raw=b'[{"model": "shin-llama-3-1-70b"}]', param=None),
    row("json-string", None, raw=b'"please complete this"', param=None),
    row("json-null", None, raw=b"null", param=None),
    row("empty-body", None, raw=b"", param=None),
    row("json-nan", None, raw=b'{"model": "shin-llama-3-1-70b", "messages": [{"role": "user", "content": "hi"}], '
                              b'"temperature": NaN}', param=None),
    # --- model ---
    row("missing-model", chat(model=None), param="model"),
    row("empty-model", chat(model=""), param="model"),
    row("model-not-string", chat(model=70), param="model"),
    row("unknown-model", chat(model="no-such-model"), 404, "model", code="model_not_found"),
    # --- messages ---
    row("missing-messages", chat(messages=None), param="messages"),
    row("empty-messages", chat(messages=[]), param="messages"),
    row("messages-not-list", chat(messages="hi"), param="messages"),
    row("message-not-object", chat(messages=["hi"]), param="messages[0]"),
    row("message-null", chat(messages=[None]), param="messages[0]"),
    row("missing-role", msg(content="hi"), param="messages[0].role"),
    row("bad-role", msg(role="wizard", content="hi"), param="messages[0].role"),
    row("bad-role-second-message", chat(messages=USER + [{"role": "robot", "content": "x"}]),
        param="messages[1].role"),
    row("content-int", msg(role="user", content=42), param="messages[0].content"),
    row("content-object", msg(role="user", content={"text": "hi"}), param="messages[0].content"),
    row("content-missing", msg(role="user"), param="messages[0].content"),
    row("content-parts-empty", parts(), param="messages[0].content"),
    row("content-part-without-type", parts({"text": "hi"}), param="messages[0].content[0].type"),
    row("content-part-not-object", parts("hi"), param="messages[0].content[0]"),
    row("image-url-part-without-url", parts({"type": "text", "text": "look"},
                                            {"type": "image_url", "image_url": {"detail": "low"}}),
        param="messages[0].content[1].image_url.url"),
    row("tool-message-without-tool-call-id", chat(messages=USER + [{"role": "tool", "content": "42"}]),
        param="messages[1].tool_call_id"),
    # --- sampling parameters ---
    row("temperature-string", chat(temperature="0.7"), param="temperature"),
    row("temperature-3", chat(temperature=3), param="temperature"),
    row("temperature-negative", chat(temperature=-1), param="temperature"),
    row("top-p-1.5", chat(top_p=1.5), param="top_p"),
    row("n-0", chat(n=0), param="n"),
    row("n-string", chat(n="2"), param="n"),
    row("max-tokens-0", chat(max_tokens=0), param="max_tokens"),
    row("max-tokens-float", chat(max_tokens=1.5), param="max_tokens"),
    row("max-completion-tokens-0", chat(max_completion_tokens=0), param="max_completion_tokens"),
    row("presence-penalty-3", chat(presence_penalty=3), param="presence_penalty"),
    row("frequency-penalty-string", chat(frequency_penalty="high"), param="frequency_penalty"),
    row("logit-bias-out-of-range", chat(logit_bias={"50256": 101}), param="logit_bias"),
    row("stop-int", chat(stop=7), param="stop"),
    row("seed-string", chat(seed="42"), param="seed"),
    row("top-logprobs-without-logprobs", chat(top_logprobs=5), param="top_logprobs"),
    row("top-logprobs-30", chat(logprobs=True, top_logprobs=30), param="top_logprobs"),
    row("stream-yes", chat(stream="yes"), param="stream"),
    row("stream-options-without-stream", chat(stream_options={"include_usage": True}), param="stream_options"),
    row("stream-true-bad-temperature", chat(stream=True, temperature="hot"), param="temperature"),
    # --- tools and formats ---
    row("tools-not-list", chat(tools={"type": "function", "function": {"name": "f"}}), param="tools"),
    row("tool-bad-function-name", chat(tools=[{"type": "function", "function": {
        "name": "get weather!", "parameters": {"type": "object"}}}]), param="tools[0].function.name"),
    row("tool-choice-sometimes", chat(tool_choice="sometimes"), param="tool_choice"),
    row("response-format-xml", chat(response_format={"type": "xml"}), param="response_format.type"),
    row("json-schema-without-name", chat(response_format={"type": "json_schema", "json_schema": {
        "schema": {"type": "object"}}}), param="response_format.json_schema.name"),
    # --- fields a client must never set ---
    row("api-base", chat(api_base="http://evil.example/v1"), param="api_base"),
    row("base-url", chat(base_url="http://evil.example/v1"), param="base_url"),
    row("api-key", chat(api_key="sk-attacker-chosen"), param="api_key"),
    row("aws-access-key-id", chat(aws_access_key_id="AKIAEXAMPLE"), param="aws_access_key_id"),
    row("extra-headers", chat(extra_headers={"X-Evil": "1"}), param="extra_headers"),
    row("api-base-on-embeddings", {"model": "text-embedding-3-small", "input": "x",
                                   "api_base": "http://evil.example/v1"}, param="api_base", path="/v1/embeddings"),
    # --- size and media type ---
    row("oversize-body", chat(messages=[{"role": "user", "content": "x" * BIG}]), 413, None,
        code="request_too_large"),
    # The same body sent with `Transfer-Encoding: chunked` (no Content-Length), as a streaming client would.
    row("oversize-body-chunked", None, 413, None, code="request_too_large",
        raw=[json.dumps(chat(messages=[{"role": "user", "content": "x" * BIG}])).encode()]),
    row("text-plain", None, (400, 415), raw=json.dumps(chat()).encode(), content_type="text/plain"),
    row("form-encoded", None, (400, 415), raw=b"model=shin-llama-3-1-70b&messages=hi",
        content_type="application/x-www-form-urlencoded"),
    # --- the other endpoints ---
    row("completions-without-prompt", {"model": MODEL, "max_tokens": 5}, param="prompt", path="/v1/completions"),
    row("completions-temperature-string", {"model": MODEL, "prompt": "x", "temperature": "warm"},
        param="temperature", path="/v1/completions"),
    row("completions-unknown-model", {"model": "nope", "prompt": "x"}, 404, "model", code="model_not_found",
        path="/v1/completions"),
    row("embeddings-input-42", {"model": "text-embedding-3-small", "input": 42}, param="input",
        path="/v1/embeddings"),
    row("embeddings-without-input", {"model": "text-embedding-3-small"}, param="input", path="/v1/embeddings"),
    row("embeddings-bad-encoding", {"model": "text-embedding-3-small", "input": "x", "encoding_format": "hex"},
        param="encoding_format", path="/v1/embeddings"),
    row("no-v1-prefix", chat(temperature=5), param="temperature", path="/chat/completions"),
]


@pytest.fixture(scope="module")
def baseline(upstream, gateway):
    """The upstream's request count before this module's bad requests; checked again at the end."""
    with upstream.lock:
        return len(upstream.requests)


@pytest.mark.parametrize("path, body, raw, content_type, status, type_, code, param", CASES)
def test_malformed_request_is_rejected_before_the_upstream(gateway, upstream, auth_headers, baseline,
                                                           path, body, raw, content_type, status, type_,
                                                           code, param):
    data = raw if raw is not None else json.dumps(body).encode()
    headers = {**auth_headers, "Content-Type": content_type}
    if isinstance(data, list):        # a list of pieces: send them chunked, without Content-Length
        data = iter([piece[i:i + 65536] for piece in data for i in range(0, len(piece), 65536)])
        # requests keeps a connection with a generator body open after the call; an idle
        # keep-alive connection would hold up the gateway's graceful stop at teardown.
        headers["Connection"] = "close"
    with upstream.lock:
        before = len(upstream.requests)
    response = requests.post(f"{gateway.url}{path}", data=data, timeout=10, headers=headers)
    assert_openai_error(response, status, type_, code=code, param=param)
    with upstream.lock:
        reached = upstream.requests[before:]
    assert not reached, f"a malformed request reached the upstream: {reached[0]['body']!r:.300}"


def test_case_table_is_wide():
    assert len(CASES) >= 35


# --- authentication ------------------------------------------------------------------------

@pytest.mark.parametrize("headers", [
    pytest.param({}, id="no-key"),
    pytest.param({"Authorization": "Bearer sk-wrong-key-0000000000"}, id="wrong-key"),
    pytest.param({"Authorization": "Bearer "}, id="empty-bearer"),
    pytest.param({"Authorization": f"Basic {MASTER_KEY}"}, id="wrong-scheme-basic"),
    pytest.param({"Authorization": f"Token {MASTER_KEY}"}, id="wrong-scheme-token"),
    pytest.param({"api-key": "sk-wrong-key-0000000000"}, id="wrong-api-key-header"),
    pytest.param({"x-api-key": MASTER_KEY + "x"}, id="wrong-x-api-key-header"),
])
def test_bad_credentials_get_401(gateway, upstream, headers):
    with upstream.lock:
        before = len(upstream.requests)
    response = requests.post(f"{gateway.url}{CHAT}", json=chat(), headers=headers, timeout=10)
    assert_openai_error(response, 401, "authentication_error", code="invalid_api_key")
    with upstream.lock:
        assert len(upstream.requests) == before, "an unauthenticated request reached the upstream"


@pytest.mark.parametrize("headers", [
    pytest.param({"Authorization": f"Bearer {MASTER_KEY}"}, id="authorization-bearer"),
    pytest.param({"Authorization": f"bearer {MASTER_KEY}"}, id="authorization-bearer-lowercase"),
    pytest.param({"api-key": MASTER_KEY}, id="api-key-header"),
    pytest.param({"x-api-key": MASTER_KEY}, id="x-api-key-header"),
])
def test_key_is_accepted_from_each_header(gateway, upstream, headers):
    response = requests.post(f"{gateway.url}{CHAT}", json=chat(messages=[{"role": "user", "content": "auth ok"}]),
                             headers=headers, timeout=10)
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"] == "echo: auth ok"


def test_bad_key_on_models_list_is_401(gateway):
    response = requests.get(f"{gateway.url}/v1/models", headers={"Authorization": "Bearer nope"}, timeout=10)
    assert_openai_error(response, 401, "authentication_error", code="invalid_api_key")


# --- routes and methods ----------------------------------------------------------------------

@pytest.mark.parametrize("method, path", [
    ("GET", "/v1/no-such-route"),
    ("POST", "/v1/no-such-route"),
    ("POST", "/v1/responses/nope"),
    ("GET", "/index.html"),
])
def test_unknown_route_is_json_404(gateway, auth_headers, method, path):
    response = requests.request(method, f"{gateway.url}{path}", headers=auth_headers, json={}, timeout=10)
    assert_openai_error(response, 404, INVALID)


@pytest.mark.parametrize("method, path", [
    ("GET", "/v1/chat/completions"),
    ("PUT", "/v1/chat/completions"),
    ("GET", "/v1/embeddings"),
    ("DELETE", "/v1/models"),
    ("POST", "/v1/models"),
])
def test_wrong_method_is_json_405(gateway, auth_headers, method, path):
    response = requests.request(method, f"{gateway.url}{path}", headers=auth_headers, timeout=10)
    assert_openai_error(response, 405, INVALID)


def test_upstream_saw_none_of_the_bad_requests(gateway, upstream, auth_headers, baseline):
    """Runs after the table (definition order): nothing above was sent upstream, and a good call is."""
    with upstream.lock:
        bad = [r for r in upstream.requests[baseline:]
               if r["body"] is None or (r["body"].get("messages") or [{}])[0].get("content") != "auth ok"]
    assert not bad, f"{len(bad)} malformed or unauthenticated request(s) reached the upstream: {bad[0]['body']!r:.300}"
    # The check above can fail: a valid call from here does reach the upstream.
    response = requests.post(f"{gateway.url}{CHAT}", json=chat(messages=[{"role": "user", "content": "good"}]),
                             headers=auth_headers, timeout=10)
    assert response.status_code == 200, response.text
    assert upstream.last_request()["body"]["messages"][0]["content"] == "good"
