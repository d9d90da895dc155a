"""The built-in `mock/` provider: deterministic answers, usage and SSE, no network, no keys.

It lets the shipped config answer out of the box and gives smoke tests and
demos a model that behaves exactly like a real one on the wire.
"""
from __future__ import annotations

import base64
import hashlib
import struct
import time
from typing import Iterator

import orjson

from ..types import Completion, Deployment, ModelRequest, Usage
from .base import Chunk, PrimedStream

EMBEDDING_DIMENSIONS = 16


class MockAdapter:
    def __init__(self, deployments: list[Deployment], **_):
        pass

    def complete(self, deployment: Deployment, request: ModelRequest, deadline: float | None = None) -> Completion:
        if request.endpoint == "embeddings":
            return _embeddings(request)
        text = answer_text(request)
        usage = _usage(request, text)
        created = int(time.time())
        if request.endpoint == "completions":
            body = {"id": f"cmpl-{request.request_id}", "object": "text_completion", "created": created,
                    "model": request.model,
                    "choices": [{"text": text, "index": 0, "logprobs": None, "finish_reason": "stop"}]}
        else:
            body = {"id": f"chatcmpl-{request.request_id}", "object": "chat.completion", "created": created,
                    "model": request.model,
                    "choices": [{"index": 0, "finish_reason": "stop", "logprobs": None,
                                 "message": {"role": "assistant", "content": text, "refusal": None}}]}
        body["usage"] = {"prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens,
                         "total_tokens": usage.total_tokens}
        return Completion(body, usage)

    def stream(self, deployment: Deployment, request: ModelRequest, deadline: float | None = None) -> PrimedStream:
        return PrimedStream(_chunks(request), lambda: None).prime()

    def close(self) -> None:
        pass


def answer_text(request: ModelRequest) -> str:
    """`Mock answer to: <the last user text>` — predictable, so tests can assert on it."""
    params = request.params
    if request.endpoint == "completions":
        prompt = params.get("prompt")
        asked = prompt if isinstance(prompt, str) else " ".join(map(str, prompt or []))
    else:
        asked = ""
        for message in reversed(params.get("messages") or []):
            if message.get("role") == "user":
                asked = _text_of(message.get("content"))
                break
    asked = " ".join(asked.split())
    return f"Mock answer to: {asked[:200]}" if asked else "Mock answer."


def _text_of(content) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(part.get("text", "") for part in content if isinstance(part, dict))
    return ""


def _count_tokens(text: str) -> int:
    return max(1, len(text.split()))


def _usage(request: ModelRequest, text: str) -> Usage:
    params = request.params
    if request.endpoint == "completions":
        prompt = _count_tokens(str(params.get("prompt") or ""))
    else:  # message by message: no copy of a large conversation joined into one string
        prompt = max(1, sum(len(_text_of(m.get("content")).split()) for m in params.get("messages") or []))
    completion = _count_tokens(text)
    return Usage(prompt, completion, prompt + completion)


def _chunks(request: ModelRequest) -> Iterator[Chunk]:
    text = answer_text(request)
    legacy = request.endpoint == "completions"
    base = {"id": f"{'cmpl' if legacy else 'chatcmpl'}-{request.request_id}",
            "object": "text_completion" if legacy else "chat.completion.chunk",
            "created": int(time.time()), "model": request.model}
    words = text.split(" ")
    pieces = [w if i == 0 else " " + w for i, w in enumerate(words)]
    if legacy:
        choices = [[{"index": 0, "text": p, "logprobs": None, "finish_reason": None}] for p in pieces]
        choices.append([{"index": 0, "text": "", "logprobs": None, "finish_reason": "stop"}])
    else:
        choices = [[{"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                     "finish_reason": None}]]
        choices += [[{"index": 0, "delta": {"content": p}, "logprobs": None, "finish_reason": None}]
                    for p in pieces]
        choices.append([{"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}])
    for choice in choices:
        chunk = {**base, "choices": choice}
        yield _event(chunk), chunk
    # Like a real upstream asked for usage by the gateway: the stream's usage is always
    # known; the client sees the usage chunk only when it asked for it.
    usage = _usage(request, text)
    chunk = {**base, "choices": [], "usage": {"prompt_tokens": usage.prompt_tokens,
                                               "completion_tokens": usage.completion_tokens,
                                               "total_tokens": usage.total_tokens}}
    yield (_event(chunk) if request.include_usage else b""), chunk


def _event(chunk: dict) -> bytes:
    return b"data: " + orjson.dumps(chunk) + b"\n\n"


def _embeddings(request: ModelRequest) -> Completion:
    params = request.params
    inputs = params.get("input")
    if isinstance(inputs, str) or (isinstance(inputs, list) and inputs and isinstance(inputs[0], int)):
        inputs = [inputs]
    dimensions = params.get("dimensions") or EMBEDDING_DIMENSIONS
    as_base64 = params.get("encoding_format") == "base64"
    data, tokens = [], 0
    for index, item in enumerate(inputs):
        text = item if isinstance(item, str) else " ".join(map(str, item))
        tokens += _count_tokens(text)
        time.sleep(0)  # under gevent, a turn for the worker's other requests between inputs
        vector = _vector(text, dimensions)
        embedding = base64.b64encode(struct.pack(f"<{dimensions}f", *vector)).decode() if as_base64 else vector
        data.append({"object": "embedding", "index": index, "embedding": embedding})
    usage = Usage(tokens, 0, tokens)
    body = {"object": "list", "data": data, "model": request.model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}
    return Completion(body, usage)


def _vector(text: str, dimensions: int) -> list[float]:
    """A unit vector derived from the text's hash: same text, same vector."""
    digest = b""
    counter = 0
    while len(digest) < dimensions:
        digest += hashlib.sha256(f"{counter}:{text}".encode()).digest()
        counter += 1
    raw = [(b - 127.5) / 127.5 for b in digest[:dimensions]]
    norm = sum(x * x for x in raw) ** 0.5 or 1.0
    return [x / norm for x in raw]
