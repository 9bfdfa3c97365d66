"""The sregistry fake behaves like sregistry as docs/protocol.md documents it (§2-§8, §9b), including its pitfalls,
and the real Go library client can push to it and pull from it."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from botocore.exceptions import ClientError

from tests.support.realclient import RealClient
from tests.support.registry import REQUEST_LOG, STATE, RegistrySettings, make_registry_app, reconfigure
from tests.support.registry.app import ROUTES, match_route
from tests.support.s3servers import SeaweedFS

ALICE = hashlib.sha1(b"alice").hexdigest()
BOB = hashlib.sha1(b"bob").hexdigest()
SHA = hashlib.sha256(b"an image").hexdigest()
EXTERNAL_S3 = "minio.example.org:9000"
REPO_ROOT = Path(__file__).resolve().parents[2]
PROCESS_START_TIMEOUT_S = 30.0
PROCESS_STOP_TIMEOUT_S = 10.0

Client = TestClient[web.Request, web.Application]


def app_of(client: Client) -> web.Application:
    """The fake's application behind a test client (to reconfigure it or read its state)."""
    assert isinstance(client.server, TestServer)
    return client.server.app
StartRegistry = Callable[[RegistrySettings], Awaitable[Client]]


def base_settings(**changes: Any) -> RegistrySettings:
    settings = RegistrySettings(
        users={ALICE: "alice", BOB: "bob"},
        domain_name="https://registry.example.org",
        s3_endpoint="http://127.0.0.1:9",  # internal MINIO_SERVER: nothing listens, nothing should call it
        s3_external_server=EXTERNAL_S3,
        access_key="AKIDFAKE",
        secret_key="fake-secret",
    )
    return replace(settings, **changes)


def seaweedfs_settings(server: SeaweedFS, **changes: Any) -> RegistrySettings:
    return base_settings(
        s3_endpoint=server.endpoint,
        s3_external_server=urlsplit(server.endpoint).netloc,
        access_key=server.access_key,
        secret_key=server.secret_key,
        region=server.region,
        **changes,
    )


@pytest.fixture
def start_registry(aiohttp_client: Callable[..., Awaitable[Client]]) -> StartRegistry:
    async def start(settings: RegistrySettings) -> Client:
        return await aiohttp_client(make_registry_app(settings))

    return start


@pytest.fixture
async def registry(start_registry: StartRegistry) -> Client:
    return await start_registry(base_settings())


def auth(token: str, scheme: str = "BEARER") -> dict[str, str]:
    return {"Authorization": f"{scheme} {token}".strip()}


async def post_json(client: Client, path: str, payload: Any, token: str = ALICE) -> aiohttp.ClientResponse:
    """Like the Go client: a JSON body with a Content-Length and no Content-Type."""
    return await client.post(
        path, data=json.dumps(payload).encode(), headers=auth(token), skip_auto_headers=["Content-Type"]
    )


async def chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


async def create_collection(client: Client, name: str, token: str = ALICE) -> dict[str, Any]:
    entity = await (await client.get(f"/v1/entities/{user_of(token)}", headers=auth(token))).json()
    reply = await post_json(client, "/v1/collections", {"name": name, "entity": entity["data"]["id"]}, token)
    assert reply.status == 200, await reply.text()
    return dict((await reply.json())["data"])


def user_of(token: str) -> str:
    return {ALICE: "alice", BOB: "bob"}[token]


async def new_image(client: Client, collection: str, name: str = "n", sha: str = SHA) -> dict[str, Any]:
    reply = await client.get(f"/v1/images/alice/{collection}/{name}:sha256.{sha}?arch=amd64", headers=auth(ALICE))
    assert reply.status == 200, await reply.text()
    return dict((await reply.json())["data"])


async def tag(client: Client, container_id: str, image_id: str, tag_name: str) -> None:
    reply = await post_json(client, f"/v1/tags/{container_id}", {"Tag": tag_name, "ImageID": image_id})
    assert reply.status == 200, await reply.text()


# --- discovery -------------------------------------------------------------------------------------------


async def test_version_announces_api_2_0_0_alpha_1(registry: Client) -> None:
    reply = await registry.get("/version")
    assert reply.status == 200
    assert await reply.json() == {"data": {"version": "v1.0.0", "apiVersion": "2.0.0-alpha.1"}}


async def test_config_prod_json_is_pretty_printed_text_html_with_the_domain_name(registry: Client) -> None:
    reply = await registry.get("/assets/config/config.prod.json")
    assert reply.status == 200
    assert reply.headers["Content-Type"] == "text/html; charset=utf-8"
    text = await reply.text()
    assert text.startswith('{\n  "env": {\n    "name": "prod"\n  },')
    config = json.loads(text)
    for api in ("libraryAPI", "keystoreAPI", "tokenAPI"):
        assert config[api] == {"uri": "https://registry.example.org"}
    assert config["auth"]["issuer"] == "https://registry.example.org"
    assert config["auth"]["clientId"] == "services-frontend"


