"""gateway/providers/anthropic.py on a faked wire (`responses`): OpenAI requests out as Messages
requests, Messages answers and streams back as OpenAI bodies and chunks (validated against
OpenAI's spec), Anthropic's errors as the contract's rows, and the parameters it refuses.

The recorded exchanges under tests/reference/fixtures/anthropic are the golden data: a
translated request must equal the body Anthropic's own SDK sent, and recorded streams are
fed in small network pieces.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import responses

from gateway.errors import (BadUpstreamResponse, ContextLengthExceeded, GatewayError, InvalidRequest,
                            UpstreamAuthFailed, UpstreamClientError, UpstreamFailed, UpstreamRateLimited,
                            UpstreamTimeout)
from gateway.providers.anthropic import AnthropicAdapter
from gateway.redact import Redactor
from gateway.types import Deployment, ModelRequest
from tests.functional.openapi_schemas import parse_sse, validate
from tests.unit.network_pieces import in_pieces

FIXTURES = Path(__file__).resolve().parents[1] / "reference" / "fixtures" / "anthropic"
BASE = "http://anthropic.test"
URL = f"{BASE}/v1/messages"
KEY = "sk-ant-api03-unit-test-secret-key"
ALIAS = "claude"
MODEL = "claude-sonnet-4-5"


def cassette(name: str) -> list[dict]:
    return json.loads((FIXTURES / f"cassette-{name}.json").read_text())


def deployment(**kw) -> Deployment:
    fields = dict(id="ant1", model_name=ALIAS, provider="anthropic", upstream_model=MODEL, api_base=BASE,
                  api_key=KEY, timeout=20.0, stream_timeout=7.0)
    fields.update(kw)
    return Deployment(**fields)


def chat(messages=None, *, stream=False, include_usage=False, extra=None, **params) -> ModelRequest:
    body = {"model": ALIAS, "messages": messages or [{"role": "user", "content": "hi"}], **params}
    if stream:
        body["stream"] = True
    return ModelRequest(endpoint="chat/completions", model=ALIAS, params=body, extra=extra or {},
                        stream=stream, include_usage=include_usage, request_id="req-123")


@pytest.fixture
def dep():
    return deployment()


@pytest.fixture
def adapter(dep):
    adapter = AnthropicAdapter([dep], pool_maxsize=4, redactor=Redactor([KEY]))
    yield adapter
    adapter.close()


@pytest.fixture
def wire():
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        yield mock


def answer(content=None, stop_reason="end_turn", usage=None, id="msg_01Answer") -> dict:
    return {"id": id, "type": "message", "role": "assistant", "model": "claude-sonnet-4-5-20250929",
            "content": [{"type": "text", "text": "Hello!"}] if content is None else content,
            "stop_reason": stop_reason, "stop_sequence": None,
            "usage": usage or {"input_tokens": 10, "output_tokens": 3}}


def sent_body(adapter, dep, wire, request) -> dict:
    """The JSON body the adapter sends upstream for `request` (answered with a plain message)."""
    wire.add(responses.POST, URL, json=answer())
    adapter.complete(dep, request)
    return json.loads(wire.calls[-1].request.body)


def completion_of(adapter, dep, wire, body, request=None) -> dict:
    """The OpenAI body for an upstream answer `body`, checked against OpenAI's spec."""
    wire.add(responses.POST, URL, json=body)
    result = adapter.complete(dep, request or chat())
    validate("CreateChatCompletionResponse", result.body)
    return result.body


def add_stream(wire, raw: bytes, size: int = 37):
    wire.add(responses.POST, URL, body=in_pieces(raw, size), stream=True,
             content_type="text/event-stream; charset=utf-8")


def streamed(adapter, dep, request) -> tuple[list[dict], object]:
    """Every chunk the client gets (each checked against OpenAI's spec) and the stream's usage."""
    stream = adapter.stream(dep, request)
    try:
        data = b"".join(stream)
    finally:
        stream.close()
    chunks = [json.loads(event) for event in parse_sse(data)]
    for chunk in chunks:
        validate("CreateChatCompletionStreamResponse", chunk)
    return chunks, stream.usage


def sse(*events) -> bytes:
    """Anthropic SSE: (event name, data dict) pairs, `event:` line and all."""
    return b"".join(f"event: {name}\ndata: {json.dumps(data)}\n\n".encode() for name, data in events)


def start(usage=None):
    return ("message_start", {"type": "message_start", "message": {
        "id": "msg_01Stream", "type": "message", "role": "assistant", "model": MODEL, "content": [],
        "stop_reason": None, "stop_sequence": None, "usage": usage or {"input_tokens": 5, "output_tokens": 1}}})


def block_start(index, block):
    return ("content_block_start", {"type": "content_block_start", "index": index, "content_block": block})


def delta(index, **body):
    return ("content_block_delta", {"type": "content_block_delta", "index": index, "delta": body})


def text(index, value):
    return delta(index, type="text_delta", text=value)


def stop(stop_reason="end_turn", output_tokens=7):
    return [("message_delta", {"type": "message_delta", "delta": {"stop_reason": stop_reason, "stop_sequence": None},
                               "usage": {"output_tokens": output_tokens}}),
            ("message_stop", {"type": "message_stop"})]


def contents(chunks) -> str:
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])


def tool_deltas(chunks) -> list[dict]:
    return [call for c in chunks if c["choices"] for call in c["choices"][0]["delta"].get("tool_calls") or ()]


def arguments_by_index(chunks) -> dict[int, str]:
    joined: dict[int, str] = {}
    for call in tool_deltas(chunks):
        joined[call["index"]] = joined.get(call["index"], "") + call["function"]["arguments"]
    return joined


