"""The upload routes through the gateway, with the sregistry fake behind it and real S3 beside it, driven by a
scripted client that speaks the real client's wire protocol."""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest
from aiohttp import web
from multidict import CIMultiDict

from gateway.core.config import DEFAULT_DOWNLOAD_EXPIRY_S
from gateway.core.errors import InvalidRequest
from tests.support.library_api import LibraryClient
from tests.support.processes import free_port
from tests.support.registry import reconfigure
from tests.support.s3_fixtures import BUCKET
from tests.support.s3servers import S3Server
from tests.support.stack import MIB, OTHER_TOKEN, TOKEN, USER, Stack, start_stack, unique_ref

FILE = os.urandom(70 * MIB + 12345)  # three parts of 32 MiB, the last one short
FILE_SHA = hashlib.sha256(FILE).hexdigest()


async def new_image(client: LibraryClient, sha: str = FILE_SHA) -> tuple[str, str]:
    entity, collection, container = unique_ref()
    return await client.create_image(entity, collection, container, sha), f"{collection}/{container}:sha256.{sha}"


async def image_on_new_stack(
    session: aiohttp.ClientSession, aiohttp_server: Any, s3: S3Server, **options: Any
) -> tuple[Stack, LibraryClient, str, str]:
    """A gateway stack (``options`` as start_stack's), a library client on it, and a new image: its id and the key
    its file gets in the bucket."""
    stack = await start_stack(aiohttp_server, s3, **options)
    client = LibraryClient(session, stack.gateway_url)
    image_id, key = await new_image(client)
    return stack, client, image_id, key


async def push(client: LibraryClient, image_id: str, data: bytes = FILE) -> tuple[Any, Any]:
    start = await client.start(image_id, len(data))
    assert start.status == 200, start.body
    etags = await client.upload_parts(image_id, start.data, data)
    done = await client.complete(image_id, start.data["uploadID"], etags)
    return start.data, done


async def test_multipart_push_lands_on_the_registrys_own_key_with_no_copy(
    aiohttp_server: Any, s3_server: S3Server, session: aiohttp.ClientSession
) -> None:
    stack, client, image_id, key = await image_on_new_stack(session, aiohttp_server, s3_server)
    start, done = await push(client, image_id)
    assert (start["totalParts"], start["partSize"], start["options"]) == (3, 32 * MIB, {"s3compliant": "true"})
    assert done.status == 200 and done.json == {}
    assert s3_server.read_object(key) == FILE
    seen = [(r.method, r.path) for r in stack.requests_seen_by_registry]
    assert ("POST", f"/v2/imagefile/{image_id}") in seen  # the registry was asked who may push
    assert ("PUT", f"/v2/imagefile/{image_id}/_complete") in seen
    assert not any("_multipart" in path for _, path in seen)  # never forwarded (sregistry's abort deletes rows)


async def test_relay_mode_streams_the_assembled_image_to_a_self_hosting_registry(
    aiohttp_server: Any, seaweedfs: S3Server, session: aiohttp.ClientSession
) -> None:
    stack, client, image_id, _ = await image_on_new_stack(session, aiohttp_server, seaweedfs, flavour="selfhosted")
    _, done = await push(client, image_id)
    assert done.status == 200, done.body
    stored = [r for r in stack.requests_seen_by_registry if r.method == "PUT" and r.body_length == len(FILE)]
    assert len(stored) == 1 and not stored[0].chunked and stored[0].status in (200, 201, 204)
    image = stack.registry_state.images[int(image_id)]
    assert image.file_path is not None and image.file_path.read_bytes() == FILE
    # Staged parts are gone; only the completion marker stays under the reserved prefix.
    staged = seaweedfs.botocore_client()
    try:
        keys = [o["Key"] for o in staged.list_objects_v2(Bucket=BUCKET, Prefix="_gateway/").get("Contents", [])]
    finally:
        staged.close()
    assert not any("/relay/" in k and image_id in k for k in keys)


async def test_a_retried_complete_after_success_answers_success(
    aiohttp_server: Any, seaweedfs: S3Server, session: aiohttp.ClientSession
) -> None:
    stack, client, image_id, key = await image_on_new_stack(session, aiohttp_server, seaweedfs)
    start = (await client.start(image_id, len(FILE))).data
    etags = await client.upload_parts(image_id, start, FILE)
    first = await client.complete(image_id, start["uploadID"], etags)
    again = await client.complete(image_id, start["uploadID"], etags)
    assert (first.status, again.status) == (200, 200), again.body
    assert seaweedfs.read_object(key) == FILE


