"""`azure/<deployment>` through the real gateway (2 gevent workers) to a loopback Azure OpenAI resource.

The fake (fake_azure.py) checks what Azure checks (deployment URL, api-version, `api-key` or
an Entra token) and answers as Azure does: a content-filter preamble before every stream,
filter annotations on choices, error bodies without a type or with numeric codes. The
three real clients' round trips (Python and Node `openai`, LangChain) pass through it.
"""
from __future__ import annotations

import json

import pytest
import requests

from .conftest import MASTER_KEY
from .fake_azure import AD_TOKEN, AZURE_KEY, TEXT_PIECES, FakeAzure
from .gateway_process import GatewayProcess
from .openapi_schemas import validate
from .provider_clients import (check_round_trip, langchain_round_trip, python_round_trip, requires_node,
                               run_node_round_trips, weather_report)

TEXT = "".join(TEXT_PIECES)
FINAL = f"The tool said: {weather_report({'city': 'Paris'})}"
HEADERS = {"Authorization": f"Bearer {MASTER_KEY}"}


def _config(base_url: str) -> str:
    def entry(name, deployment, extra=""):
        return f"""
  - model_name: {name}
    litellm_params:
      model: azure/{deployment}
      api_base: {base_url}
      api_key: os.environ/AZURE_KEY{extra}"""
    entries = [entry("gpt-4o", "gpt4o-prod"), entry("gpt-4o-v1", "gpt4o-v1", "\n      api_version: v1"),
               entry("embed", "embedding-dep"),
               *(entry(name, name) for name in ("filtered", "missing", "throttled", "context"))]
    entries.append(f"""
  - model_name: gpt-4o-entra
    litellm_params:
      model: azure/gpt4o-prod
      api_base: {base_url}
      azure_ad_token: os.environ/AZURE_AD_TOKEN
      api_version: 2024-06-01""")
    return f"""model_list:{"".join(entries)}
router_settings:
  num_retries: 0
  cooldown_time: 0
general_settings:
  master_key: {MASTER_KEY}
"""


@pytest.fixture(scope="module")
def azure():
    fake = FakeAzure()
    yield fake
    fake.stop()


@pytest.fixture(scope="module")
def gateway(azure, tmp_path_factory):
    path = tmp_path_factory.mktemp("azure") / "config.yaml"
    path.write_text(_config(azure.base_url))
    process = GatewayProcess(path, workers=2, env={"AZURE_KEY": AZURE_KEY, "AZURE_AD_TOKEN": AD_TOKEN}).start()
    yield process
    process.stop()
    logs = process.logs()
    assert AZURE_KEY not in logs and AD_TOKEN not in logs


def _chat(gateway, model, **body):
    return requests.post(f"{gateway.url}/v1/chat/completions", headers=HEADERS, timeout=30,
                         json={"model": model, "messages": [{"role": "user", "content": "hi"}], **body})


def test_a_chat_goes_to_the_deployment_url_with_api_version_and_api_key(gateway, azure):
    answer = _chat(gateway, "gpt-4o")
    assert answer.status_code == 200, answer.text
    body = answer.json()
    validate("CreateChatCompletionResponse", body)
    assert body["choices"][0]["message"]["content"] == TEXT and body["model"] == "gpt-4o"
    seen = azure.requests[-1]
    assert seen["path"] == "/openai/deployments/gpt4o-prod/chat/completions"
    assert seen["query"] == {"api-version": ["2024-10-21"]}
    assert seen["headers"]["api-key"] == AZURE_KEY and "Authorization" not in seen["headers"]


def test_an_entra_token_goes_as_a_bearer_token_with_the_configured_api_version(gateway, azure):
    assert _chat(gateway, "gpt-4o-entra").status_code == 200
    seen = azure.requests[-1]
    assert seen["headers"]["Authorization"] == f"Bearer {AD_TOKEN}" and "api-key" not in seen["headers"]
    assert seen["query"] == {"api-version": ["2024-06-01"]}


def test_the_v1_api_takes_the_deployment_as_the_model(gateway, azure):
    assert _chat(gateway, "gpt-4o-v1").status_code == 200
    seen = azure.requests[-1]
    assert seen["path"] == "/openai/v1/chat/completions" and not seen["query"]
    assert seen["body"]["model"] == "gpt4o-v1"


def test_a_stream_drops_azures_preamble_and_ends_with_done(gateway):
    answer = _chat(gateway, "gpt-4o", stream=True, stream_options={"include_usage": True})
    assert answer.status_code == 200
    events = [line[6:] for line in answer.text.split("\n") if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    for chunk in chunks:
        validate("CreateChatCompletionStreamResponse", chunk)
        assert chunk["id"] and chunk["model"] == "gpt-4o" and "prompt_filter_results" not in chunk
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"]) == TEXT
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["total_tokens"] == 25


def test_embeddings_go_to_the_deployment(gateway, azure):
    answer = requests.post(f"{gateway.url}/v1/embeddings", headers=HEADERS, timeout=30,
                           json={"model": "embed", "input": ["a", "b"]})
    assert answer.status_code == 200, answer.text
    validate("CreateEmbeddingResponse", answer.json())
    assert azure.requests[-1]["path"] == "/openai/deployments/embedding-dep/embeddings"


@pytest.mark.parametrize("model, status, type_, code", [
    ("filtered", 400, "invalid_request_error", "content_policy_violation"),
    ("missing", 404, "invalid_request_error", "DeploymentNotFound"),
    ("throttled", 429, "rate_limit_error", "rate_limit_exceeded"),
    ("context", 400, "invalid_request_error", "context_length_exceeded"),
])
@pytest.mark.parametrize("stream", [False, True])
def test_azure_errors_are_mapped_to_the_contracts_rows(gateway, model, status, type_, code, stream):
    answer = _chat(gateway, model, stream=stream)
    assert answer.status_code == status, answer.text
    error = answer.json()["error"]
    validate("ErrorResponse", answer.json())
    assert (error["type"], error["code"]) == (type_, code)
    if status == 429:
        assert answer.headers["Retry-After"] == "2"
    assert AZURE_KEY not in answer.text


def test_a_wrong_resource_key_is_an_upstream_auth_error_that_names_no_key(azure, start_gateway):
    process = start_gateway(_config(azure.base_url), env={"AZURE_KEY": "wrong-azure-key-0000",
                                                          "AZURE_AD_TOKEN": AD_TOKEN})
    answer = _chat(process, "gpt-4o")
    assert answer.status_code == 502 and answer.json()["error"]["code"] == "upstream_auth_error"
    assert "wrong-azure-key-0000" not in answer.text and "wrong-azure-key-0000" not in process.logs()


@pytest.mark.parametrize("runner", [python_round_trip, langchain_round_trip])
def test_python_clients_round_trip_through_azure(runner, gateway):
    check_round_trip(runner(gateway.url, MASTER_KEY, "gpt-4o"), text=TEXT, arguments={"city": "Paris"},
                     final_text=FINAL)


@requires_node
def test_node_sdk_round_trips_through_azure(gateway):
    check_round_trip(run_node_round_trips(gateway.url, MASTER_KEY, "gpt-4o"), text=TEXT,
                     arguments={"city": "Paris"}, final_text=FINAL)