def finish_reasons(chunks) -> list[str]:
    return [c["choices"][0]["finish_reason"] for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]


# --- where it goes, with which credentials --------------------------------------------------------

@pytest.mark.parametrize("api_base, url", [
    (None, "https://api.anthropic.com/v1/messages"),
    ("https://api.anthropic.com", "https://api.anthropic.com/v1/messages"),
    ("https://api.anthropic.com/", "https://api.anthropic.com/v1/messages"),
    ("https://proxy.test/anthropic/v1", "https://proxy.test/anthropic/v1/messages"),
    ("https://proxy.test/anthropic/v1/", "https://proxy.test/anthropic/v1/messages"),
    ("https://proxy.test/v1/messages", "https://proxy.test/v1/messages"),
    ("https://proxy.test/anthropic", "https://proxy.test/anthropic/v1/messages"),
])
def test_the_url_is_v1_messages_under_the_base(wire, api_base, url):
    dep = deployment(api_base=api_base)
    adapter = AnthropicAdapter([dep], pool_maxsize=2, redactor=Redactor([KEY]))
    wire.add(responses.POST, url, json=answer())
    adapter.complete(dep, chat())
    assert wire.calls[0].request.url == url
    adapter.close()


def test_the_key_goes_in_x_api_key_with_the_api_version(adapter, dep, wire):
    sent_body(adapter, dep, wire, chat(extra={}))
    headers = wire.calls[0].request.headers
    assert headers["x-api-key"] == KEY
    assert headers["anthropic-version"] == "2023-06-01"
    assert headers["Content-Type"] == "application/json"
    assert "Authorization" not in headers


def test_extra_headers_override_the_version_and_add_betas(wire):
    dep = deployment(extra_headers={"anthropic-version": "2024-10-22", "anthropic-beta": "context-1m-2025-08-07"})
    adapter = AnthropicAdapter([dep], pool_maxsize=2, redactor=Redactor([KEY]))
    sent_body(adapter, dep, wire, chat())
    headers = wire.calls[0].request.headers
    assert headers["anthropic-version"] == "2024-10-22"
    assert headers["anthropic-beta"] == "context-1m-2025-08-07"
    adapter.close()


def test_no_api_key_sends_no_x_api_key(wire):
    dep = deployment(api_key=None)
    adapter = AnthropicAdapter([dep], pool_maxsize=2, redactor=Redactor())
    sent_body(adapter, dep, wire, chat())
    assert "x-api-key" not in wire.calls[0].request.headers
    adapter.close()


def test_only_chat_completions_is_served(adapter, dep, wire):
    call = ModelRequest(endpoint="embeddings", model=ALIAS, params={"model": ALIAS, "input": "x"}, extra={})
    with pytest.raises(InvalidRequest) as caught:
        adapter.complete(dep, call)
    assert caught.value.code == "unsupported_endpoint" and "Anthropic" in caught.value.message
    assert not wire.calls


# --- OpenAI request → Messages request ------------------------------------------------------------

def test_a_plain_chat(adapter, dep, wire):
    assert sent_body(adapter, dep, wire, chat()) == {
        "model": MODEL, "max_tokens": 4096, "messages": [{"role": "user", "content": "hi"}]}


def test_system_and_developer_messages_are_hoisted_and_joined(adapter, dep, wire):
    messages = [{"role": "system", "content": "You are terse."},
                {"role": "user", "content": "hi"},
                {"role": "developer", "content": [{"type": "text", "text": "Answer in French."}]}]
    body = sent_body(adapter, dep, wire, chat(messages))
    assert body["system"] == "You are terse.\nAnswer in French."
    assert body["messages"] == [{"role": "user", "content": "hi"}]


def test_multi_turn_with_consecutive_turns_of_one_role_merged(adapter, dep, wire):
    messages = [{"role": "user", "content": "one", "name": "alice"},
                {"role": "user", "content": [{"type": "text", "text": "two"}]},
                {"role": "assistant", "content": "three"},
                {"role": "assistant", "content": [{"type": "text", "text": "four"}]},
                {"role": "user", "content": "five"}]
    assert sent_body(adapter, dep, wire, chat(messages))["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "one"}, {"type": "text", "text": "two"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "three"}, {"type": "text", "text": "four"}]},
        {"role": "user", "content": "five"}]


def test_images_as_base64_and_as_urls(adapter, dep, wire):
    messages = [{"role": "user", "content": [
        {"type": "text", "text": "Compare these."},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo=", "detail": "high"}},
        {"type": "image_url", "image_url": {"url": "https://example.test/cat.jpg"}}]}]
    assert sent_body(adapter, dep, wire, chat(messages))["messages"] == [{"role": "user", "content": [
        {"type": "text", "text": "Compare these."},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}},
        {"type": "image", "source": {"type": "url", "url": "https://example.test/cat.jpg"}}]}]


@pytest.mark.parametrize("url", ["ftp://example.test/cat.jpg", "data:text/plain;base64,aGk=", "data:image/png,raw"])
def test_an_image_anthropic_cannot_take_is_a_400_naming_the_part(adapter, dep, wire, url):
    messages = [{"role": "user", "content": [{"type": "text", "text": "x"},
                                             {"type": "image_url", "image_url": {"url": url}}]}]
    with pytest.raises(InvalidRequest) as caught:
        adapter.complete(dep, chat(messages))
    assert caught.value.param == "messages[0].content[1].image_url.url"
    assert not wire.calls


