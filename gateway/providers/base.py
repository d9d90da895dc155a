"""The small protocol every provider adapter implements, and the stream they all return.

An adapter translates one wire format to and from the OpenAI chat shape; it
never retries, never picks deployments and never touches Flask.
"""
from __future__ import annotations

from typing import Callable, Iterator, Mapping, Protocol

from ..errors import BadUpstreamResponse
from ..types import Completion, Deployment, ModelRequest, Usage

# Events held back before the first content-bearing one (role announcements,
# empty deltas): more than this is an upstream that will never say anything.
MAX_HEAD_EVENTS = 256
MAX_HEAD_BYTES = 1 << 20

# What an adapter's chunk source yields: SSE bytes ready for the client (one or
# more whole `data: …\n\n` events), and the parsed chunk the gateway inspects
# (usage, content), or None for events relayed without decoding. Empty bytes
# with a chunk: an event the client did not ask for (the usage chunk the gateway
# asked for on its behalf), seen by the gateway only.
Chunk = tuple[bytes, dict | None]


class Provider(Protocol):
    """What every adapter in ADAPTERS implements; `deadline` is a time.monotonic() value not to run past."""

    def complete(self, deployment: Deployment, request: ModelRequest, deadline: float | None = None) -> Completion:
        """A whole answer (chat, legacy completion or embeddings, per request.endpoint)."""

    def stream(self, deployment: Deployment, request: ModelRequest,
               deadline: float | None = None) -> "PrimedStream":
        """A started stream, primed (see PrimedStream.prime) before the deadline."""

    def close(self) -> None: ...


def clean_usage(usage):
    """`usage` as OpenAI's schema has it: the same object when it already is, else a fixed copy.

    Token counts of the wrong type (strings, floats, negatives, nulls) become
    the counts Usage reads; a `usage` that is not an object is None (dropped).
    Clients validate answers against the schema, so a bad count must not reach them.
    """
    if not isinstance(usage, Mapping):
        return None
    get = usage.get
    if _is_count(get("prompt_tokens", 0)) and _is_count(get("completion_tokens", 0)) \
            and _is_count(get("total_tokens", 0)):
        return usage
    counts = Usage.from_openai(usage)
    return {**usage, "prompt_tokens": counts.prompt_tokens, "completion_tokens": counts.completion_tokens,
            "total_tokens": counts.total_tokens}


def _is_count(value) -> bool:
    return type(value) is int and 0 <= value < 2 ** 53


def carries_content(chunk: dict) -> bool:
    """Does this chunk give the client anything beyond a role announcement?"""
    if chunk.get("usage"):
        return True
    for choice in chunk.get("choices") or ():
        if not isinstance(choice, dict):
            continue
        if choice.get("finish_reason") or choice.get("text"):
            return True
        delta = choice.get("delta")
        if isinstance(delta, dict):
            for key, value in delta.items():
                if value and key != "role":
                    return True
    return False


class PrimedStream:
    """Framed OpenAI chunk events from one upstream stream.

    `prime()` reads ahead to the first content-bearing chunk so that anything
    that fails before it is still a plain error the router may retry; the
    chunks read ahead are replayed first when the stream is iterated.

    `usage` is the last usage an event carried; when none did, `estimate`
    (if given) fills it in at close, so every stream ends with a usage to bill.
    """
    __slots__ = ("_chunks", "_close", "_head", "usage", "_closed", "_estimate")

    def __init__(self, chunks: Iterator[Chunk], close: Callable[[], None],
                 estimate: Callable[[], Usage] | None = None):
        self._chunks = chunks
        self._close = close
        self._estimate = estimate
        self._head: list[bytes] = []
        self.usage: Usage | None = None
        self._closed = False

    def prime(self) -> "PrimedStream":
        size = 0
        try:
            for payload, chunk in self._chunks:
                self._observe(chunk)
                self._head.append(payload)
                if chunk is None or carries_content(chunk):
                    break
                size += len(payload)
                if len(self._head) > MAX_HEAD_EVENTS or size > MAX_HEAD_BYTES:
                    raise BadUpstreamResponse("the upstream stream sent no content in its first "
                                              f"{len(self._head)} events ({size} bytes)")
        except BaseException:
            self.close()
            raise
        return self

    def __iter__(self) -> Iterator[bytes]:
        head, self._head = self._head, []
        if head:
            joined = b"".join(head)
            if joined:
                yield joined
        for payload, chunk in self._chunks:
            self._observe(chunk)
            if payload:
                yield payload

    def _observe(self, chunk: dict | None) -> None:
        usage = chunk.get("usage") if chunk else None
        if usage:
            self.usage = Usage.from_openai(usage)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            try:
                self._close()
            finally:
                if self.usage is None and self._estimate is not None:
                    self.usage = self._estimate()
