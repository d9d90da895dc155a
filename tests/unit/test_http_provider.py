"""The shared provider base (http.py), its failure table (failures.py) and OpenAI builders (chunks.py).

A minimal line-protocol provider, written here, stands for any translating adapter: each
SSE event's data is one OpenAI delta text, `end` ends the stream, `boom:<status>` is an
error event. The base must frame, bound, end and refuse its streams alike for all.
"""
from __future__ import annotations

import json

import pytest
import responses

from gateway.errors import (BadUpstreamResponse, ContentPolicyViolation, ContextLengthExceeded, InvalidRequest,
                            UpstreamAuthFailed, UpstreamClientError, UpstreamFailed, UpstreamRateLimited,
                            UpstreamTimeout)
from gateway.providers.chunks import (ChunkWriter, chat_completion, image_source, text_of, tool_arguments,
                                      usage_dict)
from gateway.providers.failures import (AUTH, CONTENT_POLICY, CONTEXT_LENGTH, OVERLOADED, RATE_LIMITED, SERVER,
                                        TIMEOUT, StreamFailure, UpstreamError, gateway_error)
from gateway.providers.http import HTTPProvider
from gateway.redact import Redactor
from gateway.types import Completion, Deployment, ModelRequest, Usage
from tests.functional.openapi_schemas import validate

BASE = "http://lines.test"
SECRET = "lines-secret-key-9876"


class LinesProvider(HTTPProvider):
    label = "Lines"

    def url(self, deployment, base, endpoint, stream):
        return f"{base}/{'stream' if stream else 'answer'}"

    def request_body(self, deployment, request, stream):
        self.refuse_unsupported(deployment, request, ("seed", "logprobs", "presence_penalty"))
        return {"text": text_of(request.params["messages"][-1]["content"])}

    def completion(self, deployment, request, body):
        if "say" not in body:
            raise KeyError("say")
        return Completion(chat_completion(request.model, {"content": body["say"]}, "stop", usage_dict(1, 1)),
                          Usage(1, 1, 2))

    def translator(self, deployment, request, out):
        return _LinesTranslator(out)


class _LinesTranslator:
    def __init__(self, out: ChunkWriter):
        self.out, self.done = out, False

    def feed(self, event):
        data = event[1].decode()
        if data == "end":
            self.done = True
            return [self.out.finish("stop"), self.out.usage(usage_dict(3, 2))]
        if data.startswith("boom:"):
            raise StreamFailure(UpstreamError(int(data[5:]), "overloaded", kind=OVERLOADED))
        if data == "odd":
            return [self.out.text({}["x"])]   # a translator tripping over an unexpected shape
        return [self.out.text(data)]

    def end(self):
        return ()


def deployment(**kw) -> Deployment:
    fields = dict(id="lines1", model_name="lines", provider="lines", upstream_model="l", api_base=BASE,
                  api_key=SECRET, timeout=20.0, stream_timeout=5.0)
    fields.update(kw)
    return Deployment(**fields)


def chat(*, stream=False, include_usage=False, **params) -> ModelRequest:
    body = {"model": "lines", "messages": [{"role": "user", "content": "hi"}], **params}
    return ModelRequest(endpoint="chat/completions", model="lines", params=body, extra={}, stream=stream,
                        include_usage=include_usage, request_id="r1")


@pytest.fixture
def wire():
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        yield mock


@pytest.fixture
def adapter():
    adapter = LinesProvider([deployment()], pool_maxsize=2, redactor=Redactor([SECRET]))
    yield adapter
    adapter.close()


def sse(*events: str) -> bytes:
    return b"".join(f"data: {e}\n\n".encode() for e in events)


def streamed(adapter, dep=None, **kw) -> tuple[list[dict], bytes]:
    stream = adapter.stream(dep or deployment(), chat(stream=True, **kw))
    payloads = []
    try:
        for payload in stream:
            payloads.append(payload)
    finally:
        stream.close()
    joined = b"".join(payloads)
    return [json.loads(line[6:]) for line in joined.split(b"\n\n") if line], joined


# --- streams through the base ----------------------------------------------------------------------

def test_a_translated_stream_is_valid_chunks_and_ends_at_the_translators_end(adapter, wire):
    wire.add(responses.POST, f"{BASE}/stream", body=sse("Hel", "lo", "end", "never read"),
             content_type="text/event-stream")
    chunks, _ = streamed(adapter, include_usage=True)
    for chunk in chunks:
        validate("CreateChatCompletionStreamResponse", chunk)
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"]) == "Hello"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["total_tokens"] == 5
    assert len({c["id"] for c in chunks}) == 1 and {c["model"] for c in chunks} == {"lines"}


