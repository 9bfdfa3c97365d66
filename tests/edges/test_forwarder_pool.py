"""Pooled keep-alive connections to the upstream: reused, limited, and never the cause of a failed request when
the upstream left one dead (uWSGI after an unread body) or out of step (a HEAD answered with a body) -- both
against the sregistry fake, which emulates these two behaviours of the real server."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from multidict import CIMultiDict

from gateway.core.errors import UpstreamTimeout
from gateway.core.request_context import REQUEST_ID
from gateway.face.handler import Gateway
from tests.support.gateway_fixtures import GatewayTestServer, gateway_config
from tests.support.proxy_harness import RawUpstream
from tests.support.registry import REQUEST_LOG, RegistrySettings, make_registry_app

Client = Callable[..., Awaitable[TestClient[web.Request, web.Application]]]
ServerFactory = Callable[..., Awaitable[TestServer]]


async def registry_and_gateway(
    aiohttp_server: ServerFactory, aiohttp_client: Client, **settings: Any
) -> tuple[web.Application, Any]:
    registry = make_registry_app(RegistrySettings(flavour="selfhosted", **settings))
    server = await aiohttp_server(registry)
    gateway = await aiohttp_client(GatewayTestServer(Gateway(gateway_config(upstream_url=str(server.make_url(""))))))
    return registry, gateway


async def test_a_pooled_connection_uwsgi_left_dead_is_retried_on_a_fresh_one(
    aiohttp_server: ServerFactory, aiohttp_client: Client
) -> None:
    registry, gateway = await registry_and_gateway(aiohttp_server, aiohttp_client, close_after_unread_body=True)
    assert (await gateway.get("/version")).status == 200
    # A 404 whose body the view never read: uWSGI --http-socket drops this connection silently afterwards.
    unread = await gateway.post("/v1/no-such-route", data=b"x" * 100)
    assert unread.status == 404
    after_get = await gateway.get("/version")
    after_post = await gateway.post("/v1/no-such-route", data=b"y" * 100)
    assert after_get.status == 200 and (await after_get.json())["data"]["apiVersion"]
    assert after_post.status == 404
    log = registry[REQUEST_LOG]
    resets = [record for record in log if record.reset]
    assert resets, "the gateway never met a dead connection: the test proves nothing"
    answered = [(record.method, record.path, record.status) for record in log if not record.reset]
    assert answered == [
        ("GET", "/version", 200),
        ("POST", "/v1/no-such-route", 404),
        ("GET", "/version", 200),
        ("POST", "/v1/no-such-route", 404),
    ]


async def test_a_large_body_never_rides_a_connection_that_may_be_dead(
    aiohttp_server: ServerFactory, aiohttp_client: Client
) -> None:
    registry, gateway = await registry_and_gateway(aiohttp_server, aiohttp_client, close_after_unread_body=True)
    assert (await gateway.post("/v1/no-such-route", data=b"x" * 100)).status == 404
    # Too large to keep for a replay (it streams), so it goes on a fresh connection.
    big = await gateway.post("/v1/no-such-route", data=b"z" * (512 * 1024))
    assert big.status == 404
    assert not [record for record in registry[REQUEST_LOG] if record.reset and record.method == "POST"]


async def test_a_head_answered_with_a_body_does_not_poison_the_next_request(
    aiohttp_server: ServerFactory, aiohttp_client: Client
) -> None:
    registry, gateway = await registry_and_gateway(aiohttp_server, aiohttp_client)
    expected = await (await gateway.get("/version")).read()
    for _ in range(3):
        head = await gateway.head("/version")
        assert head.status == 200
        assert await head.read() == b""
        assert head.headers["Content-Length"] == str(len(expected))
        follow_up = await gateway.get("/version")
        assert (follow_up.status, await follow_up.read()) == (200, expected)
    heads = [record for record in registry[REQUEST_LOG] if record.method == "HEAD"]
    assert len(heads) == 3 and all("Connection" not in record.headers for record in heads)


def peer_recording_upstream(peers: list[tuple[str, int]], active: list[int], delay_s: float = 0.0) -> web.Application:
    async def answer(request: web.Request) -> web.Response:
        assert request.transport is not None
        peers.append(request.transport.get_extra_info("peername"))
        active[0] += 1
        active[1] = max(active[1], active[0])
        try:
            await asyncio.sleep(delay_s)
        finally:
            active[0] -= 1
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/{tail:.*}", answer)
    return app


async def test_sequential_requests_reuse_one_upstream_connection(
    aiohttp_server: ServerFactory, aiohttp_client: Client
) -> None:
    peers: list[tuple[str, int]] = []
    upstream = await aiohttp_server(peer_recording_upstream(peers, [0, 0]))
    gateway = await aiohttp_client(GatewayTestServer(Gateway(gateway_config(upstream_url=str(upstream.make_url(""))))))
    for _ in range(20):
        response = await gateway.get("/version", headers={"Connection": "close"})
        assert await response.text() == "ok"
    assert len(peers) == 20 and len(set(peers)) == 1


async def test_concurrent_requests_beyond_the_pool_size_wait_for_a_connection(
    aiohttp_server: ServerFactory, aiohttp_client: Client
) -> None:
    peers: list[tuple[str, int]] = []
    active = [0, 0]
    upstream = await aiohttp_server(peer_recording_upstream(peers, active, delay_s=0.1))
    config = gateway_config(upstream_url=str(upstream.make_url("")), upstream={"pool_size": 2})
    gateway = await aiohttp_client(GatewayTestServer(Gateway(config)))

    async def one() -> int:
        response = await gateway.get("/version")
        await response.read()
        return int(response.status)

    assert await asyncio.gather(*(one() for _ in range(8))) == [200] * 8
    assert active[1] == 2
    assert len(set(peers)) == 2


# -- the registry's own calls (issue 15: one pool to the registry) -----------------------------------------------


def json_answer(head: bytes) -> bytes:
    return b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 15\r\n\r\n{"data":"here"}'


async def test_the_registrys_own_calls_ride_the_forwarders_pooled_connection(aiohttp_client: Client) -> None:
    async with RawUpstream(json_answer) as upstream:
        gateway = Gateway(gateway_config(upstream_url=upstream.url))
        client = await aiohttp_client(GatewayTestServer(gateway))
        assert (await client.get("/version")).status == 200
        REQUEST_ID.set("call-1")
        headers = CIMultiDict({"Authorization": "Bearer t", "X-Forwarded-For": "10.0.0.7"})
        answer = await gateway.router.registry.call("POST", "/v2/imagefile/5", headers=headers, body=b"{}")
        assert (answer.status, answer.json) == (200, {"data": "here"})
        assert (await client.get("/version")).status == 200
        # One connection for all three: the registry's calls share the forwarder's pool (upstream.pool_size).
        assert upstream.connections == 1
        authority = upstream.url.removeprefix("http://").encode()
        assert upstream.requests[1] == (
            b"POST /v2/imagefile/5 HTTP/1.1\r\nHost: " + authority + b"\r\nAuthorization: Bearer t\r\n"
            b"X-Forwarded-For: 10.0.0.7\r\nX-Request-Id: call-1\r\nContent-Length: 2\r\n\r\n{}"
        )


async def test_a_registry_call_left_unanswered_times_out_as_the_registrys_timeout(aiohttp_client: Client) -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(65536)
        await reader.read(65536)  # until the gateway gives up and closes
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    try:
        port = server.sockets[0].getsockname()[1]
        config = gateway_config(upstream_url=f"http://127.0.0.1:{port}", upstream={"read_timeout_seconds": 0.5})
        gateway = Gateway(config)
        await aiohttp_client(GatewayTestServer(gateway))
        with pytest.raises(UpstreamTimeout):
            await gateway.router.registry.call("GET", "/version", headers=CIMultiDict(), body=b"")
        assert gateway.router.forwarder.pool.counted == 0  # the silent connection was dropped
    finally:
        server.close()
        await server.wait_closed()
