"""Pass-through to the registry, against real upstream servers (aiohttp apps, or raw bytes where aiohttp would not
send the answer): what the upstream sees is what the client sent, and what the client gets is what the upstream
answered, as RFC 9110/9112 want a proxy to behave."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from multidict import CIMultiDict
from yarl import URL

from gateway.edges.forwarder import CHUNKED_BUFFER_BYTES
from gateway.face.handler import Gateway
from tests.support.gateway_fixtures import GatewayTestServer, gateway_config
from tests.support.proxy_harness import RawUpstream

Seen = list[dict[str, Any]]
Client = Callable[..., Awaitable[TestClient[web.Request, web.Application]]]
ServerFactory = Callable[..., Awaitable[TestServer]]


def recording_upstream(seen: Seen) -> web.Application:
    async def record(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        seen.append(
            {
                "method": request.method,
                "raw_path": request.raw_path,
                "headers": list(request.headers.items()),
                "raw_headers": list(request.raw_headers),
                "body": body,
                "chunked": "Transfer-Encoding" in request.headers,
            }
        )
        if request.path == "/redirect/self":
            # Named by its own address, as a registry does with DOMAIN_NAME left on it (whatever Host came in).
            host, port = request.transport.get_extra_info("sockname")[:2] if request.transport else ("", 0)
            raise web.HTTPFound(f"http://{host}:{port}/v1/other?x=1")
        if request.path == "/redirect/elsewhere":
            raise web.HTTPTemporaryRedirect("https://mirror.example.org/v1/imagefile/x")
        if request.path == "/stream":
            response = web.StreamResponse(headers={"X-Multi": "a"})
            response.headers.add("X-Multi", "b")
            response.enable_chunked_encoding()
            await response.prepare(request)
            for i in range(5):
                await response.write(b"chunk%d;" % i)
            await response.write_eof()
            return response
        if request.path == "/stream-slow":  # the body is still coming when the head is forwarded: streamed back
            response = web.StreamResponse()
            response.enable_chunked_encoding()
            await response.prepare(request)
            for i in range(3):
                await response.write(b"late%d;" % i)
                await asyncio.sleep(0.05)
            await response.write_eof()
            return response
        if request.path == "/headers":
            headers = CIMultiDict([("Set-Cookie", "a=1"), ("x-ODD-casing", "Yes"), ("Set-Cookie", "b=2")])
            return web.Response(body=b"ok", headers=headers)
        if request.path == "/no-content":
            return web.Response(status=204)
        if request.path == "/not-modified":
            return web.Response(status=304, headers={"ETag": '"v1"'})
        return web.Response(body=b"echo:" + body, headers={"X-Upstream": "yes", "Content-Type": "text/plain"})

    app = web.Application(client_max_size=16 * 1024 * 1024)
    app.router.add_route("*", "/{tail:.*}", record)
    return app


async def start_gateway(aiohttp_client: Client, upstream_url: str, **sections: Any) -> Any:
    return await aiohttp_client(GatewayTestServer(Gateway(gateway_config(upstream_url=upstream_url, **sections))))


@pytest.fixture
async def gateway(aiohttp_client: Client, aiohttp_server: ServerFactory) -> Any:
    seen: Seen = []
    upstream = await aiohttp_server(recording_upstream(seen))
    client = await start_gateway(aiohttp_client, str(upstream.make_url("")))
    client.seen = seen
    return client


def headers_seen(gateway: Any) -> dict[str, str]:
    return {name.lower(): value for name, value in gateway.seen[0]["headers"]}


async def test_method_raw_path_and_query_reach_the_upstream_unnormalised(gateway: Any) -> None:
    raw = "/v1/images/e/c/n%3Asha256.ab/../x//y?arch=amd64&a=%2F"
    response = await gateway.session.get(URL(str(gateway.make_url("")).rstrip("/") + raw, encoded=True))
    assert response.status == 200
    assert gateway.seen[0]["raw_path"] == "/v1/images/e/c/n%3Asha256.ab/../x//y?arch=amd64&a=%2F"


async def test_no_content_type_is_added_and_content_length_is_kept(gateway: Any) -> None:
    # sregistry answers 415 to a tag POST with any Content-Type, 500 to a chunked one (docs/protocol.md G1, G2).
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


async def test_a_sized_body_above_the_small_limit_keeps_its_content_length(gateway: Any) -> None:
    body = b"x" * (300 * 1024)
    response = await gateway.put("/v1/imagefile/1", data=body, skip_auto_headers={"Content-Type"})
    assert response.status == 200
    assert gateway.seen[0]["body"] == body
    assert not gateway.seen[0]["chunked"]
    assert ("Content-Length", str(len(body))) in gateway.seen[0]["headers"]


async def chunks(*parts: bytes) -> Any:
    for part in parts:
        yield part


@pytest.mark.parametrize("expect100", [False, True])
async def test_a_small_chunked_request_body_goes_up_with_a_content_length(gateway: Any, expect100: bool) -> None:
    # uWSGI reads a chunked body as empty (docs/protocol.md G2); curl -T - also sends Expect: 100-continue.
    response = await gateway.put("/v1/tags/1", data=chunks(b"a" * 1000, b"b" * 1000), expect100=expect100)
    assert response.status == 200
    assert await response.read() == b"echo:" + b"a" * 1000 + b"b" * 1000
    assert not gateway.seen[0]["chunked"]
    assert ("Content-Length", "2000") in gateway.seen[0]["headers"]


async def test_a_chunked_request_body_above_the_buffer_stays_chunked(gateway: Any) -> None:
    big = b"c" * (CHUNKED_BUFFER_BYTES // 2)
    response = await gateway.put("/v1/imagefile/1", data=chunks(big, big, b"d"))
    assert response.status == 200
    assert gateway.seen[0]["chunked"]
    assert gateway.seen[0]["body"] == big + big + b"d"
    assert "content-length" not in {name.lower() for name, _ in gateway.seen[0]["headers"]}


async def test_a_chunked_body_of_exactly_the_buffer_size_goes_up_sized(gateway: Any) -> None:
    body = b"e" * CHUNKED_BUFFER_BYTES
    response = await gateway.put("/v1/imagefile/1", data=chunks(body[:1000], body[1000:]))
    assert response.status == 200
    assert not gateway.seen[0]["chunked"] and gateway.seen[0]["body"] == body


async def test_request_headers_keep_their_order_multiplicity_and_casing(gateway: Any) -> None:
    headers = CIMultiDict([("X-Multi", "1"), ("x-ODD-casing", "Value"), ("X-Multi", "2"), ("Accept", "a/b")])
    await gateway.get("/version", headers=headers)
    wanted = {b"x-multi", b"x-odd-casing"}
    sent = [(name, value) for name, value in gateway.seen[0]["raw_headers"] if name.lower() in wanted]
    assert sent == [(b"X-Multi", b"1"), (b"x-ODD-casing", b"Value"), (b"X-Multi", b"2")]


async def test_response_headers_keep_their_order_multiplicity_and_casing(gateway: Any) -> None:
    response = await gateway.get("/headers")
    passed = [(name, value) for name, value in response.raw_headers if name.lower() in {b"set-cookie", b"x-odd-casing"}]
    assert passed == [(b"Set-Cookie", b"a=1"), (b"x-ODD-casing", b"Yes"), (b"Set-Cookie", b"b=2")]


async def test_hop_by_hop_request_headers_and_those_named_in_connection_are_dropped(gateway: Any) -> None:
    hop = {
        "Connection": "keep-alive, X-Secret-Hop",
        "X-Secret-Hop": "1",
        "Keep-Alive": "timeout=5",
        "TE": "trailers",
        "Trailer": "X-Checksum",
        "Proxy-Authorization": "Basic c2VjcmV0",
        "Proxy-Connection": "keep-alive",
        "X-Kept": "yes",
    }
    await gateway.get("/version", headers=hop)
    headers = headers_seen(gateway)
    for name in ("x-secret-hop", "keep-alive", "te", "trailer", "proxy-authorization", "proxy-connection"):
        assert name not in headers, name
    assert headers.get("connection") in (None, "keep-alive")
    assert headers["x-kept"] == "yes"


async def test_hop_by_hop_response_headers_are_dropped(aiohttp_client: Client) -> None:
    answer = (
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: X-Hop-Answer\r\nX-Hop-Answer: 1\r\n"
        b"Keep-Alive: timeout=5\r\nProxy-Authenticate: Basic\r\nTrailer: X-Sum\r\nUpgrade: h2c\r\n"
        b"X-Kept: yes\r\n\r\nok"
    )
    async with RawUpstream(lambda head: answer) as upstream:
        gateway = await start_gateway(aiohttp_client, upstream.url)
        response = await gateway.get("/version")
        assert await response.read() == b"ok"
    for name in ("X-Hop-Answer", "Keep-Alive", "Proxy-Authenticate", "Trailer", "Upgrade"):
        assert name not in response.headers, name
    assert response.headers["X-Kept"] == "yes"


async def test_an_untrusted_peers_forwarding_headers_are_replaced(gateway: Any) -> None:
    spoofed = {
        "X-Forwarded-For": "6.6.6.6",
        "X-Forwarded-Proto": "https",
        "X-Forwarded-Host": "evil.example",
        "Forwarded": "for=6.6.6.6",
    }
    await gateway.get("/version", headers=spoofed)
    headers = headers_seen(gateway)
    assert headers["x-forwarded-for"] == "127.0.0.1"
    assert headers["x-forwarded-proto"] == "http"
    assert headers["x-forwarded-host"].startswith("127.0.0.1:")
    assert headers["forwarded"].startswith('for=127.0.0.1;host="127.0.0.1:') and headers["forwarded"].endswith(
        ";proto=http"
    )
    assert "6.6.6.6" not in json.dumps(gateway.seen[0]["headers"])


async def test_a_trusted_proxys_forwarding_headers_are_extended(aiohttp_client: Client, aiohttp_server: Any) -> None:
    seen: Seen = []
    upstream = await aiohttp_server(recording_upstream(seen))
    gateway = await start_gateway(
        aiohttp_client, str(upstream.make_url("")), server={"trusted_proxies": ["127.0.0.0/8"]}
    )
    await gateway.get(
        "/version",
        headers={
            "X-Forwarded-For": "203.0.113.7",
            "X-Forwarded-Proto": "https",
            "X-Forwarded-Host": "registry.example.org",
            "Forwarded": 'for=203.0.113.7;host="registry.example.org";proto=https',
        },
    )
    headers = {name.lower(): value for name, value in seen[0]["headers"]}
    assert headers["x-forwarded-for"] == "203.0.113.7, 127.0.0.1"
    assert headers["x-forwarded-proto"] == "https"
    assert headers["x-forwarded-host"] == "registry.example.org"
    assert headers["forwarded"].startswith('for=203.0.113.7;host="registry.example.org";proto=https, for=127.0.0.1;')


async def test_forwarded_carries_the_chain_a_trusted_proxy_sent_in_x_forwarded_for(
    aiohttp_client: Client, aiohttp_server: Any
) -> None:
    # nginx (deploy/nginx) sends X-Forwarded-For only; Forwarded must name the same hops.
    seen: Seen = []
    upstream = await aiohttp_server(recording_upstream(seen))
    gateway = await start_gateway(
        aiohttp_client, str(upstream.make_url("")), server={"trusted_proxies": ["127.0.0.0/8"]}
    )
    await gateway.get(
        "/version",
        headers={
            "X-Forwarded-For": "203.0.113.7, 2001:db8::1,not-an-address",
            "X-Forwarded-Proto": "https",
            "X-Forwarded-Host": "registry.example.org",
        },
    )
    headers = {name.lower(): value for name, value in seen[0]["headers"]}
    assert headers["x-forwarded-for"] == "203.0.113.7, 2001:db8::1,not-an-address, 127.0.0.1"
    assert headers["forwarded"].startswith(
        'for=203.0.113.7, for="[2001:db8::1]", for=unknown;host="registry.example.org";proto=https, for=127.0.0.1;'
    )


@pytest.mark.parametrize("forward_host", ["upstream", "client"])
async def test_host_is_the_upstreams_or_the_clients_as_configured(
    aiohttp_client: Client, aiohttp_server: Any, forward_host: str
) -> None:
    seen: Seen = []
    upstream = await aiohttp_server(recording_upstream(seen))
    gateway = await start_gateway(aiohttp_client, str(upstream.make_url("")), upstream={"forward_host": forward_host})
    await gateway.get("/version", headers={"Host": "registry.example.org"})
    hosts = [value for name, value in seen[0]["headers"] if name.lower() == "host"]
    assert hosts == (["registry.example.org"] if forward_host == "client" else [f"127.0.0.1:{upstream.port}"])


async def test_multi_valued_response_headers_and_chunked_bodies_stream_back(gateway: Any) -> None:
    response = await gateway.get("/stream")
    assert response.headers.getall("X-Multi") == ["a", "b"]
    assert await response.read() == b"chunk0;chunk1;chunk2;chunk3;chunk4;"


async def test_head_answers_without_a_body(gateway: Any) -> None:
    response = await gateway.head("/v1/images/x")
    assert response.status == 200
    assert await response.read() == b""
    assert gateway.seen[0]["method"] == "HEAD"


@pytest.mark.parametrize(("path", "status"), [("/no-content", 204), ("/not-modified", 304)])
async def test_204_and_304_answers_carry_no_body_and_the_connection_stays_usable(
    gateway: Any, path: str, status: int
) -> None:
    response = await gateway.get(path)
    assert response.status == status
    assert await response.read() == b""
    follow_up = await gateway.get("/version")
    assert await follow_up.read() == b"echo:"


async def test_expect_100_continue_gets_the_body_through(gateway: Any) -> None:
    body = b"y" * 100_000
    response = await gateway.put("/v1/imagefile/1", data=body, expect100=True, skip_auto_headers={"Content-Type"})
    assert response.status == 200
    assert await response.read() == b"echo:" + body
    assert gateway.seen[0]["body"] == body


async def test_ranges_pass_through_as_206_with_content_range(
    aiohttp_client: Client, aiohttp_server: Any, tmp_path: Path
) -> None:
    image = tmp_path / "image.sif"
    image.write_bytes(bytes(range(256)) * 4096)

    async def file(request: web.Request) -> web.FileResponse:
        return web.FileResponse(image)

    app = web.Application()
    app.router.add_get("/image", file)
    upstream = await aiohttp_server(app)
    gateway = await start_gateway(aiohttp_client, str(upstream.make_url("")))
    response = await gateway.get("/image", headers={"Range": "bytes=1000-1999"})
    assert response.status == 206
    assert response.headers["Content-Range"] == f"bytes 1000-1999/{256 * 4096}"
    assert await response.read() == image.read_bytes()[1000:2000]
    unsatisfiable = await gateway.get("/image", headers={"Range": f"bytes={10**9}-"})
    assert unsatisfiable.status == 416


async def test_redirects_are_not_followed_and_foreign_locations_stay_as_they_are(gateway: Any) -> None:
    response = await gateway.get("/redirect/elsewhere", allow_redirects=False)
    assert response.status == 307
    assert response.headers["Location"] == "https://mirror.example.org/v1/imagefile/x"
    assert len(gateway.seen) == 1


# Redirects into S3 are re-signed only on the download route, when the registry signed them: test_location_resigning.py.


async def test_redirects_to_the_upstream_itself_point_at_the_public_url(gateway: Any) -> None:
    response = await gateway.get("/redirect/self", allow_redirects=False)
    assert response.headers["Location"] == "http://127.0.0.1:8080/v1/other?x=1"


async def test_an_answer_framed_by_the_connection_end_streams_back_whole(aiohttp_client: Client) -> None:
    answer = b"HTTP/1.0 200 OK\r\nX-Old: yes\r\n\r\n" + b"z" * 500_000
    async with RawUpstream(lambda head: answer, close_after=True) as up:
        gateway = await start_gateway(aiohttp_client, up.url)
        for _ in range(2):
            response = await gateway.get("/page")
            assert response.status == 200
            assert await response.read() == b"z" * 500_000
    assert up.connections == 2


async def test_interim_1xx_answers_are_skipped(aiohttp_client: Client) -> None:
    answer = b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\ndone"
    async with RawUpstream(lambda head: answer) as upstream:
        gateway = await start_gateway(aiohttp_client, upstream.url)
        response = await gateway.get("/version")
        assert (response.status, await response.read()) == (200, b"done")


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 2000 OK\r\n\r\n",
        b"ICY 200 OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length : 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2, 3\r\n\r\nok",
    ],
    ids=["status", "protocol", "space-before-colon", "conflicting-length"],
)
async def test_a_malformed_upstream_answer_is_a_502(aiohttp_client: Client, answer: bytes) -> None:
    async with RawUpstream(lambda head: answer) as upstream:
        gateway = await start_gateway(aiohttp_client, upstream.url)
        response = await gateway.get("/version")
        assert response.status == 502
        assert (await response.json())["error"]["code"] == 502


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
    client = await start_gateway(aiohttp_client, f"http://127.0.0.1:{closed_port()}")
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
    client = await start_gateway(
        aiohttp_client, str(upstream.make_url("")), upstream={"first_byte_timeout_seconds": 0.3}
    )
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
    client = await start_gateway(aiohttp_client, str(upstream.make_url("")))
    response = await client.get("/dies")
    with pytest.raises(aiohttp.ClientPayloadError):
        await response.read()


@pytest.mark.parametrize(("method", "path"), [("GET", "/stream-slow"), ("GET", "/no-content"), ("HEAD", "/headers")])
async def test_answers_sent_before_their_end_is_known_carry_the_request_id_too(
    gateway: Any, method: str, path: str
) -> None:
    reply = await gateway.request(method, path, headers={"X-Request-Id": "trace-42"})
    await reply.read()
    assert reply.headers.get("X-Request-Id") == "trace-42"
