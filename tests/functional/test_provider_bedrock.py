"""Bedrock deployments through the real gateway (gunicorn, 2 gevent workers) to a fake Bedrock runtime
that checks every SigV4 signature with botocore and answers Converse JSON and binary event streams."""
from __future__ import annotations

import json
import textwrap
import uuid

import pytest
import requests

from .conftest import MASTER_KEY
from .fake_bedrock import TOOL_INPUT, TOOL_USE_ID, FakeBedrock
from .gateway_process import GatewayProcess
from .provider_clients import (TEXT_PROMPT, check_round_trip, langchain_round_trip, python_round_trip,
                               requires_node, run_node_round_trips, weather_report)
from .wire import SSEResponse, assert_openai_error, assert_sse_framing, chat_body

MODEL_ID = "anthropic.claude-3-haiku-20240307-v1:0"
ACCESS_KEY = "AKIAFAKEBEDROCK0001"
SECRET_KEY = "fAkE/SeCrEt+KeY/bedrock0123456789abcdefg"
SESSION_TOKEN = "IQoJb3JpZ2luX2VjEFAKESESSIONTOKEN/bedrock+test=="
API_KEY = "ABSKfakeBedrockApiKey0123456789"
AUTH = {"Authorization": f"Bearer {MASTER_KEY}"}
ENV = {"TEST_AWS_ACCESS_KEY_ID": ACCESS_KEY, "TEST_AWS_SECRET_ACCESS_KEY": SECRET_KEY}
TEXT = f"You said: {TEXT_PROMPT}"
FINAL = f"The tool said: {weather_report(TOOL_INPUT)}"

# client-facing name → upstream model id at the fake (which picks its behaviour by it)
MODELS = {
    "claude": MODEL_ID,
    "claude-converse": f"converse/{MODEL_ID}",
    "throttled": "error.ThrottlingException",
    "not-ready": "error.ModelNotReadyException",
    "unavailable": "error.ServiceUnavailableException",
    "internal": "error.InternalServerException",
    "model-error": "error.ModelErrorException",
    "model-timeout": "error.ModelTimeoutException",
    "denied": "error.AccessDeniedException",
    "not-found": "error.ResourceNotFoundException",
    "invalid": "error.ValidationException",
    "too-long": "error.ValidationException.context",
    "stream-throttled": "fixture.throttling",
    "stream-broken": "stream-exception.modelStreamErrorException",
    "stream-cut": "stream-cut",
}


def config(fake: FakeBedrock, models: dict[str, str], credentials: str) -> str:
    entries = "".join(f"""
          - model_name: {name}
            litellm_params:
              model: bedrock/{model}
              api_base: {fake.base_url}
              aws_region_name: us-east-1{credentials}""" for name, model in models.items())
    return textwrap.dedent("model_list:" + entries) + textwrap.dedent(f"""
        router_settings:
          num_retries: 0
          cooldown_time: 0
        general_settings:
          master_key: {MASTER_KEY}
        """)


KEYS = """
              aws_access_key_id: os.environ/TEST_AWS_ACCESS_KEY_ID
              aws_secret_access_key: os.environ/TEST_AWS_SECRET_ACCESS_KEY"""


@pytest.fixture(scope="module")
def fake():
    server = FakeBedrock(ACCESS_KEY, SECRET_KEY).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def gateway(fake, tmp_path_factory):
    path = tmp_path_factory.mktemp("bedrock") / "config.yaml"
    path.write_text(config(fake, MODELS, KEYS))
    process = GatewayProcess(path, workers=2, env=ENV).start()
    yield process
    process.stop()


SECRETS = (SECRET_KEY, SESSION_TOKEN, API_KEY, "AWS4-HMAC-SHA256", "Signature=", "X-Amz-Security-Token")


def assert_no_secret(text: str) -> None:
    for secret in SECRETS:
        assert secret.lower() not in text.lower(), f"{secret!r} in: {text[:800]}"


