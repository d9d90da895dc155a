"""Streaming through the gateway: flushed at once, exact replays, in-band mid-stream errors, hang-ups."""
from __future__ import annotations

import json
import time

import pytest
import requests

from .conftest import MASTER_KEY, STANDARD_MODELS
from .fake_upstream import _fixture_events
from .wire import SSEResponse, assert_openai_error, assert_sse_framing, chat_body, spec_check

CHAT = "/v1/chat/completions"
AUTH = {"Authorization": f"Bearer {MASTER_KEY}"}
RECORDED_MODEL = b'"model":"gpt-4o-2024-08-06"'


def open_stream(gateway, model: str, **extra) -> SSEResponse:
    return SSEResponse.open(gateway.url, CHAT, chat_body(model, stream=True, **extra), AUTH)


def wait_for(predicate, timeout: float, interval: float = 0.01):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    return predicate()


# --- (a) flushed chunk by chunk --------------------------------------------------------------

def test_first_chunk_arrives_long_before_the_last(gateway):
    with open_stream(gateway, "slow-stream") as stream:  # 40 content chunks, 50 ms apart
        events = stream.read_all()
    assert_sse_framing(stream)
    first = events[0].at - stream.sent_at
    whole = events[-1].at - stream.sent_at
    assert first < 1.0, f"first data line after {first:.2f}s: the stream is buffered"
    assert whole >= 2.0, f"the whole stream took {whole:.2f}s: the upstream is not the slow one it should be"
    content = [e for e in events[:-1] if e.json()["choices"] and e.json()["choices"][0]["delta"].get("content")]
    assert len(content) == 40
    # Spread out, not delivered in a few bursts: half the chunks are in before the last third of the time.
    mid = content[19].at - stream.sent_at
    assert mid < whole - 0.6, f"chunk 20 arrived at {mid:.2f}s of {whole:.2f}s"


# --- (b) framing -------------------------------------------------------------------------------

