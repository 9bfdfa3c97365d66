"""Small GETs (~200 B JSON) through the gateway vs nginx proxy_pass vs straight to the upstream, with wrk, in one
run. Prints req/s, p99 latency and the proxy's CPU time per request (from /proc), with ratios to nginx.

    .venv/bin/python bench/proxy.py [--duration 10] [--connections 50] [--runs 2] [--workers]

Conditions: the proxy under test (nginx with one worker, or the gateway) is pinned to CPU 0; the upstream (a
trivial aiohttp app on uvloop) and wrk (one thread) share CPU 1. nginx keeps 64 keep-alive connections to the
upstream and logs nothing. The gateway runs its default configuration (log level info: one access line per
request, written to stderr, which goes to a file as under a service manager) unless the row says otherwise.
Runs alternate between the targets and the median is printed. Not a test: these machines are shared and noisy.

``--workers`` adds server.workers 1 vs 2. On a 2-core machine that cannot show scaling: one core must host wrk
and the upstream, so two workers either share CPU 0 (same capacity, a little more overhead) or take CPU time from
the load generator. It shows that workers cost nothing and that the port is shared; the scaling needs more cores.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support.processes import free_port  # noqa: E402
from tests.support.proxy_harness import gateway_environment  # noqa: E402

PYTHON = sys.executable
BODY = b'{"data":{"version":"1.1.24","apiVersion":"2.0.0-alpha.2"},"pad":"' + b"x" * 130 + b'"}'
TICKS = os.sysconf("SC_CLK_TCK")
PROXY_CPU = "0"
NGINX_ROW = "nginx proxy_pass (1 worker)"
DEFAULT_ROW = "gateway, default config"
DIRECT_ROW = "direct to the upstream (CPU 0)"
LOAD_CPU = "1"

NGINX_CONF = """
worker_processes 1;
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {dir}/body; proxy_temp_path {dir}/proxy; fastcgi_temp_path {dir}/fcgi;
  uwsgi_temp_path {dir}/uwsgi; scgi_temp_path {dir}/scgi;
  upstream registry {{ server 127.0.0.1:{upstream_port}; keepalive 64; }}
  server {{
    listen 127.0.0.1:{port};
    location / {{
      proxy_pass http://registry;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffer_size 1m; proxy_buffers 4 1m; proxy_busy_buffers_size 2m;
      proxy_request_buffering off; client_max_body_size 0;
    }}
  }}
}}
"""


# -- processes -------------------------------------------------------------------------------------------------


def process_tree(pid: int) -> list[int]:
    pids = [pid]
    for task in Path(f"/proc/{pid}/task").iterdir():
        with suppress(OSError):
            for child in (task / "children").read_text().split():
                pids += process_tree(int(child))
    return pids


def cpu_seconds(pid: int) -> float:
    """CPU time of ``pid`` and its live descendants, every thread: the scheduler's own count in nanoseconds
    (/proc/PID/task/TID/schedstat) where the kernel keeps it, else user + system clock ticks.

    Ticks are samples: a server answering in bursts of ~100 µs at a quarter of a core is caught by about a quarter
    of the ticks, so a few seconds' count varies by ±10% (binomially) from run to run; at saturation both agree."""
    nanoseconds, ticks = 0, 0
    for each in process_tree(pid):
        with suppress(OSError):
            fields = Path(f"/proc/{each}/stat").read_text().rsplit(")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])
            for task in Path(f"/proc/{each}/task").iterdir():
                nanoseconds += int((task / "schedstat").read_text().split()[0])
    return nanoseconds / 1e9 if nanoseconds else ticks / TICKS


def rss_kib(pid: int, field: str = "VmRSS") -> int:
    total = 0
    for each in process_tree(pid):
        with suppress(OSError, LookupError):
            line = next(x for x in Path(f"/proc/{each}/status").read_text().splitlines() if x.startswith(field))
            total += int(line.split()[1])
    return total


def wait_http(url: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with suppress(OSError):
            with urllib.request.urlopen(url, timeout=2) as answer:
                if answer.status == 200:
                    return
        time.sleep(0.1)
    raise RuntimeError(f"{url} not answering after {timeout_s}s")


@contextmanager
def running(
    argv: list[str], *, env: dict[str, str] | None = None, ready_url: str | None = None, log: Path | None = None
) -> Iterator[int]:
    """Start a process (pinned by argv's taskset), yield its pid, stop it (SIGTERM, then SIGKILL) at exit.
    Its stderr goes to ``log`` when given (the gateway's access log, written as users run it), else nowhere."""
    with open(log or os.devnull, "ab") as stderr:
        process = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr)
    try:
        if ready_url is not None:
            wait_http(ready_url)
        yield process.pid
    finally:
        tree = process_tree(process.pid) if process.poll() is None else []
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
        for pid in tree[1:]:
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def pinned(cpus: str, argv: list[str]) -> list[str]:
    return ["taskset", "-c", cpus, *argv]


# The configuration's defaults (gateway_environment sets warning for the tests' quiet logs).
DEFAULTS = {"SERVER_LOG_LEVEL": "info", "SERVER_EVENT_LOOP": "auto"}


@contextmanager
def gateway(
    upstream_port: int,
    directory: Path,
    cpus: str = PROXY_CPU,
    environ: dict[str, str] | None = None,
    **settings: str,
) -> Iterator[tuple[int, str]]:
    """A gateway process in its default configuration but for ``settings`` (GATEWAY_* variables without the
    prefix); ``environ`` is added as it is. Its log (stderr) is appended to a file in ``directory``."""
    port = free_port()
    argv = pinned(cpus, [PYTHON, "-m", "gateway", "serve"])
    env = gateway_environment(f"http://127.0.0.1:{upstream_port}", port, **(DEFAULTS | settings)) | (environ or {})
    log = directory / "gateway.log"
    with running(argv, env=env, ready_url=f"http://127.0.0.1:{port}/_gateway/healthz", log=log) as pid:
        yield pid, f"http://127.0.0.1:{port}/"


@contextmanager
def nginx(upstream_port: int, directory: Path) -> Iterator[tuple[int, str]]:
    port = free_port()
    conf = directory / "nginx.conf"
    conf.write_text(NGINX_CONF.format(dir=directory, upstream_port=upstream_port, port=port))
    argv = pinned(PROXY_CPU, ["nginx", "-c", str(conf), "-p", str(directory)])
    with running(argv, ready_url=f"http://127.0.0.1:{port}/version") as pid:
        yield pid, f"http://127.0.0.1:{port}/"


@contextmanager
def upstream(cpus: str = LOAD_CPU) -> Iterator[tuple[int, int]]:
    port = free_port()
    argv = pinned(cpus, [PYTHON, str(Path(__file__).resolve()), "--serve-upstream", str(port)])
    with running(argv, ready_url=f"http://127.0.0.1:{port}/version") as pid:
        yield pid, port


@contextmanager
def naive_proxy(upstream_port: int) -> Iterator[tuple[int, str]]:
    port = free_port()
    argv = pinned(
        PROXY_CPU, [PYTHON, str(Path(__file__).resolve()), "--serve-naive-proxy", str(port), str(upstream_port)]
    )
    with running(argv, ready_url=f"http://127.0.0.1:{port}/version") as pid:
        yield pid, f"http://127.0.0.1:{port}/"


def serve_naive_proxy(port: int, upstream_port: int) -> None:
    """The calibration row: the proxy the issue measured as "naive" (aiohttp's server and client, uvloop,
    streamed both ways, hop-by-hop headers dropped), so this machine's figures can be read against the issue's."""
    import aiohttp
    import uvloop
    from aiohttp import web

    hop_by_hop = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-authorization"}

    async def forward(request: web.Request) -> web.StreamResponse:
        session: aiohttp.ClientSession = request.app["session"]
        headers = {k: v for k, v in request.headers.items() if k.lower() not in hop_by_hop}
        async with session.request(
            request.method,
            f"http://127.0.0.1:{upstream_port}{request.raw_path}",
            headers=headers,
            data=request.content if request.body_exists else None,
            allow_redirects=False,
        ) as answer:
            response = web.StreamResponse(
                status=answer.status,
                headers={k: v for k, v in answer.headers.items() if k.lower() not in hop_by_hop},
            )
            await response.prepare(request)
            async for chunk in answer.content.iter_any():
                await response.write(chunk)
            await response.write_eof()
            return response

    async def session_ctx(app: web.Application) -> AsyncIterator[None]:
        app["session"] = aiohttp.ClientSession(auto_decompress=False)
        yield
        await app["session"].close()

    app = web.Application()
    app.cleanup_ctx.append(session_ctx)
    app.router.add_route("*", "/{tail:.*}", forward)
    uvloop.install()
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None, backlog=4096)


