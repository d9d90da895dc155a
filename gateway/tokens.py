"""Token estimates: what a request may cost before the upstream says, and what it cost when it never says.

No tokenizer: tiktoken downloads its vocabularies at first use, and every
model family tokenizes differently anyway. A quarter of a token per character
(OpenAI's own rule of thumb for English) is close enough for what these
numbers do: size the tpm and budget reservations that the real usage settles
afterwards, and stand in for usage an upstream did not report. They must be
cheap (they run on every limited request) and never fail on an odd shape.
"""
from __future__ import annotations

from typing import Mapping

import orjson

PER_MESSAGE = 4                 # role and framing tokens of each chat message
DEFAULT_COMPLETION_RESERVE = 256


def estimate_prompt_tokens(endpoint: str, params: Mapping) -> int:
    """ceil(characters / 4) of every text the prompt carries, one per token id, + 4 per chat message."""
    if not isinstance(params, Mapping):
        return 0
    counter = _Counter()
    if endpoint == "chat/completions":
        messages = params.get("messages")
        if isinstance(messages, list):
            for message in messages:
                counter.message(message)
        for name in ("tools", "functions"):   # tool definitions are part of the prompt the model reads
            counter.json(params.get(name))
    elif endpoint == "completions":
        counter.prompt(params.get("prompt"))
    elif endpoint == "embeddings":
        counter.prompt(params.get("input"))
    return counter.tokens()


def completion_reserve(endpoint: str, params: Mapping) -> int:
    """The completion tokens to hold for a request: its own cap, else 256, for each of its `n` choices.

    Embeddings produce no completion tokens. The reservation is released and
    replaced by the real usage when the answer ends, so a generous default
    only delays a request near the limit; it never bills one.
    """
    if endpoint not in ("chat/completions", "completions") or not isinstance(params, Mapping):
        return 0
    cap = _positive(params.get("max_completion_tokens")) or _positive(params.get("max_tokens")) \
        or DEFAULT_COMPLETION_RESERVE
    choices = _positive(params.get("n")) or 1
    if endpoint == "completions":   # best_of completions are generated (and billed) even if not returned
        choices = max(choices, _positive(params.get("best_of")) or 1)
    return cap * choices


def estimate_completion_tokens(body: Mapping) -> int:
    """ceil(characters / 4) of an answer's text: message contents, tool calls, legacy `text`.

    For a whole answer whose upstream reported no usage.
    """
    if not isinstance(body, Mapping):
        return 0
    counter = _Counter()
    choices = body.get("choices")
    if isinstance(choices, list):
        for choice in choices:
            if not isinstance(choice, Mapping):
                continue
            counter.text(choice.get("text"))
            message = choice.get("message")
            if isinstance(message, Mapping):
                counter.content(message.get("content"))
                counter.text(message.get("refusal"))
                counter.calls(message)
    return counter.tokens()


def _positive(value) -> int | None:
    return value if type(value) is int and value > 0 else None


class _Counter:
    """Characters and token ids seen so far; `tokens()` turns them into the estimate."""
    __slots__ = ("chars", "ids", "messages")

    def __init__(self) -> None:
        self.chars = self.ids = self.messages = 0

    def tokens(self) -> int:
        return -(-self.chars // 4) + self.ids + PER_MESSAGE * self.messages

    def text(self, value) -> None:
        if isinstance(value, str):
            self.chars += len(value)

    def content(self, content) -> None:
        if isinstance(content, str):
            self.chars += len(content)
        elif isinstance(content, list):   # content parts: only text is counted (images have no characters)
            for part in content:
                if isinstance(part, Mapping):
                    self.text(part.get("text"))
                elif isinstance(part, str):
                    self.chars += len(part)

    def message(self, message) -> None:
        if not isinstance(message, Mapping):
            return
        self.messages += 1
        self.content(message.get("content"))
        self.text(message.get("name"))
        self.calls(message)

    def calls(self, message: Mapping) -> None:
        """`tool_calls` (name and arguments of each) and the legacy `function_call`."""
        tool_calls = message.get("tool_calls")
        if isinstance(tool_calls, list):
            for call in tool_calls:
                if isinstance(call, Mapping):
                    self.function(call.get("function"))
        self.function(message.get("function_call"))

    def function(self, function) -> None:
        if isinstance(function, Mapping):
            self.text(function.get("name"))
            self.text(function.get("arguments"))

    def prompt(self, prompt) -> None:
        """A completions `prompt` or an embeddings `input`: text, texts, token ids, or lists of token ids."""
        if isinstance(prompt, str):
            self.chars += len(prompt)
        elif isinstance(prompt, list):
            for item in prompt:
                if isinstance(item, str):
                    self.chars += len(item)
                elif isinstance(item, int):
                    self.ids += 1
                elif isinstance(item, list):
                    self.ids += len(item)

    def json(self, value) -> None:
        if isinstance(value, list) and value:
            try:
                self.chars += len(orjson.dumps(value))
            except (TypeError, orjson.JSONEncodeError):
                pass
