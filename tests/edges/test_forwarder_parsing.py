"""The forwarder's HTTP/1.1 answer parsing, without I/O: status lines, header fields, framing, chunked bodies fed
in any pieces."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.core.http1 import ChunkedDecoder, ProtocolError, parse_response_head


def test_a_head_keeps_header_order_multiplicity_and_casing() -> None:
    block = b"HTTP/1.1 200 OK\r\nSet-Cookie: a=1\r\nx-ODD: v\r\nSet-Cookie: b=2\r\nContent-Length: 5"
    head = parse_response_head(block)
    assert (head.status, head.reason) == (200, "OK")
    assert head.headers == [("Set-Cookie", "a=1"), ("x-ODD", "v"), ("Set-Cookie", "b=2"), ("Content-Length", "5")]
    assert head.content_length == 5 and head.keep_alive and head.framing("GET") == "length"


@pytest.mark.parametrize(
    ("block", "method", "framing", "keep_alive"),
    [
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked", "GET", "chunked", True),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: Chunked", "GET", "chunked", True),
        (b"HTTP/1.1 200 OK", "GET", "close", True),
        (b"HTTP/1.0 200 OK\r\nContent-Length: 3", "GET", "length", False),
        (b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 3", "GET", "length", True),
        (b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 3", "GET", "length", False),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 300", "HEAD", "none", True),
        (b"HTTP/1.1 204 No Content", "GET", "none", True),
        (b"HTTP/1.1 304 Not Modified\r\nContent-Length: 300", "GET", "none", True),
    ],
)
def test_framing_follows_rfc_9112(block: bytes, method: str, framing: str, keep_alive: bool) -> None:
    head = parse_response_head(block)
    assert head.framing(method) == framing
    assert head.keep_alive is keep_alive


def test_an_obsolete_folded_header_line_is_joined_with_a_space() -> None:
    head = parse_response_head(b"HTTP/1.1 200 OK\r\nX-Long: one\r\n  two\r\nContent-Length: 0")
    assert head.headers[0] == ("X-Long", "one two")


def test_content_length_beside_chunked_is_removed_and_the_connection_not_reused() -> None:
    # RFC 9112 §6.3: an intermediary forwarding such an answer must remove Content-Length; forwarded, it framed
    # the client's connection differently from the de-chunked body (issue 13 point 6).
    head = parse_response_head(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\nX-A: b\r\nTransfer-Encoding: chunked")
    assert head.framing("GET") == "chunked" and head.content_length is None
    assert [name for name, _ in head.headers] == ["X-A", "Transfer-Encoding"]
    assert not head.keep_alive


@pytest.mark.parametrize(
    "block",
    [
        b"HTTP/1.1 99 Low",
        b"HTTP/2 200 OK",
        b"HTTP/1.1 200 OK\r\nNo-Colon",
        b"HTTP/1.1 200 OK\r\nBad Name: x",
        b"HTTP/1.1 200 OK\r\nContent-Length: -1",
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2",
        # Ambiguous framing (issue 13 point 6): repeated lengths, even equal, and any coding but chunked alone.
        b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\nContent-Length: 7",
        b"HTTP/1.1 200 OK\r\nContent-Length: 7, 7",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: identity\r\nContent-Length: 2",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked,",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding:",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n gzip",
        b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked",
        b"HTTP/1.1 200 OK\r\n folded-first: x",
        # Bytes that are digits or whitespace only to a Unicode-minded parser (latin-1 superscripts, NBSP, NEL):
        b"HTTP/1.1 \xb200 OK",
        b"HTTP/1.1 200 OK\r\nContent-Length: \xb2",
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\xa0",
        b"HTTP/1.1 200 OK\r\nContent-Length: 5, 5\x85",
    ],
)
def test_malformed_heads_are_refused(block: bytes) -> None:
    with pytest.raises(ProtocolError):
        parse_response_head(block)


CHUNKED = b"5\r\nhello\r\n1;ext=1\r\n \r\nA\r\n0123456789\r\n0\r\nX-Trailer: dropped\r\n\r\n"


@given(st.lists(st.integers(min_value=0, max_value=len(CHUNKED)), max_size=8))
def test_a_chunked_body_decodes_the_same_whatever_the_pieces(cuts: list[int]) -> None:
    decoder = ChunkedDecoder()
    bounds = [0, *sorted(cuts), len(CHUNKED)]
    pieces = [
        piece for start, end in zip(bounds, bounds[1:], strict=False) for piece in decoder.feed(CHUNKED[start:end])
    ]
    assert b"".join(pieces) == b"hello 0123456789"
    assert decoder.done and decoder.leftover == b""


def test_bytes_after_the_last_chunk_are_kept_as_leftover() -> None:
    decoder = ChunkedDecoder()
    assert decoder.feed(b"2\r\nok\r\n0\r\n\r\nHTTP/1.1 200") == [b"ok"]
    assert decoder.done and decoder.leftover == b"HTTP/1.1 200"


@pytest.mark.parametrize("body", [b"zz\r\n", b"5\r\nhelloXX", b"-1\r\n", b"1_0\r\n"])
def test_malformed_chunks_are_refused(body: bytes) -> None:
    with pytest.raises(ProtocolError):
        ChunkedDecoder().feed(body)
