"""Library-API calls, shaped as the real client sends them (docs/protocol.md §2-§7).

JSON bodies go out compact and without a Content-Type (sregistry answers 415 to one on tag POSTs); the token as
``Authorization: Bearer <tok>``; failures come back as ``{"error":{"code","message"}}`` and become typed errors.
A request that dies on a pooled connection the server had silently closed (uWSGI after an unread body) is sent
once more.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import AsyncIterator, Collection, Mapping
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import quote, urlencode

import aiohttp
from yarl import URL

from .. import __version__
from .errors import ApiError, NotFound, TransportError, api_error

__all__ = [
    "API_V2_ARCH_TAGS",
    "API_V2_UPLOAD",
    "DEFAULT_TIMEOUT",
    "USER_AGENT",
    "error_message",
    "Image",
    "LibraryApi",
    "MultipartStart",
    "open_session",
    "semver_at_least",
]

USER_AGENT: Final = f"signing-gateway-client/{__version__}"
API_V2_UPLOAD: Final = "2.0.0-alpha.1"
API_V2_ARCH_TAGS: Final = "2.0.0-alpha.2"
MAX_API_BODY: Final = 16 * 1024 * 1024
_GO_ZERO_TIME: Final = "0001-01-01T00:00:00Z"
_SEMVER = re.compile(r"(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(?:-([0-9A-Za-z.-]+))?(?:\+[0-9A-Za-z.-]+)?")


# -- version negotiation -------------------------------------------------------------------------------------


def _semver_key(version: str) -> tuple[tuple[int, int, int], tuple[tuple[int, int | str], ...] | None] | None:
    match = _SEMVER.fullmatch(version)
    if match is None:
        return None
    core = (int(match[1]), int(match[2]), int(match[3]))
    if match[4] is None:
        return core, None
    # Numeric identifiers sort before alphanumeric ones (semver §11).
    pre = tuple((0, int(part)) if part.isdigit() else (1, part) for part in match[4].split("."))
    return core, pre


def semver_at_least(version: str | None, required: str) -> bool:
    """``version >= required`` by semver precedence; an absent or malformed version is never enough."""
    have, need = _semver_key(version or ""), _semver_key(required)
    if have is None or need is None:
        return False
    if have[0] != need[0]:
        return have[0] > need[0]
    if have[1] is None or need[1] is None:
        return have[1] is None  # a release outranks its pre-releases
    return have[1] >= need[1]


# -- replies -------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Image:
    id: str
    hash: str
    size: int | None
    uploaded: bool

    @classmethod
    def from_data(cls, data: Mapping[str, Any]) -> Image:
        size, image_hash = data.get("size"), data.get("hash")
        return cls(
            id=_id(data),
            hash=image_hash if isinstance(image_hash, str) else "",
            size=size if type(size) is int and size > 0 else None,
            uploaded=data.get("uploaded") is True,
        )


@dataclass(frozen=True, slots=True)
class MultipartStart:
    upload_id: str
    part_size: int
    total_parts: int
    s3compliant: bool


def _id(data: Mapping[str, Any]) -> str:
    value = data.get("id")
    if isinstance(value, bool) or not isinstance(value, str | int) or value == "":
        raise ApiError(200, "reply has no data.id")
    return str(value)


def _data(document: Any) -> dict[str, Any]:
    data = document.get("data") if isinstance(document, dict) else None
    if not isinstance(data, dict):
        raise ApiError(200, "reply has no data object")
    return data


def error_message(document: Any, status: int, reason: str = "") -> str:
    """The envelope's ``error.message``, else a line naming the status."""
    error = document.get("error") if isinstance(document, dict) else None
    message = error.get("message") if isinstance(error, dict) else None
    if isinstance(message, str) and message:
        return message
    return f"request did not succeed: {reason or 'http status'} {status}".strip()


def _base_model() -> dict[str, Any]:
    # Go's json.Marshal of the client's models: zero values included, zero times as Go prints them.
    return {
        "deleted": False,
        "createdBy": "",
        "createdAt": _GO_ZERO_TIME,
        "updatedAt": _GO_ZERO_TIME,
        "deletedAt": _GO_ZERO_TIME,
    }


# -- the client ----------------------------------------------------------------------------------------------


