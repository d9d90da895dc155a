"""The OpenAI chat shape, written by adapters that translate another wire format.

One place builds `chat.completion` bodies and `chat.completion.chunk` events,
so every translated provider answers in exactly the shape the OpenAI SDKs
validate, and reads an OpenAI request's messages the same way.
"""
from __future__ import annotations

import secrets
import time

import orjson

from ..errors import InvalidRequest
from .base import Chunk


# OpenAI's JSON mode (`response_format: json_object`) on upstreams without an "any JSON"
# switch (Anthropic, Bedrock): the model is made to call this one tool, whose input is a
# JSON object, and that input is the answer's text.
JSON_TOOL = "json_answer"
JSON_TOOL_DESCRIPTION = "Give the whole answer as one JSON object."


def json_mode(params) -> bool:
    response_format = params.get("response_format")
    return isinstance(response_format, dict) and response_format.get("type") == "json_object"


def new_id(prefix: str = "chatcmpl-") -> str:
    return prefix + secrets.token_urlsafe(18).replace("-", "a").replace("_", "b")


class ChunkWriter:
    """The chunks of one translated stream: same id, `created` and model (the client's name) on each.

    A text delta — nearly every event of a stream — is written into a frame
    encoded once per stream, with only the text itself encoded per event, and
    is handed on without a parsed dict (like a relayed OpenAI event): the
    gateway inspects nothing in it.

    `as_text`: the client called the legacy /v1/completions (legacy.py), so
    the chunks are `text_completion` ones, with no role chunk.
    """
    __slots__ = ("_id", "model", "created", "include_usage", "_text_frame", "as_text")

    def __init__(self, model: str, include_usage: bool, id: str | None = None, *, as_text: bool = False):
        self._id = id or new_id()
        self.model = model
        self.created = int(time.time())
        self.include_usage = include_usage
        self.as_text = as_text
        self._text_frame: tuple[bytes, bytes] | None = None

    @property
    def id(self) -> str:
        return self._id

    @id.setter
    def id(self, value: str) -> None:
        """The upstream's own id, when it gives one (set before the first chunk)."""
        self._id = value
        self._text_frame = None

    def _chunk(self, choice: dict | None, usage: dict | None = None) -> Chunk:
        if self.as_text and choice is not None:
            delta = choice["delta"]
            choice = {"text": delta.get("content") or "", "index": 0, "logprobs": None,
                      "finish_reason": choice["finish_reason"]}
        chunk = {"id": self._id, "object": "text_completion" if self.as_text else "chat.completion.chunk",
                 "created": self.created, "model": self.model, "choices": [choice] if choice is not None else []}
        if usage is not None:
            chunk["usage"] = usage
        return b"data: " + orjson.dumps(chunk) + b"\n\n", chunk

    def role(self) -> Chunk:
        if self.as_text:
            return b"", {"choices": []}    # legacy completions announce no role
        return self._chunk({"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                            "finish_reason": None})

    def text(self, text: str) -> Chunk:
        if self._text_frame is None:
            marker = "\x00"
            payload, _ = self._chunk({"index": 0, "delta": {"content": marker}, "logprobs": None,
                                      "finish_reason": None})
            head, _, tail = payload.partition(orjson.dumps(marker))
            self._text_frame = (head, tail)
        head, tail = self._text_frame
        return head + orjson.dumps(text) + tail, None

    def tool_call(self, index: int, *, id: str | None = None, name: str | None = None, arguments: str = "") -> Chunk:
        call: dict = {"index": index}
        if id is not None:
            call["id"] = id
            call["type"] = "function"
            call["function"] = {"name": name or "", "arguments": arguments}
        else:
            call["function"] = {"arguments": arguments}
        return self._chunk({"index": 0, "delta": {"tool_calls": [call]}, "logprobs": None, "finish_reason": None})

    def finish(self, reason: str) -> Chunk:
        return self._chunk({"index": 0, "delta": {}, "logprobs": None, "finish_reason": reason})

    def usage(self, usage: dict) -> Chunk:
        """The usage-only chunk: sent when the client asked for it, else seen by the gateway alone."""
        payload, chunk = self._chunk(None, usage)
        return (payload if self.include_usage else b""), chunk


def chat_completion(model: str, message: dict, finish_reason: str, usage: dict, id: str | None = None) -> dict:
    """A whole `chat.completion` body; `message` holds `content` and, when any, `tool_calls`."""
    full = {"role": "assistant", "content": message.get("content"), "refusal": None}
    if message.get("tool_calls"):
        full["tool_calls"] = message["tool_calls"]
    return {"id": id or new_id(), "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "message": full, "logprobs": None, "finish_reason": finish_reason}],
            "usage": usage}


def usage_dict(prompt: int, completion: int, *, cached: int | None = None, reasoning: int | None = None) -> dict:
    usage = {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
    if cached is not None:
        usage["prompt_tokens_details"] = {"cached_tokens": cached}
    if reasoning is not None:
        usage["completion_tokens_details"] = {"reasoning_tokens": reasoning}
    return usage


def tool_call(id: str, name: str, arguments: str) -> dict:
    return {"id": id, "type": "function", "function": {"name": name, "arguments": arguments}}


def tool_arguments(arguments, path: str) -> dict:
    """An assistant tool call's `arguments` (a JSON object as a string) for upstreams that take objects."""
    if isinstance(arguments, dict):
        return arguments
    if arguments is None or arguments == "":
        return {}
    try:
        value = orjson.loads(arguments) if isinstance(arguments, str) else None
    except orjson.JSONDecodeError:
        value = None
    if not isinstance(value, dict):
        raise InvalidRequest(f"Invalid value for '{path}': must be a JSON object encoded as a string.", param=path)
    return value


def text_of(content) -> str:
    """The text of an OpenAI message `content`: a string, a list of parts, or None."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(part.get("text") or "" for part in content
                   if isinstance(part, dict) and part.get("type") in ("text", "input_text"))


def add_turn(turns: list, role: str, items: list, field: str) -> None:
    """Append a turn, or extend the last one when it has the same role: Anthropic, Gemini
    and Bedrock want roles to alternate, where OpenAI allows e.g. several tool messages in a row."""
    if turns and turns[-1]["role"] == role:
        turns[-1][field].extend(items)
    else:
        turns.append({"role": role, field: items})


def image_source(url: str, path: str = "messages") -> tuple[str, str] | None:
    """`data:<media type>;base64,<data>` → (media type, data); None for an http(s) URL.

    A `data:` URL that is not base64 of an image is the client's mistake (400
    naming `path`), not something to forward for the upstream to refuse.
    """
    if not url.startswith("data:"):
        return None
    head, sep, data = url[5:].partition(",")
    media_type, _, encoding = head.partition(";")
    if not sep or encoding != "base64" or not media_type.startswith("image/") or not data:
        raise InvalidRequest(f"Invalid value for '{path}': an image data URL must be "
                             f"'data:image/<type>;base64,<data>'.", param=path)
    return media_type, data
