"""End to end with Apptainer's real library client (container-library-client v1.2.2, built from Debian's
sources): push through the gateway, pull back (single stream, and in parallel as `apptainer pull` does, with the
default downloads settings), compare sha256 and the bytes that landed in storage.

The internal and external S3 endpoints use different host names (127.0.0.1 vs localhost), so a URL signed for
the wrong host fails; radosgw verifies every part's bound sha256.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import pytest

from gateway.core.config import DEFAULT_DOWNLOAD_EXPIRY_S
from tests.support.realclient import RealClient
from tests.support.registry import Flavour
from tests.support.s3servers import S3Server
from tests.support.stack import MIB, TOKEN, USER, Stack, start_stack, unique_ref

MULTIPART_BYTES = 70 * MIB + 4321  # above the client's 64 MiB threshold: 3 parts of 32 MiB
LEGACY_BYTES = 9 * MIB + 1  # at most 64 MiB: the single-PUT flow


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("images")
    files = {}
    for name, size in (("multipart", MULTIPART_BYTES), ("legacy", LEGACY_BYTES)):
        path = folder / f"{name}.sif"
        path.write_bytes(os.urandom(size))
        files[name] = path
    return files


def stored_bytes(stack: Stack, collection: str, container: str, sha: str) -> bytes:
    if stack.flavour == "selfhosted":
        (image,) = [i for i in stack.registry_state.images.values() if i.version == f"sha256.{sha}" and i.file_path]
        return image.file_path.read_bytes()  # type: ignore[no-any-return]
    return stack.s3.read_object(f"{collection}/{container}:sha256.{sha}")


async def push_and_pull(stack: Stack, realclient: RealClient, image: Path, tmp_path: Path) -> None:
    _, collection, container = unique_ref()
    ref = f"{USER}/{collection}/{container}:v1"
    pushed = await realclient.push(stack.gateway_url, TOKEN, image, ref)
    assert pushed.ok, pushed.error
    out = tmp_path / "pulled.sif"
    pulled = await realclient.pull(stack.gateway_url, TOKEN, ref, out)
    assert pulled.ok, pulled.error
    data = image.read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    assert out.read_bytes() == data
    assert stored_bytes(stack, collection, container, sha) == data
    await pull_as_apptainer_does(stack, realclient, ref, data, tmp_path / "concurrent.sif")


async def pull_as_apptainer_does(stack: Stack, realclient: RealClient, ref: str, data: bytes, out: Path) -> None:
    """`apptainer pull` (1.0.x) uses ConcurrentDownloadImage, which needs a 303. With the default
    downloads settings the gateway answers one for a download in S3, and the client takes its ranged path (its
    own debug line) on URLs that live downloads.url_expiry_seconds. The selfhosted registry serves the file
    itself, ignoring Range: its 302 is passed on, which this client cannot follow (it never could)."""
    pulled = await realclient.pull(stack.gateway_url, TOKEN, ref, out, concurrent=True)
    if stack.flavour == "selfhosted":
        assert not pulled.ok
        assert "unexpected HTTP status 302" in pulled.error
        return
    assert pulled.ok, pulled.error + pulled.stderr[-3000:]
    assert out.read_bytes() == data
    assert f"size: {len(data)}, parts: {-(-len(data) // (5 * MIB))}, concurrency: 3" in pulled.stderr
    assert f"X-Amz-Expires={DEFAULT_DOWNLOAD_EXPIRY_S}&" in pulled.stderr


@pytest.mark.parametrize("flavour", ["s3", "selfhosted"])
@pytest.mark.parametrize("flow", ["multipart", "legacy"])
async def test_real_client_pushes_and_pulls_through_the_gateway(
    aiohttp_server: Any,
    s3_server: S3Server,
    realclient: RealClient,
    images: dict[str, Path],
    tmp_path: Path,
    flavour: Flavour,
    flow: str,
) -> None:
    stack = await start_stack(aiohttp_server, s3_server, flavour=flavour)
    await push_and_pull(stack, realclient, images[flow], tmp_path)
    started = [r for r in stack.requests_seen_by_registry if r.method == "POST" and r.path.startswith("/v2/")]
    assert started, "the registry was never asked who may push"


@pytest.mark.parametrize("flavour", ["s3", "selfhosted"])
async def test_real_client_falls_back_to_the_single_upload_when_multipart_is_off(
    aiohttp_server: Any,
    s3_server: S3Server,
    realclient: RealClient,
    images: dict[str, Path],
    tmp_path: Path,
    flavour: Flavour,
) -> None:
    stack = await start_stack(
        aiohttp_server,
        s3_server,
        flavour=flavour,
        uploads={"multipart": False},
    )
    await push_and_pull(stack, realclient, images["multipart"], tmp_path)