class LibraryApi:
    def __init__(
        self, session: aiohttp.ClientSession, base_url: str, *, token: str | None, user_agent: str = USER_AGENT
    ) -> None:
        self.session = session
        self.base_url = base_url if base_url.endswith("/") else base_url + "/"
        self.token = token
        self.user_agent = user_agent

    def url(self, path: str, query: Mapping[str, str] | None = None) -> URL:
        """``path`` resolved against the base URL, as Go's ResolveReference does for the real client."""
        suffix = f"?{urlencode(dict(query))}" if query else ""
        return URL(self.base_url + path + suffix, encoded=True)

    def headers(self) -> dict[str, str]:
        headers = {"User-Agent": self.user_agent}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        return headers

    async def call(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, str] | None = None,
        body: Mapping[str, Any] | None = None,
        accept: Collection[int] = (200,),
    ) -> Any:
        """The reply's JSON document (None for an empty body); raises a typed error for any other status."""
        payload = json.dumps(body, separators=(",", ":")).encode() if body is not None else None
        address = self.url(path, query)
        for attempt in (1, 2):
            try:
                async with self.session.request(
                    method,
                    address,
                    data=payload,
                    headers=self.headers(),
                    skip_auto_headers=("Content-Type",),
                    allow_redirects=False,
                ) as response:
                    raw = await response.content.read(MAX_API_BODY)
                    status, reason = response.status, response.reason or ""
                break
            except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as exc:
                if attempt == 1:
                    continue  # a pooled connection the server had closed: send once more
                raise TransportError(f"{method} {address}: {exc or type(exc).__name__}") from None
            except (TimeoutError, aiohttp.ClientError) as exc:
                raise TransportError(f"{method} {address}: {exc or type(exc).__name__}") from None
        try:
            document = json.loads(raw) if raw.strip() else None
        except (ValueError, UnicodeDecodeError):
            document = None
        if status in accept:
            return document
        raise api_error(status, error_message(document, status, reason), method=method, path=path)

    # -- version ------------------------------------------------------------------------------------------

    async def api_version(self) -> str | None:
        """``data.apiVersion`` of ``GET version``; None when the call fails (the real client then uses v1)."""
        try:
            document = await self.call("GET", "version")
        except (ApiError, TransportError):
            return None
        version = _data(document).get("apiVersion") if isinstance(document, dict) else None
        return version if isinstance(version, str) else None

    # -- resolve or create (push steps 1-4) ---------------------------------------------------------------

    async def _get_or_create(self, get_path: str, create_path: str, model: dict[str, Any]) -> dict[str, Any]:
        try:
            return _data(await self.call("GET", get_path))
        except NotFound:
            return _data(await self.call("POST", create_path, body=_base_model() | model, accept=(200, 201)))

    async def entity(self, name: str) -> str:
        model = {
            "id": "",
            "name": name,
            "description": "No description",
            "collections": None,
            "size": 0,
            "quota": 0,
            "defaultPrivate": False,
            "customData": "",
        }
        return _id(await self._get_or_create(f"v1/entities/{name}", "v1/entities", model))

    async def collection(self, entity: str, name: str, entity_id: str) -> str:
        model = {
            "id": "",
            "name": name,
            "description": "No description",
            "entity": entity_id,
            "containers": None,
            "size": 0,
            "private": False,
            "customData": "",
        }
        return _id(await self._get_or_create(f"v1/collections/{entity}/{name}", "v1/collections", model))

    async def container(self, entity: str, collection: str, name: str, collection_id: str) -> str:
        model = {
            "id": "",
            "name": name,
            "description": "No description",
            "fullDescription": "",
            "collection": collection_id,
            "images": None,
            "imageTags": None,
            "archTags": None,
            "size": 0,
            "downloadCount": 0,
            "stars": 0,
            "private": False,
            "readOnly": False,
            "customData": "",
        }
        return _id(await self._get_or_create(f"v1/containers/{entity}/{collection}/{name}", "v1/containers", model))

    async def image_for_push(self, path: str, sha256_hex: str, container_id: str, *, arch: str) -> Image:
        """``GET v1/images/{path}:sha256.<hex>?arch=`` → 404 ⇒ ``POST v1/images``."""
        image_hash = f"sha256.{sha256_hex}"
        try:
            return Image.from_data(
                _data(await self.call("GET", f"v1/images/{path}:{image_hash}", query={"arch": arch}))
            )
        except NotFound:
            model = {
                "id": "",
                "hash": image_hash,
                "description": "",
                "container": container_id,
                "size": 0,
                "uploaded": False,
                "customData": "",
                "containerStars": 0,
                "containerDownloads": 0,
            }
            return Image.from_data(
                _data(await self.call("POST", "v1/images", body=_base_model() | model, accept=(200, 201)))
            )

    async def image(self, path: str, tag: str, *, arch: str) -> Image:
        return Image.from_data(_data(await self.call("GET", f"v1/images/{path}:{tag}", query={"arch": arch})))

    # -- multipart upload (v2) ----------------------------------------------------------------------------

    async def multipart_start(self, image_id: str, filesize: int) -> MultipartStart:
        data = _data(
            await self.call(
                "POST", f"v2/imagefile/{image_id}/_multipart", body={"filesize": filesize}, accept=(200, 201)
            )
        )
        upload_id, part_size, total = data.get("uploadID"), data.get("partSize"), data.get("totalParts")
        if not isinstance(upload_id, str) or not upload_id:
            raise ApiError(200, "multipart start reply has no uploadID")
        if type(part_size) is not int or part_size < 1 or type(total) is not int or total < 1:
            raise ApiError(200, "multipart start reply has no usable partSize/totalParts")
        options = data.get("options")
        flag = options.get("s3compliant", "") if isinstance(options, dict) else ""
        return MultipartStart(upload_id, part_size, total, flag in ("", "true"))

    async def presign_part(self, image_id: str, upload_id: str, *, number: int, size: int, sha256_hex: str) -> str:
        body = {"partSize": size, "uploadID": upload_id, "partNumber": number, "sha256sum": sha256_hex}
        data = _data(await self.call("PUT", f"v2/imagefile/{image_id}/_multipart", body=body, accept=(200, 204)))
        url = data.get("presignedURL")
        if not isinstance(url, str) or not url:
            raise ApiError(200, f"no presignedURL for part {number}")
        return url

    async def multipart_complete(self, image_id: str, upload_id: str, etags: Mapping[int, str]) -> str | None:
        """Completes; returns ``data.containerUrl`` when the server gives one."""
        parts = [{"partNumber": number, "token": etags[number]} for number in sorted(etags)]
        document = await self.call(
            "PUT",
            f"v2/imagefile/{image_id}/_multipart_complete",
            body={"uploadID": upload_id, "completedParts": parts},
            accept=(200, 204),
        )
        return _container_url(document)

    async def multipart_abort(self, image_id: str, upload_id: str) -> None:
        await self.call(
            "PUT", f"v2/imagefile/{image_id}/_multipart_abort", body={"uploadID": upload_id}, accept=(200, 204)
        )

    async def uploaded_parts(self, upload_id: str) -> Any:
        """The gateway's own listing of parts already in S3 (``GET /_gateway/uploads/{uploadID}/parts``)."""
        return await self.call("GET", f"_gateway/uploads/{quote(upload_id, safe='')}/parts")

    # -- legacy single upload (v2) and v1 raw upload -------------------------------------------------------

    async def legacy_start(self, image_id: str, *, filesize: int, sha256_hex: str, md5_hex: str | None) -> str:
        body: dict[str, Any] = {"filesize": filesize}
        if md5_hex:
            body["md5sum"] = md5_hex  # omitempty, as in the real client
        body["sha256sum"] = sha256_hex
        data = _data(await self.call("POST", f"v2/imagefile/{image_id}", body=body, accept=(200, 201)))
        url = data.get("uploadURL")
        if not isinstance(url, str) or not url:
            raise ApiError(200, "error getting presigned URL: reply has no uploadURL")
        return url

    async def legacy_complete(self, image_id: str) -> str | None:
        return _container_url(await self.call("PUT", f"v2/imagefile/{image_id}/_complete", body={}, accept=(200, 204)))

    # -- tags ---------------------------------------------------------------------------------------------

    async def set_tags(self, container_id: str, image_id: str, tags: list[str], *, arch: str, v2: bool) -> None:
        """``GET v1|v2/tags/{id}`` then one ``POST`` per tag (exactly 200 counts), as the real client does."""
        prefix = "v2" if v2 else "v1"
        await self.call("GET", f"{prefix}/tags/{container_id}")
        for tag in tags:
            body = {"Arch": arch, "Tag": tag, "ImageID": image_id} if v2 else {"Tag": tag, "ImageID": image_id}
            await self.call("POST", f"{prefix}/tags/{container_id}", body=body, accept=(200,))


def _container_url(document: Any) -> str | None:
    data = document.get("data") if isinstance(document, dict) else None
    url = data.get("containerUrl") if isinstance(data, dict) else None
    return url if isinstance(url, str) and url else None


DEFAULT_TIMEOUT: Final = aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=300)


@contextlib.asynccontextmanager
async def open_session(session: aiohttp.ClientSession | None, *, jobs: int) -> AsyncIterator[aiohttp.ClientSession]:
    """The caller's session, or a new one sized for ``jobs`` parallel transfers (closed afterwards)."""
    if session is not None:
        yield session
        return
    connector = aiohttp.TCPConnector(limit=max(2 * jobs, 8))
    async with aiohttp.ClientSession(connector=connector, timeout=DEFAULT_TIMEOUT) as own:
        yield own
