"""Streaming pass-through to the registry.

The real sregistry punishes small liberties (PROTOCOL.md §9b), so requests go upstream as sent: the raw path and
query, end-to-end headers in order, multiplicity and casing, the client's Content-Length (a sized body never turns
chunked: G2), no Content-Type the client did not send (G1), bodies streamed both ways with backpressure.

The upstream side is a small HTTP/1.1 client of its own (aiohttp's client costs several times the rest of a
forwarded request): a pool of keep-alive connections, each an asyncio protocol that parses the answer's head and
frames its body (Content-Length, chunked, or until close). Three parts, top to bottom: the pure HTTP/1.1 answer
parsing, the connections and their pool, and the :class:`Forwarder` that joins a client's request to them.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import re
import ssl
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import lru_cache
from typing import Final, Literal, cast

from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from .config import Config
from .errors import UpstreamTimeout, UpstreamUnavailable
from .logs import REQUEST_ID

__all__ = [
    "HOP_BY_HOP",
    "SKIP_AUTO_HEADERS",
    "ChunkedDecoder",
    "ForwardingPolicy",
    "Forwarder",
    "ProtocolError",
    "ResponseHead",
    "UpstreamPool",
    "UpstreamReply",
    "parse_response_head",
]

log = logging.getLogger("gateway.proxy")

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
_HOP_BY_HOP_BYTES: Final = frozenset(name.encode() for name in HOP_BY_HOP)
_FORWARDING_BYTES: Final = frozenset({b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host", b"forwarded"})
# aiohttp's client would add these when absent; the upstream must see only what the client sent (registry.py).
SKIP_AUTO_HEADERS: Final = frozenset({"Accept", "Accept-Encoding", "User-Agent", "Content-Type"})

SMALL_BODY_BYTES: Final = 64 * 1024  # request bodies up to this are read whole: one write, and replayable
MAX_HEAD_BYTES: Final = 64 * 1024  # an answer's status line and headers
QUEUE_HIGH_BYTES: Final = 1024 * 1024  # answer bytes queued before the upstream connection stops reading
QUEUE_LOW_BYTES: Final = 256 * 1024
MAX_FETCH_BYTES: Final = 1024 * 1024  # answers the gateway reads whole to edit (image metadata)
CONTINUE_WAIT_S: Final = 1.0  # for the upstream's 100 Continue before telling the client to go on (as curl waits)


# -- HTTP/1.1 answers, parsed without I/O ---------------------------------------------------------------------


class ProtocolError(Exception):
    """The upstream's answer is not valid HTTP/1.1."""


Framing = Literal["none", "length", "chunked", "close"]
_HEX: Final = re.compile(rb"[0-9A-Fa-f]{1,16}")


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
    """The status line and header fields of one answer: ``block`` is everything before the blank line."""
    # Decoded once as latin-1 (one character per byte, so nothing is lost): string work from here on.
    lines = block.decode("latin-1").split("\r\n")
    minor, status, reason = _status_line(lines[0])
    headers: list[tuple[str, str]] = []
    content_length: int | None = None
    chunked = False
    transfer_coded = False
    tokens: set[str] = set()
    hop_by_hop = False
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        if not colon or not name or " " in name or "\t" in name:
            if line[:1] in (" ", "\t") and headers:
                # obs-fold (RFC 9112 §5.2): a proxy replaces it with a space.
                headers[-1] = (headers[-1][0], f"{headers[-1][1]} {line.strip(_OWS)}")
                continue
            # No whitespace before the colon (RFC 9112 §5.1): a classic request smuggling vector.
            raise ProtocolError(f"bad header line {line[:80]!r}")
        value = value.strip(_OWS)
        lowered = name.lower()
        if lowered in _FRAMING_NAMES:
            if lowered == "content-length":
                content_length = _content_length(value, content_length)
            elif lowered == "transfer-encoding":
                transfer_coded = True
                chunked = value.rsplit(",", 1)[-1].strip(_OWS).lower() == "chunked"
            else:
                tokens.update(token.strip(_OWS).lower() for token in value.split(","))
        if lowered in HOP_BY_HOP:
            hop_by_hop = True
        headers.append((name, value))
    if transfer_coded:
        content_length = None  # Transfer-Encoding overrides Content-Length (RFC 9112 §6.3)
    keep_alive = "close" not in tokens if minor == "1" else "keep-alive" in tokens
    return ResponseHead(
        status=int(status),
        reason=reason,
        headers=headers,
        content_length=content_length,
        chunked=chunked,
        keep_alive=keep_alive and (not transfer_coded or chunked),
        connection_tokens=frozenset(tokens),
        hop_by_hop=hop_by_hop,
    )