async def test_unknown_paths_are_404_html(registry: Client) -> None:
    for path in ("/v1/oci-redirect?namespace=a%2Fb%2Fc", "/v2/tags/1", "/nothing"):
        reply = await registry.get(path, headers=auth(ALICE))
        assert reply.status == 404, path
        assert reply.headers["Content-Type"].startswith("text/html")


async def test_the_oci_preflight_is_404_unless_the_fake_plays_a_library_with_an_oci_registry(registry: Client) -> None:
    path = "/v1/oci-redirect?accessTypes=pull%2Cpush&mapped=1&namespace=alice%2Fc1%2Fn"
    assert (await registry.get(path, headers=auth(ALICE))).status == 404  # sregistry: no such route
    reconfigure(app_of(registry), oci_redirect_url="https://oci.example.org")
    reply = await registry.get(path, headers=auth(ALICE))
    assert reply.status == 200
    answer = await reply.json()
    assert (answer["url"], answer["name"]) == ("https://oci.example.org", "alice/c1/n") and answer["token"]


# --- auth ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("scheme", ["BEARER", "Bearer", "bearer", ""])
async def test_token_status_accepts_bearer_in_any_case_and_a_bare_token(registry: Client, scheme: str) -> None:
    reply = await registry.get("/v1/token-status", headers=auth(ALICE, scheme))
    assert reply.status == 200


@pytest.mark.parametrize("headers", [{}, {"Authorization": "BEARER " + "0" * 40}, {"Authorization": "Token x"}])
async def test_token_status_is_404_for_a_missing_or_unknown_token(registry: Client, headers: dict[str, str]) -> None:
    reply = await registry.get("/v1/token-status", headers=headers)
    assert reply.status == 404
    assert await reply.read() == b""


async def test_an_entity_is_found_only_with_its_own_token(registry: Client) -> None:
    own = await registry.get("/v1/entities/alice", headers=auth(ALICE))
    assert own.status == 200
    data = (await own.json())["data"]
    assert (data["id"], data["name"]) == ("1", "alice")
    assert data["updatedAt"].endswith("Z") and data["createdAt"].endswith("Z")
    assert (await registry.get("/v1/entities/alice", headers=auth(BOB))).status == 404
    assert (await registry.get("/v1/entities/alice")).status == 404
    assert (await registry.get("/v1/entities/carol", headers=auth(ALICE))).status == 404


async def test_entities_cannot_be_created(registry: Client) -> None:
    for path in ("/v1/entities", "/v1/entities/alice"):
        reply = await post_json(registry, path, {"name": "alice"})
        assert reply.status == 405, path


async def test_a_user_who_never_logged_in_gets_an_empty_updated_at(start_registry: StartRegistry) -> None:
    client = await start_registry(base_settings(users_never_logged_in=frozenset({"alice"})))
    data = (await (await client.get("/v1/entities/alice", headers=auth(ALICE))).json())["data"]
    assert data["updatedAt"] == ""


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/collections/alice/c1"),
        ("GET", "/v1/containers/alice/c1/n"),
        ("GET", f"/v1/images/alice/c1/n:sha256.{SHA}"),
        ("POST", "/v2/imagefile/1"),
        ("POST", "/v2/imagefile/1/_multipart"),
        ("PUT", "/v2/imagefile/1/_multipart_abort"),
        ("GET", "/v1/tags/1"),
        ("POST", "/v1/tags/1"),
        ("POST", "/v1/collections"),
    ],
)
async def test_a_bad_token_gets_403_with_an_empty_body(registry: Client, method: str, path: str) -> None:
    reply = await registry.request(method, path, headers=auth("f" * 40), data=b"{}")
    assert reply.status == 403
    assert await reply.read() == b""
    assert "Content-Type" not in reply.headers


# --- collections and containers --------------------------------------------------------------------------


async def test_collection_names_are_global_so_another_owner_cannot_create_one(registry: Client) -> None:
    await create_collection(registry, "shared")
    assert (await registry.get("/v1/collections/bob/shared", headers=auth(BOB))).status == 404
    reply = await post_json(registry, "/v1/collections", {"name": "shared", "entity": "2"}, BOB)
    assert reply.status == 403


async def test_a_collection_cannot_be_created_for_another_entity(registry: Client) -> None:
    reply = await post_json(registry, "/v1/collections", {"name": "mine", "entity": "2"}, ALICE)
    assert reply.status == 403