def test_cache_control_on_a_part_reaches_anthropic(adapter, dep, wire):
    """Prompt caching as LiteLLM's clients mark it: `cache_control` on an OpenAI content part."""
    part = {"type": "text", "text": "a long document", "cache_control": {"type": "ephemeral"}}
    assert sent_body(adapter, dep, wire, chat([{"role": "user", "content": [part]}]))["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "a long document", "cache_control": {"type": "ephemeral"}}]}]


def test_legacy_function_messages_are_a_400(adapter, dep, wire):
    with pytest.raises(InvalidRequest) as caught:
        adapter.complete(dep, chat([{"role": "user", "content": "hi"},
                                    {"role": "function", "name": "f", "content": "x"}]))
    assert caught.value.param == "messages[1].role" and "Anthropic" in caught.value.message


def test_audio_parts_are_a_400_naming_the_part(adapter, dep, wire):
    messages = [{"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "AA", "format": "wav"}}]}]
    with pytest.raises(InvalidRequest) as caught:
        adapter.complete(dep, chat(messages))
    assert caught.value.param == "messages[0].content[0].type" and "Anthropic" in caught.value.message


WEATHER_TOOL = cassette("tool-roundtrip")[0]["request"]["body"]["tools"][0]
OPENAI_WEATHER_TOOL = {"type": "function", "function": {
    "name": WEATHER_TOOL["name"], "description": WEATHER_TOOL["description"],
    "parameters": WEATHER_TOOL["input_schema"]}}


def test_the_recorded_tool_round_trip_request_is_rebuilt_exactly(adapter, wire):
    """The second request of the recorded tool round trip, sent as an OpenAI client would send it."""
    recorded = copy.deepcopy(cassette("tool-roundtrip")[1]["request"]["body"])
    tool_use = recorded["messages"][1]["content"][1]
    del tool_use["caller"]   # Anthropic's own annotation, echoed back by its SDK
    messages = [{"role": "user", "content": recorded["messages"][0]["content"]},
                {"role": "assistant", "content": recorded["messages"][1]["content"][0]["text"], "tool_calls": [
                    {"id": tool_use["id"], "type": "function",
                     "function": {"name": "get_weather", "arguments": json.dumps(tool_use["input"])}}]},
                {"role": "tool", "tool_call_id": tool_use["id"],
                 "content": recorded["messages"][2]["content"][0]["content"]}]
    dep = deployment(upstream_model="claude-haiku-4-5")
    assert sent_body(adapter, dep, wire, chat(messages, max_tokens=1024, tools=[OPENAI_WEATHER_TOOL])) == recorded


def test_the_recorded_stream_request_is_rebuilt_exactly(adapter, wire):
    recorded = cassette("stream-after-tool-result")[0]["request"]["body"]
    dep = deployment(upstream_model="claude-haiku-4-5")
    add_stream(wire, sse(start(), *stop()))
    streamed(adapter, dep, chat([{"role": "user", "content": "What is the weather in SF?"}], stream=True,
                                max_completion_tokens=1024, tools=[OPENAI_WEATHER_TOOL]))
    assert json.loads(wire.calls[0].request.body) == recorded


@pytest.mark.parametrize("choice, parallel, expected", [
    ("auto", None, {"type": "auto"}),
    ("required", None, {"type": "any"}),
    ("none", None, {"type": "none"}),
    ({"type": "function", "function": {"name": "get_weather"}}, None, {"type": "tool", "name": "get_weather"}),
    (None, None, None),
    (None, False, {"type": "auto", "disable_parallel_tool_use": True}),
    ("required", False, {"type": "any", "disable_parallel_tool_use": True}),
    ({"type": "function", "function": {"name": "get_weather"}}, False,
     {"type": "tool", "name": "get_weather", "disable_parallel_tool_use": True}),
    ("auto", True, {"type": "auto"}),
    ("none", False, {"type": "none"}),
], ids=["auto", "required", "none", "forced", "unset", "serial", "required-serial", "forced-serial",
        "parallel", "none-serial"])
def test_tools_and_tool_choice(adapter, dep, wire, choice, parallel, expected):
    params = {"tools": [OPENAI_WEATHER_TOOL, {"type": "function", "function": {"name": "now"}}]}
    if choice is not None:
        params["tool_choice"] = choice
    if parallel is not None:
        params["parallel_tool_calls"] = parallel
    body = sent_body(adapter, dep, wire, chat(**params))
    assert body["tools"] == [WEATHER_TOOL, {"name": "now", "input_schema": {"type": "object", "properties": {}}}]
    assert body.get("tool_choice") == expected


def test_strict_tools_and_schemas_without_a_type(adapter, dep, wire):
    tool = {"type": "function", "function": {"name": "f", "strict": True,
                                             "parameters": {"properties": {"a": {"type": "string"}}}}}
    assert sent_body(adapter, dep, wire, chat(tools=[tool]))["tools"] == [
        {"name": "f", "strict": True, "input_schema": {"type": "object", "properties": {"a": {"type": "string"}}}}]


def test_custom_tools_are_a_400(adapter, dep, wire):
    with pytest.raises(InvalidRequest) as caught:
        adapter.complete(dep, chat(tools=[OPENAI_WEATHER_TOOL, {"type": "custom", "custom": {"name": "x"}}]))
    assert caught.value.param == "tools[1].type"


def test_parallel_tool_results_become_one_user_message(adapter, dep, wire):
    calls = [{"id": f"toolu_{i}", "type": "function",
              "function": {"name": "get_weather", "arguments": json.dumps({"location": city})}}
             for i, city in enumerate(["Paris", "Rome"])]
    messages = [{"role": "user", "content": "Weather in Paris and Rome?"},
                {"role": "assistant", "content": None, "tool_calls": calls},
                {"role": "tool", "tool_call_id": "toolu_0", "content": "18C"},
                {"role": "tool", "tool_call_id": "toolu_1", "content": [{"type": "text", "text": "22C"}]},
                {"role": "user", "content": "And tomorrow?"}]
    assert sent_body(adapter, dep, wire, chat(messages, tools=[OPENAI_WEATHER_TOOL]))["messages"][1:] == [
        {"role": "assistant", "content": [
            {"type": "tool_use", "id": "toolu_0", "name": "get_weather", "input": {"location": "Paris"}},
            {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"location": "Rome"}}]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_0", "content": "18C"},
            {"type": "tool_result", "tool_use_id": "toolu_1", "content": "22C"},
            {"type": "text", "text": "And tomorrow?"}]}]


@pytest.mark.parametrize("arguments", ['{"location": ', "[1, 2]", "not json"])
def test_tool_call_arguments_that_are_not_a_json_object_are_a_400_naming_the_path(adapter, dep, wire, arguments):
    messages = [{"role": "user", "content": "hi"},
                {"role": "assistant", "content": "ok", "tool_calls": [
                    {"id": "a", "type": "function", "function": {"name": "f", "arguments": "{}"}},
                    {"id": "b", "type": "function", "function": {"name": "f", "arguments": arguments}}]},
                {"role": "tool", "tool_call_id": "a", "content": "x"}]
    with pytest.raises(InvalidRequest) as caught:
        adapter.complete(dep, chat(messages))
    assert caught.value.status == 400 and caught.value.param == "messages[1].tool_calls[1].function.arguments"
    assert not wire.calls


def test_json_mode_with_a_schema_becomes_output_config(adapter, dep, wire):
    schema = {"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"],
              "additionalProperties": False}
    body = sent_body(adapter, dep, wire, chat(response_format={
        "type": "json_schema", "json_schema": {"name": "reply", "schema": schema, "strict": True}}))
    assert body["output_config"] == {"format": {"type": "json_schema", "schema": schema}}


