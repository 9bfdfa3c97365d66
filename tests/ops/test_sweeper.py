"""The journal of open uploads in S3 and the sweeper that aborts abandoned ones."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from typing import Any

import aiohttp
import pytest

from gateway.core.tokens import TokenSealer
from gateway.edges.s3 import NoSuchUpload, S3Client, S3Settings
from gateway.ops.sweeper import sweep
from tests.support.gateway_fixtures import TOKEN_SECRET, gateway_env
from tests.support.library_api import LibraryClient
from tests.support.s3_fixtures import BUCKET
from tests.support.s3servers import S3Server
from tests.support.stack import MIB, TOKEN, Stack, start_stack, unique_ref

DATA = os.urandom(6 * MIB)
SIX_MIB_PARTS = {"part_size": 6 * MIB}


def journal_keys(s3: S3Server) -> list[str]:
    client = s3.botocore_client()
    try:
        listed = client.list_objects_v2(Bucket=BUCKET, Prefix="_gateway/journal/")
        return [item["Key"] for item in listed.get("Contents", [])]
    finally:
        client.close()


async def abandoned_upload(stack: Stack, session: aiohttp.ClientSession) -> tuple[str, Any]:
    """Start an upload, PUT one part, and walk away (as a client killed mid-push would)."""
    client = LibraryClient(session, stack.gateway_url)
    _, collection, container = unique_ref()
    image_id = await client.create_image("alice", collection, container, "b" * 64)
    start = (await client.start(image_id, len(DATA) * 2)).data
    url = (await client.presign(image_id, start["uploadID"], 1, DATA)).data["presignedURL"]
    assert (await client.put_part(url, DATA))[0] == 200
    grant = TokenSealer(TOKEN_SECRET).open(start["uploadID"], image_id=image_id, credential=TOKEN, now=0)
    return image_id, grant


async def test_start_journals_the_upload_and_abort_removes_the_entry(
    aiohttp_server: Any, seaweedfs: S3Server, session: aiohttp.ClientSession
) -> None:
    stack = await start_stack(aiohttp_server, seaweedfs, uploads=SIX_MIB_PARTS)
    before = set(journal_keys(seaweedfs))
    image_id, grant = await abandoned_upload(stack, session)
    (entry,) = set(journal_keys(seaweedfs)) - before
    client = seaweedfs.botocore_client()
    try:
        body = json.loads(client.get_object(Bucket=BUCKET, Key=entry)["Body"].read())
    finally:
        client.close()
    assert (body["bucket"], body["key"], body["upload_id"], body["image_id"]) == (
        grant.bucket,
        grant.key,
        grant.upload_id,
        image_id,
    )
    token = TokenSealer(TOKEN_SECRET).seal(grant)
    assert (await LibraryClient(session, stack.gateway_url).abort(image_id, token)).status == 200
    assert entry not in journal_keys(seaweedfs)


async def test_the_sweeper_aborts_uploads_abandoned_past_their_expiry(
    aiohttp_server: Any, s3_server: S3Server, session: aiohttp.ClientSession
) -> None:
    stack = await start_stack(aiohttp_server, s3_server, uploads=SIX_MIB_PARTS | {"token_ttl_seconds": 6})
    _, grant = await abandoned_upload(stack, session)
    await asyncio.sleep(max(0.0, grant.expires_at - time.time() + 1))  # the token has expired
    env = gateway_env(stack.config)
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway",
        "sweep",
        "--grace-seconds",
        "0",
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, err.decode()
    report = json.loads(out)
    assert report["aborted_uploads"] >= 1 and report["errors"] == []
    async with S3Client(S3Settings.of(stack.config.s3)) as s3:
        with pytest.raises(NoSuchUpload):
            await s3.list_parts(grant.bucket, grant.key, grant.upload_id)
    assert not [k for k in journal_keys(s3_server) if k.split("/")[-1].startswith(f"{grant.expires_at:012d}")]


async def test_live_uploads_are_left_alone_and_concurrent_sweeps_are_safe(
    aiohttp_server: Any, seaweedfs: S3Server, session: aiohttp.ClientSession
) -> None:
    stack = await start_stack(aiohttp_server, seaweedfs, uploads=SIX_MIB_PARTS)
    _, grant = await abandoned_upload(stack, session)
    async with S3Client(S3Settings.of(stack.config.s3)) as s3:
        reports = await asyncio.gather(
            *(
                sweep(s3, bucket=BUCKET, staging_prefix="_gateway/", now=grant.expires_at - 10, grace_s=0)
                for _ in range(3)
            )
        )
        assert all(report.errors == [] for report in reports)
        parts = await s3.list_parts(grant.bucket, grant.key, grant.upload_id)  # still there
        assert [part.number for part in parts] == [1]
        late = await asyncio.gather(
            *(
                sweep(s3, bucket=BUCKET, staging_prefix="_gateway/", now=grant.expires_at + 10, grace_s=0)
                for _ in range(3)
            )
        )
        assert sum(report.aborted_uploads for report in late) >= 1
        assert all(report.errors == [] for report in late), [r.errors for r in late]
        with pytest.raises(NoSuchUpload):
            await s3.list_parts(grant.bucket, grant.key, grant.upload_id)


async def test_sweep_dry_run_removes_nothing(
    aiohttp_server: Any, seaweedfs: S3Server, session: aiohttp.ClientSession
) -> None:
    stack = await start_stack(aiohttp_server, seaweedfs, uploads=SIX_MIB_PARTS)
    _, grant = await abandoned_upload(stack, session)
    async with S3Client(S3Settings.of(stack.config.s3)) as s3:
        report = await sweep(
            s3, bucket=BUCKET, staging_prefix="_gateway/", now=grant.expires_at + 10, grace_s=0, dry_run=True
        )
        assert report.aborted_uploads >= 1
        assert [part.number for part in await s3.list_parts(grant.bucket, grant.key, grant.upload_id)] == [1]