async def test_a_collection_post_without_name_or_entity_is_400(registry: Client) -> None:
    assert (await post_json(registry, "/v1/collections", {"name": "x"})).status == 400


async def test_the_container_lookup_answers_with_the_collection_id_before_any_image(registry: Client) -> None:
    collection = await create_collection(registry, "c1")
    reply = await registry.get("/v1/containers/alice/c1/anything", headers=auth(ALICE))
    assert reply.status == 200
    data = (await reply.json())["data"]
    assert data["id"] == collection["id"]
    assert data["imageTags"] == {} and data["archTags"] == {"amd64": {}}
    assert (await registry.get("/v1/containers/bob/c1/anything", headers=auth(BOB))).status == 403
    assert (await registry.get("/v1/containers/alice/nope/x", headers=auth(ALICE))).status == 404


# --- images ----------------------------------------------------------------------------------------------


async def test_looking_up_an_image_by_sha256_creates_a_new_row_every_time(registry: Client) -> None:
    await create_collection(registry, "c1")
    first, second = await new_image(registry, "c1"), await new_image(registry, "c1")
    assert first["id"] != second["id"]
    assert first["hash"] == f"sha256.{SHA}"
    assert "uploaded" not in first  # the Go client reads false and uploads
    tags = [image.tag for image in app_of(registry)[STATE].images.values()]
    assert len(tags) == 2 and all(t.startswith("DUMMY-") for t in tags)


async def test_image_rows_are_created_only_in_an_owned_existing_collection(registry: Client) -> None:
    await create_collection(registry, "c1")
    path = f"/v1/images/bob/c1/n:sha256.{SHA}"
    assert (await registry.get(path, headers=auth(BOB))).status == 403
    assert (await registry.get(f"/v1/images/alice/none/n:sha256.{SHA}", headers=auth(ALICE))).status == 404
    assert app_of(registry)[STATE].images == {}


async def test_a_tagged_image_reads_back_with_hash_and_null_size(registry: Client) -> None:
    collection = await create_collection(registry, "c1")
    image = await new_image(registry, "c1")
    await tag(registry, collection["id"], image["id"], "v1")
    for ref in ("alice/c1/n:v1", "c1/n:v1", f"c1/n:sha256.{SHA}"):
        reply = await registry.get(f"/v1/images/{ref}?arch=amd64")
        assert reply.status == 200, ref
        data = (await reply.json())["data"]
        assert (data["id"], data["hash"], data["size"]) == (image["id"], f"sha256.{SHA}", None)
    assert (await registry.get("/v1/images/alice/c1/n:latest")).status == 404


async def test_image_size_is_reported_only_when_configured(start_registry: StartRegistry, tmp_path: Path) -> None:
    client = await start_registry(base_settings(flavour="selfhosted", report_image_size=True, storage_dir=tmp_path))
    collection = await create_collection(client, "c1")
    image = await new_image(client, "c1")
    upload_url = (await (await post_json(client, f"/v2/imagefile/{image['id']}", {})).json())["data"]["uploadURL"]
    put = await client.put(urlsplit(upload_url).path, data=b"x" * 1234)
    assert put.status == 200
    await tag(client, collection["id"], image["id"], "latest")
    data = (await (await client.get("/v1/images/alice/c1/n:latest")).json())["data"]
    assert data["size"] == 1234


# --- upload (legacy single PUT) -----------------------------------------------------------------------------


def assert_presigned(url: str, method_key: str, *, host: str = EXTERNAL_S3) -> dict[str, list[str]]:
    parts = urlsplit(url)
    assert parts.netloc == host
    assert parts.path == f"/sregistry/{method_key}"
    query = parse_qs(parts.query)
    assert query["X-Amz-SignedHeaders"] == ["host"]
    assert query["X-Amz-Expires"] == ["300"]
    assert query["X-Amz-Algorithm"] == ["AWS4-HMAC-SHA256"]
    assert query["X-Amz-Credential"][0].startswith("AKIDFAKE/")
    assert len(query["X-Amz-Signature"][0]) == 64
    return query


async def test_the_upload_url_is_a_presigned_put_for_the_storage_key(registry: Client) -> None:
    await create_collection(registry, "c1")
    image = await new_image(registry, "c1", "big")
    for _ in range(2):  # may be repeated; the body is never read, {"filesize":N} is enough
        reply = await post_json(registry, f"/v2/imagefile/{image['id']}", {"filesize": 5})
        assert reply.status == 200
        url = (await reply.json())["data"]["uploadURL"]
        assert_presigned(url, f"c1/big%3Asha256.{SHA}")


