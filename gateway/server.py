"""Running the app: bind, serve, and shut down gracefully on SIGTERM/SIGINT.

With ``server.workers = N`` above 1, this process supervises N worker processes that each bind the same port with
SO_REUSEPORT (the kernel spreads connections across them), forwards SIGTERM/SIGINT to them and waits for their
graceful shutdown; a worker that dies is restarted, unless workers keep dying, which stops everything.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import time
from multiprocessing.process import BaseProcess
from types import FrameType

from aiohttp import web

from .app import Gateway, GatewayRunner
from .config import Config, config_warnings, masked
from .logs import setup_logging

__all__ = ["serve", "use_event_loop"]

log = logging.getLogger("gateway.server")

RESTARTS_ALLOWED = 5  # within RESTART_WINDOW_S; more means the workers cannot run at all (bad port, bad config)
RESTART_WINDOW_S = 60.0
EXIT_GRACE_S = 5.0  # beyond shutdown_grace_seconds before a worker that hangs is killed


def serve(config: Config) -> None:
    """Run until SIGTERM/SIGINT; exits 1 when the workers keep dying."""
    # One process serving: its log lines are written by a thread; a supervisor forks first (_worker_main).
    setup_logging(config.server.log_level, background=config.server.workers == 1)
    log.info("starting", extra={"event": "start", "config": masked(config)})
    for warning in config_warnings(config):
        log.warning("risky configuration: %s", warning, extra={"event": "config-warning"})
    if config.server.workers == 1:
        run_worker(config, reuse_port=False)
    elif Supervisor(config).run() != 0:
        raise SystemExit(1)


def use_event_loop(choice: str) -> str:
    """Install uvloop's policy when chosen (or, for "auto", when installed); returns the loop in use."""
    if choice == "asyncio":
        return "asyncio"
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise RuntimeError("server.event_loop is uvloop but uvloop is not installed (pip install uvloop)") from None
        return "asyncio"
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return "uvloop"


def keep_freed_buffers_mapped() -> bool:
    """Stop glibc from handing the heap's top back to the kernel after every freed 256 KiB read buffer.

    By default it trims the heap as each streamed buffer is freed and the next read faults the pages back in:
    100k-290k minor faults per GiB streamed, more CPU than the copies themselves (bench/stream.py). Raising the
    trim and mmap thresholds keeps those pages (RSS grows by at most ~2 MiB). An operator's own malloc settings
    (MALLOC_* variables, glibc.malloc tunables) win; other C libraries are left alone. Returns whether the
    thresholds were set."""
    operator_set = any(name.startswith("MALLOC_") for name in os.environ)
    if operator_set or "glibc.malloc." in os.environ.get("GLIBC_TUNABLES", ""):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # glibc's malloc.h
    return bool(mallopt(m_mmap_threshold, 1024 * 1024)) and bool(mallopt(m_trim_threshold, 8 * 1024 * 1024))


def run_worker(config: Config, *, reuse_port: bool) -> None:
    malloc = "thresholds raised" if keep_freed_buffers_mapped() else "left as configured"
    loop = use_event_loop(config.server.event_loop)
    log.info("serving", extra={"event": "serving", "listen": config.server.listen, "loop": loop, "malloc": malloc})
    asyncio.run(_serve(config, reuse_port=reuse_port))


async def _serve(config: Config, *, reuse_port: bool) -> None:
    """Serve until SIGTERM/SIGINT, then stop accepting and let in-flight requests finish within the grace period."""
    runner = GatewayRunner(Gateway(config), shutdown_timeout=config.server.shutdown_grace_seconds)
    await runner.setup()
    try:
        site = web.TCPSite(runner, config.server.host, config.server.port, reuse_port=reuse_port or None)
        await site.start()
        stopping = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stopping.set)
        await stopping.wait()
    finally:
        await runner.cleanup()


def _worker_main(config: Config) -> None:
    setup_logging(config.server.log_level, background=True)
    try:
        run_worker(config, reuse_port=True)
    finally:
        logging.shutdown()  # a forked worker leaves by os._exit, without atexit: write the queued lines first


class Supervisor:
    def __init__(self, config: Config) -> None:
        self.config = config
        # fork: the supervisor has no event loop and no threads yet, and spawn would add a resource tracker process.
        self.context = multiprocessing.get_context("fork")
        self.workers: list[BaseProcess] = []
        self.stopping = False
        self.restarts: list[float] = []

    def run(self) -> int:
        previous = {sig: signal.signal(sig, self._stop) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            self.workers = [self._start(number) for number in range(self.config.server.workers)]
            code = self._watch()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self._stop_workers()
        log.info("stopped", extra={"event": "stop"})
        return code

    def _start(self, number: int) -> BaseProcess:
        process = self.context.Process(
            target=_worker_main, args=(self.config,), name=f"gateway-worker-{number}", daemon=False
        )
        process.start()
        log.info("worker started", extra={"event": "worker-start", "worker": number, "pid": process.pid})
        return process

    def _stop(self, signum: int, frame: FrameType | None) -> None:
        self.stopping = True

    def _watch(self) -> int:
        while not self.stopping:
            multiprocessing.connection.wait([w.sentinel for w in self.workers], timeout=0.5)
            for number, worker in enumerate(self.workers):
                if worker.is_alive() or self.stopping:
                    continue
                log.error("worker died", extra={"event": "worker-died", "worker": number, "exitcode": worker.exitcode})
                now = time.monotonic()
                self.restarts = [t for t in self.restarts if now - t < RESTART_WINDOW_S] + [now]
                if len(self.restarts) > RESTARTS_ALLOWED:
                    log.error("workers keep dying: stopping", extra={"event": "give-up"})
                    return 1
                self.workers[number] = self._start(number)
        return 0

    def _stop_workers(self) -> None:
        for worker in self.workers:
            if worker.is_alive() and worker.pid is not None:
                worker.terminate()  # SIGTERM: each worker drains its in-flight requests
        deadline = time.monotonic() + self.config.server.shutdown_grace_seconds + EXIT_GRACE_S
        for worker in self.workers:
            worker.join(max(0.0, deadline - time.monotonic()))
            if worker.is_alive():
                log.error("worker did not stop in time: killing", extra={"event": "worker-kill", "pid": worker.pid})
                worker.kill()
                worker.join(5)
