"""Fail-closed details a user or attacker can observe: keyless upstreams, the Bearer scheme, hung-up clients."""
from __future__ import annotations

import socket
import time

import orjson
import pytest
import requests

from .conftest import MASTER_KEY, UPSTREAM_KEY
from .wire import assert_openai_error

CHAT = "/v1/chat/completions"


def chat_body(model: str, **extra) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": "hello"}], **extra}


@pytest.fixture(scope="module")
def keyless(upstream, tmp_path_factory):
    """A gateway whose upstream key variable is missing for one model, present for another."""
    from .gateway_process import GatewayProcess
    path = tmp_path_factory.mktemp("keyless") / "config.yaml"
    path.write_text(f"""
model_list:
  - model_name: no-key
    litellm_params:
      model: openai/meta-llama/Llama-3.1-8B-Instruct
      api_base: {upstream.base_url}
      api_key: os.environ/GW_TEST_MISSING_UPSTREAM_KEY
  - model_name: with-key
    litellm_params:
      model: openai/meta-llama/Llama-3.1-70B-Instruct
      api_base: {upstream.base_url}
      api_key: os.environ/TEST_UPSTREAM_KEY
  - model_name: sibling-has-key
    litellm_params:
      model: openai/meta-llama/Llama-3.1-8B-Instruct
      api_base: {upstream.base_url}
      api_key: os.environ/GW_TEST_EMPTY_UPSTREAM_KEY
  - model_name: sibling-has-key
    litellm_params:
      model: openai/meta-llama/Llama-3.1-405B-Instruct
      api_base: {upstream.base_url}
      api_key: os.environ/TEST_UPSTREAM_KEY
general_settings:
  master_key: {MASTER_KEY}
""")
    process = GatewayProcess(path, workers=2, env={"TEST_UPSTREAM_KEY": UPSTREAM_KEY,
                                                   "GW_TEST_EMPTY_UPSTREAM_KEY": ""}).start()
    yield process
    process.stop()


AUTH = {"Authorization": f"Bearer {MASTER_KEY}"}


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_a_model_whose_key_variable_is_unset_names_it_and_calls_nobody(keyless, upstream, stream):
    upstream.reset()
    response = requests.post(f"{keyless.url}{CHAT}", json=chat_body("no-key", stream=stream), headers=AUTH,
                             timeout=10)
    error = assert_openai_error(response, 502, "api_error", code="upstream_auth_error")
    assert "environment variable GW_TEST_MISSING_UPSTREAM_KEY is not set" in error["message"]
    assert upstream.count("meta-llama/Llama-3.1-8B-Instruct") == 0, "the gateway called out without its key"


def test_a_keyless_deployment_leaves_the_call_to_its_keyed_sibling(keyless, upstream):
    upstream.reset()
    for _ in range(6):
        response = requests.post(f"{keyless.url}{CHAT}", json=chat_body("sibling-has-key"), headers=AUTH,
                                 timeout=10)
        assert response.status_code == 200, response.text
    assert upstream.count("meta-llama/Llama-3.1-8B-Instruct") == 0
    assert upstream.count("meta-llama/Llama-3.1-405B-Instruct") == 6


def test_the_keyed_model_of_the_same_gateway_answers(keyless):
    response = requests.post(f"{keyless.url}{CHAT}", json=chat_body("with-key"), headers=AUTH, timeout=10)
    assert response.status_code == 200, response.text


# --- only the Bearer scheme is read from Authorization ------------------------------------------

@pytest.mark.parametrize("headers", [
    {"Authorization": MASTER_KEY},
    {"Authorization": f"Basic {MASTER_KEY}"},
    {"Authorization": f"Token {MASTER_KEY}"},
    {"Authorization": "Bearer"},
    {"Authorization": "Bearer "},
], ids=["bare", "basic", "token", "bearer-alone", "bearer-blank"])
def test_authorization_without_the_bearer_scheme_is_no_key(gateway, headers):
    response = requests.get(f"{gateway.url}/v1/models", headers=headers, timeout=10)
    assert_openai_error(response, 401, "authentication_error", code="invalid_api_key")


@pytest.mark.parametrize("headers", [
    {"Authorization": f"Bearer {MASTER_KEY}"},
    {"Authorization": f"bearer {MASTER_KEY}"},
    {"api-key": MASTER_KEY},
    {"x-api-key": MASTER_KEY},
    {"Authorization": "Basic dXNlcjpwYXNz", "x-api-key": MASTER_KEY},
], ids=["bearer", "bearer-lowercase", "api-key", "x-api-key", "basic-then-x-api-key"])
def test_the_accepted_key_headers(gateway, headers):
    response = requests.get(f"{gateway.url}/v1/models", headers=headers, timeout=10)
    assert response.status_code == 200, response.text


# --- a non-stream call whose client hung up stops its upstream call -----------------------------

def test_a_hung_up_non_stream_client_stops_the_upstream_call(upstream, start_gateway):
    gateway = start_gateway(f"""
        model_list:
          - model_name: thinking
            litellm_params:
              model: openai/hang-8
              api_base: {upstream.base_url}
              api_key: os.environ/TEST_UPSTREAM_KEY
              timeout: 30
        general_settings:
          master_key: {MASTER_KEY}
        """, env={"TEST_UPSTREAM_KEY": UPSTREAM_KEY})
    upstream.reset()
    body = orjson.dumps(chat_body("thinking"))
    head = (f"POST {CHAT} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {MASTER_KEY}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode()
    client = socket.create_connection(("127.0.0.1", gateway.port), timeout=10)
    client.sendall(head + body)
    deadline = time.monotonic() + 10
    while upstream.count("hang-8") == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert upstream.count("hang-8") == 1, "the call never reached the upstream"
    hung_up_at = time.monotonic()
    client.close()
    while not upstream.hangups and time.monotonic() < hung_up_at + 5:
        time.sleep(0.02)
    assert upstream.hangups, "the upstream call went on after its client had gone"
    assert upstream.hangups[0] - hung_up_at < 1.0, f"stopped {upstream.hangups[0] - hung_up_at:.2f}s later"
    # and the worker is fine afterwards
    response = requests.get(f"{gateway.url}/health/liveliness", timeout=5)
    assert response.status_code == 200
