"""Client connections: aiohttp's low-level server with the limits it lacks.

aiohttp closes a connection idle between requests (``server.keepalive_seconds``), but not one that trickles a
request head byte by byte (slowloris), nor one that stops reading its answer, and it accepts any number of
connections. :class:`GatewayServer` adds a head timeout and a write-stall timeout per connection and a cap on open
connections; the head timeout works on aiohttp's ``RequestHandler`` state (``_messages``, ``_waiter``), which is why
aiohttp is pinned below 4.
"""

from __future__ import annotations

import asyncio
import json
import socket
import struct
import weakref
from dataclasses import dataclass
from typing import Any, Final, cast

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from ..ops.metrics import Counter

__all__ = ["ConnectionLimits", "GatewayServer", "REFUSED_LINGER_S"]

# What the transport buffers for a client before writing pauses (and the forwarder's writes wait in drain): with the
# upstream queue (edges/http_client.py) this bounds the memory a client that stops reading can hold.
WRITE_BUFFER_HIGH: Final = 64 * 1024
WRITE_BUFFER_LOW: Final = 16 * 1024
_RESET_ON_CLOSE: Final = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends RST and drops the send buffer
# A refused connection gets its 503, then this long to read it and hang up before it is reset.
REFUSED_LINGER_S: Final = 1.0
_REFUSED_BODY: Final = json.dumps(
    {"error": {"code": 503, "message": "too many client connections, retry later"}}, separators=(",", ":")
).encode()
_REFUSED_ANSWER: Final = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json; charset=utf-8\r\n"
    b"Content-Length: %d\r\nRetry-After: 1\r\nConnection: close\r\n\r\n%s" % (len(_REFUSED_BODY), _REFUSED_BODY)
)


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    header_timeout_s: float
    max_connections: int
    write_timeout_s: float


class ClientConnection(RequestHandler):
    """One client connection. A request head must arrive whole within ``header_timeout_s`` of its first byte (or,
    for the first request, of the connection opening), and the client must take what the gateway writes: a
    connection whose writing stays paused (the transport's buffer full, the client not reading) for
    ``write_timeout_s`` is reset, which cancels its handler and so releases the upstream connection it streams
    from. Either way the connection is closed without an answer."""

    __slots__ = (
        "_limits",
        "_closed_counter",
        "_head_since",
        "_head_timer",
        "_stalled_since",
        "_stall_timer",
        "__weakref__",
    )

    def __init__(self, manager: GatewayServer, *, limits: ConnectionLimits, closed: Counter, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._limits = limits
        self._closed_counter = closed
        self._head_since: float | None = None  # when the head being awaited began to arrive
        self._head_timer: asyncio.TimerHandle | None = None
        self._stalled_since: float | None = None
        self._stall_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        # uvloop's transports implement asyncio.Transport without subclassing it.
        cast(asyncio.Transport, transport).set_write_buffer_limits(high=WRITE_BUFFER_HIGH, low=WRITE_BUFFER_LOW)
        # A connection that never sends a whole head is closed like one that trickles it (nginx does the same).
        self._head_began()

    def connection_lost(self, exc: BaseException | None) -> None:
        for timer in (self._head_timer, self._stall_timer):
            if timer is not None:
                timer.cancel()
        self._head_timer = self._stall_timer = None
        super().connection_lost(exc)

    # writing: a stall is a pause that lasts; one timer per stall period, not one per pause (pauses are frequent)

    def pause_writing(self) -> None:
        super().pause_writing()
        self._stalled_since = self._loop.time()
        if self._stall_timer is None:
            self._stall_timer = self._loop.call_at(self._stalled_since + self._limits.write_timeout_s, self._stalled)

    def resume_writing(self) -> None:
        super().resume_writing()
        self._stalled_since = None

    def _stalled(self) -> None:
        self._stall_timer = None
        since = self._stalled_since
        if since is None or self.transport is None:
            return  # it resumed meanwhile; the next pause starts a new period
        due = since + self._limits.write_timeout_s
        if self._loop.time() < due:  # paused again since the timer was set
            self._stall_timer = self._loop.call_at(due, self._stalled)
            return
        self._closed_counter.inc(reason="write_timeout")
        # Reset, not close: close would wait for the buffers to drain, which is what never happens, and even an
        # abort leaves the kernel retrying its send buffer to the silent client for minutes (nginx's
        # reset_timedout_connection).
        sock = self.transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET_ON_CLOSE)
            except OSError:
                pass  # gone already
        self.transport.abort()

    # reading: a head's clock starts with its first byte; one timer per connection, re-armed when it fires (a
    # timer per request, created and cancelled, cost about 1.3 µs of each one's CPU)

    def data_received(self, data: bytes) -> None:
        # Between requests (aiohttp waits for the next message): these bytes begin a head, which starts the clock.
        if self._head_since is None and data and self._waiter is not None:
            self._head_began()
        super().data_received(data)
        if self._head_since is not None and self._messages:  # the head is complete (or refused by the parser)
            self._head_since = None

    def _head_began(self) -> None:
        self._head_since = self._loop.time()
        if self._head_timer is None:
            self._head_timer = self._loop.call_at(self._head_since + self._limits.header_timeout_s, self._head_due)

    def _head_due(self) -> None:
        self._head_timer = None
        since = self._head_since
        if since is None:
            return  # no head being awaited: the next one arms the timer again
        due = since + self._limits.header_timeout_s
        if self._loop.time() < due:  # a later head than the one the timer was set for
            self._head_timer = self._loop.call_at(due, self._head_due)
            return
        # Only while aiohttp is still waiting for that head: never in the middle of a request.
        if self._waiter is not None and not self._waiter.done() and not self._messages:
            self._closed_counter.inc(reason="header_timeout")
            self.force_close()


