"""What happens around the views: the request log, Django's view of request bodies, and uWSGI's dead
connections after an unread body."""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from multidict import CIMultiDict

from .settings import RegistrySettings

__all__ = [
    "FAKE_PREFIX",
    "RequestRecord",
    "WireState",
    "body_was_read",
    "django_body",
    "is_chunked",
    "make_wire_middleware",
]

FAKE_PREFIX = "/__fake__/"  # the fake's own inspection routes: never logged, never rate limited
UNREAD_BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(slots=True)
class RequestRecord:
    """One request as it reached the registry."""

    method: str
    path: str  # percent-decoded, as Django matches it
    raw_path: str  # as sent on the request line, query included
    query: str
    headers: CIMultiDict[str]
    chunked: bool
    body_length: int | None = None  # set once the request is answered
    status: int | None = None
    # True: the connection had been left dead by an unread body (close_after_unread_body) and was reset;
    # the view never saw this request.
    reset: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "path": self.path,
            "raw_path": self.raw_path,
            "query": self.query,
            "headers": [[name, value] for name, value in self.headers.items()],
            "chunked": self.chunked,
            "body_length": self.body_length,
            "status": self.status,
            "reset": self.reset,
        }


@dataclass(slots=True)
class Exchange:
    record: RequestRecord
    body: bytes | None = None
    body_read: bool = False
    body_length: int = 0


@dataclass
class WireState:
    log: list[RequestRecord] = field(default_factory=list)
    # Connections a real uWSGI --http-socket would have closed, keyed by id(transport) (the transport is kept
    # so the id cannot be reused by another connection).
    dead_connections: dict[int, asyncio.BaseTransport] = field(default_factory=dict)


EXCHANGE_KEY = web.RequestKey("sregistry_fake_exchange", Exchange)


def is_chunked(request: web.BaseRequest) -> bool:
    return "chunked" in request.headers.get("Transfer-Encoding", "").lower()


def exchange_of(request: web.BaseRequest) -> Exchange:
    try:
        return request[EXCHANGE_KEY]
    except KeyError:
        raise RuntimeError("request did not pass through the wire middleware") from None


async def django_body(request: web.BaseRequest) -> bytes:
    """request.body as Django sees it: without a Content-Length (e.g. chunked) it is empty (pitfall G2)."""
    exchange = exchange_of(request)
    if request.content_length is None or is_chunked(request):
        return b""
    if exchange.body is None:
        exchange.body = await request.read()
        body_was_read(request, len(exchange.body))
    return exchange.body


def body_was_read(request: web.BaseRequest, length: int) -> None:
    exchange = exchange_of(request)
    exchange.body_read = True
    exchange.body_length = length


async def drain(request: web.BaseRequest) -> int:
    received = 0
    while chunk := await request.content.readany():
        received += len(chunk)
    return received


def reset_connection(request: web.BaseRequest) -> None:
    """Drop the connection with an RST, as a client sees a request on a connection uWSGI closed."""
    transport = request.transport
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


def make_wire_middleware(settings_now: Callable[[], RegistrySettings], wire: WireState) -> Any:
    @web.middleware
    async def wire_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path.startswith(FAKE_PREFIX):
            return await handler(request)
        record = RequestRecord(
            method=request.method,
            path=request.path,
            raw_path=request.raw_path,
            query=request.query_string,
            headers=CIMultiDict(request.headers),
            chunked=is_chunked(request),
        )
        wire.log.append(record)
        transport = request.transport
        if transport is not None and wire.dead_connections.pop(id(transport), None) is transport:
            record.reset = True
            reset_connection(request)
            return web.Response(status=500)  # never sent: the transport is gone
        exchange = Exchange(record)
        request[EXCHANGE_KEY] = exchange
        response = await handler(request)
        record.status = response.status
        if exchange.body_read:
            record.body_length = exchange.body_length
            return response
        had_body = bool(request.content_length) or record.chunked
        record.body_length = await drain(request)
        if settings_now().close_after_unread_body and had_body and request.method in UNREAD_BODY_METHODS:
            if transport is not None:
                wire.dead_connections[id(transport)] = transport
        return response

    return wire_middleware
