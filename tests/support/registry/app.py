"""Wiring: sregistry's URL table (Django regexes, first match wins), Django/DRF method handling, the app."""

from __future__ import annotations

import re
import shutil
import tempfile
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from aiohttp import web

from . import views, webui
from .context import REGISTRY, REQUEST_LOG, STATE, Registry
from .objectstore import LocalFiles, S3Bucket
from .replies import (
    DjangoError,
    HeadWithBodyResponse,
    PageNotFound,
    RateLimited,
    drf_empty,
    drf_json,
    method_not_allowed,
)
from .settings import Flavour, RegistrySettings
from .state import RegistryState
from .wire import FAKE_PREFIX, WireState, make_wire_middleware

__all__ = ["make_registry_app", "reconfigure"]

# Settings read on every request, so they may change while the app runs (e.g. a URL known only after binding).
RECONFIGURABLE = frozenset(
    {
        "domain_name",
        "public_url",
        "report_image_size",
        "close_after_unread_body",
        "minio_cleanup",
        "oci_redirect_url",
    }
)

View = Callable[..., Awaitable[web.StreamResponse]]
BOTH: frozenset[Flavour] = frozenset({"s3", "selfhosted"})


@dataclass(frozen=True, slots=True)
class Route:
    name: str
    pattern: re.Pattern[str]
    methods: Mapping[str, View]
    rate_limited: frozenset[str] = frozenset()  # RatelimitMixin.ratelimit_method
    drf: bool = True  # an APIView: 405 as JSON, an Allow header; else a plain Django function view
    flavours: frozenset[Flavour] = BOTH

    @property
    def allow(self) -> str:
        methods = list(self.methods)
        if "GET" in self.methods:
            methods.append("HEAD")
        return ", ".join([*methods, "OPTIONS"])


def route(
    name: str,
    pattern: str,
    methods: Mapping[str, View],
    *,
    rate_limited: tuple[str, ...] = (),
    drf: bool = True,
    flavours: frozenset[Flavour] = BOTH,
) -> Route:
    return Route(name, re.compile(pattern), methods, frozenset(rate_limited), drf, flavours)


