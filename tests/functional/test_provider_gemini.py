"""`gemini/<model>` through the real gateway (gunicorn, 2 gevent workers) to a loopback fake Gemini
(fake_gemini.py) that speaks the Generative Language wire format and checks `x-goog-api-key`:
the Python and Node `openai` SDKs and LangChain's ChatOpenAI round trip (text, streams, tool
calls with their thought signatures, tool results), Google's errors come out as the contract's
rows, parameters Gemini cannot take are refused or dropped, embeddings work in both encodings,
and the Gemini key appears in no URL, no response and no log line.
"""
from __future__ import annotations

import base64
import json
import struct

import openai
import pytest
import requests

from .conftest import MASTER_KEY
from .fake_gemini import ANSWER_TEXT, SIGNATURE, TOOL_ARGS, USAGE, FakeGemini
from .gateway_process import GatewayProcess
from .openapi_schemas import check_exchange
from .provider_clients import (WEATHER_TOOL, check_round_trip, langchain_round_trip, python_round_trip,
                               requires_node, run_node_round_trips, weather_report)
from .wire import SSEResponse, assert_openai_error, assert_sse_framing, chat_body

GEMINI_KEY = "AIzaSyFunctional-gemini-secret-0123456789"
AUTH = {"Authorization": f"Bearer {MASTER_KEY}"}
TIMEOUT = 15
FINAL = f"The tool said: {weather_report(TOOL_ARGS)}"
COMPLETION = USAGE["candidatesTokenCount"] + USAGE["thoughtsTokenCount"]

# client-facing name → (upstream model at the fake, variant)
MODELS = {
    "gemini": ("gemini-2.0-flash", ""),
    "gemini-wrong-key": ("gemini-2.0-flash", "wrong-key"),
    "gemini-drop": ("gemini-2.0-flash", "drop"),
    "gemini-embed": ("text-embedding-004", ""),
    "stream-error": ("stream-error", ""),
    "blocked": ("blocked", ""),
    **{f"fail-{status}": (f"status-{status}", "") for status in (400, 401, 403, 404, 429, 500, 503, 504)},
    "fail-context": ("status-400-context", ""),
}


def config(fake: FakeGemini) -> str:
    entries = []
    for name, (model, variant) in MODELS.items():
        key = "AIzaSy-not-the-right-key" if variant == "wrong-key" else GEMINI_KEY
        extra = "\n      drop_params: true" if variant == "drop" else ""
        entries.append(f"""
  - model_name: {name}
    litellm_params:
      model: gemini/{model}
      api_base: {fake.base_url}
      api_key: {key}
      stream_timeout: 10{extra}""")
    return "model_list:" + "".join(entries) + f"""
router_settings:
  num_retries: 0
  cooldown_time: 0
general_settings:
  master_key: {MASTER_KEY}
"""


@pytest.fixture(scope="module")
def fake():
    server = FakeGemini(GEMINI_KEY).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def gateway(fake, tmp_path_factory):
    path = tmp_path_factory.mktemp("gemini") / "config.yaml"
    path.write_text(config(fake))
    process = GatewayProcess(path, workers=2).start()
    yield process
    process.stop()
    assert GEMINI_KEY not in process.logs()


@pytest.fixture
def sdk(gateway):
    with openai.OpenAI(api_key=MASTER_KEY, base_url=gateway.url + "/v1", max_retries=0, timeout=TIMEOUT) as client:
        yield client


def no_key_in(text: str) -> None:
    assert GEMINI_KEY not in text and "not-the-right-key" not in text


def post(gateway, body: dict, path: str = "/v1/chat/completions") -> requests.Response:
    response = requests.post(f"{gateway.url}{path}", json=body, headers=AUTH, timeout=TIMEOUT)
    no_key_in(response.text)
    no_key_in(str(response.headers))
    return response


