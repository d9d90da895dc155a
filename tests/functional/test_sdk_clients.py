"""Real clients against the real gateway: the openai SDK (sync, async, streams, errors,
embeddings, models), LangChain's ChatOpenAI and LlamaIndex's OpenAILike.

Every byte the clients receive is recorded at httpx's transport (`wire` fixture)
and every response, stream chunk and error body is validated against OpenAI's
OpenAPI spec, so a gateway answer the SDK merely tolerates still fails here.
"""
from __future__ import annotations

import asyncio
import json
import time
import uuid
from pathlib import Path

import openai
import pytest

from .conftest import MASTER_KEY, STANDARD_MODELS
from .openapi_schemas import record_httpx, validate

FIXTURES = Path(__file__).resolve().parents[1] / "reference" / "fixtures" / "openai"
STREAM_TEXT = "tok0 tok1 tok2 tok3 tok4 "      # the fake upstream's generated 5-chunk stream
UPSTREAM_VECTOR = [0.1, -0.2, 0.3, 0.4]        # the fake upstream's embedding of input 0
TIMEOUT = 15.0


# --- fixtures ---------------------------------------------------------------------------------

class Wire:
    """What the httpx transports actually received, validated against the spec."""

    def __init__(self):
        self.exchanges = []
        self._checked = 0

    def check(self) -> list[dict]:
        """Validate every exchange so far (JSON bodies, each SSE chunk, error bodies); return the results."""
        assert self.exchanges, "no HTTP exchange was recorded"
        results = [exchange.check() for exchange in self.exchanges]
        self._checked = len(self.exchanges)
        return results

    def last(self):
        assert self.exchanges, "no HTTP exchange was recorded"
        return self.exchanges[-1]


@pytest.fixture
def wire():
    recorder = Wire()
    undo = record_httpx(recorder.exchanges)
    try:
        yield recorder
    finally:
        undo()
    if recorder._checked < len(recorder.exchanges):
        recorder.check()  # nothing the test forgot goes unvalidated


@pytest.fixture(params=["", "/v1"], ids=["base_url=root", "base_url=/v1"])
def base_url(request, gateway):
    return gateway.url + request.param


@pytest.fixture
def client(base_url):
    with openai.OpenAI(api_key=MASTER_KEY, base_url=base_url, max_retries=0, timeout=TIMEOUT) as sdk:
        yield sdk


@pytest.fixture
def v1_client(gateway):
    with openai.OpenAI(api_key=MASTER_KEY, base_url=f"{gateway.url}/v1", max_retries=0,
                       timeout=TIMEOUT) as sdk:
        yield sdk


def unique(text: str) -> str:
    return f"{text} [{uuid.uuid4().hex[:8]}]"


def upstream_request_with(upstream, text: str) -> dict:
    """The one request the fake upstream got whose body contains `text`."""
    with upstream.lock:
        matching = [r for r in upstream.requests if text.encode() in r["raw"]]
    assert len(matching) == 1, f"expected one upstream request containing {text!r}, got {len(matching)}"
    return matching[0]


# --- openai SDK: plain calls -----------------------------------------------------------------

def test_sync_create(client, upstream, wire):
    prompt = unique("What is the capital of France?")
    response = client.chat.completions.create(
        model="shin-llama-3-1-70b",
        messages=[{"role": "system", "content": "You are a helpful assistant."},
                  {"role": "user", "content": prompt}])

    assert response.choices[0].message.content == f"echo: {prompt}"
    assert response.choices[0].finish_reason == "stop"
    assert response.model == "shin-llama-3-1-70b"
    assert response.usage.total_tokens == 18
    seen = upstream_request_with(upstream, prompt)
    assert seen["path"] == "/v1/chat/completions"
    assert seen["body"]["model"] == STANDARD_MODELS["shin-llama-3-1-70b"]
    assert [m["role"] for m in seen["body"]["messages"]] == ["system", "user"]
    [result] = wire.check()
    assert result["schema"] == "CreateChatCompletionResponse"


def test_multi_turn(client, upstream, wire):
    first, second = unique("Hi, I'm learning Python"), unique("Can you explain functions?")
    messages = [{"role": "user", "content": first}]
    reply = client.chat.completions.create(model="shin-llama-3-1-8b", messages=messages)
    messages += [{"role": "assistant", "content": reply.choices[0].message.content},
                 {"role": "user", "content": second}]
    reply2 = client.chat.completions.create(model="shin-llama-3-1-8b", messages=messages)

    assert reply.choices[0].message.content == f"echo: {first}"
    assert reply2.choices[0].message.content == f"echo: {second}"
    sent = upstream_request_with(upstream, second)["body"]["messages"]
    assert sent == [{"role": "user", "content": first},
                    {"role": "assistant", "content": f"echo: {first}"},
                    {"role": "user", "content": second}]
    assert len(wire.check()) == 2