def test_without_include_usage_the_usage_chunk_is_counted_but_not_sent(adapter, wire):
    wire.add(responses.POST, f"{BASE}/stream", body=sse("Hi", "end"), content_type="text/event-stream")
    stream = adapter.stream(deployment(), chat(stream=True))
    sent = b"".join(stream)
    stream.close()
    assert b'"usage"' not in sent and stream.usage == Usage(3, 2, 5)


def test_a_stream_that_ends_before_its_end_is_a_failure_never_a_whole_answer(adapter, wire):
    wire.add(responses.POST, f"{BASE}/stream", body=sse("Hel", "lo"), content_type="text/event-stream")
    with pytest.raises(UpstreamFailed, match="ended before it was complete"):
        streamed(adapter)


def test_an_error_event_becomes_the_failure_tables_error(adapter, wire):
    wire.add(responses.POST, f"{BASE}/stream", body=sse("Hel", "boom:529"), content_type="text/event-stream")
    with pytest.raises(UpstreamFailed) as caught:
        streamed(adapter)
    assert caught.value.retryable and "overloaded" in caught.value.message


def test_an_event_of_an_unexpected_shape_is_a_bad_upstream_response_not_a_crash(adapter, wire):
    wire.add(responses.POST, f"{BASE}/stream", body=sse("Hel", "odd"), content_type="text/event-stream")
    with pytest.raises(BadUpstreamResponse, match="unexpected shape"):
        streamed(adapter)


def test_a_json_answer_to_a_stream_request_is_not_taken_for_a_stream(adapter, wire):
    wire.add(responses.POST, f"{BASE}/stream", json={"say": "no stream"})
    with pytest.raises(BadUpstreamResponse, match="without a stream"):
        streamed(adapter)


def test_a_whole_answer_of_an_unexpected_shape_is_a_bad_upstream_response(adapter, wire):
    wire.add(responses.POST, f"{BASE}/answer", json={"unexpected": True})
    with pytest.raises(BadUpstreamResponse):
        adapter.complete(deployment(), chat())
    wire.replace(responses.POST, f"{BASE}/answer", body=b"<html>oops</html>")
    with pytest.raises(BadUpstreamResponse, match="not JSON"):
        adapter.complete(deployment(), chat())


def test_a_status_goes_through_describe_error_and_the_table_with_the_key_redacted(adapter, wire):
    wire.add(responses.POST, f"{BASE}/answer", json={"error": {"message": f"no such thing for {SECRET}",
                                                               "type": "invalid_request_error", "code": "nope"}},
             status=404)
    with pytest.raises(UpstreamClientError) as caught:
        adapter.complete(deployment(), chat())
    assert caught.value.status == 404 and caught.value.code == "nope" and SECRET not in caught.value.message


def test_an_endpoint_the_provider_does_not_serve_is_a_400(adapter):
    request = ModelRequest(endpoint="embeddings", model="lines", params={"model": "lines", "input": "x"}, extra={})
    with pytest.raises(InvalidRequest) as caught:
        adapter.complete(deployment(), request)
    assert caught.value.code == "unsupported_endpoint" and "Lines" in caught.value.message


# --- parameters a provider cannot take ---------------------------------------------------------------

def test_a_parameter_the_provider_cannot_take_is_a_400_naming_it_and_the_provider(adapter):
    with pytest.raises(InvalidRequest) as caught:
        adapter.complete(deployment(), chat(seed=3))
    error = caught.value
    assert (error.status, error.param, error.code) == (400, "seed", "unsupported_parameter")
    assert "Lines" in error.message and "drop_params" in error.message


@pytest.mark.parametrize("params", [{"logprobs": False}, {"presence_penalty": 0}, {"presence_penalty": 0.0},
                                    {"seed": None}])
def test_values_that_ask_for_nothing_are_not_refused(adapter, wire, params):
    wire.add(responses.POST, f"{BASE}/answer", json={"say": "ok"})
    assert adapter.complete(deployment(), chat(**params)).body["choices"][0]["message"]["content"] == "ok"


def test_with_drop_params_the_parameter_is_reported_for_leaving_out(adapter):
    dep = deployment(drop_params=True)
    assert adapter.refuse_unsupported(dep, chat(seed=3, logprobs=True), ("seed", "logprobs", "top_k")) \
        == {"seed", "logprobs"}


