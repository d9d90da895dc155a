"""Upstream failures through the gateway (CONTRACT §3 errors table), request ids and CORS."""
from __future__ import annotations

import time

import pytest
import requests

from .conftest import MASTER_KEY, STANDARD_MODELS, UPSTREAM_KEY
from .wire import assert_no_leak, assert_openai_error, chat_body, start_isolated_gateway

CHAT = "/v1/chat/completions"
ATTEMPTS = 1 + 1          # 1 + num_retries of the standard config


@pytest.fixture(scope="module")
def isolated(upstream, tmp_path_factory):
    """Attempts are counted at the upstream: use a gateway no other test module has cooled down."""
    process = start_isolated_gateway(upstream, tmp_path_factory.mktemp("upstream-errors"))
    yield process
    process.stop()


def call(gateway, upstream, model: str, *, stream: bool = False, headers: dict | None = None,
         upstream_model: str | None = None):
    """POST a chat call; return (response, upstream attempts it caused, seconds it took)."""
    upstream_model = upstream_model or STANDARD_MODELS[model]
    before = upstream.count(upstream_model)
    body = chat_body(model, "trigger", **({"stream": True} if stream else {}))
    started = time.monotonic()
    response = requests.post(f"{gateway.url}{CHAT}", json=body, timeout=20,
                             headers={"Authorization": f"Bearer {MASTER_KEY}", **(headers or {})})
    elapsed = time.monotonic() - started
    if stream and response.headers.get("Content-Type", "").startswith("text/event-stream"):
        pytest.fail(f"an upstream failure before the first byte became a stream: {response.text[:300]}")
    return response, upstream.count(upstream_model) - before, elapsed


STREAM = pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])


@STREAM
@pytest.mark.parametrize("model, status", [("fail-400", 400), ("fail-404", 404), ("fail-422", 422)])
def test_upstream_client_error_is_passed_through(isolated, upstream, model, status, stream):
    response, attempts, _ = call(isolated, upstream, model, stream=stream)
    error = assert_openai_error(response, status, "invalid_request_error", code="invalid_value", param="temperature")
    assert f"Invalid parameter: upstream says no ({status})." in error["message"], error
    assert attempts == 1, f"an upstream {status} was retried ({attempts} attempts)"


@STREAM
def test_upstream_context_overflow_is_400_context_length_exceeded(isolated, upstream, stream):
    response, attempts, _ = call(isolated, upstream, "fail-context", stream=stream)
    error = assert_openai_error(response, 400, "invalid_request_error", code="context_length_exceeded")
    assert "maximum context length is 8192 tokens" in error["message"], error
    assert attempts == 1


@STREAM
def test_upstream_429_is_429_with_retry_after(isolated, upstream, stream):
    response, attempts, _ = call(isolated, upstream, "fail-429", stream=stream)
    assert_openai_error(response, 429, "rate_limit_error", code="rate_limit_exceeded")
    retry_after = response.headers.get("Retry-After")
    assert retry_after is not None and retry_after.isdigit() and int(retry_after) >= 1, dict(response.headers)
    assert attempts == ATTEMPTS, f"{attempts} upstream attempts, want 1 + num_retries = {ATTEMPTS}"


@STREAM
@pytest.mark.parametrize("model", ["fail-500", "fail-503"])
def test_upstream_5xx_is_502_after_retries(isolated, upstream, model, stream):
    response, attempts, _ = call(isolated, upstream, model, stream=stream)
    assert_openai_error(response, 502, "api_error", code="upstream_error")
    assert attempts == ATTEMPTS, f"{attempts} upstream attempts, want 1 + num_retries = {ATTEMPTS}"


@STREAM
@pytest.mark.parametrize("model", ["fail-401", "fail-403"])
def test_upstream_auth_failure_is_502_upstream_auth_error_not_retried(isolated, upstream, model, stream):
    response, attempts, _ = call(isolated, upstream, model, stream=stream)
    assert_openai_error(response, 502, "api_error", code="upstream_auth_error")
    # The fake upstream echoes the key it holds in its error message: it must not reach the client.
    assert UPSTREAM_KEY not in response.text
    assert attempts == 1, f"upstream {model[-3:]} was retried on the same deployment ({attempts} attempts)"


@STREAM
def test_upstream_timeout_is_504(isolated, upstream, stream):
    response, attempts, elapsed = call(isolated, upstream, "slow-answer", stream=stream, upstream_model="hang-3")
    assert_openai_error(response, 504, "api_error", code="upstream_timeout")
    # `timeout` (1 s) is a deadline for the whole call, retries included: the
    # attempt that ran into it is the last one, cut long before the upstream's 3 s.
    assert attempts == 1, f"{attempts} upstream attempts after the deadline had passed"
    assert 1.0 <= elapsed < 1.0 + 1.5, f"took {elapsed:.2f}s"


