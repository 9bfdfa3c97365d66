"""2 GiB up and 2 GiB down through the gateway, with Content-Length and chunked, against nginx (1 MiB proxy
buffers, request buffering off) in the same run. Prints the proxy's CPU-seconds per GiB and its peak RSS growth.

    .venv/bin/python bench/stream.py [--gib 2] [--runs 1]

Conditions: the proxy under test is pinned to CPU 0; the upstream (aiohttp on uvloop, discarding uploads and
generating downloads) and the client (this process, aiohttp) share CPU 1. Bodies are a random 1 MiB block
repeated. RSS growth is the peak (VmHWM) after the transfers minus the RSS before them, summed over the proxy's
processes. Faults/GiB are the proxy's minor page faults: with glibc's default thresholds, malloc trims the heap
after every freed 256 KiB read buffer and the next read faults the pages back in, which costs more CPU than the
copies; the gateway raises the thresholds at start (server.keep_freed_buffers_mapped), and the row "glibc malloc
defaults" runs it with ``MALLOC_ARENA_MAX`` set, which makes it leave malloc alone, to show the difference. Not a
test: the machine is shared and noisy.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractContextManager, suppress
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from proxy import (  # noqa: E402
    LOAD_CPU,
    PYTHON,
    cpu_seconds,
    free_port,
    gateway,
    nginx,
    pinned,
    process_tree,
    rss_kib,
    running,
)

MIB = 1024 * 1024
GIB = 1024 * MIB
BLOCK = random.Random(7).randbytes(MIB)


def serve_upstream(port: int) -> None:
    from aiohttp import web

    async def sink(request: web.Request) -> web.Response:
        received = 0
        while piece := await request.content.read(MIB):
            received += len(piece)
        return web.json_response({"bytes": received})

    async def source(request: web.Request) -> web.StreamResponse:
        size = int(request.query["bytes"])
        response = web.StreamResponse()
        if request.query.get("chunked"):
            response.enable_chunked_encoding()
        else:
            response.content_length = size
        await response.prepare(request)
        while size:
            piece = BLOCK if size >= MIB else BLOCK[:size]
            await response.write(piece)
            size -= len(piece)
        await response.write_eof()
        return response

    async def version(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application(client_max_size=1 << 40)
    app.router.add_put("/sink", sink)
    app.router.add_get("/source", source)
    app.router.add_get("/version", version)
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


async def generated(size: int) -> AsyncIterator[bytes]:
    while size:
        piece = BLOCK if size >= MIB else BLOCK[:size]
        yield piece
        size -= len(piece)


@dataclass
class Transfer:
    direction: str
    framing: str
    seconds: float
    cpu_s_per_gib: float
    rss_growth_mib: float
    faults_per_gib: float


def minor_faults(pid: int) -> int:
    """Minor page faults of ``pid`` and its live descendants."""
    total = 0
    for each in process_tree(pid):
        with suppress(OSError):
            total += int(Path(f"/proc/{each}/stat").read_text().rsplit(")", 1)[1].split()[7])
    return total


async def transfer(url: str, pid: int, direction: str, framing: str, size: int) -> Transfer:
    import aiohttp

    timeout = aiohttp.ClientTimeout(total=None, sock_read=120)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        async with session.get(url + f"source?bytes={MIB}") as warm_up:
            await warm_up.read()
        rss_before = rss_kib(pid)
        cpu_before = cpu_seconds(pid)
        faults_before = minor_faults(pid)
        started = time.perf_counter()
        if direction == "up":
            headers = {"Content-Length": str(size)} if framing == "length" else {}
            async with session.put(url + "sink", data=generated(size), headers=headers) as answer:
                got = (await answer.json())["bytes"]
        else:
            query = "&chunked=1" if framing == "chunked" else ""
            got = 0
            async with session.get(url + f"source?bytes={size}{query}") as answer:
                async for piece in answer.content.iter_chunked(MIB):
                    got += len(piece)
        seconds = time.perf_counter() - started
        cpu = cpu_seconds(pid) - cpu_before
        faults = minor_faults(pid) - faults_before
        growth = rss_kib(pid, "VmHWM") - rss_before
    if got != size:
        raise RuntimeError(f"{direction} {framing}: {got} bytes arrived of {size}")
    return Transfer(direction, framing, seconds, cpu / (size / GIB), growth / 1024, faults / (size / GIB))


def run(args: argparse.Namespace) -> None:
    os.sched_setaffinity(0, {int(LOAD_CPU)})
    size = int(args.gib * GIB)
    upstream_port = free_port()
    results: dict[str, list[Transfer]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-stream-") as temp:
        os.chmod(temp, 0o755)
        upstream_argv = pinned(
            LOAD_CPU, [PYTHON, str(Path(__file__).resolve()), "--serve-upstream", str(upstream_port)]
        )
        with running(upstream_argv, ready_url=f"http://127.0.0.1:{upstream_port}/version"):
            targets: dict[str, Callable[[], AbstractContextManager[tuple[int, str]]]] = {
                "nginx (1 MiB buffers)": lambda: nginx(upstream_port, Path(temp)),
                "gateway, asyncio": lambda: gateway(upstream_port, Path(temp), SERVER_EVENT_LOOP="asyncio"),
                "gateway, uvloop": lambda: gateway(upstream_port, Path(temp), SERVER_EVENT_LOOP="uvloop"),
                # Any MALLOC_* variable makes the gateway leave malloc alone; the arena cap is inert here.
                "gateway, uvloop, glibc malloc defaults": lambda: gateway(
                    upstream_port, Path(temp), environ={"MALLOC_ARENA_MAX": "8"}, SERVER_EVENT_LOOP="uvloop"
                ),
            }
            chosen = {name: start for name, start in targets.items() if any(t in name for t in args.targets)}
            for _ in range(args.runs):
                for name, start in chosen.items():
                    for framing in args.framings:
                        for direction in args.directions:
                            # A fresh proxy per transfer, so each RSS growth is that transfer's alone.
                            with start() as (pid, url):
                                found = asyncio.run(transfer(url, pid, direction, framing, size))
                            results.setdefault(f"{name}|{direction}|{framing}", []).append(found)
                            print(
                                f"  {name} {direction} {framing}: {found.seconds:.1f} s, "
                                f"{found.cpu_s_per_gib:.2f} CPU-s/GiB",
                                file=sys.stderr,
                            )
    print(f"\n{args.gib:g} GiB per transfer, proxy on CPU 0, upstream + client on CPU 1, median of {args.runs} run(s)")
    print(
        f"{'proxy':<38} {'dir':<5} {'framing':<8} {'MiB/s':>7} {'CPU-s/GiB':>10} {'RSS growth MiB':>15}"
        f" {'faults/GiB':>11}"
    )
    for key, found in results.items():
        name, direction, framing = key.split("|")
        seconds = statistics.median(t.seconds for t in found)
        cpu = statistics.median(t.cpu_s_per_gib for t in found)
        growth = statistics.median(t.rss_growth_mib for t in found)
        faults = statistics.median(t.faults_per_gib for t in found)
        print(
            f"{name:<38} {direction:<5} {framing:<8} {size / MIB / seconds:>7.0f} {cpu:>10.2f} {growth:>15.1f}"
            f" {faults:>11.0f}"
        )


def _names(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gib", type=float, default=2.0, help="GiB per transfer")
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--targets", type=_names, default=["nginx", "asyncio", "uvloop"], help="e.g. nginx,uvloop")
    parser.add_argument("--directions", type=_names, default=["up", "down"], help="up,down")
    parser.add_argument("--framings", type=_names, default=["length", "chunked"], help="length,chunked")
    parser.add_argument("--serve-upstream", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_upstream:
        serve_upstream(args.serve_upstream)
        return
    run(args)


if __name__ == "__main__":
    main()
