"""A pure server-sent-events decoder: bytes in, (event name, data bytes) out.

Follows the SSE rules the OpenAI SDK follows: `:` lines are comments
(keep-alives), several `data:` lines of one event join with a newline, one
space after the colon is dropped; any of CRLF, LF or CR ends a line.
"""
from __future__ import annotations

from typing import Iterable, Iterator

Event = tuple[str | None, bytes]


class SSEDecoder:
    __slots__ = ("_buffer", "_data", "_event", "_skip_lf")

    def __init__(self) -> None:
        self._buffer = b""
        self._data: list[bytes] = []
        self._event: str | None = None
        self._skip_lf = False  # a CR ended the last chunk: its LF may open this one

    @property
    def idle(self) -> bool:
        """Between events: no partial line or event is waiting for more bytes."""
        return not (self._buffer or self._data or self._skip_lf)

    def feed(self, chunk: bytes) -> list[Event]:
        if not chunk:
            return []
        if self._skip_lf and chunk[:1] == b"\n":
            chunk = chunk[1:]
        buffer = self._buffer + chunk if self._buffer else chunk
        self._skip_lf = False
        if b"\r" in buffer:
            self._skip_lf = buffer.endswith(b"\r")
            buffer = buffer.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        *lines, rest = buffer.split(b"\n")
        self._buffer = rest
        events: list[Event] = []
        for line in lines:
            self._line(line, events)
        return events

    def flush(self) -> list[Event]:
        """End of stream: a last event without its blank line still counts."""
        events: list[Event] = []
        if self._buffer:
            self._line(self._buffer, events)
            self._buffer = b""
        self._line(b"", events)
        return events

    def _line(self, line: bytes, events: list[Event]) -> None:
        if not line:
            if self._data:
                events.append((self._event, b"\n".join(self._data)))
            self._data = []
            self._event = None
            return
        if line[0] == 0x3A:  # ":" comment
            return
        name, _, value = line.partition(b":")
        if value[:1] == b" ":
            value = value[1:]
        if name == b"data":
            self._data.append(value)
        elif name == b"event":
            self._event = value.decode("utf-8", "replace")


def iter_events(chunks: Iterable[bytes]) -> Iterator[Event]:
    decoder = SSEDecoder()
    for chunk in chunks:
        yield from decoder.feed(chunk)
    yield from decoder.flush()
