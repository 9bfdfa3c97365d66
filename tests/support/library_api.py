"""A scripted library-API client speaking exactly the real client's wire protocol (docs/protocol.md §3-§5), one step
per method, so tests can act between steps (restart a gateway, stop S3, race two completes)."""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass
from typing import Any

import aiohttp
from yarl import URL

from tests.support.stack import TOKEN


@dataclass
class Answer:
    status: int
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def data(self) -> Any:
        return self.json["data"]


class LibraryClient:
    def __init__(self, session: aiohttp.ClientSession, base_url: str, *, token: str | None = TOKEN) -> None:
        self.session = session
        self.base_url = base_url.rstrip("/")
        self.token = token

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"BEARER {self.token}"} if self.token else {}

    async def call(self, method: str, path: str, body: Any = None, *, raw: bytes | None = None) -> Answer:
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        async with self.session.request(
            method,
            URL(self.base_url + path, encoded=True),
            data=io.BytesIO(data) if data is not None else None,
            headers=self.headers(),
            skip_auto_headers={"Content-Type"},  # the real client sends JSON without one
        ) as response:
            return Answer(response.status, await response.read())

    async def create_image(self, entity: str, collection: str, container: str, sha256_hex: str) -> str:
        """The resolve sequence of a push; returns the image id."""
        found = await self.call("GET", f"/v1/entities/{entity}")
        assert found.status == 200, found
        got = await self.call("GET", f"/v1/collections/{entity}/{collection}")
        if got.status == 404:
            got = await self.call("POST", "/v1/collections", {"name": collection, "entity": found.data["id"]})
        assert got.status == 200, got
        assert (await self.call("GET", f"/v1/containers/{entity}/{collection}/{container}")).status == 200
        image = await self.call("GET", f"/v1/images/{entity}/{collection}/{container}:sha256.{sha256_hex}?arch=amd64")
        assert image.status == 200, image
        return str(image.data["id"])

    async def start(self, image_id: str, filesize: int) -> Answer:
        return await self.call("POST", f"/v2/imagefile/{image_id}/_multipart", {"filesize": filesize})

    async def presign(self, image_id: str, upload_id: str, number: int, part: bytes) -> Answer:
        body = {
            "partSize": len(part),
            "uploadID": upload_id,
            "partNumber": number,
            "sha256sum": hashlib.sha256(part).hexdigest(),
        }
        return await self.call("PUT", f"/v2/imagefile/{image_id}/_multipart", body)

    async def put_part(self, url: str, part: bytes, *, sha256_hex: str | None = None) -> tuple[int, str]:
        headers = {"X-Amz-Content-Sha256": sha256_hex or hashlib.sha256(part).hexdigest()}
        async with self.session.put(
            URL(url, encoded=True), data=io.BytesIO(part), headers=headers, skip_auto_headers={"Content-Type"}
        ) as response:
            await response.read()
            return response.status, response.headers.get("ETag", "")

    async def complete(self, image_id: str, upload_id: str, etags: list[str]) -> Answer:
        parts = [{"partNumber": n, "token": etag} for n, etag in enumerate(etags, 1)]
        return await self.call(
            "PUT", f"/v2/imagefile/{image_id}/_multipart_complete", {"uploadID": upload_id, "completedParts": parts}
        )

    async def abort(self, image_id: str, upload_id: str) -> Answer:
        return await self.call("PUT", f"/v2/imagefile/{image_id}/_multipart_abort", {"uploadID": upload_id})

    async def upload_parts(self, image_id: str, start: Any, data: bytes) -> list[str]:
        """Presign and PUT every part as the real client does (sequentially); returns the ETags."""
        etags = []
        size = start["partSize"]
        for number in range(1, start["totalParts"] + 1):
            part = data[(number - 1) * size : number * size]
            url = (await self.presign(image_id, start["uploadID"], number, part)).data["presignedURL"]
            status, etag = await self.put_part(url, part)
            assert status == 200, (number, status)
            etags.append(etag)
        return etags
