"""Instructions per request (callgrind), the figure that stays put on a shared, noisy machine where req/s drift.

    .venv/bin/python bench/instructions.py [--requests 2000] [--connections 32] [--config NAME ...] [--route R]

Each configuration starts the gateway under ``valgrind --tool=callgrind`` with collection off, warms it up,
collects only while a fixed number of requests is answered (``callgrind_control -i on/off``), and prints the
instructions per request. Routes: ``get`` (a small GET forwarded to a trivial upstream, bench/proxy.py's) and
``presign`` (``PUT v2/imagefile/{id}/_multipart``, answered by the gateway itself: no upstream call), ``healthz``
(the gateway's cheapest answer: its floor). The
client runs outside valgrind, keeps ``--connections`` keep-alive connections busy, and sends a new request as
each answer arrives, like wrk. ``--keep`` leaves the callgrind files in a directory for callgrind_annotate.

Configurations (``--config``, repeatable): ``default`` (log level info: an access line per request, to a file),
``warning`` (log level warning: no access line). Differences between them are what the access line costs. For
``--route presign`` also ``botocore`` and ``trivial``: bench/presign_endpoint.py's reference endpoint and trivial
handler, on aiohttp's application server.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.presign_endpoint import wait_port  # noqa: E402
from bench.proxy import running, upstream, wait_http  # noqa: E402
from tests.proxy_harness import gateway_environment  # noqa: E402
from tests.stack import free_port  # noqa: E402

# For the presign route: the aiohttp endpoint signing with botocore, and the trivial handler.
REFERENCES = {"botocore": "--serve-reference", "trivial": "--serve-trivial"}
CONFIGS = {
    "default": {"SERVER_LOG_LEVEL": "info", "SERVER_EVENT_LOOP": "auto"},
    "warning": {"SERVER_LOG_LEVEL": "warning", "SERVER_EVENT_LOOP": "auto"},
}


def get_request(port: int, path: str = "/version") -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUser-Agent: bench\r\n\r\n".encode()


def presign_request(port: int) -> bytes:
    from bench.presign_endpoint import part_request

    return part_request(port)


async def _client(port: int, request: bytes, count: int, connections: int) -> None:
    """``count`` requests over ``connections`` keep-alive connections, each answer read whole."""
    remaining = count

    async def one_connection() -> None:
        nonlocal remaining
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while remaining > 0:
                remaining -= 1
                writer.write(request)
                head = await reader.readuntil(b"\r\n\r\n")
                if not head.startswith(b"HTTP/1.1 200"):
                    raise RuntimeError(f"unexpected answer: {head[:200]!r}")
                length = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
                if length is None:
                    raise RuntimeError(f"answer without Content-Length: {head[:200]!r}")
                await reader.readexactly(int(length[1]))
        finally:
            writer.close()

    await asyncio.gather(*(one_connection() for _ in range(connections)))


def send(port: int, request: bytes, count: int, connections: int) -> None:
    asyncio.run(_client(port, request, count, connections))


def control(pid: int, *options: str) -> None:
    subprocess.run(["callgrind_control", *options, str(pid)], check=True, capture_output=True, timeout=120)


def total_instructions(directory: Path) -> int:
    """Instructions collected by every dump in ``directory`` (a dump per callgrind_control -d)."""
    total = 0
    for dump in directory.glob("callgrind.out.*"):
        # "summary:" stays 0 when collection starts off; "totals:" has the count.
        total += sum(int(n) for n in re.findall(r"^totals: (\d+)", dump.read_text(errors="replace"), re.MULTILINE))
    return total


def measure(config: str, route: str, count: int, connections: int, keep: Path | None) -> float:
    with tempfile.TemporaryDirectory(prefix="bench-callgrind-") as temp:
        directory = keep or Path(temp)
        for old in directory.glob("callgrind.out.*"):
            old.unlink()
        port = free_port()
        with upstream() as (_, upstream_port):
            if config in REFERENCES:  # bench/presign_endpoint.py's aiohttp applications
                env = dict(os.environ)
                command = [sys.executable, str(ROOT / "bench" / "presign_endpoint.py"), REFERENCES[config], str(port)]
            else:
                settings = CONFIGS[config] | {"SERVER_WORKERS": "1"}
                env = gateway_environment(f"http://127.0.0.1:{upstream_port}", port, **settings)
                command = [sys.executable, "-m", "gateway", "serve"]
            env["PYTHONHASHSEED"] = "0"
            argv = [
                "valgrind",
                "--tool=callgrind",
                "--instr-atstart=no",
                f"--callgrind-out-file={directory}/callgrind.out.%p",
                *command,
            ]
            with running(argv, env=env, log=Path(temp) / "gateway.log") as pid:
                if config in REFERENCES:
                    wait_port(port, timeout_s=180)
                else:
                    wait_http(f"http://127.0.0.1:{port}/_gateway/healthz", timeout_s=180)
                request = {
                    "get": lambda: get_request(port),
                    "healthz": lambda: get_request(port, "/_gateway/healthz"),
                    "presign": lambda: presign_request(port),
                }[route]()
                send(port, request, 200, connections)  # warm up
                control(pid, "-i", "on")
                started = time.monotonic()
                send(port, request, count, connections)
                control(pid, "-i", "off")
                control(pid, "-d")
                seconds = time.monotonic() - started
                print(f"  {config}/{route}: {count} requests in {seconds:.1f}s under callgrind", file=sys.stderr)
        return total_instructions(directory) / count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--config", action="append", choices=sorted(CONFIGS | REFERENCES), default=[])
    parser.add_argument("--route", choices=("get", "healthz", "presign"), default="get")
    parser.add_argument("--keep", type=Path, help="keep the callgrind files here (one configuration)")
    args = parser.parse_args()
    configs = args.config or ["default", "warning"]
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
    found = {config: measure(config, args.route, args.requests, args.connections, args.keep) for config in configs}
    print(f"\ninstructions per request, {args.route}, {args.requests} requests over {args.connections} connections")
    for config, per_request in found.items():
        print(f"{config:<10} {per_request / 1000:8.1f}k")
    if "default" in found and "warning" in found:
        print(f"the access line: {(found['default'] - found['warning']) / 1000:.1f}k")


if __name__ == "__main__":
    main()