async def test_the_upload_url_needs_the_collection_owner(registry: Client) -> None:
    await create_collection(registry, "c1")
    image = await new_image(registry, "c1")
    reply = await post_json(registry, f"/v2/imagefile/{image['id']}", {}, BOB)
    assert reply.status == 403
    assert await reply.read() == b""
    assert (await post_json(registry, "/v2/imagefile/999", {})).status == 404


@pytest.mark.parametrize("suffix", ["", "/_multipart"])
@pytest.mark.parametrize(
    "image_id", ["abc", "1/extra", "sha256.1", "1.0", "99999999999999999999999", "-9223372036854775809"]
)
async def test_a_non_numeric_or_overflowing_image_id_is_a_500_html_page(
    registry: Client, image_id: str, suffix: str
) -> None:
    # int() raises ValueError; an int past SQLite's signed 64-bit INTEGER raises OverflowError in the query.
    reply = await post_json(registry, f"/v2/imagefile/{image_id}{suffix}", {"filesize": 5}, ALICE)
    assert reply.status == 500
    assert reply.headers["Content-Type"].startswith("text/html")


async def test_an_id_within_64_bits_is_looked_up(registry: Client) -> None:
    assert (await post_json(registry, "/v2/imagefile/9223372036854775807", {})).status == 404


async def test_complete_answers_200_with_an_empty_body_and_no_token(registry: Client) -> None:
    await create_collection(registry, "c1")
    image = await new_image(registry, "c1")
    reply = await registry.put(f"/v2/imagefile/{image['id']}/_complete", data=b"{}")
    assert reply.status == 200
    assert await reply.read() == b""
    assert (await registry.put("/v2/imagefile/999/_complete", data=b"{}")).status == 404


async def test_multipart_start_is_404_because_multipart_is_disabled(registry: Client) -> None:
    await create_collection(registry, "c1")
    image = await new_image(registry, "c1")
    reply = await post_json(registry, f"/v2/imagefile/{image['id']}/_multipart", {"filesize": 70 << 20})
    assert reply.status == 404


async def test_multipart_abort_deletes_the_image_row(registry: Client) -> None:
    await create_collection(registry, "c1")
    image = await new_image(registry, "c1")
    reply = await registry.put(
        f"/v2/imagefile/{image['id']}/_multipart_abort", data=b'{"uploadID":"x"}', headers=auth(ALICE)
    )
    assert reply.status == 200
    assert int(image["id"]) not in app_of(registry)[STATE].images
    assert (await post_json(registry, f"/v2/imagefile/{image['id']}", {})).status == 404


# shub/apps/library/urls.py on sregistry master, the v2/imagefile routes in order (Django matches the decoded
# path without its leading slash; .+? spans slashes and "?" makes the last letter optional).
SREGISTRY_IMAGEFILE_ROUTES = [
    ("CompletePushImageFileView", r"^v2/imagefile/(?P<container_id>.+?)/_complete?$"),
    ("RequestMultiPartPushImageFileView", r"^v2/imagefile/(?P<upload_id>.+?)/_multipart?$"),
    ("RequestMultiPartAbortView", r"^v2/imagefile/(?P<upload_id>.+?)/_multipart_abort?$"),
    ("RequestMultiPartCompleteView", r"^v2/imagefile/(?P<upload_id>.+?)/_multipart_complete?$"),
    ("RequestPushImageFileView", r"^v2/imagefile/(?P<container_id>.+?)/?$"),
]


def test_the_fake_routes_v2_imagefile_with_sregistrys_own_regexes() -> None:
    fake = {route.name: route.pattern.pattern for route in ROUTES if route.name in dict(SREGISTRY_IMAGEFILE_ROUTES)}
    assert fake == dict(SREGISTRY_IMAGEFILE_ROUTES)
    for path, view in [
        ("/v2/imagefile/101/_multipar", "RequestMultiPartPushImageFileView"),
        ("/v2/imagefile/101/_multipart_abor", "RequestMultiPartAbortView"),
        ("/v2/imagefile/101/_multipart_complet", "RequestMultiPartCompleteView"),
        ("/v2/imagefile/101/x/_multipart_abort", "RequestMultiPartAbortView"),
        ("/v2/imagefile/101/_complet", "CompletePushImageFileView"),
        ("/v2/imagefile/101/", "RequestPushImageFileView"),
        ("/v2/imagefile/101/_multipart/", "RequestPushImageFileView"),
    ]:
        matched = match_route("s3", path)
        assert matched is not None and matched[0].name == view, path


async def test_a_near_miss_abort_path_deletes_the_image_row(registry: Client) -> None:
    await create_collection(registry, "c1")
    image = await new_image(registry, "c1")
    reply = await registry.put(
        f"/v2/imagefile/{image['id']}/_multipart_abor", data=b'{"uploadID":"x"}', headers=auth(ALICE)
    )
    assert reply.status == 200
    assert int(image["id"]) not in app_of(registry)[STATE].images