async def test_part_urls_are_signed_for_the_external_host_with_the_sha256_bound(
    aiohttp_server: Any, radosgw: S3Server, session: aiohttp.ClientSession
) -> None:
    stack, client, image_id, _ = await image_on_new_stack(session, aiohttp_server, radosgw)
    start = (await client.start(image_id, len(FILE))).data
    part = FILE[: 32 * MIB]
    url = (await client.presign(image_id, start["uploadID"], 1, part)).data["presignedURL"]
    assert url.startswith(f"http://localhost:{radosgw.port}/{BUCKET}/")
    assert f"X-Amz-Content-Sha256={hashlib.sha256(part).hexdigest()}" in url
    corrupted = b"X" + part[1:]
    status, _ = await client.put_part(url, corrupted, sha256_hex=hashlib.sha256(part).hexdigest())
    assert status == 400  # radosgw verifies the body against the bound sha256
    internal = url.replace(f"//localhost:{radosgw.port}", f"//127.0.0.1:{radosgw.port}")
    assert (await client.put_part(internal, part))[0] == 403  # signed for the external host only
    assert (await client.put_part(url, part))[0] == 200


async def test_multipart_off_answers_404_on_start_only(
    aiohttp_server: Any, seaweedfs: S3Server, session: aiohttp.ClientSession
) -> None:
    options = {"uploads": {"multipart": False}}
    stack, client, image_id, _ = await image_on_new_stack(session, aiohttp_server, seaweedfs, **options)
    start = await client.start(image_id, len(FILE))
    assert start.status == 404 and start.json["error"]["code"] == 404


async def test_the_registrys_refusal_is_passed_on_with_its_status(
    aiohttp_server: Any, seaweedfs: S3Server, session: aiohttp.ClientSession
) -> None:
    stack = await start_stack(aiohttp_server, seaweedfs)
    owner = LibraryClient(session, stack.gateway_url)
    image_id, _ = await new_image(owner)
    stranger = LibraryClient(session, stack.gateway_url, token=OTHER_TOKEN)
    refused = await stranger.start(image_id, len(FILE))
    assert refused.status == 403  # sregistry's empty 403, wrapped in the library error shape
    assert refused.json["error"]["code"] == 403
    anonymous = LibraryClient(session, stack.gateway_url, token=None)
    assert (await anonymous.start(image_id, len(FILE))).status == 403
    assert (await owner.start("999999", len(FILE))).status == 404  # unknown image: the registry's 404


async def test_tokens_are_bound_to_image_and_caller(
    aiohttp_server: Any, seaweedfs: S3Server, session: aiohttp.ClientSession
) -> None:
    stack, client, image_id, _ = await image_on_new_stack(session, aiohttp_server, seaweedfs)
    other_image, _ = await new_image(client)
    upload_id = (await client.start(image_id, len(FILE))).data["uploadID"]
    part = FILE[: 32 * MIB]
    cross_image = await client.presign(other_image, upload_id, 1, part)
    assert cross_image.status == 403
    stranger = LibraryClient(session, stack.gateway_url, token=OTHER_TOKEN)
    assert (await stranger.presign(image_id, upload_id, 1, part)).status == 403
    assert (await stranger.complete(image_id, upload_id, ["a"] * 3)).status == 403
    assert (await stranger.abort(image_id, upload_id)).status == 403
    forged = upload_id[:-4] + ("AAAA" if not upload_id.endswith("AAAA") else "BBBB")
    assert (await client.presign(image_id, forged, 1, part)).status == 400


@pytest.mark.parametrize(
    ("number", "size", "status"),
    [(1, 32 * MIB, 200), (3, 70 * MIB + 12345 - 64 * MIB, 200), (3, 32 * MIB, 400), (4, 1, 400), (0, 1, 400)],
)
async def test_part_numbers_and_sizes_must_match_the_plan(
    aiohttp_server: Any, seaweedfs: S3Server, session: aiohttp.ClientSession, number: int, size: int, status: int
) -> None:
    stack, client, image_id, _ = await image_on_new_stack(session, aiohttp_server, seaweedfs)
    upload_id = (await client.start(image_id, len(FILE))).data["uploadID"]
    body = {"partSize": size, "uploadID": upload_id, "partNumber": number, "sha256sum": "a" * 64}
    answer = await client.call("PUT", f"/v2/imagefile/{image_id}/_multipart", body)
    assert answer.status == status, answer.body
    if status != 200:
        assert answer.json["error"]["code"] == status


