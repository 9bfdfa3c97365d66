"""Hostile clients against a gateway process (issue 13, points 4 and 5): connections it holds and its RSS.

    .venv/bin/python bench/slow_clients.py readers  [--src DIR] [--clients 101] [--set server.key=value ...]
    .venv/bin/python bench/slow_clients.py loris    [--src DIR] [--idle 2000] [--slowloris 500] [--set ...]

``readers``: the sregistry fake (selfhosted, so it serves image bytes itself) holds one 64 MiB image; N clients
request its forwarded download, read the answer's head and never read again. Then a small forwarded GET
(/version) and discovery are timed, and everything is sampled again ``--later`` (past the write timeout, if set).
``loris``: N idle connections (nothing sent) and M that trickle a request head one byte per second.

``--src`` runs the gateway from another checkout (e.g. main's: ``git archive main | tar -x -C /tmp/main``) to
compare before and after; ``--set`` adds GATEWAY_* settings (``--set server.client_write_timeout_seconds=10``).
"Held" counts the gateway's open sockets other than its listener, split into client and registry connections.
Loopback only; each run takes at most about 60 s.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import io
import json
import os
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support.proxy_harness import memory_kib, socket_inodes, wait_healthy  # noqa: E402
from tests.support.stack import free_port  # noqa: E402

MIB = 1024 * 1024
TOKEN = hashlib.sha1(b"alice").hexdigest()
AUTH = {"Authorization": f"BEARER {TOKEN}"}
IMAGE_BYTES = 64 * MIB
HEAD_WAIT_S = 15.0  # for a download's answer head (main's pool makes the 101st wait 10 s, then 504)
PROBE_WAIT_S = 15.0


def connections_of(pid: int, own_port: int, registry_port: int | None) -> tuple[int, int]:
    """(client connections, registry connections) among ``pid``'s established TCP sockets."""
    inodes = socket_inodes(pid)
    clients = upstream = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[9] not in inodes or fields[3] != "01":  # 01: ESTABLISHED
            continue
        local_port, remote_port = int(fields[1].split(":")[1], 16), int(fields[2].split(":")[1], 16)
        if local_port == own_port:
            clients += 1
        elif remote_port == registry_port:
            upstream += 1
    return clients, upstream


def sample(label: str, pid: int, port: int, registry_port: int | None, started: float) -> dict[str, Any]:
    clients, upstream = connections_of(pid, port, registry_port)
    row = {
        "t_s": round(time.monotonic() - started, 1),
        "at": label,
        "client_conns": clients,
        "registry_conns": upstream,
        "rss_mib": round(memory_kib(pid, "VmRSS") / 1024, 1),
        "peak_rss_mib": round(memory_kib(pid, "VmHWM") / 1024, 1),
    }
    print(json.dumps(row), flush=True)
    return row


async def probe(url: str, path: str) -> str:
    """Status and seconds of one GET on a new connection."""
    started = time.monotonic()
    try:
        async with (
            aiohttp.ClientSession() as session,
            session.get(url + path, timeout=aiohttp.ClientTimeout(total=PROBE_WAIT_S)) as reply,
        ):
            await reply.read()
            status = str(reply.status)
    except (aiohttp.ClientError, TimeoutError) as exc:
        status = type(exc).__name__
    return f"{path} {status} in {time.monotonic() - started:.2f} s"


# -- processes ---------------------------------------------------------------------------------------------------


async def start_registry(storage: Path) -> tuple[asyncio.subprocess.Process, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.support.registry",
        "--flavour",
        "selfhosted",
        "--storage-dir",
        str(storage),
        "--token",
        f"{TOKEN}:alice",
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
    )
    assert process.stdout is not None
    line = (await asyncio.wait_for(process.stdout.readline(), 30)).decode()
    return process, line.strip().rpartition(" ")[2]