def test_async_gather(base_url, wire):
    prompts = [unique(f"question {i}") for i in range(6)]

    async def main():
        async with openai.AsyncOpenAI(api_key=MASTER_KEY, base_url=base_url, max_retries=0,
                                      timeout=TIMEOUT) as aclient:
            return await asyncio.gather(*(
                aclient.chat.completions.create(model="shin-llama-3-1-70b",
                                                messages=[{"role": "user", "content": p}])
                for p in prompts))

    responses = asyncio.run(main())

    assert [r.choices[0].message.content for r in responses] == [f"echo: {p}" for p in prompts]
    assert len(wire.check()) == len(prompts)


# --- openai SDK: streams ---------------------------------------------------------------------

def test_stream_text_arrives(client, wire):
    stream = client.chat.completions.create(
        model="shin-llama-3-1-70b", messages=[{"role": "user", "content": unique("Count")}], stream=True)
    pieces = [chunk.choices[0].delta.content for chunk in stream
              if chunk.choices and chunk.choices[0].delta.content]

    assert pieces == ["tok0 ", "tok1 ", "tok2 ", "tok3 ", "tok4 "]
    assert "".join(pieces) == STREAM_TEXT
    [result] = wire.check()
    assert result["schema"] == "CreateChatCompletionStreamResponse"
    assert result["events"][-1] == "[DONE]"
    assert all(chunk["model"] == "shin-llama-3-1-70b" for chunk in result["events"][:-1])


def test_stream_include_usage(client, wire):
    stream = client.chat.completions.create(
        model="shin-llama-3-1-70b", messages=[{"role": "user", "content": unique("Count")}], stream=True,
        stream_options={"include_usage": True})
    chunks = list(stream)

    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == STREAM_TEXT
    final = chunks[-1]
    assert final.choices == []
    assert (final.usage.prompt_tokens, final.usage.completion_tokens, final.usage.total_tokens) == (11, 5, 16)
    assert all(c.usage is None for c in chunks[:-1])
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finish == ["stop"]
    [result] = wire.check()
    assert result["events"][-1] == "[DONE]" and result["events"][-2]["choices"] == []


def test_async_stream(base_url, wire):
    async def main():
        async with openai.AsyncOpenAI(api_key=MASTER_KEY, base_url=base_url, max_retries=0,
                                      timeout=TIMEOUT) as aclient:
            stream = await aclient.chat.completions.create(
                model="shin-llama-3-1-70b", messages=[{"role": "user", "content": unique("Count")}], stream=True)
            return [chunk async for chunk in stream]

    chunks = asyncio.run(main())
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == STREAM_TEXT
    [result] = wire.check()
    assert result["events"][-1] == "[DONE]"


def test_legacy_completions_stream_with_usage(client, upstream, wire):
    prompt = unique("legacy")
    chunks = list(client.completions.create(model="shin-llama-3-1-70b", prompt=prompt, stream=True,
                                            stream_options={"include_usage": True}))

    assert "".join(c.choices[0].text for c in chunks if c.choices) == "tok0 tok1 tok2 tok3 tok4 "
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 5
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert upstream_request_with(upstream, prompt)["path"] == "/v1/completions"
    [result] = wire.check()
    assert result["schema"] == "CreateCompletionStreamChunk" and result["events"][-1] == "[DONE]"


def _fixture_tool_calls(name: str) -> list[tuple[str, str]]:
    """(name, arguments) per tool call, accumulated by index straight from the recorded stream."""
    calls: dict[int, list[str]] = {}
    for event in (FIXTURES / f"chat-stream-{name}.sse").read_text().split("\n\n"):
        data = event.strip()[len("data: "):]
        if not data or data == "[DONE]":
            continue
        for choice in json.loads(data)["choices"]:
            for delta in choice["delta"].get("tool_calls") or ():
                call = calls.setdefault(delta["index"], ["", ""])
                call[0] += (delta.get("function") or {}).get("name") or ""
                call[1] += (delta.get("function") or {}).get("arguments") or ""
    return [tuple(calls[i]) for i in sorted(calls)]


