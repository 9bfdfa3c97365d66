"""``server.workers = 2``: two processes share one port (SO_REUSEPORT), both serve, and SIGTERM stops them all
gracefully, letting a request in flight finish."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
from aiohttp import web
from aiohttp.test_utils import TestServer

from tests.support.proxy_harness import gateway_process, listening_inodes, socket_inodes, stop, wait_for_workers

ServerFactory = Callable[..., Awaitable[TestServer]]


def upstream_app(peers: list[tuple[str, int]], started: asyncio.Event) -> web.Application:
    async def answer(request: web.Request) -> web.Response:
        assert request.transport is not None
        peers.append(request.transport.get_extra_info("peername"))
        return web.Response(text="ok")

    async def slow(request: web.Request) -> web.Response:
        started.set()
        await asyncio.sleep(1.5)
        return web.Response(text="finished")

    app = web.Application()
    app.router.add_get("/slow", slow)
    app.router.add_get("/{tail:.*}", answer)
    return app


async def test_two_workers_share_the_port_and_both_serve(aiohttp_server: ServerFactory, tmp_path: Path) -> None:
    peers: list[tuple[str, int]] = []
    upstream = await aiohttp_server(upstream_app(peers, asyncio.Event()))
    async with gateway_process(str(upstream.make_url("")), tmp_path, SERVER_WORKERS="2") as gateway:
        serving = await wait_for_workers(gateway.port, gateway.pid, 2)
        assert len(serving) == 2 and gateway.pid not in serving
        assert not socket_inodes(gateway.pid) & listening_inodes(gateway.port)  # the supervisor does not serve

        # Each request on a new connection: the kernel spreads them over both workers, each with its own pool.
        for _ in range(40):
            async with aiohttp.ClientSession() as session, session.get(gateway.url + "/version") as response:
                assert await response.text() == "ok"
        assert len(peers) == 40
        assert len(set(peers)) >= 2, "one worker served everything"


async def test_sigterm_lets_the_request_in_flight_finish_then_stops_every_worker(
    aiohttp_server: ServerFactory, tmp_path: Path
) -> None:
    started = asyncio.Event()
    upstream = await aiohttp_server(upstream_app([], started))
    async with gateway_process(str(upstream.make_url("")), tmp_path, SERVER_WORKERS="2") as gateway:
        workers = await wait_for_workers(gateway.port, gateway.pid, 2)
        async with aiohttp.ClientSession() as session:
            in_flight = asyncio.create_task(session.get(gateway.url + "/slow"))
            async with asyncio.timeout(10):
                await started.wait()
            stopping = asyncio.create_task(stop(gateway))
            response = await in_flight
            assert (response.status, await response.text()) == (200, "finished")
            response.release()
            assert await stopping == 0
        for pid in workers:
            assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()