async def test_wrong_etags_and_missing_parts_at_complete_are_4xx_and_a_fix_still_completes(
    aiohttp_server: Any, s3_server: S3Server, session: aiohttp.ClientSession
) -> None:
    stack, client, image_id, key = await image_on_new_stack(session, aiohttp_server, s3_server)
    start = (await client.start(image_id, len(FILE))).data
    etags = await client.upload_parts(image_id, start, FILE)
    wrong = await client.complete(
        image_id, start["uploadID"], [etags[0], '"0123456789abcdef0123456789abcdef"', etags[2]]
    )
    assert 400 <= wrong.status < 500 and wrong.status != 404, wrong.body
    missing = await client.complete(image_id, start["uploadID"], etags[:2])
    assert missing.status == 400
    unquoted = [etag.strip('"') for etag in etags]
    assert (await client.complete(image_id, start["uploadID"], unquoted)).status == 200
    assert s3_server.read_object(key) == FILE


async def test_abort_removes_the_upload_in_s3_and_a_second_abort_is_fine(
    aiohttp_server: Any, s3_server: S3Server, session: aiohttp.ClientSession
) -> None:
    # On both servers: radosgw answers a complete after an abort with a retryable 500, SeaweedFS with 404.
    stack, client, image_id, _ = await image_on_new_stack(session, aiohttp_server, s3_server)
    start = (await client.start(image_id, len(FILE))).data
    part = FILE[: 32 * MIB]
    url = (await client.presign(image_id, start["uploadID"], 1, part)).data["presignedURL"]
    assert (await client.put_part(url, part))[0] == 200
    first, second = await client.abort(image_id, start["uploadID"]), await client.abort(image_id, start["uploadID"])
    assert (first.status, first.json, second.status) == (200, {}, 200)
    completing = await client.complete(image_id, start["uploadID"], ["x"] * 3)
    assert completing.status == 409, completing.body
    assert int(image_id) in stack.registry_state.images  # the image row survives: abort was not forwarded


@pytest.mark.parametrize(
    "path",
    [
        "/v2/imagefile/a%2Fb/_multipart",
        "/v2/imagefile/..%2F1/_multipart",
        "/v2/imagefile/%C3%A9/_multipart",
        "/v2/imagefile/" + "x" * 129 + "/_multipart",
        "/v2/imagefile/a%20b/_multipart_complete",
    ],
)
async def test_image_ids_outside_the_allowed_set_are_400(
    aiohttp_server: Any, seaweedfs: S3Server, session: aiohttp.ClientSession, path: str
) -> None:
    stack = await start_stack(aiohttp_server, seaweedfs)
    client = LibraryClient(session, stack.gateway_url)
    method = "POST" if path.endswith("_multipart") else "PUT"
    answer = await client.call(method, path, {"filesize": 10})
    assert answer.status == 400 and answer.json["error"]["code"] == 400
    assert not stack.requests_seen_by_registry


@pytest.mark.parametrize("raw", [b"", b"{", b"[]", b'{"filesize": -1}', b'{"filesize": "1"}', b"\xff"])
async def test_malformed_start_bodies_are_400_and_never_reach_the_registry(
    aiohttp_server: Any, seaweedfs: S3Server, session: aiohttp.ClientSession, raw: bytes
) -> None:
    stack = await start_stack(aiohttp_server, seaweedfs)
    client = LibraryClient(session, stack.gateway_url)
    answer = await client.call("POST", "/v2/imagefile/1/_multipart", raw=raw)
    assert answer.status == 400, answer.body
    assert not stack.requests_seen_by_registry


async def test_oversized_bodies_on_intercepted_routes_are_413(
    aiohttp_server: Any, seaweedfs: S3Server, session: aiohttp.ClientSession
) -> None:
    stack = await start_stack(aiohttp_server, seaweedfs)
    client = LibraryClient(session, stack.gateway_url)
    answer = await client.call("PUT", "/v2/imagefile/1/_multipart", raw=b" " * (2 * MIB))
    assert answer.status == 413 and answer.json["error"]["code"] == 413


async def test_legacy_upload_url_is_resigned_with_the_whole_file_sha256_bound(
    aiohttp_server: Any, radosgw: S3Server, session: aiohttp.ClientSession
) -> None:
    stack = await start_stack(aiohttp_server, radosgw)
    client = LibraryClient(session, stack.gateway_url)
    data = os.urandom(3 * MIB)
    sha = hashlib.sha256(data).hexdigest()
    image_id, key = await new_image(client, sha)
    answer = await client.call("POST", f"/v2/imagefile/{image_id}", {"filesize": len(data), "sha256sum": sha})
    url = answer.data["uploadURL"]
    assert url.startswith(f"http://localhost:{radosgw.port}/")
    assert "X-Amz-SignedHeaders=host%3Bx-amz-content-sha256" in url
    assert (await client.put_part(url, b"Y" + data[1:], sha256_hex=sha))[0] == 400  # S3 verified the file
    assert (await client.put_part(url, data))[0] == 200
    assert (await client.call("PUT", f"/v2/imagefile/{image_id}/_complete", {})).status == 200
    assert radosgw.read_object(key) == data