class RefusedConnection(asyncio.Protocol):
    """A connection beyond ``max_connections``: answered 503 at once and closed, its request never read."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._reset: asyncio.TimerHandle | None = None

    def connection_made(self, base_transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, base_transport)  # uvloop's do not subclass it
        transport.write(_REFUSED_ANSWER)
        # Half-close rather than close: closing with the client's request still unread would reset the connection,
        # and a reset can destroy the 503 before the client reads it. The client hangs up after the answer.
        if transport.can_write_eof():
            transport.write_eof()
        self._reset = self._loop.call_later(REFUSED_LINGER_S, transport.abort)

    def data_received(self, data: bytes) -> None:
        pass  # the request is never read

    def eof_received(self) -> bool:
        return False  # the client is done: close

    def connection_lost(self, exc: Exception | None) -> None:
        if self._reset is not None:
            self._reset.cancel()


class GatewayServer(web.Server):
    """aiohttp's low-level server, with :class:`ClientConnection` for each connection up to ``max_connections``
    open at once and :class:`RefusedConnection` beyond."""

    def __init__(self, handler: Any, *, limits: ConnectionLimits, closed: Counter, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self.limits = limits
        self.closed = closed
        # Created by the loop but not yet connected: counted too, so a burst of accepts cannot overshoot the cap.
        self._connecting: weakref.WeakSet[RequestHandler] = weakref.WeakSet()

    @property
    def open_connections(self) -> int:
        return len(self._connections) + len(self._connecting)

    def connection_made(self, handler: RequestHandler, transport: asyncio.Transport) -> None:
        self._connecting.discard(handler)
        super().connection_made(handler, transport)

    def __call__(self) -> Any:  # the loop's protocol factory, called once per accepted connection
        if self.open_connections >= self.limits.max_connections:
            self.closed.inc(reason="refused")
            return RefusedConnection(self._loop)
        handler = ClientConnection(self, loop=self._loop, limits=self.limits, closed=self.closed, **self._kwargs)
        self._connecting.add(handler)
        return handler
