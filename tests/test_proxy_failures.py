"""When one side of a forwarded exchange fails: the other side must see a failure too (never a silently short
body), timeouts bound silence but not long transfers, and a client that leaves takes its upstream request along."""

from __future__ import annotations

import asyncio
import contextlib
import io
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from gateway.app import Gateway
from tests.gateway_fixtures import GatewayTestServer, gateway_config
from tests.proxy_harness import RawUpstream

Client = Callable[..., Awaitable[TestClient[web.Request, web.Application]]]
ServerFactory = Callable[..., Awaitable[TestServer]]
MIB = 1024 * 1024
EVENT_TIMEOUT_S = 10.0


class Upstream:
    """An aiohttp upstream whose handlers report what happened to them."""

    def __init__(self) -> None:
        self.events: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self.app = web.Application(client_max_size=1024 * MIB)
        self.app.router.add_put("/sink", self.sink)
        self.app.router.add_get("/endless", self.endless)
        self.app.router.add_get("/slow-head", self.slow_head)
        self.app.router.add_get("/trickle", self.trickle)
        self.app.router.add_get("/stall", self.stall)
        self.app.router.add_get("/chunked-dies", self.chunked_dies)

    async def next_event(self) -> tuple[str, Any]:
        async with asyncio.timeout(EVENT_TIMEOUT_S):
            return await self.events.get()

    async def sink(self, request: web.Request) -> web.Response:
        received = 0
        try:
            async for piece in request.content.iter_any():
                received += len(piece)
        except BaseException as exc:
            self.events.put_nowait(("sink-failed", (type(exc).__name__, received)))
            raise
        self.events.put_nowait(("sink-complete", received))
        return web.json_response({"bytes": received})

    async def endless(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        await response.prepare(request)
        sent = 0
        try:
            while True:
                await response.write(b"e" * 65536)
                sent += 65536
        except BaseException as exc:
            self.events.put_nowait(("endless-stopped", (type(exc).__name__, sent)))
            raise

    async def slow_head(self, request: web.Request) -> web.Response:
        self.events.put_nowait(("slow-head-started", None))
        try:
            await asyncio.sleep(30)
        except BaseException as exc:
            self.events.put_nowait(("slow-head-stopped", type(exc).__name__))
            raise
        return web.Response(text="late")

    async def trickle(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Length": "6"})
        await response.prepare(request)
        for piece in b"abcdef":
            await asyncio.sleep(0.2)
            await response.write(bytes([piece]))
        await response.write_eof()
        return response

    async def stall(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Length": "100"})
        await response.prepare(request)
        await response.write(b"s" * 10)
        await asyncio.sleep(30)
        return response

    async def chunked_dies(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        await response.prepare(request)
        await response.write(b"c" * 1000)
        await asyncio.sleep(0.05)
        assert request.transport is not None
        request.transport.abort()
        return response


@pytest.fixture
async def upstream(aiohttp_server: ServerFactory) -> Any:
    upstream = Upstream()
    server = await aiohttp_server(upstream.app)
    upstream.url = str(server.make_url(""))  # type: ignore[attr-defined]
    return upstream


async def start_gateway(aiohttp_client: Client, upstream: Any, **upstream_settings: Any) -> Any:
    config = gateway_config(upstream_url=upstream.url, upstream=upstream_settings)
    return await aiohttp_client(GatewayTestServer(Gateway(config)))


async def test_a_client_aborting_mid_upload_aborts_the_upstream_request(upstream: Any, aiohttp_client: Client) -> None:
    gateway = await start_gateway(aiohttp_client, upstream)
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
    writer.write(f"PUT /sink HTTP/1.1\r\nHost: x\r\nContent-Length: {64 * MIB}\r\n\r\n".encode() + b"u" * (2 * MIB))
    await writer.drain()
    await asyncio.sleep(0.2)
    writer.transport.abort()
    event, (error, received) = await upstream.next_event()
    assert event == "sink-failed", "the upstream took a short body for a complete one"
    assert received < 64 * MIB


async def test_a_client_aborting_a_chunked_upload_never_completes_it_upstream(
    upstream: Any, aiohttp_client: Client
) -> None:
    gateway = await start_gateway(aiohttp_client, upstream)
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
    # Past the gateway's chunked buffer (CHUNKED_BUFFER_BYTES), so the upload is streaming when the client leaves.
    chunk = b"100000\r\n" + b"k" * MIB + b"\r\n"
    writer.write(b"PUT /sink HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + chunk + chunk)
    await writer.drain()
    await asyncio.sleep(0.2)
    writer.transport.abort()
    event, _ = await upstream.next_event()
    assert event == "sink-failed"


async def test_a_client_leaving_mid_download_stops_the_upstream(upstream: Any, aiohttp_client: Client) -> None:
    gateway = await start_gateway(aiohttp_client, upstream)
    response = await gateway.get("/endless")
    await response.content.readexactly(MIB)
    response.close()
    event, (error, sent) = await upstream.next_event()
    assert event == "endless-stopped"


async def test_a_client_leaving_before_the_answer_cancels_the_upstream_request(
    upstream: Any, aiohttp_client: Client
) -> None:
    gateway = await start_gateway(aiohttp_client, upstream)
    request = asyncio.create_task(gateway.get("/slow-head"))
    assert await upstream.next_event() == ("slow-head-started", None)
    request.cancel()  # closes the client's connection
    with pytest.raises(asyncio.CancelledError):
        await request
    assert await upstream.next_event() == ("slow-head-stopped", "CancelledError")


async def test_an_upstream_dying_mid_chunked_body_fails_the_clients_response(
    upstream: Any, aiohttp_client: Client
) -> None:
    gateway = await start_gateway(aiohttp_client, upstream)
    response = await gateway.get("/chunked-dies")
    assert response.status == 200
    with pytest.raises(aiohttp.ClientPayloadError):
        await response.read()


async def test_an_upstream_silent_mid_body_past_the_idle_timeout_fails_the_response(
    upstream: Any, aiohttp_client: Client
) -> None:
    gateway = await start_gateway(aiohttp_client, upstream, read_timeout_seconds=0.3)
    response = await gateway.get("/stall")
    with pytest.raises(aiohttp.ClientPayloadError):
        await response.read()


async def test_a_slow_but_steady_body_has_no_total_timeout(upstream: Any, aiohttp_client: Client) -> None:
    # 1.2 s in all, longer than both timeouts, with no silence above 0.2 s.
    gateway = await start_gateway(aiohttp_client, upstream, read_timeout_seconds=0.5, first_byte_timeout_seconds=0.5)
    response = await gateway.get("/trickle")
    assert await response.read() == b"abcdef"


async def test_a_request_waiting_for_a_free_connection_times_out_as_504(upstream: Any, aiohttp_client: Client) -> None:
    gateway = await start_gateway(aiohttp_client, upstream, pool_size=1, connect_timeout_seconds=0.3)
    occupying = asyncio.create_task(gateway.get("/slow-head"))
    assert await upstream.next_event() == ("slow-head-started", None)
    waiting = await gateway.get("/trickle")
    assert waiting.status == 504
    assert (await waiting.json())["error"]["code"] == 504
    occupying.cancel()
    with pytest.raises(asyncio.CancelledError):
        await occupying


async def test_an_upstream_refusing_an_upload_early_gets_its_answer_to_the_client(aiohttp_client: Client) -> None:
    async def refuse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 8\r\nConnection: close\r\n\r\ntoo big!")
        await writer.drain()
        # A lingering close, as real servers do: closing with unread input would reset the connection.
        writer.write_eof()
        with contextlib.suppress(ConnectionError):
            async with asyncio.timeout(5):
                while await reader.read(MIB):
                    pass
        writer.close()

    server = await asyncio.start_server(refuse, "127.0.0.1", 0)
    try:
        port = server.sockets[0].getsockname()[1]
        gateway = await aiohttp_client(
            GatewayTestServer(Gateway(gateway_config(upstream_url=f"http://127.0.0.1:{port}")))
        )
        body = io.BytesIO(b"b" * (8 * MIB))
        response = await gateway.put("/v1/imagefile/1", data=body, skip_auto_headers={"Content-Type"})
        assert (response.status, await response.read()) == (413, b"too big!")
    finally:
        server.close()
        await server.wait_closed()


# -- ambiguous framing from the registry (issue 13 point 6) ------------------------------------------------------


def chunked_body(body: bytes, piece: int = 65536) -> bytes:
    chunks = [b"%x\r\n%s\r\n" % (len(body[i : i + piece]), body[i : i + piece]) for i in range(0, len(body), piece)]
    return b"".join(chunks) + b"0\r\n\r\n"


@pytest.mark.parametrize("size", [5, 3 * MIB], ids=["read-whole", "streamed"])
async def test_content_length_beside_chunked_is_dropped_and_the_clients_connection_stays_in_step(
    aiohttp_client: Client, size: int
) -> None:
    body = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked_body(body)
    async with RawUpstream(lambda head: answer) as upstream:
        gateway = await start_gateway(aiohttp_client, upstream)
        async with asyncio.timeout(EVENT_TIMEOUT_S):  # a bound, not a threshold: without the fix the client hangs
            for _ in range(2):  # the second answer on the same client connection proves it stayed in step
                response = await gateway.get("/v1/collections/x")
                assert response.status == 200
                assert response.headers.get("Content-Length", str(size)) == str(size)
                assert await response.read() == body
        # Nothing after such an answer can be trusted on the upstream connection: each went on a new one.
        assert upstream.connections == 2


@pytest.mark.parametrize(
    "head",
    [
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, chunked\r\n",
        b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 5\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n",
    ],
    ids=[
        "gzip-chunked",
        "gzip-then-chunked",
        "chunked-twice",
        "http10-chunked",
        "two-lengths",
        "length-list",
        "conflict",
    ],
)
async def test_ambiguous_framing_from_the_registry_is_a_502_json_error(aiohttp_client: Client, head: bytes) -> None:
    encoded = chunked_body(b"hello")
    answer = head + b"\r\n" + (encoded if b"chunked" in head else b"hello")
    async with RawUpstream(lambda request: answer) as upstream:
        gateway = await start_gateway(aiohttp_client, upstream)
        async with asyncio.timeout(EVENT_TIMEOUT_S):
            response = await gateway.get("/v1/collections/x")
            assert response.status == 502
            error = (await response.json())["error"]
        assert error["code"] == 502 and "registry sent a broken answer" in error["message"]
        assert "Content-Encoding" not in response.headers
