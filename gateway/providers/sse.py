"""A pure server-sent-events decoder: bytes in, (event name, data bytes) out.

Follows the SSE rules the OpenAI SDK follows: `:` lines are comments
(keep-alives), several `data:` lines of one event join with a newline, one
space after the colon is dropped; any of CRLF, LF or CR ends a line.
"""
from __future__ import annotations

from typing import Iterable, Iterator

Event = tuple[str | None, bytes]


class EventTooLarge(ValueError):
    """One line or event grew past the decoder's cap: the stream is not one a client can use."""


class SSEDecoder:
    """Incremental decoder. Work is linear in the bytes fed: a partial line is kept
    as a list of pieces and joined once, when its end arrives; a line or an
    event over `max_event_bytes` raises EventTooLarge."""
    __slots__ = ("_pending", "_pending_size", "_data", "_data_size", "_event", "_skip_lf", "_max")

    def __init__(self, max_event_bytes: int = 4 << 20) -> None:
        self._pending: list[bytes] = []   # pieces of a line whose end has not arrived
        self._pending_size = 0
        self._data: list[bytes] = []
        self._data_size = 0
        self._event: str | None = None
        self._skip_lf = False  # a CR ended the last chunk: its LF may open this one
        self._max = max_event_bytes

    @property
    def idle(self) -> bool:
        """Between events: no partial line or event is waiting for more bytes."""
        return not (self._pending or self._data or self._skip_lf)

    def feed(self, chunk: bytes) -> list[Event]:
        if not chunk:
            return []
        if self._skip_lf and chunk[:1] == b"\n":
            chunk = chunk[1:]
            if not chunk:
                self._skip_lf = False
                return []
        self._skip_lf = False
        if b"\r" in chunk:
            self._skip_lf = chunk.endswith(b"\r")
            chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        if b"\n" not in chunk:
            self._keep_partial(chunk)
            return []
        *lines, rest = chunk.split(b"\n")
        if self._pending:
            self._pending.append(lines[0])
            lines[0] = b"".join(self._pending)
            self._pending, self._pending_size = [], 0
        events: list[Event] = []
        for line in lines:
            self._line(line, events)
        if rest:
            self._keep_partial(rest)
        return events

    def _keep_partial(self, piece: bytes) -> None:
        self._pending_size += len(piece)
        if self._pending_size + self._data_size > self._max:
            raise EventTooLarge(f"an event of the stream is larger than {self._max >> 20} MB")
        self._pending.append(piece)

    def flush(self) -> list[Event]:
        """End of stream: a last event without its blank line still counts."""
        events: list[Event] = []
        if self._pending:
            line = b"".join(self._pending)
            self._pending, self._pending_size = [], 0
            self._line(line, events)
        self._line(b"", events)
        return events

    def _line(self, line: bytes, events: list[Event]) -> None:
        if not line:
            if self._data:
                events.append((self._event, b"\n".join(self._data)))
            self._data = []
            self._data_size = 0
            self._event = None
            return
        if len(line) + self._data_size > self._max:
            raise EventTooLarge(f"an event of the stream is larger than {self._max >> 20} MB")
        if line[0] == 0x3A:  # ":" comment
            return
        name, _, value = line.partition(b":")
        if value[:1] == b" ":
            value = value[1:]
        if name == b"data":
            self._data.append(value)
            self._data_size += len(value) + 1
        elif name == b"event":
            self._event = value.decode("utf-8", "replace")


def iter_events(chunks: Iterable[bytes]) -> Iterator[Event]:
    decoder = SSEDecoder()
    for chunk in chunks:
        yield from decoder.feed(chunk)
    yield from decoder.flush()