async def test_legacy_upload_above_5_gib_is_413_telling_to_enable_multipart(
    aiohttp_server: Any, seaweedfs: S3Server, session: aiohttp.ClientSession
) -> None:
    stack, client, image_id, _ = await image_on_new_stack(session, aiohttp_server, seaweedfs)
    answer = await client.call("POST", f"/v2/imagefile/{image_id}", {"filesize": 5 * 1024**3 + 1})
    assert answer.status == 413 and "multipart" in answer.json["error"]["message"]


async def test_discovery_points_clients_at_the_gateway(
    aiohttp_server: Any, seaweedfs: S3Server, session: aiohttp.ClientSession
) -> None:
    stack = await start_stack(aiohttp_server, seaweedfs)
    async with session.get(stack.gateway_url + "/assets/config/config.prod.json") as response:
        document = json.loads(await response.read())
    for section in ("libraryAPI", "keystoreAPI", "tokenAPI"):
        assert document[section]["uri"] == stack.gateway_url
    assert "auth" in document  # everything else kept


async def test_downloads_redirect_to_a_url_signed_for_the_external_host(
    aiohttp_server: Any, seaweedfs: S3Server, session: aiohttp.ClientSession
) -> None:
    stack, client, image_id, _ = await image_on_new_stack(session, aiohttp_server, seaweedfs)
    await push(client, image_id)
    image = stack.registry_state.images[int(image_id)]
    tag = await client.call("POST", f"/v1/tags/{image.collection.id}", {"Tag": "v1", "ImageID": image_id})
    assert tag.status == 200, tag.body
    ref = f"{USER}/{image.collection.name}/{image.name}:v1"
    async with session.get(
        f"{stack.gateway_url}/v1/imagefile/{ref}?arch=amd64",
        headers=client.headers(),
        allow_redirects=False,
    ) as response:
        assert response.status == 303  # downloads.redirect_status's default for a download in S3
        location = response.headers["Location"]
    assert location.startswith(f"http://localhost:{seaweedfs.port}/")
    assert f"X-Amz-Expires={DEFAULT_DOWNLOAD_EXPIRY_S}&" in location
    async with session.get(location) as pulled:
        assert await pulled.read() == FILE


@pytest.mark.parametrize(
    "path",
    [
        "/v2/imagefile/1/%5Fmultipart_abort",
        "//v2/imagefile/1/_multipart_abort",
        "/v2/imagefile/1/_multipart/../_multipart_abort",
        "/v2/imagefile/1/_multipart_abort/",
        "/v2/./imagefile/1/_multipart_complete",
        "/v2/imagefile/1/%5fmultipart",
    ],
)
async def test_disguised_multipart_routes_are_refused_and_never_reach_the_registry(
    aiohttp_server: Any, seaweedfs: S3Server, session: aiohttp.ClientSession, path: str
) -> None:
    stack = await start_stack(aiohttp_server, seaweedfs)
    answer = await LibraryClient(session, stack.gateway_url).call("PUT", path, {"uploadID": "x"})
    assert answer.status == 400 and answer.json["error"]["code"] == 400
    assert not stack.requests_seen_by_registry


def registry_upload_views_near(image_id: str) -> list[str]:
    """Paths sregistry routes to one of its v2/imagefile views (patterns quoted in test_registry_fake.py,
    SREGISTRY_IMAGEFILE_ROUTES) that are not the library API's plain shapes."""
    paths = [f"/v2/imagefile/{image_id}/", f"/v2/imagefile/{image_id}/x", "/v2/imagefile/", "/v2/imagefile"]
    for action in ("_complete", "_multipart", "_multipart_abort", "_multipart_complete"):
        paths += [
            f"/v2/imagefile/{image_id}/{action[:-1]}",  # "?" makes the last letter optional
            f"/v2/imagefile/{image_id}/x/{action}",  # .+? spans slashes
            f"/v2/imagefile/x/../{image_id}/{action}",
            f"/v2/imagefile/{image_id}/{action}/",  # the catch-all legacy view, id "{id}/{action}"
            f"/v2/imagefile/{image_id}%2F{action}",  # decoded by the registry
            f"/v2/%69magefile/{image_id}/{action}",
        ]
    return paths


def is_upload_view(path: str) -> bool:
    """Not the GET v1/imagefile/… with which the gateway learns an image's size while the push looks it up."""
    return "imagefile" in path and not path.startswith("/v1/imagefile/")


