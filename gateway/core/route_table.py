"""The one route table: which route a request is, worked out once from its method and raw path. Pure: no I/O.

The route's name drives dispatch (what answers it), the metrics label and the access and upload log lines, so the
three can never disagree. The raw path is used as the upstream will see it, never normalised, except to decide
whether the registry could route it to one of its ``v2/imagefile`` views (then the gateway owns it).
"""

from __future__ import annotations

from typing import Final, NamedTuple
from urllib.parse import unquote

__all__ = [
    "DISCOVERY_PATH",
    "IMAGEFILE_PREFIX",
    "IMAGE_PREFIX",
    "OCI_REDIRECT_PATH",
    "ROUTE_NAMES",
    "UPLOAD_ROUTES",
    "Route",
    "classify",
    "loggable_path",
]

DISCOVERY_PATH: Final = "/assets/config/config.prod.json"
OCI_REDIRECT_PATH: Final = "/v1/oci-redirect"
IMAGEFILE_PREFIX: Final = "/v1/imagefile/"  # downloads: the registry redirects into S3
IMAGE_PREFIX: Final = "/v1/images/"  # an image's JSON, with the size a 303 pull needs

# The v2/imagefile shapes the gateway lets through, by (method, last segment; "" for none): the upload routes.
UPLOAD_ROUTES: Final = {
    ("POST", ""): "legacy-start",
    ("PUT", "_complete"): "legacy-complete",
    ("POST", "_multipart"): "upload-start",
    ("PUT", "_multipart"): "upload-part",
    ("PUT", "_multipart_complete"): "upload-complete",
    ("PUT", "_multipart_abort"): "upload-abort",
}
_UPLOAD_ACTIONS: Final = frozenset(action for _, action in UPLOAD_ROUTES)
_NOT_AN_UPLOAD_ROUTE: Final = "not an upload route of the library API: v2/imagefile/{id}[/_multipart...]"
# Every name a route can have: a small, fixed set, so metrics labels stay bounded.
ROUTE_NAMES: Final = frozenset(
    {*UPLOAD_ROUTES.values(), "refused", "gateway", "oci-redirect", "discovery", "download", "image", "proxy"}
)


class Route(NamedTuple):
    """A tuple, not a frozen dataclass: made for every request, where the dataclass's field-by-field
    ``object.__setattr__`` cost half of classifying an upload route."""

    name: str  # one of ROUTE_NAMES
    path: str  # the raw path without its query
    image_id: str = ""  # upload routes (and a refused upload route's wrong method): unchecked, as written
    refusal: str = ""  # "refused": why, as the client is told
    refusal_status: int = 400


def classify(method: str, raw_path: str) -> Route:
    path = raw_path.partition("?")[0]
    if not path.startswith("/"):
        # Absolute-form targets (http://host/...) would be glued onto the upstream origin by the forwarder.
        return Route("refused", path, refusal="request target must be a path starting with /")
    if path.startswith("/_gateway/"):
        return Route("gateway", path)
    if _under_imagefile(path):
        return _upload_route(method, path)
    if path == OCI_REDIRECT_PATH:
        return Route("oci-redirect", path)
    if path == DISCOVERY_PATH and method == "GET":
        return Route("discovery", path)
    if path.startswith(IMAGEFILE_PREFIX) and method in ("GET", "HEAD"):
        return Route("download", path)
    if path.startswith(IMAGE_PREFIX) and method == "GET":
        return Route("image", path)
    return Route("proxy", path)


def loggable_path(raw_path: str) -> str:
    """The path without its query (presigned URLs and tokens never reach a log) and with upload tokens elided."""
    path = raw_path.partition("?")[0]
    if path.startswith("/_gateway/uploads/"):
        return "/_gateway/uploads/…/parts"
    return path[:512]


def _upload_route(method: str, path: str) -> Route:
    """Every path the registry could route to one of its ``v2/imagefile`` views: only the plain shapes of the
    library API pass; sregistry's own multipart views would answer any other (near misses such as _multipar, extra
    segments, encoded or dotted spellings): its part URLs are unbound and its abort deletes the image row (G6)."""
    shape = _imagefile_shape(path)
    if shape is None or shape[1] not in _UPLOAD_ACTIONS:
        return Route("refused", path, refusal=_NOT_AN_UPLOAD_ROUTE)
    image_id, action = shape
    name = UPLOAD_ROUTES.get((method, action))
    if name is None:
        return Route("refused", path, image_id=image_id, refusal=f"{method} is not allowed here", refusal_status=405)
    return Route(name, path, image_id=image_id)


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
