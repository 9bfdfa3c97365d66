"""Bodies of 1 GiB streamed through the gateway both ways, generated on the fly and checksummed (CRC-32) on both
sides, with the gateway running as its own process so its memory can be read from /proc: it must stay bounded."""

from __future__ import annotations

import functools
import random
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from tests.support.proxy_harness import gateway_process, memory_kib

MIB = 1024 * 1024
GIB = 1024 * MIB
BLOCK = random.Random(5).randbytes(MIB)
# Far below the 1 GiB that buffering would cost, well above what the gateway's queues and buffers hold.
MEMORY_BOUND_KIB = 48 * 1024

ServerFactory = Callable[..., Awaitable[TestServer]]


@functools.cache
def expected_checksum(size: int) -> int:
    checksum = 0
    for piece in blocks(size):
        checksum = zlib.crc32(piece, checksum)
    return checksum


def blocks(size: int) -> list[bytes]:
    return [BLOCK] * (size // MIB) + ([BLOCK[: size % MIB]] if size % MIB else [])


def streaming_upstream(seen: dict[str, Any]) -> web.Application:
    async def sink(request: web.Request) -> web.Response:
        checksum = received = 0
        async for piece in request.content.iter_any():
            checksum = zlib.crc32(piece, checksum)
            received += len(piece)
        seen["upload"] = {
            "bytes": received,
            "crc32": checksum,
            "chunked": "chunked" in request.headers.get("Transfer-Encoding", ""),
            "content_length": request.headers.get("Content-Length"),
        }
        return web.json_response(seen["upload"])

    async def source(request: web.Request) -> web.StreamResponse:
        size = int(request.query["bytes"])
        response = web.StreamResponse()
        if request.query.get("chunked"):
            response.enable_chunked_encoding()
        else:
            response.content_length = size
        await response.prepare(request)
        for piece in blocks(size):
            await response.write(piece)
        await response.write_eof()
        return response

    app = web.Application(client_max_size=2 * GIB)
    app.router.add_put("/sink", sink)
    app.router.add_get("/source", source)
    return app


async def generated(size: int) -> AsyncIterator[bytes]:
    for piece in blocks(size):
        yield piece


@pytest.mark.parametrize("framing", ["length", "chunked"])
async def test_a_1_gib_body_streams_up_and_down_with_bounded_gateway_memory(
    aiohttp_server: ServerFactory, tmp_path: Path, framing: str
) -> None:
    seen: dict[str, Any] = {}
    upstream = await aiohttp_server(streaming_upstream(seen))
    chunked = framing == "chunked"
    async with gateway_process(str(upstream.make_url("")), tmp_path) as gateway, aiohttp.ClientSession() as session:
        async with session.get(f"{gateway.url}/source?bytes={MIB}") as warm_up:
            assert len(await warm_up.read()) == MIB
        before_kib = memory_kib(gateway.pid, "VmRSS")

        headers = {} if chunked else {"Content-Length": str(GIB)}
        async with session.put(f"{gateway.url}/sink", data=generated(GIB), headers=headers) as uploaded:
            assert uploaded.status == 200, await uploaded.text()
        assert seen["upload"]["bytes"] == GIB
        assert seen["upload"]["crc32"] == expected_checksum(GIB)
        assert seen["upload"]["chunked"] is chunked
        assert seen["upload"]["content_length"] == (None if chunked else str(GIB))

        checksum = received = 0
        query = "&chunked=1" if chunked else ""
        async with session.get(f"{gateway.url}/source?bytes={GIB}{query}") as downloaded:
            assert downloaded.status == 200
            assert ("Content-Length" not in downloaded.headers) is chunked
            async for piece in downloaded.content.iter_chunked(MIB):
                checksum = zlib.crc32(piece, checksum)
                received += len(piece)
        assert received == GIB
        assert checksum == expected_checksum(GIB)

        growth_kib = memory_kib(gateway.pid, "VmHWM") - before_kib
        assert growth_kib < MEMORY_BOUND_KIB, f"gateway peak RSS grew by {growth_kib} KiB for 2 GiB streamed"