async def test_every_path_the_registry_routes_to_its_upload_views_is_refused_unless_written_plainly(
    aiohttp_server: Any, seaweedfs: S3Server, session: aiohttp.ClientSession
) -> None:
    stack, client, image_id, _ = await image_on_new_stack(session, aiohttp_server, seaweedfs)
    for path in registry_upload_views_near(image_id):
        for method in ("POST", "PUT"):
            answer = await client.call(method, path, {"filesize": 10, "uploadID": "x"})
            assert answer.status == 400 and answer.json["error"]["code"] == 400, (method, path, answer.body)
    assert [(r.method, r.path) for r in stack.requests_seen_by_registry if is_upload_view(r.path)] == []
    # sregistry's abort view (reached as _multipart_abor) deletes the image row: it is still there.
    assert int(image_id) in stack.registry_state.images


async def test_the_legacy_completion_is_the_only_v2_imagefile_shape_forwarded(
    aiohttp_server: Any, seaweedfs: S3Server, session: aiohttp.ClientSession
) -> None:
    stack, client, image_id, _ = await image_on_new_stack(session, aiohttp_server, seaweedfs)
    assert (await client.call("PUT", f"/v2/imagefile/{image_id}/_complete", {})).status == 200
    for method, path in [
        ("GET", f"/v2/imagefile/{image_id}/_complete"),
        ("GET", f"/v2/imagefile/{image_id}"),
        ("DELETE", f"/v2/imagefile/{image_id}/_multipart_abort"),
    ]:
        answer = await client.call(method, path)
        assert answer.status == 405 and answer.json["error"]["code"] == 405, (method, path)
    seen = [(r.method, r.path) for r in stack.requests_seen_by_registry if is_upload_view(r.path)]
    assert seen == [("PUT", f"/v2/imagefile/{image_id}/_complete")]


OCI_PREFLIGHT = "/v1/oci-redirect?accessTypes=pull%2Cpush&mapped=1&namespace=alice%2Fc%2Fn"  # protocol.md §3 step 0


@pytest.mark.parametrize("registry_answers", [404, 200])
async def test_the_oci_preflight_never_answers_200_through_the_gateway(
    aiohttp_server: Any, seaweedfs: S3Server, session: aiohttp.ClientSession, registry_answers: int
) -> None:
    # sregistry has no such route (404); a library server with an OCI registry answers 200, which would switch
    # the v1.4.x clients to OCI push and pull against its URL, around the gateway.
    url = "https://oci.example.org" if registry_answers == 200 else None
    stack = await start_stack(aiohttp_server, seaweedfs, registry_settings={"oci_redirect_url": url})
    async with session.get(stack.registry_url + OCI_PREFLIGHT, headers={"Authorization": f"Bearer {TOKEN}"}) as direct:
        assert direct.status == registry_answers
    seen = len(stack.requests_seen_by_registry)
    client = LibraryClient(session, stack.gateway_url)
    for method in ("GET", "HEAD"):
        answer = await client.call(method, OCI_PREFLIGHT)
        assert answer.status == 404, answer.body
    assert (await client.call("GET", OCI_PREFLIGHT)).json["error"]["code"] == 404
    assert len(stack.requests_seen_by_registry) == seen


HOSTILE_IDS = ["abc", "1.0", "99999999999999999999999", "9223372036854775808", "042", "+1"]


@pytest.mark.parametrize(
    ("method", "suffix"),
    [("POST", ""), ("POST", "/_multipart"), ("PUT", "/_multipart"), ("PUT", "/_multipart_complete"),
     ("PUT", "/_multipart_abort"), ("PUT", "/_complete")],
)  # fmt: skip
async def test_ids_sregistry_cannot_parse_are_400_from_the_gateway_and_never_reach_the_registry(
    aiohttp_server: Any, seaweedfs: S3Server, session: aiohttp.ClientSession, method: str, suffix: str
) -> None:
    # The fake fails on them as sregistry does (ValueError, OverflowError: a 500, which the gateway makes a 502).
    stack = await start_stack(aiohttp_server, seaweedfs)
    client = LibraryClient(session, stack.gateway_url)
    for image_id in HOSTILE_IDS:
        answer = await client.call(method, f"/v2/imagefile/{image_id}{suffix}", {"filesize": 10, "uploadID": "x"})
        assert answer.status == 400, (image_id, answer.body)
        assert answer.json["error"]["message"].startswith("image id must match")
    assert not stack.requests_seen_by_registry