async def test_multipart_complete_for_an_upload_never_started_is_a_500(registry: Client) -> None:
    await create_collection(registry, "c1")
    image = await new_image(registry, "c1")
    body = {"uploadID": "u", "completedParts": [{"partNumber": 1, "token": '"etag"'}]}
    reply = await registry.put(
        f"/v2/imagefile/{image['id']}/_multipart_complete", data=json.dumps(body), headers=auth(ALICE)
    )
    assert reply.status == 500


async def test_a_chunked_or_malformed_collection_post_is_a_500(registry: Client) -> None:
    chunked = await registry.post(
        "/v1/collections", data=chunks(b'{"name":"c1",', b'"entity":"1"}'), headers=auth(ALICE)
    )
    assert chunked.status == 500
    malformed = await registry.post("/v1/collections", data=b'{"name":', headers=auth(ALICE))
    assert malformed.status == 500
    assert malformed.headers["Content-Type"].startswith("text/html")
    assert app_of(registry)[STATE].collections == {}


# --- tags ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("content_type", ["application/json", "application/octet-stream", "text/plain"])
async def test_a_tag_post_with_any_content_type_is_415(registry: Client, content_type: str) -> None:
    collection = await create_collection(registry, "c1")
    image = await new_image(registry, "c1")
    reply = await registry.post(
        f"/v1/tags/{collection['id']}",
        data=json.dumps({"Tag": "v1", "ImageID": image["id"]}),
        headers={**auth(ALICE), "Content-Type": content_type},
    )
    assert reply.status == 415


async def test_a_chunked_tag_post_is_a_500(registry: Client) -> None:
    collection = await create_collection(registry, "c1")
    image = await new_image(registry, "c1")
    body = json.dumps({"Tag": "v1", "ImageID": image["id"]}).encode()
    reply = await registry.post(
        f"/v1/tags/{collection['id']}", data=chunks(body), headers=auth(ALICE), skip_auto_headers=["Content-Type"]
    )
    assert reply.status == 500


async def test_a_tag_post_without_content_type_names_the_image(registry: Client) -> None:
    collection = await create_collection(registry, "c1")
    image = await new_image(registry, "c1")
    reply = await post_json(registry, f"/v1/tags/{collection['id']}", {"Tag": "v1", "ImageID": image["id"]})
    assert reply.status == 200
    assert await reply.read() == b""
    tags = await (await registry.get(f"/v1/tags/{collection['id']}", headers=auth(ALICE))).json()
    assert tags == {"data": {"v1": image["id"]}}


async def test_a_tag_post_deletes_the_same_name_and_tag_in_another_collection(start_registry: StartRegistry) -> None:
    client = await start_registry(base_settings(minio_cleanup=False))
    first, second = await create_collection(client, "c1"), await create_collection(client, "c2")
    old = await new_image(client, "c1", sha="1" * 64)
    await tag(client, first["id"], old["id"], "latest")
    new = await new_image(client, "c2", sha="2" * 64)
    await tag(client, second["id"], new["id"], "latest")
    images = app_of(client)[STATE].images
    assert int(old["id"]) not in images
    assert images[int(new["id"])].tag == "latest"


async def test_a_frozen_tag_refuses_a_new_image_and_deletes_its_row(registry: Client) -> None:
    collection = await create_collection(registry, "c1")
    old = await new_image(registry, "c1", sha="1" * 64)
    await tag(registry, collection["id"], old["id"], "stable")
    app_of(registry)[STATE].images[int(old["id"])].frozen = True
    new = await new_image(registry, "c1", sha="2" * 64)
    reply = await post_json(registry, f"/v1/tags/{collection['id']}", {"Tag": "stable", "ImageID": new["id"]})
    assert reply.status == 400
    assert await reply.json() == {"message": "This tag exists, and is frozen."}
    assert set(app_of(registry)[STATE].images) == {int(old["id"])}


# --- pull ------------------------------------------------------------------------------------------------


async def test_pull_is_a_302_to_a_presigned_get_of_the_storage_key(registry: Client) -> None:
    collection = await create_collection(registry, "c1")
    image = await new_image(registry, "c1", "big")
    await tag(registry, collection["id"], image["id"], "latest")
    reply = await registry.get("/v1/imagefile/alice/c1/big:latest?arch=amd64", allow_redirects=False)
    assert reply.status == 302
    assert_presigned(reply.headers["Location"], f"c1/big%3Asha256.{SHA}")
    assert (await registry.get("/v1/imagefile/alice/c1/big:v9", allow_redirects=False)).status == 404


