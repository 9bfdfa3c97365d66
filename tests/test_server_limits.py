"""Hostile clients on the client side of the gateway (issue 13, points 4 and 5): a client trickling its request head
(slowloris), more connections than ``server.max_connections``, clients that never read a large answer.

Loopback only; every wait is bounded, and no assertion is about how long something took."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from gateway.app import Gateway
from tests.gateway_fixtures import gateway_config
from tests.stack import free_port

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


def unreachable_upstream(**server: Any) -> Any:
    return gateway_config(upstream_url=f"http://127.0.0.1:{free_port()}", server=server)


# -- point 5: slowloris and the connection cap ------------------------------------------------------------------


async def test_a_client_trickling_its_request_head_is_closed_after_the_header_timeout(aiohttp_server: Any) -> None:
    # keep-alive far away, so only the header timeout can close it
    server = await aiohttp_server(Gateway(unreachable_upstream(header_timeout_seconds=0.5, keepalive_seconds=3600)))
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)

    async def trickle() -> None:
        writer.write(b"GET /_gateway/healthz HTTP/1.1\r\nHost: gw\r\n")
        for _ in range(400):  # one header byte every 50 ms, never the blank line: 20 s at most
            await asyncio.sleep(0.05)
            writer.write(b"X")
            await writer.drain()

    trickling = asyncio.create_task(trickle())
    try:
        assert await closed_by_peer(reader)
        assert not trickling.done(), "the trickle ran out before the gateway closed the connection"
    finally:
        trickling.cancel()
        writer.close()
    metrics = await _metrics(server.port)
    assert 'gateway_client_connections_closed_total{reason="header_timeout"} 1' in metrics


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
