"""gateway/api/schemas.py: the OpenAI request bodies we accept, strictly typed."""
from __future__ import annotations

import pytest

from gateway.api.schemas import ChatCompletionSchema, CompletionSchema, EmbeddingSchema

CHAT = ChatCompletionSchema()
COMPLETION = CompletionSchema()
EMBEDDING = EmbeddingSchema()

USER = {"role": "user", "content": "hi"}


def chat(**fields) -> dict:
    return {"model": "m", "messages": [USER], **fields}


def errors_of(schema, body) -> dict:
    return schema.validate(body)


# --- chat: what is accepted ------------------------------------------------------------------

@pytest.mark.parametrize("body", [
    chat(),
    chat(stream=True, stream_options={"include_usage": True}),
    chat(temperature=0, top_p=1, n=2, max_tokens=5, seed=1, stop=["a", "b"], presence_penalty=-2,
         frequency_penalty=2, logit_bias={"50256": -100}, user="u"),
    chat(temperature=1.5, stop="\n", max_completion_tokens=10, logprobs=True, top_logprobs=3),
    chat(tools=[{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}],
         tool_choice={"type": "function", "function": {"name": "get_weather"}}, parallel_tool_calls=False),
    chat(tool_choice="required", response_format={"type": "json_object"}),
    chat(response_format={"type": "json_schema", "json_schema": {"name": "out", "schema": {}, "strict": True}}),
    chat(temperature=None, stream=None, max_tokens=None, reasoning_effort="low", metadata={"a": "b"}, store=False),
    {"model": "m", "messages": [
        {"role": "system", "content": "be brief"},
        {"role": "developer", "content": "x"},
        {"role": "user", "content": [{"type": "text", "text": "what is this?"},
                                     {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA",
                                                                         "detail": "low"}}]},
        {"role": "assistant", "content": None,
         "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "42"},
        {"role": "assistant", "content": "done", "refusal": None},
    ]},
])
def test_valid_chat_bodies(body):
    assert errors_of(CHAT, body) == {}


def test_vendor_extras_and_unknown_message_keys_are_kept():
    body = chat(top_k=40, chat_template_kwargs={"enable_thinking": False},
                messages=[{"role": "user", "content": "hi", "cache_control": {"type": "ephemeral"}}])
    loaded = CHAT.load(body)
    assert loaded["top_k"] == 40 and loaded["chat_template_kwargs"] == {"enable_thinking": False}
    assert loaded["messages"][0]["cache_control"] == {"type": "ephemeral"}


def test_loading_does_not_coerce_values():
    body = chat(temperature=1, max_tokens=7)
    loaded = CHAT.load(body)
    assert loaded["temperature"] == 1 and type(loaded["temperature"]) is int


# --- chat: what is refused, and where -----------------------------------------------------------