def post(gateway, body: dict) -> requests.Response:
    response = requests.post(f"{gateway.url}/v1/chat/completions", json=body, headers=AUTH, timeout=30)
    assert_no_secret(response.text + str(response.headers))
    return response


def stream(gateway, body: dict) -> SSEResponse:
    with SSEResponse.open(gateway.url, "/v1/chat/completions", {**body, "stream": True}, AUTH) as response:
        response.read_all()
    assert_no_secret(response.body.decode("utf-8", "replace") + str(response.headers))
    return response


def signed_calls(fake, since: int) -> list[dict]:
    """Requests the fake received after the first `since`, asserting each one passed its signature check."""
    with fake.lock:
        assert not fake.refused, fake.refused
        return fake.requests[since:]


# --- three real clients --------------------------------------------------------------------------

def test_python_sdk_round_trips(gateway, fake):
    before = len(fake.requests)
    result = python_round_trip(gateway.url, MASTER_KEY, "claude")
    check_round_trip(result, text=TEXT, arguments=TOOL_INPUT, final_text=FINAL)
    assert result["tool_call_ids"] == result["stream_tool_call_ids"] == [TOOL_USE_ID]
    calls = signed_calls(fake, before)
    assert [c["operation"] for c in calls] == ["converse", "converse-stream", "converse", "converse",
                                              "converse-stream", "converse-stream"]
    assert {c["path"].split("/")[2] for c in calls} == {"anthropic.claude-3-haiku-20240307-v1%3A0"}
    assert all(c["headers"]["Authorization"].startswith(f"AWS4-HMAC-SHA256 Credential={ACCESS_KEY}/")
               for c in calls)
    # the tool results reached Bedrock as one user turn of toolResult blocks under the id it gave
    last = calls[-1]["body"]["messages"]
    assert last[-1] == {"role": "user", "content": [{"toolResult": {
        "toolUseId": TOOL_USE_ID, "content": [{"text": weather_report(TOOL_INPUT)}]}}]}
    assert last[-2]["content"][-1] == {"toolUse": {"toolUseId": TOOL_USE_ID, "name": "get_weather",
                                                   "input": TOOL_INPUT}}
    assert_no_secret(gateway.logs())


def test_langchain_round_trips(gateway, fake):
    before = len(fake.requests)
    check_round_trip(langchain_round_trip(gateway.url, MASTER_KEY, "claude"), text=TEXT, arguments=TOOL_INPUT,
                     final_text=FINAL)
    assert len(signed_calls(fake, before)) == 6
    assert_no_secret(gateway.logs())


@requires_node
def test_node_sdk_round_trips(gateway, fake):
    before = len(fake.requests)
    result = run_node_round_trips(gateway.url, MASTER_KEY, "claude")
    check_round_trip(result, text=TEXT, arguments=TOOL_INPUT, final_text=FINAL)
    assert len(signed_calls(fake, before)) == 6
    assert_no_secret(gateway.logs())


# --- the wire ------------------------------------------------------------------------------------

def test_the_converse_prefix_names_the_same_model(gateway, fake):
    marker = uuid.uuid4().hex
    body = post(gateway, chat_body("claude-converse", marker)).json()
    assert body["choices"][0]["message"]["content"] == f"You said: {marker}"
    assert fake.last_request(marker)["model"] == MODEL_ID


def test_a_stream_with_usage(gateway, fake):
    marker = uuid.uuid4().hex
    response = stream(gateway, chat_body("claude", marker, stream_options={"include_usage": True}))
    assert_sse_framing(response)
    chunks = [e.json() for e in response.events[:-1]]
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"]) == \
        f"You said: {marker}"
    usage = chunks[-1]["usage"]
    assert chunks[-1]["choices"] == [] and usage["prompt_tokens_details"] == {"cached_tokens": 3}
    upstream = fake.last_request(marker)
    assert upstream["operation"] == "converse-stream" and upstream["body"]["messages"][0]["content"] == [
        {"text": marker}]