async def start_gateway(src: Path, upstream: str, settings: list[str], log: Path) -> tuple[Any, int]:
    port = free_port()
    env = {key: value for key, value in os.environ.items() if not key.startswith("GATEWAY_")}
    env |= {
        "PYTHONPATH": str(src),
        "GATEWAY_SERVER_LISTEN": f"127.0.0.1:{port}",
        "GATEWAY_SERVER_PUBLIC_URL": f"http://127.0.0.1:{port}",
        "GATEWAY_SERVER_LOG_LEVEL": "warning",
        "GATEWAY_UPSTREAM_URL": upstream,
        "GATEWAY_S3_INTERNAL_ENDPOINT": "http://127.0.0.1:9",
        "GATEWAY_S3_EXTERNAL_ENDPOINT": "http://127.0.0.1:9",
        "GATEWAY_S3_ACCESS_KEY": "AKIDEXAMPLE",
        "GATEWAY_S3_SECRET_KEY": "secret-secret",
        "GATEWAY_UPLOADS_TOKEN_SECRET": "bench-token-secret-0123456789",
    }
    for setting in settings:
        key, _, value = setting.partition("=")
        env["GATEWAY_" + key.replace(".", "_").upper()] = value
    with log.open("wb") as out:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway", "serve", env=env, cwd=src, stdout=out, stderr=out
        )
    await wait_healthy(f"http://127.0.0.1:{port}", exited=lambda: process.returncode)
    return process, port


async def stop(process: Any) -> None:
    if process.returncode is None:
        process.terminate()
        try:
            await asyncio.wait_for(process.wait(), 10)
        except TimeoutError:
            process.kill()
            await process.wait()


# -- readers -----------------------------------------------------------------------------------------------------


async def push_image(registry: str) -> str:
    """One large image in the fake; returns its download path (forwarded by the gateway)."""
    async with aiohttp.ClientSession(registry) as client:

        async def call(method: str, path: str, payload: Any) -> Any:
            body = json.dumps(payload).encode()
            async with client.request(method, path, data=body, headers=AUTH, skip_auto_headers=["Content-Type"]) as r:
                assert r.status == 200, await r.text()
                return json.loads(await r.read() or b'{"data":null}')["data"]

        async with client.get("/v1/entities/alice", headers=AUTH) as reply:
            entity = (await reply.json())["data"]
        collection = await call("POST", "/v1/collections", {"name": "big", "entity": entity["id"]})
        async with client.get(f"/v1/images/alice/big/n:sha256.{'0' * 64}?arch=amd64", headers=AUTH) as reply:
            image = (await reply.json())["data"]
        upload = urlsplit((await call("POST", f"/v2/imagefile/{image['id']}", {}))["uploadURL"]).path
        async with client.put(upload, data=io.BytesIO(b"\x5a" * IMAGE_BYTES)) as reply:
            assert reply.status == 200
        await call("POST", f"/v1/tags/{collection['id']}", {"Tag": "latest", "ImageID": image["id"]})
        async with client.get("/v1/imagefile/alice/big/n:latest", allow_redirects=False) as reply:
            return urlsplit(reply.headers["Location"]).path


async def never_reading(port: int, path: str) -> tuple[str, asyncio.StreamWriter | None]:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    try:
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
        reader, writer = await asyncio.open_connection(sock=sock, limit=4096)
    except OSError as exc:
        sock.close()
        return type(exc).__name__, None
    writer.write(f"GET {path} HTTP/1.1\r\nHost: gw\r\n\r\n".encode())
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HEAD_WAIT_S)
        return head.split(b" ", 2)[1].decode(), writer
    except (TimeoutError, asyncio.IncompleteReadError, ConnectionError) as exc:
        return type(exc).__name__, writer


