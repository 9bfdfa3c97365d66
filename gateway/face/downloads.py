"""Parallel pulls for every client (``downloads.redirect_status = "303"``, the default).

Apptainer 1.0.0–1.0.2 (library client v1.2.2) pulls in parallel only after a **303** from ``GET v1/imagefile/…``
and fails on sregistry's 302; later clients follow a 302 in a single stream, and on a 303 take the image size from
``GET v1/images/…`` (it must be > 0) before their ranged GETs, while sregistry leaves it null (docs/protocol.md
§7.1). So the gateway answers a download redirect into its S3 with 303 (the Location re-signed for the external
S3 endpoint when the registry signed it) and fills in a missing ``size`` from S3.

Where the object is: the gateway asks the registry itself, with the client's own credentials, for the image's
download redirect and reads bucket and key from its Location. That is the registry's own answer for exactly this
image, tag and caller, whatever its bucket, key layout or visibility rules, instead of a guess from the image JSON
(sregistry's key scheme and bucket are its own business). It costs one more registry call and one S3 HeadObject
per image lookup whose size is missing. Where the size cannot be learned (the registry or S3 failing, no object
behind a tagged image) the lookup is answered 502/503/504 with the reason, never passed on with the 0.
"""

from __future__ import annotations

import json
import logging
from typing import Any
from urllib.parse import unquote

from aiohttp import web

from ..core.config import DownloadsConfig
from ..core.errors import GatewayError, StorageUnavailable, UpstreamUnavailable
from ..core.route_table import IMAGE_PREFIX, IMAGEFILE_PREFIX
from ..edges.forwarder import REDIRECT_STATUSES, Forwarder
from ..edges.registry_answer import RegistryAnswer
from ..edges.s3 import S3Client, S3Error
from .locations import LocationPolicy

__all__ = ["Downloads"]

log = logging.getLogger("gateway.downloads")


class Downloads:
    def __init__(
        self, config: DownloadsConfig, *, locations: LocationPolicy, s3: S3Client, forwarder: Forwarder
    ) -> None:
        self.locations = locations
        self.s3 = s3
        self.forwarder = forwarder
        self.enabled = config.redirect_status == "303"

    async def image(self, request: web.BaseRequest) -> web.StreamResponse:
        """The image JSON, with ``size`` filled in from S3 where the registry left it missing, null or 0."""
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
        """The size of the object the registry's download redirect for this image points at in our S3.

        None where there is nothing of ours to size, and the registry's answer goes out as it is: a download that
        is not a redirect into our S3 (it keeps its status, so no client reads ``size`` for it), or a
        ``…:sha256.<hex>`` image with no object yet (every push asks for one before it uploads; sregistry answers
        with a new, empty row). Raises a 502/503/504 GatewayError where the size exists but cannot be learned, or
        a tagged image has no object: v1.4.x clients would fail on the 0 with a less clear message.
        """
        image_path = request.raw_path[len(IMAGE_PREFIX) :]
        try:
            redirect = await self.forwarder.fetch(request, IMAGEFILE_PREFIX + image_path, rewrite_location=False)
        except GatewayError as exc:
            message = f"image size unknown: asking the registry for its download failed: {exc.message}"
            raise type(exc)(message, status=exc.status) from exc
        if redirect.status >= 500:
            raise UpstreamUnavailable(f"image size unknown: the registry answered its download with {redirect.status}")
        location = redirect.headers.get("Location") if redirect.status in REDIRECT_STATUSES else None
        # Only an object the registry granted this caller (the same test as re-signing its redirect).
        target = self.locations.justified_download(location) if location else None
        if target is None:
            return None
        try:
            info = await self.s3.head_object(target.bucket, target.key)
        except S3Error as exc:
            log.warning("image size: S3 HeadObject failed: %s", exc)
            raise StorageUnavailable(f"image size unknown: S3 HeadObject failed: {exc}; retry") from exc
        if info is not None and info.size > 0:
            return info.size
        if _pushes_ask_for_it(image_path):
            return None
        raise UpstreamUnavailable(
            f"image size unknown: the registry's download for this image, s3://{target.bucket}/{target.key}, "
            + ("is empty" if info is not None else "is not in S3")
        )


def _pushes_ask_for_it(image_path: str) -> bool:
    """``e/c/n:sha256.<hex>?arch=…``: the reference every push looks up before its upload."""
    reference = unquote(image_path.partition("?")[0])
    return reference.rpartition(":")[2].startswith("sha256.")


def _json_object(reply: RegistryAnswer) -> dict[str, Any] | None:
    if "Content-Encoding" in reply.headers:
        return None
    return reply.json if isinstance(reply.json, dict) else None


def _passthrough(reply: RegistryAnswer, body: bytes) -> web.Response:
    headers = reply.headers.copy()
    headers.popall("Content-Length", None)
    return web.Response(status=reply.status, reason=reply.reason or None, headers=headers, body=body)