def stream_events(gateway, body: dict) -> SSEResponse:
    with SSEResponse.open(gateway.url, "/v1/chat/completions", {**body, "stream": True}, AUTH) as response:
        response.read_all()
    no_key_in(response.body.decode())
    no_key_in(str(response.headers))
    return response


def chunks_of(response: SSEResponse) -> list[dict]:
    return [e.json() for e in response.events if e.raw != b"data: [DONE]\n\n"]


# --- the three clients --------------------------------------------------------------------------

@pytest.mark.parametrize("runner", [python_round_trip, langchain_round_trip], ids=["python-openai", "langchain"])
def test_python_clients_round_trip(gateway, fake, runner):
    result = runner(gateway.url, MASTER_KEY, "gemini")
    check_round_trip(result, text=ANSWER_TEXT, arguments=TOOL_ARGS, final_text=FINAL)
    # the tool result reached Gemini as a functionResponse named after the call, and the call went
    # back with its thought signature (the fake refuses the turn otherwise, as Gemini 3 does)
    contents = fake.last_request("gemini-2.0-flash")["body"]["contents"]
    assert contents[-2] == {"role": "model", "parts": [
        {"functionCall": {"name": "get_weather", "args": TOOL_ARGS}, "thoughtSignature": SIGNATURE}]}
    assert contents[-1] == {"role": "user", "parts": [
        {"functionResponse": {"name": "get_weather", "response": {"result": weather_report(TOOL_ARGS)}}}]}


@requires_node
def test_node_sdk_round_trips(gateway):
    result = run_node_round_trips(gateway.url, MASTER_KEY, "gemini")
    check_round_trip(result, text=ANSWER_TEXT, arguments=TOOL_ARGS, final_text=FINAL)


def test_the_key_travels_in_the_header_never_in_the_url(gateway, fake, sdk):
    sdk.chat.completions.create(model="gemini", messages=[{"role": "user", "content": "hi"}])
    with fake.lock:
        seen = list(fake.requests)
    assert seen and fake.keys_in_url == 0
    for request in seen:
        assert GEMINI_KEY not in request["path"] + request["query"]
        assert "Authorization" not in request["headers"]
    assert fake.last_request("gemini-2.0-flash")["headers"]["x-goog-api-key"] == GEMINI_KEY


# --- the Python SDK, request and answer details --------------------------------------------------

def test_a_plain_answer_with_system_prompt_and_sampling(sdk, fake):
    answer = sdk.chat.completions.create(
        model="gemini", messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}],
        temperature=0.3, max_tokens=64, stop=["END"], extra_body={"top_k": 5})
    assert answer.choices[0].message.content == ANSWER_TEXT and answer.choices[0].finish_reason == "stop"
    assert answer.model == "gemini" and answer.id == "fake-response-id-1"
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (USAGE["promptTokenCount"], COMPLETION)
    assert answer.usage.completion_tokens_details.reasoning_tokens == USAGE["thoughtsTokenCount"]
    sent = fake.last_request("gemini-2.0-flash")
    assert sent["method"] == "generateContent"
    assert sent["body"] == {"contents": [{"role": "user", "parts": [{"text": "hi"}]}],
                            "systemInstruction": {"parts": [{"text": "Be brief."}]},
                            "generationConfig": {"temperature": 0.3, "maxOutputTokens": 64, "topK": 5,
                                                 "stopSequences": ["END"]}}