def serve_upstream(port: int) -> None:
    from aiohttp import web

    async def answer(request: web.Request) -> web.Response:
        return web.Response(body=BODY, content_type="application/json")

    app = web.Application()
    app.router.add_get("/{tail:.*}", answer)
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None, backlog=4096)


# -- measuring -----------------------------------------------------------------------------------------------


@dataclass
class Sample:
    requests_per_s: float
    p99_ms: float
    cpu_us_per_request: float
    cpu_share: float  # of one core


def wrk(url: str, duration_s: float, connections: int, script: Path | None = None) -> tuple[int, float, float, float]:
    """(requests, req/s, p99 ms, seconds) from one wrk run on the load CPU; ``script``: a wrk Lua script."""
    options = ["-s", str(script)] if script else []
    argv = pinned(LOAD_CPU, ["wrk", "-t1", f"-c{connections}", f"-d{int(duration_s)}s", "--latency", *options, url])
    out = subprocess.run(argv, capture_output=True, text=True, timeout=duration_s + 60, check=True).stdout
    requests_match = re.search(r"(\d+) requests in ([\d.]+)(\w+)", out)
    rate_match = re.search(r"Requests/sec:\s+([\d.]+)", out)
    p99_match = re.search(r"99%\s+([\d.]+)(\w+)", out)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if not (requests_match and rate_match and p99_match) or errors:
        raise RuntimeError(f"wrk failed or saw errors:\n{out}")
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}
    seconds = float(requests_match[2]) * (60 if requests_match[3] == "m" else 1)
    p99 = float(p99_match[1]) * scale[p99_match[2]]
    return int(requests_match[1]), float(rate_match[1]), p99, seconds


