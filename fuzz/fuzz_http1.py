"""Fuzz target: the parser of the registry's answers (gateway/core/http1.py), the bytes the gateway frames before
streaming them to a client.

Run: ``python -m fuzz.fuzz_http1 [libFuzzer flags] [corpus dir]`` from the repository root (see fuzz/run.py).

A head either parses into a consistent ResponseHead with unambiguous framing or raises ProtocolError; a chunked
body decodes to the same bytes whatever pieces it arrives in, or raises ProtocolError. Any other exception, or an
inconsistency, is a crash.
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports():
    from gateway.core.http1 import ChunkedDecoder, ProtocolError, parse_response_head

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


SHAPES = (head, chunked)


def test_one_input(data: bytes) -> None:
    provider = atheris.FuzzedDataProvider(data)
    SHAPES[provider.ConsumeIntInRange(0, len(SHAPES) - 1)](provider)


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