async def test_urls_are_signed_for_an_external_server_nobody_resolves_and_a_pull_redirect_reveals_it(
    start_registry: StartRegistry,
) -> None:
    # sregistry presigns for MINIO_EXTERNAL_SERVER without contacting it (minio-py with a fixed region): a host the
    # gateway does not know, even one that does not resolve, is signed into upload URLs and pull redirects alike.
    # The public container list and a pull redirect show it without a token and without creating a row.
    registry = await start_registry(base_settings(s3_external_server="minio.invalid:9000"))
    collection = await create_collection(registry, "c1")
    image = await new_image(registry, "c1", "big")
    await tag(registry, collection["id"], image["id"], "latest")
    upload = await post_json(registry, f"/v2/imagefile/{image['id']}", {"filesize": 5})
    assert urlsplit((await upload.json())["data"]["uploadURL"]).netloc == "minio.invalid:9000"
    rows = len(app_of(registry)[STATE].images)
    (listed,) = (await (await registry.get("/api/containers/?limit=1")).json())["results"]
    assert (listed["collection"], listed["name"], listed["version"]) == ("c1", "big", f"sha256.{SHA}")
    reply = await registry.get(f"/v1/imagefile/c1/big:{listed['version']}?arch=amd64", allow_redirects=False)
    assert reply.status == 302
    assert reply.headers["Location"].startswith("http://minio.invalid:9000/sregistry/c1/big%3Asha256.")
    assert len(app_of(registry)[STATE].images) == rows


async def test_a_private_collection_is_pulled_only_by_its_owner(registry: Client) -> None:
    reply = await post_json(registry, "/v1/collections", {"name": "secret", "entity": "1", "private": True})
    collection = (await reply.json())["data"]
    image = await new_image(registry, "secret")
    await tag(registry, collection["id"], image["id"], "latest")
    path = "/v1/imagefile/alice/secret/n:latest"
    assert (await registry.get(path, headers=auth(ALICE), allow_redirects=False)).status == 302
    assert (await registry.get(path, headers=auth(BOB), allow_redirects=False)).status == 404
    assert (await registry.get("/v1/images/alice/secret/n:latest", headers=auth(BOB))).status == 404


# --- wire quirks -----------------------------------------------------------------------------------------


