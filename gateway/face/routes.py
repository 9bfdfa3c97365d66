"""Thin aiohttp handlers, and the dispatch from a request's route (gateway/core/route_table.py) to the one that answers.

``/_gateway/`` and every path the registry could route to one of its ``v2/imagefile`` views are ours (answered,
or refused unless written plainly; only the legacy ``_complete`` is forwarded), everything else is forwarded.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import unquote

import orjson
from aiohttp import web
from multidict import CIMultiDict

from ..core.bodies import LegacyStartRequest, check_image_id
from ..core.config import Config
from ..core.errors import (
    InvalidRequest,
    MethodNotAllowed,
    NotFound,
    NotReady,
    PayloadTooLarge,
    UpstreamRefused,
    UpstreamUnavailable,
)
from ..core.route_table import Route
from ..core.tokens import credential_of
from ..edges.forwarder import Forwarder, ForwardingPolicy, expects_continue, send_continue
from ..edges.registry_client import RegistryClient
from ..edges.s3 import S3Client
from ..ops.metrics import Metrics
from .downloads import Downloads
from .legacy_upload import LegacyUpload
from .locations import LocationPolicy
from .readiness import Readiness
from .uploads import UploadSteps

__all__ = ["MAX_JSON_BODY", "Router", "data_response"]


MAX_JSON_BODY: Final = 1024 * 1024  # intercepted routes carry small JSON bodies
_TOO_LARGE: Final = f"request body above {MAX_JSON_BODY} bytes"
# Headers of an answer that no longer fit once its body is rewritten (hop-by-hop ones are gone already).
_REWRITTEN_BODY_HEADERS: Final = frozenset(
    {"content-length", "content-type", "content-encoding", "transfer-encoding", "etag", "content-md5", "digest"}
)

UploadHandler = Callable[[web.BaseRequest, str], Awaitable[web.StreamResponse]]


def data_response(data: Any, *, status: int = 200) -> web.Response:
    """``{"data": ...}`` as web.json_response sends it, encoded by orjson (a tenth of the stdlib's cost)."""
    return web.Response(
        body=orjson.dumps({"data": data}), status=status, content_type="application/json", charset="utf-8"
    )


async def read_small_body(request: web.BaseRequest) -> bytes:
    content_length = request.content_length
    if content_length is not None and content_length > MAX_JSON_BODY:
        raise PayloadTooLarge(_TOO_LARGE)
    if request.body_exists and expects_continue(request):
        await send_continue(request)
    content = request.content
    if content.is_eof():  # the whole body is here already (a small one usually comes with the head): take it
        whole = content.read_nowait()
        if len(whole) > MAX_JSON_BODY:
            raise PayloadTooLarge(_TOO_LARGE)
        return whole
    # read(n) returns what has arrived so far, not n bytes: loop until the end of the body or past the cap.
    body = bytearray()
    while chunk := await content.read(MAX_JSON_BODY + 1 - len(body)):
        body += chunk
        if len(body) > MAX_JSON_BODY:
            raise PayloadTooLarge(_TOO_LARGE)
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
    # The chain Forwarder.request_head sends: every X-Forwarded-For line a trusted proxy sent, then the peer.
    prior = request.headers.getall("X-Forwarded-For", ()) if policy.trusts(peer) else ()
    headers["X-Forwarded-For"] = ", ".join([*prior, peer])
    return headers


@dataclass(eq=False, kw_only=True)
class Router:
    """Dispatch from the route's name (core/route_table) to the thin handlers below."""

    config: Config
    uploads: UploadSteps  # the multipart upload steps
    legacy: LegacyUpload
    locations: LocationPolicy
    readiness: Readiness
    registry: RegistryClient
    s3: S3Client
    metrics: Metrics
    forwarder: Forwarder

    def __post_init__(self) -> None:
        self.downloads = Downloads(
            self.config.downloads, locations=self.locations, s3=self.s3, forwarder=self.forwarder
        )
        self._image_ids = re.compile(self.config.uploads.image_id_pattern)
        # The upload routes of the route table, each with its handler.
        self._upload_handlers: dict[str, UploadHandler] = {
            "legacy-start": self.legacy_start,
            "legacy-complete": self.legacy_complete,
            "upload-start": self.start,
            "upload-part": self.presign_part,
            "upload-complete": self.complete,
            "upload-abort": self.abort,
        }

    async def dispatch(self, request: web.BaseRequest, route: Route) -> web.StreamResponse:
        name = route.name
        if name in self._upload_handlers:
            return await self._upload_handlers[name](request, check_image_id(route.image_id, self._image_ids))
        if name == "proxy":
            return await self.forwarder.forward(request)
        if name == "download":
            # The only route whose redirect into S3 the gateway re-signs (and answers 303 in 303 mode): GET and HEAD.
            return await self.forwarder.forward(request, rewrite_location=self.locations.download_location)
        if name == "image":
            return await (self.downloads.image(request) if self.downloads.enabled else self.forwarder.forward(request))
        if name == "gateway":
            return await self.gateway_route(request, route.path)
        if name == "discovery":
            return await self.discovery(request)
        if name == "oci-redirect":
            # The v1.4.x clients' preflight (docs/protocol.md §3, step 0): any 200 switches them to OCI push and pull
            # against the URL in the reply, around the gateway. A library behind it is never an OCI registry.
            raise NotFound("no OCI registry behind this library")
        if route.image_id:  # an upload route with another method: its id is checked first
            return await self.method_not_allowed(request, check_image_id(route.image_id, self._image_ids))
        raise InvalidRequest(route.refusal)

    # -- the library API's upload routes ----------------------------------------------------------------

    async def start(self, request: web.BaseRequest, image_id: str) -> web.Response:
        body = await read_small_body(request)
        if not self.config.uploads.multipart:
            # The client's clean fallback to the legacy single upload (docs/protocol.md §4).
            raise NotFound("multipart uploads are disabled on this gateway")
        answer = await self.uploads.start(
            image_id, body, headers=registry_headers(request, self.forwarder.policy), credential=_credential(request)
        )
        return data_response(answer)

    async def presign_part(self, request: web.BaseRequest, image_id: str) -> web.Response:
        body = await read_small_body(request)
        return data_response(self.uploads.presign_part(image_id, body, credential=_credential(request)))

    async def complete(self, request: web.BaseRequest, image_id: str) -> web.Response:
        body = await read_small_body(request)
        answer = await self.uploads.complete(
            image_id, body, headers=registry_headers(request, self.forwarder.policy), credential=_credential(request)
        )
        return web.json_response(answer)

    async def abort(self, request: web.BaseRequest, image_id: str) -> web.Response:
        body = await read_small_body(request)
        return web.json_response(await self.uploads.abort(image_id, body, credential=_credential(request)))

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
        answer = await self.registry.call("POST", request.raw_path, headers=headers, body=body)
        data = answer.json.get("data") if isinstance(answer.json, dict) else None
        if 200 <= answer.status < 300 and isinstance(data, dict) and isinstance(data.get("uploadURL"), str):
            data["uploadURL"] = self.legacy.rewrite_upload_url(legacy, data["uploadURL"])
            return web.json_response(answer.json, status=answer.status)
        return _passthrough(answer.status, answer.body, answer.json)

    # -- endpoint discovery ------------------------------------------------------------------------------

    async def discovery(self, request: web.BaseRequest) -> web.Response:
        answer = await self.forwarder.fetch(request, request.raw_path)
        document = answer.json
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
                and (uri == own_uri or self.locations.points_at_upstream(uri))
            ):
                entry[key] = self.locations.public_url
        # The registry's own headers (X-Frame-Options, Referrer-Policy...) stay; those describing the old body go.
        headers = CIMultiDict((k, v) for k, v in answer.headers.items() if k.lower() not in _REWRITTEN_BODY_HEADERS)
        return web.json_response(document, headers=headers)

    # -- the gateway's own prefix ------------------------------------------------------------------------

    async def gateway_route(self, request: web.BaseRequest, path: str) -> web.StreamResponse:
        if path == "/_gateway/healthz" and request.method in ("GET", "HEAD"):
            return web.json_response({"status": "ok"})
        if path == "/_gateway/readyz" and request.method in ("GET", "HEAD"):
            reason = await self.readiness.not_ready_reason()
            if reason is not None:
                raise NotReady(reason)
            return web.json_response({"status": "ready"})
        if path == "/_gateway/metrics" and request.method == "GET":
            return web.Response(
                text=self.metrics.render(),
                content_type="text/plain",
                charset="utf-8",
                headers={"X-Content-Type-Options": "nosniff"},
            )
        segments = path.split("/")  # ["", "_gateway", "uploads", token, "parts"]
        if len(segments) == 5 and segments[2] == "uploads" and segments[4] == "parts" and request.method == "GET":
            parts = await self.uploads.uploaded_parts(unquote(segments[3]), credential=_credential(request))
            return data_response({"parts": parts})
        raise NotFound(f"no such gateway route: {path}")


def _credential(request: web.BaseRequest) -> str:
    return credential_of(request.headers.get("Authorization"))


def _passthrough(status: int, body: bytes, document: Any) -> web.Response:
    """Pass the registry's answer on; a refusal without the library error shape gets one (empty 403s)."""
    if status >= 500:
        raise UpstreamUnavailable(f"registry failed ({status})")
    if status >= 400 and not (isinstance(document, dict) and isinstance(document.get("error"), dict)):
        raise UpstreamRefused(f"registry answered {status}", status=status)
    return web.Response(status=status, body=body, content_type="application/json")
