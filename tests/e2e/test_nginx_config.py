"""The production nginx config (deploy/nginx/templates), run for real on loopback in front of stand-ins.

Small aiohttp apps stand in for two gateway replicas and MinIO and record what nginx sends them; the full path
through the real gateway, registry and S3 with the real client is an end-to-end test of its own.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import ssl
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from tests.support.nginx_harness import NginxProcess, render_and_start_nginx
from tests.support.processes import LOOPBACK, free_port

pytestmark = pytest.mark.asyncio(loop_scope="module")

MIB = 1024 * 1024
LARGE_BODY = 64 * MIB
OUTSIDER = "127.0.0.2"  # another loopback address, outside the internal networks nginx is rendered with
STEP_TIMEOUT_S = 60.0
SPOOLED = "buffered to a temporary file"  # nginx's [warn] when it writes a request or response body to disk


@dataclass(slots=True)
class Seen:
    """One request as a stand-in received it."""

    server: str
    method: str
    raw_path: str
    version: tuple[int, int]
    headers: CIMultiDict[str]
    peer_port: int
    body_bytes: int = 0
    body_sha256: str = ""


@dataclass(slots=True)
class Recorder:
    requests: list[Seen] = field(default_factory=list)
    # raw path -> set once the first body bytes of a request to that path arrive upstream
    body_started: dict[str, asyncio.Event] = field(default_factory=dict)

    def seen(self, raw_path: str) -> list[Seen]:
        return [request for request in self.requests if request.raw_path == raw_path]


@dataclass(frozen=True, slots=True)
class StandIns:
    recorder: Recorder
    gateways: dict[str, str]  # name -> host:port
    minio: str


def stand_in_app(name: str, recorder: Recorder) -> web.Application:
    async def handle(request: web.Request) -> web.StreamResponse:
        peer = request.transport.get_extra_info("peername") if request.transport else None
        seen = Seen(
            name,
            request.method,
            request.raw_path,
            request.version,
            CIMultiDict(request.headers),
            peer[1] if peer else 0,
        )
        recorder.requests.append(seen)
        digest = hashlib.sha256()
        async for chunk in request.content.iter_any():
            if seen.body_bytes == 0 and request.raw_path in recorder.body_started:
                recorder.body_started[request.raw_path].set()
            seen.body_bytes += len(chunk)
            digest.update(chunk)
        seen.body_sha256 = digest.hexdigest()
        if request.method == "GET" and request.path == "/download":
            return await stream_download(request, int(request.query["size"]))
        return web.json_response({"server": name, "bytes": seen.body_bytes, "sha256": seen.body_sha256})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    return app


def download_block() -> bytes:
    return hashlib.sha256(b"download").digest() * (MIB // 32)


async def stream_download(request: web.Request, size: int) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
    response.content_length = size
    await response.prepare(request)
    block = download_block()
    for _ in range(size // len(block)):
        await response.write(block)
    await response.write_eof()
    return response


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def stand_ins() -> AsyncIterator[StandIns]:
    recorder = Recorder()
    runners: list[web.AppRunner] = []
    addresses: dict[str, str] = {}
    try:
        for name in ("gateway-a", "gateway-b", "minio"):
            runner = web.AppRunner(stand_in_app(name, recorder), access_log=None)
            await runner.setup()
            runners.append(runner)
            await web.TCPSite(runner, LOOPBACK, 0).start()
            addresses[name] = f"{LOOPBACK}:{runner.addresses[0][1]}"
        minio = addresses.pop("minio")
        yield StandIns(recorder, addresses, minio)
    finally:
        for runner in runners:
            await runner.cleanup()


def start_nginx(tmp_dir: Path, stand_ins: StandIns, *, tls: bool) -> NginxProcess:
    return render_and_start_nginx(
        tmp_dir,
        gateway_servers=list(stand_ins.gateways.values()),
        minio_upstream=stand_ins.minio,
        listen_port=free_port(),
        minio_listen_port=free_port(),
        tls=tls,
        internal_networks=[LOOPBACK],
    )


@pytest.fixture(scope="module")
def nginx(stand_ins: StandIns, tmp_path_factory: pytest.TempPathFactory) -> Iterator[NginxProcess]:
    process = start_nginx(tmp_path_factory.mktemp("nginx"), stand_ins, tls=False)
    try:
        yield process
    finally:
        process.stop()


def unique_path(prefix: str) -> str:
    return f"{prefix}/{os.urandom(6).hex()}"


def session(*, source: str = LOOPBACK, ssl_context: ssl.SSLContext | None = None) -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(local_addr=(source, 0), ssl=ssl_context if ssl_context else True)
    return aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=STEP_TIMEOUT_S))


def server_url(nginx: NginxProcess, server: str) -> str:
    return nginx.url if server == "registry" else nginx.minio_url


def raw_url(base: str, raw_path: str) -> URL:
    """A URL sent exactly as written: no re-quoting, no merged slashes."""
    return URL(base + raw_path, encoded=True)


async def test_requests_are_spread_over_every_gateway_replica(nginx: NginxProcess, stand_ins: StandIns) -> None:
    path = unique_path("/v1/images/entity/collection")
    async with session() as client:
        for _ in range(6):
            async with client.get(nginx.url + path) as response:
                assert response.status == 200
    assert {seen.server for seen in stand_ins.recorder.seen(path)} == set(stand_ins.gateways)


async def test_connections_to_the_replicas_are_kept_alive(nginx: NginxProcess, stand_ins: StandIns) -> None:
    path = unique_path("/v1/containers/entity/collection")
    async with session() as client:
        for _ in range(6):
            async with client.get(nginx.url + path) as response:
                assert response.status == 200
    seen = stand_ins.recorder.seen(path)
    assert all(request.version == (1, 1) and "Connection" not in request.headers for request in seen)
    for replica in stand_ins.gateways:
        ports = [request.peer_port for request in seen if request.server == replica]
        assert len(set(ports)) < len(ports), f"{replica}: a new upstream connection for every request"


async def test_the_gateway_learns_the_client_address_scheme_and_host(nginx: NginxProcess, stand_ins: StandIns) -> None:
    path = unique_path("/version")
    headers = {"Host": "registry.example.test", "X-Forwarded-For": "203.0.113.9", "Forwarded": "for=203.0.113.9"}
    async with session() as client, client.get(nginx.url + path, headers=headers) as response:
        assert response.status == 200
    (seen,) = stand_ins.recorder.seen(path)
    assert seen.headers["Host"] == "registry.example.test"
    assert seen.headers["X-Forwarded-For"] == LOOPBACK  # the client's own claim is not passed on
    assert seen.headers["X-Forwarded-Proto"] == "http"
    assert seen.headers["X-Forwarded-Host"] == "registry.example.test"
    assert "Forwarded" not in seen.headers  # the gateway derives it from X-Forwarded-For
    assert re.fullmatch(r"[0-9a-f]{32}", seen.headers["X-Request-Id"])


@pytest.mark.parametrize("server", ["registry", "minio"])
async def test_the_raw_request_line_reaches_the_upstream_unchanged(
    nginx: NginxProcess, stand_ins: StandIns, server: str
) -> None:
    raw = unique_path("/sregistry/collection") + "/big%3Asha256.0a1b?partNumber=1&uploadId=a%2Fb%3D%3D&X-Amz-Date=x"
    async with session() as client:
        async with client.put(raw_url(server_url(nginx, server), raw), data=b"part") as r:
            assert r.status == 200
    (seen,) = stand_ins.recorder.seen(raw)
    assert seen.method == "PUT"
    assert seen.body_bytes == 4


@pytest.mark.parametrize("host", ["s3.example.test:9000", "s3.example.test"])
async def test_the_minio_server_passes_the_signed_host_header_unchanged(
    nginx: NginxProcess, stand_ins: StandIns, host: str
) -> None:
    path = unique_path("/sregistry/host-check")
    async with session() as client, client.put(nginx.minio_url + path, data=b"x", headers={"Host": host}) as response:
        assert response.status == 200
    (seen,) = stand_ins.recorder.seen(path)
    assert seen.server == "minio"
    assert seen.headers["Host"] == host


@pytest.mark.parametrize("server", ["registry", "minio"])
async def test_a_large_upload_streams_through_unbuffered_with_its_content_length(
    nginx: NginxProcess, stand_ins: StandIns, server: str
) -> None:
    path = unique_path("/upload")
    started = stand_ins.recorder.body_started[path] = asyncio.Event()
    block = os.urandom(MIB)
    expected = hashlib.sha256(block * (LARGE_BODY // MIB)).hexdigest()

    async def body() -> AsyncIterator[bytes]:
        yield block
        # Streaming means the upstream has these bytes while the client still holds the rest; nginx buffering
        # the body first would wait for all of it, and this wait would time out.
        await asyncio.wait_for(started.wait(), STEP_TIMEOUT_S)
        for _ in range(LARGE_BODY // MIB - 1):
            yield block

    headers = {"Content-Length": str(LARGE_BODY), "Content-Type": "application/octet-stream"}
    async with session() as client, client.put(server_url(nginx, server) + path, data=body(), headers=headers) as r:
        assert r.status == 200
        answer = await r.json()
    (seen,) = stand_ins.recorder.seen(path)
    assert seen.headers.get("Content-Length") == str(LARGE_BODY)
    assert "Transfer-Encoding" not in seen.headers
    assert (answer["bytes"], answer["sha256"]) == (LARGE_BODY, expected)
    assert SPOOLED not in nginx.error_log_text()


@pytest.mark.parametrize("server", ["registry", "minio"])
async def test_a_large_download_streams_back_with_its_content_length(
    nginx: NginxProcess, stand_ins: StandIns, server: str
) -> None:
    digest = hashlib.sha256()
    received = 0
    async with session() as client:
        async with client.get(server_url(nginx, server) + f"/download?size={LARGE_BODY}") as response:
            assert response.status == 200
            assert response.headers["Content-Length"] == str(LARGE_BODY)
            async for chunk in response.content.iter_any():
                received += len(chunk)
                digest.update(chunk)
    assert received == LARGE_BODY
    assert digest.hexdigest() == hashlib.sha256(download_block() * (LARGE_BODY // MIB)).hexdigest()
    assert SPOOLED not in nginx.error_log_text()


@pytest.mark.parametrize(
    "path", ["/_gateway/metrics", "/_gateway/readyz", "/_gateway/healthz", "/%5Fgateway/metrics", "//_gateway/readyz"]
)
async def test_gateway_routes_are_refused_to_addresses_outside_the_internal_networks(
    nginx: NginxProcess, stand_ins: StandIns, path: str
) -> None:
    before = len(stand_ins.recorder.requests)
    async with session(source=OUTSIDER) as client, client.get(raw_url(nginx.url, path)) as response:
        assert response.status == 403
    assert len(stand_ins.recorder.requests) == before


async def test_gateway_routes_answer_addresses_inside_the_internal_networks(
    nginx: NginxProcess, stand_ins: StandIns
) -> None:
    async with session(source=LOOPBACK) as client:
        for path in ("/_gateway/metrics", "/_gateway/readyz"):
            async with client.get(nginx.url + path) as response:
                assert response.status == 200
            assert stand_ins.recorder.seen(path)[-1].server in stand_ins.gateways


async def test_clients_outside_the_internal_networks_use_the_registry_normally(
    nginx: NginxProcess, stand_ins: StandIns
) -> None:
    path = unique_path("/v1/token-status")
    async with session(source=OUTSIDER) as client, client.get(nginx.url + path) as response:
        assert response.status == 200
    (seen,) = stand_ins.recorder.seen(path)
    assert seen.headers["X-Forwarded-For"] == OUTSIDER


async def test_tls_is_terminated_with_current_protocols_and_hsts(stand_ins: StandIns, tmp_path: Path) -> None:
    tls_nginx = start_nginx(tmp_path, stand_ins, tls=True)
    try:
        assert tls_nginx.ca_file is not None
        context = ssl.create_default_context(cafile=str(tls_nginx.ca_file))
        path = unique_path("/v1/images/entity/collection")
        upload = unique_path("/sregistry/collection")
        async with session(ssl_context=context) as client:
            async with client.get(tls_nginx.url + path) as response:
                assert response.status == 200
                assert response.headers["Strict-Transport-Security"].startswith("max-age=")
            headers = {"Host": "s3.example.test"}
            async with client.put(tls_nginx.minio_url + upload, data=b"part", headers=headers) as response:
                assert response.status == 200
        _, writer = await asyncio.open_connection(LOOPBACK, tls_nginx.listen_port, ssl=context)
        try:
            assert writer.get_extra_info("ssl_object").version() in ("TLSv1.2", "TLSv1.3")
        finally:
            writer.close()
            await writer.wait_closed()
        (seen,) = stand_ins.recorder.seen(path)
        assert seen.headers["X-Forwarded-Proto"] == "https"
        (uploaded,) = stand_ins.recorder.seen(upload)
        assert uploaded.headers["Host"] == "s3.example.test"
    finally:
        tls_nginx.stop()