async def test_another_registrys_object_ids_pass_with_the_documented_pattern(
    aiohttp_server: Any, seaweedfs: S3Server, session: aiohttp.ClientSession
) -> None:
    stack = await start_stack(aiohttp_server, seaweedfs, uploads={"image_id_pattern": "[0-9a-f]{24}"})
    client = LibraryClient(session, stack.gateway_url)
    assert (await client.call("POST", "/v2/imagefile/101", {"filesize": 10})).status == 400
    await client.call("POST", "/v2/imagefile/5f1e3b2c9d4a6e7f8a9b0c1d", {"filesize": 10})
    assert [r.path for r in stack.requests_seen_by_registry] == ["/v2/imagefile/5f1e3b2c9d4a6e7f8a9b0c1d"]


async def test_a_client_cannot_spoof_its_address_to_the_registrys_rate_limits(
    aiohttp_server: Any, seaweedfs: S3Server, session: aiohttp.ClientSession
) -> None:
    # No trusted proxies configured.
    stack, client, image_id, _ = await image_on_new_stack(session, aiohttp_server, seaweedfs)
    async with session.post(
        f"{stack.gateway_url}/v2/imagefile/{image_id}/_multipart",
        data=json.dumps({"filesize": len(FILE)}).encode(),
        headers=client.headers() | {"X-Forwarded-For": "203.0.113.9"},
    ) as response:
        assert response.status == 200
    (asked,) = [r for r in stack.requests_seen_by_registry if r.method == "POST" and r.path.startswith("/v2/")]
    assert asked.headers["X-Forwarded-For"] == "127.0.0.1"


async def test_the_legacy_start_does_not_pass_a_spoofed_address_either(
    aiohttp_server: Any, seaweedfs: S3Server, session: aiohttp.ClientSession
) -> None:
    stack, client, image_id, _ = await image_on_new_stack(session, aiohttp_server, seaweedfs)
    async with session.post(
        f"{stack.gateway_url}/v2/imagefile/{image_id}",
        data=json.dumps({"filesize": 10}).encode(),
        headers=client.headers() | {"X-Forwarded-For": "203.0.113.9"},
    ) as response:
        assert response.status == 200
    (asked,) = [r for r in stack.requests_seen_by_registry if r.method == "POST" and r.path.startswith("/v2/")]
    assert asked.headers["X-Forwarded-For"] == "127.0.0.1"


async def test_parts_of_other_sizes_than_the_plan_are_refused_at_complete_and_a_fix_still_completes(
    aiohttp_server: Any, radosgw: S3Server, session: aiohttp.ClientSession
) -> None:
    # A part URL binds the body's sha256, not its length: a client can store a part of any size whose sha256 it
    # announced. The complete checks the stored sizes (ListParts) against the plan before assembling.
    stack, client, image_id, key = await image_on_new_stack(session, aiohttp_server, radosgw)
    start = (await client.start(image_id, len(FILE))).data
    upload_id = start["uploadID"]
    etags = await client.upload_parts(image_id, start, FILE)
    bigger = os.urandom(40 * MIB)  # where the plan says 32 MiB
    sha = hashlib.sha256(bigger).hexdigest()
    body = {"partSize": 32 * MIB, "uploadID": upload_id, "partNumber": 1, "sha256sum": sha}
    url = (await client.call("PUT", f"/v2/imagefile/{image_id}/_multipart", body)).data["presignedURL"]
    status, wrong_etag = await client.put_part(url, bigger)
    assert status == 200  # S3 cannot know the plan
    refused = await client.complete(image_id, upload_id, [wrong_etag, *etags[1:]])
    assert refused.status == 400, refused.body
    assert "part 1 holds 41943040 bytes, the plan says 33554432" in refused.json["error"]["message"]
    assert ("PUT", f"/v2/imagefile/{image_id}/_complete") not in [
        (r.method, r.path) for r in stack.requests_seen_by_registry
    ]
    # Nothing was aborted: the client uploads part 1 again and completes.
    url = (await client.presign(image_id, upload_id, 1, FILE[: 32 * MIB])).data["presignedURL"]
    status, etag = await client.put_part(url, FILE[: 32 * MIB])
    assert status == 200
    done = await client.complete(image_id, upload_id, [etag, *etags[1:]])
    assert done.status == 200, done.body
    assert radosgw.read_object(key) == FILE


