"""gateway/providers/gemini.py against a faked wire (`responses`): requests out, answers, streams and errors in.

Answers come from Google's recorded bodies (tests/reference/fixtures/gemini) and are
checked against OpenAI's spec; streams are fed in small network pieces.
"""
from __future__ import annotations

import base64
import json
import struct
from pathlib import Path

import pytest
import responses

from gateway.errors import (BadUpstreamResponse, ContextLengthExceeded, GatewayError, InvalidRequest,
                            UpstreamAuthFailed, UpstreamClientError, UpstreamFailed, UpstreamRateLimited,
                            UpstreamTimeout)
from gateway.providers.gemini import GeminiAdapter, GeminiStreamDecoder, new_call_id, signature_of
from gateway.redact import Redactor
from gateway.types import Deployment, ModelRequest
from tests.functional.openapi_schemas import validate
from tests.unit.network_pieces import in_pieces, split

FIXTURES = Path(__file__).resolve().parents[1] / "reference" / "fixtures" / "gemini"
BASE = "http://gemini.test/v1beta"
MODEL = "gemini-2.0-flash"
GENERATE_URL = f"{BASE}/models/{MODEL}:generateContent"
STREAM_URL = f"{BASE}/models/{MODEL}:streamGenerateContent?alt=sse"
EMBED_URL = f"{BASE}/models/text-embedding-004:batchEmbedContents"
KEY = "AIzaSy-gemini-test-key-0123456789"
ALIAS = "shin-gemini"


def deployment(**kw) -> Deployment:
    fields = dict(id="gem1", model_name=ALIAS, provider="gemini", upstream_model=MODEL, api_base=BASE,
                  api_key=KEY, timeout=20.0, stream_timeout=7.0)
    fields.update(kw)
    return Deployment(**fields)


def chat(messages=None, *, stream=False, include_usage=False, extra=None, **params) -> ModelRequest:
    body = {"model": ALIAS, "messages": messages or [{"role": "user", "content": "hi"}], **params}
    if stream:
        body["stream"] = True
    return ModelRequest(endpoint="chat/completions", model=ALIAS, params=body, extra=extra or {},
                        stream=stream, include_usage=include_usage, request_id="req-g1")


def embeddings(**params) -> ModelRequest:
    return ModelRequest(endpoint="embeddings", model="shin-embed", params={"model": "shin-embed", **params},
                        extra={})


@pytest.fixture
def dep():
    return deployment()


@pytest.fixture
def adapter(dep):
    adapter = GeminiAdapter([dep, deployment(id="emb1", upstream_model="text-embedding-004")], pool_maxsize=4,
                            redactor=Redactor([KEY]))
    yield adapter
    adapter.close()


@pytest.fixture
def wire():
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        yield mock


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def answer(text="Hello there.", finish="STOP", **extra) -> dict:
    return {"candidates": [{"content": {"parts": [{"text": text}], "role": "model"}, "finishReason": finish,
                            "index": 0}],
            "usageMetadata": {"promptTokenCount": 5, "candidatesTokenCount": 3, "totalTokenCount": 8},
            "modelVersion": MODEL, **extra}


def sent(wire, index=0) -> dict:
    return json.loads(wire.calls[index].request.body)


def complete(adapter, dep, wire, request, body=None, **kw) -> dict:
    wire.add(responses.POST, GENERATE_URL, json=answer() if body is None else body, **kw)
    result = adapter.complete(dep, request).body
    validate("CreateChatCompletionResponse", result)
    return result


def add_stream(wire, raw: bytes, size: int = 7, status: int = 200, content_type="text/event-stream"):
    wire.add(responses.POST, STREAM_URL, body=in_pieces(raw, size), status=status,
             stream=True, content_type=content_type)


def events(*bodies, crlf=True) -> bytes:
    end = b"\r\n" if crlf else b"\n"
    return b"".join(b"data: " + json.dumps(body).encode() + end + end for body in bodies)


def read_stream(adapter, dep, request) -> list[dict]:
    """Every chunk the client gets, each checked against OpenAI's chunk schema."""
    stream = adapter.stream(dep, request)
    try:
        payload = b"".join(stream)
    finally:
        stream.close()
    chunks = []
    for event in payload.split(b"\n\n")[:-1]:
        assert event.startswith(b"data: "), event
        chunk = json.loads(event[6:])
        validate("CreateChatCompletionStreamResponse", chunk)
        chunks.append(chunk)
    return chunks


def text_of_chunks(chunks) -> str:
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])


def finishes(chunks) -> list:
    return [c["choices"][0]["finish_reason"] for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]


def upstream_events(raw: bytes) -> list[dict]:
    """The recorded `data:` events, read independently of the adapter's decoder."""
    return [json.loads(line[6:]) for line in raw.replace(b"\r\n", b"\n").split(b"\n") if line.startswith(b"data: ")]


# --- the request that goes upstream ---------------------------------------------------------------

def test_plain_chat_goes_to_generate_content_with_the_key_in_a_header_only(adapter, dep, wire):
    complete(adapter, dep, wire, chat())
    request = wire.calls[0].request
    assert request.url == GENERATE_URL and KEY not in request.url and "key=" not in request.url
    assert request.headers["x-goog-api-key"] == KEY
    assert "Authorization" not in request.headers
    assert request.headers["Content-Type"] == "application/json"
    assert sent(wire) == {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}


def test_the_default_base_is_googles_v1beta(wire):
    dep = deployment(api_base=None)
    adapter = GeminiAdapter([dep], pool_maxsize=2, redactor=Redactor([KEY]))
    url = f"https://generativelanguage.googleapis.com/v1beta/models/{MODEL}:generateContent"
    wire.add(responses.POST, url, json=answer())
    adapter.complete(dep, chat())
    assert wire.calls[0].request.url == url


