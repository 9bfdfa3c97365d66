"""Our push/pull client end to end: through the gateway, to the sregistry fake and real S3."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import pytest

from gateway.libclient.errors import IntegrityError
from gateway.libclient.pull import PullOptions, pull
from gateway.libclient.push import PartUploaded, PushHooks, PushOptions, push
from gateway.libclient.refs import parse_ref
from gateway.libclient.retry import RetryPolicy
from tests.support.s3_fixtures import BUCKET
from tests.support.s3servers import RadosGW, S3Server
from tests.support.stack import MIB, TOKEN, USER, Stack, start_stack, unique_ref

SIZE = 45 * MIB + 999  # 8 parts of 6 MiB, the last one short


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("client") / "image.sif"
    path.write_bytes(os.urandom(SIZE))
    return path


def options(stack: Stack, image: Path, ref: str, tmp_path: Path, **changes: Any) -> PushOptions:
    values: dict[str, Any] = dict(
        file=image,
        ref=parse_ref(f"library://{ref}"),
        url=stack.gateway_url,
        token=TOKEN,
        jobs=4,
        state_dir=tmp_path / "state",
        progress=None,
    )
    values.update(changes)
    return PushOptions(**values)


async def stack_with_small_parts(aiohttp_server: Any, s3: S3Server) -> Stack:
    return await start_stack(aiohttp_server, s3, uploads={"part_size": 6 * MIB})


async def test_parallel_push_then_parallel_pull_round_trips_the_image(
    aiohttp_server: Any, s3_server: S3Server, image: Path, tmp_path: Path
) -> None:
    stack = await stack_with_small_parts(aiohttp_server, s3_server)
    _, collection, container = unique_ref()
    ref = f"{USER}/{collection}/{container}:v1"
    result = await push(options(stack, image, ref, tmp_path))
    assert result.parts_uploaded == 8
    sha = hashlib.sha256(image.read_bytes()).hexdigest()
    assert s3_server.read_object(f"{collection}/{container}:sha256.{sha}") == image.read_bytes()
    out = tmp_path / "pulled.sif"
    await pull(PullOptions(parse_ref(f"library://{ref}"), out, stack.gateway_url, TOKEN, jobs=4, progress=None))
    assert out.read_bytes() == image.read_bytes()


async def test_an_interrupted_push_resumes_from_the_parts_already_in_s3(
    aiohttp_server: Any, seaweedfs: S3Server, image: Path, tmp_path: Path
) -> None:
    stack = await stack_with_small_parts(aiohttp_server, seaweedfs)
    _, collection, container = unique_ref()
    ref = f"{USER}/{collection}/{container}:v1"

    class Interrupted(Exception):
        pass

    def stop_after_three(part: PartUploaded) -> None:
        if part.parts_done >= 3:
            raise Interrupted

    with pytest.raises(Interrupted):
        await push(options(stack, image, ref, tmp_path, jobs=1), hooks=PushHooks(after_part=stop_after_three))
    resumed = await push(options(stack, image, ref, tmp_path, jobs=2, resume=True))
    assert resumed.resumed and resumed.parts_reused >= 3
    assert resumed.parts_uploaded + resumed.parts_reused == 8
    sha = hashlib.sha256(image.read_bytes()).hexdigest()
    assert seaweedfs.read_object(f"{collection}/{container}:sha256.{sha}") == image.read_bytes()


async def test_a_part_failing_while_s3_is_down_is_retried_and_the_push_completes(
    aiohttp_server: Any, radosgw: RadosGW, image: Path, tmp_path: Path
) -> None:
    stack = await stack_with_small_parts(aiohttp_server, radosgw)
    _, collection, container = unique_ref()
    ref = f"{USER}/{collection}/{container}:v1"
    import asyncio

    restarted: list[asyncio.Task[None]] = []

    async def restart_later() -> None:
        await asyncio.sleep(1.0)
        await asyncio.to_thread(radosgw.start_rgw)

    def outage_after_first_part(part: PartUploaded) -> None:
        if not restarted:
            radosgw.stop_rgw()
            restarted.append(asyncio.get_running_loop().create_task(restart_later()))

    result = await push(
        options(stack, image, ref, tmp_path, jobs=1, retry=RetryPolicy(attempts=6, base_delay_s=0.5, max_delay_s=2)),
        hooks=PushHooks(after_part=outage_after_first_part),
    )
    await restarted[0]
    assert result.parts_uploaded == 8
    sha = hashlib.sha256(image.read_bytes()).hexdigest()
    assert radosgw.read_object(f"{collection}/{container}:sha256.{sha}") == image.read_bytes()


async def test_a_corrupted_download_is_detected_and_the_partial_file_removed(
    aiohttp_server: Any, seaweedfs: S3Server, image: Path, tmp_path: Path
) -> None:
    stack = await stack_with_small_parts(aiohttp_server, seaweedfs)
    _, collection, container = unique_ref()
    ref = f"{USER}/{collection}/{container}:v1"
    await push(options(stack, image, ref, tmp_path))
    sha = hashlib.sha256(image.read_bytes()).hexdigest()
    client = seaweedfs.botocore_client()
    try:  # someone tampers with the stored object
        client.put_object(Bucket=BUCKET, Key=f"{collection}/{container}:sha256.{sha}", Body=b"X" * SIZE)
    finally:
        client.close()
    out = tmp_path / "pulled.sif"
    with pytest.raises(IntegrityError) as failure:
        await pull(PullOptions(parse_ref(f"library://{ref}"), out, stack.gateway_url, TOKEN, jobs=4, progress=None))
    assert failure.value.exit_code == 3
    assert not out.exists()
    assert not list(tmp_path.glob("pulled.sif*"))
