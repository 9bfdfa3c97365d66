"""Pulls (downloads.redirect_status, default "303"): Apptainer 1.0.x's library client (v1.2.2) pulls in parallel
only after a 303, and fails on sregistry's 302; newer clients need the image's size, which sregistry leaves null.
Proven with the real client against real S3 through the sregistry fake."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from gateway.core.config import DEFAULT_DOWNLOAD_EXPIRY_S
from gateway.face.handler import Gateway
from tests.support.processes import free_port
from tests.support.realclient import RealClient
from tests.support.registry import make_registry_app
from tests.support.s3_fixtures import BUCKET
from tests.support.s3servers import RadosGW, S3Server
from tests.support.stack import (
    MIB,
    TOKEN,
    USER,
    Stack,
    registry_settings,
    stack_config,
    start_stack,
    unique_ref,
)

IMAGE_BYTES = 12 * MIB + 345  # three 5 MiB ranges after the probe, the last one short


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("pull") / "image.sif"
    path.write_bytes(os.urandom(IMAGE_BYTES))
    return path


async def pushed(stack: Stack, realclient: RealClient, image: Path) -> str:
    _, collection, container = unique_ref("pull")
    ref = f"{USER}/{collection}/{container}:v1"
    result = await realclient.push(stack.gateway_url, TOKEN, image, ref)
    assert result.ok, result.error
    return ref


async def test_by_default_the_1_0_client_pulls_in_parallel_through_a_303(
    aiohttp_server: Any, s3_server: S3Server, realclient: RealClient, image: Path, tmp_path: Path
) -> None:
    stack = await start_stack(aiohttp_server, s3_server)
    ref = await pushed(stack, realclient, image)
    out = tmp_path / "pulled.sif"
    result = await realclient.pull(stack.gateway_url, TOKEN, ref, out, concurrent=True)
    assert result.ok, result.error + result.stderr[-3000:]
    assert out.read_bytes() == image.read_bytes()
    # The library's own debug line, printed only on the 303 path before its ranged GETs.
    assert f"size: {IMAGE_BYTES}, parts: 3, concurrency: 3" in result.stderr
    # Each ranged GET went out on a URL that lives as long as a 64 GiB pull at 10 Mbit/s, which S3 accepted.
    assert f"X-Amz-Expires={DEFAULT_DOWNLOAD_EXPIRY_S}&" in result.stderr


async def test_keep_passes_the_registrys_302_on_which_the_1_0_client_cannot_pull(
    aiohttp_server: Any, seaweedfs: S3Server, realclient: RealClient, image: Path, tmp_path: Path
) -> None:
    stack = await start_stack(aiohttp_server, seaweedfs, downloads={"redirect_status": "keep"})
    ref = await pushed(stack, realclient, image)
    result = await realclient.pull(stack.gateway_url, TOKEN, ref, tmp_path / "pulled.sif", concurrent=True)
    assert not result.ok
    assert "302" in result.error
    single = await realclient.pull(stack.gateway_url, TOKEN, ref, tmp_path / "single.sif")
    assert single.ok, single.error


async def test_a_download_the_registry_serves_itself_keeps_its_status(
    aiohttp_server: Any, seaweedfs: S3Server, realclient: RealClient, image: Path, tmp_path: Path
) -> None:
    """Old sregistry stores and serves the bytes itself, 200 and the whole file to any Range: a 303 would send
    ranged clients there and corrupt their pull, so only redirects into S3 become 303."""
    stack = await start_stack(aiohttp_server, seaweedfs, flavour="selfhosted")
    ref = await pushed(stack, realclient, image)
    entity_path, _, tag = ref.partition(":")
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {TOKEN}"}) as session:
        async with session.get(
            f"{stack.gateway_url}/v1/imagefile/{entity_path}:{tag}?arch=amd64", allow_redirects=False
        ) as answer:
            assert answer.status == 302
            assert answer.headers["Location"].startswith(stack.gateway_url + "/")
    single = await realclient.pull(stack.gateway_url, TOKEN, ref, tmp_path / "single.sif")
    assert single.ok, single.error
    assert (tmp_path / "single.sif").read_bytes() == image.read_bytes()


async def test_the_303_redirect_is_a_resigned_get_that_lives_as_configured(
    aiohttp_server: Any, seaweedfs: S3Server, realclient: RealClient, image: Path
) -> None:
    stack = await start_stack(aiohttp_server, seaweedfs, downloads={"url_expiry_seconds": 7200})
    ref = await pushed(stack, realclient, image)
    entity_path, _, tag = ref.partition(":")
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {TOKEN}"}) as session:
        async with session.get(
            f"{stack.gateway_url}/v1/imagefile/{entity_path}:{tag}?arch=amd64", allow_redirects=False
        ) as answer:
            assert answer.status == 303
            location = answer.headers["Location"]
        assert location.startswith(f"http://localhost:{seaweedfs.port}/")
        assert "X-Amz-Expires=7200" in location
        async with session.get(location, headers={"Range": "bytes=0-1023"}) as probe:
            assert probe.status == 206
            assert probe.headers["Content-Range"] == f"bytes 0-1023/{IMAGE_BYTES}"


async def image_json(url: str) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession(headers={"Authorization": f"Bearer {TOKEN}"}) as session,
        session.get(url) as answer,
    ):
        return answer.status, await answer.json(content_type=None)


def image_path(ref: str) -> str:
    entity_path, _, tag = ref.partition(":")
    return f"/v1/images/{entity_path}:{tag}?arch=amd64"


@pytest.mark.parametrize("unknown", ["null", "zero", "absent"])
async def test_image_answers_get_their_missing_size_from_s3(
    aiohttp_server: Any, s3_server: S3Server, realclient: RealClient, image: Path, unknown: str
) -> None:
    stack = await start_stack(aiohttp_server, s3_server, registry_settings={"unknown_image_size": unknown})
    ref = await pushed(stack, realclient, image)
    path = image_path(ref)
    _, direct = await image_json(stack.registry_url + path)
    said = {"null": None, "zero": 0, "absent": "no size"}[unknown]
    assert direct["data"].get("size", "no size") == said  # what the registry says (sregistry: null)
    status, through = await image_json(stack.gateway_url + path)
    assert status == 200
    assert through["data"]["size"] == IMAGE_BYTES
    assert through["data"]["hash"] == "sha256." + hashlib.sha256(image.read_bytes()).hexdigest()
    missing, _ = await image_json(stack.gateway_url + "/v1/images/nobody/none/nothing:v1")
    assert missing == 404


async def test_a_size_s3_cannot_tell_is_a_503_not_a_0(
    aiohttp_server: Any, radosgw: RadosGW, realclient: RealClient, image: Path
) -> None:
    stack = await start_stack(aiohttp_server, radosgw)
    ref = await pushed(stack, realclient, image)
    radosgw.stop_serving()
    try:
        status, answer = await image_json(stack.gateway_url + image_path(ref))
    finally:
        radosgw.start_serving()
    assert status == 503, answer
    assert answer["error"]["code"] == 503
    assert "image size unknown: S3 HeadObject failed" in answer["error"]["message"]


async def test_a_tagged_image_without_its_object_is_a_502_while_a_push_still_finds_its_new_row(
    aiohttp_server: Any, seaweedfs: S3Server, realclient: RealClient, image: Path
) -> None:
    stack = await start_stack(aiohttp_server, seaweedfs)
    ref = await pushed(stack, realclient, image)
    sha = hashlib.sha256(image.read_bytes()).hexdigest()
    _, collection, container = ref.partition(":")[0].split("/")
    s3 = seaweedfs.botocore_client()
    try:
        s3.delete_object(Bucket=BUCKET, Key=f"{collection}/{container}:sha256.{sha}")
    finally:
        s3.close()
    status, answer = await image_json(stack.gateway_url + image_path(ref))
    assert status == 502, answer
    assert "image size unknown" in answer["error"]["message"]
    assert "is not in S3" in answer["error"]["message"]
    # The lookup every push makes before it uploads: sregistry answers it with a new, empty row.
    status, answer = await image_json(f"{stack.gateway_url}/v1/images/{USER}/{collection}/{container}:sha256.{sha}")
    assert status == 200, answer
    assert answer["data"]["size"] is None
    again = await realclient.push(stack.gateway_url, TOKEN, image, ref)
    assert again.ok, again.error


async def test_a_registry_failing_its_download_answer_is_a_502_not_a_0(
    aiohttp_server: Any, seaweedfs: S3Server, realclient: RealClient, image: Path
) -> None:
    failing = {"imagefile": False}

    @web.middleware
    async def fail_downloads(request: web.Request, handler: Any) -> web.StreamResponse:
        if failing["imagefile"] and request.path.startswith("/v1/imagefile/"):
            return web.Response(status=500, text="Server Error (500)")
        return await handler(request)  # type: ignore[no-any-return]

    registry_port, gateway_port = free_port(), free_port()
    registry_url = f"http://127.0.0.1:{registry_port}"
    registry = make_registry_app(registry_settings(seaweedfs, registry_url))
    registry.middlewares.append(fail_downloads)
    await aiohttp_server(registry, port=registry_port)
    config = stack_config(seaweedfs, registry_url=registry_url, gateway_port=gateway_port)
    gateway = Gateway(config)
    await aiohttp_server(gateway, port=gateway_port)
    stack = Stack(seaweedfs, registry, registry_url, gateway, f"http://127.0.0.1:{gateway_port}", config)
    ref = await pushed(stack, realclient, image)
    failing["imagefile"] = True
    status, answer = await image_json(stack.gateway_url + image_path(ref))
    assert status == 502, answer
    assert answer["error"]["message"] == "image size unknown: the registry answered its download with 500"
