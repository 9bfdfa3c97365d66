"""The part-presign endpoint (``PUT v2/imagefile/{id}/_multipart``) as clients meet it: the gateway in its default
configuration vs an aiohttp endpoint doing the same work with botocore vs a trivial aiohttp handler, with wrk.

    .venv/bin/python bench/presign_endpoint.py [--duration 3] [--runs 5] [--connections 32] [--paced 2000] [--json FILE]

Every target is a process of its own pinned to CPU 0, wrk (one thread) runs on CPU 1; all three are started
once, warmed up, then measured in turn, round after round, so each round's ratios come from one stretch of the
machine's (noisy, shared) time. Every request asks for the URL of part 1 of a sealed upload, with the caller's
Authorization, as the library client does.

- gateway: ``python -m gateway serve``, default configuration (log level info: its access line and the upload
  route's line, to a file), one worker.
- botocore reference: an aiohttp ``web.Application`` (uvloop, no access log) whose handler does the gateway's
  work with the gateway's own validation and token code, and signs with botocore's ``generate_presigned_url``.
- trivial handler: the same application answering a fixed body of the same size after reading the request:
  the server's own cost, the floor for CPU per request.

Printed: req/s, p99 and CPU µs per request (from /proc) per target, median and range over the rounds, and per
round the gateway's ratio to the reference (req/s) and to the trivial handler (CPU per request).

CPU per request depends on the load: at saturation a faster server handles more requests per wake-up, and keeps
wrk busier, so fewer of its answers need to wake wrk (on a VM an inter-processor interrupt, charged to the
server's system time). ``--paced R`` (default 2,000; 0 skips it) adds rounds at an equal offered load: each
connection waits connections/R seconds after each answer (wrk's ``delay`` hook), so every target answers about
R requests per second and their CPU per request compares the work of a request at the same load. A registry's
real presign load is far lower still: one request per part, 64 MiB by default.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.proxy import PROXY_CPU, PYTHON, Sample, gateway, measure, pinned, running  # noqa: E402
from gateway.core.tokens import TokenSealer, UploadGrant  # noqa: E402
from tests.support.gateway_fixtures import TOKEN_SECRET  # noqa: E402
from tests.support.stack import free_port  # noqa: E402

IMAGE_ID = "42"
PATH = f"/v2/imagefile/{IMAGE_ID}/_multipart"
CREDENTIAL = "bench-credential-0123456789abcdef"
PART_SIZE = 64 * 1024 * 1024
# What bench/proxy.py's gateway_environment configures: the reference signs for the same endpoint and keys.
S3_ENDPOINT = "http://127.0.0.1:9"
ACCESS_KEY, SECRET_KEY, REGION = "AKIDEXAMPLE", "secret-secret", "us-east-1"
URL_EXPIRY_S = 3600

TARGETS = ("gateway, default config", "botocore reference", "trivial handler")


def upload_token() -> str:
    sealer = TokenSealer(TOKEN_SECRET)
    grant = UploadGrant(
        mode="adopt",
        image_id=IMAGE_ID,
        bucket="sregistry",
        key="test/big:sha256.92278b7c046c0acf0952b3e1663b8abb819c260e8a96705bad90833d87ca0874",
        upload_id="ZjUyNTk1ZWQtZTQwZC00YmI5LWE5Y2ItNzQzMDUzZjNkYWQyLjJkYjI0YWVkLTcyOWEtNDM2ZC04ZTM2LTA2NGIzNThjMmI3Mw",
        filesize=PART_SIZE * 16,
        part_size=PART_SIZE,
        total_parts=16,
        expires_at=int(time.time()) + 7 * 86400,
        caller=sealer.caller_tag(CREDENTIAL),
    )
    return sealer.seal(grant)


def part_body(token: str) -> bytes:
    sha256 = "6ab72eeb9e77b07540897e0c8d6d23ec8eef0f8c3a47e1b3f4e93443d9536bed"
    return json.dumps({"uploadID": token, "partNumber": 1, "partSize": PART_SIZE, "sha256sum": sha256}).encode()


def part_request(port: int) -> bytes:
    """The whole HTTP request, for clients that write raw bytes (bench/instructions.py)."""
    body = part_body(upload_token())
    head = (
        f"PUT {PATH} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {CREDENTIAL}\r\n"
        f"User-Agent: bench\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


def wrk_script(directory: Path, delay_ms: float = 0) -> Path:
    """The request as a wrk script; ``delay_ms``: each connection waits that long after each answer."""
    script = directory / f"presign-{delay_ms:g}.lua"
    body = part_body(upload_token()).decode()
    text = (
        f'wrk.method = "PUT"\nwrk.body = {json.dumps(body)}\n'
        f'wrk.headers["Authorization"] = "Bearer {CREDENTIAL}"\nwrk.headers["User-Agent"] = "bench"\n'
    )
    if delay_ms:
        text += f"function delay()\n  return {delay_ms:g}\nend\n"
    script.write_text(text)
    return script


# -- the reference servers -----------------------------------------------------------------------------------


def serve(port: int, trivial: bool) -> None:
    import botocore.session
    import uvloop
    from aiohttp import web
    from botocore.config import Config

    from gateway.core.bodies import PartRequest, check_image_id
    from gateway.core.tokens import credential_of

    client = botocore.session.get_session().create_client(
        "s3",
        region_name=REGION,
        endpoint_url=S3_ENDPOINT,
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
        config=Config(signature_version="s3v4", s3={"addressing_style": "path"}),
    )
    sealer = TokenSealer(TOKEN_SECRET)

    def presign(image_id: str, body: bytes, authorization: str | None) -> str:
        part = PartRequest.parse(body)
        grant = sealer.open(
            part.upload_token, image_id=image_id, credential=credential_of(authorization), now=time.time()
        )
        url: str = client.generate_presigned_url(
            "upload_part",
            Params={
                "Bucket": grant.bucket,
                "Key": grant.key,
                "PartNumber": part.part_number,
                "UploadId": grant.upload_id,
            },
            ExpiresIn=URL_EXPIRY_S,
        )
        return url

    fixed = presign(IMAGE_ID, part_body(upload_token()), f"Bearer {CREDENTIAL}")

    async def reference(request: web.Request) -> web.Response:
        image_id = check_image_id(request.match_info["image_id"])
        url = presign(image_id, await request.read(), request.headers.get("Authorization"))
        return web.json_response({"data": {"presignedURL": url}})

    async def floor(request: web.Request) -> web.Response:
        await request.read()
        return web.json_response({"data": {"presignedURL": fixed}})

    app = web.Application()
    app.router.add_put("/v2/imagefile/{image_id}/_multipart", floor if trivial else reference)
    uvloop.install()
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None, backlog=4096)


@contextmanager
def reference_server(trivial: bool) -> Iterator[tuple[int, str]]:
    port = free_port()
    mode = "--serve-trivial" if trivial else "--serve-reference"
    argv = pinned(PROXY_CPU, [PYTHON, str(Path(__file__).resolve()), mode, str(port)])
    with running(argv) as pid:
        url = f"http://127.0.0.1:{port}{PATH}"
        wait_port(port)
        yield pid, url


def wait_port(port: int, timeout_s: float = 30.0) -> None:
    import socket

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"port {port} not answering after {timeout_s}s")


# -- measuring -----------------------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> dict[str, object]:
    samples: dict[str, list[Sample]] = {name: [] for name in TARGETS}
    paced: dict[str, list[Sample]] = {name: [] for name in TARGETS}
    with tempfile.TemporaryDirectory(prefix="bench-presign-") as temp, ExitStack() as stack:
        directory = Path(temp)
        script = wrk_script(directory)
        gateway_pid, gateway_url = stack.enter_context(gateway(free_port(), directory))
        servers = {
            TARGETS[0]: (gateway_pid, gateway_url.rstrip("/") + PATH),
            TARGETS[1]: stack.enter_context(reference_server(trivial=False)),
            TARGETS[2]: stack.enter_context(reference_server(trivial=True)),
        }
        for pid, url in servers.values():
            measure(pid, url, 2, args.connections, script, warm_up_s=0)
        rounds(servers, script, samples, args, "run")
        if args.paced:
            paced_script = wrk_script(directory, delay_ms=args.connections / args.paced * 1000)
            rounds(servers, paced_script, paced, args, "paced run")
    found = report(samples, args)
    if args.paced:
        found["paced"] = report_paced(paced, args)
    return found


def rounds(
    servers: dict[str, tuple[int, str]],
    script: Path,
    samples: dict[str, list[Sample]],
    args: argparse.Namespace,
    label: str,
) -> None:
    """``args.runs`` rounds, each measuring every server once, in turn."""
    for round_number in range(args.runs):
        for name, (pid, url) in servers.items():
            sample = measure(pid, url, args.duration, args.connections, script, warm_up_s=0)
            samples[name].append(sample)
            print(
                f"  {label} {round_number + 1} {name}: {sample.requests_per_s:.0f} req/s, p99 {sample.p99_ms:.1f} ms, "
                f"{sample.cpu_us_per_request:.0f} µs/req",
                file=sys.stderr,
            )


def spread(values: list[float], digits: int = 0) -> str:
    return f"{statistics.median(values):.{digits}f} ({min(values):.{digits}f}–{max(values):.{digits}f})"


def report(samples: dict[str, list[Sample]], args: argparse.Namespace) -> dict[str, object]:
    gateway_runs, reference_runs, trivial_runs = (samples[name] for name in TARGETS)
    speedup = [g.requests_per_s / r.requests_per_s for g, r in zip(gateway_runs, reference_runs, strict=True)]
    cpu_ratio = [g.cpu_us_per_request / t.cpu_us_per_request for g, t in zip(gateway_runs, trivial_runs, strict=True)]
    print(
        f"\nPUT {PATH} (part presign), wrk -t1 -c{args.connections} -d{args.duration}s, {args.runs} rounds; "
        f"servers on CPU {PROXY_CPU}, wrk on the other; median (min–max)"
    )
    print(f"{'target':<26} {'req/s':>20} {'p99 ms':>20} {'CPU µs/request':>20}")
    for name, runs in samples.items():
        print(
            f"{name:<26} {spread([s.requests_per_s for s in runs]):>20} {spread([s.p99_ms for s in runs], 1):>20} "
            f"{spread([s.cpu_us_per_request for s in runs], 1):>20}"
        )
    print(f"gateway / botocore reference, req/s, per round: {' '.join(f'{x:.2f}' for x in speedup)}")
    print(f"  median {statistics.median(speedup):.2f}x, lowest {min(speedup):.2f}x")
    print(f"gateway / trivial handler, CPU per request, per round: {' '.join(f'{x:.2f}' for x in cpu_ratio)}")
    print(f"  median {statistics.median(cpu_ratio):.2f}x")
    return {
        "connections": args.connections,
        "duration_s": args.duration,
        "targets": {name: [vars(s) for s in runs] for name, runs in samples.items()},
        "speedup_vs_botocore": speedup,
        "cpu_vs_trivial": cpu_ratio,
    }


def report_paced(samples: dict[str, list[Sample]], args: argparse.Namespace) -> dict[str, object]:
    gateway_runs, _, trivial_runs = (samples[name] for name in TARGETS)
    cpu_ratio = [g.cpu_us_per_request / t.cpu_us_per_request for g, t in zip(gateway_runs, trivial_runs, strict=True)]
    print(
        f"\nthe same at an equal offered load: {args.paced} req/s each "
        f"(wrk delay {args.connections / args.paced:.3f} s per connection)"
    )
    print(f"{'target':<26} {'req/s':>20} {'CPU µs/request':>20} {'CPU share':>10}")
    for name, runs in samples.items():
        print(
            f"{name:<26} {spread([s.requests_per_s for s in runs]):>20} "
            f"{spread([s.cpu_us_per_request for s in runs], 1):>20} "
            f"{statistics.median(s.cpu_share for s in runs):>10.0%}"
        )
    print(f"gateway / trivial handler, CPU per request, per round: {' '.join(f'{x:.2f}' for x in cpu_ratio)}")
    print(f"  median {statistics.median(cpu_ratio):.2f}x")
    return {
        "offered_requests_per_s": args.paced,
        "targets": {name: [vars(s) for s in runs] for name, runs in samples.items()},
        "cpu_vs_trivial": cpu_ratio,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=int, default=3, help="seconds per measured wrk run")
    parser.add_argument("--runs", type=int, default=5, help="rounds over the three targets")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument(
        "--paced", type=int, default=2000, metavar="R", help="also measure at R req/s offered to each (0: skip)"
    )
    parser.add_argument("--json", type=Path, help="also write the samples here (bench/plot.py reads them)")
    parser.add_argument("--serve-reference", type=int, metavar="PORT", help=argparse.SUPPRESS)
    parser.add_argument("--serve-trivial", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_reference or args.serve_trivial:
        serve(args.serve_reference or args.serve_trivial, trivial=bool(args.serve_trivial))
        return
    found = run(args)
    if args.json:
        args.json.write_text(json.dumps(found, indent=1) + "\n")


if __name__ == "__main__":
    main()
