"""The real Apptainer library client (v1.2.2) against a minimal recording server.

These tests prove the Go tool works and pin down the client's wire behaviour that the gateway relies on (see
docs/protocol.md §2-§7). The server here is deliberately minimal and test-local; the faithful sregistry fake lives in
tests/support/registry/.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from multidict import CIMultiDict
from pytest_aiohttp import AiohttpServer

from tests.support.realclient import RealClient

TOKEN = "0123456789abcdef0123456789abcdef01234567"
ENTITY_ID, COLLECTION_ID, CONTAINER_ID, IMAGE_ID = "entity-1", "collection-3", "container-7", "42"
IMAGE_OBJECT = f"image-{IMAGE_ID}"
UPLOAD_ID = "upload-abc"
CONTAINER_URL = "https://library.example.org/alice/tools/hello"
PART_SIZE = 32 * 1024 * 1024
MULTIPART_THRESHOLD = 64 * 1024 * 1024  # hard-coded in the client: multipart only for files strictly larger
SHA_SIGNED = "host%3Bx-amz-content-sha256"


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True, slots=True)
class Recorded:
    method: str
    path_qs: str
    headers: CIMultiDict[str]
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def is_object_store(self) -> bool:
        return self.path_qs.startswith("/object/")


class RecordingLibrary:
    """Just enough of the library API for pushes and pulls of image 42; records requests as their bodies arrive."""

    def __init__(self, *, multipart: bool = False, signed_headers: str = SHA_SIGNED, pull_status: int = 302):
        self.multipart = multipart
        self.signed_headers = signed_headers
        self.pull_status = pull_status
        self.requests: list[Recorded] = []
        self.objects: dict[str, bytes] = {}
        self.tags: dict[str, str] = {}

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._record], client_max_size=256 * 1024 * 1024)
        app.router.add_get("/version", self._version)
        app.router.add_get("/v1/entities/{entity}", self._reply({"id": ENTITY_ID}))
        app.router.add_get("/v1/collections/{entity}/{collection}", self._reply({"id": COLLECTION_ID}))
        app.router.add_get("/v1/containers/{entity}/{collection}/{container}", self._reply({"id": CONTAINER_ID}))
        app.router.add_get("/v1/images/{entity}/{collection}/{ref}", self._image)
        app.router.add_post("/v2/imagefile/{id}", self._legacy_start)
        app.router.add_put("/v2/imagefile/{id}/_complete", self._reply({"containerUrl": CONTAINER_URL}))
        app.router.add_post("/v2/imagefile/{id}/_multipart", self._multipart_start)
        app.router.add_put("/v2/imagefile/{id}/_multipart", self._multipart_part)
        app.router.add_put("/v2/imagefile/{id}/_multipart_complete", self._multipart_complete)
        app.router.add_get("/v1/tags/{container}", self._get_tags)
        app.router.add_post("/v1/tags/{container}", self._set_tag)
        app.router.add_get("/v1/imagefile/{entity}/{collection}/{ref}", self._pull_redirect)
        app.router.add_put("/object/{name}", self._object_put)
        app.router.add_get("/object/{name}", self._object_get)
        return app

    def store_image(self, data: bytes, tag: str = "latest") -> None:
        self.objects[IMAGE_OBJECT] = data
        self.tags[tag] = IMAGE_ID

    def since(self, start: int) -> list[tuple[str, str]]:
        return [(r.method, r.path_qs) for r in self.requests[start:]]

    def find(self, method: str, path_prefix: str) -> list[Recorded]:
        return [r for r in self.requests if r.method == method and r.path_qs.startswith(path_prefix)]

    @web.middleware
    async def _record(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        body = await request.read()
        self.requests.append(Recorded(request.method, request.path_qs, request.headers.copy(), body))
        return await handler(request)

    @staticmethod
    def _reply(data: dict[str, Any]) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def handler(request: web.Request) -> web.Response:
            return web.json_response({"data": data})

        return handler

    async def _version(self, request: web.Request) -> web.Response:
        return web.json_response({"data": {"version": "v1.0.0", "apiVersion": "2.0.0-alpha.1"}})

    async def _image(self, request: web.Request) -> web.Response:
        _, _, version = request.match_info["ref"].partition(":")
        if version.startswith("sha256."):  # push: the image row for this hash, not uploaded yet
            return web.json_response({"data": {"id": IMAGE_ID, "hash": version, "uploaded": False}})
        if version not in self.tags:
            return web.json_response({"error": {"code": 404, "message": "Not Found"}}, status=404)
        data = self.objects[IMAGE_OBJECT]
        return web.json_response({"data": {"id": IMAGE_ID, "hash": f"sha256.{sha256_hex(data)}", "size": len(data)}})

    async def _legacy_start(self, request: web.Request) -> web.Response:
        url = f"{request.url.origin()}/object/image-{request.match_info['id']}"
        return web.json_response({"data": {"uploadURL": f"{url}?X-Amz-SignedHeaders={self.signed_headers}"}})

    async def _multipart_start(self, request: web.Request) -> web.Response:
        if not self.multipart:
            return web.json_response({"error": {"code": 404, "message": "Not Found"}}, status=404)
        total_parts = math.ceil(json.loads(await request.read())["filesize"] / PART_SIZE)
        return web.json_response(
            {
                "data": {
                    "uploadID": UPLOAD_ID,
                    "totalParts": total_parts,
                    "partSize": PART_SIZE,
                    "options": {"s3compliant": "true"},
                }
            }
        )

    async def _multipart_part(self, request: web.Request) -> web.Response:
        part_number = json.loads(await request.read())["partNumber"]
        url = f"{request.url.origin()}/object/image-{request.match_info['id']}.part{part_number}"
        return web.json_response({"data": {"presignedURL": f"{url}?partNumber={part_number}&uploadId={UPLOAD_ID}"}})

    async def _multipart_complete(self, request: web.Request) -> web.Response:
        parts = sorted(json.loads(await request.read())["completedParts"], key=lambda part: part["partNumber"])
        image = f"image-{request.match_info['id']}"
        self.objects[image] = b"".join(self.objects[f"{image}.part{p['partNumber']}"] for p in parts)
        return web.json_response({})  # what sregistry answers: no containerUrl

    async def _get_tags(self, request: web.Request) -> web.Response:
        return web.json_response({"data": self.tags})

    async def _set_tag(self, request: web.Request) -> web.Response:
        tag = json.loads(await request.read())
        self.tags[tag["Tag"]] = tag["ImageID"]
        return web.json_response({"data": {}})

    async def _pull_redirect(self, request: web.Request) -> web.Response:
        location = f"{request.url.origin()}/object/{IMAGE_OBJECT}"
        return web.Response(status=self.pull_status, headers={"Location": location})

    async def _object_put(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.objects[request.match_info["name"]] = body
        return web.Response(headers={"ETag": f'"{hashlib.md5(body).hexdigest()}"'})

    async def _object_get(self, request: web.Request) -> web.Response:
        data = self.objects[request.match_info["name"]]
        if request.http_range.start is None:
            return web.Response(body=data, content_type="application/octet-stream")
        start, stop = request.http_range.start, min(request.http_range.stop or len(data), len(data))
        return web.Response(
            status=206,
            body=data[start:stop],
            content_type="application/octet-stream",
            headers={"Content-Range": f"bytes {start}-{stop - 1}/{len(data)}"},
        )


async def serve(aiohttp_server: AiohttpServer, library: RecordingLibrary) -> str:
    server = await aiohttp_server(library.app())
    return str(server.make_url("")).rstrip("/")


def write_random(path: Path, size: int) -> bytes:
    data = os.urandom(size)
    path.write_bytes(data)
    return data


def resolve_sequence(image_sha: str) -> list[tuple[str, str]]:
    return [
        ("GET", "/v1/entities/alice"),
        ("GET", "/v1/collections/alice/tools"),
        ("GET", "/v1/containers/alice/tools/hello"),
        ("GET", f"/v1/images/alice/tools/hello:sha256.{image_sha}?arch=amd64"),
        ("GET", "/version"),
    ]


def tag_sequence(tag_count: int) -> list[tuple[str, str]]:
    tag_posts = [("POST", f"/v1/tags/{CONTAINER_ID}")] * tag_count
    return [("GET", "/version"), ("GET", f"/v1/tags/{CONTAINER_ID}"), *tag_posts]


async def test_small_push_uses_the_legacy_upload_and_pull_follows_the_302(
    realclient: RealClient, aiohttp_server: AiohttpServer, tmp_path: Path
) -> None:
    library = RecordingLibrary()
    base_url = await serve(aiohttp_server, library)
    data = write_random(tmp_path / "small.sif", 1024 * 1024 + 123)
    sha = sha256_hex(data)

    pushed = await realclient.push(base_url, TOKEN, tmp_path / "small.sif", "alice/tools/hello:v1,latest")

    assert pushed.ok, pushed.stderr
    assert pushed.json == {"ok": True, "containerUrl": CONTAINER_URL}
    assert library.since(0) == resolve_sequence(sha) + [
        ("POST", f"/v2/imagefile/{IMAGE_ID}"),
        ("PUT", f"/object/{IMAGE_OBJECT}?X-Amz-SignedHeaders={SHA_SIGNED}"),  # the URL is sent verbatim
        ("PUT", f"/v2/imagefile/{IMAGE_ID}/_complete"),
    ] + tag_sequence(2)
    api_calls = [r for r in library.requests if not r.is_object_store]
    assert all(r.headers["Authorization"] == f"BEARER {TOKEN}" for r in api_calls)
    assert all(r.headers["User-Agent"].startswith("Apptainer/1.0.2 (Linux amd64) Go/") for r in api_calls)
    assert all("Content-Type" not in r.headers for r in api_calls)  # JSON bodies carry no Content-Type
    (start,) = library.find("POST", "/v2/imagefile/")
    assert start.json == {"filesize": len(data), "md5sum": hashlib.md5(data).hexdigest(), "sha256sum": sha}
    (put,) = library.find("PUT", "/object/")
    assert put.body == data
    assert put.headers["Content-Type"] == "application/octet-stream"
    assert put.headers["Content-Length"] == str(len(data))
    assert put.headers["X-Amz-Content-Sha256"] == sha
    assert put.headers["User-Agent"] == "Go-http-client/1.1"
    assert "Authorization" not in put.headers
    (complete,) = library.find("PUT", f"/v2/imagefile/{IMAGE_ID}/_complete")
    assert complete.body == b"{}"
    tag_posts = library.find("POST", "/v1/tags/")
    assert [r.body for r in tag_posts] == [b'{"Tag":"v1","ImageID":"42"}', b'{"Tag":"latest","ImageID":"42"}']

    pull_start = len(library.requests)
    pulled = await realclient.pull(base_url, TOKEN, "alice/tools/hello:v1", tmp_path / "pulled.sif")

    assert pulled.ok, pulled.stderr
    reply = pulled.json
    assert reply.pop("downloadSeconds") >= 0
    assert reply == {"ok": True, "hash": f"sha256.{sha}", "bytes": len(data)}
    assert (tmp_path / "pulled.sif").read_bytes() == data
    assert library.since(pull_start) == [
        ("GET", "/v1/images/alice/tools/hello:v1?arch=amd64"),
        ("GET", "/version"),
        ("GET", "/v1/imagefile/alice/tools/hello:v1?arch=amd64"),
        ("GET", f"/object/{IMAGE_OBJECT}"),
    ]
    followed = library.requests[-1]
    # Go 1.19 keeps Authorization on a redirect to the same host:port, and adds a Referer.
    assert followed.headers["Authorization"] == f"BEARER {TOKEN}"
    assert followed.headers["Referer"] == f"{base_url}/v1/imagefile/alice/tools/hello:v1?arch=amd64"


@pytest.mark.parametrize(
    ("signed_headers", "sends_sha_header"),
    [
        (SHA_SIGNED, True),
        ("host", False),
        ("host;x-amz-content-sha256", False),  # an unescaped ';' makes Go drop the whole query parameter
    ],
)
async def test_legacy_put_carries_the_sha256_header_only_when_the_url_signs_it(
    realclient: RealClient, aiohttp_server: AiohttpServer, tmp_path: Path, signed_headers: str, sends_sha_header: bool
) -> None:
    library = RecordingLibrary(signed_headers=signed_headers)
    base_url = await serve(aiohttp_server, library)
    data = write_random(tmp_path / "tiny.sif", 4096)

    pushed = await realclient.push(base_url, TOKEN, tmp_path / "tiny.sif", "alice/tools/hello")

    assert pushed.ok, pushed.stderr
    (put,) = library.find("PUT", "/object/")
    assert ("X-Amz-Content-Sha256" in put.headers) == sends_sha_header
    assert library.tags == {"latest": IMAGE_ID}
    assert library.objects[IMAGE_OBJECT] == data


async def test_large_push_uploads_parts_one_at_a_time_with_their_sha256_and_quoted_etags(
    realclient: RealClient, aiohttp_server: AiohttpServer, tmp_path: Path
) -> None:
    library = RecordingLibrary(multipart=True)
    base_url = await serve(aiohttp_server, library)
    data = write_random(tmp_path / "big.sif", 70 * 1024 * 1024)
    assert len(data) > MULTIPART_THRESHOLD
    parts = [data[offset : offset + PART_SIZE] for offset in range(0, len(data), PART_SIZE)]

    pushed = await realclient.push(base_url, TOKEN, tmp_path / "big.sif", "alice/tools/hello:v2")

    assert pushed.ok, pushed.stderr
    assert pushed.json == {"ok": True, "containerUrl": None}
    per_part = [
        [
            ("PUT", f"/v2/imagefile/{IMAGE_ID}/_multipart"),
            ("PUT", f"/object/{IMAGE_OBJECT}.part{n}?partNumber={n}&uploadId={UPLOAD_ID}"),
        ]
        for n in range(1, len(parts) + 1)
    ]
    # Recorded when each body has fully arrived: presign n+1 only follows the complete PUT of part n.
    assert library.since(0) == resolve_sequence(sha256_hex(data)) + [
        ("POST", f"/v2/imagefile/{IMAGE_ID}/_multipart"),
        *[request for pair in per_part for request in pair],
        ("PUT", f"/v2/imagefile/{IMAGE_ID}/_multipart_complete"),
    ] + tag_sequence(1)
    (start,) = library.find("POST", f"/v2/imagefile/{IMAGE_ID}/_multipart")
    assert start.body == f'{{"filesize":{len(data)}}}'.encode()
    presigns = library.find("PUT", f"/v2/imagefile/{IMAGE_ID}/_multipart")[: len(parts)]
    assert [r.body for r in presigns] == [
        json.dumps(
            {"partSize": len(part), "uploadID": UPLOAD_ID, "partNumber": n, "sha256sum": sha256_hex(part)},
            separators=(",", ":"),
        ).encode()
        for n, part in enumerate(parts, start=1)
    ]
    part_puts = library.find("PUT", "/object/")
    assert [r.body for r in part_puts] == parts
    assert [r.headers["X-Amz-Content-Sha256"] for r in part_puts] == [sha256_hex(part) for part in parts]
    assert all("Content-Type" not in r.headers and "Authorization" not in r.headers for r in part_puts)
    (complete,) = library.find("PUT", f"/v2/imagefile/{IMAGE_ID}/_multipart_complete")
    assert complete.json == {
        "uploadID": UPLOAD_ID,
        "completedParts": [
            {"partNumber": n, "token": f'"{hashlib.md5(part).hexdigest()}"'} for n, part in enumerate(parts, start=1)
        ],
    }
    assert library.objects[IMAGE_OBJECT] == data


async def test_concurrent_pull_follows_a_303_with_ranged_gets_and_no_authorization(
    realclient: RealClient, aiohttp_server: AiohttpServer, tmp_path: Path
) -> None:
    library = RecordingLibrary(pull_status=303)
    library.store_image(os.urandom(3 * 1024 * 1024 + 5))
    base_url = await serve(aiohttp_server, library)

    pulled = await realclient.pull(
        base_url, TOKEN, "alice/tools/hello", tmp_path / "pulled.sif", concurrent=True, part_size=1024 * 1024
    )

    assert pulled.ok, pulled.stderr
    assert (tmp_path / "pulled.sif").read_bytes() == library.objects[IMAGE_OBJECT]
    ranged = library.find("GET", "/object/")
    assert ranged[0].headers["Range"] == "bytes=0-1024"  # the probe that reads the size from Content-Range
    mib = 1024 * 1024
    expected_ranges = {f"bytes={n * mib}-{n * mib + mib - 1}" for n in range(3)} | {f"bytes={3 * mib}-{3 * mib + 4}"}
    assert {r.headers["Range"] for r in ranged[1:]} == expected_ranges
    assert all("Authorization" not in r.headers for r in ranged)


async def test_concurrent_pull_of_this_client_version_fails_on_a_302(
    realclient: RealClient, aiohttp_server: AiohttpServer, tmp_path: Path
) -> None:
    library = RecordingLibrary(pull_status=302)
    library.store_image(os.urandom(4096))
    base_url = await serve(aiohttp_server, library)

    pulled = await realclient.pull(base_url, TOKEN, "alice/tools/hello", tmp_path / "pulled.sif", concurrent=True)

    assert not pulled.ok
    assert pulled.json is None
    assert "unexpected HTTP status 302" in pulled.error
    assert library.find("GET", "/object/") == []