@pytest.mark.parametrize("body, path", [
    ({"messages": [USER]}, ("model",)),
    (chat(model=""), ("model",)),
    (chat(model=5), ("model",)),
    ({"model": "m"}, ("messages",)),
    (chat(messages=[]), ("messages",)),
    (chat(messages="hi"), ("messages",)),
    (chat(temperature="0.7"), ("temperature",)),
    (chat(temperature=True), ("temperature",)),
    (chat(temperature=2.5), ("temperature",)),
    (chat(top_p=1.1), ("top_p",)),
    (chat(stream="yes"), ("stream",)),
    (chat(stream=1), ("stream",)),
    (chat(n=0), ("n",)),
    (chat(n=1.0), ("n",)),
    (chat(max_tokens=0), ("max_tokens",)),
    (chat(max_tokens="10"), ("max_tokens",)),
    (chat(max_completion_tokens=0), ("max_completion_tokens",)),
    (chat(stop=[1, 2]), ("stop",)),
    (chat(presence_penalty=3), ("presence_penalty",)),
    (chat(logit_bias={"1": 101}), ("logit_bias",)),
    (chat(logit_bias=[1]), ("logit_bias",)),
    (chat(seed=1.5), ("seed",)),
    (chat(stream_options={"include_usage": True}), ("stream_options",)),
    (chat(stream=False, stream_options={"include_usage": True}), ("stream_options",)),
    (chat(stream=True, stream_options={"include_usage": "yes"}), ("stream_options", "include_usage")),
    (chat(top_logprobs=2), ("top_logprobs",)),
    (chat(logprobs=True, top_logprobs=21), ("top_logprobs",)),
    (chat(tool_choice="sometimes"), ("tool_choice",)),
    (chat(tool_choice={"type": "function"}), ("tool_choice",)),
    (chat(tools=[{"type": "function"}]), ("tools", 0, "function")),
    (chat(tools=[{"type": "function", "function": {"name": "has space"}}]), ("tools", 0, "function", "name")),
    (chat(tools=[{"type": "retrieval"}]), ("tools", 0, "type")),
    (chat(response_format={"type": "xml"}), ("response_format", "type")),
    (chat(response_format={"type": "json_schema"}), ("response_format", "json_schema")),
    (chat(messages=[{"role": "robot", "content": "x"}]), ("messages", 0, "role")),
    (chat(messages=[{"content": "x"}]), ("messages", 0, "role")),
    (chat(messages=[{"role": "user"}]), ("messages", 0, "content")),
    (chat(messages=[{"role": "user", "content": None}]), ("messages", 0, "content")),
    (chat(messages=[{"role": "user", "content": 42}]), ("messages", 0, "content")),
    (chat(messages=[{"role": "user", "content": []}]), ("messages", 0, "content")),
    (chat(messages=[{"role": "user", "content": [{"type": "text"}]}]), ("messages", 0, "content")),
    (chat(messages=[{"role": "user", "content": ["hi"]}]), ("messages", 0, "content")),
    (chat(messages=[USER, {"role": "assistant"}]), ("messages", 1, "content")),
    (chat(messages=[USER, {"role": "tool", "content": "42"}]), ("messages", 1, "tool_call_id")),
    (chat(messages=[USER, {"role": "assistant", "tool_calls": [{"type": "function"}]}]),
     ("messages", 1, "tool_calls", 0, "id")),
    (chat(messages=[USER, "hi"]), ("messages", 1)),
])
def test_invalid_chat_bodies_name_the_failing_field(body, path):
    errors = errors_of(CHAT, body)
    assert errors, f"{body} was accepted"
    node = errors
    for key in path:
        assert key in node, f"expected an error at {path}, got {errors}"
        node = node[key]


# --- legacy completions ------------------------------------------------------------------------

@pytest.mark.parametrize("prompt", ["hello", ["a", "b"], [1, 2, 3], [[1, 2], [3]]])
def test_completion_prompt_forms(prompt):
    assert errors_of(COMPLETION, {"model": "m", "prompt": prompt}) == {}


@pytest.mark.parametrize("body, field", [
    ({"model": "m"}, "prompt"),
    ({"model": "m", "prompt": []}, "prompt"),
    ({"model": "m", "prompt": ["a", 1]}, "prompt"),
    ({"model": "m", "prompt": [True]}, "prompt"),
    ({"model": "m", "prompt": [[]]}, "prompt"),
    ({"model": "m", "prompt": 5}, "prompt"),
    ({"model": "m", "prompt": "x", "logprobs": True}, "logprobs"),
    ({"model": "m", "prompt": "x", "logprobs": 6}, "logprobs"),
    ({"model": "m", "prompt": "x", "best_of": 0}, "best_of"),
    ({"model": "m", "prompt": "x", "echo": "true"}, "echo"),
    ({"model": "m", "prompt": "x", "suffix": 1}, "suffix"),
])
def test_invalid_completion_bodies(body, field):
    assert field in errors_of(COMPLETION, body)


def test_completion_logprobs_is_an_integer():
    assert errors_of(COMPLETION, {"model": "m", "prompt": "x", "logprobs": 5, "echo": True, "best_of": 2}) == {}


# --- embeddings -------------------------------------------------------------------------------------

@pytest.mark.parametrize("body", [
    {"model": "e", "input": "hello"},
    {"model": "e", "input": ["a", "b"], "encoding_format": "base64"},
    {"model": "e", "input": [1, 2, 3], "encoding_format": "float", "dimensions": 8},
    {"model": "e", "input": "x", "user": "u", "extra_vendor_field": 1},
])
def test_valid_embedding_bodies(body):
    assert errors_of(EMBEDDING, body) == {}


@pytest.mark.parametrize("body, field", [
    ({"model": "e"}, "input"),
    ({"model": "e", "input": {"text": "x"}}, "input"),
    ({"model": "e", "input": "x", "encoding_format": "int8"}, "encoding_format"),
    ({"model": "e", "input": "x", "dimensions": 0}, "dimensions"),
    ({"model": "e", "input": "x", "dimensions": "8"}, "dimensions"),
])
def test_invalid_embedding_bodies(body, field):
    assert field in errors_of(EMBEDDING, body)
