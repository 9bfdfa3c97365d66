"""The gateway's own HTTP/1.1 client to the registry (aiohttp's client costs several times the rest of a forwarded
request): a pool of keep-alive connections, each an asyncio protocol that writes a request, parses the answer's
head and frames its body (the pure ResponseReader of http1_reader.py), queueing the body with backpressure."""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from collections.abc import Iterable
from typing import Final, cast

from yarl import URL

from ..core.errors import UpstreamUnavailable
from ..core.http1 import ResponseHead
from ..core.http1_reader import CONTINUE, END, STRAY, Event, Failed, IncompleteAnswer, NoAnswer, ResponseReader

__all__ = ["UpstreamBodyError", "UpstreamClosed", "UpstreamConnection", "UpstreamPool", "UpstreamProtocolGone"]

QUEUE_HIGH_BYTES: Final = 1024 * 1024  # answer bytes queued before the upstream connection stops reading
QUEUE_LOW_BYTES: Final = 256 * 1024


class UpstreamClosed(Exception):
    """The upstream closed or reset the connection before the first byte of its answer."""


class UpstreamBodyError(Exception):
    """The answer's body ended early or was malformed: the client must see a failure, not a short body."""


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
    """One keep-alive connection: writes a request, feeds what arrives to its ResponseReader (http1_reader.py), and
    acts on the reader's events: the head for ``read_head``, the body queued with backpressure for ``read_body``
    (reading pauses while the client is slower than the upstream)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self._reusable = True
        self.idle_since = 0.0
        self.head: ResponseHead | None = None
        self._reader = ResponseReader()
        self._head_wakeup = _Wakeup(loop)
        self._continued = False  # the upstream said 100 Continue to this request
        self._head_error: BaseException | None = None
        self._body: deque[bytes] = deque()
        self._queued = 0
        self._body_wakeup = _Wakeup(loop)
        self._body_error: BaseException | None = None
        self._body_done = False
        self._reading_paused = False
        self._write_paused = False
        self._drain_wakeup = _Wakeup(loop)

    @property
    def reusable(self) -> bool:
        """Whether the connection may carry another request: cleared by anything that leaves the stream's state
        unknown, here or in the reader."""
        return self._reusable and self._reader.reusable

    @reusable.setter
    def reusable(self, value: bool) -> None:
        self._reusable = value

    # asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it, and call this only after
        # create_connection returned (which sets the transport first).
        self.transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._reusable = False
        for event in self._reader.feed_eof():
            if isinstance(event, Failed) and isinstance(event.error, NoAnswer):
                reason = exc.__class__.__name__ if exc else "EOF"
                self._head_error = UpstreamClosed(f"connection closed before the answer ({reason})")
                self._head_wakeup.wake()
            else:
                self._on(event)
        self._drain_wakeup.fail(UpstreamClosed("connection closed while sending the request"))

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        self._drain_wakeup.wake()

    def data_received(self, data: bytes) -> None:
        for event in self._reader.feed(data):
            if isinstance(event, bytes):  # the common case first
                self._queue(event)
            else:
                self._on(event)

    def eof_received(self) -> bool | None:
        return False  # let the transport close; connection_lost reports it

    # the exchange, for the forwarder

    def begin(self, method: str) -> None:
        self._reader.begin(method)
        self.head = None
        self._head_error = None
        self._continued = False
        self._body.clear()
        self._queued = 0
        self._body_error = None
        self._body_done = False

    def begin_idle(self) -> None:
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
        return self._reader.done

    def answering(self) -> bool:
        """The head of an answer arrived (perhaps before the request body was all sent)."""
        return self.head is not None or self._head_error is not None

    def abort(self) -> None:
        self._reusable = False
        if self.transport is not None:
            self.transport.abort()

    # the reader's events

    def _on(self, event: Event) -> None:
        if event is END:
            self._body_done = True
            self._body_wakeup.wake()
        elif isinstance(event, ResponseHead):
            self.head = event
            self._head_wakeup.wake()
        elif event is CONTINUE:
            self._continued = True
            self._head_wakeup.wake()
        elif isinstance(event, Failed):
            if self.head is None:  # the head is broken
                error = event.error
                self._head_error = UpstreamProtocolGone(str(error)) if isinstance(error, IncompleteAnswer) else error
                self.abort()
                self._head_wakeup.wake()
            else:
                self._body_error = UpstreamBodyError(str(event.error))
                self.abort()
                self._body_wakeup.wake()
        elif event is STRAY:
            # Bytes nobody asked for, e.g. the body of a HEAD answer (sregistry under uWSGI, docs/protocol.md
            # G3): the stream is out of step and this connection must never carry another request.
            self.abort()

    def _queue(self, piece: bytes) -> None:
        self._body.append(piece)
        self._queued += len(piece)
        self._body_wakeup.wake()
        if not self._reading_paused and self._queued > QUEUE_HIGH_BYTES and self.transport is not None:
            self._reading_paused = True
            self.transport.pause_reading()


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
