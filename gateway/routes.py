"""Thin aiohttp handlers and the dispatch that decides what the gateway answers itself.

Dispatch works on the raw path (never normalised, the way the upstream will see it): ``/_gateway/`` and every
path the registry could route to one of its ``v2/imagefile`` views are ours (answered, or refused unless written
plainly; only the legacy ``_complete`` is forwarded), everything else is forwarded.
"""

from __future__ import annotations

import re
import time
from collections.abc import Awaitable, Callable
from typing import Any, Final
from urllib.parse import unquote

import orjson
from aiohttp import web
from multidict import CIMultiDict

from .downloads import Downloads
from .errors import InvalidRequest, MethodNotAllowed, NotFound, NotReady, PayloadTooLarge, UpstreamUnavailable
from .logs import ROUTE_LOG, UPLOAD_FIELDS
from .proxy import Forwarder, ForwardingPolicy, expects_continue, send_continue
from .registry import json_or_none
from .service import UploadService
from .tokens import credential_of
from .uploads import LegacyStartRequest, check_image_id

__all__ = ["MAX_JSON_BODY", "Handlers", "data_response", "loggable_path", "route_class"]


MAX_JSON_BODY: Final = 1024 * 1024  # intercepted routes carry small JSON bodies
DISCOVERY_PATH: Final = "/assets/config/config.prod.json"
# Headers of an answer that no longer fit once its body is rewritten (hop-by-hop ones are gone already).
_REWRITTEN_BODY_HEADERS: Final = frozenset(
    {"content-length", "content-type", "content-encoding", "transfer-encoding", "etag", "content-md5", "digest"}
)
OCI_REDIRECT_PATH: Final = "/v1/oci-redirect"

Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]
UploadHandler = Callable[[web.BaseRequest, str], Awaitable[Any]]


def data_response(data: Any, *, status: int = 200) -> web.Response:
    """``{"data": ...}`` as web.json_response sends it, encoded by orjson (a tenth of the stdlib's cost)."""
    return web.Response(
        body=orjson.dumps({"data": data}), status=status, content_type="application/json", charset="utf-8"
    )


async def read_small_body(request: web.BaseRequest) -> bytes:
    content_length = request.content_length
    if content_length is not None and content_length > MAX_JSON_BODY:
        raise PayloadTooLarge(f"request body above {MAX_JSON_BODY} bytes")
    if request.body_exists and expects_continue(request):
        await send_continue(request)
    content = request.content
    if content.is_eof():  # the whole body is here already (a small one usually comes with the head): take it
        whole = content.read_nowait()
        if len(whole) > MAX_JSON_BODY:
            raise PayloadTooLarge(f"request body above {MAX_JSON_BODY} bytes")
        return whole
    # read(n) returns what has arrived so far, not n bytes: loop until the end of the body or past the cap.
    body = bytearray()
    while chunk := await content.read(MAX_JSON_BODY + 1 - len(body)):
        body += chunk
        if len(body) > MAX_JSON_BODY:
            raise PayloadTooLarge(f"request body above {MAX_JSON_BODY} bytes")
    return bytes(body)