def test_stream_parallel_tool_calls_accumulate(client, wire):
    expected = _fixture_tool_calls("parallel-tool-calls-usage")
    assert [name for name, _ in expected] == ["GetWeatherArgs", "get_stock_price"]

    with client.chat.completions.stream(
            model="fixture-tools", messages=[{"role": "user", "content": "weather and stock?"}],
            stream_options={"include_usage": True}) as stream:
        final = stream.get_final_completion()

    choice = final.choices[0]
    assert choice.finish_reason == "tool_calls"
    calls = [(c.function.name, c.function.arguments) for c in choice.message.tool_calls]
    assert calls == expected
    assert json.loads(calls[0][1])["city"] == "Edinburgh"
    assert all(c.id.startswith("call_") and c.type == "function" for c in choice.message.tool_calls)
    assert final.usage is not None and final.usage.total_tokens > 0
    [result] = wire.check()
    assert result["events"][-1] == "[DONE]"


def test_stream_single_tool_call_in_role_chunk(v1_client, wire):
    expected = _fixture_tool_calls("tool-call-usage")
    stream = v1_client.chat.completions.create(
        model="fixture-tool-call", messages=[{"role": "user", "content": "weather?"}], stream=True)
    names, arguments = "", ""
    for chunk in stream:
        for choice in chunk.choices:
            for call in choice.delta.tool_calls or ():
                names += call.function.name or ""
                arguments += call.function.arguments or ""
    assert [(names, arguments)] == expected
    wire.check()


def test_stream_error_event_raises_api_error(client, wire):
    stream = client.chat.completions.create(
        model="stream-error", messages=[{"role": "user", "content": unique("go")}], stream=True)
    received = []
    with pytest.raises(openai.APIError) as caught:
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                received.append(chunk.choices[0].delta.content)

    assert not isinstance(caught.value, openai.APIStatusError)
    assert caught.value.code == "upstream_error"
    assert caught.value.type == "api_error"
    assert received == ["tok0 ", "tok1 "]
    [result] = wire.check()
    events = result["events"]
    assert "[DONE]" not in events, "a cut stream must not end with [DONE]"
    assert set(events[-1]) == {"error"}


# --- openai SDK: errors ----------------------------------------------------------------------

def test_bad_key_authentication_error(base_url, wire):
    with openai.OpenAI(api_key="sk-not-the-key", base_url=base_url, max_retries=0, timeout=TIMEOUT) as bad:
        with pytest.raises(openai.AuthenticationError) as caught:
            bad.chat.completions.create(model="shin-llama-3-1-70b", messages=[{"role": "user", "content": "x"}])
    assert caught.value.status_code == 401
    assert caught.value.code == "invalid_api_key"
    assert caught.value.type == "authentication_error"
    assert "sk-not-the-key" not in wire.last().body.decode()
    [result] = wire.check()
    assert result["schema"] == "ErrorResponse"


def test_unknown_model_not_found(client, wire):
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "x"}])
    assert caught.value.status_code == 404
    assert caught.value.code == "model_not_found"
    assert caught.value.param == "model"
    wire.check()


def test_bad_body_bad_request(client, upstream, wire):
    marker = unique("bad body")
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="shin-llama-3-1-70b", temperature="hot",
                                       messages=[{"role": "user", "content": marker}])
    assert caught.value.status_code == 400
    assert caught.value.type == "invalid_request_error"
    assert caught.value.param == "temperature"
    with upstream.lock:
        assert not any(marker.encode() in r["raw"] for r in upstream.requests)
    wire.check()


def test_upstream_429_rate_limit_error_with_retry_after(v1_client, wire):
    with pytest.raises(openai.RateLimitError) as caught:
        v1_client.chat.completions.create(model="fail-429", messages=[{"role": "user", "content": "x"}])
    error = caught.value
    assert error.status_code == 429
    assert error.code == "rate_limit_exceeded"
    assert int(error.response.headers["retry-after"]) >= 1
    wire.check()


def test_upstream_500_is_502_internal_server_error(client, wire):
    with pytest.raises(openai.InternalServerError) as caught:
        client.chat.completions.create(model="fail-500", messages=[{"role": "user", "content": "x"}])
    assert isinstance(caught.value, openai.APIStatusError)
    assert caught.value.status_code == 502
    assert caught.value.code == "upstream_error"
    assert caught.value.request_id, "x-request-id reaches the SDK"
    wire.check()