def test_a_forced_tool_call_and_its_thought_signature(sdk, fake):
    answer = sdk.chat.completions.create(
        model="gemini", messages=[{"role": "user", "content": "weather?"}], tools=[WEATHER_TOOL],
        tool_choice={"type": "function", "function": {"name": "get_weather"}})
    choice = answer.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None   # the thought is dropped
    assert json.loads(choice.message.tool_calls[0].function.arguments) == TOOL_ARGS
    assert fake.last_request("gemini-2.0-flash")["body"]["toolConfig"] == {
        "functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["get_weather"]}}


def test_a_tool_result_without_its_call_is_a_400_not_an_upstream_call(gateway, fake):
    before = len(fake.requests)
    response = post(gateway, {"model": "gemini", "messages": [
        {"role": "user", "content": "x"}, {"role": "tool", "tool_call_id": "call_unknown", "content": "1"}]})
    assert_openai_error(response, 400, "invalid_request_error", param="messages[1].tool_call_id")
    assert len(fake.requests) == before


# --- streams -----------------------------------------------------------------------------------

def test_a_stream_is_openai_chunks_with_the_usage_chunk_last(gateway, fake):
    response = stream_events(gateway, chat_body("gemini", stream_options={"include_usage": True}))
    assert_sse_framing(response)
    for event in response.events[:-1]:
        assert b"\r" not in event.raw        # Gemini's CRLF framing does not reach the client
    check_exchange("POST", "/v1/chat/completions", 200, "text/event-stream", response.body)
    chunks = chunks_of(response)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"]) == ANSWER_TEXT
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == "stop"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["prompt_tokens"] == USAGE["promptTokenCount"]
    assert chunks[-1]["usage"]["completion_tokens"] == COMPLETION
    assert len({c["id"] for c in chunks}) == 1
    sent = fake.last_request("gemini-2.0-flash")
    assert sent["method"] == "streamGenerateContent" and sent["query"] == "alt=sse"


def test_a_stream_without_include_usage_has_no_usage_chunk(gateway):
    response = stream_events(gateway, chat_body("gemini"))
    assert_sse_framing(response)
    assert all(c["choices"] and "usage" not in c for c in chunks_of(response))


def test_an_error_mid_stream_ends_the_stream_in_band(gateway):
    response = stream_events(gateway, chat_body("stream-error"))
    assert response.status == 200
    chunks = chunks_of(response)
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks[:-1]) == "First Second "
    assert chunks[-1] == {"error": {"message": chunks[-1]["error"]["message"], "type": "api_error",
                                    "param": None, "code": "upstream_error"}}
    assert response.events[-1].raw != b"data: [DONE]\n\n"
    assert not any(c["choices"][0]["finish_reason"] for c in chunks[:-1])


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_a_blocked_prompt_is_an_empty_filtered_answer(gateway, stream):
    if stream:
        response = stream_events(gateway, chat_body("blocked"))
        assert_sse_framing(response)
        chunks = chunks_of(response)
        assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == "content_filter"
        assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"]) == ""
        return
    response = post(gateway, chat_body("blocked"))
    assert response.status_code == 200
    check_exchange("POST", "/v1/chat/completions", 200, "application/json", response.content)
    assert response.json()["choices"][0]["finish_reason"] == "content_filter"
    assert response.json()["choices"][0]["message"]["content"] == ""


# --- errors ------------------------------------------------------------------------------------

@pytest.mark.parametrize("model, status, type_, code", [
    ("gemini-wrong-key", 502, "api_error", "upstream_auth_error"),
    ("fail-401", 502, "api_error", "upstream_auth_error"),
    ("fail-403", 502, "api_error", "upstream_auth_error"),
    ("fail-404", 404, "invalid_request_error", "not_found"),
    ("fail-400", 400, "invalid_request_error", "invalid_argument"),
    ("fail-context", 400, "invalid_request_error", "context_length_exceeded"),
    ("fail-429", 429, "rate_limit_error", "rate_limit_exceeded"),
    ("fail-503", 502, "api_error", "upstream_error"),
    ("fail-500", 502, "api_error", "upstream_error"),
    ("fail-504", 504, "api_error", "upstream_timeout"),
])
@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_error_rows(gateway, model, status, type_, code, stream):
    response = post(gateway, chat_body(model, stream=stream))
    error = assert_openai_error(response, status, type_, code=code)
    assert "API key not valid" not in error["message"] and "key1234" not in error["message"]   # Google's text
    if status == 429:
        assert response.headers["Retry-After"]
    if model in ("fail-500", "fail-503"):
        assert "/borg/" not in error["message"] and "overloaded. Please" not in error["message"]
    if model == "fail-context":
        assert error["param"] == "messages" and "input token count" in error["message"]


