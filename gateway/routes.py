"""Thin aiohttp handlers and the dispatch that decides what the gateway answers itself.

Dispatch works on the raw path (never normalised, the way the upstream will see it): the upload routes of the
library API and ``/_gateway/`` are ours, everything else is forwarded.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any, Final
from urllib.parse import unquote

from aiohttp import web
from multidict import CIMultiDict

from .downloads import Downloads
from .errors import InvalidRequest, MethodNotAllowed, NotFound, NotReady, PayloadTooLarge, UpstreamUnavailable
from .logs import UPLOAD_FIELDS
from .proxy import Forwarder, ForwardingPolicy, expects_continue, send_continue
from .registry import json_or_none
from .service import UploadService
from .tokens import credential_of
from .uploads import LegacyStartRequest, check_image_id

__all__ = ["MAX_JSON_BODY", "Handlers", "data_response", "loggable_path", "route_class"]

log = logging.getLogger("gateway.routes")

MAX_JSON_BODY: Final = 1024 * 1024  # intercepted routes carry small JSON bodies
DISCOVERY_PATH: Final = "/assets/config/config.prod.json"

Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]
UploadHandler = Callable[[web.BaseRequest, str], Awaitable[Any]]


def data_response(data: Any, *, status: int = 200) -> web.Response:
    return web.json_response({"data": data}, status=status)


async def read_small_body(request: web.BaseRequest) -> bytes:
    if request.content_length is not None and request.content_length > MAX_JSON_BODY:
        raise PayloadTooLarge(f"request body above {MAX_JSON_BODY} bytes")
    if request.body_exists and expects_continue(request):
        await send_continue(request)
    # read(n) returns what has arrived so far, not n bytes: loop until the end of the body or past the cap.
    body = bytearray()
    while chunk := await request.content.read(MAX_JSON_BODY + 1 - len(body)):
        body += chunk
        if len(body) > MAX_JSON_BODY:
            raise PayloadTooLarge(f"request body above {MAX_JSON_BODY} bytes")
    return bytes(body)


def registry_headers(request: web.BaseRequest, policy: ForwardingPolicy) -> CIMultiDict[str]:
    """Headers for the gateway's own calls to the registry on behalf of a client: its credentials and identity.

    The client's X-Forwarded-For is believed only from a trusted proxy, as when forwarding (the registry's
    per-IP rate limits key on it)."""
    headers = CIMultiDict[str]()
    for name in ("Authorization", "User-Agent"):
        if name in request.headers:
            headers[name] = request.headers[name]
    peer = request.remote or ""
    prior = request.headers.get("X-Forwarded-For") if policy.trusts(peer) else None
    headers["X-Forwarded-For"] = f"{prior}, {peer}" if prior else peer
    return headers


class Handlers:
    def __init__(self, service: UploadService, forwarder: Forwarder) -> None:
        self.service = service
        self.forwarder = forwarder
        self.downloads = Downloads(service, forwarder)
        self._image_ids = re.compile(service.config.uploads.image_id_pattern)
        self._multipart_routes: dict[str, dict[str, UploadHandler]] = {
            "_multipart": {"POST": self.start, "PUT": self.presign_part},
            "_multipart_complete": {"PUT": self.complete},
            "_multipart_abort": {"PUT": self.abort},
        }

    async def dispatch(self, request: web.BaseRequest) -> web.StreamResponse:
        path = request.raw_path.partition("?")[0]
        if not path.startswith("/"):
            # Absolute-form targets (http://host/...) would be glued onto the upstream origin by the forwarder.
            raise InvalidRequest("request target must be a path starting with /")
        if path.startswith("/_gateway/"):
            return await self.gateway_route(request, path)
        segments = path.split("/")
        # ["", "v2", "imagefile", id, action?]
        if len(segments) in (4, 5) and segments[1] == "v2" and segments[2] == "imagefile":
            handler = self._upload_handler(request.method, segments)
            if handler is not None:
                return await self._logged(request, handler, unquote(segments[3]))
            if len(segments) == 5 and segments[4] == "_complete":
                # The legacy completion is the registry's, but an id it cannot parse is its 500 (a 502 here).
                check_image_id(unquote(segments[3]), self._image_ids)
        if _disguised_multipart_route(path):
            # The registry would route it to its own multipart views (its abort deletes the image row).
            raise InvalidRequest("ambiguous path: multipart routes must be written plainly")
        if path == DISCOVERY_PATH and request.method == "GET":
            return await self.discovery(request)
        if self.downloads.handles(request.method, path):
            return await self.downloads.answer(request, path)
        return await self.forwarder.forward(request)

    def _upload_handler(self, method: str, segments: list[str]) -> UploadHandler | None:
        if len(segments) == 4:
            return self.legacy_start if method == "POST" else None
        methods = self._multipart_routes.get(segments[4])
        if methods is None:
            return None
        handler = methods.get(method)
        if handler is None:
            # Multipart calls are never forwarded: sregistry's abort deletes the image row (G6).
            return self.method_not_allowed
        return handler

    async def _logged(self, request: web.BaseRequest, handler: UploadHandler, raw_id: str) -> web.StreamResponse:
        started = time.perf_counter()
        outcome = "error"
        fields: dict[str, object] = {}
        UPLOAD_FIELDS.set(fields)
        try:
            response: web.StreamResponse = await handler(request, check_image_id(raw_id, self._image_ids))
            outcome = str(response.status)
            return response
        finally:
            log.info(
                "upload route",
                extra={
                    "event": "route",
                    "route": request.raw_path.partition("?")[0].rsplit("/", 1)[-1],
                    "method": request.method,
                    "image_id": raw_id[:128],
                    "outcome": outcome,
                    "ms": round((time.perf_counter() - started) * 1000, 2),
                    **fields,
                },
            )

    # -- the library API's upload routes ----------------------------------------------------------------

    async def start(self, request: web.BaseRequest, image_id: str) -> web.Response:
        body = await read_small_body(request)
        if not self.service.config.uploads.multipart:
            # The client's clean fallback to the legacy single upload (PROTOCOL.md §4).
            raise NotFound("multipart uploads are disabled on this gateway")
        answer = await self.service.start(
            image_id, body, headers=registry_headers(request, self.forwarder.policy), credential=_credential(request)
        )
        return data_response(answer)

    async def presign_part(self, request: web.BaseRequest, image_id: str) -> web.Response:
        body = await read_small_body(request)
        return data_response(self.service.presign_part(image_id, body, credential=_credential(request)))

    async def complete(self, request: web.BaseRequest, image_id: str) -> web.Response:
        body = await read_small_body(request)
        answer = await self.service.complete(
            image_id, body, headers=registry_headers(request, self.forwarder.policy), credential=_credential(request)
        )
        return web.json_response(answer)

    async def abort(self, request: web.BaseRequest, image_id: str) -> web.Response:
        body = await read_small_body(request)
        return web.json_response(await self.service.abort(image_id, body, credential=_credential(request)))

    async def method_not_allowed(self, request: web.BaseRequest, image_id: str) -> web.Response:
        raise MethodNotAllowed(f"{request.method} is not allowed here")

    async def legacy_start(self, request: web.BaseRequest, image_id: str) -> web.Response:
        body = await read_small_body(request)
        legacy = LegacyStartRequest.parse(body)  # sregistry answers malformed JSON with a 500 page (G4)
        headers = registry_headers(request, self.forwarder.policy)
        answer = await self.service.registry.call("POST", request.raw_path, headers=headers, body=body)
        data = answer.json.get("data") if isinstance(answer.json, dict) else None
        if 200 <= answer.status < 300 and isinstance(data, dict) and isinstance(data.get("uploadURL"), str):
            data["uploadURL"] = self.service.rewrite_upload_url(legacy, data["uploadURL"])
            return web.json_response(answer.json, status=answer.status)
        return _passthrough(answer.status, answer.body, answer.json)

    # -- endpoint discovery ------------------------------------------------------------------------------

    async def discovery(self, request: web.BaseRequest) -> web.Response:
        answer = await self.forwarder.fetch(request, request.raw_path)
        document = json_or_none(answer.body)  # parsed whatever its Content-Type (sregistry: text/html, G5)
        if answer.status != 200 or not isinstance(document, dict):
            return _passthrough(answer.status, answer.body, document)
        library = document.get("libraryAPI")
        own_uri = library.get("uri") if isinstance(library, dict) else None
        for section in ("libraryAPI", "keystoreAPI", "tokenAPI"):
            entry = document.get(section)
            uri = entry.get("uri") if isinstance(entry, dict) else None
            if (
                isinstance(entry, dict)
                and isinstance(uri, str)
                and (uri == own_uri or self.service.points_at_upstream(uri))
            ):
                entry["uri"] = self.service.public_url
        return web.json_response(document)

    # -- the gateway's own prefix ------------------------------------------------------------------------

    async def gateway_route(self, request: web.BaseRequest, path: str) -> web.StreamResponse:
        if path == "/_gateway/healthz" and request.method in ("GET", "HEAD"):
            return web.json_response({"status": "ok"})
        if path == "/_gateway/readyz" and request.method in ("GET", "HEAD"):
            reason = await self.service.readiness()
            if reason is not None:
                raise NotReady(reason)
            return web.json_response({"status": "ready"})
        if path == "/_gateway/metrics" and request.method == "GET":
            return web.Response(
                text=self.service.metrics.render(),
                content_type="text/plain",
                charset="utf-8",
                headers={"X-Content-Type-Options": "nosniff"},
            )
        segments = path.split("/")  # ["", "_gateway", "uploads", token, "parts"]
        if len(segments) == 5 and segments[2] == "uploads" and segments[4] == "parts" and request.method == "GET":
            parts = await self.service.uploaded_parts(unquote(segments[3]), credential=_credential(request))
            return data_response({"parts": parts})
        raise NotFound(f"no such gateway route: {path}")


_UPLOAD_ROUTE_CLASSES: Final = {
    ("POST", "_multipart"): "upload-start",
    ("PUT", "_multipart"): "upload-part",
    ("PUT", "_multipart_complete"): "upload-complete",
    ("PUT", "_multipart_abort"): "upload-abort",
}


def route_class(method: str, raw_path: str) -> str:
    """A small, bounded label for metrics: which kind of route answered."""
    path = raw_path.partition("?")[0]
    if path.startswith("/_gateway/"):
        return "gateway"
    segments = path.split("/")
    if len(segments) == 5 and segments[1] == "v2" and segments[2] == "imagefile":
        return _UPLOAD_ROUTE_CLASSES.get((method, segments[4]), "proxy")
    if len(segments) == 4 and segments[1] == "v2" and segments[2] == "imagefile" and method == "POST":
        return "legacy-start"
    if path.startswith("/v1/imagefile/"):
        return "download"
    if path == DISCOVERY_PATH:
        return "discovery"
    return "proxy"


def _disguised_multipart_route(raw_path: str) -> bool:
    """A path that is not written as a multipart route but that a registry could decode and normalise into one
    (``%5Fmultipart_abort``, ``//v2/...``, ``/x/../``, a trailing slash): never forwarded."""
    if "%" not in raw_path and "_multipart" not in raw_path:
        return False  # nothing decodes into a multipart route: the common case, without the work below
    segments: list[str] = []
    for segment in unquote(raw_path).split("/"):
        if segment in ("", "."):
            continue
        if segment == "..":
            if segments:
                segments.pop()
            continue
        segments.append(segment)
    return len(segments) == 4 and segments[:2] == ["v2", "imagefile"] and segments[3].startswith("_multipart")


def loggable_path(raw_path: str) -> str:
    """The path without its query (presigned URLs and tokens never reach a log) and with upload tokens elided."""
    path = raw_path.partition("?")[0]
    if path.startswith("/_gateway/uploads/"):
        return "/_gateway/uploads/…/parts"
    return path[:512]


def _credential(request: web.BaseRequest) -> str:
    return credential_of(request.headers.get("Authorization"))


def _passthrough(status: int, body: bytes, document: Any) -> web.Response:
    """Pass the registry's answer on; a refusal without the library error shape gets one (empty 403s)."""
    if status >= 500:
        raise UpstreamUnavailable(f"registry failed ({status})")
    if status >= 400 and not (isinstance(document, dict) and isinstance(document.get("error"), dict)):
        message = f"registry answered {status}"
        return web.json_response({"error": {"code": status, "message": message}}, status=status)
    return web.Response(status=status, body=body, content_type="application/json")