@STREAM
def test_unreachable_upstream_is_502(isolated, stream):
    body = chat_body("unreachable", **({"stream": True} if stream else {}))
    response = requests.post(f"{isolated.url}{CHAT}", json=body, timeout=20,
                             headers={"Authorization": f"Bearer {MASTER_KEY}"})
    assert_openai_error(response, 502, "api_error", code="upstream_error")


@STREAM
def test_garbage_answer_is_502(isolated, upstream, stream):
    response, attempts, _ = call(isolated, upstream, "garbage", stream=stream)
    assert_openai_error(response, 502, "api_error", code="upstream_error")
    assert "<html>" not in response.text
    assert 1 <= attempts <= ATTEMPTS


# --- request ids ---------------------------------------------------------------------------

@pytest.mark.parametrize("method, path, body, status", [
    ("POST", CHAT, chat_body("shin-llama-3-1-8b"), 200),
    ("POST", CHAT, chat_body("fail-400"), 400),
    ("POST", CHAT, chat_body("shin-llama-3-1-8b", temperature=9), 400),
    ("POST", CHAT, chat_body("no-such-model"), 404),
    ("GET", "/v1/models", None, 200),
    ("GET", "/v1/nowhere", None, 404),
    ("GET", "/health/liveliness", None, 200),
])
def test_request_id_echoes_the_clients_own(gateway, method, path, body, status):
    own = f"client-trace-{status}-{time.monotonic_ns()}"
    response = requests.request(method, f"{gateway.url}{path}", json=body, timeout=10,
                                headers={"Authorization": f"Bearer {MASTER_KEY}", "X-Request-Id": own})
    assert response.status_code == status, response.text
    assert response.headers.get("x-request-id") == own


def test_request_id_on_a_stream_and_on_401(gateway):
    own = "client-trace-stream-1"
    response = requests.post(f"{gateway.url}{CHAT}", json=chat_body("shin-llama-3-1-8b", stream=True),
                             headers={"Authorization": f"Bearer {MASTER_KEY}", "X-Request-Id": own}, timeout=10)
    assert response.status_code == 200 and response.headers.get("x-request-id") == own
    response = requests.post(f"{gateway.url}{CHAT}", json=chat_body("shin-llama-3-1-8b"),
                             headers={"Authorization": "Bearer wrong", "X-Request-Id": "client-trace-401"}, timeout=10)
    assert response.status_code == 401 and response.headers.get("x-request-id") == "client-trace-401"


def test_request_id_is_generated_and_unique_when_absent(gateway):
    ids = {requests.get(f"{gateway.url}/health/liveliness", timeout=10).headers.get("x-request-id") for _ in range(5)}
    assert None not in ids and "" not in ids and len(ids) == 5, ids


# --- CORS ----------------------------------------------------------------------------------

ORIGIN = "https://app.example.com"


@pytest.mark.parametrize("path", [CHAT, "/chat/completions", "/v1/models", "/v1/embeddings"])
def test_cors_preflight(gateway, path):
    response = requests.options(f"{gateway.url}{path}", timeout=10, headers={
        "Origin": ORIGIN, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type"})
    assert 200 <= response.status_code < 300, (response.status_code, response.text[:300])
    assert response.headers.get("Access-Control-Allow-Origin") in ("*", ORIGIN), dict(response.headers)
    allowed = {h.strip().lower() for h in response.headers.get("Access-Control-Allow-Headers", "").split(",")}
    assert {"authorization", "content-type"} <= allowed or "*" in allowed, dict(response.headers)
    methods = {m.strip().upper() for m in response.headers.get("Access-Control-Allow-Methods", "").split(",")}
    assert "POST" in methods or "*" in methods, dict(response.headers)
    assert_no_leak(response.text + str(response.headers))


@pytest.mark.parametrize("model, status", [("shin-llama-3-1-8b", 200), ("no-such-model", 404)])
def test_cors_on_a_normal_post(gateway, model, status):
    response = requests.post(f"{gateway.url}{CHAT}", json=chat_body(model), timeout=10,
                             headers={"Authorization": f"Bearer {MASTER_KEY}", "Origin": ORIGIN})
    assert response.status_code == status, response.text
    assert response.headers.get("Access-Control-Allow-Origin") in ("*", ORIGIN), dict(response.headers)
    exposed = {h.strip().lower() for h in response.headers.get("Access-Control-Expose-Headers", "").split(",")}
    assert "x-request-id" in exposed, "a browser client cannot read x-request-id"


def test_cors_on_401(gateway):
    """A browser must be able to read the 401 body, so it gets CORS headers too."""
    response = requests.post(f"{gateway.url}{CHAT}", json=chat_body("shin-llama-3-1-8b"), timeout=10,
                             headers={"Origin": ORIGIN})
    assert response.status_code == 401
    assert response.headers.get("Access-Control-Allow-Origin") in ("*", ORIGIN), dict(response.headers)