async def read_response(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    length = next(
        int(line.split(b":", 1)[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")
    )
    return head, await asyncio.wait_for(reader.readexactly(length), 5)


async def test_head_is_answered_with_the_get_body(registry: Client) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", registry.server.port)
    try:
        writer.write(b"HEAD /version HTTP/1.1\r\nHost: registry\r\n\r\n")
        await writer.drain()
        head, body = await read_response(reader)
        assert head.startswith(b"HTTP/1.1 200 ")
        assert json.loads(body) == {"data": {"version": "v1.0.0", "apiVersion": "2.0.0-alpha.1"}}
        writer.write(b"GET /v1/nothing HTTP/1.1\r\nHost: registry\r\n\r\n")
        await writer.drain()
        head, _ = await read_response(reader)
        assert head.startswith(b"HTTP/1.1 404 ")
    finally:
        writer.close()
        await writer.wait_closed()


async def test_the_request_log_records_what_reached_the_registry(registry: Client) -> None:
    await registry.post("/v1/collections", data=chunks(b"{}"), headers=auth(ALICE, "Bearer"))
    await post_json(registry, "/v2/imagefile/7", {"filesize": 1})
    chunked, sized = app_of(registry)[REQUEST_LOG]
    assert (chunked.method, chunked.path, chunked.chunked, chunked.status) == ("POST", "/v1/collections", True, 500)
    assert chunked.headers["authorization"] == f"Bearer {ALICE}"
    assert (sized.chunked, sized.body_length, sized.status) == (False, len(b'{"filesize": 1}'), 404)
    assert "Content-Type" not in sized.headers
    over_http = await (await registry.get("/__fake__/log")).json()
    assert [entry["path"] for entry in over_http] == ["/v1/collections", "/v2/imagefile/7"]
    assert ["Content-Length", "15"] in over_http[1]["headers"]
    assert (await registry.delete("/__fake__/log")).status == 204
    assert app_of(registry)[REQUEST_LOG] == []


async def test_the_state_is_readable_over_http(registry: Client) -> None:
    await create_collection(registry, "c1")
    image = await new_image(registry, "c1", "big")
    state = await (await registry.get("/__fake__/state")).json()
    assert state["collections"] == [{"id": 1, "name": "c1", "owner": "alice", "private": False}]
    assert [(i["id"], i["key"]) for i in state["images"]] == [(int(image["id"]), f"c1/big:sha256.{SHA}")]


async def unread_body_twice(client: Client) -> int:
    """POST a body the view never reads, twice over one pooled connection; the second reply's status.

    POST, because aiohttp's client retries an idempotent request once when a reused connection fails.
    """
    url = client.make_url("/v2/imagefile/1/_multipart")
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as session:
        async with session.post(url, data=b'{"filesize":1}', headers=auth(ALICE)) as first:
            assert first.status == 404
            await first.read()
        async with session.post(url, data=b'{"filesize":1}', headers=auth(ALICE)) as second:
            return second.status


async def test_close_after_unread_body_resets_the_next_request_on_that_connection(
    start_registry: StartRegistry,
) -> None:
    client = await start_registry(base_settings(close_after_unread_body=True))
    with pytest.raises(aiohttp.ClientConnectionError):
        await unread_body_twice(client)
    log = app_of(client)[REQUEST_LOG]
    assert [r.reset for r in log] == [False, True]
    assert (await client.get("/version")).status == 200  # a new connection is fine


async def test_connections_stay_usable_after_an_unread_body_by_default(registry: Client) -> None:
    assert await unread_body_twice(registry) == 404


async def test_views_are_rate_limited_per_ip_when_configured(start_registry: StartRegistry) -> None:
    client = await start_registry(base_settings(view_rate_limit=2))
    statuses = [(await client.get("/v1/containers", headers=auth(ALICE))).status for _ in range(3)]
    assert statuses == [200, 200, 403]
    assert (await client.get("/version")).status == 200  # VersionView has no rate limit


# --- the selfhosted flavour (sregistry <= 1.1.23) -----------------------------------------------------------


async def test_selfhosted_upload_url_points_at_the_registry_which_stores_and_serves_the_bytes(
    start_registry: StartRegistry, tmp_path: Path
) -> None:
    client = await start_registry(base_settings(flavour="selfhosted", storage_dir=tmp_path))
    collection = await create_collection(client, "c1")
    image = await new_image(client, "c1")
    upload_url = (await (await post_json(client, f"/v2/imagefile/{image['id']}", {})).json())["data"]["uploadURL"]
    assert upload_url.startswith(str(client.make_url("/v2/push/imagefile/")))
    put = await client.put(urlsplit(upload_url).path, data=b"image bytes")  # application/octet-stream
    assert put.status == 200
    assert (await client.put(urlsplit(upload_url).path, data=b"again")).status == 403  # the secret is spent
    await tag(client, collection["id"], image["id"], "latest")
    reply = await client.get("/v1/imagefile/alice/c1/n:latest", allow_redirects=False)
    assert reply.status == 302
    assert "/containers/" in reply.headers["Location"]
    download = await client.get(urlsplit(reply.headers["Location"]).path)
    assert (download.status, await download.read()) == (200, b"image bytes")
    assert download.headers["Content-Type"] == "application/img"


async def test_the_selfhosted_public_url_can_be_set_once_the_port_is_known(
    start_registry: StartRegistry, tmp_path: Path
) -> None:
    client = await start_registry(base_settings(flavour="selfhosted", storage_dir=tmp_path))
    reconfigure(app_of(client), public_url="http://registry.internal:1234")
    await create_collection(client, "c1")
    image = await new_image(client, "c1")
    upload_url = (await (await post_json(client, f"/v2/imagefile/{image['id']}", {})).json())["data"]["uploadURL"]
    assert upload_url.startswith(f"http://registry.internal:1234/v2/push/imagefile/{image['id']}/")
    with pytest.raises(ValueError, match="users"):
        reconfigure(app_of(client), users={})


async def test_a_chunked_selfhosted_upload_is_a_500(start_registry: StartRegistry, tmp_path: Path) -> None:
    client = await start_registry(base_settings(flavour="selfhosted", storage_dir=tmp_path))
    await create_collection(client, "c1")
    image = await new_image(client, "c1")
    upload_url = (await (await post_json(client, f"/v2/imagefile/{image['id']}", {})).json())["data"]["uploadURL"]
    reply = await client.put(
        urlsplit(upload_url).path, data=chunks(b"image"), headers={"Content-Type": "application/octet-stream"}
    )
    assert reply.status == 500
    assert list(tmp_path.rglob("*.sif")) == []


# --- against real S3 and the real Go client -----------------------------------------------------------------


async def test_a_put_to_the_upload_url_stores_the_object_under_the_storage_key(
    start_registry: StartRegistry, seaweedfs: SeaweedFS
) -> None:
    client = await start_registry(seaweedfs_settings(seaweedfs))
    await create_collection(client, "put1")
    content = os.urandom(4096)
    sha = hashlib.sha256(content).hexdigest()
    image = await new_image(client, "put1", "n", sha)
    url = (await (await post_json(client, f"/v2/imagefile/{image['id']}", {"filesize": 4096})).json())["data"]
    async with aiohttp.ClientSession() as session:
        async with session.put(
            url["uploadURL"], data=content, headers={"Content-Type": "application/octet-stream"}
        ) as reply:
            assert reply.status == 200, await reply.text()
    stored = seaweedfs.botocore_client().get_object(Bucket="sregistry", Key=f"put1/n:sha256.{sha}")
    assert stored["Body"].read() == content


async def test_the_real_client_pushes_and_pulls_through_the_s3_flavour(
    start_registry: StartRegistry, seaweedfs: SeaweedFS, realclient: RealClient, tmp_path: Path
) -> None:
    client = await start_registry(seaweedfs_settings(seaweedfs))
    base = str(client.make_url("")).rstrip("/")
    source = tmp_path / "image.sif"
    source.write_bytes(os.urandom(3 << 20))
    pushed = await realclient.push(base, ALICE, source, "alice/rc1/app:v1", timeout=120)
    assert pushed.ok, pushed.stderr
    paths = [(r.method, r.path) for r in app_of(client)[REQUEST_LOG]]
    assert ("POST", "/v1/collections") in paths and ("POST", "/v1/tags/1") in paths
    assert not any(path.endswith("/_multipart") for _, path in paths)  # <= 64 MiB: legacy upload only
    single = await realclient.pull(base, ALICE, "alice/rc1/app:v1", tmp_path / "single.sif", timeout=120)
    assert single.ok, single.stderr
    assert (tmp_path / "single.sif").read_bytes() == source.read_bytes()
    concurrent = await realclient.pull(
        base, ALICE, "alice/rc1/app:v1", tmp_path / "concurrent.sif", concurrent=True, timeout=120
    )
    assert not concurrent.ok  # client v1.2.2 cannot follow sregistry's 302
    assert "302" in concurrent.error


async def test_a_real_repush_of_the_tag_deletes_the_old_object(
    start_registry: StartRegistry, seaweedfs: SeaweedFS, realclient: RealClient, tmp_path: Path
) -> None:
    client = await start_registry(seaweedfs_settings(seaweedfs))
    base = str(client.make_url("")).rstrip("/")
    first, second = tmp_path / "first.sif", tmp_path / "second.sif"
    first.write_bytes(os.urandom(1 << 20))
    second.write_bytes(os.urandom(1 << 20))
    for source in (first, second):
        result = await realclient.push(base, ALICE, source, "alice/rc2/app:latest", timeout=120)
        assert result.ok, result.stderr
    s3 = seaweedfs.botocore_client()
    old_key = f"rc2/app:sha256.{hashlib.sha256(first.read_bytes()).hexdigest()}"
    new_key = f"rc2/app:sha256.{hashlib.sha256(second.read_bytes()).hexdigest()}"
    with pytest.raises(ClientError):
        s3.head_object(Bucket="sregistry", Key=old_key)
    assert s3.head_object(Bucket="sregistry", Key=new_key)["ContentLength"] == 1 << 20


async def test_the_real_client_pushes_and_pulls_through_the_selfhosted_flavour(
    start_registry: StartRegistry, realclient: RealClient, tmp_path: Path
) -> None:
    client = await start_registry(base_settings(flavour="selfhosted", storage_dir=tmp_path / "media"))
    base = str(client.make_url("")).rstrip("/")
    source = tmp_path / "image.sif"
    source.write_bytes(os.urandom(1 << 20))
    pushed = await realclient.push(base, ALICE, source, "alice/rc3/app:latest", timeout=120)
    assert pushed.ok, pushed.stderr
    pulled = await realclient.pull(base, ALICE, "alice/rc3/app:latest", tmp_path / "out.sif", timeout=120)
    assert pulled.ok, pulled.stderr
    assert (tmp_path / "out.sif").read_bytes() == source.read_bytes()


# --- as a process ----------------------------------------------------------------------------------------


async def test_the_standalone_process_announces_its_address_and_serves() -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.support.registry", "--port", "0", "--token", f"{ALICE}:alice",
        "--domain-name", "http://gateway.example.org",
        cwd=REPO_ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        line = (await asyncio.wait_for(process.stdout.readline(), PROCESS_START_TIMEOUT_S)).decode().strip()
        assert line.startswith("listening on http://127.0.0.1:")
        base = line.removeprefix("listening on ")
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{base}/v1/token-status", headers=auth(ALICE)) as reply:
                assert reply.status == 200
            async with session.get(f"{base}/assets/config/config.prod.json") as reply:
                assert json.loads(await reply.text())["libraryAPI"]["uri"] == "http://gateway.example.org"
        process.terminate()
        assert await asyncio.wait_for(process.wait(), PROCESS_STOP_TIMEOUT_S) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