def test_parameters_bedrock_cannot_take_are_a_400_before_any_call(gateway, fake):
    before = len(fake.requests)
    error = assert_openai_error(post(gateway, chat_body("claude", seed=7)), 400, "invalid_request_error",
                                code="unsupported_parameter", param="seed")
    assert "Bedrock" in error["message"]
    assert_openai_error(post(gateway, chat_body("claude", n=2)), 400, "invalid_request_error", param="n")
    assert len(fake.requests) == before


@pytest.mark.parametrize("model, status, type_, code", [
    ("throttled", 429, "rate_limit_error", "rate_limit_exceeded"),
    ("not-ready", 429, "rate_limit_error", "rate_limit_exceeded"),
    ("unavailable", 502, "api_error", "upstream_error"),
    ("internal", 502, "api_error", "upstream_error"),
    ("model-error", 502, "api_error", "upstream_error"),
    ("model-timeout", 504, "api_error", "upstream_timeout"),
    ("denied", 502, "api_error", "upstream_auth_error"),
    ("not-found", 404, "invalid_request_error", None),
    ("invalid", 400, "invalid_request_error", None),
    ("too-long", 400, "invalid_request_error", "context_length_exceeded"),
])
@pytest.mark.parametrize("streamed", [False, True], ids=["whole", "stream"])
def test_error_rows_over_http(gateway, model, status, type_, code, streamed):
    response = post(gateway, chat_body(model, stream=streamed))
    error = assert_openai_error(response, status, type_, code=code)
    if status == 429:
        assert int(response.headers["Retry-After"]) >= 1
    if status >= 500:
        assert "/opt/ml" not in error["message"] and "/var/task" not in error["message"]


@pytest.mark.parametrize("model, says, before", [
    ("stream-throttled", "rate limiting: Too many requests", "Hel"),
    ("stream-broken", "failed", "You sa"),
    ("stream-cut", "", "You sa")])
def test_a_failure_mid_stream_ends_it_with_an_error_event(gateway, model, says, before):
    """After the first byte the contract's in-band error: api_error / upstream_error, no [DONE]."""
    response = stream(gateway, chat_body(model))
    assert response.status == 200
    events = [e.json() for e in response.events]
    error = events[-1]["error"]
    assert (error["type"], error["code"]) == ("api_error", "upstream_error") and says in error["message"]
    assert all(e.raw != b"data: [DONE]\n\n" for e in response.events)
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in events[:-1] if c.get("choices")) == before


def test_nothing_secret_in_the_logs(gateway):
    assert_no_secret(gateway.logs())


# --- other credentials -----------------------------------------------------------------------------

def test_session_credentials_are_signed_with_their_token(start_gateway):
    fake = FakeBedrock(ACCESS_KEY, SECRET_KEY, SESSION_TOKEN).start()
    try:
        gateway = start_gateway(config(fake, {"claude": MODEL_ID}, KEYS + """
              aws_session_token: os.environ/TEST_AWS_SESSION_TOKEN"""), env={**ENV, "TEST_AWS_SESSION_TOKEN":
                                                                               SESSION_TOKEN})
        assert post(gateway, chat_body("claude", "one")).json()["choices"][0]["message"]["content"] == "You said: one"
        response = stream(gateway, chat_body("claude", "two"))
        assert_sse_framing(response)
        calls = signed_calls(fake, 0)
        assert [c["headers"]["X-Amz-Security-Token"] for c in calls] == [SESSION_TOKEN] * 2
        assert all("x-amz-security-token" in c["headers"]["Authorization"] for c in calls)
        assert_no_secret(gateway.logs())
    finally:
        fake.stop()


