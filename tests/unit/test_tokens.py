"""gateway/tokens.py: cheap, deterministic token estimates that never fail on an odd request."""
from __future__ import annotations

import pytest

from gateway.tokens import completion_reserve, estimate_completion_tokens, estimate_prompt_tokens

CHAT = "chat/completions"


def test_chat_counts_a_quarter_token_per_character_plus_four_per_message():
    params = {"messages": [{"role": "system", "content": "abcd"}, {"role": "user", "content": "abcdefghi"}]}
    assert estimate_prompt_tokens(CHAT, params) == 4 + 4 * 2   # ceil(13 / 4) + 4 per message


def test_chat_counts_text_parts_tool_calls_and_names():
    params = {"messages": [
        {"role": "user", "name": "ann", "content": [{"type": "text", "text": "12345678"},
                                                    {"type": "image_url", "image_url": {"url": "x" * 400}}]},
        {"role": "assistant", "content": None,
         "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "get", "arguments": '{"a":1}'}}]},
        {"role": "assistant", "function_call": {"name": "f", "arguments": "{}"}},
        {"role": "tool", "tool_call_id": "call_1", "content": "ok"},
    ]}
    chars = len("ann") + 8 + len("get") + len('{"a":1}') + len("f") + len("{}") + len("ok")
    assert estimate_prompt_tokens(CHAT, params) == -(-chars // 4) + 4 * 4


def test_tool_definitions_are_part_of_the_prompt():
    bare = {"messages": [{"role": "user", "content": "hi"}]}
    tools = {**bare, "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {}}}]}
    assert estimate_prompt_tokens(CHAT, tools) > estimate_prompt_tokens(CHAT, bare)


@pytest.mark.parametrize("prompt, expected", [
    ("abcdefgh", 2),
    (["abcd", "abcde"], 3),        # ceil(9 / 4)
    ([1, 2, 3], 3),                # token ids count one each
    ([[1, 2], [3, 4, 5]], 5),
    ("", 0),
])
def test_completions_prompt_and_embeddings_input(prompt, expected):
    assert estimate_prompt_tokens("completions", {"prompt": prompt}) == expected
    assert estimate_prompt_tokens("embeddings", {"input": prompt}) == expected


@pytest.mark.parametrize("endpoint, params", [
    (CHAT, {}), (CHAT, {"messages": None}), (CHAT, {"messages": "hi"}), (CHAT, {"messages": [None, 3, "x"]}),
    (CHAT, {"messages": [{"content": {"nested": 1}, "tool_calls": "x", "function_call": [1]}]}),
    (CHAT, {"messages": [{"content": [None, 1, {"text": 5}]}], "tools": {"not": "a list"}}),
    (CHAT, {"tools": [object()]}),
    ("completions", {"prompt": None}), ("completions", {"prompt": [None, {"a": 1}, 2.5]}),
    ("embeddings", {"input": 7}), ("unknown/endpoint", {"messages": []}), (CHAT, None), (CHAT, "text"),
])
def test_odd_shapes_never_raise(endpoint, params):
    assert estimate_prompt_tokens(endpoint, params) >= 0


def test_estimates_are_deterministic():
    params = {"messages": [{"role": "user", "content": "the same words " * 50}]}
    assert len({estimate_prompt_tokens(CHAT, params) for _ in range(5)}) == 1


@pytest.mark.parametrize("endpoint, params, expected", [
    (CHAT, {}, 256),
    (CHAT, {"max_tokens": 100}, 100),
    (CHAT, {"max_completion_tokens": 50, "max_tokens": 100}, 50),
    (CHAT, {"max_tokens": 100, "n": 3}, 300),
    (CHAT, {"n": 2}, 512),
    (CHAT, {"max_tokens": 0}, 256),
    (CHAT, {"max_tokens": -5, "n": 0}, 256),
    (CHAT, {"max_tokens": "100", "n": "2"}, 256),
    (CHAT, {"max_tokens": True}, 256),
    (CHAT, {"max_tokens": 10.5}, 256),
    ("completions", {}, 256),
    ("completions", {"max_tokens": 16, "n": 2, "best_of": 4}, 64),
    ("embeddings", {"max_tokens": 100}, 0),
    (CHAT, None, 0),
])
def test_completion_reserve(endpoint, params, expected):
    assert completion_reserve(endpoint, params) == expected


def test_answer_estimate_counts_message_text_tool_calls_and_legacy_text():
    body = {"choices": [
        {"message": {"role": "assistant", "content": "12345678"}},
        {"message": {"role": "assistant", "content": None,
                     "tool_calls": [{"function": {"name": "get", "arguments": "{}"}}]}},
        {"text": "abcd"},
        None,
    ]}
    assert estimate_completion_tokens(body) == -(-(8 + 3 + 2 + 4) // 4)


@pytest.mark.parametrize("body", [None, {}, {"choices": None}, {"choices": [1, "x", {"message": "str"}]}, []])
def test_answer_estimate_of_odd_bodies_is_zero(body):
    assert estimate_completion_tokens(body) == 0