_FRAMING_NAMES: Final = frozenset({"content-length", "transfer-encoding", "connection"})
_OWS: Final = " \t"  # optional whitespace (RFC 9110 §5.6.3); str.strip() alone would also take \x85 and \xa0


def _status_line(line: str) -> tuple[str, str, str]:
    """(minor version, status, reason) of ``HTTP/1.x NNN reason``."""
    if line[:7] == "HTTP/1." and line[8:9] == " " and line[9:12].isdigit() and line[12:13] in (" ", ""):
        minor, status = line[7:8], line[9:12]
        if minor in ("0", "1") and status[0] != "0" and status.isascii():
            return minor, status, line[13:]
    raise ProtocolError(f"bad status line {line[:80]!r}")


def _content_length(value: str, earlier: int | None) -> int:
    if earlier is None and value.isdigit() and value.isascii():
        return int(value)
    values = {item.strip(_OWS) for item in value.split(",")}
    if len(values) != 1 or not all(item.isdigit() and item.isascii() for item in values):
        raise ProtocolError(f"bad Content-Length {value[:40]!r}")
    length = int(values.pop())
    if earlier is not None and earlier != length:
        raise ProtocolError("conflicting Content-Length headers")
    return length


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
                if line_end < 0:
                    if end - position > 4096:
                        raise ProtocolError("chunk size line too long")
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


# -- connections to the upstream and their pool ---------------------------------------------------------------


class UpstreamClosed(Exception):
    """The upstream closed or reset the connection before the first byte of its answer."""


class UpstreamBodyError(Exception):
    """The answer's body ended early or was malformed: the client must see a failure, not a short body."""


_IDLE, _HEAD, _BODY, _DONE = range(4)


def _expire(waiter: asyncio.Future[None], what: str) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError(what))