def test_a_text_response_format_sends_nothing(adapter, dep, wire):
    assert "output_config" not in sent_body(adapter, dep, wire, chat(response_format={"type": "text"}))


@pytest.mark.parametrize("stop, expected", [("END", ["END"]), (["a", "b"], ["a", "b"])])
def test_stop_becomes_stop_sequences(adapter, dep, wire, stop, expected):
    assert sent_body(adapter, dep, wire, chat(stop=stop))["stop_sequences"] == expected


@pytest.mark.parametrize("params, model_max, expected", [
    ({}, None, 4096),
    ({}, 1024, 1024),
    ({"max_tokens": 300}, 1024, 300),
    ({"max_completion_tokens": 200}, None, 200),
    ({"max_completion_tokens": 200, "max_tokens": 300}, None, 200),
], ids=["default", "deployment", "max_tokens", "max_completion_tokens", "max_completion_tokens-wins"])
def test_max_tokens_is_always_sent(wire, params, model_max, expected):
    dep = deployment(max_tokens=model_max)
    adapter = AnthropicAdapter([dep], pool_maxsize=2, redactor=Redactor([KEY]))
    assert sent_body(adapter, dep, wire, chat(**params))["max_tokens"] == expected
    adapter.close()


def test_sampling_and_user(adapter, dep, wire):
    body = sent_body(adapter, dep, wire, chat(temperature=1.7, top_p=0.9, user="user-42", extra={"top_k": 40}))
    assert body["temperature"] == 1          # OpenAI goes to 2, Anthropic to 1
    assert (body["top_p"], body["top_k"], body["metadata"]) == (0.9, 40, {"user_id": "user-42"})
    assert sent_body(adapter, dep, wire, chat(temperature=0.3))["temperature"] == 0.3


def test_safety_identifier_is_the_user_and_tool_settings_without_tools_are_left_out(adapter, dep, wire):
    body = sent_body(adapter, dep, wire, chat(tool_choice="required", parallel_tool_calls=False,
                                              extra={"safety_identifier": "hash-9"}))
    assert body == {"model": MODEL, "max_tokens": 4096, "messages": [{"role": "user", "content": "hi"}],
                    "metadata": {"user_id": "hash-9"}}


def test_the_request_objects_are_not_changed(adapter, dep, wire):
    call = chat([{"role": "user", "content": "a"}, {"role": "user", "content": "b"},
                 {"role": "tool", "tool_call_id": "x", "content": "c"}], tools=[OPENAI_WEATHER_TOOL])
    before = copy.deepcopy(dict(call.params))
    sent_body(adapter, dep, wire, call)
    assert dict(call.params) == before


# --- parameters Anthropic cannot take ---------------------------------------------------------------

UNSUPPORTED = [
    ("n", 2, False), ("logprobs", True, False), ("top_logprobs", 2, False), ("logit_bias", {"50256": -100}, False),
    ("presence_penalty", 0.5, False), ("frequency_penalty", 0.5, False), ("seed", 7, False),
    ("prediction", {"type": "content", "content": "x"}, True),
    ("audio", {"voice": "alloy", "format": "wav"}, True), ("modalities", ["text", "audio"], False),
    ("store", True, False), ("metadata", {"team": "a"}, False), ("service_tier", "flex", True),
    ("functions", [{"name": "f", "parameters": {}}], False), ("function_call", "auto", True),
    ("reasoning_effort", "low", False), ("repetition_penalty", 1.1, True), ("chat_template_kwargs", {}, True),
]


