"""gateway/providers/bedrock.py against a faked wire (`responses`): Converse bodies out, answers, streams and errors in."""
from __future__ import annotations

import hashlib
import hmac
import json
from pathlib import Path
from urllib.parse import quote, urlsplit

import botocore.session
import pytest
import responses
from botocore.eventstream import EventStreamBuffer

from gateway.api.schemas import ChatCompletionSchema
from gateway.errors import (BadUpstreamResponse, ContextLengthExceeded, GatewayError, InvalidRequest,
                            UpstreamAuthFailed, UpstreamClientError, UpstreamFailed, UpstreamRateLimited,
                            UpstreamTimeout)
from gateway.providers.bedrock import BedrockAdapter
from gateway.redact import Redactor
from gateway.types import Deployment, ModelRequest
from tests.functional.fake_bedrock import event, exception, frame
from tests.functional.openapi_schemas import validate
from tests.unit.network_pieces import in_pieces, split

FIXTURES = Path(__file__).resolve().parents[1] / "reference" / "fixtures" / "bedrock"
MODEL_ID = "anthropic.claude-3-haiku-20240307-v1:0"
BASE = "https://bedrock-runtime.us-east-1.amazonaws.com"
CONVERSE = f"{BASE}/model/anthropic.claude-3-haiku-20240307-v1%3A0/converse"
STREAM = f"{BASE}/model/anthropic.claude-3-haiku-20240307-v1%3A0/converse-stream"
ACCESS_KEY, SECRET_KEY, SESSION_TOKEN = "AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", "FwoGZXIvYXdzEXAMPLE=="
API_KEY = "ABSKQmVkcm9ja0FQSUtleS1FWEFNUExF"
ALIAS = "claude"
AWS = {"aws_access_key_id": ACCESS_KEY, "aws_secret_access_key": SECRET_KEY, "aws_region_name": "us-east-1"}
EVENT_STREAM = "application/vnd.amazon.eventstream"
KNOWN = frozenset(ChatCompletionSchema().fields)
PIXEL = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="


def deployment(**kw) -> Deployment:
    fields = dict(id="dep1", model_name=ALIAS, provider="bedrock", upstream_model=MODEL_ID, aws=AWS,
                  timeout=20.0, stream_timeout=7.0)
    fields.update(kw)
    return Deployment(**fields)


def adapter_for(dep: Deployment) -> BedrockAdapter:
    return BedrockAdapter([dep], pool_maxsize=2, redactor=Redactor([SECRET_KEY, SESSION_TOKEN, API_KEY]))


def chat(messages=None, *, stream=False, include_usage=False, extra=None, **fields) -> ModelRequest:
    """A call as the API layer makes it: schema fields in params, anything else in extra."""
    body = {"model": ALIAS, "messages": messages or [{"role": "user", "content": "hi"}], **fields, **(extra or {})}
    if stream:
        body["stream"] = True
    return ModelRequest(endpoint="chat/completions", model=ALIAS,
                        params={k: v for k, v in body.items() if k in KNOWN},
                        extra={k: v for k, v in body.items() if k not in KNOWN}, stream=stream,
                        include_usage=include_usage, request_id="req-1")


@pytest.fixture
def dep():
    return deployment()


@pytest.fixture
def adapter(dep):
    adapter = adapter_for(dep)
    yield adapter
    adapter.close()


@pytest.fixture
def wire():
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        yield mock


def answer(*blocks, stop="end_turn", usage=None) -> dict:
    return {"output": {"message": {"role": "assistant", "content": list(blocks)}}, "stopReason": stop,
            "usage": usage or {"inputTokens": 12, "outputTokens": 5, "totalTokens": 17}, "metrics": {"latencyMs": 9}}


def sent_body(adapter, dep, wire, request) -> dict:
    """The Converse body the adapter sends for `request`."""
    wire.add(responses.POST, CONVERSE, json=answer({"text": "ok"}))
    adapter.complete(dep, request)
    return json.loads(wire.calls[-1].request.body)


# --- the request: URL, signature, auth ---------------------------------------------------------------

def test_plain_chat_goes_to_converse_signed_with_sigv4(adapter, dep, wire):
    wire.add(responses.POST, CONVERSE, json=answer({"text": "ok"}))
    adapter.complete(dep, chat())
    request = wire.calls[0].request
    assert request.url == CONVERSE
    assert json.loads(request.body) == {"messages": [{"role": "user", "content": [{"text": "hi"}]}]}
    headers = request.headers
    assert set(headers) == {"Content-Type", "Accept", "Accept-Encoding", "User-Agent", "Content-Length",
                            "X-Request-Id", "X-Amz-Date", "Authorization"}
    assert (headers["Content-Type"], headers["Accept"], headers["X-Request-Id"]) == ("application/json", "*/*", "req-1")
    stamp = headers["X-Amz-Date"]
    assert headers["Authorization"].startswith(
        f"AWS4-HMAC-SHA256 Credential={ACCESS_KEY}/{stamp[:8]}/us-east-1/bedrock/aws4_request, "
        "SignedHeaders=content-type;host;x-amz-date, Signature=")
    assert "X-Amz-Security-Token" not in headers


