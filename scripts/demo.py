"""The main job on an embedded default: SeaweedFS as S3, the sregistry fake as a demo registry, the gateway in
front of it; push and pull a sample image through the gateway, say where the bytes went, then keep serving.

    bash scripts/demo [--size-mib 200] [--port 8080] [--exit]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway.core.config import load_config  # noqa: E402
from gateway.face.handler import Gateway, GatewayRunner  # noqa: E402
from gateway.libclient.pull import PullOptions, pull  # noqa: E402
from gateway.libclient.push import PushOptions, push  # noqa: E402
from gateway.libclient.refs import parse_ref  # noqa: E402
from tests.support.processes import free_port  # noqa: E402
from tests.support.registry import REQUEST_LOG, make_registry_app  # noqa: E402
from tests.support.s3_fixtures import BUCKET, serving  # noqa: E402
from tests.support.s3servers import SeaweedFS  # noqa: E402
from tests.support.stack import TOKEN, USER, registry_settings  # noqa: E402

MIB = 1024 * 1024


async def start(app: web.Application | Gateway, port: int) -> web.BaseRunner:
    runner = web.AppRunner(app, access_log=None) if isinstance(app, web.Application) else GatewayRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner


def write_sample(path: Path, size: int) -> str:
    digest = hashlib.sha256()
    with path.open("wb") as out:
        while size:
            chunk = os.urandom(min(size, 4 * MIB))
            out.write(chunk)
            digest.update(chunk)
            size -= len(chunk)
    return digest.hexdigest()


async def demo(args: argparse.Namespace, s3: SeaweedFS, workdir: Path) -> None:
    registry_port, gateway_port = free_port(), args.port
    registry_url, gateway_url = f"http://127.0.0.1:{registry_port}", f"http://127.0.0.1:{gateway_port}"
    registry = make_registry_app(registry_settings(s3, registry_url))
    config = load_config(
        None,
        {
            "GATEWAY_SERVER_PUBLIC_URL": gateway_url,
            "GATEWAY_UPSTREAM_URL": registry_url,
            "GATEWAY_S3_INTERNAL_ENDPOINT": s3.endpoint,
            "GATEWAY_S3_EXTERNAL_ENDPOINT": s3.endpoint.replace("127.0.0.1", "localhost"),
            "GATEWAY_S3_ACCESS_KEY": s3.access_key,
            "GATEWAY_S3_SECRET_KEY": s3.secret_key,
            "GATEWAY_UPLOADS_TOKEN_SECRET": os.urandom(24).hex(),
            "GATEWAY_UPLOADS_PART_SIZE": str(16 * MIB),
        },
    )
    runners = [await start(registry, registry_port), await start(Gateway(config), gateway_port)]
    try:
        print(f"S3 (SeaweedFS, on disk)  {s3.endpoint}  bucket {BUCKET!r}; clients see it as localhost")
        print(f"registry (sregistry fake) {registry_url}")
        print(f"gateway                  {gateway_url}\n")
        sample = workdir / "sample.sif"
        sha = write_sample(sample, args.size_mib * MIB)
        ref = f"library://{USER}/demo/sample:latest"
        print(f"pushing a {args.size_mib} MiB sample image to {ref} through the gateway ...")
        started = time.perf_counter()
        pushed = await push(PushOptions(sample, parse_ref(ref), gateway_url, TOKEN, jobs=4))
        push_s = time.perf_counter() - started
        through_registry = sum(record.body_length or 0 for record in registry[REQUEST_LOG])
        print(
            f"\npushed in {push_s:.2f} s ({args.size_mib / push_s:.0f} MiB/s), {pushed.parts_total} parts in parallel:"
            f"\n  image bytes -> S3 {s3.endpoint}/{BUCKET}/demo/sample:sha256.{sha[:12]}... (presigned, sha256-bound)"
            f"\n  registry    <- {through_registry} bytes of JSON only ({len(registry[REQUEST_LOG])} requests)"
        )
        pulled_path = workdir / "pulled.sif"
        started = time.perf_counter()
        await pull(PullOptions(parse_ref(ref), pulled_path, gateway_url, TOKEN, jobs=4))
        pull_s = time.perf_counter() - started
        same = hashlib.sha256(pulled_path.read_bytes()).hexdigest() == sha
        print(f"pulled back in {pull_s:.2f} s ({args.size_mib / pull_s:.0f} MiB/s); sha256 matches: {same}\n")
        print("The stack stays up. Point Apptainer at it:")
        print(f"  apptainer remote add --no-login demo {gateway_url}")
        print("  apptainer remote use demo")
        print(f"  apptainer remote login --tokenfile <(echo {TOKEN})")
        print(f"  apptainer push image.sif library://{USER}/mycollection/myimage:latest")
        print(
            f"or this project's faster client:\n  signing-gateway push --url {gateway_url} --token {TOKEN} "
            f"image.sif library://{USER}/mycollection/myimage:latest"
        )
        if args.exit:
            return
        print("\nCtrl-C to stop.")
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
    finally:
        for runner in reversed(runners):
            await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mib", type=int, default=200, help="sample image size (default 200)")
    parser.add_argument("--port", type=int, default=8080, help="gateway port (default 8080)")
    parser.add_argument("--exit", action="store_true", help="stop after the push and pull (for tests)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="signing-gateway-demo-") as tmp, serving(SeaweedFS()) as s3:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(demo(args, s3, Path(tmp)))
    print("stopped; the demo's data was removed")


if __name__ == "__main__":
    main()