def test_a_deployment_without_a_key_sends_none(wire):
    dep = deployment(api_key=None)
    adapter = GeminiAdapter([dep], pool_maxsize=2, redactor=Redactor())
    wire.add(responses.POST, GENERATE_URL, json=answer())
    adapter.complete(dep, chat())
    assert "x-goog-api-key" not in wire.calls[0].request.headers


def test_system_and_developer_messages_become_the_system_instruction(adapter, dep, wire):
    complete(adapter, dep, wire, chat([
        {"role": "system", "content": "Be brief."},
        {"role": "developer", "content": [{"type": "text", "text": "Answer in French."}]},
        {"role": "user", "content": "hi"}]))
    assert sent(wire) == {"systemInstruction": {"parts": [{"text": "Be brief."}, {"text": "Answer in French."}]},
                          "contents": [{"role": "user", "parts": [{"text": "hi"}]}]}


def test_multi_turn_roles_are_user_and_model_and_neighbours_share_a_content(adapter, dep, wire):
    complete(adapter, dep, wire, chat([
        {"role": "user", "content": "one"},
        {"role": "assistant", "content": "two"},
        {"role": "user", "content": "three"},
        {"role": "user", "content": [{"type": "text", "text": "four"}]}]))
    assert sent(wire)["contents"] == [
        {"role": "user", "parts": [{"text": "one"}]},
        {"role": "model", "parts": [{"text": "two"}]},
        {"role": "user", "parts": [{"text": "three"}, {"text": "four"}]}]


def test_images_data_urls_inline_and_google_storage_uris_as_file_data(adapter, dep, wire):
    png = base64.b64encode(b"\x89PNG fake").decode()
    files_uri = "https://generativelanguage.googleapis.com/v1beta/files/abc-123"
    complete(adapter, dep, wire, chat([{"role": "user", "content": [
        {"type": "text", "text": "What is in these?"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{png}", "detail": "high"}},
        {"type": "image_url", "image_url": {"url": "gs://bucket/cat.jpg"}},
        {"type": "image_url", "image_url": {"url": files_uri}}]}]))
    assert sent(wire)["contents"][0]["parts"] == [
        {"text": "What is in these?"},
        {"inlineData": {"mimeType": "image/png", "data": png}},
        {"fileData": {"mimeType": "image/jpeg", "fileUri": "gs://bucket/cat.jpg"}},
        {"fileData": {"fileUri": files_uri}}]


def test_an_http_image_url_is_refused_naming_the_part(adapter, dep, wire):
    request = chat([{"role": "user", "content": [
        {"type": "text", "text": "look"}, {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}]}])
    with pytest.raises(InvalidRequest) as caught:
        adapter.complete(dep, request)
    assert caught.value.param == "messages[0].content[1].image_url.url"
    assert "data: URL" in caught.value.message
    assert not wire.calls


def test_audio_input_goes_inline(adapter, dep, wire):
    complete(adapter, dep, wire, chat([{"role": "user", "content": [
        {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}}]}]))
    assert sent(wire)["contents"][0]["parts"] == [{"inlineData": {"mimeType": "audio/wav", "data": "UklGRg=="}}]


def test_an_unsupported_content_part_is_refused_naming_it(adapter, dep, wire):
    with pytest.raises(InvalidRequest) as caught:
        adapter.complete(dep, chat([{"role": "user", "content": [{"type": "file", "file": {"file_id": "f1"}}]}]))
    assert caught.value.param == "messages[0].content[0].type"


WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"],
                   "additionalProperties": False}}}
NOW = {"type": "function", "function": {"name": "now"}}


@pytest.mark.parametrize("choice, config", [
    (None, None),
    ("auto", {"mode": "AUTO"}),
    ("none", {"mode": "NONE"}),
    ("required", {"mode": "ANY"}),
    ({"type": "function", "function": {"name": "get_weather"}}, {"mode": "ANY", "allowedFunctionNames": ["get_weather"]}),
], ids=["unset", "auto", "none", "required", "forced"])
def test_tools_are_function_declarations_with_json_schema_and_tool_choice_a_mode(adapter, dep, wire, choice, config):
    params = {"tools": [WEATHER, NOW]}
    if choice is not None:
        params["tool_choice"] = choice
    complete(adapter, dep, wire, chat(**params))
    body = sent(wire)
    assert body["tools"] == [{"functionDeclarations": [
        {"name": "get_weather", "description": "Weather in a city",
         "parametersJsonSchema": WEATHER["function"]["parameters"]},
        {"name": "now"}]}]
    assert body.get("toolConfig") == (None if config is None else {"functionCallingConfig": config})


def test_a_custom_tool_is_refused(adapter, dep, wire):
    with pytest.raises(InvalidRequest) as caught:
        adapter.complete(dep, chat(tools=[WEATHER, {"type": "custom", "custom": {"name": "x"}}]))
    assert caught.value.param == "tools[1].type"


