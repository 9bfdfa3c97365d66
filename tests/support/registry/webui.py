"""sregistry's web side, as far as a proxy in front of it can break it: Django's CSRF check on form POSTs and
DRF's paginated API. Both use the request's Host (Django's request.get_host(); sregistry sets neither
USE_X_FORWARDED_HOST nor SECURE_PROXY_SSL_HEADER), so a proxy that rewrites Host breaks them."""

from __future__ import annotations

import html
import secrets
from urllib.parse import parse_qs, urlencode

from aiohttp import web

from .context import registry_of
from .replies import DjangoError, drf_json, html_page
from .wire import django_body

__all__ = ["CsrfFailure", "admin_login", "api_containers", "check_csrf"]

CSRF_COOKIE = "csrftoken"
PAGE_SIZE = 10  # REST_FRAMEWORK["PAGE_SIZE"] with LimitOffsetPagination (shub/settings/api.py)


class CsrfFailure(DjangoError):
    status = 403

    def __init__(self, reason: str = "") -> None:
        super().__init__(reason)
        # Django shows the reason on the page only with DEBUG and logs it as "Forbidden (<reason>): <path>".
        self.page = "<h1>Forbidden <span>(403)</span></h1><p>CSRF verification failed. Request aborted.</p>"
        if reason:
            self.page += f"<p>Reason given for failure:</p><pre>{html.escape(reason)}</pre>"


def own_origin(request: web.BaseRequest) -> str:
    """scheme://get_host(): the scheme of the connection uWSGI saw, the Host header as sent."""
    return f"{request.scheme}://{request.host}"


async def check_csrf(request: web.BaseRequest) -> None:
    """CsrfViewMiddleware.process_view (Django 4.2) for an unsafe method: Origin against scheme://Host first, then
    the csrftoken cookie against the form's csrfmiddlewaretoken (or the X-CSRFToken header)."""
    origin = request.headers.get("Origin")
    if origin is not None and origin != own_origin(request):
        raise CsrfFailure(f"Origin checking failed - {origin} does not match any trusted origins.")
    cookie = request.cookies.get(CSRF_COOKIE)
    if not cookie:
        raise CsrfFailure("CSRF cookie not set.")
    token = request.headers.get("X-CSRFToken")
    if token is None and request.content_type == "application/x-www-form-urlencoded":
        form = parse_qs((await django_body(request)).decode("utf-8", "replace"))
        token = form.get("csrfmiddlewaretoken", [None])[0]
    if not token:
        raise CsrfFailure("CSRF token missing.")
    if not secrets.compare_digest(token, cookie):
        raise CsrfFailure("CSRF token incorrect.")


LOGIN_FORM = (
    '<form method="post" action="/admin/login/"><input type="hidden" name="csrfmiddlewaretoken" value="{token}">'
    '<input name="username"><input type="password" name="password"><input type="submit" value="Log in"></form>'
)


async def admin_login(request: web.Request) -> web.StreamResponse:
    """Django admin's login form: a GET sets the CSRF cookie; a POST that passed the CSRF check is answered with
    the form again (the fake keeps no passwords), 200 as Django answers wrong credentials."""
    token = request.cookies.get(CSRF_COOKIE) or secrets.token_hex(16)
    note = ""
    if request.method == "POST":
        note = "<p>Please enter the correct username and password for a staff account.</p>"
    response = html_page(200, note + LOGIN_FORM.format(token=token))
    response.set_cookie(CSRF_COOKIE, token, max_age=31449600, samesite="Lax")
    return response


def page_link(request: web.BaseRequest, limit: int, offset: int | None) -> str | None:
    """LimitOffsetPagination's links: request.build_absolute_uri() with limit/offset replaced."""
    if offset is None:
        return None
    query = parse_qs(request.query_string, keep_blank_values=True)
    query["limit"] = [str(limit)]
    if offset > 0:
        query["offset"] = [str(offset)]
    else:
        query.pop("offset", None)  # remove_query_param for the first page
    return f"{own_origin(request)}{request.path}?{urlencode(sorted(query.items()), doseq=True)}"


def query_int(request: web.BaseRequest, name: str, default: int) -> int:
    try:
        value = int(request.query[name])
    except (KeyError, ValueError):
        return default
    return value if value >= 0 else default


async def api_containers(request: web.Request) -> web.StreamResponse:
    """GET /api/containers/: ContainerViewSet (public collections only), paginated."""
    registry = registry_of(request)
    public = sorted(
        (image for image in registry.state.images.values() if not image.collection.private), key=lambda i: i.id
    )
    limit = query_int(request, "limit", PAGE_SIZE) or PAGE_SIZE
    offset = query_int(request, "offset", 0)
    results = [
        {
            "id": image.id,
            "name": image.name,
            "tag": image.tag,
            "add_date": image.add_date.isoformat(),
            "version": image.version,
            "frozen": image.frozen,
            "collection": image.collection.name,
        }
        for image in public[offset : offset + limit]
    ]
    following = offset + limit if offset + limit < len(public) else None
    previous = max(offset - limit, 0) if offset > 0 else None
    return drf_json(
        {
            "count": len(public),
            "next": page_link(request, limit, following),
            "previous": page_link(request, limit, previous),
            "results": results,
        }
    )
