"""Streaming pass-through to the registry.

The real sregistry punishes small liberties (docs/protocol.md §9b), so requests go upstream as sent: the raw path and
query, end-to-end headers in order, multiplicity and casing, the client's Content-Length (a sized body never turns
chunked, and a small chunked one gets a Content-Length: G2), no Content-Type the client did not send (G1), bodies
streamed both ways with backpressure.

The :class:`Forwarder` joins a client's request to a connection of the gateway's own HTTP/1.1 client
(http_client.py, parsing in core/http1.py) and streams the answer back.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Awaitable, Callable, Iterable
from functools import lru_cache, partial
from typing import Final, Literal, NamedTuple

from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from ..core.config import Config
from ..core.errors import UpstreamTimeout, UpstreamUnavailable
from ..core.http1 import HOP_BY_HOP, OWS, ProtocolError, ResponseHead
from ..core.request_context import REQUEST_ID
from .http_client import UpstreamBodyError, UpstreamClosed, UpstreamConnection, UpstreamPool
from .registry_answer import RegistryAnswer

__all__ = [
    "ForwardingPolicy",
    "Forwarder",
    "Relocated",
    "close_if_body_unread",
    "expects_continue",
    "send_continue",
]

log = logging.getLogger("gateway.proxy")

_HOP_BY_HOP_BYTES: Final = frozenset(name.encode() for name in HOP_BY_HOP)
_FORWARDING_BYTES: Final = frozenset({b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host", b"forwarded"})

SMALL_BODY_BYTES: Final = 64 * 1024  # request bodies up to this are read whole: one write, and replayable
# Chunked request bodies up to this are read whole and sent with a Content-Length: uWSGI reads a chunked body as
# empty (G2). Larger ones stream on chunked (docs/deploy.md).
CHUNKED_BUFFER_BYTES: Final = 1024 * 1024
MAX_FETCH_BYTES: Final = 1024 * 1024  # answers the gateway reads whole to edit (image metadata)
REDIRECT_STATUSES: Final = frozenset({301, 302, 307, 308})


class Relocated(NamedTuple):
    """What the client gets instead of a Location from the registry; ``status`` replaces a redirect's (None: the
    registry's own)."""

    location: str
    status: int | None = None


# A Location from the registry → what the client gets instead, or None to keep it.
LocationRewrite = Callable[[str], Relocated | None]
# Sends the rest of a streamed request once its head is written.
SendRest = Callable[[UpstreamConnection], Awaitable[None]]
CONTINUE_WAIT_S: Final = 1.0  # for the upstream's 100 Continue before telling the client to go on (as curl waits)


