"""gateway/providers/azure.py against a faked wire (`responses`): Azure's URLs, key header and error bodies."""
from __future__ import annotations

import json

import pytest
import responses

from gateway.errors import ContentPolicyViolation, GatewayError, UpstreamAuthFailed, UpstreamClientError, \
    UpstreamFailed, UpstreamRateLimited
from gateway.providers.azure import AzureAdapter
from gateway.redact import Redactor
from gateway.types import Deployment, ModelRequest
from tests.functional.openapi_schemas import validate

BASE = "https://contoso.openai.azure.com"
KEY = "azure-resource-key-1234"
CHAT_URL = f"{BASE}/openai/deployments/gpt4o-prod/chat/completions?api-version=2024-10-21"


def deployment(**kw) -> Deployment:
    fields = dict(id="az1", model_name="gpt-4o", provider="azure", upstream_model="gpt4o-prod", api_base=BASE,
                  api_key=KEY, timeout=20.0)
    fields.update(kw)
    return Deployment(**fields)


def chat(stream=False, **params) -> ModelRequest:
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], **params}
    if stream:
        body["stream"] = True
    return ModelRequest(endpoint="chat/completions", model="gpt-4o", params=body, extra={}, stream=stream,
                        request_id="req-1")


@pytest.fixture
def wire():
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        yield mock


def adapter_for(dep):
    return AzureAdapter([dep], pool_maxsize=2, redactor=Redactor([KEY]))


ANSWER = {"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "gpt-4o-2024-08-06",
          "prompt_filter_results": [{"prompt_index": 0, "content_filter_results": {}}],
          "choices": [{"index": 0, "finish_reason": "stop", "logprobs": None,
                       "message": {"role": "assistant", "content": "Ahoy", "refusal": None},
                       "content_filter_results": {}}],
          "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}}


def test_the_body_goes_unchanged_to_the_deployment_url_with_the_api_key_header(wire):
    wire.add(responses.POST, CHAT_URL, json=ANSWER)
    adapter = adapter_for(deployment())
    answer = adapter.complete(deployment(), chat(temperature=0.2, seed=7))
    sent = wire.calls[0].request
    assert json.loads(sent.body) == {"model": "gpt4o-prod", "messages": [{"role": "user", "content": "hi"}],
                                     "temperature": 0.2, "seed": 7}
    assert sent.headers["api-key"] == KEY and "Authorization" not in sent.headers
    assert sent.headers["Content-Type"] == "application/json" and sent.headers["X-Request-Id"] == "req-1"
    validate("CreateChatCompletionResponse", answer.body)
    assert answer.body["model"] == "gpt-4o" and answer.usage.total_tokens == 4


@pytest.mark.parametrize("kw, url", [
    ({"api_version": "2025-01-01-preview"},
     f"{BASE}/openai/deployments/gpt4o-prod/chat/completions?api-version=2025-01-01-preview"),
    ({"api_version": "v1"}, f"{BASE}/openai/v1/chat/completions"),
    ({"api_base": f"{BASE}/openai/v1"}, f"{BASE}/openai/v1/chat/completions"),
])
def test_api_version_and_the_v1_api(wire, kw, url):
    wire.add(responses.POST, url, json=ANSWER)
    dep = deployment(**kw)
    adapter_for(dep).complete(dep, chat())
    assert wire.calls[0].request.url == url


def test_an_entra_token_is_sent_as_a_bearer_token_instead_of_the_key(wire):
    wire.add(responses.POST, CHAT_URL, json=ANSWER)
    dep = deployment(api_key=None, azure_ad_token="entra-token-abc")
    adapter_for(dep).complete(dep, chat())
    sent = wire.calls[0].request
    assert sent.headers["Authorization"] == "Bearer entra-token-abc" and "api-key" not in sent.headers


@pytest.mark.parametrize("status, body, kind, code, type_", [
    (400, {"error": {"code": "content_filter", "param": "prompt", "status": 400, "message": "filtered",
                     "innererror": {"code": "ResponsibleAIPolicyViolation"}}},
     ContentPolicyViolation, "content_policy_violation", "invalid_request_error"),
    (404, {"error": {"code": "DeploymentNotFound", "message": "The API deployment for this resource does not exist."}},
     UpstreamClientError, "DeploymentNotFound", "invalid_request_error"),
    (429, {"error": {"code": "429", "message": "Requests have exceeded token rate limit."}},
     UpstreamRateLimited, "rate_limit_exceeded", "rate_limit_error"),
    (401, {"error": {"code": "401", "message": f"Access denied due to invalid subscription key {KEY}."}},
     UpstreamAuthFailed, "upstream_auth_error", "api_error"),
    (403, {"error": {"code": "AuthorizationFailed", "message": "The client does not have authorization."}},
     UpstreamAuthFailed, "upstream_auth_error", "api_error"),
    (500, {"error": {"code": "InternalServerError", "message": "Backend returned unexpected response at 10.1.2.3"}},
     UpstreamFailed, "upstream_error", "api_error"),
    (503, {"error": {"code": "ServiceUnavailable", "message": "The service is temporarily unable to process."}},
     UpstreamFailed, "upstream_error", "api_error"),
])
def test_azure_error_bodies_map_to_the_contracts_rows(wire, status, body, kind, code, type_):
    wire.add(responses.POST, CHAT_URL, json=body, status=status, headers={"retry-after-ms": "1500"})
    with pytest.raises(GatewayError) as caught:
        adapter_for(deployment()).complete(deployment(), chat())
    error = caught.value
    assert type(error) is kind and error.code == code and error.body()["error"]["type"] == type_
    validate("ErrorResponse", error.body())
    assert KEY not in json.dumps(error.body())
    if status == 429:
        assert error.retry_after == 1.5
    if status >= 500:
        assert error.retryable and "10.1.2.3" not in error.message


def test_an_error_mid_stream_after_azures_preamble_is_an_upstream_failure(wire):
    preamble = {"id": "", "object": "", "created": 0, "model": "", "choices": [],
                "prompt_filter_results": [{"prompt_index": 0, "content_filter_results": {}}]}
    text = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o-2024-08-06",
            "choices": [{"index": 0, "delta": {"content": "Ahoy"}, "finish_reason": None}]}
    body = b"".join(b"data: " + json.dumps(e).encode() + b"\n\n"
                    for e in (preamble, text, {"error": {"message": "The server had an error", "code": "500"}}))
    wire.add(responses.POST, CHAT_URL, body=body, content_type="text/event-stream")
    dep = deployment()
    stream = adapter_for(dep).stream(dep, chat(stream=True))
    received = []
    with pytest.raises(UpstreamFailed):
        for payload in stream:
            received.append(payload)
    stream.close()
    sent = b"".join(received)
    assert b"Ahoy" in sent and b"prompt_filter_results" not in sent    # the preamble never reached the client