# shub/apps/library/urls.py (plus the version and config routes and the selfhosted storage routes), in order.
ROUTES: tuple[Route, ...] = (
    route("VersionView", r"^version/?$", {"GET": views.version}),
    route("config_prod_json", r"^assets/config/config\.prod\.json$", {"GET": views.config_prod_json}, drf=False),
    route(
        "PushImageView",
        r"^v1/images/(?P<username>.+?)/(?P<collection>.+?)/(?P<name>.+?):sha256[.](?P<version>.+?)$",
        {"GET": views.push_image},
        rate_limited=("GET",),
    ),
    route("GetImageView", r"^v1/images/(?P<name>.+?)/?$", {"GET": views.get_image}, rate_limited=("GET",)),
    route("DownloadImageView", r"^v1/imagefile/(?P<name>.+?)/?$", {"GET": views.download_image}, rate_limited=("GET",)),
    route(
        "CompletePushImageFileView",
        r"^v2/imagefile/(?P<container_id>.+?)/_complete?$",
        {"PUT": views.complete_upload},
        rate_limited=("PUT",),
    ),
    route(
        "RequestMultiPartPushImageFileView",
        r"^v2/imagefile/(?P<upload_id>.+?)/_multipart?$",
        {"POST": views.multipart_start, "PUT": views.multipart_part},
    ),
    route(
        "RequestMultiPartCompleteView",
        r"^v2/imagefile/(?P<upload_id>.+?)/_multipart_complete?$",
        {"PUT": views.multipart_complete},
        rate_limited=("PUT",),
    ),
    route(
        "RequestMultiPartAbortView",
        r"^v2/imagefile/(?P<upload_id>.+?)/_multipart_abort?$",
        {"PUT": views.multipart_abort},
        rate_limited=("PUT",),
    ),
    route(
        "RequestPushImageFileView",
        r"^v2/imagefile/(?P<container_id>.+?)/?$",
        {"POST": views.request_upload_url},
        rate_limited=("POST",),
    ),
    route(
        "PushImageFileView",
        r"^v2/push/imagefile/(?P<container_id>.+?)/(?P<secret>.+?)?$",
        {"PUT": views.selfhosted_upload},
        rate_limited=("PUT",),
        flavours=frozenset({"selfhosted"}),
    ),
    route("TokenStatusView", r"^v1/token-status$", {"GET": views.token_status}),
    route(
        "GetNamedCollectionView",
        r"^v1/collections/(?P<username>.+?)/(?P<name>.+?)$",
        {"GET": views.named_collection},
        rate_limited=("GET",),
    ),
    route(
        "CollectionsView",
        r"^v1/collections$",
        {"GET": views.collections_list, "POST": views.create_collection},
        rate_limited=("GET", "POST"),
    ),
    route(
        "GetNamedContainerView",
        r"^v1/containers/(?P<username>.+?)/(?P<name>.+?)/(?P<container>.+?)$",
        {"GET": views.named_container},
        rate_limited=("GET",),
    ),
    route("ContainersView", r"^v1/containers$", {"GET": views.containers_list}, rate_limited=("GET",)),
    route("GetNamedEntityView", r"^v1/entities/(?P<username>.+?)/?$", {"GET": views.named_entity}),
    route("GetEntitiesView", r"^v1/entities/?$", {"GET": views.entities}),
    route(
        "GetCollectionTagsView",
        r"^v1/tags/(?P<collection_id>.+?)/?$",
        {"GET": views.collection_tags, "POST": views.set_tag},
        rate_limited=("GET", "POST"),
    ),
    route("LibraryBaseView", r"^v1/$", {"GET": views.library_base}),
    # The web side (shub/urls.py): Django admin's login form and the DRF router's paginated list.
    route("admin_login", r"^admin/login/$", {"GET": webui.admin_login, "POST": webui.admin_login}, drf=False),
    route("ContainerViewSet", r"^api/containers/?$", {"GET": webui.api_containers}),
    # Not sregistry's: a 404 page there unless oci_redirect_url is set (a library server with an OCI registry).
    route(
        "oci_redirect",
        r"^v1/oci-redirect$",
        dict.fromkeys(("GET", "POST", "PUT", "PATCH", "DELETE"), views.oci_redirect),
    ),
    route(
        "download_container",
        r"^containers/(?P<cid>\d+)/download/(?P<secret>.+?)$",
        {"GET": views.selfhosted_download},
        drf=False,
        flavours=frozenset({"selfhosted"}),
    ),
)

UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def match_route(flavour: Flavour, path: str) -> tuple[Route, dict[str, str]] | None:
    # Django matches the percent-decoded path without its leading slash.
    for candidate in ROUTES:
        if flavour in candidate.flavours and (found := candidate.pattern.search(path.lstrip("/"))):
            return candidate, found.groupdict()
    return None


class RateLimiter:
    """django-ratelimit, key "ip", blocking: the request past the limit raises PermissionDenied."""

    def __init__(self, limit: int | None) -> None:
        self._limit = limit
        self._counts: Counter[tuple[str, str]] = Counter()

    def check(self, request: web.BaseRequest, matched: Route) -> None:
        if self._limit is None or request.method not in matched.rate_limited:
            return
        key = (request.remote or "", matched.name)
        self._counts[key] += 1
        if self._counts[key] > self._limit:
            raise RateLimited()


def select_view(matched: Route, method: str) -> View | None:
    if matched.drf:
        # Django's View.setup(): HEAD runs the GET handler.
        return matched.methods.get(method) or (matched.methods.get("GET") if method == "HEAD" else None)
    # A function view answers every method it does not check alike (unsafe ones once past the CSRF check).
    return matched.methods.get(method) or matched.methods["GET"]


def make_dispatcher(registry: Registry) -> View:
    limiter = RateLimiter(registry.settings.view_rate_limit)

    async def answer(request: web.Request) -> web.StreamResponse:
        matched = match_route(registry.settings.flavour, request.path)
        if matched is None:
            raise PageNotFound()
        target, groups = matched
        if not target.drf and request.method in UNSAFE_METHODS:
            await webui.check_csrf(request)  # CsrfViewMiddleware; DRF's APIViews are csrf_exempt
        view = select_view(target, request.method)
        if view is None:
            response: web.StreamResponse = (
                drf_json({"name": target.name, "renders": ["application/json"]})
                if request.method == "OPTIONS"
                else method_not_allowed(request.method)
            )
        else:
            limiter.check(request, target)
            response = await view(request, **groups)
        if target.drf and not response.prepared:
            response.headers["Allow"] = target.allow
        return response

    async def dispatch(request: web.Request) -> web.StreamResponse:
        try:
            response = await answer(request)
        except DjangoError as error:
            response = error.response()
        if request.method == "HEAD" and isinstance(response, web.Response):
            # uWSGI does not strip the body Django renders for HEAD (pitfall G3).
            return HeadWithBodyResponse.from_response(response)
        return response

    return dispatch


