"""HTTP/1.1 answers, parsed without I/O: the status line and headers of an upstream's answer (strictly, as a proxy
must: RFC 9112 framing, no whitespace before colons, ASCII digits only) and chunked bodies fed in any pieces."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final, Literal

__all__ = [
    "HOP_BY_HOP",
    "MAX_CHUNK_LINE_BYTES",
    "OWS",
    "ChunkedDecoder",
    "Framing",
    "ProtocolError",
    "ResponseHead",
    "parse_response_head",
]

HOP_BY_HOP: Final = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
OWS: Final = " \t"  # optional whitespace (RFC 9110 §5.6.3); str.strip() alone would also take \x85 and \xa0


class ProtocolError(Exception):
    """The upstream's answer is not valid HTTP/1.1."""


Framing = Literal["none", "length", "chunked", "close"]
_HEX: Final = re.compile(rb"[0-9A-Fa-f]{1,16}")
MAX_CHUNK_LINE_BYTES: Final = 4096  # a chunk size line or a trailer line, extensions included


@dataclass(slots=True)
class ResponseHead:
    status: int
    reason: str
    headers: list[tuple[str, str]]  # in order, repeated names kept, casing as sent
    content_length: int | None
    chunked: bool
    keep_alive: bool
    connection_tokens: frozenset[str]
    hop_by_hop: bool = True  # whether any header is hop-by-hop (else all pass as they are)

    def framing(self, method: str) -> Framing:
        """How the body ends (RFC 9112 §6.3)."""
        if method == "HEAD" or self.status in (204, 304) or self.status < 200:
            return "none"
        if self.chunked:
            return "chunked"
        if self.content_length is not None:
            return "length"
        return "close"


def parse_response_head(block: bytes) -> ResponseHead:
    """The status line and header fields of one answer: ``block`` is everything before the blank line.

    Framing is taken only when it is unambiguous (RFC 9112 §6.3), since the client's connection is framed from it:
    ``Transfer-Encoding`` must be exactly ``chunked`` on an HTTP/1.1 answer, and ``Content-Length`` one field
    with one value; anything else raises ProtocolError (the forwarder's 502). ``Content-Length`` beside
    ``Transfer-Encoding: chunked`` is removed, as an intermediary must, and the connection is not reused."""
    # Decoded once as latin-1 (one character per byte, so nothing is lost): string work from here on.
    lines = block.decode("latin-1").split("\r\n")
    minor, status, reason = _status_line(lines[0])
    headers: list[tuple[str, str]] = []
    lengths: list[str] = []
    codings: list[str] | None = None  # transfer codings in order, None without Transfer-Encoding
    tokens: set[str] = set()
    hop_by_hop = False
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        if not colon or not name or " " in name or "\t" in name:
            if line[:1] in (" ", "\t") and headers:
                # obs-fold (RFC 9112 §5.2): a proxy replaces it with a space.
                headers[-1] = (headers[-1][0], f"{headers[-1][1]} {line.strip(OWS)}")
                if headers[-1][0].lower() in _FRAMING_NAMES:
                    raise ProtocolError(f"folded {headers[-1][0]} header")
                continue
            # No whitespace before the colon (RFC 9112 §5.1): a classic request smuggling vector.
            raise ProtocolError(f"bad header line {line[:80]!r}")
        value = value.strip(OWS)
        lowered = name.lower()
        if lowered in _FRAMING_NAMES:
            if lowered == "content-length":
                lengths.append(value)
            elif lowered == "transfer-encoding":
                codings = (codings or []) + [coding.strip(OWS).lower() for coding in value.split(",")]
            else:
                tokens.update(token.strip(OWS).lower() for token in value.split(","))
        if lowered in HOP_BY_HOP:
            hop_by_hop = True
        headers.append((name, value))
    content_length: int | None = None
    keep_alive = "close" not in tokens if minor == "1" else "keep-alive" in tokens
    if codings is not None:
        if minor != "1":
            # RFC 9112 §6.1: an HTTP/1.0 message with Transfer-Encoding has faulty framing.
            raise ProtocolError("Transfer-Encoding in an HTTP/1.0 answer")
        if codings != ["chunked"]:
            # Relaying the decoded body of gzip, chunked (or anything else) would mislabel it; 502 instead.
            raise ProtocolError(f"Transfer-Encoding {', '.join(codings)[:40]!r}: only chunked is relayed")
        if lengths:
            # Both: a smuggling or splitting attempt, or a broken upstream. An intermediary must remove
            # Content-Length (RFC 9112 §6.3), and nothing after this answer on the connection can be trusted.
            headers = [(name, value) for name, value in headers if name.lower() != "content-length"]
            keep_alive = False
    elif lengths:
        content_length = _content_length(lengths)
    return ResponseHead(
        status=int(status),
        reason=reason,
        headers=headers,
        content_length=content_length,
        chunked=codings is not None,
        keep_alive=keep_alive,
        connection_tokens=frozenset(tokens),
        hop_by_hop=hop_by_hop,
    )