def _settle(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


class UpstreamConnection(asyncio.Protocol):
    """One keep-alive connection: writes a request, parses one answer at a time, queues its body with
    backpressure (reading pauses while the client is slower than the upstream)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.reusable = True  # cleared by anything that leaves the stream's state unknown
        self.idle_since = 0.0
        self.head: ResponseHead | None = None
        self._state = _IDLE
        self._method = "GET"
        self._buffer = b""
        self._got_bytes = False
        self._head_waiter: asyncio.Future[None] | None = None
        self._continued = False  # the upstream said 100 Continue to this request
        self._head_error: BaseException | None = None
        self._body: deque[bytes] = deque()
        self._queued = 0
        self._body_waiter: asyncio.Future[None] | None = None
        self._body_error: BaseException | None = None
        self._body_done = False
        self._remaining = 0
        self._framing: Framing = "none"
        self._decoder: ChunkedDecoder | None = None
        self._reading_paused = False
        self._write_paused = False
        self._drain_waiter: asyncio.Future[None] | None = None

    # asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it, and call this only after
        # create_connection returned (which sets the transport first).
        self.transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.reusable = False
        if self._state == _HEAD and self.head is None and self._head_error is None:
            self._head_error = (
                UpstreamProtocolGone("closed in the middle of the answer's head")
                if self._got_bytes
                else UpstreamClosed(f"connection closed before the answer ({exc.__class__.__name__ if exc else 'EOF'})")
            )
            self._wake_head()
        elif self._state == _BODY and self._body_error is None:
            if self._framing == "close":
                self._finish_body(b"")
            else:
                self._body_error = UpstreamBodyError("upstream closed the connection in the middle of the body")
                self._wake_body()
        if self._drain_waiter is not None and not self._drain_waiter.done():
            self._drain_waiter.set_exception(UpstreamClosed("connection closed while sending the request"))

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        if self._drain_waiter is not None and not self._drain_waiter.done():
            self._drain_waiter.set_result(None)

    def data_received(self, data: bytes) -> None:
        if self._state == _BODY:
            self._feed_body(data)
        elif self._state == _HEAD:
            self._got_bytes = True
            self._buffer = self._buffer + data if self._buffer else data
            self._parse_head()
        else:
            # Bytes nobody asked for, e.g. the body of a HEAD answer (sregistry under uWSGI, G3): the stream is out
            # of step and this connection must never carry another request.
            self.reusable = False
            self.abort()

    def eof_received(self) -> bool | None:
        return False  # let the transport close; connection_lost reports it

    # the exchange, for the forwarder

    def begin(self, method: str) -> None:
        self._state = _HEAD
        self._method = method
        self._buffer = b""
        self._got_bytes = False
        self.head = None
        self._head_error = None
        self._continued = False
        self._body.clear()
        self._queued = 0
        self._body_error = None
        self._body_done = False
        self._decoder = None

    def begin_idle(self) -> None:
        self._state = _IDLE
        if self._reading_paused and self.transport is not None:
            self._reading_paused = False
            self.transport.resume_reading()

    def write(self, data: bytes) -> None:
        if self.closed or self.transport is None:
            raise UpstreamClosed("connection closed while sending the request")
        self.transport.write(data)

    def writelines(self, data: Iterable[bytes]) -> None:
        if self.closed or self.transport is None:
            raise UpstreamClosed("connection closed while sending the request")
        self.transport.writelines(data)

    async def drain(self, timeout_s: float) -> None:
        if self.closed:
            raise UpstreamClosed("connection closed while sending the request")
        if not self._write_paused:
            return
        waiter = self._drain_waiter = self.loop.create_future()
        timer = self.loop.call_later(timeout_s, _expire, waiter, "upstream stopped reading the request body")
        try:
            await waiter
        finally:
            timer.cancel()
            self._drain_waiter = None

    async def read_head(self, timeout_s: float) -> ResponseHead:
        deadline = self.loop.time() + timeout_s
        while self.head is None and self._head_error is None:  # an interim 100 Continue wakes it early
            waiter = self._head_waiter = self.loop.create_future()
            timer = self.loop.call_at(deadline, _expire, waiter, "no answer from the upstream in time")
            try:
                await waiter
            finally:
                timer.cancel()
                self._head_waiter = None
        if self._head_error is not None:
            raise self._head_error
        assert self.head is not None
        return self.head

    async def wait_for_continue(self, timeout_s: float) -> bool:
        """Whether the upstream said 100 Continue (or answered already) within ``timeout_s``."""
        if not (self._continued or self.answering()):
            waiter = self._head_waiter = self.loop.create_future()
            timer = self.loop.call_later(timeout_s, _settle, waiter)
            try:
                await waiter
            finally:
                timer.cancel()
                self._head_waiter = None
        return self._continued or self.answering()

    def complete_body(self) -> bytes | None:
        """The whole body when it has arrived already (small answers), else None."""
        if not self._body_done or self._body_error is not None:
            return None
        body = b"".join(self._body) if len(self._body) != 1 else self._body[0]
        self._body.clear()
        self._queued = 0
        return body

    async def read_body(self, idle_timeout_s: float) -> bytes:
        """The next piece of the body, b"" at its end; raises UpstreamBodyError or TimeoutError."""
        while True:
            if self._body:
                piece = self._body.popleft()
                self._queued -= len(piece)
                if self._reading_paused and self._queued <= QUEUE_LOW_BYTES and self.transport is not None:
                    self._reading_paused = False
                    self.transport.resume_reading()
                return piece
            if self._body_error is not None:
                raise self._body_error
            if self._body_done:
                return b""
            waiter = self._body_waiter = self.loop.create_future()
            timer = self.loop.call_later(idle_timeout_s, _expire, waiter, "upstream went silent mid-body")
            try:
                await waiter
            finally:
                timer.cancel()
                self._body_waiter = None

    @property
    def answer_complete(self) -> bool:
        return self._state == _DONE

    def answering(self) -> bool:
        """The head of an answer arrived (perhaps before the request body was all sent)."""
        return self.head is not None or self._head_error is not None

    def abort(self) -> None:
        self.reusable = False
        if self.transport is not None:
            self.transport.abort()

    # internals

    def _parse_head(self) -> None:
        while True:
            end = self._buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self._buffer) > MAX_HEAD_BYTES:
                    self._fail_head(ProtocolError("answer head too large"))
                return
            try:
                head = parse_response_head(self._buffer[:end])
            except ProtocolError as exc:
                self._fail_head(exc)
                return
            rest = self._buffer[end + 4 :]
            if 100 <= head.status < 200:
                if head.status == 101:
                    self._fail_head(ProtocolError("upstream switched protocols, which the gateway never asks for"))
                    return
                self._buffer = rest  # an interim answer (100 Continue, 103): the final one follows
                if head.status == 100:
                    self._continued = True
                    self._wake_head()
                continue
            self._buffer = b""
            self.head = head
            self._framing = head.framing(self._method)
            if not head.keep_alive or (self._method == "HEAD" and head.content_length != 0):
                # A HEAD answer that announces a body may be followed by one (sregistry under uWSGI, G3).
                self.reusable = False
            self._state = _BODY
            if self._framing == "chunked":
                self._decoder = ChunkedDecoder()
            elif self._framing == "length":
                self._remaining = head.content_length or 0
            if self._framing == "none" or (self._framing == "length" and not self._remaining):
                self._finish_body(rest)
            elif rest:
                self._feed_body(rest)
            self._wake_head()
            return

    def _fail_head(self, exc: BaseException) -> None:
        self._head_error = exc
        self.abort()
        self._wake_head()

    def _wake_head(self) -> None:
        if self._head_waiter is not None and not self._head_waiter.done():
            self._head_waiter.set_result(None)

    def _feed_body(self, data: bytes) -> None:
        if self._framing == "length":
            if len(data) < self._remaining:
                self._remaining -= len(data)
                self._queue(data)
            else:
                self._queue(data[: self._remaining] if len(data) > self._remaining else data)
                self._finish_body(data[self._remaining :])
        elif self._framing == "chunked":
            assert self._decoder is not None
            try:
                pieces = self._decoder.feed(data)
            except ProtocolError as exc:
                self._body_error = UpstreamBodyError(f"malformed chunked body: {exc}")
                self.abort()
                self._wake_body()
                return
            for piece in pieces:
                self._queue(piece)
            if self._decoder.done:
                self._finish_body(self._decoder.leftover)
        elif self._framing == "close":
            self._queue(data)
        else:
            self.reusable = False
            self.abort()

    def _queue(self, piece: bytes) -> None:
        if not piece:
            return
        self._body.append(piece)
        self._queued += len(piece)
        self._wake_body()
        if not self._reading_paused and self._queued > QUEUE_HIGH_BYTES and self.transport is not None:
            self._reading_paused = True
            self.transport.pause_reading()

    def _finish_body(self, leftover: bytes) -> None:
        self._state = _DONE
        self._body_done = True
        if leftover:
            self.reusable = False
        self._wake_body()

    def _wake_body(self) -> None:
        if self._body_waiter is not None and not self._body_waiter.done():
            self._body_waiter.set_result(None)


class UpstreamProtocolGone(UpstreamBodyError):
    """The connection closed after part of the answer's head: not safely retryable."""


class UpstreamPool:
    """Keep-alive connections to one upstream origin: at most ``limit`` open at once (requests beyond wait), idle
    ones reused newest first and closed after ``keepalive_s``."""

    def __init__(
        self,
        origin: URL,
        *,
        limit: int,
        connect_timeout_s: float,
        keepalive_s: float,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.host = origin.raw_host or "127.0.0.1"
        self.port = origin.port or (443 if origin.scheme == "https" else 80)
        self.limit = limit
        self.connect_timeout_s = connect_timeout_s
        self.keepalive_s = keepalive_s
        self.ssl_context = (
            ssl_context
            if ssl_context is not None
            else (ssl.create_default_context() if origin.scheme == "https" else None)
        )
        self._idle: list[UpstreamConnection] = []
        self._open: set[UpstreamConnection] = set()
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._last_sweep = 0.0
        self._closing = False

    def idle_connection(self) -> UpstreamConnection | None:
        """A pooled connection ready now, without waiting (the common case), or None."""
        if not self._idle or self._closing:
            return None
        now = self._idle[-1].loop.time()
        while self._idle:
            conn = self._idle.pop()
            if not conn.closed and now - conn.idle_since <= self.keepalive_s:
                return conn
            self._discard(conn)
        return None

    async def acquire(self, *, fresh: bool = False) -> tuple[UpstreamConnection, bool]:
        """A connection ready for a request, and whether it was reused (it may have died meanwhile)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.connect_timeout_s
        while True:
            if self._closing:
                raise UpstreamUnavailable("gateway is shutting down")
            now = loop.time()
            while self._idle and not fresh:
                conn = self._idle.pop()
                if conn.closed or now - conn.idle_since > self.keepalive_s:
                    self._discard(conn)
                    continue
                return conn, True
            if fresh and self._idle and len(self._open) >= self.limit:
                self._discard(self._idle.pop(0))  # make room: the oldest idle one goes
            if len(self._open) < self.limit:
                return await self._connect(loop, deadline), False
            waiter = loop.create_future()
            self._waiters.append(waiter)
            timer = loop.call_later(max(0.0, deadline - now), _expire, waiter, "no free upstream connection")
            try:
                await waiter
            finally:
                timer.cancel()
                if not waiter.done():
                    waiter.cancel()
                try:
                    self._waiters.remove(waiter)
                except ValueError:
                    pass

    def release(self, conn: UpstreamConnection) -> None:
        loop_time = conn.loop.time()
        if conn.reusable and not conn.closed and conn.answer_complete and not self._closing:
            conn.idle_since = loop_time
            conn.begin_idle()
            self._idle.append(conn)
        else:
            self._discard(conn)
        if loop_time - self._last_sweep > self.keepalive_s:
            self._sweep(loop_time)
        self._wake_one()

    async def close(self) -> None:
        self._closing = True
        for conn in list(self._open):
            conn.abort()
        self._idle.clear()
        self._open.clear()
        await asyncio.sleep(0)  # let the transports report connection_lost

    async def _connect(self, loop: asyncio.AbstractEventLoop, deadline: float) -> UpstreamConnection:
        conn = UpstreamConnection(loop)
        self._open.add(conn)
        try:
            async with asyncio.timeout_at(deadline):
                transport, _ = await loop.create_connection(
                    lambda: conn,
                    self.host,
                    self.port,
                    ssl=self.ssl_context,
                    server_hostname=self.host if self.ssl_context is not None else None,
                )
        except BaseException:
            self._open.discard(conn)
            conn.abort()
            self._wake_one()
            raise
        conn.transport = transport
        return conn

    def _discard(self, conn: UpstreamConnection) -> None:
        conn.abort()
        self._open.discard(conn)

    def _sweep(self, now: float) -> None:
        self._last_sweep = now
        keep = []
        for conn in self._idle:
            if conn.closed or now - conn.idle_since > self.keepalive_s:
                self._discard(conn)
            else:
                keep.append(conn)
        self._idle = keep

    def _wake_one(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return


# -- the forwarder ------------------------------------------------------------------------------------------


class ForwardingPolicy:
    """Which Host the upstream sees, and whose X-Forwarded-*/Forwarded headers are believed."""

    def __init__(
        self,
        upstream_authority: bytes,
        *,
        forward_host: Literal["upstream", "client"] = "upstream",
        trusted_proxies: Iterable[str] = (),
    ) -> None:
        self.upstream_authority = upstream_authority
        self.forward_host = forward_host
        self.networks = tuple(ipaddress.ip_network(proxy, strict=False) for proxy in trusted_proxies)
        # Peers are few (the nginx in front): remember each answer instead of parsing the address every time.
        self._trusted_peer = lru_cache(maxsize=4096)(self._in_trusted_network)

    def trusts(self, peer: str) -> bool:
        return bool(self.networks) and self._trusted_peer(peer)

    def _in_trusted_network(self, peer: str) -> bool:
        try:
            address = ipaddress.ip_address(peer)
        except ValueError:
            return False
        return any(address in network for network in self.networks)


@dataclass(frozen=True, slots=True)
class UpstreamReply:
    """An answer read whole (for the few the gateway edits)."""

    status: int
    reason: str
    headers: CIMultiDict[str]
    body: bytes


_NO_TOKENS: Final = frozenset[bytes]()
# Written by the gateway itself: Host as configured, X-Request-Id as logged.
_REPLACED_BYTES: Final = frozenset({b"host", b"x-request-id"})


def _connection_tokens(values: Iterable[str]) -> frozenset[bytes]:
    return frozenset(token.strip(_OWS).lower().encode("latin-1") for value in values for token in value.split(","))


def _forwarded_node(value: str) -> str:
    if ":" in value:  # IPv6 (RFC 7239 §6: bracketed and quoted)
        return f'"[{value}]"'
    return value or "unknown"


def expects_continue(request: web.BaseRequest) -> bool:
    """An HTTP/1.1 client that waits for 100 Continue before sending its body (RFC 9110 §10.1.1)."""
    return request.version >= (1, 1) and request.headers.get("Expect", "").strip().lower() == "100-continue"


_CONTINUED: Final = web.RequestKey("gateway.continued", bool)  # 100 Continue was sent


async def send_continue(request: web.BaseRequest) -> None:
    try:
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    except ConnectionError as exc:
        raise ClientGone(f"{exc.__class__.__name__}: {exc}") from exc
    request.writer.output_size = 0  # not part of the answer's size
    request[_CONTINUED] = True


def close_if_body_unread(request: web.BaseRequest, response: web.StreamResponse) -> None:
    """A client that waits for 100 Continue and gets a final answer instead will not send its body: close the
    connection after the answer rather than wait for it (RFC 9110 §10.1.1). Other unread bodies are read and
    dropped by aiohttp's lingering close, so their clients see the answer rather than a reset."""
    if expects_continue(request) and _CONTINUED not in request and not request.content.is_eof():
        response.force_close()


class ClientGone(Exception):
    """The client went away mid-request."""


class Forwarder:
    """Sends a request to the upstream and streams the answer back to the client."""

    def __init__(
        self,
        pool: UpstreamPool,
        policy: ForwardingPolicy,
        *,
        first_byte_timeout_s: float,
        idle_timeout_s: float,
        rewrite_location: Callable[[str], str | None] | None = None,
    ) -> None:
        self.pool = pool
        self.policy = policy
        self.first_byte_timeout_s = first_byte_timeout_s
        self.idle_timeout_s = idle_timeout_s
        self.rewrite_location = rewrite_location

    @classmethod
    def from_config(cls, config: Config, *, rewrite_location: Callable[[str], str | None] | None = None) -> Forwarder:
        upstream = URL(config.upstream.url)
        pool = UpstreamPool(
            upstream.origin(),
            limit=config.upstream.pool_size,
            connect_timeout_s=config.upstream.connect_timeout_seconds,
            keepalive_s=config.upstream.keepalive_seconds,
        )
        policy = ForwardingPolicy(
            upstream.raw_authority.encode("ascii"),
            forward_host=config.upstream.forward_host,
            trusted_proxies=tuple(config.server.trusted_proxies),
        )
        return cls(
            pool,
            policy,
            first_byte_timeout_s=config.upstream.first_byte_timeout_seconds,
            idle_timeout_s=config.upstream.read_timeout_seconds,
            rewrite_location=rewrite_location,
        )

    async def close(self) -> None:
        await self.pool.close()

    # the request's head

    def request_head(
        self,
        request: web.BaseRequest,
        *,
        method: str | None = None,
        raw_path: str | None = None,
        chunked: bool,
        with_body: bool = True,
    ) -> bytes:
        """Request line and headers for the upstream: the client's end-to-end headers as they came, Host as
        configured, and forwarding headers that trust earlier hops only when the peer is a trusted proxy."""
        peer = request.remote or ""
        trusted = self.policy.trusts(peer)
        headers = request.headers
        named = _connection_tokens(headers.getall("Connection", ())) if "Connection" in headers else _NO_TOKENS
        client_host = headers.get("Host", "").encode("latin-1")
        host = client_host if self.policy.forward_host == "client" and client_host else self.policy.upstream_authority
        target = (raw_path if raw_path is not None else request.raw_path).encode("utf-8", "surrogateescape")
        out = [(method or request.method).encode("ascii"), b" ", target, b" HTTP/1.1\r\nHost: ", host, b"\r\n"]
        prior: dict[bytes, list[bytes]] = {}
        for name, value in request.raw_headers:
            lowered = name.lower()
            if lowered in _HOP_BY_HOP_BYTES or lowered in _REPLACED_BYTES or lowered in named:
                continue
            if not with_body and lowered == b"content-length":
                continue
            if lowered in _FORWARDING_BYTES:
                if trusted:
                    prior.setdefault(lowered, []).append(value)
                continue
            out += (name, b": ", value, b"\r\n")
        if request_id := REQUEST_ID.get():
            # The id this request is logged under (the client's when it was sane), so logs can be matched.
            out += (b"X-Request-Id: ", request_id.encode("ascii", "replace"), b"\r\n")
        if chunked:
            out.append(b"Transfer-Encoding: chunked\r\n")
        out.append(self._forwarding_headers(request, peer, client_host, prior))
        out.append(b"\r\n")
        return b"".join(out)

    def _forwarding_headers(
        self, request: web.BaseRequest, peer: str, client_host: bytes, prior: dict[bytes, list[bytes]]
    ) -> bytes:
        peer_bytes = peer.encode("ascii", "replace")
        earlier_for = prior.get(b"x-forwarded-for")
        chain = b", ".join([*earlier_for, peer_bytes]) if earlier_for else peer_bytes
        proto = prior.get(b"x-forwarded-proto", [request.scheme.encode("ascii")])[0]
        forwarded_host = prior.get(b"x-forwarded-host", [client_host])[0]
        element = b'for=%s;host="%s";proto=%s' % (
            _forwarded_node(peer).encode("ascii", "replace"),
            client_host.replace(b'"', b""),
            request.scheme.encode("ascii"),
        )
        earlier_forwarded = prior.get(b"forwarded")
        forwarded = b", ".join([*earlier_forwarded, element]) if earlier_forwarded else element
        return b"X-Forwarded-For: %s\r\nX-Forwarded-Proto: %s\r\nX-Forwarded-Host: %s\r\nForwarded: %s\r\n" % (
            chain,
            proto,
            forwarded_host,
            forwarded,
        )

    # forwarding

    async def forward(self, request: web.BaseRequest, *, redirect_status: int | None = None) -> web.StreamResponse:
        """Forward ``request`` and stream the answer back; ``redirect_status`` replaces a redirect's status."""
        chunked = "chunked" in request.headers.get("Transfer-Encoding", "").lower()
        expect_continue = request.body_exists and expects_continue(request)
        streamed = chunked or expect_continue or (request.content_length or 0) > SMALL_BODY_BYTES
        body = b""
        if request.body_exists and not streamed:
            try:
                body = await request.content.readexactly(request.content_length or 0)
            except Exception:  # the client went away mid-body
                return web.Response(status=499, reason="Client Closed Request")
        head_bytes = self.request_head(request, chunked=chunked)
        try:
            conn, head = await self._exchange(
                request, head_bytes, body, streamed=streamed, chunked=chunked, expect_continue=expect_continue
            )
        except ClientGone:
            return web.Response(status=499, reason="Client Closed Request")
        return await self._respond(request, conn, head, redirect_status)

    async def fetch(self, request: web.BaseRequest, raw_path: str, *, rewrite_location: bool = True) -> UpstreamReply:
        """GET ``raw_path`` upstream with the client's headers and read the answer whole (at most 1 MiB)."""
        head_bytes = self.request_head(request, method="GET", raw_path=raw_path, chunked=False, with_body=False)
        conn, head = await self._exchange(request, head_bytes, b"", streamed=False, chunked=False, method="GET")
        try:
            parts: list[bytes] = []
            size = 0
            while piece := await conn.read_body(self.idle_timeout_s):
                size += len(piece)
                if size > MAX_FETCH_BYTES:
                    raise UpstreamUnavailable("registry answer too large to edit")
                parts.append(piece)
        except UpstreamBodyError as exc:
            conn.abort()
            raise UpstreamUnavailable(f"registry answer broken: {exc}") from exc
        except TimeoutError as exc:
            conn.abort()
            raise UpstreamTimeout("registry went silent mid-answer") from exc
        finally:
            self.pool.release(conn)
        headers = self.response_headers(head, rewrite_location=rewrite_location)
        return UpstreamReply(head.status, head.reason, headers, b"".join(parts))

    async def _exchange(
        self,
        request: web.BaseRequest,
        head_bytes: bytes,
        body: bytes,
        *,
        streamed: bool,
        chunked: bool,
        expect_continue: bool = False,
        method: str | None = None,
    ) -> tuple[UpstreamConnection, ResponseHead]:
        """Send the request and wait for the answer's head; a reused connection the upstream had closed meanwhile
        is retried once on a fresh one. Streamed bodies always go on a fresh connection, so they never meet a
        dead one after their first byte is gone."""
        for attempt in (1, 2):
            try:
                idle = None if streamed else self.pool.idle_connection()
                conn, reused = (idle, True) if idle is not None else await self.pool.acquire(fresh=streamed)
            except TimeoutError as exc:
                raise UpstreamTimeout("registry did not accept a connection in time") from exc
            except OSError as exc:
                raise UpstreamUnavailable(f"registry unreachable at {self._origin()}: {exc.strerror or exc}") from exc
            conn.begin(method or request.method)
            try:
                try:
                    if streamed:
                        conn.write(head_bytes)
                        if expect_continue:
                            await self._relay_continue(request, conn)
                        await self._send_stream(request, conn, chunked)
                    else:
                        conn.write(head_bytes + body if body else head_bytes)
                except UpstreamClosed:
                    if not conn.answering():
                        raise
                    # It answered (a 413, a 401) and closed before taking the whole body: pass the answer on.
                head = await conn.read_head(self.first_byte_timeout_s)
            except UpstreamClosed as exc:
                self.pool.release(conn)
                if reused and attempt == 1:
                    log.info("retrying on a fresh connection: %s", exc)
                    continue
                raise UpstreamUnavailable(f"registry connection failed: {exc}") from exc
            except TimeoutError as exc:
                conn.abort()
                self.pool.release(conn)
                raise UpstreamTimeout(f"registry did not answer in time ({exc})") from exc
            except (ProtocolError, UpstreamBodyError) as exc:
                conn.abort()
                self.pool.release(conn)
                raise UpstreamUnavailable(f"registry sent a broken answer: {exc}") from exc
            except BaseException:
                # The client went away (or the handler was cancelled): the upstream must see the abort.
                conn.abort()
                self.pool.release(conn)
                raise
            return conn, head
        raise AssertionError("unreachable")

    async def _relay_continue(self, request: web.BaseRequest, conn: UpstreamConnection) -> None:
        """The client waits for 100 Continue before its body: pass on the upstream's, or say it ourselves when the
        upstream stays silent (it may not know the expectation). A final answer instead goes back unread."""
        await conn.wait_for_continue(CONTINUE_WAIT_S)
        if not conn.answering():
            await send_continue(request)

    async def _send_stream(self, request: web.BaseRequest, conn: UpstreamConnection, chunked: bool) -> None:
        content = request.content
        idle = self.idle_timeout_s
        while not conn.answering():
            try:
                # One piece as it arrived: readany() and read(n) join what is queued, a copy per byte.
                data, _ = await content.readchunk()
            except Exception as exc:  # the client went away, or sent a short body or a broken chunk
                conn.abort()
                raise ClientGone(f"{exc.__class__.__name__}: {exc}") from exc
            if not data:
                if chunked:
                    conn.write(b"0\r\n\r\n")
                return
            if chunked:
                conn.writelines((b"%x\r\n" % len(data), data, b"\r\n"))
            else:
                conn.write(data)
            await conn.drain(idle)
        # The upstream answered before the whole body went out: the rest stays unsent and the connection unusable.
        conn.reusable = False

    # the answer

    def response_headers(self, head: ResponseHead, *, rewrite_location: bool = True) -> CIMultiDict[str]:
        if head.hop_by_hop:
            named = head.connection_tokens
            headers = CIMultiDict(
                (name, value)
                for name, value in head.headers
                if (lowered := name.lower()) not in HOP_BY_HOP and lowered not in named
            )
        else:
            headers = CIMultiDict(head.headers)
        if rewrite_location and self.rewrite_location is not None and "Location" in headers:
            rewritten = self.rewrite_location(headers["Location"])
            if rewritten is not None:
                headers["Location"] = rewritten
        return headers

    async def _respond(
        self, request: web.BaseRequest, conn: UpstreamConnection, head: ResponseHead, redirect_status: int | None
    ) -> web.StreamResponse:
        headers = self.response_headers(head)
        status, reason = head.status, head.reason or None
        if redirect_status is not None and status in (301, 302, 307, 308) and "Location" in headers:
            status, reason = redirect_status, None
        if request.method == "HEAD" or status in (204, 304):
            response = web.StreamResponse(status=status, reason=reason, headers=headers)
            self.pool.release(conn)
            close_if_body_unread(request, response)
            await response.prepare(request)
            await response.write_eof()
            return response
        whole = conn.complete_body()
        if whole is not None:
            self.pool.release(conn)
            return web.Response(status=status, reason=reason, headers=headers, body=whole)  # not prepared yet
        response = web.StreamResponse(status=status, reason=reason, headers=headers)
        close_if_body_unread(request, response)
        return await self._stream_back(request, conn, response)

    async def _stream_back(
        self, request: web.BaseRequest, conn: UpstreamConnection, response: web.StreamResponse
    ) -> web.StreamResponse:
        if "Content-Length" not in response.headers and request.version >= (1, 1):
            response.enable_chunked_encoding()
        idle = self.idle_timeout_s
        try:
            await response.prepare(request)
            while piece := await conn.read_body(idle):
                await response.write(piece)
            await response.write_eof()
        except (UpstreamBodyError, TimeoutError) as exc:
            # Headers are gone already: cut the client's connection so it sees a failure, never a short 200.
            log.warning("upstream failed mid-body: %s", exc)
            conn.abort()
            if request.transport is not None:
                request.transport.abort()
        except (ConnectionError, RuntimeError) as exc:
            log.info("client went away mid-answer: %s", exc.__class__.__name__)
            conn.abort()
        except BaseException:
            conn.abort()
            raise
        finally:
            self.pool.release(conn)
        return response

    def _origin(self) -> str:
        return f"{self.pool.host}:{self.pool.port}"