async def readers(args: argparse.Namespace, workdir: Path) -> None:
    registry, registry_url = await start_registry(workdir)
    registry_port = urlsplit(registry_url).port
    gateway = None
    writers: list[asyncio.StreamWriter] = []
    try:
        download = await push_image(registry_url)
        gateway, port = await start_gateway(args.src, registry_url, args.set, workdir / "gateway.log")
        url = f"http://127.0.0.1:{port}"
        started = time.monotonic()
        sample("before", gateway.pid, port, registry_port, started)
        answers = await asyncio.gather(*(never_reading(port, download) for _ in range(args.clients)))
        writers = [writer for _, writer in answers if writer is not None]
        statuses: dict[str, int] = {}
        for status, _ in answers:
            statuses[status] = statuses.get(status, 0) + 1
        print(json.dumps({"download_heads": statuses}), flush=True)
        await asyncio.sleep(3)  # the buffers between registry and clients fill
        sample(f"{args.clients} stalled", gateway.pid, port, registry_port, started)
        for path in ("/version", "/assets/config/config.prod.json"):
            print(json.dumps({"probe": await probe(url, path)}), flush=True)
        # Again later: past the write timeout when one is set (--set server.client_write_timeout_seconds=10).
        await asyncio.sleep(max(0.0, args.later - (time.monotonic() - started)))
        sample("later", gateway.pid, port, registry_port, started)
        for path in ("/version", "/assets/config/config.prod.json"):
            print(json.dumps({"probe": await probe(url, path)}), flush=True)
    finally:
        for writer in writers:
            writer.transport.abort()
        if gateway is not None:
            await stop(gateway)
        await stop(registry)


# -- loris -------------------------------------------------------------------------------------------------------


async def open_connection(port: int) -> asyncio.StreamWriter | None:
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        return writer
    except OSError:
        return None


async def open_many(port: int, count: int) -> list[asyncio.StreamWriter]:
    opened: list[asyncio.StreamWriter | None] = []
    for start in range(0, count, 100):  # in batches: the listen backlog is 128
        opened += await asyncio.gather(*(open_connection(port) for _ in range(min(100, count - start))))
    return [writer for writer in opened if writer is not None]


async def loris(args: argparse.Namespace, workdir: Path) -> None:
    gateway, port = await start_gateway(args.src, f"http://127.0.0.1:{free_port()}", args.set, workdir / "gateway.log")
    url = f"http://127.0.0.1:{port}"
    idle: list[asyncio.StreamWriter] = []
    slow: list[asyncio.StreamWriter] = []
    try:
        started = time.monotonic()
        sample("before", gateway.pid, port, None, started)
        slow = await open_many(port, args.slowloris)  # first, so that a connection cap cannot refuse them all
        idle = await open_many(port, args.idle)
        for writer in slow:
            writer.write(b"GET /version HTTP/1.1\r\nHost: gw\r\nX-Slow: ")

        async def trickle() -> None:
            while True:
                await asyncio.sleep(1)
                for writer in slow:
                    if not writer.is_closing():
                        with contextlib.suppress(ConnectionError):
                            writer.write(b"a")

        trickling = asyncio.create_task(trickle())
        for at in (5, 15, 25, 40):
            await asyncio.sleep(max(0.0, at - (time.monotonic() - started)))
            sample(f"{len(idle)} idle + {len(slow)} slowloris opened", gateway.pid, port, None, started)
            print(json.dumps({"probe": await probe(url, "/_gateway/healthz")}), flush=True)
        trickling.cancel()
    finally:
        for writer in idle + slow:
            writer.transport.abort()
        await stop(gateway)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("scenario", choices=("readers", "loris"))
    parser.add_argument("--src", type=Path, default=ROOT, help="checkout whose gateway/ to run (default: this one)")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    parser.add_argument("--clients", type=int, default=101)
    parser.add_argument("--later", type=float, default=30.0, help="readers: seconds from the start to sample again")
    parser.add_argument("--idle", type=int, default=2000)
    parser.add_argument("--slowloris", type=int, default=500)
    args = parser.parse_args()
    print(json.dumps({"scenario": args.scenario, "src": str(args.src), "set": args.set}), flush=True)
    with tempfile.TemporaryDirectory(prefix="slow-clients-") as workdir:
        run = readers if args.scenario == "readers" else loris
        asyncio.run(run(args, Path(workdir)))


if __name__ == "__main__":
    main()