_FRAMING_NAMES: Final = frozenset({"content-length", "transfer-encoding", "connection"})


def _status_line(line: str) -> tuple[str, str, str]:
    """(minor version, status, reason) of ``HTTP/1.x NNN reason``."""
    if line[:7] == "HTTP/1." and line[8:9] == " " and line[9:12].isdigit() and line[12:13] in (" ", ""):
        minor, status = line[7:8], line[9:12]
        if minor in ("0", "1") and status[0] != "0" and status.isascii():
            return minor, status, line[13:]
    raise ProtocolError(f"bad status line {line[:80]!r}")


def _content_length(values: list[str]) -> int:
    """The one Content-Length: repeated fields or a list (even of equal values) are refused, since the client
    and any proxy between may resolve them differently (RFC 9112 §6.3: a proxy answers 502)."""
    if len(values) != 1:
        raise ProtocolError(f"{len(values)} Content-Length headers")
    value = values[0]
    if not (value.isdigit() and value.isascii()):
        raise ProtocolError(f"bad Content-Length {value[:40]!r}")
    return int(value)


class ChunkedDecoder:
    """Decodes a chunked body fed in arbitrary pieces; trailers are dropped (a proxy may, RFC 9110 §6.5.1)."""

    SIZE, DATA, DATA_END, TRAILER = range(4)

    def __init__(self) -> None:
        self.done = False
        self.leftover = b""  # bytes after the body: a pipelined answer nobody asked for
        self._state = self.SIZE
        self._remaining = 0
        self._pending = b""

    def feed(self, data: bytes) -> list[bytes]:
        if self._pending:
            data, self._pending = self._pending + data, b""
        pieces: list[bytes] = []
        position, end = 0, len(data)
        while position < end and not self.done:
            if self._state == self.DATA:
                take = min(self._remaining, end - position)
                pieces.append(data if take == end and position == 0 else data[position : position + take])
                position += take
                self._remaining -= take
                if not self._remaining:
                    self._state = self.DATA_END
            elif self._state == self.DATA_END:
                if end - position < 2:
                    self._pending = data[position:]
                    break
                if data[position : position + 2] != b"\r\n":
                    raise ProtocolError("chunk data not followed by CRLF")
                position += 2
                self._state = self.SIZE
            else:
                line_end = data.find(b"\r\n", position)
                # The same limit whatever pieces the line comes in: a CRLF still to come would start at end - 1.
                if (line_end if line_end >= 0 else end - 1) - position > MAX_CHUNK_LINE_BYTES:
                    raise ProtocolError("chunk size line too long")
                if line_end < 0:
                    self._pending = data[position:]
                    break
                line = data[position:line_end]
                position = line_end + 2
                if self._state == self.SIZE:
                    self._start_chunk(line)
                elif not line:
                    self.done = True
        if self.done:
            self.leftover = data[position:]
        return pieces

    def _start_chunk(self, line: bytes) -> None:
        size = line.split(b";", 1)[0].strip(b" \t")
        if _HEX.fullmatch(size) is None:
            raise ProtocolError(f"bad chunk size {line[:40]!r}")
        self._remaining = int(size, 16)
        self._state = self.DATA if self._remaining else self.TRAILER