class ForwardingPolicy:
    """Which Host the upstream sees, and whose X-Forwarded-*/Forwarded headers are believed."""

    def __init__(
        self,
        upstream_authority: bytes,
        *,
        forward_host: Literal["upstream", "client"] = "client",
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


_NO_TOKENS: Final = frozenset[bytes]()
# Written by the gateway itself: Host as configured, X-Request-Id as logged.
_REPLACED_BYTES: Final = frozenset({b"host", b"x-request-id"})


def _connection_tokens(values: Iterable[str]) -> frozenset[bytes]:
    return frozenset(token.strip(OWS).lower().encode("latin-1") for value in values for token in value.split(","))


def _forwarded_node(value: str) -> str:
    if ":" in value:  # IPv6 (RFC 7239 §6: bracketed and quoted)
        return f'"[{value}]"'
    return value or "unknown"


def _forwarded_address(node: bytes) -> bytes:
    """An X-Forwarded-For entry as a Forwarded node: an IP address, else "unknown" (never raw text, which could
    carry ; or " into the header's syntax)."""
    try:
        address = ipaddress.ip_address(node.strip().decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        return b"unknown"
    return _forwarded_node(str(address)).encode("ascii")


def expects_continue(request: web.BaseRequest) -> bool:
    """An HTTP/1.1 client that waits for 100 Continue before sending its body (RFC 9110 §10.1.1)."""
    expect = request.headers.get("Expect")  # absent from nearly every request: checked first
    return expect is not None and request.version >= (1, 1) and expect.strip().lower() == "100-continue"


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
        rewrite_location: LocationRewrite | None = None,
    ) -> None:
        self.pool = pool
        self.policy = policy
        self.first_byte_timeout_s = first_byte_timeout_s
        self.idle_timeout_s = idle_timeout_s
        self.rewrite_location = rewrite_location
        self._authority = policy.upstream_authority

    @classmethod
    def from_config(cls, config: Config, *, rewrite_location: LocationRewrite | None = None) -> Forwarder:
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
        content_length: int | None = None,
    ) -> bytes:
        """Request line and headers for the upstream: the client's end-to-end headers as they came, Host as
        configured, and forwarding headers that trust earlier hops only when the peer is a trusted proxy.
        ``content_length`` frames a chunked body the gateway read whole."""
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
            if lowered == b"content-length" and (not with_body or content_length is not None):
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
        elif content_length is not None:
            out.append(b"Content-Length: %d\r\n" % content_length)
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
        # The same trusted chain as X-Forwarded-For: a trusted proxy's Forwarded elements, or, when it sent only
        # X-Forwarded-For (nginx), one for= element per address in it.
        earlier_forwarded = prior.get(b"forwarded")
        if not earlier_forwarded and earlier_for:
            earlier_forwarded = [
                b"for=" + _forwarded_address(node) for value in earlier_for for node in value.split(b",")
            ]
            # The proxy's X-Forwarded-Host/Proto describe the request it received: the last hop's element.
            if b"x-forwarded-host" in prior:
                earlier_forwarded[-1] += b';host="%s"' % forwarded_host.replace(b'"', b"").replace(b"\\", b"")
            if b"x-forwarded-proto" in prior and proto.isalpha():
                earlier_forwarded[-1] += b";proto=" + proto
        forwarded = b", ".join([*earlier_forwarded, element]) if earlier_forwarded else element
        return b"X-Forwarded-For: %s\r\nX-Forwarded-Proto: %s\r\nX-Forwarded-Host: %s\r\nForwarded: %s\r\n" % (
            chain,
            proto,
            forwarded_host,
            forwarded,
        )

    # forwarding

    async def forward(
        self,
        request: web.BaseRequest,
        *,
        rewrite_location: LocationRewrite | None = None,
    ) -> web.StreamResponse:
        """Forward ``request`` and stream the answer back; ``rewrite_location`` replaces the forwarder's own rewrite
        of the answer's Location (the download route's, which may also replace a redirect's status)."""
        chunked = "chunked" in request.headers.get("Transfer-Encoding", "").lower()
        expect_continue = request.body_exists and expects_continue(request)
        streamed = chunked or expect_continue or (request.content_length or 0) > SMALL_BODY_BYTES
        body = b""
        content_length = None
        try:
            if chunked:
                body, whole = await self._read_chunked_prefix(request, expect_continue)
                expect_continue = False  # answered above: the client is sending
                if whole:
                    chunked = streamed = False
                    content_length = len(body)
            elif request.body_exists and not streamed:
                body = await request.content.readexactly(request.content_length or 0)
        except Exception:  # the client went away mid-body, or sent a broken chunk
            return web.Response(status=499, reason="Client Closed Request")
        head_bytes = self.request_head(request, chunked=chunked, content_length=content_length)
        send_rest = (
            partial(self._send_streamed, request, body=body, chunked=chunked, expect_continue=expect_continue)
            if streamed
            else None
        )
        try:
            conn, head = await self._exchange(
                request.method, head_bytes, b"" if streamed else body, send_rest=send_rest
            )
        except ClientGone:
            return web.Response(status=499, reason="Client Closed Request")
        return await self._respond(request, conn, head, rewrite_location or self.rewrite_location)

    async def _read_chunked_prefix(self, request: web.BaseRequest, expect_continue: bool) -> tuple[bytes, bool]:
        """Up to CHUNKED_BUFFER_BYTES of a chunked body, and whether that was all of it. A client waiting for
        100 Continue is told to go on first: the body decides how it is sent."""
        if expect_continue:
            await send_continue(request)
        body = bytearray()
        while len(body) <= CHUNKED_BUFFER_BYTES:
            piece = await request.content.read(CHUNKED_BUFFER_BYTES + 1 - len(body))
            if not piece:
                return bytes(body), True
            body += piece
        return bytes(body), False

    async def fetch(self, request: web.BaseRequest, raw_path: str, *, rewrite_location: bool = True) -> RegistryAnswer:
        """GET ``raw_path`` upstream with the client's headers and read the answer whole (at most 1 MiB)."""
        head_bytes = self.request_head(request, method="GET", raw_path=raw_path, chunked=False, with_body=False)
        head, body = await self._exchange_whole("GET", head_bytes, b"", first_byte_timeout_s=self.first_byte_timeout_s)
        headers, _ = self.response_headers(head, rewrite_location=self.rewrite_location if rewrite_location else None)
        return RegistryAnswer(head.status, head.reason, headers, body)

    async def call(
        self, method: str, raw_path: str, headers: Iterable[tuple[str, str]], body: bytes, *, timeout_s: float
    ) -> RegistryAnswer:
        """A request of the gateway's own (registry_client.py) on the same pool, its answer read whole (at most 1 MiB):
        Host as configured, then ``headers`` as given, the request's X-Request-Id, and the body's Content-Length.
        ``timeout_s`` bounds the wait for the answer's head and each silence in its body."""
        out = [
            b"%s %s HTTP/1.1\r\nHost: %s\r\n"
            % (method.encode("ascii"), raw_path.encode("utf-8", "surrogateescape"), self._authority)
        ]
        for name, value in headers:
            if "\r" not in value and "\n" not in value:  # CR or LF would split the head (aiohttp never lets one in)
                out += (name.encode("latin-1"), b": ", value.encode("utf-8", "surrogateescape"), b"\r\n")
        if request_id := REQUEST_ID.get():
            out += (b"X-Request-Id: ", request_id.encode("ascii", "replace"), b"\r\n")
        out.append(b"Content-Length: %d\r\n\r\n" % len(body))
        head, answer = await self._exchange_whole(
            method, b"".join(out), body, first_byte_timeout_s=timeout_s, idle_timeout_s=timeout_s
        )
        answer_headers, _ = self.response_headers(head, rewrite_location=None)
        return RegistryAnswer(head.status, head.reason, answer_headers, answer)

    async def _exchange_whole(
        self,
        method: str,
        head_bytes: bytes,
        body: bytes,
        *,
        first_byte_timeout_s: float,
        idle_timeout_s: float | None = None,
    ) -> tuple[ResponseHead, bytes]:
        conn, head = await self._exchange(method, head_bytes, body, first_byte_timeout_s=first_byte_timeout_s)
        idle = self.idle_timeout_s if idle_timeout_s is None else idle_timeout_s
        try:
            parts: list[bytes] = []
            size = 0
            while piece := await conn.read_body(idle):
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
        return head, b"".join(parts)

    async def _exchange(
        self,
        method: str,
        head_bytes: bytes,
        body: bytes,
        *,
        send_rest: SendRest | None = None,
        first_byte_timeout_s: float | None = None,
    ) -> tuple[UpstreamConnection, ResponseHead]:
        """Send the request (``head_bytes`` and ``body``, then ``send_rest`` when the body is streamed) and wait for
        the answer's head; a reused connection the upstream had closed meanwhile is retried once on a fresh one.
        Streamed bodies always go on a fresh connection, so they never meet a dead one after their first byte is
        gone."""
        streamed = send_rest is not None
        first_byte_s = self.first_byte_timeout_s if first_byte_timeout_s is None else first_byte_timeout_s
        for attempt in (1, 2):
            try:
                idle = None if streamed else self.pool.idle_connection()
                conn, reused = (idle, True) if idle is not None else await self.pool.acquire(fresh=streamed)
            except TimeoutError as exc:
                raise UpstreamTimeout("registry did not accept a connection in time") from exc
            except OSError as exc:
                raise UpstreamUnavailable(f"registry unreachable at {self._origin()}: {exc.strerror or exc}") from exc
            conn.begin(method)
            try:
                try:
                    if send_rest is not None:
                        conn.write(head_bytes)
                        await send_rest(conn)
                    else:
                        conn.write(head_bytes + body if body else head_bytes)
                except UpstreamClosed:
                    if not conn.answering():
                        raise
                    # It answered (a 413, a 401) and closed before taking the whole body: pass the answer on.
                head = await conn.read_head(first_byte_s)
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

    async def _send_streamed(
        self, request: web.BaseRequest, conn: UpstreamConnection, *, body: bytes, chunked: bool, expect_continue: bool
    ) -> None:
        """After the head: the client's body, ``body`` being what was read of it to decide how to send the rest."""
        if expect_continue:
            await self._relay_continue(request, conn)
        if body:
            conn.writelines((b"%x\r\n" % len(body), body, b"\r\n") if chunked else (body,))
        await self._send_stream(request, conn, chunked)

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

    def response_headers(
        self, head: ResponseHead, *, rewrite_location: LocationRewrite | None
    ) -> tuple[CIMultiDict[str], int | None]:
        """The answer's end-to-end headers, its Location rewritten, and the status the rewrite asks for, if any."""
        if head.hop_by_hop:
            named = head.connection_tokens
            headers = CIMultiDict(
                (name, value)
                for name, value in head.headers
                if (lowered := name.lower()) not in HOP_BY_HOP and lowered not in named
            )
        else:
            headers = CIMultiDict(head.headers)
        if rewrite_location is not None and "Location" in headers:
            relocated = rewrite_location(headers["Location"])
            if relocated is not None:
                headers["Location"] = relocated.location
                return headers, relocated.status
        return headers, None

    async def _respond(
        self,
        request: web.BaseRequest,
        conn: UpstreamConnection,
        head: ResponseHead,
        rewrite_location: LocationRewrite | None,
    ) -> web.StreamResponse:
        headers, redirect_status = self.response_headers(head, rewrite_location=rewrite_location)
        status, reason = head.status, head.reason or None
        if redirect_status is not None and status in REDIRECT_STATUSES:
            status, reason = redirect_status, None
        whole = None if request.method == "HEAD" or status in (204, 304) else conn.complete_body()
        if whole is not None:  # not prepared here: the handler adds X-Request-Id, as to every answer of its own
            self.pool.release(conn)
            return web.Response(status=status, reason=reason, headers=headers, body=whole)
        if request_id := REQUEST_ID.get():  # sent from here, before the handler's end could add it
            headers["X-Request-Id"] = request_id
        if request.method == "HEAD" or status in (204, 304):
            response = web.StreamResponse(status=status, reason=reason, headers=headers)
            self.pool.release(conn)
            close_if_body_unread(request, response)
            await response.prepare(request)
            await response.write_eof()
            return response
        response = web.StreamResponse(status=status, reason=reason, headers=headers)
        close_if_body_unread(request, response)
        # The rest of the answer takes as long as the client reads: its connection leaves the pool's count.
        self.pool.stream(conn)
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
