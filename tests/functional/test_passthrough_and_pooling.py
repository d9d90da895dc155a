"""What reaches the upstream: the client's body unchanged but for `model`, the gateway's own key, never
the client's; and connections to the upstream reused, not opened per request."""
from __future__ import annotations

import copy
import json
import socket

import pytest
import requests

from .conftest import MASTER_KEY, UPSTREAM_KEY
from .fake_upstream import FakeUpstream
from .wire import SSEResponse, assert_sse_framing

CHAT = "/v1/chat/completions"
CLIENT_MODEL = "shin-llama-3-1-405b"
UPSTREAM_MODEL = "meta-llama/Llama-3.1-405B-Instruct"

FULL_BODY = {
    "model": CLIENT_MODEL,
    "messages": [
        {"role": "system", "content": "You are terse."},
        {"role": "developer", "content": [{"type": "text", "text": "Answer in JSON."}]},
        {"role": "user", "name": "ada", "content": [
            {"type": "text", "text": "What is in this image, and what is the weather there?"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo=", "detail": "low"}},
            {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}},
        ]},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_abc123", "type": "function",
             "function": {"name": "get_weather", "arguments": "{\"city\": \"Edinburgh\"}"}}]},
        {"role": "tool", "tool_call_id": "call_abc123", "content": "{\"temp_c\": 11.5, \"sky\": \"rain\"}"},
        {"role": "user", "content": "Summarise, with ünïcödé and emoji 🌧️ intact."},
    ],
    "tools": [
        {"type": "function", "function": {
            "name": "get_weather", "description": "Current weather for a city.", "strict": True,
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                           "required": ["city"], "additionalProperties": False}}},
        {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}},
    ],
    "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
    "parallel_tool_calls": False,
    "response_format": {"type": "json_schema", "json_schema": {
        "name": "answer", "strict": True,
        "schema": {"type": "object", "properties": {"summary": {"type": "string"}}, "required": ["summary"],
                   "additionalProperties": False}}},
    "n": 2,
    "stop": ["\n\n", "END"],
    "temperature": 0.7,
    "top_p": 0.95,
    "max_tokens": 256,
    "max_completion_tokens": 300,
    "presence_penalty": 0.5,
    "frequency_penalty": -0.25,
    "logit_bias": {"50256": -100, "1234": 2.5},
    "logprobs": True,
    "top_logprobs": 3,
    "seed": 1234567,
    "user": "user-42",
    "metadata": {"trace": "abc", "team": "search"},
    # vendor extras (vLLM / llama.cpp / SGLang)
    "top_k": 40,
    "repetition_penalty": 1.0,        # a float that a careless re-encoding would turn into 1
    "length_penalty": 2,              # and an int that must not become 2.0
    "min_p": 0.05,
    "chat_template_kwargs": {"enable_thinking": False},
}


def canonical(body: dict) -> str:
    """A text that tells apart what `==` does not: 1 from 1.0 and True, key order aside."""
    return json.dumps(body, sort_keys=True, ensure_ascii=False)


def _expected_upstream_body(sent: dict) -> dict:
    expected = copy.deepcopy(sent)
    expected["model"] = UPSTREAM_MODEL
    return expected


def _assert_no_master_key(record: dict) -> None:
    raw = record["raw"].decode("utf-8", "replace")
    assert MASTER_KEY not in raw, "the master key reached the upstream in the body"
    for name, value in record["headers"].items():
        assert MASTER_KEY not in value, f"the master key reached the upstream in header {name}"


@pytest.mark.parametrize("client_auth", [
    {"Authorization": f"Bearer {MASTER_KEY}"},
    {"api-key": MASTER_KEY},
    {"x-api-key": MASTER_KEY},
], ids=["authorization", "api-key", "x-api-key"])
def test_every_field_reaches_the_upstream_unchanged(gateway, upstream, client_auth):
    sent = copy.deepcopy(FULL_BODY)
    response = requests.post(f"{gateway.url}{CHAT}", data=json.dumps(sent, ensure_ascii=False).encode(),
                             headers={**client_auth, "Content-Type": "application/json",
                                      "X-Stainless-Lang": "python", "OpenAI-Organization": "org-client"},
                             timeout=10)
    assert response.status_code == 200, response.text
    assert response.json()["model"] == CLIENT_MODEL
    record = upstream.last_request(UPSTREAM_MODEL)
    assert record["path"] == "/v1/chat/completions"
    assert canonical(record["body"]) == canonical(_expected_upstream_body(sent))
    assert record["headers"].get("Authorization") == f"Bearer {UPSTREAM_KEY}"
    _assert_no_master_key(record)
    lowered = {k.lower() for k in record["headers"]}
    assert not {"api-key", "x-api-key"} & lowered, f"a client key header was forwarded: {record['headers']}"
    assert "openai-organization" not in lowered, "the client chose the upstream organization"


