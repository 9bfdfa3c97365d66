"""Hostile clients on the client side of the gateway (issue 13, points 4 and 5): a client trickling its request head
(slowloris), more connections than ``server.max_connections``, clients that never read a large answer.

Loopback only; every wait is bounded, and no assertion is about how long something took."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import socket
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest

from gateway.face.handler import Gateway
from tests.support.gateway_fixtures import gateway_config
from tests.support.processes import free_port
from tests.support.registry import RegistrySettings, make_registry_app

HEALTHZ = b"GET /_gateway/healthz HTTP/1.1\r\nHost: gw\r\n\r\n"
BOUND_S = 20.0  # every wait for the gateway to act; the configured timeouts are far below it


async def read_answer(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), BOUND_S)
    lines = head.split(b"\r\n")
    length = int(next(line for line in lines if line.lower().startswith(b"content-length:"))[15:])
    return int(lines[0].split()[1]), await asyncio.wait_for(reader.readexactly(length), BOUND_S)


async def closed_by_peer(reader: asyncio.StreamReader) -> bool:
    """Whether the gateway hung up (EOF or reset), waiting at most BOUND_S."""
    try:
        return await asyncio.wait_for(reader.read(65536), BOUND_S) == b""
    except ConnectionResetError:
        return True


async def trickle_a_head(writer: asyncio.StreamWriter) -> None:
    """A request head, then one header byte every 50 ms, never the blank line: 20 s at most."""
    writer.write(b"GET /_gateway/healthz HTTP/1.1\r\nHost: gw\r\n")
    for _ in range(400):
        await asyncio.sleep(0.05)
        writer.write(b"X")
        await writer.drain()


def unreachable_upstream(**server: Any) -> Any:
    return gateway_config(upstream_url=f"http://127.0.0.1:{free_port()}", server=server)


# -- point 5: slowloris and the connection cap ------------------------------------------------------------------


async def test_a_client_trickling_its_request_head_is_closed_after_the_header_timeout(aiohttp_server: Any) -> None:
    # keep-alive far away, so only the header timeout can close it
    server = await aiohttp_server(Gateway(unreachable_upstream(header_timeout_seconds=0.5, keepalive_seconds=3600)))
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    trickling = asyncio.create_task(trickle_a_head(writer))
    try:
        assert await closed_by_peer(reader)
        assert not trickling.done(), "the trickle ran out before the gateway closed the connection"
    finally:
        trickling.cancel()
        writer.close()
    metrics = await _metrics(server.port)
    assert 'gateway_client_connections_closed_total{reason="header_timeout"} 1' in metrics


async def test_the_head_clock_of_a_kept_alive_connection_starts_at_its_own_first_byte(aiohttp_server: Any) -> None:
    # One timer per connection, set at the connection's start: it fires while the second head trickles and must
    # count from that head's first byte, neither closing early nor forgetting it.
    server = await aiohttp_server(Gateway(unreachable_upstream(header_timeout_seconds=0.6, keepalive_seconds=3600)))
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    loop = asyncio.get_running_loop()
    try:
        writer.write(HEALTHZ)
        assert (await read_answer(reader))[0] == 200
        await asyncio.sleep(0.3)
        began = loop.time()
        trickling = asyncio.create_task(trickle_a_head(writer))
        try:
            assert await closed_by_peer(reader)
        finally:
            trickling.cancel()
        assert loop.time() - began >= 0.55, "closed before the second head had its own header timeout"
    finally:
        writer.close()


async def test_the_header_timeout_spares_idle_keepalive_connections_and_silent_new_ones_are_closed(
    aiohttp_server: Any,
) -> None:
    server = await aiohttp_server(Gateway(unreachable_upstream(header_timeout_seconds=0.3, keepalive_seconds=3600)))
    kept_reader, kept_writer = await asyncio.open_connection("127.0.0.1", server.port)
    silent_reader, silent_writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        kept_writer.write(HEALTHZ)
        assert (await read_answer(kept_reader))[0] == 200
        # A connection that never sends a head is closed like a trickling one...
        assert await closed_by_peer(silent_reader)
        # ...but the clock of a kept-alive connection starts with the next head's first byte, not at the last answer.
        await asyncio.sleep(1.0)
        kept_writer.write(HEALTHZ)
        assert (await read_answer(kept_reader))[0] == 200
    finally:
        kept_writer.close()
        silent_writer.close()


async def test_connections_beyond_max_connections_are_answered_503_while_open_ones_keep_working(
    aiohttp_server: Any,
) -> None:
    server = await aiohttp_server(Gateway(unreachable_upstream(max_connections=3)))
    held = [await asyncio.open_connection("127.0.0.1", server.port) for _ in range(3)]
    try:
        for reader, writer in held:
            writer.write(HEALTHZ)
            assert (await read_answer(reader))[0] == 200
        # The fourth: refused at once with the library's JSON error, then closed.
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(HEALTHZ)
        status, body = await read_answer(reader)
        assert status == 503
        assert json.loads(body)["error"]["code"] == 503
        assert await closed_by_peer(reader)
        writer.close()
        # The three open ones still work, again and again.
        for reader, writer in held:
            writer.write(HEALTHZ)
            assert (await read_answer(reader))[0] == 200
        # One leaves: its place is free for a new connection.
        held.pop()[1].close()
        assert await _answered_on_a_new_connection(server.port)
    finally:
        for _, writer in held:
            writer.close()
    metrics = await _metrics_on_any(server.port)
    assert 'gateway_client_connections_closed_total{reason="refused"}' in metrics


async def _answered_on_a_new_connection(port: int) -> bool:
    """A new connection gets 200 once the server has seen a closed one go (bounded retries)."""
    for _ in range(100):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(HEALTHZ)
            if (await read_answer(reader))[0] == 200:
                return True
        finally:
            writer.close()
        await asyncio.sleep(0.1)
    return False


async def _metrics(port: int) -> str:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"GET /_gateway/metrics HTTP/1.1\r\nHost: gw\r\n\r\n")
        status, body = await read_answer(reader)
        assert status == 200
        return body.decode()
    finally:
        writer.close()


async def _metrics_on_any(port: int) -> str:
    # Reading metrics takes a connection too: wait until the last one is gone and there is room again.
    assert await _answered_on_a_new_connection(port)
    return await _metrics(port)


# -- point 4: clients that never read a large forwarded download ------------------------------------------------

ALICE = hashlib.sha1(b"alice").hexdigest()
AUTH = {"Authorization": f"BEARER {ALICE}"}
DOWNLOAD_BYTES = 64 * 1024 * 1024  # far more than the socket buffers and queues between the registry and a client
STALLED = 20
POOL = 4


async def selfhosted_download(aiohttp_server: Any, tmp_path: Path) -> tuple[Any, str]:
    """The sregistry fake (selfhosted: it serves image bytes itself) with one large image; returns the registry's
    server and the image's download path, which the gateway forwards."""
    settings = RegistrySettings(flavour="selfhosted", users={ALICE: "alice"}, storage_dir=tmp_path)
    registry = await aiohttp_server(make_registry_app(settings))
    async with aiohttp.ClientSession(str(registry.make_url(""))) as client:

        async def call(method: str, path: str, payload: Any) -> Any:
            body = json.dumps(payload).encode()
            async with client.request(
                method, path, data=body, headers=AUTH, skip_auto_headers=["Content-Type"]
            ) as reply:
                assert reply.status == 200, await reply.text()
                return json.loads(await reply.read() or b'{"data":null}')["data"]

        entity = (await (await client.get("/v1/entities/alice", headers=AUTH)).json())["data"]
        collection = await call("POST", "/v1/collections", {"name": "big", "entity": entity["id"]})
        sha = "0" * 64
        async with client.get(f"/v1/images/alice/big/n:sha256.{sha}?arch=amd64", headers=AUTH) as reply:
            image = (await reply.json())["data"]
        upload_url = (await call("POST", f"/v2/imagefile/{image['id']}", {}))["uploadURL"]
        block = b"\x5a" * (1024 * 1024)
        image_bytes = io.BytesIO(block * (DOWNLOAD_BYTES // len(block)))
        put = await client.put(urlsplit(upload_url).path, data=image_bytes)
        assert put.status == 200
        await call("POST", f"/v1/tags/{collection['id']}", {"Tag": "latest", "ImageID": image["id"]})
        async with client.get("/v1/imagefile/alice/big/n:latest", allow_redirects=False) as reply:
            assert reply.status == 302
            return registry, urlsplit(reply.headers["Location"]).path


Stalled = tuple[bytes, asyncio.StreamReader, asyncio.StreamWriter]  # the answer's head, and the connection


async def never_reading_client(port: int, path: str) -> Stalled:
    """A client that asks for ``path``, reads the answer's head (so the gateway is streaming), then nothing more."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a small window: the stall reaches the gateway soon
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    reader, writer = await asyncio.open_connection(sock=sock, limit=4096)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: gw\r\n\r\n".encode())
    return await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), BOUND_S), reader, writer


async def stall(port: int, path: str) -> list[Stalled]:
    return list(await asyncio.gather(*(never_reading_client(port, path) for _ in range(STALLED))))


def stalled_gateway(registry: Any, **server: Any) -> Gateway:
    config = gateway_config(
        upstream_url=str(registry.make_url("")),
        # A small pool, and a short wait for a free connection: a starved call fails fast (504) instead of hanging.
        upstream={"pool_size": POOL, "connect_timeout_seconds": 2.0},
        server=server,
    )
    return Gateway(config)


async def test_never_reading_clients_of_a_large_download_do_not_starve_small_calls_and_discovery(
    aiohttp_server: Any, tmp_path: Path
) -> None:
    registry, download = await selfhosted_download(aiohttp_server, tmp_path)
    gateway = stalled_gateway(registry, client_write_timeout_seconds=3600)  # the stalls last the whole test
    server = await aiohttp_server(gateway)
    stalled = await stall(server.port, download)  # 5x the pool
    try:
        async with aiohttp.ClientSession(str(server.make_url(""))) as session:
            for _ in range(3):
                async with session.get("/version") as reply:
                    assert reply.status == 200, await reply.text()
                    assert (await reply.json())["data"]["apiVersion"]
                async with session.get("/assets/config/config.prod.json") as reply:
                    assert reply.status == 200, await reply.text()
                    assert (await reply.json())["libraryAPI"]["uri"] == gateway.config.server.public_url
        # Every download got its answer and is still stalled, each on an upstream connection outside the pool's count.
        assert all(head.startswith(b"HTTP/1.1 200") for head, _, _ in stalled)
        assert gateway.router.forwarder.pool.streaming == STALLED
    finally:
        for _, _, writer in stalled:
            writer.close()


async def test_clients_that_stop_reading_are_dropped_after_the_write_timeout_and_their_upstream_released(
    aiohttp_server: Any, tmp_path: Path
) -> None:
    registry, download = await selfhosted_download(aiohttp_server, tmp_path)
    gateway = stalled_gateway(registry, client_write_timeout_seconds=1.0, keepalive_seconds=3600)
    server = await aiohttp_server(gateway)
    stalled = await stall(server.port, download)
    assert all(head.startswith(b"HTTP/1.1 200") for head, _, _ in stalled)
    pool = gateway.router.forwarder.pool
    try:
        async with asyncio.timeout(BOUND_S):
            # Dropped: no client connection left on the gateway, no upstream connection held for them...
            while server.runner.server.connections or pool.streaming or pool.counted:
                await asyncio.sleep(0.1)
            # ...and the registry sees its side closed (its handlers end when their writes fail).
            while registry.runner.server.connections:
                await asyncio.sleep(0.1)
        for _, reader, _ in stalled:  # each client finds its connection reset (no FIN after a partial body)
            with pytest.raises(ConnectionResetError):
                while await asyncio.wait_for(reader.read(1 << 20), BOUND_S):
                    pass
    finally:
        for _, _, writer in stalled:
            writer.close()
    metrics = await _metrics(server.port)
    assert f'gateway_client_connections_closed_total{{reason="write_timeout"}} {STALLED}' in metrics
