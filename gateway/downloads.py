"""Pull compatibility beyond sregistry (``downloads.redirect_status = "303"``).

Apptainer 1.0.0–1.0.2 (library client v1.2.2) pulls in parallel only after a **303** from ``GET v1/imagefile/…``
and fails on sregistry's 302; later clients take the image size from ``GET v1/images/…`` (it must be > 0) before
their ranged GETs, and sregistry leaves it null (docs/protocol.md §7). With 303 on, the gateway answers the download
redirect with 303 (the Location re-signed for the external S3 endpoint when the registry signed it) and fills in
a missing ``size`` from S3.

Where the object is: the gateway asks the registry itself, with the client's own credentials, for the image's
download redirect and reads bucket and key from its Location. That is the registry's own answer for exactly this
image, tag and caller, whatever its bucket, key layout or visibility rules, instead of a guess from the image JSON
(sregistry's key scheme and bucket are its own business). It costs one more registry call per image lookup whose
size is missing; a failure there leaves the size as the registry sent it.
"""

from __future__ import annotations

import json
import logging
from typing import Any, Final

from aiohttp import web

from .config import DownloadsConfig
from .errors import GatewayError
from .locations import LocationPolicy
from .proxy import Forwarder, UpstreamReply
from .s3 import S3Client, S3Error

__all__ = ["IMAGE_PREFIX", "IMAGEFILE_PREFIX", "Downloads"]

log = logging.getLogger("gateway.downloads")

IMAGE_PREFIX: Final = "/v1/images/"
IMAGEFILE_PREFIX: Final = "/v1/imagefile/"
REDIRECTS: Final = frozenset({301, 302, 307, 308})


class Downloads:
    def __init__(
        self, config: DownloadsConfig, *, locations: LocationPolicy, s3: S3Client, forwarder: Forwarder
    ) -> None:
        self.locations = locations
        self.s3 = s3
        self.forwarder = forwarder
        self.enabled = config.redirect_status == "303"

    def handles(self, method: str, path: str) -> bool:
        return self.enabled and method == "GET" and path.startswith((IMAGEFILE_PREFIX, IMAGE_PREFIX))

    async def answer(self, request: web.BaseRequest, path: str) -> web.StreamResponse:
        if path.startswith(IMAGEFILE_PREFIX):
            return await self.forwarder.forward(
                request, redirect_status=303, rewrite_location=self.locations.download_location
            )
        return await self.image(request)

    async def image(self, request: web.BaseRequest) -> web.StreamResponse:
        """The image JSON, with ``size`` filled in from S3 where the registry left it empty."""
        reply = await self.forwarder.fetch(request, request.raw_path)
        document = _json_object(reply) if reply.status == 200 else None
        data = document.get("data") if document is not None else None
        if document is None or not isinstance(data, dict) or data.get("size") not in (None, 0):
            return _passthrough(reply, reply.body)
        size = await self.object_size(request)
        if size is None:
            return _passthrough(reply, reply.body)
        data["size"] = size
        return _passthrough(reply, json.dumps(document, separators=(",", ":")).encode())

    async def object_size(self, request: web.BaseRequest) -> int | None:
        """The size of the object the registry's download redirect for this image points at, if it is in our S3."""
        imagefile = IMAGEFILE_PREFIX + request.raw_path[len(IMAGE_PREFIX) :]
        try:
            redirect = await self.forwarder.fetch(request, imagefile, rewrite_location=False)
        except GatewayError as exc:
            log.warning("image size: registry redirect failed: %s", exc.message)
            return None
        location = redirect.headers.get("Location") if redirect.status in REDIRECTS else None
        # Only an object the registry granted this caller (the same test as re-signing its redirect).
        target = self.locations.justified_download(location) if location else None
        if target is None:
            return None
        try:
            info = await self.s3.head_object(target.bucket, target.key)
        except S3Error as exc:
            log.warning("image size: S3 HeadObject failed: %s", exc)
            return None
        return info.size if info is not None and info.size > 0 else None


def _json_object(reply: UpstreamReply) -> dict[str, Any] | None:
    if "Content-Encoding" in reply.headers:
        return None
    try:
        document = json.loads(reply.body)
    except (ValueError, UnicodeDecodeError):
        return None
    return document if isinstance(document, dict) else None


def _passthrough(reply: UpstreamReply, body: bytes) -> web.Response:
    headers = reply.headers.copy()
    headers.popall("Content-Length", None)
    return web.Response(status=reply.status, reason=reply.reason or None, headers=headers, body=body)
