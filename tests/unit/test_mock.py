"""gateway/providers/mock.py: the built-in mock provider behaves like a real model on the wire."""
from __future__ import annotations

import base64
import json
import struct

import pytest

from gateway.providers.base import carries_content
from gateway.providers.mock import EMBEDDING_DIMENSIONS, MockAdapter, answer_text
from gateway.types import Deployment, ModelRequest

DEPLOYMENT = Deployment(id="m1", model_name="mock", provider="mock", upstream_model="shin-mock")


@pytest.fixture
def adapter():
    return MockAdapter([DEPLOYMENT])


def chat(content="Hello   there\nfriend", *, stream=False, include_usage=False, model="mock") -> ModelRequest:
    messages = [{"role": "system", "content": "be nice"}, {"role": "user", "content": "first question"},
                {"role": "assistant", "content": "an answer"}, {"role": "user", "content": content}]
    return ModelRequest(endpoint="chat/completions", model=model, params={"model": model, "messages": messages},
                        extra={}, stream=stream, include_usage=include_usage, request_id="abc")


def completion(prompt="Say this", **kw) -> ModelRequest:
    return ModelRequest(endpoint="completions", model="mock", params={"model": "mock", "prompt": prompt},
                        extra={}, request_id="abc", **kw)


def embeddings(input, **params) -> ModelRequest:
    return ModelRequest(endpoint="embeddings", model="mock", params={"model": "mock", "input": input, **params},
                        extra={})


# --- whole answers ---------------------------------------------------------------------------

def test_chat_answer_is_deterministic_and_names_the_last_user_text(adapter):
    first = adapter.complete(DEPLOYMENT, chat())
    second = adapter.complete(DEPLOYMENT, chat())
    message = first.body["choices"][0]["message"]
    assert message == {"role": "assistant", "content": "Mock answer to: Hello there friend", "refusal": None}
    assert second.body["choices"] == first.body["choices"]
    assert first.body["object"] == "chat.completion" and first.body["model"] == "mock"
    assert first.body["id"] == "chatcmpl-abc"
    assert first.body["choices"][0]["finish_reason"] == "stop"


def test_chat_answer_from_content_parts(adapter):
    request = chat([{"type": "text", "text": "describe"}, {"type": "image_url", "image_url": {"url": "x"}},
                    {"type": "text", "text": "this"}])
    assert adapter.complete(DEPLOYMENT, request).body["choices"][0]["message"]["content"] == \
        "Mock answer to: describe this"


def test_answer_without_user_text():
    request = ModelRequest(endpoint="chat/completions", model="mock",
                           params={"model": "mock", "messages": [{"role": "system", "content": "x"}]}, extra={})
    assert answer_text(request) == "Mock answer."


def test_usage_counts_words_and_adds_up(adapter):
    result = adapter.complete(DEPLOYMENT, chat("one two three"))
    usage = result.body["usage"]
    # prompt: "be nice" + "first question" + "an answer" + "one two three" = 9 words
    assert usage == {"prompt_tokens": 9, "completion_tokens": 6, "total_tokens": 15}
    assert (result.usage.prompt_tokens, result.usage.completion_tokens, result.usage.total_tokens) == (9, 6, 15)


def test_legacy_completion(adapter):
    result = adapter.complete(DEPLOYMENT, completion())
    body = result.body
    assert body["object"] == "text_completion" and body["id"] == "cmpl-abc"
    assert body["choices"][0]["text"] == "Mock answer to: Say this"
    assert body["usage"]["prompt_tokens"] == 2 and body["usage"]["total_tokens"] == 2 + 5


def test_legacy_completion_with_a_list_prompt(adapter):
    assert adapter.complete(DEPLOYMENT, completion(["a", "b"])).body["choices"][0]["text"] == "Mock answer to: a b"


# --- streams ---------------------------------------------------------------------------------

def parsed(stream) -> list[dict]:
    """The chunks of a stream, checking that it yields whole `data: {…}\\n\\n` events."""
    items = list(stream)
    assert all(item.startswith(b"data: {") and item.endswith(b"}\n\n") for item in items), items
    data = b"".join(items)
    return [json.loads(event[len(b"data: "):]) for event in data.split(b"\n\n") if event]


def test_stream_chunks_spell_the_answer_and_end_with_finish(adapter):
    chunks = parsed(adapter.stream(DEPLOYMENT, chat("ping pong", stream=True)))
    assert all(c["object"] == "chat.completion.chunk" and c["model"] == "mock" for c in chunks)
    assert len({c["id"] for c in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    assert text == "Mock answer to: ping pong"
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:-1])
    assert all("usage" not in c for c in chunks)