@pytest.mark.parametrize("name, value, is_extra", UNSUPPORTED, ids=[u[0] for u in UNSUPPORTED])
def test_an_unsupported_parameter_is_a_400_naming_it_and_anthropic(adapter, dep, wire, name, value, is_extra):
    call = chat(extra={name: value}) if is_extra else chat(**{name: value})
    with pytest.raises(InvalidRequest) as caught:
        adapter.complete(dep, call)
    error = caught.value
    assert (error.status, error.code, error.param) == (400, "unsupported_parameter", name)
    assert name in error.message and "Anthropic" in error.message
    assert not wire.calls


@pytest.mark.parametrize("name, value, is_extra", UNSUPPORTED, ids=[u[0] for u in UNSUPPORTED])
def test_an_unsupported_parameter_is_left_out_with_drop_params(wire, name, value, is_extra):
    dep = deployment(drop_params=True)
    adapter = AnthropicAdapter([dep], pool_maxsize=2, redactor=Redactor([KEY]))
    call = chat(extra={name: value}) if is_extra else chat(**{name: value})
    assert sent_body(adapter, dep, wire, call) == {
        "model": MODEL, "max_tokens": 4096, "messages": [{"role": "user", "content": "hi"}]}
    adapter.close()


def test_n_of_one_and_null_values_are_fine(adapter, dep, wire):
    body = sent_body(adapter, dep, wire, chat(n=1, seed=None, logprobs=None, extra={"top_k": None}))
    assert body == {"model": MODEL, "max_tokens": 4096, "messages": [{"role": "user", "content": "hi"}]}


# --- Messages answer → OpenAI body --------------------------------------------------------------------

def test_a_plain_answer(adapter, dep, wire):
    body = completion_of(adapter, dep, wire, answer())
    assert body["id"] == "msg_01Answer" and body["model"] == ALIAS and body["object"] == "chat.completion"
    assert body["choices"] == [{"index": 0, "message": {"role": "assistant", "content": "Hello!", "refusal": None},
                                "logprobs": None, "finish_reason": "stop"}]
    assert body["usage"] == {"prompt_tokens": 10, "completion_tokens": 3, "total_tokens": 13}


def test_the_recorded_tool_use_answer(adapter, dep, wire):
    recorded = cassette("tool-roundtrip")[1]["response"]["body"]
    result_body = completion_of(adapter, dep, wire, recorded)
    message = result_body["choices"][0]["message"]
    assert message["content"] == "Now let me check New York."
    assert message["tool_calls"] == [{"id": "toolu_01RWdcDdE8NAFDgZ8F9Xk2K7", "type": "function", "function": {
        "name": "get_weather", "arguments": '{"location":"New York, NY","units":"f"}'}}]
    assert result_body["choices"][0]["finish_reason"] == "tool_calls"
    assert result_body["usage"] == {"prompt_tokens": 834, "completion_tokens": 81, "total_tokens": 915,
                                    "prompt_tokens_details": {"cached_tokens": 0}}


def test_parallel_tool_calls_without_text(adapter, dep, wire):
    content = [{"type": "tool_use", "id": f"toolu_{i}", "name": "get_weather", "input": {"location": city}}
               for i, city in enumerate(["Paris", "Rome"])]
    message = completion_of(adapter, dep, wire, answer(content, "tool_use"))["choices"][0]["message"]
    assert message["content"] is None
    assert [(c["id"], json.loads(c["function"]["arguments"])) for c in message["tool_calls"]] == [
        ("toolu_0", {"location": "Paris"}), ("toolu_1", {"location": "Rome"})]


def test_thinking_blocks_are_left_out(adapter, dep, wire):
    content = [{"type": "thinking", "thinking": "secret musings", "signature": "EqQBCgIYAhIM"},
               {"type": "redacted_thinking", "data": "EmwKAhgBEgy3va3pzix"},
               {"type": "text", "text": "The answer."}]
    body = completion_of(adapter, dep, wire, answer(content))
    assert body["choices"][0]["message"]["content"] == "The answer."
    assert "musings" not in json.dumps(body) and "EqQB" not in json.dumps(body)


def test_json_mode_answer_is_the_text(adapter, dep, wire):
    body = completion_of(adapter, dep, wire, answer([{"type": "text", "text": '{"answer": "42"}'}]))
    assert json.loads(body["choices"][0]["message"]["content"]) == {"answer": "42"}


def test_cache_tokens_count_in_the_prompt(adapter, dep, wire):
    usage = {"input_tokens": 50, "cache_creation_input_tokens": 1000, "cache_read_input_tokens": 2000,
             "output_tokens": 30}
    wire.add(responses.POST, URL, json=answer(usage=usage))
    result = adapter.complete(dep, chat())
    assert result.body["usage"] == {"prompt_tokens": 3050, "completion_tokens": 30, "total_tokens": 3080,
                                    "prompt_tokens_details": {"cached_tokens": 2000}}
    assert (result.usage.prompt_tokens, result.usage.completion_tokens, result.usage.total_tokens) == (3050, 30, 3080)


@pytest.mark.parametrize("stop_reason, finish", [
    ("end_turn", "stop"), ("stop_sequence", "stop"), ("pause_turn", "stop"), ("max_tokens", "length"),
    ("model_context_window_exceeded", "length"), ("tool_use", "tool_calls"), ("refusal", "content_filter"),
    ("a_reason_from_the_future", "stop"), (None, "stop")])
def test_stop_reasons(adapter, dep, wire, stop_reason, finish):
    assert completion_of(adapter, dep, wire, answer(stop_reason=stop_reason))["choices"][0]["finish_reason"] == finish