# --- the failure table ---------------------------------------------------------------------------------

@pytest.mark.parametrize("error, expected, retryable", [
    (UpstreamError(401, "bad key"), UpstreamAuthFailed, True),
    (UpstreamError(403, "forbidden"), UpstreamAuthFailed, True),
    (UpstreamError(400, "API key not valid", kind=AUTH), UpstreamAuthFailed, True),
    (UpstreamError(429, "slow down"), UpstreamRateLimited, True),
    (UpstreamError(400, "quota", kind=RATE_LIMITED), UpstreamRateLimited, True),
    (UpstreamError(529, "Overloaded", kind=OVERLOADED), UpstreamFailed, True),
    (UpstreamError(400, "prompt is too long", kind=CONTEXT_LENGTH), ContextLengthExceeded, False),
    (UpstreamError(400, "refused", kind=CONTENT_POLICY), ContentPolicyViolation, False),
    (UpstreamError(422, "bad", code="c", param="p"), UpstreamClientError, False),
    (UpstreamError(408, "slow"), UpstreamTimeout, True),
    (UpstreamError(400, "deadline", kind=TIMEOUT), UpstreamTimeout, True),
    (UpstreamError(424, "model error", kind=SERVER), UpstreamFailed, True),
    (UpstreamError(500, "Traceback at /srv/app.py"), UpstreamFailed, True),
    (UpstreamError(413, "too large"), UpstreamFailed, False),
])
def test_the_failure_table(error, expected, retryable):
    mapped = gateway_error(error, {"retry-after": "3"}, "deployment d", Redactor([]))
    assert type(mapped) is expected and mapped.retryable == retryable
    validate("ErrorResponse", mapped.body())
    if expected in (UpstreamAuthFailed, UpstreamFailed):
        assert error.message not in mapped.message     # upstream text of these is never echoed
    if expected is UpstreamRateLimited:
        assert mapped.retry_after == 3


def test_a_retry_after_from_the_body_wins_over_the_headers():
    mapped = gateway_error(UpstreamError(429, "quota", retry_after=27.0), {"retry-after": "3"}, "d", Redactor([]))
    assert mapped.retry_after == 27.0


# --- OpenAI builders -------------------------------------------------------------------------------------

def test_the_chunk_writers_chunks_are_what_openai_sends():
    out = ChunkWriter("m", include_usage=True)
    chunks = [out.role(), out.text("a"), out.tool_call(0, id="call_1", name="f", arguments=""),
              out.tool_call(0, arguments='{"x"'), out.finish("tool_calls"), out.usage(usage_dict(2, 3, cached=1))]
    for payload, chunk in chunks:
        assert payload.startswith(b"data: ") and payload.endswith(b"\n\n") and payload.count(b"\n") == 2
        sent = json.loads(payload[6:])
        validate("CreateChatCompletionStreamResponse", sent)
        assert chunk is None or chunk == sent     # text deltas go out unparsed, like relayed events
        assert (sent["id"], sent["model"], sent["object"]) == (out.id, "m", "chat.completion.chunk")
    assert json.loads(chunks[1][0][6:])["choices"][0]["delta"] == {"content": "a"}
    out.id = "msg_upstream"     # an upstream's own id, set before the text: every later chunk carries it
    assert json.loads(out.text('q"\u00e9\n')[0][6:])["choices"][0]["delta"]["content"] == 'q"\u00e9\n'
    assert json.loads(out.text("x")[0][6:])["id"] == "msg_upstream"
    assert chunks[2][1]["choices"][0]["delta"]["tool_calls"][0] == {
        "index": 0, "id": "call_1", "type": "function", "function": {"name": "f", "arguments": ""}}
    assert chunks[3][1]["choices"][0]["delta"]["tool_calls"][0] == {"index": 0, "function": {"arguments": '{"x"'}}
    assert chunks[5][1]["usage"] == {"prompt_tokens": 2, "completion_tokens": 3, "total_tokens": 5,
                                     "prompt_tokens_details": {"cached_tokens": 1}}


