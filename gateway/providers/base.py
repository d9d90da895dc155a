"""The small protocol every provider adapter implements, and the stream they all return.

An adapter translates one wire format to and from the OpenAI chat shape; it
never retries, never picks deployments and never touches Flask.
"""
from __future__ import annotations

from typing import Callable, Iterator, Protocol

from ..types import Completion, Deployment, ModelRequest, Usage

# What an adapter's chunk source yields: SSE bytes ready for the client (one or
# more whole `data: …\n\n` events), and the parsed chunk the gateway inspects
# (usage, content), or None for events relayed without decoding.
Chunk = tuple[bytes, dict | None]


class Provider(Protocol):
    def complete(self, deployment: Deployment, request: ModelRequest) -> Completion:
        """A whole answer (chat, legacy completion or embeddings, per request.endpoint)."""

    def stream(self, deployment: Deployment, request: ModelRequest) -> "PrimedStream":
        """A started stream, primed (see PrimedStream.prime)."""

    def close(self) -> None: ...


def carries_content(chunk: dict) -> bool:
    """Does this chunk give the client anything beyond a role announcement?"""
    if chunk.get("usage"):
        return True
    for choice in chunk.get("choices") or ():
        if choice.get("finish_reason") or choice.get("text"):
            return True
        delta = choice.get("delta")
        if delta:
            for key, value in delta.items():
                if value and key != "role":
                    return True
    return False


class PrimedStream:
    """Framed OpenAI chunk events from one upstream stream.

    `prime()` reads ahead to the first content-bearing chunk so that anything
    that fails before it is still a plain error the router may retry; the
    chunks read ahead are replayed first when the stream is iterated.
    """
    __slots__ = ("_chunks", "_close", "_head", "usage", "_closed")

    def __init__(self, chunks: Iterator[Chunk], close: Callable[[], None]):
        self._chunks = chunks
        self._close = close
        self._head: list[bytes] = []
        self.usage: Usage | None = None
        self._closed = False

    def prime(self) -> "PrimedStream":
        try:
            for payload, chunk in self._chunks:
                self._observe(chunk)
                self._head.append(payload)
                if chunk is None or carries_content(chunk):
                    break
        except BaseException:
            self.close()
            raise
        return self

    def __iter__(self) -> Iterator[bytes]:
        head, self._head = self._head, []
        if head:
            yield b"".join(head)
        for payload, chunk in self._chunks:
            self._observe(chunk)
            yield payload

    def _observe(self, chunk: dict | None) -> None:
        usage = chunk.get("usage") if chunk else None
        if usage:
            self.usage = Usage.from_openai(usage)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._close()
