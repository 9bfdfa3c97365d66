"""``Expect: 100-continue`` through the gateway (RFC 9110 §10.1.1), with a raw client that really waits: the
upstream's own 100 Continue is passed on, an upstream that ignores the expectation gets the body anyway (the gateway
says continue after a second), a refusal comes back before any body is sent, and the gateway's own routes agree to
continue as aiohttp's applications do."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.test_utils import BaseTestServer

from gateway.face.handler import Gateway
from tests.support.gateway_fixtures import gateway_config
from tests.support.proxy_harness import RawUpstream

ServerFactory = Callable[..., Awaitable[BaseTestServer]]
TIMEOUT_S = 10.0
BODY = b"z" * 5000


async def gateway_port(aiohttp_server: ServerFactory, upstream_url: str) -> int:
    server = await aiohttp_server(Gateway(gateway_config(upstream_url=upstream_url)))
    assert server.port is not None
    return server.port


class WaitingClient:
    """Sends a request head with ``Expect: 100-continue`` and holds its body back until told to continue."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def connect(cls, port: int) -> WaitingClient:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer)

    async def send_head(self, method: str, path: str, length: int, *extra: str) -> None:
        lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", f"Content-Length: {length}", "Expect: 100-continue"]
        self.writer.write(("\r\n".join([*lines, *extra]) + "\r\n\r\n").encode())
        await self.writer.drain()

    async def read_head(self) -> tuple[int, dict[str, str]]:
        head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), TIMEOUT_S)
        status_line, *lines = head.decode("latin-1").split("\r\n")
        headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in lines if line)}
        return int(status_line.split()[1]), headers

    async def read_answer(self) -> tuple[int, dict[str, str], bytes]:
        status, headers = await self.read_head()
        body = await asyncio.wait_for(self.reader.readexactly(int(headers.get("content-length", "0"))), TIMEOUT_S)
        return status, headers, body

    async def close(self) -> None:
        self.writer.close()
        await self.writer.wait_closed()


def expecting_upstream(asked: list[str]) -> web.Application:
    """An aiohttp upstream: says 100 Continue itself (after noting the expectation), or refuses /refuse with 401
    before reading any body."""

    async def expectation(request: web.Request) -> web.StreamResponse | None:
        asked.append(request.headers.get("Expect", ""))
        if request.path == "/refuse":
            return web.json_response({"error": {"code": 401, "message": "no"}}, status=401)
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        return None

    async def echo(request: web.Request) -> web.Response:
        return web.Response(body=b"got:%d" % len(await request.read()))

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", echo, expect_handler=expectation)
    return app


async def test_the_upstreams_100_continue_reaches_the_client_and_the_body_goes_through(
    aiohttp_server: ServerFactory,
) -> None:
    asked: list[str] = []
    upstream = await aiohttp_server(expecting_upstream(asked))
    client = await WaitingClient.connect(await gateway_port(aiohttp_server, str(upstream.make_url(""))))
    try:
        await client.send_head("PUT", "/v1/imagefile/x", len(BODY))
        assert (await client.read_head())[0] == 100
        assert asked == ["100-continue"]  # the expectation went upstream, and the upstream's answer came back
        client.writer.write(BODY)
        status, _, body = await client.read_answer()
        assert (status, body) == (200, b"got:%d" % len(BODY))
    finally:
        await client.close()


async def test_an_upstream_refusal_comes_back_before_the_body_and_the_connection_closes(
    aiohttp_server: ServerFactory,
) -> None:
    asked: list[str] = []
    upstream = await aiohttp_server(expecting_upstream(asked))
    client = await WaitingClient.connect(await gateway_port(aiohttp_server, str(upstream.make_url(""))))
    try:
        await client.send_head("PUT", "/refuse", 10 * 1024 * 1024)
        status, headers, body = await client.read_answer()
        assert status == 401
        assert json.loads(body)["error"]["code"] == 401
        # The 10 MiB body was never sent, and will not be: this connection carries no further request.
        assert headers.get("connection", "").lower() == "close"
    finally:
        await client.close()


async def test_an_upstream_that_ignores_the_expectation_still_gets_the_body(aiohttp_server: ServerFactory) -> None:
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    async with RawUpstream(lambda head: answer) as upstream:
        client = await WaitingClient.connect(await gateway_port(aiohttp_server, upstream.url))
        try:
            await client.send_head("PUT", "/v1/imagefile/x", len(BODY))
            assert (await client.read_head())[0] == 100  # from the gateway, after waiting for the upstream's
            client.writer.write(BODY)
            assert (await client.read_answer())[::2] == (200, b"ok")
        finally:
            await client.close()
        assert upstream.requests[0].endswith(b"\r\n\r\n" + BODY)
        assert b"\r\nExpect: 100-continue\r\n" in upstream.requests[0]


async def test_the_gateways_own_routes_agree_to_continue(aiohttp_server: ServerFactory) -> None:
    answer = b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n"
    async with RawUpstream(lambda head: answer) as upstream:
        client = await WaitingClient.connect(await gateway_port(aiohttp_server, upstream.url))
        try:
            body = json.dumps({"filesize": 10}).encode()
            await client.send_head("POST", "/v2/imagefile/5/_multipart", len(body), "Authorization: Bearer t")
            assert (await client.read_head())[0] == 100
            client.writer.write(body)
            status, _, answer_body = await client.read_answer()
            # The registry (the raw upstream) refused the start: its 403, in the library's error shape.
            assert status == 403
            assert json.loads(answer_body)["error"]["code"] == 403
        finally:
            await client.close()


async def test_an_oversized_body_for_an_own_route_is_refused_before_it_is_sent(aiohttp_server: ServerFactory) -> None:
    async with RawUpstream(lambda head: b"HTTP/1.1 500 No\r\nContent-Length: 0\r\n\r\n") as upstream:
        client = await WaitingClient.connect(await gateway_port(aiohttp_server, upstream.url))
        try:
            await client.send_head("PUT", "/v2/imagefile/5/_multipart", 50 * 1024 * 1024)
            status, headers, body = await client.read_answer()
            assert status == 413
            assert json.loads(body)["error"]["code"] == 413
            assert headers.get("connection", "").lower() == "close"
        finally:
            await client.close()
        assert upstream.requests == []


async def test_an_unwanted_body_sent_without_expectation_is_drained_and_the_connection_kept(
    aiohttp_server: ServerFactory,
) -> None:
    # A client that sends its body at once must read the refusal, not a reset: aiohttp reads and drops the rest.
    async with RawUpstream(lambda head: b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok") as upstream:
        client = await WaitingClient.connect(await gateway_port(aiohttp_server, upstream.url))
        try:
            size = 2 * 1024 * 1024
            head = f"PUT /v2/imagefile/5/_multipart HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {size}\r\n\r\n"
            client.writer.write(head.encode() + b"x" * size)
            status, headers, body = await client.read_answer()
            assert status == 413
            assert headers.get("connection", "").lower() != "close"
            client.writer.write(b"GET /v1/version HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            assert (await client.read_answer())[::2] == (200, b"ok")
        finally:
            await client.close()