@pytest.mark.parametrize("body", [{"type": "message", "content": "text"}, {"hello": "world"}, {"type": "completion"}])
def test_an_answer_that_is_not_a_message_is_a_bad_upstream_response(adapter, dep, wire, body):
    wire.add(responses.POST, URL, json=body)
    with pytest.raises(BadUpstreamResponse):
        adapter.complete(dep, chat())


# --- streams ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("size", [7, 37, 4096])
@pytest.mark.parametrize("include_usage", [True, False])
def test_the_recorded_tool_use_stream(adapter, dep, wire, size, include_usage):
    raw = (FIXTURES / "messages-stream-tool-use.sse").read_bytes()
    add_stream(wire, raw, size)
    chunks, usage = streamed(adapter, dep, chat(stream=True, include_usage=include_usage))
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert sum("role" in c["choices"][0]["delta"] for c in chunks if c["choices"]) == 1
    assert {c["id"] for c in chunks} == {"msg_019Q1hrJbZG26Fb9BQhrkHEr"} and {c["model"] for c in chunks} == {ALIAS}
    assert contents(chunks) == "I'll check the current weather in Paris for you."
    first = tool_deltas(chunks)[0]
    assert first == {"index": 0, "id": "toolu_01NRLabsLyVHZPKxbKvkfSMn", "type": "function",
                     "function": {"name": "get_weather", "arguments": ""}}
    recorded = "".join(json.loads(line[6:])["delta"]["partial_json"] for line in raw.decode().splitlines()
                       if line.startswith("data: ") and "input_json_delta" in line)
    assert arguments_by_index(chunks) == {0: recorded} and json.loads(recorded) == {"location": "Paris"}
    assert finish_reasons(chunks) == ["tool_calls"]
    usage_chunks = [c for c in chunks if not c["choices"]]
    expected = {"prompt_tokens": 377, "completion_tokens": 65, "total_tokens": 442,
                "prompt_tokens_details": {"cached_tokens": 0}}
    assert usage_chunks == ([chunks[-1]] if include_usage else [])
    if include_usage:
        assert chunks[-1]["usage"] == expected
    assert (usage.prompt_tokens, usage.completion_tokens) == (377, 65)   # the books get it either way


@pytest.mark.parametrize("size", [7, 37])
def test_the_recorded_text_stream_loses_no_text(adapter, dep, wire, size):
    add_stream(wire, (FIXTURES / "messages-stream-text.sse").read_bytes(), size)
    chunks, usage = streamed(adapter, dep, chat(stream=True, include_usage=True))
    assert [c["choices"][0]["delta"].get("content") for c in chunks if c["choices"]][1:4] == ["Hello", " there", "!"]
    assert contents(chunks) == "Hello there!"
    assert finish_reasons(chunks) == ["stop"]
    assert chunks[-1]["usage"] == {"prompt_tokens": 11, "completion_tokens": 6, "total_tokens": 17}


@pytest.mark.parametrize("size", [7, 37])
def test_the_recorded_cassette_streams_with_padded_json(adapter, dep, wire, size):
    """The recorded bodies carry spaces after each event's JSON: a parser, not string matching, reads them."""
    first, second = (entry["response"]["body"].encode() for entry in cassette("stream-after-tool-result"))
    add_stream(wire, first, size)
    chunks, _ = streamed(adapter, dep, chat(stream=True, include_usage=True))
    assert arguments_by_index(chunks) == {0: '{"location": "San Francisco, CA", "units": "f"}'}
    assert tool_deltas(chunks)[0]["id"] == "toolu_018acGYLtfR52q9yDbWaEdQZ"
    assert finish_reasons(chunks) == ["tool_calls"] and chunks[-1]["usage"]["completion_tokens"] == 74
    add_stream(wire, second, size)
    chunks, _ = streamed(adapter, dep, chat(stream=True, include_usage=True))
    assert contents(chunks).startswith("The weather in San Francisco, CA is currently:\n- **Temperature:** 68°F")
    assert contents(chunks).endswith("It's a nice sunny day!")
    assert chunks[-1]["usage"] == {"prompt_tokens": 770, "completion_tokens": 38, "total_tokens": 808,
                                   "prompt_tokens_details": {"cached_tokens": 0}}


def test_parallel_tool_calls_get_their_own_indexes_from_zero(adapter, dep, wire):
    arguments = ['{"location": "Paris"}', '{"location": "Rome"}']
    events = [start(), block_start(0, {"type": "text", "text": ""}), text(0, "Checking both.")]
    for n, args in enumerate(arguments):
        index = n + 1
        events.append(block_start(index, {"type": "tool_use", "id": f"toolu_{n}", "name": "get_weather",
                                          "input": {}}))
        events += [delta(index, type="input_json_delta", partial_json=args[i:i + 4]) for i in range(0, len(args), 4)]
    add_stream(wire, sse(*events, *stop("tool_use")), 7)
    chunks, _ = streamed(adapter, dep, chat(stream=True))
    assert arguments_by_index(chunks) == {0: arguments[0], 1: arguments[1]}
    assert [(c["index"], c["id"]) for c in tool_deltas(chunks) if "id" in c] == [(0, "toolu_0"), (1, "toolu_1")]
    assert finish_reasons(chunks) == ["tool_calls"]


def test_thinking_and_signature_deltas_are_dropped(adapter, dep, wire):
    events = [start(), block_start(0, {"type": "thinking", "thinking": ""}),
              delta(0, type="thinking_delta", thinking="private musing"),
              delta(0, type="signature_delta", signature="EqQBCgIYAhIM"),
              block_start(1, {"type": "text", "text": ""}), text(1, "Public answer.")]
    add_stream(wire, sse(*events, *stop()), 37)
    chunks, _ = streamed(adapter, dep, chat(stream=True))
    assert contents(chunks) == "Public answer."
    assert "musing" not in json.dumps(chunks) and "EqQB" not in json.dumps(chunks)


