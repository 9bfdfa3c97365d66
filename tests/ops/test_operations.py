"""Health, readiness and metrics, served under /_gateway/ and never forwarded."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.core.route_table import ROUTE_NAMES, classify
from gateway.face.handler import Gateway
from tests.support.gateway_fixtures import GatewayTestServer, gateway_config
from tests.support.library_api import LibraryClient
from tests.support.processes import free_port
from tests.support.s3servers import S3Server
from tests.support.stack import stack_config, start_registry, start_stack


async def test_readyz_answers_ready_when_registry_and_s3_answer(aiohttp_server: Any, seaweedfs: S3Server) -> None:
    stack = await start_stack(aiohttp_server, seaweedfs)
    async with aiohttp.ClientSession() as session, session.get(stack.gateway_url + "/_gateway/readyz") as response:
        assert response.status == 200
        assert (await response.json())["status"] == "ready"
    assert not any(r.path.startswith("/_gateway") for r in stack.requests_seen_by_registry)


async def test_readyz_answers_503_json_naming_the_unreachable_registry(
    aiohttp_client: Any, seaweedfs: S3Server
) -> None:
    config = stack_config(seaweedfs, registry_url=f"http://127.0.0.1:{free_port()}", gateway_port=8080)
    client = await aiohttp_client(GatewayTestServer(Gateway(config)))
    response = await client.get("/_gateway/readyz")
    assert response.status == 503
    error = (await response.json())["error"]
    assert error["code"] == 503 and error["message"].startswith("registry:")


async def test_readyz_answers_503_when_the_bucket_is_missing(
    aiohttp_server: Any, aiohttp_client: Any, seaweedfs: S3Server
) -> None:
    _, stack_registry = await start_registry(aiohttp_server, seaweedfs)
    config = stack_config(
        seaweedfs, registry_url=stack_registry, gateway_port=8080, s3={"bucket": "no-such-bucket-here"}
    )
    client = await aiohttp_client(GatewayTestServer(Gateway(config)))
    async with client.get("/_gateway/readyz") as response:
        assert response.status == 503
        assert "no-such-bucket-here" in (await response.json())["error"]["message"]


async def test_metrics_count_requests_presigns_and_uploads_in_prometheus_text(
    aiohttp_server: Any, seaweedfs: S3Server
) -> None:
    stack = await start_stack(aiohttp_server, seaweedfs)
    async with aiohttp.ClientSession() as session:
        client = LibraryClient(session, stack.gateway_url)
        await client.call("GET", "/version")
        image = await client.create_image("alice", "cmetrics" + str(free_port()), "n", "a" * 64)
        start = await client.start(image, 6 * 1024 * 1024)
        await client.presign(image, start.data["uploadID"], 1, b"x" * 6 * 1024 * 1024)
        async with session.get(stack.gateway_url + "/_gateway/metrics") as response:
            assert response.status == 200
            assert response.content_type == "text/plain"
            text = await response.text()
    assert 'gateway_requests_total{route="proxy",status="200"}' in text
    assert 'gateway_requests_total{route="upload-start",status="200"} 1' in text
    assert 'gateway_presigned_urls_total{kind="part"} 1' in text
    assert 'gateway_uploads_total{event="started",mode="adopt"} 1' in text
    assert 'gateway_request_duration_seconds_bucket{route="upload-part",le="+Inf"} 1' in text


@pytest.mark.parametrize(
    ("method", "path", "expected"),
    [
        ("POST", "/v2/imagefile/1/_multipart", "upload-start"),
        ("PUT", "/v2/imagefile/1/_multipart", "upload-part"),
        ("PUT", "/v2/imagefile/1/_multipart_complete?x", "upload-complete"),
        ("PUT", "/v2/imagefile/1/_multipart_abort", "upload-abort"),
        ("POST", "/v2/imagefile/1", "legacy-start"),
        ("PUT", "/v2/imagefile/1/_complete", "legacy-complete"),
        ("PUT", "/v2/imagefile/1/_multipar", "refused"),
        ("GET", "/v2/imagefile/1/_multipart", "refused"),
        ("GET", "/v1/oci-redirect?namespace=a%2Fb%2Fc", "oci-redirect"),
        ("GET", "/v1/imagefile/a/b/c:v1?arch=amd64", "download"),
        ("HEAD", "/v1/imagefile/a/b/c:v1", "download"),
        ("GET", "/v1/images/a/b/c:v1?arch=amd64", "image"),
        ("PUT", "/v1/images/a/b/c:v1", "proxy"),
        ("GET", "http://elsewhere/v1/tags/7", "refused"),
        ("GET", "/assets/config/config.prod.json", "discovery"),
        ("GET", "/_gateway/metrics", "gateway"),
        ("GET", "/v1/tags/7", "proxy"),
    ],
)
def test_route_classes_are_a_small_fixed_set(method: str, path: str, expected: str) -> None:
    assert classify(method, path).name == expected
    assert expected in ROUTE_NAMES


async def test_request_ids_are_taken_or_made_passed_upstream_and_logged_without_secrets(
    aiohttp_server: Any, seaweedfs: S3Server, caplog: pytest.LogCaptureFixture
) -> None:
    stack = await start_stack(aiohttp_server, seaweedfs)
    caplog.set_level("INFO")
    async with aiohttp.ClientSession() as session:
        async with session.get(stack.gateway_url + "/version", headers={"X-Request-Id": "abc-123"}) as given:
            assert given.status == 200
        async with session.post(stack.gateway_url + "/v2/imagefile/1/_multipart", data=b"{") as made:
            assert made.status == 400
            made_id = made.headers["X-Request-Id"]
    assert len(made_id) == 32
    upstream_ids = [r.headers.get("X-Request-Id") for r in stack.requests_seen_by_registry]
    assert upstream_ids == ["abc-123"]
    access = [r for r in caplog.records if r.name == "gateway.access"]
    assert [(r.route, r.status) for r in access] == [("proxy", "200"), ("upload-start", "400")]  # type: ignore[attr-defined]
    assert all("Authorization" not in r.getMessage() for r in caplog.records)


async def test_the_legacy_start_is_logged_under_its_own_route_name_not_the_image_id(
    aiohttp_server: Any, seaweedfs: S3Server, caplog: pytest.LogCaptureFixture
) -> None:
    stack = await start_stack(aiohttp_server, seaweedfs)
    caplog.set_level("INFO")
    async with aiohttp.ClientSession() as session:
        client = LibraryClient(session, stack.gateway_url)
        image = await client.create_image("alice", "legacy" + str(free_port()), "n", "c" * 64)
        caplog.clear()
        assert (await client.call("POST", f"/v2/imagefile/{image}", {"filesize": 10})).status == 200
    (access,) = [r.__dict__ for r in caplog.records if r.name == "gateway.access"]
    assert (access["route"], access["image_id"], access["status"]) == ("legacy-start", image, "200")
    assert not [r for r in caplog.records if r.name == "gateway.routes"]  # one line per request


def test_upload_tokens_never_reach_a_log_line() -> None:
    from gateway.core.route_table import loggable_path

    assert loggable_path("/_gateway/uploads/SECRET-TOKEN/parts?x=1") == "/_gateway/uploads/…/parts"
    assert loggable_path("/v1/imagefile/a/b/c:v1?X-Amz-Signature=abc") == "/v1/imagefile/a/b/c:v1"


async def test_each_intercepted_call_logs_route_image_part_mode_and_status_on_its_access_line(
    aiohttp_server: Any, seaweedfs: S3Server, caplog: pytest.LogCaptureFixture
) -> None:
    stack = await start_stack(aiohttp_server, seaweedfs)
    caplog.set_level("INFO")
    async with aiohttp.ClientSession() as session:
        client = LibraryClient(session, stack.gateway_url)
        image = await client.create_image("alice", "clog" + str(free_port()), "n", "c" * 64)
        caplog.clear()
        start = await client.start(image, 40 * 1024 * 1024)
        await client.presign(image, start.data["uploadID"], 2, b"x" * (8 * 1024 * 1024))
    access = [r.__dict__ for r in caplog.records if r.name == "gateway.access"]
    lines = [line for line in access if line["route"].startswith("upload-")]
    assert [(line["route"], line["status"], line["mode"]) for line in lines] == [
        ("upload-start", "200", "adopt"),
        ("upload-part", "200", "adopt"),
    ]
    assert len(lines) == len(access)  # the upload start's own registry calls are not requests to the gateway
    assert lines[0]["parts"] == 2 and lines[1]["part"] == "2/2" and lines[1]["image_id"] == image
    assert start.data["uploadID"] not in str(lines)


async def test_an_idle_client_connection_is_closed_after_server_keepalive_seconds(aiohttp_server: Any) -> None:
    # aiohttp's low-level server would keep it 3630 s; the gateway's own setting must reach the server.
    config = gateway_config(upstream_url=f"http://127.0.0.1:{free_port()}", server={"keepalive_seconds": 0.5})
    server = await aiohttp_server(Gateway(config))
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        writer.write(b"GET /_gateway/healthz HTTP/1.1\r\nHost: gw\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        assert head.startswith(b"HTTP/1.1 200")
        length = int(next(line for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:"))[15:])
        await asyncio.wait_for(reader.readexactly(length), 10)
        # Idle from here on: the server hangs up (bounded wait; a server keeping it 3630 s fails here).
        assert await asyncio.wait_for(reader.read(1), 20) == b""
    finally:
        writer.close()


def test_the_default_client_keepalive_is_75_seconds_not_aiohttps_hour() -> None:
    config = gateway_config(upstream_url="http://127.0.0.1:8000")
    assert config.server.keepalive_seconds == 75.0


def test_the_documented_route_labels_are_the_route_tables() -> None:
    deploy = (Path(__file__).resolve().parents[2] / "docs" / "deploy.md").read_text()
    listed = deploy.split("is one small set:", 1)[1].split("(`ROUTE_NAMES`", 1)[0]
    assert set(re.findall(r"`([a-z0-9-]+)`", listed)) == ROUTE_NAMES