HISTORY = [
    {"role": "user", "content": "Weather in Paris and Oslo?"},
    {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_a", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
        {"id": "call_b", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'}}]},
    {"role": "tool", "tool_call_id": "call_a", "content": '{"temp": 21, "sky": "clear"}'},
    {"role": "tool", "tool_call_id": "call_b", "content": [{"type": "text", "text": "-3 and snowing"}]},
]


def test_tool_calls_and_results_become_function_call_and_response_parts(adapter, dep, wire):
    complete(adapter, dep, wire, chat(HISTORY, tools=[WEATHER]))
    assert sent(wire)["contents"] == [
        {"role": "user", "parts": [{"text": "Weather in Paris and Oslo?"}]},
        {"role": "model", "parts": [{"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}},
                                    {"functionCall": {"name": "get_weather", "args": {"city": "Oslo"}}}]},
        {"role": "user", "parts": [
            {"functionResponse": {"name": "get_weather", "response": {"temp": 21, "sky": "clear"}}},
            {"functionResponse": {"name": "get_weather", "response": {"result": "-3 and snowing"}}}]}]


def test_assistant_text_comes_before_its_calls(adapter, dep, wire):
    complete(adapter, dep, wire, chat([
        {"role": "user", "content": "time?"},
        {"role": "assistant", "content": "Let me check.", "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "now", "arguments": ""}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "[1, 2]"}]))
    contents = sent(wire)["contents"]
    assert contents[1] == {"role": "model", "parts": [{"text": "Let me check."},
                                                      {"functionCall": {"name": "now", "args": {}}}]}
    assert contents[2]["parts"] == [{"functionResponse": {"name": "now", "response": {"result": "[1, 2]"}}}]


def test_bad_tool_call_arguments_are_a_400_naming_the_path(adapter, dep, wire):
    history = json.loads(json.dumps(HISTORY))
    history[1]["tool_calls"][1]["function"]["arguments"] = '{"city": '
    with pytest.raises(InvalidRequest) as caught:
        adapter.complete(dep, chat(history))
    assert caught.value.status == 400
    assert caught.value.param == "messages[1].tool_calls[1].function.arguments"
    assert not wire.calls


def test_a_tool_result_for_an_unknown_call_is_a_400(adapter, dep, wire):
    with pytest.raises(InvalidRequest) as caught:
        adapter.complete(dep, chat([{"role": "user", "content": "x"},
                                    {"role": "tool", "tool_call_id": "nope", "content": "1"}]))
    assert caught.value.param == "messages[1].tool_call_id"


def test_generation_config_from_sampling_parameters(adapter, dep, wire):
    complete(adapter, dep, wire, chat(max_tokens=50, max_completion_tokens=80, temperature=0.4, top_p=0.9, seed=7,
                                      presence_penalty=0.5, frequency_penalty=-0.5, stop="END", n=1,
                                      extra={"top_k": 20}))
    assert sent(wire)["generationConfig"] == {
        "maxOutputTokens": 80, "temperature": 0.4, "topP": 0.9, "topK": 20, "seed": 7, "presencePenalty": 0.5,
        "frequencyPenalty": -0.5, "stopSequences": ["END"]}


def test_max_tokens_and_a_list_of_stops(adapter, dep, wire):
    complete(adapter, dep, wire, chat(max_tokens=50, stop=["a", "b"]))
    assert sent(wire)["generationConfig"] == {"maxOutputTokens": 50, "stopSequences": ["a", "b"]}


def test_a_top_k_that_is_not_a_positive_integer_is_a_400(adapter, dep, wire):
    with pytest.raises(InvalidRequest) as caught:
        adapter.complete(dep, chat(extra={"top_k": "many"}))
    assert caught.value.param == "top_k"


def test_json_mode_and_json_schema(adapter, dep, wire):
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "additionalProperties": False}
    complete(adapter, dep, wire, chat(response_format={"type": "json_object"}))
    complete(adapter, dep, wire, chat(response_format={"type": "json_schema",
                                                       "json_schema": {"name": "x", "schema": schema, "strict": True}}))
    complete(adapter, dep, wire, chat(response_format={"type": "text"}))
    assert sent(wire, 0)["generationConfig"] == {"responseMimeType": "application/json"}
    assert sent(wire, 1)["generationConfig"] == {"responseMimeType": "application/json", "responseJsonSchema": schema}
    assert "generationConfig" not in sent(wire, 2)


def test_n_asks_for_candidates_and_each_becomes_a_choice(adapter, dep, wire):
    two = answer("first")
    two["candidates"].append({"content": {"parts": [{"text": "second"}], "role": "model"},
                              "finishReason": "MAX_TOKENS", "index": 1})
    result = complete(adapter, dep, wire, chat(n=2), body=two)
    assert sent(wire)["generationConfig"] == {"candidateCount": 2}
    assert [(c["index"], c["message"]["content"], c["finish_reason"]) for c in result["choices"]] == [
        (0, "first", "stop"), (1, "second", "length")]


# --- answers → OpenAI --------------------------------------------------------------------------------

def test_a_plain_answer(adapter, dep, wire):
    body = json.loads(fixture("googleai/unary-success-basic-reply-short.json"))
    result = complete(adapter, dep, wire, chat(), body=body)
    assert result["model"] == ALIAS and result["object"] == "chat.completion"
    assert result["choices"] == [{"index": 0, "logprobs": None, "finish_reason": "stop", "message": {
        "role": "assistant", "refusal": None, "content": body["candidates"][0]["content"]["parts"][0]["text"]}}]
    assert result["usage"] == {"prompt_tokens": 7, "completion_tokens": 22, "total_tokens": 29}


def test_the_response_id_is_the_answers_id(adapter, dep, wire):
    result = complete(adapter, dep, wire, chat(),
                      body=json.loads(fixture("googleai/unary-success-thinking-reply-thought-summary.json")))
    assert result["id"] == "2pmHaJqQEoqC-8YP6eStyAY"
    assert result["choices"][0]["message"]["content"] == "Mountain View"     # the thought summary is dropped


def test_parallel_function_calls(adapter, dep, wire):
    body = json.loads(fixture("vertexai/unary-success-function-call-parallel-calls.json"))
    result = complete(adapter, dep, wire, chat(tools=[WEATHER]), body=body)
    choice = result["choices"][0]
    assert choice["finish_reason"] == "tool_calls" and choice["message"]["content"] is None
    calls = choice["message"]["tool_calls"]
    assert [(c["type"], c["function"]["name"], json.loads(c["function"]["arguments"])) for c in calls] == [
        ("function", "sum", {"y": 1, "x": 2}), ("function", "sum", {"y": 3, "x": 4}),
        ("function", "sum", {"y": 5, "x": 6})]
    assert len({c["id"] for c in calls}) == 3 and all(c["id"].startswith("call_") for c in calls)


def test_a_function_calls_own_id_is_kept(adapter, dep, wire):
    body = {"candidates": [{"content": {"role": "model", "parts": [
        {"functionCall": {"id": "fc-77", "name": "now", "args": {}}}]}, "finishReason": "STOP"}]}
    result = complete(adapter, dep, wire, chat(), body=body)
    assert result["choices"][0]["message"]["tool_calls"][0]["id"] == "fc-77"


def test_a_thought_signature_rides_in_the_call_id_and_goes_back_with_the_call(adapter, dep, wire):
    body = json.loads(fixture("googleai/unary-success-thinking-function-call-thought-summary-signature.json"))
    signature = body["candidates"][0]["content"]["parts"][1]["thoughtSignature"]
    result = complete(adapter, dep, wire, chat(tools=[NOW]), body=body)
    call = result["choices"][0]["message"]["tool_calls"][0]
    assert call["function"] == {"name": "now", "arguments": "{}"}
    assert signature not in call["id"]            # the id holds it in the URL-safe alphabet only
    assert set(call["id"]) <= set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")
    complete(adapter, dep, wire, chat([{"role": "user", "content": "days to new year?"},
                                       {"role": "assistant", "content": None, "tool_calls": [call]},
                                       {"role": "tool", "tool_call_id": call["id"], "content": "2025-08-01"}],
                                      tools=[NOW]))
    assert sent(wire, 1)["contents"][1] == {"role": "model", "parts": [
        {"functionCall": {"name": "now", "args": {}}, "thoughtSignature": signature}]}


@pytest.mark.parametrize("signature", ["CiIBVKhc7vB+vaaq6rA/KC79Ts7iXagI", "ab+/", "abc=", "ab+/cd==", "//ts/w=="])
def test_signatures_survive_the_id_round_trip(signature):
    call_id = new_call_id(None, signature)
    assert call_id.startswith("call_") and "+" not in call_id and "/" not in call_id and "=" not in call_id
    assert signature_of(call_id) == signature + "=" * (-len(signature) % 4)
    assert signature_of(new_call_id("fc.1", signature)) == signature + "=" * (-len(signature) % 4)
    assert signature_of(new_call_id("fc_1", None)) is None
    assert signature_of("call_abc") is None


def test_usage_counts_thoughts_as_completion_and_cached_prompt_tokens(adapter, dep, wire):
    result = complete(adapter, dep, wire, chat(), body=json.loads(fixture("vertexai/unary-success-implicit-caching.json")))
    assert result["usage"] == {"prompt_tokens": 12013, "completion_tokens": 15 + 73, "total_tokens": 12013 + 88,
                               "prompt_tokens_details": {"cached_tokens": 11243},
                               "completion_tokens_details": {"reasoning_tokens": 73}}


def test_an_answer_without_usage_gets_an_estimate(adapter, dep, wire):
    wire.add(responses.POST, GENERATE_URL, json=json.loads(fixture("vertexai/unary-success-function-call-no-arguments.json")))
    completion = adapter.complete(dep, chat())
    assert completion.usage.prompt_tokens > 0 and completion.usage.total_tokens >= completion.usage.prompt_tokens
    validate("CreateChatCompletionResponse", completion.body)
    assert completion.body["usage"]["prompt_tokens"] == completion.usage.prompt_tokens


@pytest.mark.parametrize("name, finish, content", [
    ("googleai/unary-failure-finish-reason-safety.json", "content_filter", "Safety error incoming in 5, 4, 3, 2..."),
    ("vertexai/unary-failure-prompt-blocked-safety.json", "content_filter", ""),
    ("googleai/unary-failure-only-prompt-feedback.json", "content_filter", ""),
    ("googleai/unary-failure-with-message-no-content.json", "stop", ""),
])
def test_safety_blocks_and_empty_answers(adapter, dep, wire, name, finish, content):
    result = complete(adapter, dep, wire, chat(), body=json.loads(fixture(name)))
    assert result["choices"][0]["finish_reason"] == finish
    assert result["choices"][0]["message"]["content"] == content


@pytest.mark.parametrize("reason, expected", [
    ("STOP", "stop"), ("MAX_TOKENS", "length"), ("SAFETY", "content_filter"), ("RECITATION", "content_filter"),
    ("BLOCKLIST", "content_filter"), ("PROHIBITED_CONTENT", "content_filter"), ("SPII", "content_filter"),
    ("IMAGE_SAFETY", "content_filter"), ("IMAGE_OTHER", "content_filter"), ("OTHER", "stop"), ("NO_IMAGE", "stop"), ("MALFORMED_FUNCTION_CALL", "stop"),
    ("SOMETHING_NEW", "stop"),
])
def test_finish_reasons(adapter, dep, wire, reason, expected):
    result = complete(adapter, dep, wire, chat(), body=answer(finish=reason))
    assert result["choices"][0]["finish_reason"] == expected


def test_an_answer_with_neither_candidates_nor_feedback_is_a_bad_upstream_response(adapter, dep, wire):
    wire.add(responses.POST, GENERATE_URL, json={"modelVersion": MODEL})
    with pytest.raises(BadUpstreamResponse):
        adapter.complete(dep, chat())


UNARY = sorted(p.relative_to(FIXTURES).as_posix() for p in FIXTURES.glob("*/*.json"))
STREAMED = sorted(p.relative_to(FIXTURES).as_posix() for p in FIXTURES.glob("*/*.txt"))


@pytest.mark.parametrize("name", UNARY)
def test_every_recorded_answer_is_a_valid_openai_answer_or_a_clean_error(adapter, dep, wire, name):
    body = json.loads(fixture(name))
    status = body["error"]["code"] if "error" in body else 200
    wire.add(responses.POST, GENERATE_URL, json=body, status=status)
    try:
        result = adapter.complete(dep, chat()).body
    except GatewayError as error:
        assert "error" in body, (name, error)
        assert KEY not in error.message and "key1234" not in error.message
        return
    validate("CreateChatCompletionResponse", result)
    assert "error" not in body


@pytest.mark.parametrize("size", [7, 37])
@pytest.mark.parametrize("name", STREAMED)
def test_every_recorded_stream_is_valid_chunks_or_a_clean_error(adapter, dep, wire, name, size):
    raw = fixture(name)
    add_stream(wire, raw, size)
    try:
        chunks = read_stream(adapter, dep, chat(stream=True, include_usage=True))
    except GatewayError as error:
        assert b'"error"' in raw, (name, error)
        return
    assert b'"error"' not in raw
    assert len(finishes(chunks)) == 1 and chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert len({c["id"] for c in chunks}) == 1 and all(c["model"] == ALIAS for c in chunks)
    expected = "".join(part["text"] for event in (upstream_events(raw) or [json.loads(raw)])
                       for candidate in event.get("candidates") or ()
                       for part in (candidate.get("content") or {}).get("parts") or ()
                       if "text" in part and not part.get("thought"))
    assert text_of_chunks(chunks) == expected


# --- streams ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("size", [7, 37])
def test_a_text_stream_loses_no_delta_and_ends_with_finish_then_usage(adapter, dep, wire, size):
    add_stream(wire, fixture("googleai/streaming-success-basic-reply-short.txt"), size)
    chunks = read_stream(adapter, dep, chat(stream=True, include_usage=True))
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert [c["choices"][0]["delta"].get("content") for c in chunks[1:4]] == ["The", " capital of Wyoming",
                                                                               " is **Cheyenne**.\n"]
    assert chunks[4]["choices"][0] == {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}
    assert chunks[5]["choices"] == [] and chunks[5]["usage"] == {"prompt_tokens": 7, "completion_tokens": 10,
                                                                 "total_tokens": 17}
    assert len(chunks) == 6
    assert wire.calls[0].request.url == STREAM_URL
    assert wire.calls[0].request.headers["x-goog-api-key"] == KEY


def test_no_usage_chunk_unless_asked_but_the_stream_still_has_its_usage(adapter, dep, wire):
    add_stream(wire, fixture("googleai/streaming-success-basic-reply-short.txt"))
    stream = adapter.stream(dep, chat(stream=True))
    payload = b"".join(stream)
    stream.close()
    assert b'"usage"' not in payload and payload.count(b"data: ") == 5
    assert (stream.usage.prompt_tokens, stream.usage.completion_tokens) == (7, 10)


def test_thinking_usage_in_a_stream(adapter, dep, wire):
    add_stream(wire, fixture("googleai/streaming-success-thinking-reply-thought-summary.txt"), 37)
    chunks = read_stream(adapter, dep, chat(stream=True, include_usage=True))
    usage = chunks[-1]["usage"]
    assert usage["completion_tokens_details"] == {"reasoning_tokens": 540}
    assert usage["completion_tokens"] == 48 + 540 and usage["prompt_tokens"] == 10
    assert "**" not in text_of_chunks(chunks)[:2]       # the thought summary ("**Exploring…") is not the answer


@pytest.mark.parametrize("size", [7, 37])
def test_a_streamed_function_call_is_one_whole_tool_call_delta(adapter, dep, wire, size):
    raw = fixture("googleai/streaming-success-thinking-function-call-thought-summary-signature.txt")
    call = upstream_events(raw)[-1]["candidates"][0]["content"]["parts"][0]
    add_stream(wire, raw, size)
    chunks = read_stream(adapter, dep, chat(stream=True, include_usage=True, tools=[NOW]))
    deltas = [c["choices"][0]["delta"]["tool_calls"] for c in chunks if c["choices"] and
              c["choices"][0]["delta"].get("tool_calls")]
    assert len(deltas) == 1 and len(deltas[0]) == 1
    delta = deltas[0][0]
    assert delta["index"] == 0 and delta["type"] == "function" and delta["function"]["name"] == "now"
    assert json.loads(delta["function"]["arguments"]) == call["functionCall"]["args"]
    assert signature_of(delta["id"]) == call["thoughtSignature"]
    assert finishes(chunks) == ["tool_calls"]
    assert chunks[-1]["usage"]["total_tokens"] == 38 + 6 + 168
    assert text_of_chunks(chunks) == ""          # both thought summaries dropped


def test_parallel_calls_in_a_stream_are_numbered_from_zero(adapter, dep, wire):
    args = [{"city": "Paris", "units": {"temp": "C"}}, {"city": "Oslo"}]
    add_stream(wire, events(
        {"candidates": [{"content": {"role": "model", "parts": [{"text": "Checking."}]}}]},
        {"candidates": [{"content": {"role": "model", "parts": [
            {"functionCall": {"name": "get_weather", "args": args[0]}},
            {"functionCall": {"name": "get_weather", "args": args[1]}}]}, "finishReason": "STOP"}],
         "usageMetadata": {"promptTokenCount": 4, "candidatesTokenCount": 9}}), 37)
    chunks = read_stream(adapter, dep, chat(stream=True, tools=[WEATHER]))
    calls = [c["choices"][0]["delta"]["tool_calls"][0] for c in chunks if c["choices"][0]["delta"].get("tool_calls")]
    assert [c["index"] for c in calls] == [0, 1]
    assert [json.loads(c["function"]["arguments"]) for c in calls] == args
    assert calls[0]["id"] != calls[1]["id"]
    assert text_of_chunks(chunks) == "Checking." and finishes(chunks) == ["tool_calls"]


def test_a_vertex_function_call_stream(adapter, dep, wire):
    add_stream(wire, fixture("vertexai/streaming-success-function-call-short.txt"), 7)
    chunks = read_stream(adapter, dep, chat(stream=True, tools=[WEATHER]))
    call = chunks[1]["choices"][0]["delta"]["tool_calls"][0]
    assert call["function"] == {"name": "getTemperature", "arguments": '{"city":"San Jose"}'}
    assert finishes(chunks) == ["tool_calls"]


@pytest.mark.parametrize("name", ["googleai/streaming-failure-prompt-blocked-safety.txt",
                                  "vertexai/streaming-failure-prompt-blocked-safety.txt"])
def test_a_blocked_prompt_streams_an_empty_filtered_answer(adapter, dep, wire, name):
    add_stream(wire, fixture(name))
    chunks = read_stream(adapter, dep, chat(stream=True))
    assert text_of_chunks(chunks) == "" and finishes(chunks) == ["content_filter"]


def test_a_recitation_stops_the_stream_as_filtered(adapter, dep, wire):
    add_stream(wire, fixture("googleai/streaming-failure-recitation-no-content.txt"), 37)
    chunks = read_stream(adapter, dep, chat(stream=True))
    assert finishes(chunks) == ["content_filter"] and text_of_chunks(chunks).startswith("text1text2")


def test_an_error_mid_stream_raises_after_the_content_already_sent(adapter, dep, wire):
    add_stream(wire, fixture("vertexai/streaming-failure-error-mid-stream.txt"), 37)
    stream = adapter.stream(dep, chat(stream=True))
    received = []
    with pytest.raises(UpstreamFailed) as caught:
        for payload in stream:
            received.append(payload)
    stream.close()
    assert b"First " in b"".join(received) and b"Second " in b"".join(received)
    assert caught.value.status == 502 and caught.value.code == "upstream_error"
    assert b'"finish_reason":"stop"' not in b"".join(received)    # no finish for a cut answer


def test_a_rate_limit_mid_stream_is_a_rate_limit(adapter, dep, wire):
    error = {"error": {"code": 429, "message": "Resource has been exhausted", "status": "RESOURCE_EXHAUSTED"}}
    add_stream(wire, events(answer("partial", finish=None)) + json.dumps(error, indent=2).encode() + b"\n")
    stream = adapter.stream(dep, chat(stream=True))
    with pytest.raises(UpstreamRateLimited):
        list(stream)
    stream.close()


def test_an_error_as_the_whole_stream_body_is_raised_before_any_byte(adapter, dep, wire):
    add_stream(wire, fixture("googleai/streaming-failure-image-rejected.txt"), 7)
    with pytest.raises(UpstreamClientError) as caught:
        adapter.stream(dep, chat(stream=True))
    assert caught.value.status == 400 and caught.value.message == "Request contains an invalid argument."


def test_a_json_error_answering_a_stream_request(adapter, dep, wire):
    body = fixture("googleai/unary-failure-api-key.json")
    wire.add(responses.POST, STREAM_URL, body=body, status=200, content_type="application/json")
    with pytest.raises(UpstreamAuthFailed):
        adapter.stream(dep, chat(stream=True))


def test_a_stream_cut_before_any_finish_is_a_failure(adapter, dep, wire):
    add_stream(wire, events(answer("partial", finish=None), answer(" more", finish=None)))
    stream = adapter.stream(dep, chat(stream=True))
    with pytest.raises(UpstreamFailed) as caught:
        list(stream)
    stream.close()
    assert "ended before it was complete" in caught.value.message


def test_lf_framed_streams_too(adapter, dep, wire):
    add_stream(wire, fixture("googleai/streaming-success-finish-message.txt"), 7)
    chunks = read_stream(adapter, dep, chat(stream=True, include_usage=True))
    assert text_of_chunks(chunks) == "Hello world!" and finishes(chunks) == ["stop"]
    assert all(c["choices"] for c in chunks)        # Gemini sent no usage: no usage chunk is invented


def test_a_stream_with_n_above_one_is_refused(adapter, dep, wire):
    with pytest.raises(InvalidRequest) as caught:
        adapter.stream(dep, chat(stream=True, n=2))
    assert caught.value.param == "n" and caught.value.code == "unsupported_parameter"
    assert not wire.calls


def test_the_decoder_hands_on_raw_json_split_anywhere():
    raw = fixture("vertexai/streaming-failure-error-mid-stream.txt")
    for size in (1, 7, 37, len(raw)):
        decoder = GeminiStreamDecoder()
        found = [event for piece in split(raw, size) for event in decoder.feed(piece)] + decoder.flush()
        assert len(found) == 3
        assert json.loads(found[2][1])["error"]["status"] == "CANCELLED"
        assert json.loads(found[0][1])["candidates"][0]["content"]["parts"][0]["text"] == "First "


def test_the_decoder_passes_on_an_unfinished_raw_object_at_the_end():
    decoder = GeminiStreamDecoder()
    assert decoder.feed(b'data: {"a": 1}\r\n\r\n{\n  "error": {\n') == [(None, b'{"a": 1}')]
    assert decoder.flush() == [(None, b'{\n  "error": {\n')]


# --- errors -----------------------------------------------------------------------------------------

def google(code: int, status: str, message: str, **extra) -> dict:
    return {"error": {"code": code, "message": message, "status": status, **extra}}


CONTEXT = "The input token count (1200000) exceeds the maximum number of tokens allowed (1048576)."


@pytest.mark.parametrize("status, body, kind, code", [
    (400, json.loads(fixture("googleai/unary-failure-api-key.json")), UpstreamAuthFailed, "upstream_auth_error"),
    (401, google(401, "UNAUTHENTICATED", "Request had invalid authentication credentials."), UpstreamAuthFailed,
     "upstream_auth_error"),
    (403, json.loads(fixture("googleai/unary-failure-generativelanguage-api-not-enabled.json")), UpstreamAuthFailed,
     "upstream_auth_error"),
    (404, json.loads(fixture("googleai/unary-failure-unknown-model.json")), UpstreamClientError, "not_found"),
    (400, google(400, "INVALID_ARGUMENT", CONTEXT), ContextLengthExceeded, "context_length_exceeded"),
    (400, google(400, "INVALID_ARGUMENT", "Request contains an invalid argument."), UpstreamClientError,
     "invalid_argument"),
    (429, json.loads(fixture("vertexai/unary-failure-quota-exceeded.json")), UpstreamRateLimited,
     "rate_limit_exceeded"),
    (503, google(503, "UNAVAILABLE", "The model is overloaded. Please try again later."), UpstreamFailed,
     "upstream_error"),
    (500, google(500, "INTERNAL", "An internal error has occurred at /srv/x.cc:12"), UpstreamFailed, "upstream_error"),
    (504, google(504, "DEADLINE_EXCEEDED", "Deadline expired before operation could complete."), UpstreamTimeout,
     "upstream_timeout"),
], ids=["400-api-key-invalid", "401", "403", "404", "400-context", "400", "429", "503", "500", "504"])
def test_error_mapping(adapter, dep, wire, status, body, kind, code):
    wire.add(responses.POST, GENERATE_URL, json=body, status=status, headers={"Retry-After": "7"})
    with pytest.raises(GatewayError) as caught:
        adapter.complete(dep, chat())
    error = caught.value
    assert type(error) is kind and error.code == code
    validate("ErrorResponse", error.body())
    if kind in (UpstreamClientError, ContextLengthExceeded):
        assert error.status == status and error.message == body["error"]["message"]
    else:
        assert body["error"]["message"] not in error.message or kind is UpstreamRateLimited
    if status == 429:
        assert error.retry_after == 7
    if status == 503:
        assert error.retryable and error.retry_after == 7
    if status == 400 and kind is ContextLengthExceeded:
        assert error.param == "messages"


def test_the_same_mapping_applies_to_streams(adapter, dep, wire):
    wire.add(responses.POST, STREAM_URL, json=google(503, "UNAVAILABLE", "overloaded"), status=503)
    with pytest.raises(UpstreamFailed) as caught:
        adapter.stream(dep, chat(stream=True))
    assert caught.value.retryable


def test_an_error_sent_with_200_is_still_an_error(adapter, dep, wire):
    wire.add(responses.POST, GENERATE_URL, json=google(429, "RESOURCE_EXHAUSTED", "quota"), status=200)
    with pytest.raises(UpstreamRateLimited):
        adapter.complete(dep, chat())


def test_a_key_in_an_upstream_message_is_redacted(adapter, dep, wire):
    wire.add(responses.POST, GENERATE_URL, json=google(400, "INVALID_ARGUMENT", f"bad request for key {KEY}"),
             status=400)
    with pytest.raises(UpstreamClientError) as caught:
        adapter.complete(dep, chat())
    assert KEY not in caught.value.message and "***" in caught.value.message


# --- parameters Gemini cannot take ----------------------------------------------------------------

REFUSED = [("logit_bias", {"50256": -100}), ("parallel_tool_calls", False), ("user", "u-1"), ("store", True),
           ("metadata", {"a": "b"}), ("functions", [{"name": "f"}]), ("logprobs", True),
           ("reasoning_effort", "low"), ("modalities", ["text", "audio"])]
REFUSED_EXTRAS = [("function_call", "auto"), ("prediction", {"type": "content", "content": "x"}),
                  ("audio", {"voice": "alloy"}), ("service_tier", "flex"), ("prompt_cache_key", "k"),
                  ("some_vendor_knob", 1)]


@pytest.mark.parametrize("name, value", REFUSED + REFUSED_EXTRAS)
def test_a_parameter_gemini_cannot_take_is_a_400_naming_it(adapter, dep, wire, name, value):
    extras = dict(REFUSED_EXTRAS)
    request = chat(extra={name: value}) if name in extras else chat(**{name: value})
    with pytest.raises(InvalidRequest) as caught:
        adapter.complete(dep, request)
    error = caught.value
    assert error.status == 400 and error.param == name and error.code == "unsupported_parameter"
    assert name in error.message and "Gemini" in error.message
    assert not wire.calls


@pytest.mark.parametrize("name, value", REFUSED + REFUSED_EXTRAS)
def test_with_drop_params_it_is_left_out(wire, name, value):
    dep = deployment(drop_params=True)
    adapter = GeminiAdapter([dep], pool_maxsize=2, redactor=Redactor([KEY]))
    extras = dict(REFUSED_EXTRAS)
    request = chat(extra={name: value}) if name in extras else chat(**{name: value})
    wire.add(responses.POST, GENERATE_URL, json=answer())
    adapter.complete(dep, request)
    assert sent(wire) == {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}


def test_n_in_a_stream_is_dropped_with_drop_params(wire):
    dep = deployment(drop_params=True)
    adapter = GeminiAdapter([dep], pool_maxsize=2, redactor=Redactor([KEY]))
    add_stream(wire, fixture("googleai/streaming-success-basic-reply-short.txt"))
    read_stream(adapter, dep, chat(stream=True, n=3, temperature=0.1))
    assert sent(wire) == {"contents": [{"role": "user", "parts": [{"text": "hi"}]}],
                          "generationConfig": {"temperature": 0.1}}


def test_values_that_ask_for_nothing_pass(adapter, dep, wire):
    complete(adapter, dep, wire, chat(parallel_tool_calls=True, store=False, logprobs=False, modalities=["text"],
                                      n=1, user=None, stream_options=None))
    assert sent(wire) == {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}


# --- embeddings -------------------------------------------------------------------------------------

def embed_answer(*vectors) -> dict:
    return {"embeddings": [{"values": list(v)} for v in vectors]}


def test_embeddings_go_to_batch_embed_contents(adapter, wire):
    dep = deployment(id="emb1", upstream_model="text-embedding-004")
    wire.add(responses.POST, EMBED_URL, json=embed_answer([0.25, -1.5], [1.0, 0.0]))
    completion = adapter.complete(dep, embeddings(input=["a", "bb"], dimensions=2))
    assert sent(wire) == {"requests": [
        {"model": "models/text-embedding-004", "content": {"parts": [{"text": "a"}]}, "outputDimensionality": 2},
        {"model": "models/text-embedding-004", "content": {"parts": [{"text": "bb"}]}, "outputDimensionality": 2}]}
    assert wire.calls[0].request.headers["x-goog-api-key"] == KEY
    validate("CreateEmbeddingResponse", completion.body)
    assert [d["embedding"] for d in completion.body["data"]] == [[0.25, -1.5], [1.0, 0.0]]
    assert [d["index"] for d in completion.body["data"]] == [0, 1] and completion.body["model"] == "shin-embed"
    assert completion.usage.prompt_tokens == completion.body["usage"]["prompt_tokens"] > 0


def test_base64_embeddings_are_little_endian_float32(adapter, wire):
    dep = deployment(id="emb1", upstream_model="text-embedding-004")
    wire.add(responses.POST, EMBED_URL, json=embed_answer([0.25, -1.5, 3.0]))
    body = adapter.complete(dep, embeddings(input="a", encoding_format="base64")).body
    validate("CreateEmbeddingResponseBase64", body)
    assert struct.unpack("<3f", base64.b64decode(body["data"][0]["embedding"])) == (0.25, -1.5, 3.0)
    assert sent(wire)["requests"] == [{"model": "models/text-embedding-004", "content": {"parts": [{"text": "a"}]}}]


def test_token_id_inputs_are_refused(adapter, wire):
    dep = deployment(id="emb1", upstream_model="text-embedding-004")
    with pytest.raises(InvalidRequest) as caught:
        adapter.complete(dep, embeddings(input=[[1, 2, 3]]))
    assert caught.value.param == "input" and not wire.calls


def test_a_short_embeddings_answer_is_a_bad_upstream_response(adapter, wire):
    dep = deployment(id="emb1", upstream_model="text-embedding-004")
    wire.add(responses.POST, EMBED_URL, json=embed_answer([0.5]))
    with pytest.raises(BadUpstreamResponse):
        adapter.complete(dep, embeddings(input=["a", "b"]))


def test_base64_of_an_embedding_that_is_not_numbers_is_a_bad_upstream_response(adapter, wire):
    dep = deployment(id="emb1", upstream_model="text-embedding-004")
    wire.add(responses.POST, EMBED_URL, json=embed_answer(["x", 1.0]))
    with pytest.raises(BadUpstreamResponse):
        adapter.complete(dep, embeddings(input="a", encoding_format="base64"))


def test_legacy_completions_are_asked_through_generate_content(adapter, dep, wire):
    wire.add(responses.POST, GENERATE_URL, json=answer("Hello there."))
    request = ModelRequest(endpoint="completions", model=ALIAS, params={"model": ALIAS, "prompt": "Say hi"},
                           extra={})
    result = adapter.complete(dep, request).body
    assert json.loads(wire.calls[0].request.body)["contents"] == [{"role": "user", "parts": [{"text": "Say hi"}]}]
    validate("CreateCompletionResponse", result)
    assert result["object"] == "text_completion" and result["choices"][0]["text"] == "Hello there."


def test_a_429s_retry_info_in_the_body_is_its_retry_after(adapter, dep, wire):
    """Google says how long to wait in `details[].retryDelay`, not in a header."""
    body = google(429, "RESOURCE_EXHAUSTED", "Quota exceeded for metric generate_content_requests")
    body["error"]["details"] = [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "27s"}]
    wire.add(responses.POST, GENERATE_URL, json=body, status=429)
    with pytest.raises(UpstreamRateLimited) as caught:
        adapter.complete(dep, chat())
    assert caught.value.retry_after == 27
