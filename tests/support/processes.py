"""Processes and ports for the test support: free loopback ports, daemons in their own process group (stopped
with SIGTERM, then SIGKILL: nothing outlives stop()), bounded one-shot commands and waits.

Plain Python (no pytest): the S3 servers, the nginx harness, the stack, demo and bench use it.
"""

from __future__ import annotations

import http.client
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

LOOPBACK = "127.0.0.1"
STOP_TIMEOUT_S = 15.0
COMMAND_TIMEOUT_S = 60.0
POLL_INTERVAL_S = 0.1
LOG_TAIL_LINES = 40


class ServerStartError(RuntimeError):
    """A server did not come up; the message carries the tail of its daemons' logs."""


# ---------------------------------------------------------------------------------------------------------
# Ports and small waits


def free_port() -> int:
    """A port the kernel just considered free on loopback (closed again, so a small race remains)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((LOOPBACK, port))
        except OSError:
            return False
        return True


def free_port_block(offsets: Sequence[int], *, attempts: int = 100) -> int:
    """A base port such that base + each offset is free (SeaweedFS derives its ports from one base)."""
    for _ in range(attempts):
        base = free_port()
        if base + max(offsets) > 65535:
            continue
        if all(port_is_free(base + offset) for offset in offsets):
            return base
    raise ServerStartError(f"no free loopback port block with offsets {list(offsets)} after {attempts} tries")


def port_accepts_connections(port: int) -> bool:
    try:
        with socket.create_connection((LOOPBACK, port), timeout=1.0):
            return True
    except OSError:
        return False


def http_get_status(port: int, path: str = "/") -> int | None:
    """Status of an anonymous GET, or None while nothing answers."""
    connection = http.client.HTTPConnection(LOOPBACK, port, timeout=2.0)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        response.read()
        return response.status
    except (OSError, http.client.HTTPException):
        return None
    finally:
        connection.close()


# ---------------------------------------------------------------------------------------------------------
# Processes


class Daemon:
    """One long-running server process in its own process group, output appended to a log file."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        output_log: Path,
        extra_logs: Sequence[Path] = (),
        env: dict[str, str] | None = None,
    ):
        self.name = name
        self.argv = list(argv)
        self.env = env
        self.output_log = output_log
        self.extra_logs = list(extra_logs)  # e.g. Ceph's own `log file`, usually more telling than stdout
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.output_log.open("ab") as log:
            self._process = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # own process group: killpg reaches anything it forks
                env=self.env,
            )

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def raise_if_exited(self) -> None:
        if self._process is not None and self._process.poll() is not None:
            raise ServerStartError(f"{self.name} exited with status {self._process.returncode}\n{self.log_tail()}")

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> int | None:
        """SIGTERM the group, wait, then SIGKILL it. Returns the exit status (None if never started)."""
        process, self._process = self._process, None
        if process is None:
            return None
        if process.poll() is None:  # signal only a group whose leader is unreaped: its id is still ours
            self._signal_group(process.pid, signal.SIGTERM)
            try:
                return process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self._signal_group(process.pid, signal.SIGKILL)
        return process.wait(timeout=timeout_s)

    @staticmethod
    def _signal_group(pid: int, signum: signal.Signals) -> None:
        try:
            os.killpg(pid, signum)
        except ProcessLookupError:
            pass

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        return "\n".join(_file_tail(path, lines) for path in [self.output_log, *self.extra_logs])


def _file_tail(path: Path, lines: int) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as error:
        return f"--- {path}: {error}"
    tail = "\n".join(text.splitlines()[-lines:])
    return f"--- last {lines} lines of {path}:\n{tail}"


def run_command(argv: Sequence[str], *, deadline: float, what: str) -> str:
    """Run a one-shot setup command, bounded by the overall start deadline; its stdout on success."""
    timeout_s = max(1.0, min(COMMAND_TIMEOUT_S, deadline - time.monotonic()))
    try:
        completed = subprocess.run(
            list(argv), stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout_s, check=False
        )
    except subprocess.TimeoutExpired as error:
        raise ServerStartError(f"{what}: timed out after {timeout_s:.0f} s: {' '.join(argv)}") from error
    if completed.returncode != 0:
        raise ServerStartError(
            f"{what}: exit status {completed.returncode}: {' '.join(argv)}\n"
            f"stdout: {completed.stdout.decode(errors='replace')[-4000:]}\n"
            f"stderr: {completed.stderr.decode(errors='replace')[-4000:]}"
        )
    return completed.stdout.decode(errors="replace")


def wait_until(ready: Callable[[], bool], *, deadline: float, what: str, watched: Sequence[Daemon]) -> None:
    """Poll `ready` until it holds; fail fast when a watched daemon exits, fail at the deadline otherwise."""
    while True:
        for daemon in watched:
            daemon.raise_if_exited()
        if ready():
            return
        if time.monotonic() >= deadline:
            tails = "\n".join(daemon.log_tail() for daemon in watched)
            raise ServerStartError(f"{what} not reached within the deadline\n{tails}")
        time.sleep(POLL_INTERVAL_S)


def wait_until_port_closed(port: int, *, what: str) -> None:
    wait_until(
        lambda: not port_accepts_connections(port),
        deadline=time.monotonic() + STOP_TIMEOUT_S,
        what=f"{what} port {port} closed",
        watched=[],
    )