def registry_headers(request: web.BaseRequest, policy: ForwardingPolicy) -> CIMultiDict[str]:
    """Headers for the gateway's own calls to the registry on behalf of a client: its credentials and identity.

    The client's X-Forwarded-For is believed only from a trusted proxy, as when forwarding. sregistry's DRF
    throttles key on it; its django-ratelimit limits key on REMOTE_ADDR only (the gateway), so they count every
    client together whatever this says (docs/deploy.md)."""
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
        # Every v2/imagefile shape the gateway lets through, by its last segment ("": the legacy start).
        self._imagefile_routes: dict[str, dict[str, UploadHandler]] = {
            "": {"POST": self.legacy_start},
            "_complete": {"PUT": self.legacy_complete},
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
        if _under_imagefile(path):
            return await self.imagefile_route(request, path)
        if path == OCI_REDIRECT_PATH:
            # The v1.4.x clients' preflight (docs/protocol.md §3, step 0): any 200 switches them to OCI push and pull
            # against the URL in the reply, around the gateway. A library behind it is never an OCI registry.
            raise NotFound("no OCI registry behind this library")
        if path == DISCOVERY_PATH and request.method == "GET":
            return await self.discovery(request)
        if self.downloads.handles(request.method, path):
            return await self.downloads.answer(request, path)
        return await self.forwarder.forward(request)

    async def imagefile_route(self, request: web.BaseRequest, path: str) -> web.StreamResponse:
        """Every path the registry could route to one of its ``v2/imagefile`` views is answered or refused here:
        only the plain shapes of the library API pass, and of those only the legacy completion is forwarded."""
        shape = _imagefile_shape(path)
        methods = None if shape is None else self._imagefile_routes.get(shape[1])
        if shape is None or methods is None:
            # sregistry's own multipart views would answer it (near misses such as _multipar, extra segments,
            # encoded or dotted spellings): its part URLs are unbound and its abort deletes the image row (G6).
            raise InvalidRequest("not an upload route of the library API: v2/imagefile/{id}[/_multipart...]")
        handler = methods.get(request.method, self.method_not_allowed)
        return await self._logged(request, handler, shape[0])

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
            if ROUTE_LOG.enabled():
                ROUTE_LOG.write(
                    {
                        "event": "route",
                        "route": route_class(request.method, request.raw_path),
                        "method": request.method,
                        "image_id": raw_id[:128],
                        "outcome": outcome,
                        "ms": round((time.perf_counter() - started) * 1000, 2),
                        **fields,
                    }
                )

    # -- the library API's upload routes ----------------------------------------------------------------

    async def start(self, request: web.BaseRequest, image_id: str) -> web.Response:
        body = await read_small_body(request)
        if not self.service.config.uploads.multipart:
            # The client's clean fallback to the legacy single upload (docs/protocol.md §4).
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

    async def legacy_complete(self, request: web.BaseRequest, image_id: str) -> web.StreamResponse:
        # The registry's own (sregistry: no token needed); the id was checked, as sregistry fails on one it
        # cannot parse.
        return await self.forwarder.forward(request)

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
        # The URIs naming the registry itself (its DOMAIN_NAME, or upstream.url) now name the gateway.
        for section, key in (("libraryAPI", "uri"), ("keystoreAPI", "uri"), ("tokenAPI", "uri"), ("auth", "issuer")):
            entry = document.get(section)
            uri = entry.get(key) if isinstance(entry, dict) else None
            if (
                isinstance(entry, dict)
                and isinstance(uri, str)
                and (uri == own_uri or self.service.points_at_upstream(uri))
            ):
                entry[key] = self.service.public_url
        # The registry's own headers (X-Frame-Options, Referrer-Policy...) stay; those describing the old body go.
        headers = CIMultiDict((k, v) for k, v in answer.headers.items() if k.lower() not in _REWRITTEN_BODY_HEADERS)
        return web.json_response(document, headers=headers)

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
    ("POST", ""): "legacy-start",
    ("PUT", "_complete"): "legacy-complete",
}


def route_class(method: str, raw_path: str) -> str:
    """A small, bounded label for metrics and logs: which kind of route answered."""
    path = raw_path.partition("?")[0]
    if path.startswith("/_gateway/"):
        return "gateway"
    if _under_imagefile(path):
        shape = _imagefile_shape(path)
        return "refused" if shape is None else _UPLOAD_ROUTE_CLASSES.get((method, shape[1]), "refused")
    if path.startswith("/v1/imagefile/"):
        return "download"
    if path == DISCOVERY_PATH:
        return "discovery"
    if path == OCI_REDIRECT_PATH:
        return "oci-redirect"
    return "proxy"


def _under_imagefile(raw_path: str) -> bool:
    """Whether the registry could route the path to one of its ``v2/imagefile`` views.

    sregistry's patterns (shub/apps/library/urls.py) are ``^v2/imagefile/(?P<id>.+?)/_complete?$``,
    ``…/_multipart?$``, ``…/_multipart_abort?$``, ``…/_multipart_complete?$`` and ``^v2/imagefile/(?P<id>.+?)/?$``,
    matched against the percent-decoded path: ``.+?`` spans slashes, ``?`` makes the last letter optional, and
    the last pattern takes whatever the others leave. So every path under ``v2/imagefile/`` reaches one of its
    upload views, and the gateway owns them all. The decoded, dot-normalised form also catches spellings that a
    registry or a proxy in front of it may normalise (``%5F``, ``%2F``, ``//``, ``/x/../``)."""
    if raw_path == "/v2/imagefile" or raw_path.startswith("/v2/imagefile/"):
        return True
    if "%" not in raw_path and "//" not in raw_path and "/." not in raw_path:
        return False  # nothing to decode or normalise: the common case, without the work below
    segments: list[str] = []
    for segment in unquote(raw_path).split("/"):
        if segment in ("", "."):
            continue
        if segment == "..":
            if segments:
                segments.pop()
            continue
        segments.append(segment)
    return segments[:2] == ["v2", "imagefile"]


def _imagefile_shape(raw_path: str) -> tuple[str, str] | None:
    """``(image id, last segment or "")`` of ``/v2/imagefile/{id}`` or ``/v2/imagefile/{id}/{action}`` written
    plainly; None for any other spelling. The id is checked later against the image id pattern, whose safe set
    has no ``%``, so an encoded id never passes."""
    segments = raw_path.split("/")  # ["", "v2", "imagefile", id, action?]
    if segments[:3] != ["", "v2", "imagefile"] or len(segments) not in (4, 5):
        return None
    if len(segments) == 4:
        return segments[3], ""
    # A trailing slash (v2/imagefile/{id}/) is sregistry's legacy start too, but no client sends it: refused.
    return (segments[3], segments[4]) if segments[4] else None


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
