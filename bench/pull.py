"""Pulls through the gateway with ``downloads.redirect_status`` "keep" (sregistry's 302) against "303", for each
client the tests can run, alternating the two modes run by run. Prints each client's median MiB/s per mode and the
ratio 303 / keep.

    .venv/bin/python bench/pull.py [--size-mib 128] [--runs 5] [--s3 seaweedfs|radosgw] [--link-mib-s 40]

Clients (all pull the same pushed image from two gateways in front of one sregistry fake and one S3):
  * Apptainer 1.0.x's ``apptainer pull``: library client v1.2.2 ``ConcurrentDownloadImage`` (the real one, built
    from tests/support/realclient/). On a 302 it fails; on a 303 it probes, then ranged GETs of 5 MiB, 3 at a time.
  * the same client's ``DownloadImage``: one GET that Go's http.Client follows through the redirect, single
    stream. This is the data path of the v1.3.1+/v1.4.x clients on a 302 (they follow it themselves); on a 303
    they take the ranged path above (read from their sources: they cannot be built offline).
  * this project's ``signing-gateway pull`` (parallel ranged GETs after any redirect, 4 jobs by default).

Loopback has no per-connection limit, so one stream is as fast as three there (the machine's CPUs are the limit).
``--link-mib-s R`` puts a relay between the clients and S3 that paces each connection's download to R MiB/s, a
model of a link whose single TCP stream is held back by latency or per-flow shaping, where parallel GETs pay off.

Times are of the download alone (the real client's hash check after it is left out); MiB/s of the image size.
The bytes go from S3 to the client directly in both modes: the gateway only answers the JSON and the redirect.

Needs what `bash scripts/test` installs (Go and the library client's sources, SeaweedFS or radosgw).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from aiohttp.test_utils import TestServer

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway.face.handler import Gateway  # noqa: E402
from gateway.libclient.pull import PullOptions, pull  # noqa: E402
from gateway.libclient.push import PushOptions, push  # noqa: E402
from gateway.libclient.refs import parse_ref  # noqa: E402
from tests.support.gateway_fixtures import GatewayTestServer  # noqa: E402
from tests.support.realclient import RealClient, build_realclient  # noqa: E402
from tests.support.registry import make_registry_app  # noqa: E402
from tests.support.s3_fixtures import serving  # noqa: E402
from tests.support.s3servers import RadosGW, S3Server, SeaweedFS  # noqa: E402
from tests.support.stack import TOKEN, USER, free_port, registry_settings, stack_config  # noqa: E402

MIB = 1024 * 1024
MODES = ("keep", "303")
CLIENTS = (
    "v1.2.2 ConcurrentDownloadImage (apptainer 1.0.x pull)",
    "v1.2.2 DownloadImage (single stream, as v1.3+/v1.4 on a 302)",
    "signing-gateway pull",
)
FAILED = -1.0
GOCACHE = Path.home() / ".cache" / "signing-gateway-realclient-go"  # a warm build takes ~1 s, a cold one ~30 s


def make_file(path: Path, size: int) -> None:
    block = os.urandom(4 * MIB)
    with path.open("wb") as out:
        for offset in range(0, size, len(block)):
            out.write(block[: min(len(block), size - offset)])


class PacedRelay:
    """A TCP relay to S3 that paces each connection's answer bytes to ``rate`` bytes/s (requests go unpaced)."""

    def __init__(self, target_port: int, rate: float) -> None:
        self.target_port = target_port
        self.rate = rate
        self.server: asyncio.Server | None = None
        self.connections: set[asyncio.Task[None]] = set()

    async def start(self) -> int:
        self.server = await asyncio.start_server(self.relay, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
        for connection in self.connections:  # clients' idle keep-alive connections
            connection.cancel()
        await asyncio.gather(*self.connections, return_exceptions=True)

    async def relay(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.connections.add(task)
        task.add_done_callback(self.connections.discard)
        s3_reader, s3_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        try:
            await asyncio.gather(
                self.pipe(client_reader, s3_writer, None), self.pipe(s3_reader, client_writer, self.rate)
            )
        except asyncio.CancelledError:
            pass  # close() ends idle connections: nothing to report
        finally:
            for writer in (s3_writer, client_writer):
                writer.close()

    @staticmethod
    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, rate: float | None) -> None:
        started, sent = time.perf_counter(), 0
        try:
            while chunk := await reader.read(64 * 1024):
                writer.write(chunk)
                await writer.drain()
                sent += len(chunk)
                if rate is not None:
                    await asyncio.sleep(max(0.0, started + sent / rate - time.perf_counter()))
            if writer.can_write_eof():
                writer.write_eof()
        except (ConnectionError, OSError):
            writer.close()


async def start_gateways(
    s3: S3Server, registry_url: str, external_port: int
) -> tuple[dict[str, str], list[TestServer]]:
    urls: dict[str, str] = {}
    servers: list[TestServer] = []
    for mode in MODES:
        port = free_port()
        config = stack_config(
            s3,
            registry_url=registry_url,
            gateway_port=port,
            downloads={"redirect_status": mode},
            s3={"external_endpoint": f"http://localhost:{external_port}"},
        )
        server = GatewayTestServer(Gateway(config), port=port)
        await server.start_server()
        servers.append(server)
        urls[mode] = f"http://127.0.0.1:{port}"
    return urls, servers


async def pull_once(client: str, realclient: RealClient, url: str, ref: str, out: Path) -> float:
    """Seconds of one download, or FAILED."""
    out.unlink(missing_ok=True)
    if client == CLIENTS[2]:
        pulled = await pull(PullOptions(parse_ref(f"library://{ref}"), out, url, TOKEN, progress=None))
        return pulled.seconds
    result = await realclient.pull(url, TOKEN, ref, out, concurrent=client == CLIENTS[0], timeout=600)
    if not result.ok:
        return FAILED
    return float(result.json["downloadSeconds"])


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mib", type=int, default=128, help="image size (default 128)")
    parser.add_argument("--runs", type=int, default=5, help="pulls per client and mode (default 5)")
    parser.add_argument("--s3", choices=("seaweedfs", "radosgw"), default="seaweedfs")
    parser.add_argument("--link-mib-s", type=float, default=0, help="pace each S3 download connection (0: off)")
    args = parser.parse_args()
    server: S3Server = SeaweedFS() if args.s3 == "seaweedfs" else RadosGW()
    with tempfile.TemporaryDirectory() as tmp, serving(server) as s3:
        folder = Path(tmp)
        realclient = RealClient(build_realclient(folder / "build", gocache=GOCACHE))
        registry_port = free_port()
        registry_url = f"http://127.0.0.1:{registry_port}"
        registry = TestServer(make_registry_app(registry_settings(s3, registry_url)), port=registry_port)
        await registry.start_server()
        relay = PacedRelay(s3.port, args.link_mib_s * MIB) if args.link_mib_s else None
        external_port = await relay.start() if relay is not None else s3.port
        urls, gateways = await start_gateways(s3, registry_url, external_port)
        try:
            image = folder / "image.sif"
            make_file(image, args.size_mib * MIB)
            ref = f"{USER}/benchpull{registry_port}/image:v1"
            await push(PushOptions(image, parse_ref(f"library://{ref}"), urls["keep"], TOKEN, progress=None))
            seconds: dict[tuple[str, str], list[float]] = defaultdict(list)
            started = time.perf_counter()
            for run in range(args.runs):
                # Alternate which mode goes first, so drift over the run hits both alike.
                for mode in MODES if run % 2 == 0 else MODES[::-1]:
                    for client in CLIENTS:
                        taken = await pull_once(client, realclient, urls[mode], ref, folder / "pulled.sif")
                        seconds[client, mode].append(taken)
            link = f"each download connection paced to {args.link_mib_s:g} MiB/s" if relay else "unpaced"
            print(
                f"S3: {args.s3}, loopback, {link}; {args.size_mib} MiB image; {args.runs} runs per client and mode, "
                f"alternating; {time.perf_counter() - started:.0f} s in all"
            )
            print("| client | keep (302) MiB/s | 303 MiB/s | 303 / keep |")
            print("|---|---|---|---|")
            rates = {key: rate(args.size_mib, runs) for key, runs in seconds.items()}
            rows = [(client, rates[client, "keep"], rates[client, "303"]) for client in CLIENTS]
            # The v1.3.1+/v1.4.x data paths: a followed 302 is DownloadImage's, a 303 the ranged path's.
            rows.append(
                ("v1.3.1+/v1.4.x (model: the two rows above)", rates[CLIENTS[1], "keep"], rates[CLIENTS[0], "303"])
            )
            for name, keep, see_other in rows:
                ratio = f"{see_other / keep:.2f}" if keep and see_other else "-"
                print(f"| {name} | {show(keep)} | {show(see_other)} | {ratio} |")
        finally:
            for gateway in gateways:
                await gateway.close()
            await registry.close()
            if relay is not None:
                await relay.close()


def rate(size_mib: int, runs: list[float]) -> float | None:
    """Median MiB/s, or None when any run failed."""
    if any(taken == FAILED for taken in runs):
        return None
    return size_mib / statistics.median(runs)


def show(value: float | None) -> str:
    return "fails" if value is None else f"{value:.0f}"


if __name__ == "__main__":
    asyncio.run(main())
