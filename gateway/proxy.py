"""Streaming pass-through to the registry.

The real sregistry punishes small liberties (PROTOCOL.md §9b), so requests go upstream as sent: the raw path
and query, end-to-end headers in order and multiplicity, the client's Content-Length (a sized body never turns
chunked: G2), no Content-Type the client did not send (G1), bodies streamed both ways without buffering.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from typing import Final

import aiohttp
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from .errors import UpstreamTimeout, UpstreamUnavailable

__all__ = ["HOP_BY_HOP", "Forwarder", "end_to_end_headers"]

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
# aiohttp's client would add these when absent; the upstream must see only what the client sent.
SKIP_AUTO_HEADERS: Final = frozenset({"Accept", "Accept-Encoding", "User-Agent", "Content-Type"})
CHUNK_BYTES: Final = 256 * 1024


def end_to_end_headers(headers: CIMultiDictProxy[str] | CIMultiDict[str]) -> CIMultiDict[str]:
    """Drop hop-by-hop headers, including every header named in Connection (RFC 9110 §7.6.1)."""
    named = {token.strip().lower() for value in headers.getall("Connection", ()) for token in value.split(",")}
    return CIMultiDict(
        (name, value) for name, value in headers.items() if name.lower() not in HOP_BY_HOP and name.lower() not in named
    )


class Forwarder:
    """Sends a request to the upstream and streams the answer back to the client."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        upstream: URL,
        *,
        read_timeout_s: float,
        rewrite_location: Callable[[str], str | None] | None = None,
    ) -> None:
        self.session = session
        self.upstream = upstream
        self.read_timeout_s = read_timeout_s
        self.rewrite_location = rewrite_location
        self._host_header = upstream.raw_authority

    def upstream_url(self, raw_path_qs: str) -> URL:
        # Built from the raw path: never normalised, never decoded and re-encoded.
        return URL(str(self.upstream.origin()) + raw_path_qs, encoded=True)

    def request_headers(self, request: web.BaseRequest) -> CIMultiDict[str]:
        headers = end_to_end_headers(request.headers)
        headers.popall("Host", None)
        headers["Host"] = self._host_header
        peer = request.remote or ""
        prior = request.headers.get("X-Forwarded-For")
        headers["X-Forwarded-For"] = f"{prior}, {peer}" if prior else peer
        headers["X-Forwarded-Proto"] = request.headers.get("X-Forwarded-Proto", request.scheme)
        headers["X-Forwarded-Host"] = request.headers.get("X-Forwarded-Host", request.host)
        if request.method == "HEAD":
            # sregistry under uWSGI answers HEAD with a body, which poisons a reused connection (G3).
            headers["Connection"] = "close"
        return headers

    async def forward(self, request: web.Request) -> web.StreamResponse:
        headers = self.request_headers(request)
        url = self.upstream_url(request.raw_path)
        body_started = False

        async def body() -> AsyncIterator[bytes]:
            nonlocal body_started
            while chunk := await request.content.read(CHUNK_BYTES):
                body_started = True
                yield chunk

        has_body = request.body_exists
        for attempt in (1, 2):
            try:
                upstream = await self.session.request(
                    request.method,
                    url,
                    headers=headers,
                    data=body() if has_body else None,
                    allow_redirects=False,
                    skip_auto_headers=SKIP_AUTO_HEADERS,
                    timeout=aiohttp.ClientTimeout(
                        total=None, connect=None, sock_connect=None, sock_read=self.read_timeout_s
                    ),
                    auto_decompress=False,
                )
            except aiohttp.ClientConnectorError as exc:
                raise UpstreamUnavailable(f"registry unreachable at {self.upstream.origin()}") from exc
            except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as exc:
                # A pooled connection the upstream closed meanwhile: retry once if no body byte left us.
                if attempt == 1 and not body_started:
                    continue
                raise UpstreamUnavailable(f"registry connection failed: {exc.__class__.__name__}") from exc
            except TimeoutError as exc:
                raise UpstreamTimeout("registry did not answer in time") from exc
            except aiohttp.ClientError as exc:
                raise UpstreamUnavailable(f"registry request failed: {exc.__class__.__name__}") from exc
            break
        async with upstream:
            return await self._stream_back(request, upstream)

    async def _stream_back(self, request: web.Request, upstream: aiohttp.ClientResponse) -> web.StreamResponse:
        headers = end_to_end_headers(upstream.headers)
        location = headers.get("Location")
        if location is not None and self.rewrite_location is not None:
            rewritten = self.rewrite_location(location)
            if rewritten is not None:
                headers["Location"] = rewritten
        response = web.StreamResponse(status=upstream.status, reason=upstream.reason, headers=headers)
        no_body = request.method == "HEAD" or upstream.status in (204, 304) or 100 <= upstream.status < 200
        if no_body:
            await response.prepare(request)
            await response.write_eof()
            return response
        if "Content-Length" not in headers:
            response.enable_chunked_encoding()
        await response.prepare(request)
        try:
            async for chunk in upstream.content.iter_chunked(CHUNK_BYTES):
                await response.write(chunk)
        except (aiohttp.ClientError, TimeoutError) as exc:
            # Headers are gone already: cut the client's connection so it sees a failure, never a short 200.
            log.warning("upstream failed mid-body: %s", exc.__class__.__name__)
            if request.transport is not None:
                request.transport.abort()
            return response
        await response.write_eof()
        return response
