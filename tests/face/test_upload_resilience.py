"""Stateless uploads under restarts, several replicas, S3 outages and racing completes."""

from __future__ import annotations

import asyncio
import hashlib
import os
import sys
from dataclasses import replace
from typing import Any

import aiohttp
from aiohttp import web

from gateway.face.handler import Gateway
from tests.support.gateway_fixtures import GatewayTestServer, gateway_env
from tests.support.library_api import LibraryClient
from tests.support.processes import free_port
from tests.support.proxy_harness import wait_healthy
from tests.support.s3servers import RadosGW, S3Server
from tests.support.stack import MIB, stack_config, start_registry, unique_ref

FILE = os.urandom(40 * MIB + 777)  # two parts of 32 MiB, the last one short
FILE_SHA = hashlib.sha256(FILE).hexdigest()


async def start_gateway(s3: S3Server, registry_url: str, port: int | None = None) -> tuple[GatewayTestServer, str]:
    port = port or free_port()
    server = GatewayTestServer(Gateway(stack_config(s3, registry_url=registry_url, gateway_port=port)), port=port)
    await server.start_server()
    return server, f"http://127.0.0.1:{port}"


async def new_upload(client: LibraryClient) -> tuple[str, str, Any]:
    _, collection, container = unique_ref()
    image_id = await client.create_image("alice", collection, container, FILE_SHA)
    start = await client.start(image_id, len(FILE))
    assert start.status == 200, start.body
    return image_id, f"{collection}/{container}:sha256.{FILE_SHA}", start.data


async def test_a_gateway_restart_between_parts_loses_nothing(
    aiohttp_server: Any, seaweedfs: S3Server, session: aiohttp.ClientSession
) -> None:
    _, registry_url = await start_registry(aiohttp_server, seaweedfs)
    first, url = await start_gateway(seaweedfs, registry_url)
    client = LibraryClient(session, url)
    image_id, key, start = await new_upload(client)
    part1 = FILE[: 32 * MIB]
    status, etag1 = await client.put_part(
        (await client.presign(image_id, start["uploadID"], 1, part1)).data["presignedURL"], part1
    )
    assert status == 200
    port = first.port
    await first.close()  # the process is gone; nothing of the upload was in its memory
    second, _ = await start_gateway(seaweedfs, registry_url, port=port)
    try:
        part2 = FILE[32 * MIB :]
        url2 = (await client.presign(image_id, start["uploadID"], 2, part2)).data["presignedURL"]
        status, etag2 = await client.put_part(url2, part2)
        assert status == 200
        assert (await client.complete(image_id, start["uploadID"], [etag1, etag2])).status == 200
    finally:
        await second.close()
    assert seaweedfs.read_object(key) == FILE


async def test_two_replicas_with_the_same_secret_serve_alternate_steps(
    aiohttp_server: Any, seaweedfs: S3Server, session: aiohttp.ClientSession
) -> None:
    _, registry_url = await start_registry(aiohttp_server, seaweedfs)
    (one, url_one), (two, url_two) = (
        await start_gateway(seaweedfs, registry_url),
        await start_gateway(seaweedfs, registry_url),
    )
    try:
        replicas = [LibraryClient(session, url_one), LibraryClient(session, url_two)]
        image_id, key, start = await new_upload(replicas[0])
        etags = []
        for number in (1, 2):
            part = FILE[(number - 1) * 32 * MIB : number * 32 * MIB]
            presigned = await replicas[number % 2].presign(image_id, start["uploadID"], number, part)
            status, etag = await replicas[0].put_part(presigned.data["presignedURL"], part)
            assert status == 200
            etags.append(etag)
        assert (await replicas[1].complete(image_id, start["uploadID"], etags)).status == 200
    finally:
        await one.close()
        await two.close()
    assert seaweedfs.read_object(key) == FILE


async def test_s3_down_at_complete_answers_503_and_a_retry_after_it_is_back_succeeds(
    aiohttp_server: Any, radosgw: RadosGW, session: aiohttp.ClientSession
) -> None:
    _, registry_url = await start_registry(aiohttp_server, radosgw)
    gateway, url = await start_gateway(radosgw, registry_url)
    try:
        client = LibraryClient(session, url)
        image_id, key, start = await new_upload(client)
        etags = await client.upload_parts(image_id, start, FILE)
        radosgw.stop_rgw()
        try:
            # Part presigns need no S3 call: they keep working while S3 is down.
            assert (await client.presign(image_id, start["uploadID"], 1, FILE[: 32 * MIB])).status == 200
            down = await client.complete(image_id, start["uploadID"], etags)
        finally:
            radosgw.start_rgw()
        assert down.status == 503, down.body
        assert down.json["error"]["code"] == 503
        again = await client.complete(image_id, start["uploadID"], etags)
        assert again.status == 200, again.body
    finally:
        await gateway.close()
    assert radosgw.read_object(key) == FILE


