"""Streams always ask the upstream for their usage; the client sees the usage chunk only when it asked."""
from __future__ import annotations

import uuid

import pytest

from .conftest import MASTER_KEY, STANDARD_MODELS
from .wire import SSEResponse, assert_sse_framing, chat_body

AUTH = {"Authorization": f"Bearer {MASTER_KEY}"}


def stream(gateway, path: str, body: dict) -> list[dict]:
    with SSEResponse.open(gateway.url, path, body, AUTH) as response:
        events = response.read_all()
    assert_sse_framing(response)
    assert events[-1].raw == b"data: [DONE]\n\n"
    return [e.json() for e in events[:-1]]


def received(upstream, marker: str) -> dict:
    """The body the upstream got for the request carrying `marker`."""
    with upstream.lock:
        matching = [r for r in upstream.requests if marker.encode() in r["raw"]]
    assert len(matching) == 1, matching
    return matching[0]["body"]


@pytest.mark.parametrize("options", [None, {"include_usage": False}, {"include_obfuscation": False}],
                         ids=["no-stream-options", "include-usage-false", "other-stream-options"])
def test_a_chat_stream_without_include_usage_gets_no_usage_chunk(gateway, upstream, options):
    marker = uuid.uuid4().hex
    extra = {} if options is None else {"stream_options": options}
    chunks = stream(gateway, "/v1/chat/completions", chat_body("shin-llama-3-1-70b", marker, stream=True, **extra))
    assert chunks and all(c["choices"] for c in chunks), [c for c in chunks if not c["choices"]]
    assert all("usage" not in c for c in chunks)
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks) == "tok0 tok1 tok2 tok3 tok4 "
    sent = received(upstream, marker)
    assert sent["stream_options"] == {**(options or {}), "include_usage": True}


def test_a_chat_stream_with_include_usage_ends_with_the_usage_chunk(gateway, upstream):
    marker = uuid.uuid4().hex
    chunks = stream(gateway, "/v1/chat/completions",
                    chat_body("shin-llama-3-1-70b", marker, stream=True, stream_options={"include_usage": True}))
    usage_chunks = [c for c in chunks if c["choices"] == []]
    assert len(usage_chunks) == 1 and usage_chunks[0] is chunks[-1]
    assert chunks[-1]["usage"] == {"prompt_tokens": 11, "completion_tokens": 5, "total_tokens": 16}
    assert chunks[-1]["model"] == "shin-llama-3-1-70b"
    assert received(upstream, marker)["stream_options"] == {"include_usage": True}


@pytest.mark.parametrize("include_usage", [False, True])
def test_a_legacy_completions_stream(gateway, upstream, include_usage):
    marker = uuid.uuid4().hex
    body = {"model": "shin-llama-3-1-8b", "prompt": marker, "stream": True}
    if include_usage:
        body["stream_options"] = {"include_usage": True}
    chunks = stream(gateway, "/v1/completions", body)
    assert [c for c in chunks if c["choices"] == []] == ([chunks[-1]] if include_usage else [])
    assert received(upstream, marker)["stream_options"] == {"include_usage": True}


def test_a_recorded_stream_whose_upstream_always_sends_usage_is_stripped_when_not_asked(gateway):
    """The recorded OpenAI streams end with a usage chunk whatever the request said."""
    chunks = stream(gateway, "/v1/chat/completions", chat_body("fixture-text", stream=True))
    assert chunks and all(c["choices"] for c in chunks)
    assert STANDARD_MODELS["fixture-text"].endswith("-usage")


@pytest.mark.parametrize("include_usage", [False, True])
def test_the_mock_model_shows_usage_only_when_asked(gateway, include_usage):
    extra = {"stream_options": {"include_usage": True}} if include_usage else {}
    chunks = stream(gateway, "/v1/chat/completions", chat_body("mock", "one two", stream=True, **extra))
    usage_chunks = [c for c in chunks if c["choices"] == []]
    assert usage_chunks == ([chunks[-1]] if include_usage else [])
    if include_usage:
        assert chunks[-1]["usage"]["total_tokens"] > 0
