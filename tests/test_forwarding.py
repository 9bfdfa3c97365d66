"""Pass-through to the registry, against a real upstream aiohttp app: what the upstream sees is what the client
sent, and what the client gets back is what the upstream answered."""

from __future__ import annotations

import json
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from yarl import URL

from gateway.app import create_app
from tests.gateway_fixtures import gateway_config

Seen = list[dict[str, Any]]


def recording_upstream(seen: Seen) -> web.Application:
    async def record(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        seen.append(
            {
                "method": request.method,
                "raw_path": request.raw_path,
                "headers": list(request.headers.items()),
                "body": body,
                "chunked": "Transfer-Encoding" in request.headers,
            }
        )
        if request.path == "/redirect/s3":
            raise web.HTTPFound("http://127.0.0.1:9/sregistry/c/n%3Asha256.ab?X-Amz-Signature=old")
        if request.path == "/redirect/self":
            raise web.HTTPFound(f"http://{request.host}/v1/other?x=1")
        if request.path == "/stream":
            response = web.StreamResponse(headers={"X-Multi": "a"})
            response.headers.add("X-Multi", "b")
            response.enable_chunked_encoding()
            await response.prepare(request)
            for i in range(5):
                await response.write(b"chunk%d;" % i)
            await response.write_eof()
            return response
        return web.Response(body=b"echo:" + body, headers={"X-Upstream": "yes", "Content-Type": "text/plain"})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", record)
    return app


Client = Callable[..., Awaitable[TestClient[web.Request, web.Application]]]


@pytest.fixture
async def gateway(aiohttp_client: Client, aiohttp_server: Callable[..., Awaitable[TestServer]]) -> Any:
    seen: Seen = []
    upstream = await aiohttp_server(recording_upstream(seen))
    client = await aiohttp_client(create_app(gateway_config(upstream_url=str(upstream.make_url("")))))
    client.seen = seen  # type: ignore[attr-defined]
    return client


async def test_method_raw_path_and_query_reach_the_upstream_unnormalised(gateway: Any) -> None:
    raw = "/v1/images/e/c/n%3Asha256.ab/../x//y?arch=amd64&a=%2F"
    response = await gateway.session.get(URL(str(gateway.make_url("")).rstrip("/") + raw, encoded=True))
    assert response.status == 200
    assert gateway.seen[0]["raw_path"] == "/v1/images/e/c/n%3Asha256.ab/../x//y?arch=amd64&a=%2F"


async def test_no_content_type_is_added_and_content_length_is_kept(gateway: Any) -> None:
    # sregistry answers 415 to a tag POST with any Content-Type, 500 to a chunked one (PROTOCOL.md G1, G2).
    body = json.dumps({"Tag": "v1", "ImageID": "42"}).encode()
    response = await gateway.post(
        "/v1/tags/7", data=body, headers={"Authorization": "BEARER tok"}, skip_auto_headers={"Content-Type"}
    )
    assert await response.read() == b"echo:" + body
    seen = gateway.seen[0]
    names = {name.lower() for name, _ in seen["headers"]}
    assert "content-type" not in names
    assert ("Content-Length", str(len(body))) in seen["headers"]
    assert not seen["chunked"]
    assert ("Authorization", "BEARER tok") in seen["headers"]


async def test_a_chunked_request_body_stays_chunked(gateway: Any) -> None:
    async def body() -> Any:
        for part in (b"a" * 1000, b"b" * 1000):
            yield part

    response = await gateway.put("/v1/imagefile/1", data=body())
    assert response.status == 200
    assert gateway.seen[0]["chunked"]
    assert gateway.seen[0]["body"] == b"a" * 1000 + b"b" * 1000


async def test_hop_by_hop_headers_are_dropped_and_forwarding_headers_added(gateway: Any) -> None:
    await gateway.get("/version", headers={"Connection": "keep-alive, X-Secret-Hop", "X-Secret-Hop": "1", "TE": "x"})
    headers = dict((name.lower(), value) for name, value in gateway.seen[0]["headers"])
    assert "x-secret-hop" not in headers and "te" not in headers
    assert headers["x-forwarded-for"] == "127.0.0.1"
    assert headers["x-forwarded-proto"] == "http"
    assert headers["host"].startswith("127.0.0.1:")


async def test_multi_valued_response_headers_and_chunked_bodies_stream_back(gateway: Any) -> None:
    response = await gateway.get("/stream")
    assert response.headers.getall("X-Multi") == ["a", "b"]
    assert await response.read() == b"chunk0;chunk1;chunk2;chunk3;chunk4;"


async def test_head_answers_without_a_body(gateway: Any) -> None:
    response = await gateway.head("/v1/images/x")
    assert response.status == 200
    assert await response.read() == b""
    assert gateway.seen[0]["method"] == "HEAD"


async def test_redirects_into_s3_are_resigned_for_the_external_endpoint(gateway: Any) -> None:
    response = await gateway.get("/redirect/s3", allow_redirects=False)
    assert response.status == 302
    location = response.headers["Location"]
    assert location.startswith("http://127.0.0.1:9/sregistry/c/n%3Asha256.ab?X-Amz-Algorithm=AWS4-HMAC-SHA256")
    assert "old" not in location and "X-Amz-Expires=3600" in location


async def test_redirects_to_the_upstream_itself_point_at_the_public_url(gateway: Any) -> None:
    response = await gateway.get("/redirect/self", allow_redirects=False)
    assert response.headers["Location"] == "http://127.0.0.1:8080/v1/other?x=1"


async def test_gateway_routes_are_never_forwarded(gateway: Any) -> None:
    health = await gateway.get("/_gateway/healthz")
    assert health.status == 200 and (await health.json())["status"] == "ok"
    missing = await gateway.get("/_gateway/nothing")
    assert missing.status == 404
    assert (await missing.json())["error"]["code"] == 404
    assert gateway.seen == []


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_an_unreachable_upstream_answers_502_json(aiohttp_client: Client) -> None:
    client = await aiohttp_client(create_app(gateway_config(upstream_url=f"http://127.0.0.1:{closed_port()}")))
    response = await client.get("/version")
    assert response.status == 502
    body = await response.json()
    assert body["error"]["code"] == 502 and "unreachable" in body["error"]["message"]


async def test_a_slow_upstream_answers_504_json(aiohttp_client: Client, aiohttp_server: Any) -> None:
    import asyncio

    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(5)
        return web.Response()

    app = web.Application()
    app.router.add_get("/slow", slow)
    upstream = await aiohttp_server(app)
    config = gateway_config(upstream_url=str(upstream.make_url("")), upstream={"read_timeout_seconds": 0.3})
    client = await aiohttp_client(create_app(config))
    response = await client.get("/slow")
    assert response.status == 504
    assert (await response.json())["error"]["code"] == 504


async def test_an_upstream_dying_mid_body_fails_the_clients_response(
    aiohttp_client: Client, aiohttp_server: Any
) -> None:
    async def dies(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Length": "1000000"})
        await response.prepare(request)
        await response.write(b"x" * 1000)
        assert request.transport is not None
        request.transport.abort()
        return response

    app = web.Application()
    app.router.add_get("/dies", dies)
    upstream = await aiohttp_server(app)
    client = await aiohttp_client(create_app(gateway_config(upstream_url=str(upstream.make_url("")))))
    response = await client.get("/dies")
    with pytest.raises(aiohttp.ClientPayloadError):
        await response.read()