def measure(
    pid: int, url: str, duration_s: float, connections: int, script: Path | None = None, warm_up_s: int = 2
) -> Sample:
    if warm_up_s:
        wrk(url, warm_up_s, connections, script)  # pools filled, code paths hot
    cpu_before = cpu_seconds(pid)
    requests, rate, p99, seconds = wrk(url, duration_s, connections, script)
    cpu = cpu_seconds(pid) - cpu_before
    return Sample(rate, p99, cpu / requests * 1e6, cpu / seconds)


def median(samples: list[Sample]) -> Sample:
    return Sample(
        statistics.median(s.requests_per_s for s in samples),
        statistics.median(s.p99_ms for s in samples),
        statistics.median(s.cpu_us_per_request for s in samples),
        statistics.median(s.cpu_share for s in samples),
    )


def report(rows: dict[str, Sample], reference: str) -> None:
    ref = rows[reference]
    print(f"{'target':<34} {'req/s':>9} {'p99 ms':>8} {'CPU µs/req':>11} {'CPU':>5}   vs {reference}")
    for name, s in rows.items():
        ratios = (
            f"{s.requests_per_s / ref.requests_per_s:.2f}x req/s, {s.p99_ms / ref.p99_ms:.2f}x p99, "
            f"{s.cpu_us_per_request / ref.cpu_us_per_request:.2f}x CPU"
        )
        print(
            f"{name:<34} {s.requests_per_s:>9.0f} {s.p99_ms:>8.2f} {s.cpu_us_per_request:>11.1f} "
            f"{s.cpu_share:>5.0%}   {ratios if name != reference else ''}"
        )


