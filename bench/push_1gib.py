"""A 1 GiB push through the gateway with Apptainer's real library client, against a direct single PUT of the
same file to the same S3 (SeaweedFS on disk), in the same run. Prints seconds, MiB/s and the ratio.

    .venv/bin/python bench/push_1gib.py [--size-mib 1024] [--runs 2]

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

from gateway.app import create_app  # noqa: E402
from gateway.sigv4 import Credentials, Endpoint, Signer  # noqa: E402
from tests.realclient import RealClient, build_realclient  # noqa: E402
from tests.registry import RegistrySettings, make_registry_app  # noqa: E402
from tests.s3_fixtures import BUCKET, serving  # noqa: E402
from tests.s3servers import SeaweedFS  # noqa: E402
from tests.stack import TOKEN, USER, free_port, stack_config  # noqa: E402

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
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--runs", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, serving(SeaweedFS()) as s3:
        folder = Path(tmp)
        image = folder / "image.sif"
        make_file(image, args.size_mib * MIB)
        client = RealClient(build_realclient(folder / "build"))
        registry_port, gateway_port = free_port(), free_port()
        registry_url = f"http://127.0.0.1:{registry_port}"
        registry = TestServer(
            make_registry_app(
                RegistrySettings(
                    users={TOKEN: USER},
                    domain_name=registry_url,
                    s3_endpoint=s3.endpoint,
                    s3_external_server=s3.endpoint.split("//")[1],
                    access_key=s3.access_key,
                    secret_key=s3.secret_key,
                    region=s3.region,
                )
            ),
            port=registry_port,
        )
        config = stack_config(s3, registry_url=registry_url, gateway_port=gateway_port, uploads={"part_size": 64 * MIB})
        gateway = TestServer(create_app(config), port=gateway_port)
        await registry.start_server()
        await gateway.start_server()
        try:
            print(f"file: {args.size_mib} MiB; S3: SeaweedFS {s3.endpoint} (on disk); gateway part size 64 MiB")
            for run in range(1, args.runs + 1):
                direct = await direct_put(s3, image, f"bench/direct-{run}")
                started = time.perf_counter()
                pushed = await client.push(
                    f"http://127.0.0.1:{gateway_port}",
                    TOKEN,
                    image,
                    f"{USER}/bench{run}x{gateway_port}/img:v1",
                    timeout=1800,
                )
                through = time.perf_counter() - started
                assert pushed.ok, pushed.error
                mib = args.size_mib
                print(
                    f"run {run}: direct single PUT {direct:6.2f} s ({mib / direct:6.1f} MiB/s) | "
                    f"apptainer client via gateway {through:6.2f} s ({mib / through:6.1f} MiB/s) | "
                    f"ratio {through / direct:4.2f}x"
                )
            print(
                "note: the Apptainer client reads the whole file once for md5+sha256 before uploading and hashes "
                "each part again before its PUT; parts go one at a time"
            )
        finally:
            await gateway.close()
            await registry.close()


if __name__ == "__main__":
    asyncio.run(main())
