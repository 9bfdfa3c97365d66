"""The whole deployment with real components: the production nginx config (deploy/nginx, rendered for loopback)
in front of two gateway replicas and of the real S3 server, the sregistry fake behind the replicas, and the
real Apptainer library client pushing and pulling through nginx only.

    realclient ──► nginx registry server ──► gateway-1 / gateway-2 ──► sregistry fake
        │
        └────────► nginx MinIO server ─────► radosgw / SeaweedFS

The gateways' public URL is nginx's registry server and their external S3 endpoint is nginx's MinIO server, so
every presigned URL names nginx and is verified by S3 after nginx passed it on.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from yarl import URL

from gateway.core.config import Config
from gateway.face.handler import Gateway
from gateway.ops.doctor import Status, run_doctor
from tests.support.nginx_harness import NginxProcess, render_and_start_nginx
from tests.support.processes import LOOPBACK, free_port
from tests.support.realclient import RealClient
from tests.support.s3_fixtures import BUCKET
from tests.support.s3servers import S3Server
from tests.support.stack import MIB, TOKEN, USER, add_public_image, stack_config, start_registry, unique_ref

MULTIPART_BYTES = 70 * MIB + 4321  # above the client's 64 MiB threshold: 3 parts of 32 MiB
PARTS = 3
CLIENT_TIMEOUT_S = 180.0  # per push or pull; the Go tool turns it into its own deadline
HTTP_TIMEOUT_S = 30.0
REPLICAS = ("gateway-1", "gateway-2")
# "trace: PUT http://127.0.0.1:1234/sregistry/c/n%3Asha256.ab?...partNumber=1... (Content-Type="" ...) -> 200"
TRACE_LINE = re.compile(r"^trace: (?P<method>[A-Z]+) (?P<url>\S+) .*-> (?P<status>\d+)$", re.MULTILINE)
REQUESTS_METRIC = re.compile(r"^gateway_requests_total\{(?P<labels>[^}]*)\} (?P<value>\S+)$", re.MULTILINE)
ROUTE_LABEL = re.compile(r'route="(?P<route>[^"]*)"')


@dataclass(frozen=True, slots=True)
class Deployment:
    nginx: NginxProcess
    s3: S3Server
    replicas: dict[str, str]  # name -> the replica's own URL (for scraping its metrics, as Prometheus would)
    config: Config


@dataclass(frozen=True, slots=True)
class Traced:
    method: str
    url: URL
    status: int

    @property
    def origin(self) -> str:
        return str(self.url.origin())


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("nginx-e2e") / "multipart.sif"
    path.write_bytes(os.urandom(MULTIPART_BYTES))
    return path


@pytest.fixture
async def deployment(aiohttp_server: Any, s3_server: S3Server, tmp_path: Path) -> AsyncIterator[Deployment]:
    public_port, s3_public_port = free_port(), free_port()
    public_url = f"http://{LOOPBACK}:{public_port}"
    s3_public_url = f"http://{LOOPBACK}:{s3_public_port}"
    registry, registry_url = await start_registry(
        aiohttp_server,
        s3_server,
        domain_name=public_url,  # DOMAIN_NAME: the public URL, as docs/deploy.md says
        s3_external_server=f"{LOOPBACK}:{s3_public_port}",  # MINIO_EXTERNAL_SERVER: nginx's MinIO server
    )
    add_public_image(registry)  # its pull redirect shows the doctor which S3 origin the registry signs for
    config = stack_config(
        s3_server,
        registry_url=registry_url,
        gateway_port=public_port,
        server={"public_url": public_url, "trusted_proxies": [LOOPBACK]},
        s3={"external_endpoint": s3_public_url},
    )
    replicas = {}
    for name in REPLICAS:
        port = free_port()
        await aiohttp_server(Gateway(config), port=port)  # the same config, so the same token secret
        replicas[name] = f"http://{LOOPBACK}:{port}"
    nginx = await asyncio.to_thread(
        render_and_start_nginx,
        tmp_path / "nginx",
        gateway_servers=[URL(url).raw_authority for url in replicas.values()],
        minio_upstream=f"{LOOPBACK}:{s3_server.port}",
        listen_port=public_port,
        minio_listen_port=s3_public_port,
    )
    try:
        assert (nginx.url, nginx.minio_url) == (public_url, s3_public_url)
        yield Deployment(nginx, s3_server, replicas, config)
    finally:
        await asyncio.to_thread(nginx.stop)


def traced_requests(stderr: str) -> list[Traced]:
    return [
        Traced(match["method"], URL(match["url"], encoded=True), int(match["status"]))
        for match in TRACE_LINE.finditer(stderr)
    ]


async def requests_served(session: aiohttp.ClientSession, replica_url: str) -> Counter[str]:
    """Requests one replica answered, by route class, from its own Prometheus metrics (its metrics excluded)."""
    async with session.get(f"{replica_url}/_gateway/metrics") as response:
        assert response.status == 200
        text = await response.text()
    served: Counter[str] = Counter()
    for sample in REQUESTS_METRIC.finditer(text):
        route = ROUTE_LABEL.search(sample["labels"])
        assert route is not None
        if route["route"] != "gateway":
            served[route["route"]] += int(float(sample["value"]))
    return served


def object_store_log_lines(nginx: NginxProcess, method: str) -> list[str]:
    """nginx access log lines of requests for objects in the bucket (only the MinIO server is asked for those)."""
    log = (nginx.prefix / "logs" / "access.log").read_text(encoding="utf-8", errors="replace")
    return [line for line in log.splitlines() if f'"{method} /{BUCKET}/' in line]


async def test_real_client_pushes_and_pulls_through_nginx_and_two_gateway_replicas(
    deployment: Deployment, realclient: RealClient, image: Path, tmp_path: Path
) -> None:
    nginx = deployment.nginx
    _, collection, container = unique_ref("nginx")
    ref = f"{USER}/{collection}/{container}:v1"

    pushed = await realclient.push(nginx.url, TOKEN, image, ref, timeout=CLIENT_TIMEOUT_S)
    assert pushed.ok, f"{pushed.error}\n{nginx.error_log_text()}"
    out = tmp_path / "pulled.sif"
    pulled = await realclient.pull(nginx.url, TOKEN, ref, out, timeout=CLIENT_TIMEOUT_S)
    assert pulled.ok, f"{pulled.error}\n{nginx.error_log_text()}"

    data = image.read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    assert hashlib.sha256(out.read_bytes()).hexdigest() == sha
    assert deployment.s3.read_object(f"{collection}/{container}:sha256.{sha}") == data

    # The client spoke only to nginx: library calls to the registry server, object bytes to the MinIO server.
    traced = traced_requests(pushed.stderr + pulled.stderr)
    object_requests = [request for request in traced if request.url.raw_path.startswith(f"/{BUCKET}/")]
    library_requests = [request for request in traced if request not in object_requests]
    assert {request.origin for request in object_requests} == {nginx.minio_url}
    assert {request.origin for request in library_requests} == {nginx.url}
    part_puts = [request for request in object_requests if request.method == "PUT"]
    assert [(request.url.query["partNumber"], request.status) for request in part_puts] == [
        (str(number), 200) for number in range(1, PARTS + 1)
    ]
    assert [request.status for request in object_requests if request.method == "GET"] == [200]
    # ...and nginx passed them on to S3 (the MinIO server's upstream), as its access log shows.
    assert len(object_store_log_lines(nginx, "PUT")) == PARTS
    assert len(object_store_log_lines(nginx, "GET")) == 1

    # nginx spread the library calls over both replicas; together they answered every upload call once.
    timeout = aiohttp.ClientTimeout(total=HTTP_TIMEOUT_S)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        served = {name: await requests_served(session, url) for name, url in deployment.replicas.items()}
    assert all(sum(counts.values()) > 0 for counts in served.values()), served
    total = sum(served.values(), Counter[str]())
    assert (total["upload-start"], total["upload-part"], total["upload-complete"]) == (1, PARTS, 1), served
    assert total["download"] == 1, served


async def test_doctor_passes_against_the_deployment_behind_nginx(deployment: Deployment) -> None:
    lines: list[str] = []
    code = await run_doctor(deployment.config, out=lines.append)
    assert code == 0, "\n".join(lines)
    # The deployment's public URL is plain http on loopback: the one risky setting doctor names.
    risky = [line for line in lines if line.startswith("⚠ configuration: ")]
    assert [line.split(": ", 2)[1] for line in risky] == ["server.public_url"], "\n".join(lines)
    checks = [line for line in lines if line[:1] in {status.value for status in Status} and line not in risky]
    verify = [line for line in checks if "refuses a body that does not match" in line]
    others = [line for line in checks if line not in verify]
    assert len(others) == 8 and all(line.startswith("✓") for line in others), "\n".join(lines)
    # radosgw verifies the sha256 of what it stores; SeaweedFS does not, and the doctor says so.
    expected = Status.PASS if deployment.s3.name == "radosgw" else Status.WARN
    assert [line[:1] for line in verify] == [expected.value], "\n".join(lines)
    assert f"public_url {deployment.nginx.url} reaches a gateway" in "\n".join(others)