@pytest.mark.parametrize("last_part", [1000, 7 * MIB], ids=["short", "oversized"])
async def test_a_relay_of_an_assembled_image_of_the_wrong_size_is_400_at_once(
    aiohttp_server: Any, radosgw: S3Server, session: aiohttp.ClientSession, last_part: int
) -> None:
    # The relay PUT declares the registry's filesize: a short object made the registry wait for the rest (a hang,
    # then 504), a long one was cut (502). The complete's ListParts check keeps wrong part sizes out, so this calls
    # the relay step directly, as a part replaced between that check and S3's complete would reach it. A short
    # upstream read timeout makes a relay that waits fail otherwise than the 400 expected.
    stack, client, image_id, _ = await image_on_new_stack(
        session, aiohttp_server, radosgw, flavour="selfhosted", upstream={"read_timeout_seconds": 3}
    )
    start = (await client.start(image_id, len(FILE))).data
    last = os.urandom(last_part)  # where the plan says 6 MiB + 12345
    etags = (await client.upload_parts(image_id, start | {"totalParts": 2}, FILE))[:2]
    body = {
        "partSize": len(FILE) - 64 * MIB,
        "uploadID": start["uploadID"],
        "partNumber": 3,
        "sha256sum": hashlib.sha256(last).hexdigest(),
    }
    url = (await client.call("PUT", f"/v2/imagefile/{image_id}/_multipart", body)).data["presignedURL"]
    status, etag = await client.put_part(url, last)
    assert status == 200
    etags.append(etag)
    data = FILE[: 64 * MIB] + last
    uploads = stack.gateway.router.uploads
    grant = uploads.open_grant(start["uploadID"], image_id, TOKEN)
    parts = tuple(enumerate(etags, 1))
    with pytest.raises(InvalidRequest, match=f"the assembled image is {len(data)} bytes, the registry expects"):
        await uploads._complete_relayed(grant, parts, headers=CIMultiDict(Authorization=f"BEARER {TOKEN}"))
    assert not [r for r in stack.requests_seen_by_registry if r.method == "PUT" and r.body_length]


UNKNOWN_S3_SERVER = "minio.invalid:9000"  # MINIO_EXTERNAL_SERVER naming a host the gateway does not know


