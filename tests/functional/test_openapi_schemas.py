"""The spec validators themselves: real OpenAI recordings pass, the usual hand-built mistakes fail.

Without this, a validator that accepts everything (a broken $ref, `nullable` mishandled)
would make every spec check in the functional tests pass vacuously.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from . import openapi_schemas
from .openapi_schemas import SpecViolation, check_exchange, parse_sse, validate

FIXTURES = Path(__file__).resolve().parents[1] / "reference" / "fixtures" / "openai"
STREAMS = sorted(FIXTURES.glob("chat-stream-*.sse"))
RESPONSES = sorted(FIXTURES.glob("chat-nonstream-*.json"))


def test_recorded_fixtures_are_there():
    """An empty or missing fixture directory must fail, not parametrize to nothing."""
    assert len(STREAMS) >= 7, f"recorded streams missing under {FIXTURES}"
    assert len(RESPONSES) >= 2, f"recorded responses missing under {FIXTURES}"


def test_a_missing_spec_fails_loudly(monkeypatch, tmp_path):
    """No spec means an error, never a validator that accepts everything."""
    for path in (tmp_path / "absent.yaml", tmp_path / "empty.yaml"):
        if path.name == "empty.yaml":
            path.write_bytes(b"")
        monkeypatch.setattr(openapi_schemas, "SPEC_PATH", path)
        with pytest.raises(FileNotFoundError, match=path.name):
            openapi_schemas._registry.__wrapped__()


@pytest.mark.parametrize("path", STREAMS, ids=lambda p: p.stem)
def test_recorded_openai_streams_pass(path):
    events = check_exchange("POST", "/v1/chat/completions", 200, "text/event-stream", path.read_bytes())["events"]
    assert events[-1] == "[DONE]" and len(events) > 3


def test_recorded_openai_responses_pass():
    assert RESPONSES, f"no chat-nonstream-*.json under {FIXTURES}"
    for path in RESPONSES:
        validate("CreateChatCompletionResponse", json.loads(path.read_text()))


def _text_response() -> dict:
    return json.loads((FIXTURES / "chat-nonstream-text.json").read_text())


@pytest.mark.parametrize("breakage", [
    lambda r: r["choices"][0].pop("logprobs"),
    lambda r: r["choices"][0]["message"].pop("refusal"),
    lambda r: r["choices"][0].update(finish_reason="done"),
    lambda r: r.update(created="yesterday"),
    lambda r: r.pop("id"),
], ids=["no-logprobs", "no-refusal", "bad-finish-reason", "created-not-int", "no-id"])
def test_hand_built_mistakes_fail(breakage):
    response = _text_response()
    breakage(response)
    with pytest.raises(SpecViolation):
        validate("CreateChatCompletionResponse", response)


def test_error_body_needs_param_and_code():
    validate("ErrorResponse", {"error": {"message": "m", "type": "t", "param": None, "code": None}})
    with pytest.raises(SpecViolation, match="param"):
        validate("ErrorResponse", {"error": {"message": "m", "type": "t", "code": None}})
    with pytest.raises(SpecViolation):
        check_exchange("POST", "/v1/chat/completions", 502, "text/html", b"<html>Bad Gateway</html>")


def test_legacy_stream_chunk_relaxation_is_only_for_streams():
    chunk = {"id": "cmpl-1", "object": "text_completion", "created": 1, "model": "m",
             "choices": [{"text": "a", "index": 0, "logprobs": None, "finish_reason": None}]}
    validate("CreateCompletionStreamChunk", chunk)
    with pytest.raises(SpecViolation):
        validate("CreateCompletionResponse", chunk)


def test_base64_embeddings_only_with_base64_requested():
    body = {"object": "list", "model": "e", "usage": {"prompt_tokens": 1, "total_tokens": 1},
            "data": [{"object": "embedding", "index": 0, "embedding": "zczMPQ=="}]}
    raw = json.dumps(body).encode()
    check_exchange("POST", "/embeddings", 200, "application/json", raw, {"encoding_format": "base64"})
    with pytest.raises(SpecViolation):
        check_exchange("POST", "/embeddings", 200, "application/json", raw, {"encoding_format": "float"})


def test_sse_parsing():
    body = b": ping\n\ndata: {\"a\":\ndata: 1}\n\ndata:[DONE]\n\n"
    assert parse_sse(body) == ['{"a":\n1}', "[DONE]"]


def test_stream_chunk_missing_delta_fails():
    raw = (FIXTURES / "chat-stream-text-usage.sse").read_bytes()
    first = json.loads(parse_sse(raw)[0])
    broken = copy.deepcopy(first)
    del broken["choices"][0]["delta"]
    with pytest.raises(SpecViolation, match="delta"):
        validate("CreateChatCompletionStreamResponse", broken)