def run(args: argparse.Namespace) -> None:
    if (os.cpu_count() or 1) < 2:
        raise SystemExit("needs at least 2 CPUs (the proxy on one, wrk and the upstream on the other)")
    samples: dict[str, list[Sample]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-proxy-") as temp:
        directory = Path(temp)
        with upstream(LOAD_CPU) as (_, upstream_port):
            targets = {
                "nginx proxy_pass (1 worker)": lambda: nginx(upstream_port, directory),
                "naive aiohttp proxy, uvloop": lambda: naive_proxy(upstream_port),
                DEFAULT_ROW: lambda: gateway(upstream_port, directory),
                "gateway, log_level warning": lambda: gateway(upstream_port, directory, SERVER_LOG_LEVEL="warning"),
                "gateway, asyncio loop": lambda: gateway(upstream_port, directory, SERVER_EVENT_LOOP="asyncio"),
            }
            if args.workers:
                targets["gateway, 2 workers on CPU 0"] = lambda: gateway(upstream_port, directory, SERVER_WORKERS="2")
                targets["gateway, 2 workers on CPUs 0-1"] = lambda: gateway(
                    upstream_port, directory, cpus="0,1", SERVER_WORKERS="2"
                )
            targets = {name: start for name, start in targets.items() if name in args.only or not args.only}
            for round_number in range(args.runs):
                for name, start in targets.items():
                    with start() as (pid, url):
                        sample = measure(pid, url, args.duration, args.connections)
                    samples.setdefault(name, []).append(sample)
                    print(f"  run {round_number + 1} {name}: {sample.requests_per_s:.0f} req/s", file=sys.stderr)
        # The upstream alone, on its own CPU, wrk on the other: the ceiling every proxy sits under.
        if not args.only or DIRECT_ROW in args.only:
            with upstream(PROXY_CPU) as (pid, port):
                samples[DIRECT_ROW] = [
                    measure(pid, f"http://127.0.0.1:{port}/version", args.duration, args.connections)
                ]
    rows = {name: median(found) for name, found in samples.items()}
    if "nginx proxy_pass (1 worker)" not in rows:
        raise SystemExit("\n".join(f"{name}: {s}" for name, s in rows.items()))
    print(
        f"\nsmall GET ({len(BODY)} B body), wrk -t1 -c{args.connections} -d{args.duration}s, "
        f"median of {args.runs} run(s); proxy on CPU {PROXY_CPU}, upstream + wrk on CPU {LOAD_CPU}"
    )
    report(rows, "nginx proxy_pass (1 worker)")
    if args.json:
        found = {"connections": args.connections, "duration_s": args.duration, "reference": NGINX_ROW}
        args.json.write_text(json.dumps(found | {"targets": {n: [vars(s) for s in r] for n, r in samples.items()}}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds per measured wrk run")
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--runs", type=int, default=2, help="rounds over all targets (median reported)")
    parser.add_argument("--workers", action="store_true", help="also server.workers = 2 (see the module doc)")
    parser.add_argument("--only", action="append", default=[], metavar="TARGET", help="measure only these rows")
    parser.add_argument("--json", type=Path, help="also write the samples here (bench/plot.py reads them)")
    parser.add_argument("--serve-upstream", type=int, metavar="PORT", help=argparse.SUPPRESS)
    parser.add_argument("--serve-naive-proxy", type=int, nargs=2, metavar=("PORT", "UPSTREAM"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_upstream:
        serve_upstream(args.serve_upstream)
        return
    if args.serve_naive_proxy:
        serve_naive_proxy(*args.serve_naive_proxy)
        return
    run(args)


if __name__ == "__main__":
    main()
