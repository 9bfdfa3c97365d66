"""Soak: N concurrent pushes of 80-200 MiB images through a gateway process for a bounded time, on SeaweedFS
(on disk). Every push is verified byte for byte in S3; the gateway's RSS is sampled. Loopback only.

    .venv/bin/python bench/soak.py [--concurrency 20] [--seconds 180]

Prints a table: pushes, failures, corrupted objects, GiB moved, and the gateway's RSS over time.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway.libclient.push import PushOptions, push  # noqa: E402
from gateway.libclient.refs import parse_ref  # noqa: E402
from tests.support.gateway_fixtures import gateway_env  # noqa: E402
from tests.support.processes import free_port  # noqa: E402
from tests.support.proxy_harness import wait_healthy  # noqa: E402
from tests.support.registry import make_registry_app  # noqa: E402
from tests.support.s3_fixtures import BUCKET, serving  # noqa: E402
from tests.support.s3servers import SeaweedFS  # noqa: E402
from tests.support.stack import TOKEN, USER, registry_settings, stack_config  # noqa: E402

MIB = 1024 * 1024


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def soak(args: argparse.Namespace, s3: SeaweedFS, workdir: Path) -> None:
    sizes = [80, 120, 160, 200]
    images = {}
    for size in sizes:
        path = workdir / f"image-{size}.sif"
        path.write_bytes(os.urandom(size * MIB))
        images[size] = (path, hashlib.sha256(path.read_bytes()).hexdigest())
    registry_port, gateway_port = free_port(), free_port()
    registry_url, gateway_url = f"http://127.0.0.1:{registry_port}", f"http://127.0.0.1:{gateway_port}"
    runner = web.AppRunner(
        make_registry_app(registry_settings(s3, registry_url)),
        access_log=None,
    )
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", registry_port).start()
    config = stack_config(
        s3,
        registry_url=registry_url,
        gateway_port=gateway_port,
        server={"listen": f"127.0.0.1:{gateway_port}", "log_level": "warning"},
        uploads={"part_size": 16 * MIB},
    )
    env = gateway_env(config)
    gateway = subprocess.Popen([sys.executable, "-m", "gateway", "serve"], env=env)
    stats = {"pushes": 0, "failed": 0, "corrupted": 0, "bytes": 0}
    samples: list[tuple[float, float]] = []
    started = time.monotonic()
    deadline = started + args.seconds
    try:
        await wait_healthy(gateway_url)
        samples.append((0.0, rss_mib(gateway.pid)))
        checker = s3.botocore_client()

        def fetch(key: str) -> bytes:
            return bytes(checker.get_object(Bucket=BUCKET, Key=key)["Body"].read())

        async def worker(n: int) -> None:
            while time.monotonic() < deadline:
                size = random.choice(sizes)
                path, sha = images[size]
                # Unique container names: a tag POST deletes same name+tag images in every collection (sregistry).
                unique = f"{n}x{random.getrandbits(48):012x}"
                ref = f"library://{USER}/soak{unique}/img{unique}:v1"
                try:
                    await push(
                        PushOptions(
                            path, parse_ref(ref), gateway_url, TOKEN, jobs=2, progress=None, state_dir=workdir / "state"
                        )
                    )
                except Exception as exc:  # noqa: BLE001 - a soak counts every kind of failure
                    stats["failed"] += 1
                    print(f"push failed: {exc!r}", file=sys.stderr)
                    continue
                stats["pushes"] += 1
                stats["bytes"] += size * MIB
                collection = parse_ref(ref).collection
                key = f"{collection}/img{unique}:sha256.{sha}"
                body = await asyncio.to_thread(fetch, key)
                if hashlib.sha256(body).hexdigest() != sha:
                    stats["corrupted"] += 1

        async def sampler() -> None:
            while time.monotonic() < deadline:
                await asyncio.sleep(15)
                samples.append((time.monotonic() - started, rss_mib(gateway.pid)))

        await asyncio.gather(sampler(), *(worker(n) for n in range(args.concurrency)))
        checker.close()
    finally:
        gateway.terminate()
        gateway.wait(30)
        await runner.cleanup()
    elapsed = time.monotonic() - started
    print(f"\nsoak: {args.concurrency} concurrent pushes of 80-200 MiB, {elapsed:.0f} s, SeaweedFS on disk, loopback")
    print("| pushes | failed | corrupted | GiB pushed | MiB/s | gateway RSS start → end (max) |")
    print("|---|---|---|---|---|---|")
    rss = [value for _, value in samples]
    print(
        f"| {stats['pushes']} | {stats['failed']} | {stats['corrupted']} | {stats['bytes'] / 1024**3:.1f} "
        f"| {stats['bytes'] / MIB / elapsed:.0f} | {rss[0]:.0f} → {rss[-1]:.0f} ({max(rss):.0f}) MiB |"
    )
    print("RSS samples (s, MiB):", ", ".join(f"({t:.0f}, {v:.0f})" for t, v in samples))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--seconds", type=int, default=180)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="soak-") as tmp, serving(SeaweedFS()) as s3:
        asyncio.run(soak(args, s3, Path(tmp)))


if __name__ == "__main__":
    main()