def test_sdk_retries_obey_x_should_retry(gateway, upstream, wire):
    """With the SDK's default retries, a 502 the gateway marks `x-should-retry: false` (the upstream
    rejected the gateway's own credentials) is asked once; a plain upstream 5xx is retried by the SDK."""
    with openai.OpenAI(api_key=MASTER_KEY, base_url=f"{gateway.url}/v1", max_retries=1,
                       timeout=TIMEOUT) as retrying:
        before = upstream.count("status-401")
        with pytest.raises(openai.InternalServerError) as caught:
            retrying.chat.completions.create(model="fail-401", messages=[{"role": "user", "content": "x"}])
        assert caught.value.status_code == 502
        assert caught.value.response.headers.get("x-should-retry") == "false"
        assert upstream.count("status-401") - before == 1, "401 is never retried on the same deployment"
        assert len(wire.exchanges) == 1

        before = upstream.count("status-503")
        with pytest.raises(openai.InternalServerError):
            retrying.chat.completions.create(model="fail-503", messages=[{"role": "user", "content": "x"}])
        assert len(wire.exchanges) == 3, "the SDK retried the 502 once"
        assert upstream.count("status-503") - before == 2 * 2, "gateway: 1 + num_retries per client call"
    wire.check()


def test_gateway_timeout_answers_504_before_client_timeout(v1_client, wire):
    """slow-answer hangs 3 s upstream; the deployment's timeout is 1 s: the gateway answers 504
    while the client (2.9 s, shorter than the upstream) is still waiting."""
    started = time.monotonic()
    with pytest.raises(openai.InternalServerError) as caught:
        v1_client.chat.completions.create(model="slow-answer", messages=[{"role": "user", "content": "x"}],
                                          timeout=2.9)
    assert caught.value.status_code == 504
    assert caught.value.code == "upstream_timeout"
    assert time.monotonic() - started < 2.9
    wire.check()


def test_client_timeout_raises_api_timeout_error(v1_client):
    started = time.monotonic()
    with pytest.raises(openai.APITimeoutError):
        v1_client.chat.completions.create(model="slow-answer", messages=[{"role": "user", "content": "x"}],
                                          timeout=0.5)
    assert time.monotonic() - started < 2.0


# --- openai SDK: embeddings and models ------------------------------------------------------

def test_embeddings_default_base64_decodes_to_upstream_floats(client, upstream, wire):
    text = unique("embed me")
    response = client.embeddings.create(model="text-embedding-3-small", input=[text, "second"])

    assert response.data[0].embedding == pytest.approx(UPSTREAM_VECTOR, rel=1e-6)
    assert response.data[1].embedding == pytest.approx([0.2, -0.2, 0.3, 0.4], rel=1e-6)
    assert response.usage.prompt_tokens == 6
    sent = upstream_request_with(upstream, text)
    assert sent["path"] == "/v1/embeddings"
    assert sent["body"]["encoding_format"] == "base64"
    [result] = wire.check()
    assert result["schema"] == "CreateEmbeddingResponseBase64"
    assert isinstance(result["json"]["data"][0]["embedding"], str)


def test_embeddings_float(client, wire):
    response = client.embeddings.create(model="text-embedding-3-small", input="one", encoding_format="float")
    assert response.data[0].embedding == UPSTREAM_VECTOR
    assert response.model == "text-embedding-3-small"
    [result] = wire.check()
    assert result["schema"] == "CreateEmbeddingResponse"


def test_models_list_and_retrieve(client, wire):
    ids = [model.id for model in client.models.list()]
    assert set(STANDARD_MODELS) <= set(ids)
    model = client.models.retrieve("shin-llama-3-1-70b")
    assert (model.id, model.object) == ("shin-llama-3-1-70b", "model")
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("no-such-model")
    schemas = [r["schema"] for r in wire.check()]
    assert schemas == ["ListModelsResponse", "Model", "ErrorResponse"]


SLASH_MODEL = "meta-llama/Llama-3-8B"


@pytest.fixture
def slash_gateway(start_gateway, upstream):
    return start_gateway(f"""
        model_list:
          - model_name: {SLASH_MODEL}
            litellm_params:
              model: openai/served-llama-8b
              api_base: {upstream.base_url}
              api_key: os.environ/TEST_UPSTREAM_KEY
        general_settings:
          master_key: {MASTER_KEY}
        """, workers=1, env={"TEST_UPSTREAM_KEY": upstream.api_key})


