"""gateway/providers/sse.py: the pure server-sent-events decoder."""
from __future__ import annotations

import pytest

from gateway.providers.sse import SSEDecoder, iter_events

STREAM = (b'data: {"n":1}\n\n'
          b': keep-alive\n\n'
          b'event: message\ndata: {"n":2}\n\n'
          b'data: line one\ndata: line two\n\n'
          b'data: [DONE]\n\n')
EXPECTED = [(None, b'{"n":1}'), ("message", b'{"n":2}'), (None, b"line one\nline two"), (None, b"[DONE]")]


def decode_all(pieces) -> list:
    decoder = SSEDecoder()
    events = []
    for piece in pieces:
        events += decoder.feed(piece)
    return events + decoder.flush()


def split_at(data: bytes, cuts) -> list[bytes]:
    pieces, start = [], 0
    for cut in sorted(cuts):
        pieces.append(data[start:cut])
        start = cut
    pieces.append(data[start:])
    return pieces


@pytest.mark.parametrize("ending", [b"\n", b"\r\n", b"\r"], ids=["LF", "CRLF", "CR"])
def test_every_line_ending_gives_the_same_events(ending):
    assert decode_all([STREAM.replace(b"\n", ending)]) == EXPECTED


def test_mixed_line_endings_in_one_stream():
    data = b'data: {"n":1}\r\n\r\n: ping\r\rdata: x\ndata: y\r\n\n'
    assert decode_all([data]) == [(None, b'{"n":1}'), (None, b"x\ny")]


@pytest.mark.parametrize("ending", [b"\n", b"\r\n", b"\r"], ids=["LF", "CRLF", "CR"])
def test_byte_by_byte_feeding(ending):
    data = STREAM.replace(b"\n", ending)
    assert decode_all([data[i:i + 1] for i in range(len(data))]) == EXPECTED


@pytest.mark.parametrize("ending", [b"\n", b"\r\n", b"\r"], ids=["LF", "CRLF", "CR"])
def test_every_two_way_split(ending):
    data = STREAM.replace(b"\n", ending)
    for cut in range(len(data) + 1):
        assert decode_all(split_at(data, [cut])) == EXPECTED, f"split at {cut}: {data[:cut]!r}|{data[cut:]!r}"


def test_many_random_splits_of_a_crlf_stream():
    import random
    rng = random.Random(1234)
    data = STREAM.replace(b"\n", b"\r\n") * 3
    for _ in range(300):
        cuts = rng.sample(range(1, len(data)), rng.randint(1, 12))
        assert decode_all(split_at(data, cuts)) == EXPECTED * 3


def test_cr_ending_one_chunk_and_lf_opening_the_next_is_one_line_end():
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\r") == []
    # The LF completes the CRLF of "data: a"; it must not count as the blank line ending the event.
    assert decoder.feed(b"\ndata: b\r\n\r\n") == [(None, b"a\nb")]


def test_cr_lf_split_around_the_blank_line_gives_one_event():
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\r\n\r") == [(None, b"a")]
    assert decoder.feed(b"\ndata: b\r\n\r\n") == [(None, b"b")]
    assert decoder.flush() == []


def test_an_empty_chunk_between_cr_and_lf_changes_nothing():
    decoder = SSEDecoder()
    events = decoder.feed(b"data: a\r") + decoder.feed(b"") + decoder.feed(b"\ndata: b\r\n\r\n")
    assert events == [(None, b"a\nb")]


def test_a_lone_cr_at_the_end_then_a_new_field_is_a_line_end():
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\r") == []
    assert decoder.feed(b"data: b\r\r") == [(None, b"a\nb")]


def test_comments_and_unknown_fields_are_ignored():
    data = b": comment\nid: 7\nretry: 100\nfoo: bar\ndata: x\n\n:another\n\n"
    assert decode_all([data]) == [(None, b"x")]


def test_blank_lines_without_data_give_no_event():
    assert decode_all([b"\n\n\n: ping\n\n\r\n"]) == []


def test_only_one_space_after_the_colon_is_dropped():
    assert decode_all([b"data:x\n\ndata:  two spaces\n\n"]) == [(None, b"x"), (None, b" two spaces")]


def test_a_data_line_without_colon_is_an_empty_data_line():
    assert decode_all([b"data\ndata: x\n\n"]) == [(None, b"\nx")]


def test_event_name_applies_to_one_event_only():
    assert decode_all([b"event: error\ndata: 1\n\ndata: 2\n\n"]) == [("error", b"1"), (None, b"2")]


def test_flush_emits_a_final_event_without_its_blank_line():
    decoder = SSEDecoder()
    assert decoder.feed(b"data: 1\n\ndata: [DONE]") == [(None, b"1")]
    assert decoder.flush() == [(None, b"[DONE]")]


def test_flush_emits_a_final_event_ended_by_one_newline():
    decoder = SSEDecoder()
    assert decoder.feed(b"data: last\n") == []
    assert decoder.flush() == [(None, b"last")]


def test_flush_after_a_complete_stream_adds_nothing():
    decoder = SSEDecoder()
    decoder.feed(b"data: 1\n\n")
    assert decoder.flush() == []


def test_iter_events_flushes_at_the_end():
    assert list(iter_events([b"data: 1\n", b"\ndata: 2"])) == [(None, b"1"), (None, b"2")]


def test_utf8_split_inside_a_character_is_reassembled():
    data = 'data: {"c":"héllo ☃"}\n\n'.encode()
    cut = data.index("☃".encode()) + 1
    assert decode_all([data[:cut], data[cut:]]) == [(None, '{"c":"héllo ☃"}'.encode())]


def test_a_line_longer_than_the_cap_raises_event_too_large():
    from gateway.providers.sse import EventTooLarge
    decoder = SSEDecoder(max_event_bytes=10_000)
    decoder.feed(b"data: ")
    with pytest.raises(EventTooLarge):
        for _ in range(20):
            decoder.feed(b"x" * 1000)


def test_an_event_of_many_lines_longer_than_the_cap_raises_event_too_large():
    from gateway.providers.sse import EventTooLarge
    decoder = SSEDecoder(max_event_bytes=10_000)
    with pytest.raises(EventTooLarge):
        for _ in range(20):
            decoder.feed(b"data: " + b"x" * 1000 + b"\n")


def test_a_long_line_in_many_small_reads_is_decoded_whole():
    decoder = SSEDecoder()
    payload = bytes(range(32, 127)) * 2000
    events = []
    for start in range(0, len(payload), 7):
        events += decoder.feed((b"data: " if start == 0 else b"") + payload[start:start + 7])
    events += decoder.feed(b"\n\n")
    assert events == [(None, payload)]
