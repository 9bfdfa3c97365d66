"""The gateway's own HTTP/1.1 client to the registry (aiohttp's client costs several times the rest of a forwarded
request): a pool of keep-alive connections, each an asyncio protocol that writes a request, parses the answer's
head (http1.py) and frames its body (Content-Length, chunked, or until close), queueing it with backpressure."""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from collections.abc import Iterable
from typing import Final, cast

from yarl import URL

from ..core.errors import UpstreamUnavailable
from ..core.http1 import ChunkedDecoder, Framing, ProtocolError, ResponseHead, parse_response_head

__all__ = ["UpstreamBodyError", "UpstreamClosed", "UpstreamConnection", "UpstreamPool", "UpstreamProtocolGone"]

MAX_HEAD_BYTES: Final = 64 * 1024  # an answer's status line and headers
QUEUE_HIGH_BYTES: Final = 1024 * 1024  # answer bytes queued before the upstream connection stops reading
QUEUE_LOW_BYTES: Final = 256 * 1024


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


class _Wakeup:
    """One wait at a time for something the protocol's callbacks report: ``wait`` until ``wake`` (or ``fail``) is
    called or the loop reaches ``deadline``, which raises TimeoutError(``expired``), or just returns when
    ``expired`` is None."""

    __slots__ = ("_future", "_loop")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._future: asyncio.Future[None] | None = None

    async def wait(self, deadline: float, expired: str | None) -> None:
        future = self._future = self._loop.create_future()
        timer = (
            self._loop.call_at(deadline, _settle, future)
            if expired is None
            else self._loop.call_at(deadline, _expire, future, expired)
        )
        try:
            await future
        finally:
            timer.cancel()
            self._future = None

    def wake(self) -> None:
        if self._future is not None and not self._future.done():
            self._future.set_result(None)

    def fail(self, exc: BaseException) -> None:
        if self._future is not None and not self._future.done():
            self._future.set_exception(exc)


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
        self._head_wakeup = _Wakeup(loop)
        self._continued = False  # the upstream said 100 Continue to this request
        self._head_error: BaseException | None = None
        self._body: deque[bytes] = deque()
        self._queued = 0
        self._body_wakeup = _Wakeup(loop)
        self._body_error: BaseException | None = None
        self._body_done = False
        self._remaining = 0
        self._framing: Framing = "none"
        self._decoder: ChunkedDecoder | None = None
        self._reading_paused = False
        self._write_paused = False
        self._drain_wakeup = _Wakeup(loop)

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
            self._head_wakeup.wake()
        elif self._state == _BODY and self._body_error is None:
            if self._framing == "close":
                self._finish_body(b"")
            else:
                self._body_error = UpstreamBodyError("upstream closed the connection in the middle of the body")
                self._body_wakeup.wake()
        self._drain_wakeup.fail(UpstreamClosed("connection closed while sending the request"))

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        self._drain_wakeup.wake()

    def data_received(self, data: bytes) -> None:
        if self._state == _BODY:
            self._feed_body(data)
        elif self._state == _HEAD:
            self._got_bytes = True
            self._buffer = self._buffer + data if self._buffer else data
            self._parse_head()
        else:
            # Bytes nobody asked for, e.g. the body of a HEAD answer (sregistry under uWSGI, docs/protocol.md
            # G3): the stream is out of step and this connection must never carry another request.
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
        await self._drain_wakeup.wait(self.loop.time() + timeout_s, "upstream stopped reading the request body")

    async def read_head(self, timeout_s: float) -> ResponseHead:
        deadline = self.loop.time() + timeout_s
        while self.head is None and self._head_error is None:  # an interim 100 Continue wakes it early
            await self._head_wakeup.wait(deadline, "no answer from the upstream in time")
        if self._head_error is not None:
            raise self._head_error
        assert self.head is not None
        return self.head

    async def wait_for_continue(self, timeout_s: float) -> bool:
        """Whether the upstream said 100 Continue (or answered already) within ``timeout_s``."""
        if not (self._continued or self.answering()):
            await self._head_wakeup.wait(self.loop.time() + timeout_s, None)
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
            await self._body_wakeup.wait(self.loop.time() + idle_timeout_s, "upstream went silent mid-body")

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
                    self._head_wakeup.wake()
                continue
            self._buffer = b""
            self.head = head
            self._framing = head.framing(self._method)
            if not head.keep_alive or (self._method == "HEAD" and head.content_length != 0):
                # A HEAD answer that announces a body may be followed by one (uWSGI, docs/protocol.md G3).
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
            self._head_wakeup.wake()
            return

    def _fail_head(self, exc: BaseException) -> None:
        self._head_error = exc
        self.abort()
        self._head_wakeup.wake()

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
                self._body_wakeup.wake()
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
        self._body_wakeup.wake()
        if not self._reading_paused and self._queued > QUEUE_HIGH_BYTES and self.transport is not None:
            self._reading_paused = True
            self.transport.pause_reading()

    def _finish_body(self, leftover: bytes) -> None:
        self._state = _DONE
        self._body_done = True
        if leftover:
            self.reusable = False
        self._body_wakeup.wake()


class UpstreamProtocolGone(UpstreamBodyError):
    """The connection closed after part of the answer's head: not safely retryable."""


class UpstreamPool:
    """Keep-alive connections to one upstream origin: at most ``limit`` open at once (requests beyond wait), idle
    ones reused newest first and closed after ``keepalive_s``.

    A connection whose answer is streamed back to a client (:meth:`stream`) leaves the count: a transfer lasts as
    long as its client takes to read it, and 101 slow readers of a large download must not leave API calls and
    discovery waiting for a free connection. Streams are bounded by the client connections instead (one each,
    ``server.max_connections``), and a client that stops reading is dropped (``server.client_write_timeout_seconds``),
    which releases its stream."""

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
        self._open: set[UpstreamConnection] = set()  # counted against limit: connecting, exchanging, idle
        self._streaming: set[UpstreamConnection] = set()  # streaming an answer back to a client: not counted
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

    @property
    def counted(self) -> int:
        """Connections counted against ``limit``."""
        return len(self._open)

    @property
    def streaming(self) -> int:
        """Connections streaming an answer back, outside the count."""
        return len(self._streaming)

    def stream(self, conn: UpstreamConnection) -> None:
        """``conn`` now streams its answer back to a client: its place in the pool goes to the next waiting call."""
        if conn in self._open:
            self._open.discard(conn)
            self._streaming.add(conn)
            self._wake_one()

    def release(self, conn: UpstreamConnection) -> None:
        loop_time = conn.loop.time()
        streamed = bool(self._streaming) and conn in self._streaming
        if streamed:
            self._streaming.discard(conn)
        reusable = conn.reusable and not conn.closed and conn.answer_complete and not self._closing
        if reusable and streamed and len(self._open) < self.limit:
            self._open.add(conn)  # back into the pool, where there is room
        elif streamed:
            reusable = False
        if reusable:
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
        for conn in [*self._open, *self._streaming]:
            conn.abort()
        self._idle.clear()
        self._open.clear()
        self._streaming.clear()
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