def test_cumulative_output_tokens_and_cache_tokens(adapter, dep, wire):
    events = [start({"input_tokens": 4, "cache_creation_input_tokens": 100, "cache_read_input_tokens": 900,
                     "output_tokens": 1}),
              block_start(0, {"type": "text", "text": ""}), text(0, "a"),
              ("message_delta", {"type": "message_delta", "delta": {"stop_reason": None}, "usage": {"output_tokens": 5}}),
              text(0, "b"), *stop("max_tokens", output_tokens=12)]
    add_stream(wire, sse(*events), 37)
    chunks, usage = streamed(adapter, dep, chat(stream=True, include_usage=True))
    assert finish_reasons(chunks) == ["length"]
    assert chunks[-1]["usage"] == {"prompt_tokens": 1004, "completion_tokens": 12, "total_tokens": 1016,
                                   "prompt_tokens_details": {"cached_tokens": 900}}
    assert usage.total_tokens == 1016


def test_events_without_an_event_line_are_read_by_their_type(adapter, dep, wire):
    raw = sse(start(), block_start(0, {"type": "text", "text": ""}), text(0, "plain"), *stop())
    add_stream(wire, b"\n".join(line for line in raw.split(b"\n") if not line.startswith(b"event:")), 7)
    chunks, _ = streamed(adapter, dep, chat(stream=True))
    assert contents(chunks) == "plain" and finish_reasons(chunks) == ["stop"]


def test_an_error_event_mid_stream_ends_it_with_the_error(adapter, dep, wire):
    events = [start(), block_start(0, {"type": "text", "text": ""}), text(0, "Half an ans"),
              ("error", {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})]
    add_stream(wire, sse(*events), 7)
    stream = adapter.stream(dep, chat(stream=True))
    received = []
    with pytest.raises(UpstreamFailed) as caught:
        for payload in stream:
            received.append(payload)
    stream.close()
    assert b"Half an ans" in b"".join(received)
    assert caught.value.retryable and caught.value.code == "upstream_error"
    assert "overloaded (HTTP 529" in caught.value.message   # the status the event's type stands for


def test_a_stream_without_message_delta_still_finishes_once(adapter, dep, wire):
    add_stream(wire, sse(start(), block_start(0, {"type": "text", "text": ""}), text(0, "short"),
                         ("message_stop", {"type": "message_stop"})), 7)
    chunks, _ = streamed(adapter, dep, chat(stream=True, include_usage=True))
    assert contents(chunks) == "short" and finish_reasons(chunks) == ["stop"]
    assert chunks[-1]["usage"] == {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6}


@pytest.mark.parametrize("error_type, expected", [
    ("overloaded_error", UpstreamFailed), ("rate_limit_error", UpstreamRateLimited), ("api_error", UpstreamFailed),
    ("timeout_error", UpstreamTimeout), ("authentication_error", UpstreamAuthFailed),
    ("invalid_request_error", UpstreamClientError)])
def test_an_error_event_before_any_content_fails_the_call_so_the_router_can_retry(adapter, dep, wire,
                                                                                  error_type, expected):
    add_stream(wire, sse(start(), ("error", {"type": "error", "error": {"type": error_type, "message": "no"}})), 7)
    with pytest.raises(expected) as caught:
        adapter.stream(dep, chat(stream=True))
    assert type(caught.value) is expected


def test_a_stream_cut_before_message_stop_is_a_failure(adapter, dep, wire):
    add_stream(wire, sse(start(), block_start(0, {"type": "text", "text": ""}), text(0, "cut")), 7)
    stream = adapter.stream(dep, chat(stream=True))
    with pytest.raises(UpstreamFailed, match="ended before it was complete"):
        b"".join(stream)
    stream.close()


def test_a_malformed_event_is_a_bad_upstream_response(adapter, dep, wire):
    add_stream(wire, sse(start()) + b"event: content_block_delta\ndata: {not json\n\n", 7)
    with pytest.raises(BadUpstreamResponse):
        adapter.stream(dep, chat(stream=True))


def test_an_error_body_sent_with_200_instead_of_a_stream(adapter, dep, wire):
    wire.add(responses.POST, URL, status=200, json={"type": "error", "error": {"type": "rate_limit_error",
                                                                                 "message": "slow down"}},
             headers={"retry-after": "7"})
    with pytest.raises(UpstreamRateLimited) as caught:
        adapter.stream(dep, chat(stream=True))
    assert caught.value.retry_after == 7


# --- Anthropic's errors → the contract's rows --------------------------------------------------------------

def error_answer(wire, status, error_type, message, headers=None):
    wire.add(responses.POST, URL, status=status, headers=headers or {},
             json={"type": "error", "error": {"type": error_type, "message": message}, "request_id": "req_011X"})


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
@pytest.mark.parametrize("status, error_type, expected, client_status", [
    (401, "authentication_error", UpstreamAuthFailed, 502),
    (403, "permission_error", UpstreamAuthFailed, 502),
    (429, "rate_limit_error", UpstreamRateLimited, 429),
    (529, "overloaded_error", UpstreamFailed, 502),
    (500, "api_error", UpstreamFailed, 502),
    (504, "timeout_error", UpstreamTimeout, 504),
])
def test_error_statuses(adapter, dep, wire, stream, status, error_type, expected, client_status):
    error_answer(wire, status, error_type, f"internal detail at /srv/app.py with key {KEY}",
                 {"retry-after": "3"} if status in (429, 529) else {})
    with pytest.raises(GatewayError) as caught:
        adapter.stream(dep, chat(stream=True)) if stream else adapter.complete(dep, chat())
    error = caught.value
    assert type(error) is expected and error.status == client_status
    assert KEY not in json.dumps(error.body())
    if status != 429:   # a 429's message is the upstream's (redacted); others never echo upstream text
        assert "/srv/app.py" not in error.message
    if status in (429, 529):
        assert error.retryable and error.retry_after == 3