def independent_signature(request, secret: str, region: str) -> tuple[str, str]:
    """SigV4 as AWS documents it, written out here without botocore: (canonical request, signature)."""
    parts = urlsplit(request.url)
    names = request.headers["Authorization"].split("SignedHeaders=")[1].split(",")[0].split(";")
    values = {**{k.lower(): v for k, v in request.headers.items()}, "host": parts.netloc}
    stamp = values["x-amz-date"]
    canonical = "\n".join([
        "POST", quote(parts.path, safe="/~"), parts.query,       # non-S3: the path is encoded once more
        "".join(f"{name}:{' '.join(values[name].split())}\n" for name in names), ";".join(names),
        hashlib.sha256(request.body).hexdigest()])
    scope = f"{stamp[:8]}/{region}/bedrock/aws4_request"
    to_sign = "\n".join(["AWS4-HMAC-SHA256", stamp, scope, hashlib.sha256(canonical.encode()).hexdigest()])
    key = ("AWS4" + secret).encode()
    for part in (stamp[:8], region, "bedrock", "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return canonical, hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()


@pytest.mark.parametrize("token", [None, SESSION_TOKEN], ids=["access-keys", "session-token"])
def test_the_signature_is_what_aws_computes_over_the_double_encoded_path(wire, token):
    dep = deployment(aws={**AWS, "aws_session_token": token} if token else AWS)
    wire.add(responses.POST, CONVERSE, json=answer({"text": "ok"}))
    adapter_for(dep).complete(dep, chat())
    request = wire.calls[0].request
    canonical, signature = independent_signature(request, SECRET_KEY, "us-east-1")
    assert "\n/model/anthropic.claude-3-haiku-20240307-v1%253A0/converse\n" in canonical
    assert request.headers["Authorization"].endswith(f"Signature={signature}")
    if token:
        assert request.headers["X-Amz-Security-Token"] == token
        assert "SignedHeaders=content-type;host;x-amz-date;x-amz-security-token," in request.headers["Authorization"]


@pytest.mark.parametrize("model_id", [
    MODEL_ID, "us.anthropic.claude-3-5-sonnet-20241022-v2:0",
    "arn:aws:bedrock:us-east-1:123456789012:inference-profile/us.anthropic.claude-3-haiku-20240307-v1:0"])
def test_the_model_url_is_the_one_botocore_itself_builds(wire, model_id):
    session = botocore.session.get_session()
    client = session.create_client("bedrock-runtime", region_name="us-east-1", aws_access_key_id=ACCESS_KEY,
                                   aws_secret_access_key=SECRET_KEY)
    seen = {}

    class Sent(Exception):
        pass

    def before_send(request, **kwargs):
        seen["url"] = request.url
        raise Sent()

    for operation in ("Converse", "ConverseStream"):
        client.meta.events.register(f"before-send.bedrock-runtime.{operation}", before_send)
    dep = deployment(upstream_model=model_id)
    adapter = adapter_for(dep)
    for operation, stream in (("converse", False), ("converse_stream", True)):
        with pytest.raises(Sent):
            getattr(client, operation)(modelId=model_id, messages=[{"role": "user", "content": [{"text": "hi"}]}])
        assert adapter._upstreams[dep.id].urls[("chat/completions", stream)] == seen["url"]


def test_api_base_replaces_the_regional_endpoint(wire):
    dep = deployment(api_base="https://vpce-0abc.bedrock-runtime.us-east-1.vpce.amazonaws.com")
    url = f"{dep.api_base}/model/anthropic.claude-3-haiku-20240307-v1%3A0/converse"
    wire.add(responses.POST, url, json=answer({"text": "ok"}))
    adapter_for(dep).complete(dep, chat())
    assert wire.calls[0].request.url == url


def test_a_bedrock_api_key_is_sent_as_a_bearer_token_unsigned(wire):
    dep = deployment(aws={"aws_region_name": "us-east-1"}, api_key=API_KEY)
    wire.add(responses.POST, CONVERSE, json=answer({"text": "ok"}))
    adapter_for(dep).complete(dep, chat())
    headers = wire.calls[0].request.headers
    assert headers["Authorization"] == f"Bearer {API_KEY}"
    assert "X-Amz-Date" not in headers


def test_credentials_live_only_in_the_per_request_auth(adapter, dep, wire):
    upstream = adapter._upstreams[dep.id]
    shown = repr(upstream) + repr(upstream.headers)
    assert SECRET_KEY not in shown and ACCESS_KEY not in shown and "Authorization" not in upstream.headers
    wire.add(responses.POST, CONVERSE, json=answer({"text": "ok"}))
    adapter.complete(dep, chat())
    adapter.complete(dep, chat())
    assert "Authorization" not in upstream.headers and "X-Amz-Date" not in upstream.headers
    assert all(SECRET_KEY not in str(call.request.headers) for call in wire.calls)


# --- OpenAI request → Converse body -----------------------------------------------------------------

def test_system_and_developer_messages_are_hoisted(adapter, dep, wire):
    body = sent_body(adapter, dep, wire, chat([
        {"role": "system", "content": "You are terse."}, {"role": "developer", "content": [
            {"type": "text", "text": "Answer in French."}]}, {"role": "user", "content": "Hello"}]))
    assert body == {"system": [{"text": "You are terse."}, {"text": "Answer in French."}],
                    "messages": [{"role": "user", "content": [{"text": "Hello"}]}]}


def test_multi_turn_alternates_and_merges_consecutive_turns(adapter, dep, wire):
    body = sent_body(adapter, dep, wire, chat([
        {"role": "user", "content": "one"}, {"role": "user", "content": [{"type": "text", "text": "two"}]},
        {"role": "assistant", "content": "three"}, {"role": "user", "content": "four"}]))
    assert body["messages"] == [
        {"role": "user", "content": [{"text": "one"}, {"text": "two"}]},
        {"role": "assistant", "content": [{"text": "three"}]},
        {"role": "user", "content": [{"text": "four"}]}]


@pytest.mark.parametrize("media, fmt", [("png", "png"), ("jpeg", "jpeg"), ("gif", "gif"), ("webp", "webp")])
def test_a_base64_image_goes_as_bytes(adapter, dep, wire, media, fmt):
    body = sent_body(adapter, dep, wire, chat([{"role": "user", "content": [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": f"data:image/{media};base64,{PIXEL}", "detail": "low"}}]}]))
    assert body["messages"] == [{"role": "user", "content": [
        {"text": "What is this?"}, {"image": {"format": fmt, "source": {"bytes": PIXEL}}}]}]


@pytest.mark.parametrize("url, message", [
    ("https://example.com/cat.png", "image URLs are not supported by Bedrock"),
    ("data:image/bmp;base64,Qk0=", "images of type 'image/bmp' are not supported by Bedrock"),
    ("data:image/png,notbase64", "an image data URL must be")])
def test_images_bedrock_cannot_take_are_a_400_naming_the_part(adapter, dep, wire, url, message):
    with pytest.raises(InvalidRequest) as info:
        adapter.complete(dep, chat([{"role": "user", "content": [
            {"type": "text", "text": "x"}, {"type": "image_url", "image_url": {"url": url}}]}]))
    assert info.value.status == 400 and info.value.param == "messages[0].content[1].image_url.url"
    assert message in info.value.message
    assert not wire.calls


def test_other_content_parts_are_a_400(adapter, dep, wire):
    with pytest.raises(InvalidRequest) as info:
        adapter.complete(dep, chat([{"role": "user", "content": [
            {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}]}]))
    assert info.value.param == "messages[0].content[0].type" and "Bedrock" in info.value.message


WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Weather in a city.",
                                            "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                           "required": ["city"]}}}
WEATHER_SPEC = {"toolSpec": {"name": "get_weather", "description": "Weather in a city.", "inputSchema": {
    "json": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}}
TIME = {"type": "function", "function": {"name": "get_time"}}
TIME_SPEC = {"toolSpec": {"name": "get_time", "inputSchema": {"json": {"type": "object", "properties": {}}}}}


@pytest.mark.parametrize("choice, expected", [
    (None, None), ("auto", {"auto": {}}), ("required", {"any": {}}),
    ({"type": "function", "function": {"name": "get_time"}}, {"tool": {"name": "get_time"}})])
def test_tools_and_tool_choice(adapter, dep, wire, choice, expected):
    extra = {} if choice is None else {"tool_choice": choice}
    body = sent_body(adapter, dep, wire, chat(tools=[WEATHER, TIME], **extra))
    config = {"tools": [WEATHER_SPEC, TIME_SPEC]}
    if expected:
        config["toolChoice"] = expected
    assert body["toolConfig"] == config


def test_tool_choice_none_leaves_the_tools_out(adapter, dep, wire):
    body = sent_body(adapter, dep, wire, chat(tools=[WEATHER], tool_choice="none"))
    assert "toolConfig" not in body


def test_tool_choice_none_keeps_the_tools_when_the_history_has_tool_blocks(adapter, dep, wire):
    """Bedrock refuses toolUse/toolResult blocks without a toolConfig; Converse has no "none" choice."""
    body = sent_body(adapter, dep, wire, chat(HISTORY, tools=[WEATHER], tool_choice="none"))
    assert body["toolConfig"] == {"tools": [WEATHER_SPEC]}


HISTORY = [
    {"role": "user", "content": "Weather in Paris and Rome?"},
    {"role": "assistant", "content": "Checking both.", "tool_calls": [
        {"id": "tooluse_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
        {"id": "tooluse_2", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Rome"}'}}]},
    {"role": "tool", "tool_call_id": "tooluse_1", "content": "Sunny"},
    {"role": "tool", "tool_call_id": "tooluse_2", "content": [{"type": "text", "text": "Rain"}]},
    {"role": "user", "content": "Thanks. Which is warmer?"}]


def test_parallel_tool_calls_and_their_results_become_one_turn_each(adapter, dep, wire):
    body = sent_body(adapter, dep, wire, chat(HISTORY, tools=[WEATHER]))
    assert body["messages"] == [
        {"role": "user", "content": [{"text": "Weather in Paris and Rome?"}]},
        {"role": "assistant", "content": [
            {"text": "Checking both."},
            {"toolUse": {"toolUseId": "tooluse_1", "name": "get_weather", "input": {"city": "Paris"}}},
            {"toolUse": {"toolUseId": "tooluse_2", "name": "get_weather", "input": {"city": "Rome"}}}]},
        {"role": "user", "content": [
            {"toolResult": {"toolUseId": "tooluse_1", "content": [{"text": "Sunny"}]}},
            {"toolResult": {"toolUseId": "tooluse_2", "content": [{"text": "Rain"}]}},
            {"text": "Thanks. Which is warmer?"}]}]


def test_an_assistant_turn_with_only_tool_calls_has_no_empty_text(adapter, dep, wire):
    body = sent_body(adapter, dep, wire, chat([HISTORY[0], {**HISTORY[1], "content": None}, *HISTORY[2:4]],
                                              tools=[WEATHER]))
    assert [list(block) for block in body["messages"][1]["content"]] == [["toolUse"], ["toolUse"]]


@pytest.mark.parametrize("arguments", ["{not json", "[1, 2]", '"city"'])
def test_tool_call_arguments_that_are_not_a_json_object_are_a_400(adapter, dep, wire, arguments):
    history = [HISTORY[0], {"role": "assistant", "content": None, "tool_calls": [
        {"id": "t", "type": "function", "function": {"name": "get_weather", "arguments": arguments}}]}]
    with pytest.raises(InvalidRequest) as info:
        adapter.complete(dep, chat(history, tools=[WEATHER]))
    assert info.value.param == "messages[1].tool_calls[0].function.arguments"
    assert not wire.calls


def test_json_schema_response_format_goes_as_output_config_with_the_schema_as_a_string(adapter, dep, wire):
    schema = {"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"]}
    body = sent_body(adapter, dep, wire, chat(response_format={"type": "json_schema", "json_schema": {
        "name": "reply", "description": "The reply.", "schema": schema, "strict": True}}))
    text_format = body["outputConfig"]["textFormat"]
    assert text_format["type"] == "json_schema"
    definition = text_format["structure"]["jsonSchema"]
    assert isinstance(definition["schema"], str) and json.loads(definition["schema"]) == schema
    assert definition["name"] == "reply" and definition["description"] == "The reply."


def test_json_mode_forces_one_tool_whose_input_is_any_json_object(adapter, dep, wire):
    body = sent_body(adapter, dep, wire, chat(response_format={"type": "json_object"}))
    assert body["toolConfig"] == {
        "tools": [{"toolSpec": {"name": "json_answer", "description": "Give the whole answer as one JSON object.",
                                "inputSchema": {"json": {"type": "object"}}}}],
        "toolChoice": {"tool": {"name": "json_answer"}}}
    assert "outputConfig" not in body


def test_json_mode_answers_the_tools_input_as_text(adapter, dep, wire):
    wire.add(responses.POST, CONVERSE, json=answer(
        {"toolUse": {"toolUseId": "tooluse_J", "name": "json_answer", "input": {"city": "Paris"}}}, stop="tool_use"))
    result = adapter.complete(dep, chat(response_format={"type": "json_object"})).body
    validate("CreateChatCompletionResponse", result)
    message = result["choices"][0]["message"]
    assert json.loads(message["content"]) == {"city": "Paris"} and "tool_calls" not in message
    assert result["choices"][0]["finish_reason"] == "stop"


def test_json_mode_streams_the_tools_input_as_text_deltas(adapter, dep, wire):
    pieces = ['{"ci', 'ty": "Pa', 'ris"}']
    add_stream(wire, b"".join([
        event("messageStart", {"role": "assistant"}),
        event("contentBlockStart", {"contentBlockIndex": 0,
                                    "start": {"toolUse": {"toolUseId": "tooluse_J", "name": "json_answer"}}}),
        *(event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"toolUse": {"input": p}}}) for p in pieces),
        event("contentBlockStop", {"contentBlockIndex": 0}),
        event("messageStop", {"stopReason": "tool_use"}),
        event("metadata", {"usage": {"inputTokens": 5, "outputTokens": 9, "totalTokens": 14}, "metrics": {}})]))
    chunks, _, error = read_stream(adapter.stream(dep, chat(stream=True, response_format={"type": "json_object"})))
    assert error is None
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    assert "".join(d.get("content") or "" for d in deltas) == "".join(pieces)
    assert not any("tool_calls" in d for d in deltas)
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == "stop"


def test_json_mode_with_tools_of_the_clients_own_is_a_400(adapter, dep, wire):
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    with pytest.raises(InvalidRequest) as info:
        adapter.complete(dep, chat(response_format={"type": "json_object"}, tools=tools))
    assert info.value.param == "response_format" and "json_schema" in info.value.message


@pytest.mark.parametrize("params, expected", [
    ({"max_tokens": 64, "temperature": 0.5, "top_p": 0.9, "stop": "\n\n"},
     {"maxTokens": 64, "temperature": 0.5, "topP": 0.9, "stopSequences": ["\n\n"]}),
    ({"max_completion_tokens": 128, "stop": ["END", "STOP"]}, {"maxTokens": 128, "stopSequences": ["END", "STOP"]}),
    ({"max_tokens": 10, "max_completion_tokens": 20}, {"maxTokens": 20}),
    ({"temperature": 0}, {"temperature": 0}),
])
def test_sampling_parameters_go_to_inference_config(adapter, dep, wire, params, expected):
    assert sent_body(adapter, dep, wire, chat(**params))["inferenceConfig"] == expected


def test_top_k_goes_to_additional_model_request_fields(adapter, dep, wire):
    body = sent_body(adapter, dep, wire, chat(extra={"top_k": 50}))
    assert body["additionalModelRequestFields"] == {"top_k": 50}


UNSUPPORTED = [("n", 2), ("logprobs", True), ("top_logprobs", 2), ("logit_bias", {"50256": -100}), ("seed", 7),
               ("presence_penalty", 0.5), ("frequency_penalty", 0.5), ("user", "u-1"), ("parallel_tool_calls", False),
               ("audio", {"voice": "alloy"}), ("modalities", ["text", "audio"]), ("prediction", {"type": "content"}),
               ("store", True), ("metadata", {"a": "b"}), ("service_tier", "flex"), ("functions", [{"name": "f"}]),
               ("function_call", "auto"), ("reasoning_effort", "low"), ("web_search_options", {}),
               ("safety_identifier", "s")]


@pytest.mark.parametrize("name, value", UNSUPPORTED)
def test_parameters_bedrock_cannot_take_are_a_400_naming_them(adapter, dep, wire, name, value):
    with pytest.raises(InvalidRequest) as info:
        adapter.complete(dep, chat(**{name: value}))
    assert info.value.status == 400 and info.value.param == name and info.value.code == "unsupported_parameter"
    assert f"'{name}'" in info.value.message and "Bedrock" in info.value.message
    assert not wire.calls


@pytest.mark.parametrize("name, value", UNSUPPORTED)
def test_drop_params_leaves_them_out(wire, name, value):
    dep = deployment(drop_params=True)
    body = sent_body(adapter_for(dep), dep, wire, chat(**{name: value}))
    assert body == {"messages": [{"role": "user", "content": [{"text": "hi"}]}]}


@pytest.mark.parametrize("params", [{"n": 1}, {"logprobs": False}, {"presence_penalty": 0}, {"store": False},
                                    {"parallel_tool_calls": True}, {"seed": None}])
def test_values_that_ask_for_nothing_are_accepted(adapter, dep, wire, params):
    assert sent_body(adapter, dep, wire, chat(**params)) == {
        "messages": [{"role": "user", "content": [{"text": "hi"}]}]}


# --- Converse answer → OpenAI body -----------------------------------------------------------------

def test_a_text_answer(adapter, dep, wire):
    wire.add(responses.POST, CONVERSE, json=answer({"text": "Hello"}, {"text": " there"}, usage={
        "inputTokens": 100, "outputTokens": 7, "totalTokens": 150, "cacheReadInputTokens": 30,
        "cacheWriteInputTokens": 13}))
    completion = adapter.complete(dep, chat())
    body = completion.body
    validate("CreateChatCompletionResponse", body)
    assert body["model"] == ALIAS and body["object"] == "chat.completion"
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "Hello there", "refusal": None}
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["usage"] == {"prompt_tokens": 143, "completion_tokens": 7, "total_tokens": 150,
                             "prompt_tokens_details": {"cached_tokens": 30}}
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (143, 7)


def test_tool_use_blocks_become_tool_calls(adapter, dep, wire):
    wire.add(responses.POST, CONVERSE, json=answer(
        {"reasoningContent": {"reasoningText": {"text": "hmm", "signature": "sig"}}},
        {"text": "Checking."},
        {"toolUse": {"toolUseId": "tooluse_a", "name": "get_weather", "input": {"city": "Paris"}}},
        {"toolUse": {"toolUseId": "tooluse_b", "name": "get_weather", "input": {"city": "Rome", "units": "c"}}},
        stop="tool_use"))
    body = adapter.complete(dep, chat(tools=[WEATHER])).body
    validate("CreateChatCompletionResponse", body)
    message = body["choices"][0]["message"]
    assert message["content"] == "Checking."
    assert [(c["id"], c["type"], c["function"]["name"], json.loads(c["function"]["arguments"]))
            for c in message["tool_calls"]] == [("tooluse_a", "function", "get_weather", {"city": "Paris"}),
                                                ("tooluse_b", "function", "get_weather", {"city": "Rome", "units": "c"})]
    assert body["choices"][0]["finish_reason"] == "tool_calls"
    assert "hmm" not in json.dumps(body)


def test_a_tool_call_alone_has_null_content(adapter, dep, wire):
    wire.add(responses.POST, CONVERSE, json=answer(
        {"toolUse": {"toolUseId": "t", "name": "get_time", "input": {}}}, stop="tool_use"))
    body = adapter.complete(dep, chat(tools=[TIME], tool_choice="required")).body
    validate("CreateChatCompletionResponse", body)
    assert body["choices"][0]["message"]["content"] is None
    assert body["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"] == "{}"


@pytest.mark.parametrize("stop, finish", [
    ("end_turn", "stop"), ("stop_sequence", "stop"), ("max_tokens", "length"),
    ("model_context_window_exceeded", "length"), ("tool_use", "tool_calls"),
    ("guardrail_intervened", "content_filter"), ("content_filtered", "content_filter"),
    ("malformed_model_output", "stop"), ("malformed_tool_use", "stop"), ("some_future_reason", "stop")])
def test_stop_reasons(adapter, dep, wire, stop, finish):
    wire.add(responses.POST, CONVERSE, json=answer({"text": "x"}, stop=stop))
    assert adapter.complete(dep, chat()).body["choices"][0]["finish_reason"] == finish


@pytest.mark.parametrize("body", [{"output": {}}, {"output": {"message": {"content": "text"}}}, [1, 2],
                                  {"output": {"message": {"content": [{"toolUse": {"name": "x"}}]}}}])
def test_an_answer_that_is_not_converse_is_a_bad_upstream_response(adapter, dep, wire, body):
    wire.add(responses.POST, CONVERSE, json=body)
    with pytest.raises(BadUpstreamResponse):
        adapter.complete(dep, chat())


# --- errors -----------------------------------------------------------------------------------------

def add_error(wire, name, status, message, *, url=CONVERSE, in_body=False, headers=None):
    body = {"message": message}
    if in_body:
        body["__type"] = f"com.amazon.coral.service#{name}"
        headers = headers or {}
    else:
        headers = {"x-amzn-ErrorType": f"{name}:http://internal.amazon.com/coral/com.amazon.bedrock/",
                   **(headers or {})}
    wire.add(responses.POST, url, json=body, status=status, headers=headers)


@pytest.mark.parametrize("in_body", [False, True], ids=["header", "body-type"])
@pytest.mark.parametrize("name, status, error, code", [
    ("ValidationException", 400, UpstreamClientError, None),
    ("AccessDeniedException", 403, UpstreamAuthFailed, "upstream_auth_error"),
    ("UnrecognizedClientException", 403, UpstreamAuthFailed, "upstream_auth_error"),
    ("InvalidSignatureException", 403, UpstreamAuthFailed, "upstream_auth_error"),
    ("ExpiredTokenException", 403, UpstreamAuthFailed, "upstream_auth_error"),
    ("ResourceNotFoundException", 404, UpstreamClientError, None),
    ("ModelTimeoutException", 408, UpstreamTimeout, "upstream_timeout"),
    ("ThrottlingException", 429, UpstreamRateLimited, "rate_limit_exceeded"),
    ("ModelNotReadyException", 429, UpstreamRateLimited, "rate_limit_exceeded"),
    ("ModelErrorException", 424, UpstreamFailed, "upstream_error"),
    ("ServiceUnavailableException", 503, UpstreamFailed, "upstream_error"),
    ("InternalServerException", 500, UpstreamFailed, "upstream_error"),
])
def test_error_names_map_to_the_contract(adapter, dep, wire, in_body, name, status, error, code):
    add_error(wire, name, status, f"{name} happened at /opt/secret/path", in_body=in_body)
    with pytest.raises(GatewayError) as info:
        adapter.complete(dep, chat())
    assert type(info.value) is error and info.value.code == code
    if status in (400, 404):
        assert info.value.status == status and info.value.message == f"{name} happened at /opt/secret/path"
    else:
        assert "/opt/secret" not in info.value.message or error is UpstreamRateLimited


def test_retryable_errors_are_retryable_and_keep_retry_after(adapter, dep, wire):
    add_error(wire, "ServiceUnavailableException", 503, "busy", headers={"Retry-After": "7"})
    with pytest.raises(UpstreamFailed) as info:
        adapter.complete(dep, chat())
    assert info.value.retryable and info.value.retry_after == 7
    assert "overloaded" in info.value.message
    add_error(wire, "ThrottlingException", 429, "Too many requests", headers={"Retry-After": "3"})
    with pytest.raises(UpstreamRateLimited) as info:
        adapter.complete(dep, chat())
    assert info.value.retry_after == 3


@pytest.mark.parametrize("message", [
    "Input is too long for requested model.",
    "The model returned the following errors: prompt is too long: 210000 tokens > 200000 maximum",
    "Too many input tokens. Max input tokens: 8192, request input token count: 9000",
    "The input exceeds the context window of the model.",
    "This model's maximum context length is 128000 tokens.",
    "input length and `max_tokens` exceed context limit: 198000 + 4096 > 200000"])
def test_a_prompt_over_the_context_window_is_context_length_exceeded(adapter, dep, wire, message):
    add_error(wire, "ValidationException", 400, message)
    with pytest.raises(ContextLengthExceeded) as info:
        adapter.complete(dep, chat())
    assert info.value.status == 400 and info.value.param == "messages" and info.value.code == "context_length_exceeded"


def test_upstream_messages_are_redacted(adapter, dep, wire):
    add_error(wire, "ValidationException", 400, f"The security token {SESSION_TOKEN} is malformed")
    with pytest.raises(UpstreamClientError) as info:
        adapter.complete(dep, chat())
    assert SESSION_TOKEN not in info.value.message


def test_an_error_without_a_name_is_decided_by_its_status(adapter, dep, wire):
    wire.add(responses.POST, CONVERSE, body=b"<html>502 Bad Gateway</html>", status=502)
    with pytest.raises(UpstreamFailed) as info:
        adapter.complete(dep, chat())
    assert "html" not in info.value.message.lower()


# --- ConverseStream ---------------------------------------------------------------------------------

def add_stream(wire, data: bytes, size: int = 37):
    wire.add(responses.POST, STREAM, body=in_pieces(data, size), stream=True,
             content_type=EVENT_STREAM)


def fixture(name: str) -> bytes:
    return (FIXTURES / f"converse-stream-{name}.bin").read_bytes()


def decoded(data: bytes) -> list:
    buffer = EventStreamBuffer()
    buffer.add_data(data)
    return [(m.headers, json.loads(m.payload)) for m in buffer]


def read_stream(stream) -> tuple[list[dict], bytes, BaseException | None]:
    """Chunks (parsed from what the client would get, each validated), the raw bytes, and the error that ended it."""
    raw, error = b"", None
    try:
        for data in stream:
            raw += data
    except GatewayError as exc:
        error = exc
    finally:
        stream.close()
    chunks = [json.loads(line[6:]) for line in raw.split(b"\n\n") if line]
    for chunk in chunks:
        validate("CreateChatCompletionStreamResponse", chunk)
    return chunks, raw, error


def text_of(chunks) -> str:
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])


@pytest.mark.parametrize("size", [1, 7, 37, 4096])
def test_the_recorded_tool_use_stream(adapter, dep, wire, size):
    add_stream(wire, fixture("tool-use"), size)
    chunks, _, error = read_stream(adapter.stream(dep, chat(stream=True, include_usage=True, tools=[WEATHER])))
    assert error is None
    upstream = [payload for _, payload in decoded(fixture("tool-use"))]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert text_of(chunks) == "Let me check the weather."
    assert chunks[1]["choices"][0]["delta"] == {"content": "Let me check"}      # the first text delta, whole
    calls = [d for c in chunks if c["choices"] for d in c["choices"][0]["delta"].get("tool_calls") or ()]
    assert calls[0] == {"index": 0, "id": "tooluse_abc123", "type": "function",
                        "function": {"name": "get_weather", "arguments": ""}}
    fragments = [p["delta"]["toolUse"]["input"] for p in upstream if "toolUse" in p.get("delta", {})]
    assert [c["function"]["arguments"] for c in calls[1:]] == fragments
    assert "".join(c["function"]["arguments"] for c in calls) == "".join(fragments) == '{"city":"Paris"}'
    assert {c["index"] for c in calls} == {0}
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == "tool_calls"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == {
        "prompt_tokens": 120, "completion_tokens": 35, "total_tokens": 155}
    assert len({c["id"] for c in chunks}) == 1 and all(c["model"] == ALIAS for c in chunks)
    assert dep.id in adapter._upstreams and wire.calls[0].request.url == STREAM


def test_no_usage_chunk_unless_asked_but_the_gateway_still_counts_it(adapter, dep, wire):
    add_stream(wire, fixture("tool-use"))
    stream = adapter.stream(dep, chat(stream=True, tools=[WEATHER]))
    chunks, _, error = read_stream(stream)
    assert error is None and all(c["choices"] for c in chunks)
    assert (stream.usage.prompt_tokens, stream.usage.completion_tokens) == (120, 35)


def test_a_throttling_frame_mid_stream_ends_it_with_an_error(adapter, dep, wire):
    add_stream(wire, fixture("throttling"), 7)
    chunks, _, error = read_stream(adapter.stream(dep, chat(stream=True)))
    assert text_of(chunks) == "Hel"
    assert isinstance(error, UpstreamRateLimited) and "Too many requests" in error.message


def test_an_exception_frame_before_any_content_fails_the_call_itself(adapter, dep, wire):
    data = event("messageStart", {"role": "assistant"}) + exception("serviceUnavailableException", "busy")
    add_stream(wire, data)
    with pytest.raises(UpstreamFailed) as info:
        adapter.stream(dep, chat(stream=True))
    assert info.value.retryable and "overloaded" in info.value.message


def text_then(frame_bytes: bytes) -> bytes:
    return event("messageStart", {"role": "assistant"}) + event(
        "contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "Hi"}}) + frame_bytes


@pytest.mark.parametrize("name, message, error, code", [
    ("throttlingException", "slow down", UpstreamRateLimited, "rate_limit_exceeded"),
    ("serviceUnavailableException", "busy", UpstreamFailed, "upstream_error"),
    ("modelStreamErrorException", "model broke", UpstreamFailed, "upstream_error"),
    ("internalServerException", "oops", UpstreamFailed, "upstream_error"),
    ("validationException", "bad value", UpstreamClientError, None),
    ("validationException", "Input is too long for requested model.", ContextLengthExceeded,
     "context_length_exceeded"),
    ("somethingNewException", "new", UpstreamFailed, "upstream_error")])
def test_exception_frames_map_like_http_errors(adapter, dep, wire, name, message, error, code):
    add_stream(wire, text_then(exception(name, message)))
    chunks, _, failure = read_stream(adapter.stream(dep, chat(stream=True)))
    assert text_of(chunks) == "Hi"
    assert type(failure) is error and failure.code == code


def test_a_generic_error_frame(adapter, dep, wire):
    add_stream(wire, text_then(frame({":message-type": "error", ":error-code": "InternalFailure",
                                      ":error-message": "it broke"}, b"")))
    _, _, failure = read_stream(adapter.stream(dep, chat(stream=True)))
    assert isinstance(failure, UpstreamFailed)


def test_parallel_tool_calls_get_their_own_index_counter(adapter, dep, wire):
    data = b"".join([
        event("messageStart", {"role": "assistant"}),
        event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"reasoningContent": {"text": "thinking"}}}),
        event("contentBlockDelta", {"contentBlockIndex": 1, "delta": {"text": "Both."}}),
        event("contentBlockStart", {"contentBlockIndex": 2, "start": {"toolUse": {"toolUseId": "a", "name": "f"}}}),
        event("contentBlockDelta", {"contentBlockIndex": 2, "delta": {"toolUse": {"input": '{"x":'}}}),
        event("contentBlockStart", {"contentBlockIndex": 3, "start": {"toolUse": {"toolUseId": "b", "name": "g"}}}),
        event("contentBlockDelta", {"contentBlockIndex": 3, "delta": {"toolUse": {"input": '{"y": 2}'}}}),
        event("contentBlockDelta", {"contentBlockIndex": 2, "delta": {"toolUse": {"input": " 1}"}}}),
        event("messageStop", {"stopReason": "tool_use"}),
        event("metadata", {"usage": {"inputTokens": 5, "outputTokens": 6, "totalTokens": 11}, "metrics": {}})])
    add_stream(wire, data, 7)
    chunks, raw, error = read_stream(adapter.stream(dep, chat(stream=True, include_usage=True)))
    assert error is None and b"thinking" not in raw and text_of(chunks) == "Both."
    calls: dict = {}
    for chunk in chunks:
        for delta in (chunk["choices"][0]["delta"].get("tool_calls") or ()) if chunk["choices"] else ():
            call = calls.setdefault(delta["index"], {"id": delta.get("id"), "args": ""})
            call["args"] += delta["function"]["arguments"]
    assert calls == {0: {"id": "a", "args": '{"x": 1}'}, 1: {"id": "b", "args": '{"y": 2}'}}


def test_a_stream_cut_mid_frame_is_an_upstream_failure(adapter, dep, wire):
    whole = fixture("tool-use")
    add_stream(wire, whole[:len(whole) // 2])
    _, _, error = read_stream(adapter.stream(dep, chat(stream=True)))
    assert type(error) is UpstreamFailed and "ended before it was complete" in error.message


def test_a_stream_ended_after_message_stop_without_metadata_is_whole(adapter, dep, wire):
    add_stream(wire, text_then(event("messageStop", {"stopReason": "max_tokens"})))
    stream = adapter.stream(dep, chat(stream=True, include_usage=True))
    chunks, _, error = read_stream(stream)
    assert error is None and chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert stream.usage is not None and stream.usage.completion_tokens >= 1   # estimated


def test_a_corrupt_frame_is_a_bad_upstream_response(adapter, dep, wire):
    data = bytearray(text_then(event("messageStop", {"stopReason": "end_turn"})))
    data[-3] ^= 0xFF
    add_stream(wire, bytes(data))
    _, _, error = read_stream(adapter.stream(dep, chat(stream=True)))
    assert isinstance(error, BadUpstreamResponse)


def test_tool_input_for_a_tool_never_started_is_a_bad_upstream_response(adapter, dep, wire):
    add_stream(wire, text_then(event("contentBlockDelta", {"contentBlockIndex": 4,
                                                           "delta": {"toolUse": {"input": "{}"}}})))
    _, _, error = read_stream(adapter.stream(dep, chat(stream=True)))
    assert isinstance(error, BadUpstreamResponse)


def test_an_error_status_on_the_stream_call_maps_like_converse(adapter, dep, wire):
    add_error(wire, "ThrottlingException", 429, "slow down", url=STREAM)
    with pytest.raises(UpstreamRateLimited):
        adapter.stream(dep, chat(stream=True))


# --- the test encoder the fake Bedrock uses ---------------------------------------------------------

def test_the_fake_s_frame_encoder_writes_what_botocore_reads():
    whole = fixture("tool-use")
    messages = EventStreamBuffer()
    messages.add_data(whole)
    rewritten = b"".join(frame(m.headers, m.payload) for m in messages)
    assert rewritten == whole
    written = event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "héllo"}}) + \
        exception("throttlingException", "wait")
    buffer = EventStreamBuffer()
    for piece in split(written, 5):
        buffer.add_data(piece)
    assert [(m.headers[":message-type"], json.loads(m.payload)) for m in buffer] == [
        ("event", {"contentBlockIndex": 0, "delta": {"text": "héllo"}}), ("exception", {"message": "wait"})]
