"""Health, readiness and metrics, served under /_gateway/ and never forwarded."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest

from gateway.app import create_app
from gateway.routes import route_class
from tests.libclient import LibraryClient
from tests.s3servers import S3Server
from tests.stack import free_port, stack_config, start_registry, start_stack


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
    client = await aiohttp_client(create_app(config))
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
    client = await aiohttp_client(create_app(config))
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
        ("GET", "/v1/imagefile/a/b/c:v1?arch=amd64", "download"),
        ("GET", "/assets/config/config.prod.json", "discovery"),
        ("GET", "/_gateway/metrics", "gateway"),
        ("GET", "/v1/tags/7", "proxy"),
    ],
)
def test_route_classes_are_a_small_fixed_set(method: str, path: str, expected: str) -> None:
    assert route_class(method, path) == expected