@pytest.mark.parametrize("message", [
    "prompt is too long: 208310 tokens > 200000 maximum",
    "input length and `max_tokens` exceed context limit: 197202 + 21333 > 200000, decrease input length or "
    "`max_tokens` and try again",
])
def test_a_prompt_over_the_context_window_is_context_length_exceeded(adapter, dep, wire, message):
    error_answer(wire, 400, "invalid_request_error", message)
    with pytest.raises(ContextLengthExceeded) as caught:
        adapter.complete(dep, chat())
    assert caught.value.body()["error"] == {"message": message, "type": "invalid_request_error",
                                            "param": "messages", "code": "context_length_exceeded"}


def test_the_recorded_400_is_passed_through_with_its_message(adapter, dep, wire):
    recorded = cassette("error-400")[1]["response"]
    wire.add(responses.POST, URL, status=400, json=recorded["body"], headers={"x-should-retry": "false"})
    with pytest.raises(UpstreamClientError) as caught:
        adapter.complete(dep, chat())
    error = caught.value
    assert type(error) is UpstreamClientError and (error.status, error.type) == (400, "invalid_request_error")
    assert error.message == recorded["body"]["error"]["message"] and not error.retryable


def test_not_found_is_a_404_with_the_message(adapter, dep, wire):
    error_answer(wire, 404, "not_found_error", "model: claude-nonexistent")
    with pytest.raises(UpstreamClientError) as caught:
        adapter.complete(dep, chat())
    assert (caught.value.status, caught.value.message) == (404, "model: claude-nonexistent")


def test_a_400_echoing_the_key_is_redacted(adapter, dep, wire):
    error_answer(wire, 400, "invalid_request_error", f"bad header x-api-key: {KEY}")
    with pytest.raises(UpstreamClientError) as caught:
        adapter.complete(dep, chat())
    assert KEY not in caught.value.message


@pytest.mark.parametrize("status, expected", [(529, UpstreamFailed), (502, UpstreamFailed), (429, UpstreamRateLimited)])
def test_an_error_without_a_json_body_is_decided_by_its_status(adapter, dep, wire, status, expected):
    wire.add(responses.POST, URL, status=status, body=b"<html>Bad gateway</html>", content_type="text/html")
    with pytest.raises(expected) as caught:
        adapter.complete(dep, chat())
    assert caught.value.retryable


# --- JSON mode: a forced tool whose input is the answer ------------------------------------------------

JSON_MODE = {"type": "json_object"}


def test_json_mode_forces_one_tool_whose_input_is_any_json_object(adapter, dep, wire):
    body = sent_body(adapter, dep, wire, chat(response_format=JSON_MODE))
    assert body["tools"] == [{"name": "json_answer", "description": "Give the whole answer as one JSON object.",
                              "input_schema": {"type": "object"}}]
    assert body["tool_choice"] == {"type": "tool", "name": "json_answer"} and "output_config" not in body


def test_json_mode_answers_the_tools_input_as_text(adapter, dep, wire):
    upstream = answer(content=[{"type": "tool_use", "id": "toolu_01J", "name": "json_answer",
                                "input": {"city": "Paris", "sunny": True}}], stop_reason="tool_use")
    result = completion_of(adapter, dep, wire, upstream, chat(response_format=JSON_MODE))
    message = result["choices"][0]["message"]
    assert json.loads(message["content"]) == {"city": "Paris", "sunny": True} and "tool_calls" not in message
    assert result["choices"][0]["finish_reason"] == "stop"


def test_json_mode_streams_the_tools_input_as_text_deltas(adapter, dep, wire):
    pieces = ['{"ci', 'ty": "Par', 'is"}']
    add_stream(wire, sse(
        ("message_start", {"type": "message_start", "message": {"id": "msg_J", "type": "message", "role": "assistant",
                                                                "content": [], "usage": {"input_tokens": 9}}}),
        ("content_block_start", {"type": "content_block_start", "index": 0, "content_block": {
            "type": "tool_use", "id": "toolu_01J", "name": "json_answer", "input": {}}}),
        *(("content_block_delta", {"type": "content_block_delta", "index": 0,
                                   "delta": {"type": "input_json_delta", "partial_json": p}}) for p in pieces),
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "tool_use"},
                           "usage": {"output_tokens": 8}}),
        ("message_stop", {"type": "message_stop"})))
    chunks, usage = streamed(adapter, dep, chat(stream=True, response_format=JSON_MODE))
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    assert "".join(d.get("content") or "" for d in deltas) == "".join(pieces)
    assert not any("tool_calls" in d for d in deltas)
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == "stop"
    assert usage.completion_tokens == 8


def test_json_mode_with_tools_of_the_clients_own_is_a_400(adapter, dep, wire):
    with pytest.raises(InvalidRequest) as caught:
        adapter.complete(dep, chat(response_format=JSON_MODE, tools=[OPENAI_WEATHER_TOOL]))
    assert caught.value.param == "response_format" and "json_schema" in caught.value.message