async def test_two_racing_completes_leave_one_correct_object(
    aiohttp_server: Any, s3_server: S3Server, session: aiohttp.ClientSession
) -> None:
    _, registry_url = await start_registry(aiohttp_server, s3_server)
    gateway, url = await start_gateway(s3_server, registry_url)
    try:
        client = LibraryClient(session, url)
        image_id, key, start = await new_upload(client)
        etags = await client.upload_parts(image_id, start, FILE)
        first, second = await asyncio.gather(
            client.complete(image_id, start["uploadID"], etags), client.complete(image_id, start["uploadID"], etags)
        )
    finally:
        await gateway.close()
    statuses = sorted([first.status, second.status])
    assert statuses in ([200, 200], [200, 409], [200, 503]), (first.body, second.body)
    assert s3_server.read_object(key) == FILE


async def test_an_upstream_down_at_start_answers_502(seaweedfs: S3Server, session: aiohttp.ClientSession) -> None:
    gateway, url = await start_gateway(seaweedfs, f"http://127.0.0.1:{free_port()}")
    try:
        answer = await LibraryClient(session, url).start("1", len(FILE))
    finally:
        await gateway.close()
    assert answer.status == 502 and answer.json["error"]["code"] == 502


async def serve_process(s3: S3Server, registry_url: str, port: int) -> asyncio.subprocess.Process:
    config = stack_config(s3, registry_url=registry_url, gateway_port=port)
    config = replace(config, server=replace(config.server, listen=f"127.0.0.1:{port}"))
    env = gateway_env(config)
    return await asyncio.create_subprocess_exec(sys.executable, "-m", "gateway", "serve", env=env)


async def test_a_gateway_process_killed_mid_push_and_restarted_lets_the_push_complete(
    aiohttp_server: Any, seaweedfs: S3Server, session: aiohttp.ClientSession
) -> None:
    _, registry_url = await start_registry(aiohttp_server, seaweedfs)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    process = await serve_process(seaweedfs, registry_url, port)
    try:
        await wait_healthy(url)
        client = LibraryClient(session, url)
        image_id, key, start = await new_upload(client)
        part1 = FILE[: 32 * MIB]
        presigned = await client.presign(image_id, start["uploadID"], 1, part1)
        status, etag1 = await client.put_part(presigned.data["presignedURL"], part1)
        assert status == 200
        process.kill()  # SIGKILL: no graceful anything
        await process.wait()
        process = await serve_process(seaweedfs, registry_url, port)
        await wait_healthy(url)
        part2 = FILE[32 * MIB :]
        presigned = await client.presign(image_id, start["uploadID"], 2, part2)
        status, etag2 = await client.put_part(presigned.data["presignedURL"], part2)
        assert status == 200
        assert (await client.complete(image_id, start["uploadID"], [etag1, etag2])).status == 200
    finally:
        if process.returncode is None:
            process.terminate()
            await asyncio.wait_for(process.wait(), 30)
    assert process.returncode == 0  # SIGTERM: graceful exit
    assert seaweedfs.read_object(key) == FILE


async def test_a_slow_registry_at_start_answers_504_within_the_configured_timeout(
    aiohttp_server: Any, seaweedfs: S3Server, session: aiohttp.ClientSession
) -> None:
    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(10)
        return web.Response()

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", slow)
    upstream = await aiohttp_server(app)
    port = free_port()
    config = stack_config(
        seaweedfs,
        registry_url=str(upstream.make_url("")).rstrip("/"),
        gateway_port=port,
        upstream={"read_timeout_seconds": 0.5},
    )
    server = GatewayTestServer(Gateway(config), port=port)
    await server.start_server()
    try:
        answer = await LibraryClient(session, f"http://127.0.0.1:{port}").start("1", len(FILE))
    finally:
        await server.close()
    # The registry would have answered 200 after 10 s: a 504 means the configured timeout cut it short.
    assert answer.status == 504 and answer.json["error"]["code"] == 504