@pytest.mark.parametrize("model, extra", [
    ("shin-llama-3-1-70b", {}),
    ("shin-llama-3-1-70b", {"stream_options": {"include_usage": True}}),
    ("otsu-qwen3-coder-plus", {"n": 1, "temperature": 0.2}),
])
def test_stream_framing(gateway, model, extra):
    with open_stream(gateway, model, **extra) as stream:
        events = stream.read_all()
    assert_sse_framing(stream)
    chunks = [e.json() for e in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" and c["model"] == model for c in chunks), chunks
    assert len({c["id"] for c in chunks}) == 1
    text = "".join((c["choices"][0]["delta"].get("content") or "") for c in chunks if c["choices"])
    assert text == "tok0 tok1 tok2 tok3 tok4 "
    usage_chunks = [c for c in chunks if not c["choices"]]
    if extra.get("stream_options", {}).get("include_usage"):
        assert len(usage_chunks) == 1 and usage_chunks[0] is chunks[-1] and usage_chunks[0]["usage"], chunks[-2:]
    else:
        assert not usage_chunks, "a usage chunk nobody asked for"


def test_legacy_completions_stream_framing(gateway):
    with SSEResponse.open(gateway.url, "/v1/completions",
                          {"model": "shin-llama-3-1-8b", "prompt": "hi", "stream": True}, AUTH) as stream:
        events = stream.read_all()
    assert_sse_framing(stream)
    chunks = [e.json() for e in events[:-1]]
    assert all(c["object"] == "text_completion" and c["model"] == "shin-llama-3-1-8b" for c in chunks)
    assert "".join(c["choices"][0]["text"] for c in chunks) == "tok0 tok1 tok2 tok3 tok4 "


# --- (c) recorded streams replayed exactly ----------------------------------------------------

FIXTURE_MODELS = [name for name in STANDARD_MODELS if name.startswith("fixture-")]


def test_every_fixture_model_is_covered():
    assert sorted(FIXTURE_MODELS) == sorted(["fixture-text", "fixture-tools", "fixture-n3", "fixture-logprobs",
                                             "fixture-refusal", "fixture-length", "fixture-tool-call"])


@pytest.mark.parametrize("model", FIXTURE_MODELS)
def test_fixture_replay_is_byte_identical(gateway, model):
    recorded = _fixture_events(STANDARD_MODELS[model][len("fixture-"):])
    assert recorded[-1] == b"data: [DONE]\n\n"
    alias = b'"model":' + json.dumps(model).encode()
    expected = []
    for event in recorded:
        if event != b"data: [DONE]\n\n":
            assert event.count(RECORDED_MODEL) == 1, event[:200]
            event = event.replace(RECORDED_MODEL, alias)
        expected.append(event)

    with open_stream(gateway, model, stream_options={"include_usage": True}) as stream:
        events = stream.read_all()
    assert_sse_framing(stream)
    received = [e.raw for e in events]
    assert len(received) == len(expected), f"{len(received)} events, recorded {len(expected)}"
    for index, (got, want) in enumerate(zip(received, expected, strict=True)):
        assert got == want, f"event {index} differs:\n got  {got[:300]!r}\n want {want[:300]!r}"
    chunks = [e.json() for e in events[:-1]]
    assert {c["model"] for c in chunks} == {model}
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["total_tokens"] > 0, chunks[-1]


# --- (d) upstream failure after the first byte --------------------------------------------------

@pytest.mark.parametrize("model", ["stream-error", "stream-cut"])
def test_mid_stream_failure_ends_with_one_error_event_and_no_done(gateway, model):
    started = time.monotonic()
    with open_stream(gateway, model) as stream:
        events = stream.read_all()
    assert time.monotonic() - started < 8, "the cut stream was not ended promptly"
    assert stream.status == 200
    assert stream.header("content-type").startswith("text/event-stream")
    assert all(e.raw.startswith(b"data: ") and e.raw.endswith(b"\n\n") for e in events), events
    assert b"[DONE]" not in stream.body, "a cut stream must not end with data: [DONE]"
    assert len(events) == 4, [e.raw[:120] for e in events]
    # The upstream's first three events reach the client unchanged (model renamed) ...
    head = [e.json() for e in events[:3]]
    assert [c["model"] for c in head] == [model] * 3
    assert head[0]["choices"][0]["delta"].get("role") == "assistant"
    assert [c["choices"][0]["delta"].get("content") for c in head[1:]] == ["tok0 ", "tok1 "]
    # ... then exactly one in-band error event, and the end.
    last = events[3].json()
    assert set(last) == {"error"}, last
    error = last["error"]
    assert {"message", "type", "param", "code"} <= set(error), error
    assert error["type"] == "api_error" and error["code"] == "upstream_error" and error["param"] is None, error
    assert isinstance(error["message"], str) and error["message"], error
    spec_check("ErrorResponse", last)
    assert sum(1 for e in events if b'"error"' in e.raw) == 1


def test_an_upstream_silent_past_stream_timeout_ends_the_stream_in_band(gateway, upstream):
    """stream-stall: 3 chunks, then 5 s of silence; stream_timeout is 1 s."""
    with upstream.lock:
        seen = len(upstream.hangups)
    with open_stream(gateway, "stream-stall") as stream:
        events = stream.read_all()
    assert b"[DONE]" not in stream.body, "a timed-out stream must not end with data: [DONE]"
    assert len(events) == 4, [e.raw[:120] for e in events]
    silence = events[3].at - events[2].at
    assert 0.9 <= silence < 2.5, f"the in-band timeout came {silence:.2f}s after the last chunk"
    error = events[3].json()["error"]
    assert (error["type"], error["code"], error["param"]) == ("api_error", "upstream_timeout", None), error
    spec_check("ErrorResponse", events[3].json())
    assert wait_for(lambda: upstream.hangups[seen:], timeout=2.0), "the gateway kept the stalled upstream open"


# --- (e) the client hangs up ------------------------------------------------------------------

@pytest.mark.parametrize("model, chunks_first", [("slow-stream", 2), ("very-slow-stream", 2)])
def test_client_disconnect_stops_the_upstream_read(gateway, upstream, model, chunks_first):
    with upstream.lock:
        seen = len(upstream.hangups)
    stream = open_stream(gateway, model)
    try:
        for _ in range(chunks_first):
            event = stream.next_event()
            assert event is not None and event.raw.startswith(b"data: {"), event
    finally:
        stream.close()
    closed_at = time.monotonic()
    hangups = wait_for(lambda: upstream.hangups[seen:], timeout=4.0)
    assert hangups, f"the upstream saw no hang-up within 4s of the client leaving ({model})"
    delay = hangups[0] - closed_at
    assert delay < 1.0, f"the upstream read went on {delay:.2f}s after the client left ({model})"


def test_client_disconnect_before_the_first_byte_stops_the_upstream_read(gateway, upstream):
    """very-slow-stream: the upstream's first content comes after 3 s; the client leaves before it."""
    upstream_model = STANDARD_MODELS["very-slow-stream"]
    with upstream.lock:
        seen = len(upstream.hangups)
    before = upstream.count(upstream_model)
    stream = SSEResponse.open(gateway.url, CHAT, chat_body("very-slow-stream", stream=True), AUTH,
                              read_head=False)
    try:
        assert wait_for(lambda: upstream.count(upstream_model) > before, timeout=2.0), \
            "the gateway never called the upstream"
    finally:
        stream.close()
    closed_at = time.monotonic()
    hangups = wait_for(lambda: upstream.hangups[seen:], timeout=4.0)
    assert hangups, "the upstream saw no hang-up within 4s of the client leaving before the first byte"
    delay = hangups[0] - closed_at
    assert delay < 1.0, f"the upstream read went on {delay:.2f}s after the client left (before the first byte)"


# --- (f) upstream failure before the first byte -----------------------------------------------

def test_failure_before_first_byte_is_a_plain_json_error(gateway, upstream):
    before = upstream.count(STANDARD_MODELS["fail-500"])
    response = requests.post(f"{gateway.url}{CHAT}", json=chat_body("fail-500", stream=True), headers=AUTH,
                             timeout=20)
    assert not response.headers.get("Content-Type", "").startswith("text/event-stream"), response.text[:300]
    assert_openai_error(response, 502, "api_error", code="upstream_error")
    assert "data:" not in response.text
    assert upstream.count(STANDARD_MODELS["fail-500"]) - before >= 1
