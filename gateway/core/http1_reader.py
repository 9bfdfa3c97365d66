"""The reading side of one HTTP/1.1 client connection, without I/O: bytes in, events out.

:class:`ResponseReader` follows one answer at a time (``begin`` before each request): interim 1xx answers, the
final head (parsed by http1.py), the body framed by Content-Length, chunked coding or the end of the connection,
and whether the connection can carry another request afterwards. The asyncio protocol (upstream.py) feeds it what
the socket delivers and acts on the events; the fuzzer (fuzz/fuzz_http1.py) feeds it anything, split anywhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from .http1 import ChunkedDecoder, Framing, ProtocolError, ResponseHead, parse_response_head

__all__ = [
    "CONTINUE",
    "END",
    "MAX_HEAD_BYTES",
    "STRAY",
    "Event",
    "Failed",
    "IncompleteAnswer",
    "NoAnswer",
    "ResponseReader",
]

MAX_HEAD_BYTES: Final = 64 * 1024  # an answer's status line and headers


class IncompleteAnswer(ProtocolError):
    """The connection ended in the middle of the answer."""


class NoAnswer(IncompleteAnswer):
    """The connection ended before the answer's first byte: the request may be sent again on another one."""


class _Marker:
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


CONTINUE: Final = _Marker("CONTINUE")  # the upstream said 100 Continue: the request's body may follow
END: Final = _Marker("END")  # the body is complete
STRAY: Final = _Marker("STRAY")  # bytes nobody asked for: the stream is out of step, the connection must go


@dataclass(frozen=True, slots=True)
class Failed:
    """The answer is broken (its head, if no ResponseHead came before; else its body); nothing follows."""

    error: ProtocolError


# A body piece (never empty), the final head, one of the markers, or Failed.
Event = bytes | ResponseHead | _Marker | Failed

_IDLE, _HEAD, _BODY, _DONE, _FAILED = range(5)


class ResponseReader:
    """The answer to one request at a time on one connection. ``reusable`` turns False, for good, as soon as
    anything leaves the stream's state unknown: no keep-alive, bytes after the body, a HEAD answer announcing a
    body (uWSGI may send it, docs/protocol.md G3), a broken answer."""

    __slots__ = ("_buffer", "_decoder", "_framing", "_method", "_phase", "_remaining", "got_bytes", "reusable")

    def __init__(self) -> None:
        self.reusable = True
        self.got_bytes = False  # some byte of the current answer arrived
        self._phase = _IDLE
        self._method = "GET"
        self._buffer = b""
        self._framing: Framing = "none"
        self._remaining = 0
        self._decoder: ChunkedDecoder | None = None

    def begin(self, method: str) -> None:
        """A request with ``method`` went out: its answer comes next."""
        self._phase = _HEAD
        self._method = method
        self._buffer = b""
        self.got_bytes = False
        self._decoder = None

    @property
    def done(self) -> bool:
        """The answer arrived whole: its body ended as framed."""
        return self._phase == _DONE

    @property
    def reading_body(self) -> bool:
        return self._phase == _BODY

    def feed(self, data: bytes) -> list[Event]:
        if self._phase == _BODY:
            return self._body(data, [])
        if self._phase == _HEAD:
            if data:
                self.got_bytes = True
                self._buffer = self._buffer + data if self._buffer else data
            return self._head()
        if self._phase == _FAILED or not data:
            return []
        self.reusable = False
        return [STRAY]

    def feed_eof(self) -> list[Event]:
        """The connection ended: the end of a body framed by it, or a failure when the answer was not over."""
        if self._phase == _HEAD:
            self._phase = _FAILED
            self.reusable = False
            if self.got_bytes:
                return [Failed(IncompleteAnswer("closed in the middle of the answer's head"))]
            return [Failed(NoAnswer("closed before the answer"))]
        if self._phase == _BODY:
            if self._framing == "close":
                return self._finish(b"", [])
            return self._fail("upstream closed the connection in the middle of the body", [])
        self.reusable = False
        return []

    # internals

    def _head(self) -> list[Event]:
        events: list[Event] = []
        while True:
            end = self._buffer.find(b"\r\n\r\n")
            # The same limit whatever pieces the head comes in: a blank line still to come would start at len - 3.
            if (end if end >= 0 else len(self._buffer) - 3) > MAX_HEAD_BYTES:
                return self._fail("answer head too large", events)
            if end < 0:
                return events
            try:
                head = parse_response_head(self._buffer[:end])
            except ProtocolError as exc:
                return self._fail(exc, events)
            rest = self._buffer[end + 4 :]
            if 100 <= head.status < 200:
                if head.status == 101:
                    return self._fail("upstream switched protocols, which the gateway never asks for", events)
                self._buffer = rest  # an interim answer (100 Continue, 103): the final one follows
                if head.status == 100:
                    events.append(CONTINUE)
                continue
            self._buffer = b""
            self._framing = head.framing(self._method)
            if not head.keep_alive or (self._method == "HEAD" and head.content_length != 0):
                # A HEAD answer that announces a body may be followed by one (uWSGI, docs/protocol.md G3).
                self.reusable = False
            self._phase = _BODY
            events.append(head)
            if self._framing == "chunked":
                self._decoder = ChunkedDecoder()
            elif self._framing == "length":
                self._remaining = head.content_length or 0
            if self._framing == "none" or (self._framing == "length" and not self._remaining):
                return self._finish(rest, events)
            return self._body(rest, events) if rest else events

    def _body(self, data: bytes, events: list[Event]) -> list[Event]:
        if self._framing == "length":
            if len(data) < self._remaining:
                self._remaining -= len(data)
                if data:
                    events.append(data)
                return events
            events.append(data[: self._remaining] if len(data) > self._remaining else data)
            return self._finish(data[self._remaining :], events)
        if self._framing == "chunked":
            assert self._decoder is not None
            try:
                pieces = self._decoder.feed(data)
            except ProtocolError as exc:
                # The pieces decoded from ``data`` before the fault are dropped: the body is lost anyway.
                return self._fail(f"malformed chunked body: {exc}", events)
            events.extend(piece for piece in pieces if piece)
            if self._decoder.done:
                return self._finish(self._decoder.leftover, events)
            return events
        if data:  # "close": everything until the end of the connection
            events.append(data)
        return events

    def _finish(self, leftover: bytes, events: list[Event]) -> list[Event]:
        self._phase = _DONE
        if leftover:
            self.reusable = False  # a pipelined answer nobody asked for
        events.append(END)
        return events

    def _fail(self, error: ProtocolError | str, events: list[Event]) -> list[Event]:
        self._phase = _FAILED
        self.reusable = False
        events.append(Failed(error if isinstance(error, ProtocolError) else ProtocolError(error)))
        return events