def test_stream_matches_the_whole_answer(adapter):
    whole = adapter.complete(DEPLOYMENT, chat("same question"))
    chunks = parsed(adapter.stream(DEPLOYMENT, chat("same question", stream=True)))
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    assert text == whole.body["choices"][0]["message"]["content"]


def test_stream_with_include_usage_ends_with_an_openai_usage_chunk(adapter):
    stream = adapter.stream(DEPLOYMENT, chat("one two three", stream=True, include_usage=True))
    chunks = parsed(stream)
    last = chunks[-1]
    assert last["choices"] == []
    assert last["usage"] == {"prompt_tokens": 9, "completion_tokens": 6, "total_tokens": 15}
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert (stream.usage.prompt_tokens, stream.usage.total_tokens) == (9, 15)


def test_stream_without_include_usage_still_knows_its_usage(adapter):
    stream = adapter.stream(DEPLOYMENT, chat("one two three", stream=True))
    items = list(stream)
    assert all(items), "an empty item would end the client's chunked body"
    chunks = parsed(items)
    assert all(c["choices"] for c in chunks) and all("usage" not in c for c in chunks)
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert (stream.usage.prompt_tokens, stream.usage.completion_tokens, stream.usage.total_tokens) == (9, 6, 15)


def test_legacy_stream_usage_with_and_without_include_usage(adapter):
    quiet = adapter.stream(DEPLOYMENT, completion("abc", stream=True))
    told = adapter.stream(DEPLOYMENT, completion("abc", stream=True, include_usage=True))
    assert all("usage" not in c for c in parsed(quiet))
    assert parsed(told)[-1]["usage"] == {"prompt_tokens": 1, "completion_tokens": 4, "total_tokens": 5}
    assert quiet.usage == told.usage and quiet.usage.total_tokens == 5


def test_stream_is_primed_past_the_role_chunk(adapter):
    stream = adapter.stream(DEPLOYMENT, chat(stream=True))
    chunks = parsed(stream)
    assert not carries_content(chunks[0]) and carries_content(chunks[1])


def test_legacy_completion_stream(adapter):
    chunks = parsed(adapter.stream(DEPLOYMENT, completion("abc", stream=True)))
    assert all(c["object"] == "text_completion" for c in chunks)
    assert "".join(c["choices"][0]["text"] for c in chunks) == "Mock answer to: abc"
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


# --- embeddings ----------------------------------------------------------------------------------

def test_embeddings_are_deterministic_unit_vectors(adapter):
    body = adapter.complete(DEPLOYMENT, embeddings(["alpha", "beta", "alpha"])).body
    vectors = [item["embedding"] for item in body["data"]]
    assert [item["index"] for item in body["data"]] == [0, 1, 2]
    assert all(item["object"] == "embedding" for item in body["data"])
    assert all(len(v) == EMBEDDING_DIMENSIONS and all(isinstance(x, float) for x in v) for v in vectors)
    assert vectors[0] == vectors[2] and vectors[0] != vectors[1]
    assert all(abs(sum(x * x for x in v) - 1.0) < 1e-9 for v in vectors)
    assert body["object"] == "list" and body["model"] == "mock"
    assert body["usage"] == {"prompt_tokens": 3, "total_tokens": 3}


def test_a_single_string_input_gives_one_vector(adapter):
    assert len(adapter.complete(DEPLOYMENT, embeddings("hello world")).body["data"]) == 1


def test_token_id_input(adapter):
    data = adapter.complete(DEPLOYMENT, embeddings([1, 2, 3])).body["data"]
    assert len(data) == 1 and len(data[0]["embedding"]) == EMBEDDING_DIMENSIONS


@pytest.mark.parametrize("dimensions", [1, 3, 64, 100])
def test_dimensions(adapter, dimensions):
    data = adapter.complete(DEPLOYMENT, embeddings("x", dimensions=dimensions)).body["data"]
    assert len(data[0]["embedding"]) == dimensions


def test_base64_encoding_decodes_to_the_float_vector(adapter):
    floats = adapter.complete(DEPLOYMENT, embeddings("hello", dimensions=8)).body["data"][0]["embedding"]
    encoded = adapter.complete(DEPLOYMENT, embeddings("hello", dimensions=8, encoding_format="base64")
                               ).body["data"][0]["embedding"]
    assert isinstance(encoded, str)
    decoded = struct.unpack("<8f", base64.b64decode(encoded))
    assert decoded == pytest.approx(floats, abs=1e-6)
