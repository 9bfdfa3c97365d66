"""Fuzz target: the parser of the registry's answers (gateway/core/http1.py) and the reader that frames them on a
connection (gateway/core/http1_reader.py), the bytes the gateway frames before streaming them to a client.

Run: ``python -m fuzz.fuzz_http1 [libFuzzer flags] [corpus dir]`` from the repository root (see fuzz/run.py).

A head either parses into a consistent ResponseHead with unambiguous framing or raises ProtocolError; a chunked
body decodes to the same bytes whatever pieces it arrives in, or raises ProtocolError. The reader, fed any bytes
split anywhere, gives its events in a valid order (interim answers, one head, body pieces, then its end or one
failure), never more body than the head framed, failures only as its own ProtocolError, and the same answer
whatever the split. Any other exception, or an inconsistency, is a crash.
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports():
    from gateway.core.http1 import ChunkedDecoder, ProtocolError, ResponseHead, parse_response_head
    from gateway.core.http1_reader import CONTINUE, END, STRAY, Event, Failed, ResponseReader

SEED_HEAD = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: keep-alive\r\nX-A: b"


def head(provider: atheris.FuzzedDataProvider) -> None:
    block = provider.ConsumeBytes(provider.ConsumeIntInRange(0, 4096))
    if provider.ConsumeBool():
        block = SEED_HEAD + block  # a valid start, so the fuzzer spends its time in the header lines
    try:
        parsed = parse_response_head(block)
    except ProtocolError:
        return
    assert 100 <= parsed.status <= 999
    assert parsed.content_length is None or parsed.content_length >= 0
    assert not (parsed.chunked and parsed.content_length is not None)
    # Framing the client's connection can rely on (issue 13 point 6): one Content-Length at most, none beside
    # chunked, and no transfer coding but chunked alone.
    names = [name.lower() for name, _ in parsed.headers]
    assert names.count("content-length") == (parsed.content_length is not None)
    codings = [value.strip(" \t").lower() for name, value in parsed.headers if name.lower() == "transfer-encoding"]
    assert codings == (["chunked"] if parsed.chunked else []), codings


def decode(data: bytes, cuts: list[int]) -> tuple[bytes, bool, bytes] | None:
    decoder = ChunkedDecoder()
    out = bytearray()
    bounds = [0, *sorted(cuts), len(data)]
    try:
        for start, end in zip(bounds, bounds[1:], strict=False):
            for piece in decoder.feed(data[start:end]):
                out += piece
            if decoder.done:
                break
    except ProtocolError:
        return None
    return bytes(out), decoder.done, decoder.leftover


def chunked(provider: atheris.FuzzedDataProvider) -> None:
    data = provider.ConsumeBytes(provider.ConsumeIntInRange(0, 4096))
    cuts = [provider.ConsumeIntInRange(0, len(data)) for _ in range(provider.ConsumeIntInRange(0, 6))]
    whole = decode(data, [])
    pieces = decode(data, cuts)
    # The same bytes decode the same way, or fail, whatever pieces they came in (what follows the body differs:
    # nothing is fed once it is done).
    assert (whole is None) == (pieces is None), (data, cuts)
    if whole is not None and pieces is not None:
        assert whole[:2] == pieces[:2], (data, cuts)


# Valid starts of an answer, so the fuzzer spends its time in bodies and in what follows them.
SEED_ANSWERS = (
    b"",
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n",
    b"HTTP/1.0 200 OK\r\n\r\n",
)
METHODS = ("GET", "HEAD", "POST")

# What one reading of an answer came to: interim 100s, the head, the body, ended, the failure, reusable.
Outcome = tuple[int, ResponseHead | None, bytes, bool, tuple[str, str] | None, bool]


def read(data: bytes, cuts: list[int], method: str, eof: bool) -> Outcome:
    reader = ResponseReader()
    reader.begin(method)
    events: list[Event] = []
    bounds = [0, *sorted(cuts), len(data)]
    for start, end in zip(bounds, bounds[1:], strict=False):
        events += reader.feed(data[start:end])
    if eof:
        events += reader.feed_eof()
    return check_order(events, reader, method)


def check_order(events: list[Event], reader: ResponseReader, method: str) -> Outcome:
    continues, head, body, ended, failure = 0, None, bytearray(), False, None
    for event in events:
        assert failure is None, f"{event!r} after a failure"
        if isinstance(event, bytes):
            assert event and head is not None and not ended, "a body piece out of place"
            body += event
        elif isinstance(event, ResponseHead):
            assert head is None, "two heads"
            assert event.status >= 200, event.status
            head = event
        elif event is CONTINUE:
            assert head is None, "100 Continue after the head"
            continues += 1
        elif event is END:
            assert head is not None and not ended, "an end out of place"
            ended = True
        elif event is STRAY:
            assert ended, "stray bytes before the answer ended"
        else:
            assert isinstance(event, Failed) and type(event.error).__module__.startswith("gateway.core.http1"), event
            assert not ended, "a failure after the end"
            failure = (type(event.error).__name__, str(event.error))
    if head is not None:
        framing = head.framing(method)
        if framing == "none":
            assert not body, "a body where the head framed none"
        if framing == "length":
            assert head.content_length is not None and len(body) <= head.content_length, "more body than framed"
            assert not ended or len(body) == head.content_length, "an end before the framed length"
        if not head.keep_alive:
            assert not reader.reusable
    assert ended == reader.done
    assert failure is None or not reader.reusable
    return continues, head, bytes(body), ended, failure, reader.reusable


def reader(provider: atheris.FuzzedDataProvider) -> None:
    method = METHODS[provider.ConsumeIntInRange(0, len(METHODS) - 1)]
    eof = provider.ConsumeBool()
    start = SEED_ANSWERS[provider.ConsumeIntInRange(0, len(SEED_ANSWERS) - 1)]
    data = start + provider.ConsumeBytes(provider.ConsumeIntInRange(0, 4096))
    cuts = [provider.ConsumeIntInRange(0, len(data)) for _ in range(provider.ConsumeIntInRange(0, 8))]
    whole = read(data, [], method, eof)
    pieces = read(data, cuts, method, eof)
    # The same answer whatever pieces it came in. Only a failure may come after more or less of the body: the
    # pieces decoded in the same feed as a malformed chunk are dropped.
    assert whole[:2] == pieces[:2] and whole[3:] == pieces[3:], (data, cuts, whole, pieces)
    if whole[4] is None:
        assert whole[2] == pieces[2], (data, cuts)
    else:
        assert whole[2].startswith(pieces[2]) or pieces[2].startswith(whole[2]), (data, cuts)


SHAPES = (head, chunked, reader)


def test_one_input(data: bytes) -> None:
    provider = atheris.FuzzedDataProvider(data)
    SHAPES[provider.ConsumeIntInRange(0, len(SHAPES) - 1)](provider)


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
