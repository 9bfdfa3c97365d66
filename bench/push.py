"""Pushes through the gateway, in one run, against a direct single PUT of the same file to the same S3
(SeaweedFS on disk): Apptainer's real library client (parts one at a time) and this project's client with
1, 2 and 4 parallel jobs. Prints seconds, MiB/s and the ratio to the direct PUT.

    .venv/bin/python bench/push.py [--sizes-mib 1024,4096] [--jobs 1,2,4]

Needs what `bash scripts/test` installs (Go and the library client's sources, SeaweedFS).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
from aiohttp.test_utils import TestServer

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway.core.sigv4 import Credentials, Endpoint, Signer  # noqa: E402
from gateway.face.handler import Gateway  # noqa: E402
from gateway.libclient.push import PushOptions, push  # noqa: E402
from gateway.libclient.refs import parse_ref  # noqa: E402
from tests.support.gateway_fixtures import GatewayTestServer  # noqa: E402
from tests.support.processes import free_port  # noqa: E402
from tests.support.realclient import RealClient, build_realclient  # noqa: E402
from tests.support.registry import make_registry_app  # noqa: E402
from tests.support.s3_fixtures import BUCKET, serving  # noqa: E402
from tests.support.s3servers import SeaweedFS  # noqa: E402
from tests.support.stack import TOKEN, USER, registry_settings, stack_config  # noqa: E402

MIB = 1024 * 1024


def make_file(path: Path, size: int) -> str:
    digest = hashlib.sha256()
    block = os.urandom(4 * MIB)
    with path.open("wb") as out:
        left = size
        while left:
            chunk = block[: min(left, len(block))]
            out.write(chunk)
            digest.update(chunk)
            left -= len(chunk)
    return digest.hexdigest()


async def direct_put(s3: SeaweedFS, path: Path, key: str) -> float:
    signer = Signer(Credentials(s3.access_key, s3.secret_key), s3.region)
    url = signer.presign("PUT", Endpoint.parse(s3.endpoint), BUCKET, key, now=datetime.now(UTC), expires_s=600)
    size = path.stat().st_size

    async def body():  # type: ignore[no-untyped-def]
        with path.open("rb") as source:
            while chunk := source.read(MIB):
                yield chunk

    started = time.perf_counter()
    async with (
        aiohttp.ClientSession() as session,
        session.put(
            url, data=body(), headers={"Content-Length": str(size)}, skip_auto_headers={"Content-Type"}
        ) as response,
    ):
        await response.read()
        assert response.status == 200, response.status
    return time.perf_counter() - started


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes-mib", default="1024,4096", help="comma-separated image sizes")
    parser.add_argument("--jobs", default="1,2,4", help="comma-separated job counts for our client")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, serving(SeaweedFS()) as s3:
        folder = Path(tmp)
        client = RealClient(build_realclient(folder / "build"))
        registry_port, gateway_port = free_port(), free_port()
        registry_url = f"http://127.0.0.1:{registry_port}"
        registry = TestServer(
            make_registry_app(registry_settings(s3, registry_url)),
            port=registry_port,
        )
        config = stack_config(s3, registry_url=registry_url, gateway_port=gateway_port, uploads={"part_size": 64 * MIB})
        gateway = GatewayTestServer(Gateway(config), port=gateway_port)
        await registry.start_server()
        await gateway.start_server()
        try:
            gateway_url = f"http://127.0.0.1:{gateway_port}"
            print("S3: SeaweedFS (on disk), loopback; gateway part size 64 MiB; MiB/s of the image size")
            print("| image | method | seconds | MiB/s | × direct PUT |")
            print("|---|---|---|---|---|")
            for size_mib in [int(v) for v in args.sizes_mib.split(",")]:
                image = folder / f"image-{size_mib}.sif"
                make_file(image, size_mib * MIB)
                direct = await direct_put(s3, image, f"bench/direct-{size_mib}")
                rows = [("direct single PUT to S3", direct)]
                started = time.perf_counter()
                pushed = await client.push(
                    gateway_url,
                    TOKEN,
                    image,
                    f"{USER}/bench{size_mib}x{gateway_port}/apptainer{size_mib}:v1",
                    timeout=3600,
                )
                assert pushed.ok, pushed.error
                rows.append(("Apptainer library client via gateway", time.perf_counter() - started))
                for jobs in [int(v) for v in args.jobs.split(",")]:
                    started = time.perf_counter()
                    ref = f"library://{USER}/bench{size_mib}j{jobs}x{gateway_port}/ours{size_mib}j{jobs}:v1"
                    await push(
                        PushOptions(
                            image,
                            parse_ref(ref),
                            gateway_url,
                            TOKEN,
                            jobs=jobs,
                            progress=None,
                            state_dir=folder / "state",
                        )
                    )
                    rows.append((f"signing-gateway push --jobs {jobs}", time.perf_counter() - started))
                for name, seconds in rows:
                    print(
                        f"| {size_mib} MiB | {name} | {seconds:.2f} | {size_mib / seconds:.1f} "
                        f"| {seconds / direct:.2f} |"
                    )
                image.unlink()
            print(
                "\nnote: both clients read the whole file once for its sha256 before uploading; Apptainer's also "
                "hashes each part again right before its PUT and sends parts one at a time"
            )
        finally:
            await gateway.close()
            await registry.close()


if __name__ == "__main__":
    asyncio.run(main())
