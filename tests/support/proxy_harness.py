"""The gateway as a real process (``python -m gateway serve``, configured from the environment), for tests that
measure its memory, run several workers or signal it; and small upstream helpers for the proxy tests.

The process is started with asyncio (the upstream it talks to runs in the test's own event loop, so nothing here
may block), waited for on /_gateway/healthz, and always stopped at exit: SIGTERM, then SIGKILL after a grace.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from tests.support.gateway_fixtures import gateway_variables
from tests.support.processes import free_port

READY_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 20.0
ROOT = Path(__file__).resolve().parents[2]


def memory_kib(pid: int, field: str) -> int:
    """A /proc/<pid>/status memory field in KiB: VmRSS (now) or VmHWM (peak since start)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise LookupError(f"{field} not in /proc/{pid}/status")


def child_pids(pid: int) -> list[int]:
    children: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        with suppress(OSError):
            children += [int(child) for child in (task / "children").read_text().split()]
    return children


def listening_inodes(port: int) -> set[str]:
    """Inodes of IPv4 TCP sockets listening on ``port`` (state 0A in /proc/net/tcp)."""
    inodes = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1].endswith(f":{port:04X}") and fields[3] == "0A":
            inodes.add(fields[9])
    return inodes


def socket_inodes(pid: int) -> set[str]:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    return inodes


async def wait_for_workers(port: int, pid: int, count: int, *, timeout_s: float = READY_TIMEOUT_S) -> list[int]:
    """The children of ``pid`` holding a socket that listens on ``port``, once there are ``count`` of them."""
    async with asyncio.timeout(timeout_s):
        while True:
            listening = listening_inodes(port)
            serving = [child for child in child_pids(pid) if socket_inodes(child) & listening]
            if len(serving) >= count:
                return serving
            await asyncio.sleep(0.1)


@dataclass
class GatewayProcess:
    process: asyncio.subprocess.Process
    url: str
    port: int
    log_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]


def gateway_environment(upstream_url: str, port: int, **settings: str) -> dict[str, str]:
    """``settings`` are GATEWAY_* variables without the prefix, e.g. SERVER_WORKERS="2"."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("GATEWAY_")}
    env |= gateway_variables(upstream_url=upstream_url, public_url=f"http://127.0.0.1:{port}")
    env |= {
        "PYTHONPATH": str(ROOT),
        "GATEWAY_SERVER_LISTEN": f"127.0.0.1:{port}",
        "GATEWAY_SERVER_LOG_LEVEL": "warning",
    }
    env |= {f"GATEWAY_{key}": value for key, value in settings.items()}
    return env


@asynccontextmanager
async def gateway_process(upstream_url: str, log_dir: Path, **settings: str) -> AsyncIterator[GatewayProcess]:
    port = free_port()
    log_path = log_dir / f"gateway-{port}.log"
    with log_path.open("wb") as log_file:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "gateway",
            "serve",
            env=gateway_environment(upstream_url, port, **settings),
            cwd=ROOT,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=log_file,
            stderr=log_file,
        )
    gateway = GatewayProcess(process, f"http://127.0.0.1:{port}", port, log_path)
    try:
        await _wait_ready(gateway)
        yield gateway
    finally:
        await stop(gateway)


async def stop(gateway: GatewayProcess, *, timeout_s: float = STOP_TIMEOUT_S) -> int:
    """SIGTERM, wait, SIGKILL if needed (workers included); returns the exit code."""
    process = gateway.process
    if process.returncode is None:
        workers = child_pids(process.pid)
        process.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(timeout_s):
                await process.wait()
        except TimeoutError:
            process.kill()
            await process.wait()
        for worker in workers:
            with suppress(ProcessLookupError):
                os.kill(worker, signal.SIGKILL)
    assert process.returncode is not None
    return process.returncode


async def _wait_ready(gateway: GatewayProcess) -> None:
    try:
        await wait_healthy(gateway.url, exited=lambda: gateway.process.returncode)
    except RuntimeError as exc:
        raise RuntimeError(f"{exc}:\n{gateway.log()}") from None


async def wait_healthy(
    url: str, *, exited: Callable[[], int | None] = lambda: None, timeout_s: float = READY_TIMEOUT_S
) -> None:
    """Until ``url``'s /_gateway/healthz answers 200; RuntimeError when the process has exited (``exited()`` gives
    its code) or at the timeout."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    async with aiohttp.ClientSession() as session:
        while loop.time() < deadline:
            if (code := exited()) is not None:
                raise RuntimeError(f"gateway exited with {code}")
            with suppress(aiohttp.ClientError):
                async with session.get(url + "/_gateway/healthz") as response:
                    if response.status == 200:
                        return
            await asyncio.sleep(0.1)
    raise RuntimeError(f"gateway at {url} not ready after {timeout_s}s")


# -- an upstream that speaks raw bytes, for answers aiohttp's server would never send -------------------------


@dataclass
class RawUpstream:
    """A loopback server answering every request with ``answer(request_head)``; records the raw requests.

    ``close_after`` closes the connection after each answer (for answers framed by the connection's end)."""

    answer: Callable[[bytes], bytes]
    close_after: bool = False
    requests: list[bytes] = field(default_factory=list)
    connections: int = 0
    server: asyncio.Server | None = None
    writers: set[asyncio.StreamWriter] = field(default_factory=set)

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def __aenter__(self) -> RawUpstream:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self.server is not None
        self.server.close()
        for writer in list(self.writers):
            writer.close()
        await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.writers.add(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                body = await reader.readexactly(length) if length else b""
                self.requests.append(head + body)
                writer.write(self.answer(head))
                await writer.drain()
                if self.close_after:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self.writers.discard(writer)
            writer.close()
            with suppress(ConnectionError):
                await writer.wait_closed()