def test_a_whole_completion_is_what_openai_sends():
    body = chat_completion("m", {"content": None, "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}, "tool_calls",
        usage_dict(1, 2, reasoning=1))
    validate("CreateChatCompletionResponse", body)
    assert body["choices"][0]["message"]["tool_calls"][0]["id"] == "c1"


@pytest.mark.parametrize("arguments, expected", [('{"a": 1}', {"a": 1}), ("", {}), (None, {}), ({"b": 2}, {"b": 2})])
def test_tool_arguments_for_upstreams_that_take_objects(arguments, expected):
    assert tool_arguments(arguments, "messages[1].tool_calls[0].function.arguments") == expected


@pytest.mark.parametrize("arguments", ["{not json", "[1, 2]", "3"])
def test_tool_arguments_that_are_no_json_object_are_a_400_naming_the_path(arguments):
    with pytest.raises(InvalidRequest) as caught:
        tool_arguments(arguments, "messages[1].tool_calls[0].function.arguments")
    assert caught.value.param == "messages[1].tool_calls[0].function.arguments"


def test_image_sources():
    assert image_source("data:image/png;base64,iVBORw0K") == ("image/png", "iVBORw0K")
    assert image_source("https://example.com/cat.png") is None
    for bad in ("data:image/png,raw", "data:text/plain;base64,aGk=", "data:image/png;base64,"):
        with pytest.raises(InvalidRequest) as caught:
            image_source(bad, "messages[0].content[1].image_url.url")
        assert caught.value.param == "messages[0].content[1].image_url.url"


def test_text_of_every_content_form():
    assert text_of(None) == "" and text_of("hi") == "hi"
    assert text_of([{"type": "text", "text": "a"}, {"type": "image_url", "image_url": {"url": "x"}},
                    {"type": "text", "text": "b"}]) == "ab"


# --- legacy completions from a provider that only chats ------------------------------------------

def completion_request(prompt="Say hi", *, stream=False, include_usage=False, **params) -> ModelRequest:
    body = {"model": "lines", "prompt": prompt, **params}
    if stream:
        body["stream"] = True
    return ModelRequest(endpoint="completions", model="lines", params=body, extra={}, stream=stream,
                        include_usage=include_usage, request_id="r2")


def test_a_legacy_completion_is_asked_as_a_chat_and_answered_as_a_text_completion(adapter, wire):
    wire.add(responses.POST, f"{BASE}/answer", json={"say": "Hi there"})
    answer = adapter.complete(deployment(), completion_request(max_tokens=5))
    assert json.loads(wire.calls[0].request.body) == {"text": "Say hi"}   # the prompt went as the user message
    validate("CreateCompletionResponse", answer.body)
    assert answer.body["object"] == "text_completion" and answer.body["id"].startswith("cmpl-")
    assert answer.body["choices"] == [{"text": "Hi there", "index": 0, "logprobs": None, "finish_reason": "stop"}]
    assert answer.usage == Usage(1, 1, 2)


def test_a_streamed_legacy_completion_is_text_completion_chunks(adapter, wire):
    wire.add(responses.POST, f"{BASE}/stream", body=sse("Hel", "lo", "end"), content_type="text/event-stream")
    stream = adapter.stream(deployment(), completion_request(stream=True, include_usage=True))
    events = [json.loads(line[6:]) for line in b"".join(stream).split(b"\n\n") if line]
    stream.close()
    for event in events:
        validate("CreateCompletionStreamChunk", event)
        assert event["object"] == "text_completion"
    assert "".join(e["choices"][0]["text"] for e in events if e["choices"]) == "Hello"
    assert [e["choices"][0]["finish_reason"] for e in events if e["choices"]][-1] == "stop"
    assert events[-1]["choices"] == [] and events[-1]["usage"]["total_tokens"] == 5


@pytest.mark.parametrize("params, param", [({"echo": True}, "echo"), ({"suffix": "!"}, "suffix"),
                                           ({"best_of": 3}, "best_of"), ({"prompt": ["a", "b"]}, "prompt"),
                                           ({"prompt": [1, 2, 3]}, "prompt")])
def test_legacy_fields_a_chat_cannot_honour_are_refused_naming_them(adapter, params, param):
    request = completion_request(**{"prompt": "x", **params})
    with pytest.raises(InvalidRequest) as caught:
        adapter.complete(deployment(), request)
    assert caught.value.param == param


def test_legacy_no_op_values_and_a_one_prompt_batch_are_taken(adapter, wire):
    wire.add(responses.POST, f"{BASE}/answer", json={"say": "ok"})
    answer = adapter.complete(deployment(), completion_request(["only one"], echo=False, best_of=1))
    assert json.loads(wire.calls[0].request.body) == {"text": "only one"}
    assert answer.body["choices"][0]["text"] == "ok"
