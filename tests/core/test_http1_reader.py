"""The reading side of an upstream connection without sockets (gateway/core/http1_reader.py): bytes in, events out, the
same events whatever pieces the bytes arrive in."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.core.http1 import MAX_CHUNK_LINE_BYTES, ProtocolError, ResponseHead
from gateway.core.http1_reader import (
    CONTINUE,
    END,
    MAX_HEAD_BYTES,
    STRAY,
    Event,
    Failed,
    IncompleteAnswer,
    NoAnswer,
    ResponseReader,
)

LENGTH = b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\nhello world"
CHUNKED = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX-T: 1\r\n\r\n"


def read(*pieces: bytes, method: str = "GET", eof: bool = False) -> tuple[list[Event], ResponseReader]:
    reader = ResponseReader()
    reader.begin(method)
    events = [event for piece in pieces for event in reader.feed(piece)]
    if eof:
        events += reader.feed_eof()
    return events, reader


def body_of(events: list[Event]) -> bytes:
    return b"".join(event for event in events if isinstance(event, bytes))


def markers(events: list[Event]) -> list[object]:
    """The events without the body pieces, heads as their status."""
    return [
        event.status if isinstance(event, ResponseHead) else event for event in events if not isinstance(event, bytes)
    ]


def every_split(data: bytes) -> list[tuple[bytes, bytes]]:
    return [(data[:cut], data[cut:]) for cut in range(len(data) + 1)]


@pytest.mark.parametrize("answer", [LENGTH, CHUNKED], ids=["content-length", "chunked"])
def test_an_answer_split_anywhere_gives_its_head_its_body_and_its_end(answer: bytes) -> None:
    for first, second in every_split(answer):
        events, reader = read(first, second)
        assert markers(events) == [200, END], (first, second)
        assert body_of(events) == b"hello world"
        assert reader.done and reader.reusable


def test_a_byte_at_a_time_gives_the_same_answer() -> None:
    events, reader = read(*(CHUNKED[i : i + 1] for i in range(len(CHUNKED))))
    assert markers(events) == [200, END] and body_of(events) == b"hello world" and reader.reusable


def test_100_continue_is_reported_and_other_interim_answers_skipped() -> None:
    answer = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n" + LENGTH
    events, _ = read(answer)
    assert markers(events) == [CONTINUE, 200, END]
    events, _ = read(b"HTTP/1.1 100 Continue\r\n\r\n")
    assert events == [CONTINUE]


def test_switching_protocols_is_refused() -> None:
    events, reader = read(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\n\r\n")
    assert len(events) == 1 and isinstance(events[0], Failed) and "switched protocols" in str(events[0].error)
    assert not reader.reusable


def test_a_body_without_framing_lasts_until_the_connection_ends() -> None:
    events, reader = read(b"HTTP/1.1 200 OK\r\n\r\nsome", b" bytes")
    assert markers(events) == [200] and not reader.done
    events += reader.feed_eof()
    assert markers(events) == [200, END] and body_of(events) == b"some bytes"


def test_the_connection_ending_mid_body_fails_the_body_after_the_head() -> None:
    events, reader = read(LENGTH[:-3], eof=True)
    assert markers(events)[0] == 200 and isinstance(events[-1], Failed)
    assert str(events[-1].error) == "upstream closed the connection in the middle of the body"
    assert body_of(events) == b"hello wo" and not reader.done and not reader.reusable


def test_the_connection_ending_before_or_inside_the_head_says_which() -> None:
    (nothing,), _ = read(eof=True)
    assert isinstance(nothing, Failed) and isinstance(nothing.error, NoAnswer)
    (partial,), _ = read(b"HTTP/1.1 200", eof=True)
    assert isinstance(partial, Failed) and isinstance(partial.error, IncompleteAnswer)
    assert not isinstance(partial.error, NoAnswer)


def test_a_head_answer_that_announces_a_body_ends_at_once_and_leaves_the_connection_unusable() -> None:
    # uWSGI may send the body anyway (docs/protocol.md G3): what follows cannot be trusted.
    events, reader = read(b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\n", method="HEAD")
    assert markers(events) == [200, END] and reader.done and not reader.reusable
    assert reader.feed(b"hello world") == [STRAY]


def test_a_head_answer_without_a_length_keeps_the_connection() -> None:
    events, reader = read(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", method="HEAD")
    assert markers(events) == [200, END] and reader.reusable


def test_bytes_after_the_body_leave_the_connection_unusable_however_they_arrive() -> None:
    _, together = read(LENGTH + b"HTTP/1.1 200 OK\r\n")
    assert together.done and not together.reusable
    events, apart = read(LENGTH, b"HTTP/1.1 200 OK\r\n")
    assert markers(events) == [200, END, STRAY] and not apart.reusable


def test_connection_close_leaves_the_connection_unusable() -> None:
    _, reader = read(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n")
    assert reader.done and not reader.reusable


def test_a_malformed_chunk_fails_the_body_and_keeps_the_head_that_came_with_it() -> None:
    events, reader = read(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXX")
    assert markers(events)[0] == 200 and isinstance(events[-1], Failed)
    assert str(events[-1].error) == "malformed chunked body: chunk data not followed by CRLF"
    assert not reader.reusable
    assert reader.feed(b"more") == [] and reader.feed_eof() == []  # nothing follows a failure


def test_a_broken_head_fails_with_the_parsers_error() -> None:
    (failed,), reader = read(b"HTTP/1.1 200 OK\r\nBad Header: x\r\n\r\n")
    assert isinstance(failed, Failed) and type(failed.error) is ProtocolError and "bad header line" in str(failed.error)
    assert not reader.reusable


def test_bytes_before_a_request_are_stray() -> None:
    reader = ResponseReader()
    assert reader.feed(b"HTTP/1.1 200 OK\r\n") == [STRAY] and not reader.reusable


def test_a_reader_follows_one_answer_after_another() -> None:
    reader = ResponseReader()
    for _ in range(3):
        reader.begin("GET")
        events = reader.feed(CHUNKED)
        assert markers(events) == [200, END] and body_of(events) == b"hello world" and reader.reusable


# Limits hold whatever the pieces: a limit checked only while the end is missing let a long head or chunk line
# through when it arrived whole and refused it when it arrived in pieces.


def test_a_head_over_the_limit_is_refused_whether_it_arrives_whole_or_in_pieces() -> None:
    head = b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * MAX_HEAD_BYTES + b"\r\nContent-Length: 0\r\n\r\n"
    for pieces in ((head,), (head[:40000], head[40000:])):
        (failed,), _ = read(*pieces)
        assert isinstance(failed, Failed) and str(failed.error) == "answer head too large"


def test_a_head_just_under_the_limit_is_read_whether_it_arrives_whole_or_in_pieces() -> None:
    start = b"HTTP/1.1 204 No Content\r\nX-Big: "
    head = start + b"a" * (MAX_HEAD_BYTES - len(start))  # the blank line starts exactly at the limit
    for first, second in ((head + b"\r\n\r\n", b""), (head + b"\r\n\r", b"\n"), (head + b"\r", b"\n\r\n")):
        events, _ = read(first, second)
        assert markers(events) == [204, END], (first[-4:], second)


def test_a_chunk_line_over_the_limit_is_refused_whether_it_arrives_whole_or_in_pieces() -> None:
    start = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    line = b"5;" + b"e" * MAX_CHUNK_LINE_BYTES + b"\r\nhello\r\n0\r\n\r\n"
    for pieces in ((start + line,), (start, line[:4000], line[4000:])):
        events, _ = read(*pieces)
        assert isinstance(events[-1], Failed) and "chunk size line too long" in str(events[-1].error), pieces


@st.composite
def answers(draw: st.DrawFn) -> bytes:
    body = draw(st.binary(max_size=300))
    if draw(st.booleans()):
        sizes = draw(st.lists(st.integers(1, 40), max_size=10))
        chunks, position = [], 0
        for size in sizes:
            piece = body[position : position + size]
            if piece:
                chunks.append(b"%x\r\n%s\r\n" % (len(piece), piece))
            position += size
        if position < len(body):
            chunks.append(b"%x\r\n%s\r\n" % (len(body) - position, body[position:]))
        return b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + b"".join(chunks) + b"0\r\n\r\n"
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)


@given(answers(), st.lists(st.integers(0, 1000), max_size=8), st.binary(max_size=8))
def test_any_valid_answer_split_anywhere_gives_its_body_and_one_end(
    answer: bytes, cuts: list[int], after: bytes
) -> None:
    data = answer + after
    bounds = [0, *sorted(min(cut, len(data)) for cut in cuts), len(data)]
    events, reader = read(*(data[start:end] for start, end in zip(bounds, bounds[1:], strict=False)))
    assert [m for m in markers(events) if m is not STRAY] == [200, END]
    assert reader.done and reader.reusable is (not after)
    whole, _ = read(answer)
    assert body_of(events) == body_of(whole)