def test_chunked_request_body_reaches_the_upstream_unchanged(gateway, upstream):
    """A client that streams its request body (Transfer-Encoding: chunked, no Content-Length)."""
    raw = json.dumps(FULL_BODY, ensure_ascii=False).encode()
    pieces = iter([raw[i:i + 1000] for i in range(0, len(raw), 1000)])
    response = requests.post(f"{gateway.url}{CHAT}", data=pieces, timeout=10, headers={
        "Authorization": f"Bearer {MASTER_KEY}", "Content-Type": "application/json",
        # requests leaves a connection with a generator body open; an idle keep-alive
        # connection would hold up the gateway's graceful stop at teardown.
        "Connection": "close"})
    assert response.status_code == 200, response.text
    assert canonical(upstream.last_request(UPSTREAM_MODEL)["body"]) == canonical(_expected_upstream_body(FULL_BODY))


def test_streaming_body_reaches_the_upstream_unchanged(gateway, upstream):
    sent = copy.deepcopy(FULL_BODY)
    sent.update(stream=True, stream_options={"include_usage": True})
    stream = SSEResponse.open(gateway.url, CHAT, sent, {"Authorization": f"Bearer {MASTER_KEY}"})
    try:
        stream.read_all()
    finally:
        stream.close()
    assert_sse_framing(stream)
    record = upstream.last_request(UPSTREAM_MODEL)
    assert canonical(record["body"]) == canonical(_expected_upstream_body(sent))
    assert record["headers"].get("Authorization") == f"Bearer {UPSTREAM_KEY}"
    _assert_no_master_key(record)


@pytest.mark.parametrize("path, body", [
    ("/v1/completions", {"model": CLIENT_MODEL, "prompt": ["one", "two"], "max_tokens": 7, "echo": False,
                         "suffix": "!", "best_of": 2, "logprobs": 2, "top_k": 5, "temperature": 0}),
    ("/v1/embeddings", {"model": "text-embedding-3-small", "input": ["a", "b"], "encoding_format": "float",
                        "dimensions": 4, "user": "u-1"}),
])
def test_other_endpoints_pass_their_body_through(gateway, upstream, path, body):
    response = requests.post(f"{gateway.url}{path}", json=body, headers={"Authorization": f"Bearer {MASTER_KEY}"},
                             timeout=10)
    assert response.status_code == 200, response.text
    upstream_model = UPSTREAM_MODEL if body["model"] == CLIENT_MODEL else body["model"]
    record = upstream.last_request(upstream_model)
    assert record["path"] == path
    assert record["body"] == {**body, "model": upstream_model}
    assert record["headers"].get("Authorization") == f"Bearer {UPSTREAM_KEY}"
    _assert_no_master_key(record)


# --- connection reuse ---------------------------------------------------------------------------

WORKERS = 2


@pytest.fixture
def pooled(start_gateway):
    own = FakeUpstream(api_key=UPSTREAM_KEY)
    # The fake writes a response's head and body separately; without TCP_NODELAY (inherited by the
    # accepted sockets) each reused connection waits out a 40 ms delayed ACK, as no real server does.
    own.server.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    own.start()
    gateway = start_gateway(f"""
        model_list:
          - model_name: pooled
            litellm_params:
              model: openai/pooled-upstream
              api_base: {own.base_url}
              api_key: {UPSTREAM_KEY}
        general_settings:
          master_key: {MASTER_KEY}
        """, workers=WORKERS)
    yield gateway, own
    gateway.stop()
    own.stop()


def test_upstream_connections_are_reused(pooled):
    gateway, own = pooled
    assert own.connections == 0
    auth = {"Authorization": f"Bearer {MASTER_KEY}"}
    with requests.Session() as client:
        for i in range(200):
            response = client.post(f"{gateway.url}{CHAT}", headers=auth, timeout=10,
                                   json={"model": "pooled", "messages": [{"role": "user", "content": f"n{i}"}]})
            assert response.status_code == 200, response.text
            assert response.json()["choices"][0]["message"]["content"] == f"echo: n{i}"
    assert own.count("pooled-upstream") == 200
    assert 1 <= own.connections <= WORKERS, \
        f"200 sequential requests opened {own.connections} upstream connections ({WORKERS} workers)"

    for i in range(50):
        stream = SSEResponse.open(gateway.url, CHAT, {"model": "pooled", "stream": True,
                                                      "messages": [{"role": "user", "content": f"s{i}"}]}, auth)
        try:
            stream.read_all()
        finally:
            stream.close()
        assert_sse_framing(stream)
    assert own.count("pooled-upstream") == 250
    assert own.connections <= WORKERS, \
        f"200 plain + 50 streaming sequential requests opened {own.connections} upstream connections"
