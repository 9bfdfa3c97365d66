"""Responses the way Django + Django REST framework render them behind uWSGI."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

__all__ = [
    "DjangoError",
    "HeadWithBodyResponse",
    "PageNotFound",
    "RateLimited",
    "ServerError",
    "drf_empty",
    "drf_json",
    "html_page",
    "method_not_allowed",
    "redirect",
    "unsupported_media_type",
]

HTML = "text/html; charset=utf-8"


class DjangoError(Exception):
    """Raised below a view; rendered as Django's HTML error page (not DRF's JSON)."""

    status = 500
    page = "<h1>Server Error (500)</h1>"

    def response(self) -> web.Response:
        return html_page(self.status, self.page)


class ServerError(DjangoError):
    """An unhandled exception in the view: int("abc") ids, json.loads on a bad body, missing keys."""


class PageNotFound(DjangoError):
    status = 404
    page = "<h1>Not Found</h1><p>The requested resource was not found on this server.</p>"


class RateLimited(DjangoError):
    # django-ratelimit raises PermissionDenied outside DRF's exception handling.
    status = 403
    page = "<h1>403 Forbidden</h1>"


def html_page(status: int, body: str) -> web.Response:
    page = f'<!doctype html>\n<html lang="en">\n<head><title>sregistry</title></head>\n<body>{body}</body>\n</html>\n'
    return web.Response(status=status, body=page.encode(), headers={"Content-Type": HTML})


def drf_empty(status: int) -> web.Response:
    # DRF deletes Content-Type when the rendered body is empty: Response(status=403) is 0 bytes, no type.
    return web.Response(status=status)


def drf_json(payload: Any, status: int = 200) -> web.Response:
    if payload is None:  # Response(data=None) renders to an empty body
        return drf_empty(status)
    body = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()
    return web.Response(status=status, body=body, headers={"Content-Type": "application/json"})


def method_not_allowed(method: str) -> web.Response:
    return drf_json({"detail": f'Method "{method}" not allowed.'}, 405)


def unsupported_media_type(content_type: str) -> web.Response:
    return drf_json({"detail": f'Unsupported media type "{content_type}" in request.'}, 415)


def redirect(location: str) -> web.Response:
    # django.shortcuts.redirect: HttpResponseRedirect, 302, empty text/html body.
    return web.Response(status=302, body=b"", headers={"Location": location, "Content-Type": HTML})


class HeadWithBodyResponse(web.Response):
    """A HEAD reply that carries the GET body, as uWSGI sends Django's (pitfall G3).

    aiohttp drops the body of every HEAD reply; this class opts out of that, so the bytes after the
    headers land on the connection and a client reusing it reads them as the next status line.
    """

    async def prepare(self, request: web.BaseRequest) -> Any:
        if self._eof_sent or self._payload_writer is not None:
            return await super().prepare(request)
        self._must_be_empty_body = False
        return await self._start(request)

    @classmethod
    def from_response(cls, response: web.Response) -> HeadWithBodyResponse:
        body = response.body if isinstance(response.body, bytes) else b""
        headers = {k: v for k, v in response.headers.items() if k.lower() != "content-length"}
        headers["Content-Length"] = str(len(body))
        return cls(status=response.status, body=body, headers=headers)