@pytest.mark.parametrize("prefix", ["", "/v1"])
def test_model_id_with_a_slash(slash_gateway, prefix, wire):
    with openai.OpenAI(api_key=MASTER_KEY, base_url=slash_gateway.url + prefix, max_retries=0,
                       timeout=TIMEOUT) as sdk:
        retrieved = sdk.models.retrieve(SLASH_MODEL)     # this SDK sends /models/meta-llama%2FLlama-3-8B
        listed = [m.id for m in sdk.models.list()]
        answer = sdk.chat.completions.create(model=SLASH_MODEL, messages=[{"role": "user", "content": "hi"}])
    assert retrieved.id == SLASH_MODEL
    assert listed == [SLASH_MODEL]
    assert answer.choices[0].message.content == "echo: hi"
    assert answer.model == SLASH_MODEL
    assert "%2F" in wire.exchanges[0].path
    wire.check()

    import requests  # older SDKs send the slash raw: the route must take both
    raw = requests.get(f"{slash_gateway.url}{prefix}/models/{SLASH_MODEL}", timeout=TIMEOUT,
                       headers={"Authorization": f"Bearer {MASTER_KEY}"})
    assert raw.status_code == 200, raw.text
    validate("Model", raw.json())
    assert raw.json()["id"] == SLASH_MODEL


# --- LangChain ------------------------------------------------------------------------------

@pytest.fixture
def langchain_llm(gateway):
    from langchain_openai import ChatOpenAI
    return ChatOpenAI(model="shin-llama-3-1-70b", api_key=MASTER_KEY, base_url=f"{gateway.url}/v1",
                      max_retries=0, timeout=TIMEOUT, max_completion_tokens=42)


def test_langchain_invoke_sends_max_completion_tokens(langchain_llm, upstream, wire):
    from langchain_core.messages import HumanMessage, SystemMessage
    question = unique("What is LangChain?")
    response = langchain_llm.invoke([SystemMessage(content="You are a helpful assistant."),
                                     HumanMessage(content=question)])

    assert response.content == f"echo: {question}"
    body = upstream_request_with(upstream, question)["body"]
    assert body["max_completion_tokens"] == 42
    assert "max_tokens" not in body
    assert body["stream"] is False
    [result] = wire.check()
    assert result["schema"] == "CreateChatCompletionResponse"


def test_langchain_stream(langchain_llm, upstream, wire):
    question = unique("Count for LangChain")
    text = "".join(chunk.content for chunk in langchain_llm.stream(question))

    assert text == STREAM_TEXT
    body = upstream_request_with(upstream, question)["body"]
    assert body["stream"] is True and body["max_completion_tokens"] == 42
    [result] = wire.check()
    assert result["schema"] == "CreateChatCompletionStreamResponse" and result["events"][-1] == "[DONE]"


# --- LlamaIndex -----------------------------------------------------------------------------

@pytest.fixture
def llama(gateway):
    """OpenAILike(...) factory; closes the SDK client LlamaIndex keeps, so no idle
    keep-alive connection holds the gateway's graceful shutdown."""
    from llama_index.llms.openai_like import OpenAILike
    made = []

    def make(**extra):
        made.append(OpenAILike(model="shin-llama-3-1-70b", api_key=MASTER_KEY, api_base=f"{gateway.url}/v1",
                               max_retries=0, timeout=TIMEOUT, **extra))
        return made[-1]
    yield make
    for llm in made:
        if llm._client is not None:
            llm._client.close()


def test_llamaindex_complete_uses_legacy_completions(llama, upstream, wire):
    prompt = unique("What is LlamaIndex?")
    response = llama().complete(prompt)

    assert response.text == f"echo: {prompt}"
    sent = upstream_request_with(upstream, prompt)
    assert sent["path"] == "/v1/completions"
    assert sent["body"]["prompt"] == prompt
    [result] = wire.check()
    assert wire.last().path == "/v1/completions"
    assert result["schema"] == "CreateCompletionResponse"


def test_llamaindex_stream_complete(llama, upstream, wire):
    prompt = unique("Stream LlamaIndex")
    deltas = [r.delta for r in llama().stream_complete(prompt)]

    assert "".join(d for d in deltas if d) == STREAM_TEXT
    assert upstream_request_with(upstream, prompt)["path"] == "/v1/completions"
    [result] = wire.check()
    assert result["schema"] == "CreateCompletionStreamChunk" and result["events"][-1] == "[DONE]"


def test_llamaindex_chat_model(llama, upstream, wire):
    from llama_index.core.llms import ChatMessage
    question = unique("Chat with LlamaIndex")
    response = llama(is_chat_model=True).chat([ChatMessage(role="user", content=question)])

    assert response.message.content == f"echo: {question}"
    assert upstream_request_with(upstream, question)["path"] == "/v1/chat/completions"
    [result] = wire.check()
    assert result["schema"] == "CreateChatCompletionResponse"
