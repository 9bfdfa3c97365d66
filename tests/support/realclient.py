"""Build and drive realclient/main.go: the real Apptainer library client (container-library-client v1.2.2).

The binary runs as a child process of the test, while the gateway and the fake registry run as aiohttp servers
in the test's own event loop; every call here is therefore asynchronous, since a blocking wait would stop the
very servers the client is talking to.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SOURCE_DIR = Path(__file__).parent / "realclient"
DEBIAN_GOPATH = "/usr/share/gocode"
BUILD_TIMEOUT_S = 600
# The Go program gets the caller's timeout as its own deadline and reports a readable error when it expires;
# the process is killed only if it has not exited this long after that.
KILL_GRACE_S = 10


class RealClientError(RuntimeError):
    """The Go tool could not be built, or did not finish in time."""


def go_environment(build_dir: Path, gocache: Path) -> dict[str, str]:
    """Environment for an offline GOPATH-mode build against Debian's packaged Go sources."""
    env = dict(os.environ)
    env.update(
        GO111MODULE="off",  # GOPATH mode: no go.mod, no module download
        GOPROXY="off",  # never touch the network
        GOFLAGS="",  # no inherited -mod=... flags
        GOTOOLCHAIN="local",  # no toolchain switching on newer Go
        GOPATH=f"{build_dir / 'gopath'}:{DEBIAN_GOPATH}",
        GOCACHE=str(gocache),
        # Go 1.19 builds runtime/cgo by default and fails when gcc is missing (it is only "Recommended");
        # the pure-Go resolver is all a loopback test needs.
        CGO_ENABLED="0",
    )
    return env


def build_realclient(build_dir: Path, *, gocache: Path | None = None) -> Path:
    """Compile the tool into build_dir and return the binary's path; raise RealClientError with go's output."""
    go = shutil.which("go")
    if go is None:
        raise RealClientError("go not found: install golang-go golang-github-apptainer-container-library-client-dev")
    build_dir.mkdir(parents=True, exist_ok=True)
    (build_dir / "gopath").mkdir(exist_ok=True)
    binary = build_dir / "realclient"
    env = go_environment(build_dir, gocache or build_dir / "gocache")
    try:
        done = subprocess.run(
            [go, "build", "-trimpath", "-o", str(binary), "."],
            cwd=SOURCE_DIR,
            env=env,
            capture_output=True,
            text=True,
            timeout=BUILD_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired as exc:
        raise RealClientError(f"go build timed out after {BUILD_TIMEOUT_S}s") from exc
    if done.returncode != 0:
        raise RealClientError(f"go build failed ({done.returncode}):\n{done.stdout}{done.stderr}")
    return binary


@dataclass(frozen=True, slots=True)
class Result:
    returncode: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    @property
    def json(self) -> Any:
        """The last stdout line parsed as JSON (the tool prints exactly one on success), else None."""
        lines = self.stdout.strip().splitlines()
        if not lines:
            return None
        try:
            return json.loads(lines[-1])
        except ValueError:
            return None

    @property
    def error(self) -> str:
        """The tool's error message (its last `realclient:` stderr line), without the trace noise."""
        errors = [line for line in self.stderr.splitlines() if line.startswith("realclient: ")]
        return errors[-1].removeprefix("realclient: ") if errors else ""


class RealClient:
    """Async wrapper around the built binary; `trace` adds every HTTP request to Result.stderr."""

    def __init__(self, binary: Path, *, trace: bool = False, arch: str = "amd64") -> None:
        self.binary = binary
        self.trace = trace
        self.arch = arch

    async def push(
        self,
        base_url: str,
        token: str,
        file: Path,
        ref: str,
        *,
        description: str | None = None,
        timeout: float = 300,
    ) -> Result:
        """`ref` is entity/collection/container[:tag1,tag2] (tag defaults to latest)."""
        args = self._common(base_url, token, timeout)
        if description is not None:
            args += ["--description", description]
        return await self._run("push", [*args, str(file), ref], timeout)

    async def pull(
        self,
        base_url: str,
        token: str,
        ref: str,
        out: Path,
        *,
        concurrent: bool = False,
        concurrency: int | None = None,
        part_size: int | None = None,
        timeout: float = 300,
    ) -> Result:
        """Single-stream DownloadImage (follows 302) unless concurrent; then checks sha256 against the library."""
        args = self._common(base_url, token, timeout)
        if concurrent:
            args.append("--concurrent")
        if concurrency is not None:
            args += ["--concurrency", str(concurrency)]
        if part_size is not None:
            args += ["--part-size", str(part_size)]
        return await self._run("pull", [*args, ref, str(out)], timeout)

    async def version(self, base_url: str, *, timeout: float = 60) -> Result:
        return await self._run("version", ["--url", base_url, "--timeout", f"{timeout}s"], timeout)

    def _common(self, base_url: str, token: str, timeout: float) -> list[str]:
        return ["--url", base_url, "--token", token, "--arch", self.arch, "--timeout", f"{timeout}s"]

    async def _run(self, command: str, args: list[str], timeout: float) -> Result:
        argv = [str(self.binary), *(["--trace"] if self.trace else []), command, *args]
        process = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
        try:
            async with asyncio.timeout(timeout + KILL_GRACE_S):
                stdout, stderr = await process.communicate()
        except TimeoutError as exc:
            raise RealClientError(f"realclient {command} still running after {timeout + KILL_GRACE_S}s") from exc
        finally:
            # Also reached when the test itself is cancelled: never leave the child behind.
            if process.returncode is None:
                process.kill()
                await process.wait()
        assert process.returncode is not None
        return Result(process.returncode, stdout.decode(errors="replace"), stderr.decode(errors="replace"))