def mode_lines(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    return [r.__dict__ for r in caplog.records if getattr(r, "event", None) == "upload-mode"]


async def mode_metric(session: aiohttp.ClientSession, gateway_url: str) -> list[str]:
    async with session.get(gateway_url + "/_gateway/metrics") as response:
        return [line for line in (await response.text()).splitlines() if line.startswith("gateway_upload_mode{")]


async def test_the_first_upload_says_which_mode_it_chose_and_why_in_a_log_line_and_a_metric(
    aiohttp_server: Any, radosgw: S3Server, session: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    # Issue 12: with the registry signing for a host the gateway does not know, auto mode relayed silently.
    stack = await start_stack(aiohttp_server, radosgw, registry_settings={"s3_external_server": UNKNOWN_S3_SERVER})
    client = LibraryClient(session, stack.gateway_url)
    caplog.set_level("INFO", logger="gateway.uploads")
    for _ in range(2):  # said once, at the first upload; counted at every one
        image_id, _ = await new_image(client)
        start = await client.start(image_id, len(FILE))
        assert start.status == 200, start.body
        assert (await client.abort(image_id, start.data["uploadID"])).status == 200
    (told,) = mode_lines(caplog)
    assert (told["upload"], told["mode"], told["reason"]) == ("multipart", "relay", "registry_signs_for_unknown_host")
    assert told["levelname"] == "WARNING" and told["upload_url_host"] == UNKNOWN_S3_SERVER
    assert "s3.aliases" in told["message"] and "MINIO_EXTERNAL_SERVER" in told["message"]
    assert await mode_metric(session, stack.gateway_url) == [
        'gateway_upload_mode{mode="relay",reason="registry_signs_for_unknown_host",upload="multipart"} 1'
    ]
    # A single-PUT push gets the registry's URL unchanged: said too, under its own kind.
    image_id, _ = await new_image(client)
    legacy = await client.call("POST", f"/v2/imagefile/{image_id}", {"filesize": 10})
    assert legacy.status == 200 and urlsplit(legacy.data["uploadURL"]).netloc == UNKNOWN_S3_SERVER
    assert [(t["upload"], t["mode"], t["reason"]) for t in mode_lines(caplog)][1:] == [
        ("legacy", "unchanged", "registry_signs_for_unknown_host")
    ]
    assert len(await mode_metric(session, stack.gateway_url)) == 2


async def test_an_upload_on_our_own_s3_says_it_adopts_at_info(
    aiohttp_server: Any, seaweedfs: S3Server, session: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    stack = await start_stack(aiohttp_server, seaweedfs)
    client = LibraryClient(session, stack.gateway_url)
    caplog.set_level("INFO", logger="gateway.uploads")
    image_id, _ = await new_image(client)
    start = await client.start(image_id, len(FILE))
    assert (await client.abort(image_id, start.data["uploadID"])).status == 200
    (told,) = mode_lines(caplog)
    assert (told["mode"], told["reason"], told["levelname"]) == ("adopt", "registry_signs_for_our_s3", "INFO")
    assert await mode_metric(session, stack.gateway_url) == [
        'gateway_upload_mode{mode="adopt",reason="registry_signs_for_our_s3",upload="multipart"} 1'
    ]


SMALL = os.urandom(5 * MIB + 4321)  # two parts of 5 MiB (the smallest S3 allows), the last one short


def staged_keys(s3: S3Server) -> set[str]:
    client = s3.botocore_client()
    try:
        pages = client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix="_gateway/")
        return {item["Key"] for page in pages for item in page.get("Contents", [])}
    finally:
        client.close()


async def push_small_until_complete(client: LibraryClient) -> tuple[str, Any, list[str], Any]:
    """A multipart push of SMALL up to its complete: the image id, the start answer, the ETags and the complete
    answer."""
    image_id, _ = await new_image(client, hashlib.sha256(SMALL).hexdigest())
    start = await client.start(image_id, len(SMALL))
    assert start.status == 200, start.body
    etags = await client.upload_parts(image_id, start.data, SMALL)
    return image_id, start.data, etags, await client.complete(image_id, start.data["uploadID"], etags)


def leftovers_of(stack: Any, image_id: str, upload_token: str) -> set[str]:
    """The staged object and the journal entry of one upload that are still in the staging bucket."""
    from gateway.ops.journal import journal_key

    grant = stack.gateway.router.uploads.open_grant(upload_token, image_id, TOKEN)
    assert grant.mode == "relay"
    journal = journal_key("_gateway/", upload_id=grant.upload_id, expires_at=grant.expires_at)
    return {grant.key, journal} & staged_keys(stack.s3)


@pytest.mark.parametrize("unreachable", ["dns", "refused"])
async def test_a_relay_to_a_host_that_does_not_resolve_removes_what_it_staged_and_answers_502_at_once(
    aiohttp_server: Any, radosgw: S3Server, session: aiohttp.ClientSession, unreachable: str
) -> None:
    # Issue 12: the registry signs for a host the gateway does not know; auto mode relays there, the relay fails
    # with a DNS error, and the staged image and its journal entry stayed for about 25 hours.
    server = UNKNOWN_S3_SERVER if unreachable == "dns" else f"127.0.0.1:{free_port()}"  # nothing listens there
    stack = await start_stack(
        aiohttp_server, radosgw, registry_settings={"s3_external_server": server}, uploads={"part_size": 5 * MIB}
    )
    client = LibraryClient(session, stack.gateway_url)
    image_id, start, _, done = await push_small_until_complete(client)
    assert done.status == 502, done.body
    message = done.json["error"]["message"]
    assert done.json["error"]["code"] == 502
    why = "DNS error" if unreachable == "dns" else "connection refused"
    assert f"relaying the image to {server} failed: {why}" in message
    assert "Retrying cannot help, so the staged image was removed" in message and "s3.aliases" in message
    assert leftovers_of(stack, image_id, start["uploadID"]) == set()
    assert ("PUT", f"/v2/imagefile/{image_id}/_complete") not in [
        (r.method, r.path) for r in stack.requests_seen_by_registry
    ]


async def test_a_relay_the_registry_fails_with_a_5xx_keeps_what_it_staged_so_a_retried_complete_succeeds(
    aiohttp_server: Any, radosgw: S3Server, session: aiohttp.ClientSession
) -> None:
    async def unavailable(request: web.Request) -> web.Response:
        return web.Response(status=503)

    failing = web.Application()
    failing.router.add_route("*", "/{tail:.*}", unavailable)
    failing_server = await aiohttp_server(failing)
    stack = await start_stack(
        aiohttp_server,
        radosgw,
        flavour="selfhosted",
        registry_settings={"public_url": f"http://127.0.0.1:{failing_server.port}"},  # its upload URLs answer 503
        uploads={"part_size": 5 * MIB},
    )
    client = LibraryClient(session, stack.gateway_url)
    image_id, start, etags, done = await push_small_until_complete(client)
    assert done.status == 502, done.body
    message = done.json["error"]["message"]
    assert "refused the relayed image (503)" in message and "This may pass" in message and "retrying" in message
    assert len(leftovers_of(stack, image_id, start["uploadID"])) == 2  # kept for the retry
    reconfigure(stack.registry, public_url=None)  # the registry's upload URLs work again
    again = await client.complete(image_id, start["uploadID"], etags)
    assert again.status == 200, again.body
    stored = stack.registry_state.images[int(image_id)].file_path
    assert stored is not None and stored.read_bytes() == SMALL
    assert leftovers_of(stack, image_id, start["uploadID"]) == set()