@pytest.mark.parametrize("name, value", [("logit_bias", {"1": 2}), ("user", "u-7"), ("parallel_tool_calls", False),
                                         ("service_tier", "flex")])
def test_a_parameter_gemini_cannot_take_is_refused_or_dropped(gateway, fake, name, value):
    before = len(fake.requests)
    response = post(gateway, chat_body("gemini", **{name: value}))
    assert_openai_error(response, 400, "invalid_request_error", code="unsupported_parameter", param=name)
    assert "Gemini" in response.json()["error"]["message"] and len(fake.requests) == before
    response = post(gateway, chat_body("gemini-drop", **{name: value}))
    assert response.status_code == 200, response.text
    assert fake.last_request("gemini-2.0-flash")["body"] == {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}


def test_n_above_one_is_refused_in_a_stream(gateway):
    response = post(gateway, chat_body("gemini", n=2, stream=True))
    assert_openai_error(response, 400, "invalid_request_error", code="unsupported_parameter", param="n")


def test_an_http_image_url_is_a_400_naming_the_part(gateway):
    response = post(gateway, {"model": "gemini", "messages": [{"role": "user", "content": [
        {"type": "text", "text": "what is it?"},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}]}]})
    assert_openai_error(response, 400, "invalid_request_error", param="messages[0].content[1].image_url.url")


def test_a_base64_image_goes_inline(sdk, fake):
    png = base64.b64encode(b"\x89PNG\r\n\x1a\n fake").decode()
    sdk.chat.completions.create(model="gemini", messages=[{"role": "user", "content": [
        {"type": "text", "text": "what is it?"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{png}"}}]}])
    assert fake.last_request("gemini-2.0-flash")["body"]["contents"][0]["parts"][1] == {
        "inlineData": {"mimeType": "image/png", "data": png}}


# --- embeddings --------------------------------------------------------------------------------

def test_embeddings_through_the_sdk_base64_by_default(sdk, fake):
    result = sdk.embeddings.create(model="gemini-embed", input=["ab", "abcd"], dimensions=3)
    assert [d.embedding for d in result.data] == [[0.5, 1.0, 1.5], [1.0, 1.5, 2.0]]
    sent = fake.last_request("text-embedding-004")
    assert sent["method"] == "batchEmbedContents" and sent["headers"]["x-goog-api-key"] == GEMINI_KEY
    assert sent["body"]["requests"][1] == {"model": "models/text-embedding-004",
                                           "content": {"parts": [{"text": "abcd"}]}, "outputDimensionality": 3}


@pytest.mark.parametrize("encoding", ["float", "base64"])
def test_embeddings_over_http_match_the_spec(gateway, encoding):
    body = {"model": "gemini-embed", "input": "abcd", "encoding_format": encoding}
    response = post(gateway, body, "/v1/embeddings")
    assert response.status_code == 200, response.text
    check_exchange("POST", "/v1/embeddings", 200, "application/json", response.content, body)
    vector = response.json()["data"][0]["embedding"]
    if encoding == "base64":
        vector = list(struct.unpack("<4f", base64.b64decode(vector)))
    assert vector == [1.0, 1.5, 2.0, 2.5]


def test_token_id_embedding_inputs_are_a_400(gateway):
    response = post(gateway, {"model": "gemini-embed", "input": [[1, 2, 3]]}, "/v1/embeddings")
    assert_openai_error(response, 400, "invalid_request_error", param="input")


def test_the_gateway_log_never_holds_the_key(gateway, sdk):
    sdk.chat.completions.create(model="gemini", messages=[{"role": "user", "content": "hi"}])
    post(gateway, chat_body("gemini-wrong-key"))
    post(gateway, chat_body("fail-500"))
    logs = gateway.logs()
    assert logs and GEMINI_KEY not in logs and "not-the-right-key" not in logs