def test_a_wrong_secret_is_an_upstream_auth_error_that_echoes_nothing(start_gateway):
    fake = FakeBedrock(ACCESS_KEY, SECRET_KEY, SESSION_TOKEN).start()
    try:
        gateway = start_gateway(config(fake, {"claude": MODEL_ID}, KEYS + """
              aws_session_token: os.environ/TEST_AWS_SESSION_TOKEN"""), env={
            "TEST_AWS_ACCESS_KEY_ID": ACCESS_KEY, "TEST_AWS_SECRET_ACCESS_KEY": SECRET_KEY[::-1],
            "TEST_AWS_SESSION_TOKEN": SESSION_TOKEN})
        for streamed in (False, True):
            assert_openai_error(post(gateway, chat_body("claude", stream=streamed)), 502, "api_error",
                                code="upstream_auth_error")
        assert fake.refused == ["signature mismatch"] * 2
        logs = gateway.logs()
        assert_no_secret(logs)
        assert SECRET_KEY[::-1] not in logs
    finally:
        fake.stop()


def test_a_bedrock_api_key_is_sent_as_a_bearer_token(start_gateway):
    fake = FakeBedrock(ACCESS_KEY, SECRET_KEY, api_key=API_KEY).start()
    try:
        gateway = start_gateway(config(fake, {"claude": MODEL_ID}, """
              api_key: os.environ/TEST_BEDROCK_API_KEY"""), env={"TEST_BEDROCK_API_KEY": API_KEY})
        answer = post(gateway, chat_body("claude", "hello")).json()
        assert answer["choices"][0]["message"]["content"] == "You said: hello"
        response = stream(gateway, chat_body("claude", "again"))
        assert_sse_framing(response)
        assert [c["headers"]["Authorization"] for c in signed_calls(fake, 0)] == [f"Bearer {API_KEY}"] * 2
        assert all("X-Amz-Date" not in c["headers"] for c in fake.requests)
        assert_no_secret(gateway.logs())
    finally:
        fake.stop()


def test_the_fake_refuses_an_unsigned_or_tampered_call(fake):
    """The signature check this file relies on is real: a body changed after signing fails it."""
    import botocore.auth
    import botocore.awsrequest
    import botocore.credentials

    url = f"{fake.base_url}/model/{MODEL_ID.replace(':', '%3A')}/converse"
    body = json.dumps({"messages": [{"role": "user", "content": [{"text": "hi"}]}]}).encode()
    signed = botocore.awsrequest.AWSRequest("POST", url, {"Content-Type": "application/json"}, body)
    botocore.auth.SigV4Auth(botocore.credentials.Credentials(ACCESS_KEY, SECRET_KEY), "bedrock",
                            "us-east-1").add_auth(signed)
    headers = dict(signed.headers.items())
    assert requests.post(url, data=body, headers=headers, timeout=5).status_code == 200
    tampered = requests.post(url, data=body.replace(b"hi", b"ho"), headers=headers, timeout=5)
    assert tampered.status_code == 403 and tampered.headers["x-amzn-ErrorType"].startswith("InvalidSignature")
    assert requests.post(url, data=body, timeout=5).status_code == 403
    with fake.lock:
        assert fake.refused[-2:] == ["signature mismatch", "no AWS4-HMAC-SHA256 Authorization header"]
        del fake.refused[-2:]


def test_json_mode_whole_and_streamed(gateway):
    """`response_format: json_object`: the fake is made to call the JSON tool; the client sees JSON text."""
    body = chat_body("claude", "weather as JSON, please", response_format={"type": "json_object"})
    answer = post(gateway, body)
    assert answer.status_code == 200, answer.text
    message = answer.json()["choices"][0]["message"]
    assert json.loads(message["content"]) == TOOL_INPUT and not message.get("tool_calls")
    response = stream(gateway, body)
    assert_sse_framing(response)
    events = [e.json() for e in response.events[:-1]]
    assert json.loads("".join(e["choices"][0]["delta"].get("content") or "" for e in events if e.get("choices"))) \
        == TOOL_INPUT