# --- the fake's own inspection routes -------------------------------------------------------------------


async def fake_log(request: web.Request) -> web.StreamResponse:
    return web.json_response([record.to_json() for record in request.app[REQUEST_LOG]])


async def fake_log_clear(request: web.Request) -> web.StreamResponse:
    request.app[REQUEST_LOG].clear()
    return drf_empty(204)


async def fake_state(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    collections = [
        {"id": c.id, "name": c.name, "owner": c.owner.name, "private": c.private} for c in state.collections.values()
    ]
    images = [
        {
            "id": image.id,
            "collection": image.collection.name,
            "collection_id": image.collection.id,
            "name": image.name,
            "tag": image.tag,
            "version": image.version,
            "key": image.storage_key,
            "frozen": image.frozen,
            "file": None if image.file_path is None else str(image.file_path),
        }
        for image in state.images.values()
    ]
    return web.json_response({"collections": collections, "images": images})


# --- the app --------------------------------------------------------------------------------------------


def storage_context(registry: Registry) -> Callable[[web.Application], AsyncIterator[None]]:
    async def storage(app: web.Application) -> AsyncIterator[None]:
        if registry.bucket is not None:
            await registry.bucket.open()
        temporary: Path | None = None
        if registry.settings.flavour == "selfhosted":
            directory = registry.settings.storage_dir
            if directory is None:
                directory = temporary = Path(tempfile.mkdtemp(prefix="sregistry-fake-"))
            registry.files = LocalFiles(directory)
        try:
            yield
        finally:
            if registry.bucket is not None:
                await registry.bucket.close()
            if temporary is not None:
                shutil.rmtree(temporary, ignore_errors=True)

    return storage


# Django 4.2's defaults, set on every response by SecurityMiddleware and XFrameOptionsMiddleware.
SECURITY_HEADERS = (
    ("X-Frame-Options", "DENY"),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "same-origin"),
    ("Cross-Origin-Opener-Policy", "same-origin"),
)


async def security_headers(request: web.BaseRequest, response: web.StreamResponse) -> None:
    if not request.path.startswith(FAKE_PREFIX):
        for name, value in SECURITY_HEADERS:
            response.headers.setdefault(name, value)


def make_registry_app(settings: RegistrySettings) -> web.Application:
    """A fresh sregistry fake with empty state; start it with any aiohttp runner or test client."""
    registry = Registry(
        settings=settings,
        state=RegistryState(settings),
        wire=WireState(),
        bucket=S3Bucket(settings) if settings.flavour == "s3" else None,
        files=None,
    )
    # No client_max_size limit: the selfhosted upload streams whole images, and the real server has none.
    wire_middleware = make_wire_middleware(lambda: registry.settings, registry.wire)
    app = web.Application(middlewares=[wire_middleware], client_max_size=2**40)
    app[REGISTRY] = registry
    app[STATE] = registry.state
    app[REQUEST_LOG] = registry.wire.log
    app.cleanup_ctx.append(storage_context(registry))
    app.on_response_prepare.append(security_headers)
    app.router.add_get(FAKE_PREFIX + "log", fake_log)
    app.router.add_delete(FAKE_PREFIX + "log", fake_log_clear)
    app.router.add_get(FAKE_PREFIX + "state", fake_state)
    app.router.add_route("*", "/{path:.*}", make_dispatcher(registry))
    return app


def reconfigure(app: web.Application, **changes: Any) -> RegistrySettings:
    """Change settings of a built (even running) app, e.g. reconfigure(app, public_url=f"http://127.0.0.1:{port}")."""
    unknown = set(changes) - RECONFIGURABLE
    if unknown:
        raise ValueError(f"not reconfigurable while running: {', '.join(sorted(unknown))}")
    registry = app[REGISTRY]
    registry.settings = replace(registry.settings, **changes)
    return registry.settings
