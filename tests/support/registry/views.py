"""The library-API views, one function per sregistry view method (shub/apps/library/views/*.py).

Each keeps sregistry's order of checks, since that order decides which status a proxy sees: token first,
then lookups, then ownership. Comments name the sregistry behaviour a check reproduces.
"""

from __future__ import annotations

import html
import json
import uuid
from typing import Any

from aiohttp import web

from . import shapes
from .context import Registry, registry_of
from .replies import (
    PageNotFound,
    ServerError,
    drf_empty,
    drf_json,
    method_not_allowed,
    redirect,
    unsupported_media_type,
)
from .state import Collection, Image
from .wire import body_was_read, django_body, is_chunked

__all__ = [
    "collection_tags",
    "collections_list",
    "complete_upload",
    "config_prod_json",
    "containers_list",
    "create_collection",
    "download_image",
    "entities",
    "get_image",
    "library_base",
    "multipart_abort",
    "multipart_complete",
    "multipart_part",
    "multipart_start",
    "named_collection",
    "named_container",
    "named_entity",
    "push_image",
    "request_upload_url",
    "selfhosted_download",
    "selfhosted_upload",
    "set_tag",
    "token_status",
    "version",
]

FILE_CHUNK_BYTES = 1 << 20
VERSION = {"version": "v1.0.0", "apiVersion": "2.0.0-alpha.1"}

# shub/apps/base/templates/assets/config.prod.json rendered without GOOGLE_ANALYTICS; the template's
# {{ DOMAIN_NAMED }} is not in the context, so redirectUri is empty.
CONFIG_TEMPLATE = """{
  "env": {
    "name": "prod"
  },
  "logging": {
    "console": true
  },
  "libraryAPI": {
    "uri": "DOMAIN"
  },
  "keystoreAPI": {
    "uri": "DOMAIN"
  },
  "tokenAPI": {
    "uri": "DOMAIN"
  },
  
  "auth": {
    "issuer": "DOMAIN",
    "requireHttps": false,
    "redirectUri": "",
    "clientId": "services-frontend",
    "scope": "openid email profile",
    "silentRenew": false,
    "silentRenewUrl": ""
  }
}
"""


def json_body(raw: bytes) -> Any:
    """json.loads(request.body.decode("utf-8")): any failure is an unhandled exception, i.e. 500 HTML."""
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as error:
        raise ServerError(f"malformed JSON body: {error}") from error


def json_object(raw: bytes) -> dict[str, Any]:
    body = json_body(raw)
    if not isinstance(body, dict):
        raise ServerError("JSON body is not an object")
    return body


def format_collection_name(name: str) -> str:
    # shub.apps.main.utils.format_collection_name (approximated: lower case, alphanumerics and -_.).
    return "".join(char.lower() for char in name if char.isalnum() or char in "-_.")


def own_base_url(request: web.BaseRequest, registry: Registry) -> str:
    if registry.settings.public_url is not None:
        return registry.settings.public_url.rstrip("/")
    return f"{request.scheme}://{request.host}"


# --- discovery and auth -------------------------------------------------------------------------------


async def version(request: web.Request) -> web.StreamResponse:
    return drf_json({"data": VERSION})


async def library_base(request: web.Request) -> web.StreamResponse:
    return drf_json({**VERSION, "user": None})


async def config_prod_json(request: web.Request) -> web.StreamResponse:
    # Rendered by a Django template: text/html, pretty-printed (pitfall G5).
    domain = html.escape(registry_of(request).settings.domain_name)
    return web.Response(
        body=CONFIG_TEMPLATE.replace("DOMAIN", domain).encode(),
        headers={"Content-Type": "text/html; charset=utf-8"},
    )


async def oci_redirect(request: web.Request) -> web.StreamResponse:
    """The v1.4.x clients' preflight; sregistry has no such route, so by default this is its 404 page."""
    url = registry_of(request).settings.oci_redirect_url
    if url is None:
        raise PageNotFound()
    if request.method not in ("GET", "HEAD"):
        return method_not_allowed(request.method)
    namespace = request.query.get("namespace", "")
    if namespace.count("/") != 2 or not request.query.get("accessTypes"):
        return drf_empty(400)
    return drf_json({"token": "oci-" + uuid.uuid4().hex, "url": url, "name": namespace})


async def token_status(request: web.Request) -> web.StreamResponse:
    return drf_empty(200 if registry_of(request).token_user(request) else 404)


async def named_entity(request: web.Request, username: str) -> web.StreamResponse:
    # 200 only for the token's own user; every other case is 404, so the client then POSTs v1/entities (405).
    registry = registry_of(request)
    caller = registry.token_user(request)
    if caller is None or registry.state.user_named(username) is not caller:
        return drf_empty(404)
    return drf_json({"data": shapes.user_data(caller, registry.state)})


async def entities(request: web.Request) -> web.StreamResponse:
    registry = registry_of(request)
    caller = registry.token_user(request)
    if caller is None:
        return drf_empty(404)
    return drf_json({"data": shapes.user_data(caller, registry.state)})


# --- collections and containers -----------------------------------------------------------------------


async def named_collection(request: web.Request, username: str, name: str) -> web.StreamResponse:
    registry = registry_of(request)
    caller = registry.token_user(request)
    if caller is None:
        return drf_empty(403)
    collection = registry.state.collection_named(name)
    if collection is None or collection.owner is not caller:
        # Someone else's collection reads as missing; creating it then fails with 403 (names are global).
        return drf_empty(404)
    return drf_json({"data": shapes.collection_metadata(collection, caller, registry.state)})


async def collections_list(request: web.Request) -> web.StreamResponse:
    registry = registry_of(request)
    caller = registry.token_user(request)
    if caller is None:
        return drf_empty(403)
    # generate_collections_list returns from inside its loop: the first collection only, or None.
    first = next(iter(registry.state.collections.values()), None)
    if first is None:
        return drf_empty(200)
    return drf_json({"collections": [shapes.collection_metadata(first, first.owner, registry.state)]})


async def create_collection(request: web.Request) -> web.StreamResponse:
    registry = registry_of(request)
    caller = registry.token_user(request)
    if caller is None:
        return drf_empty(403)
    body = json_object(await django_body(request))  # chunked: empty body, 500 (pitfall G2)
    if "entity" not in body or "name" not in body:
        return drf_empty(400)
    if registry.state.collection_named(body["name"]) is not None:
        return drf_empty(403)
    if str(caller.id) != body["entity"]:
        return drf_empty(403)
    collection = registry.state.create_collection(
        format_collection_name(str(body["name"])), caller, private=bool(body.get("private", False))
    )
    return drf_json({"data": shapes.collection_metadata(collection, caller, registry.state)})


async def named_container(request: web.Request, username: str, name: str, container: str) -> web.StreamResponse:
    registry = registry_of(request)
    caller = registry.token_user(request)
    if caller is None:
        return drf_empty(403)
    collection = registry.state.collection_named(name)
    if collection is None:
        return drf_empty(404)
    if collection.owner is not caller:
        return drf_empty(403)
    # Always 200, even before the first image: the reply is the collection, so data.id is its id.
    images = sorted((i for i in registry.state.images_in(collection) if i.name == container), key=lambda i: i.id)
    return drf_json({"data": shapes.collection_details(collection, images, caller, registry.state)})


async def containers_list(request: web.Request) -> web.StreamResponse:
    if registry_of(request).token_user(request) is None:
        return drf_empty(403)
    return drf_json({})


# --- images -------------------------------------------------------------------------------------------


async def push_image(
    request: web.Request, username: str, collection: str, name: str, version: str
) -> web.StreamResponse:
    """GET v1/images/<e>/<c>/<n>:sha256.<hex>: creates a new row with a DUMMY tag on every call."""
    registry = registry_of(request)
    caller = registry.token_user(request)
    if caller is None:
        return drf_empty(403)
    found = registry.state.collection_named(collection)
    if found is None:
        return drf_empty(404)
    if found.owner is not caller:
        return drf_empty(403)
    image = registry.state.create_image(found, name, f"sha256.{version}")
    # The arch is set on the unsaved instance: it shows in this reply only.
    arch = request.query.get("arch") or "amd64"
    size = await registry.image_size(image)
    return drf_json(
        {"data": registry.with_unknown_size(shapes.container_metadata(image, registry.state, arch=arch, size=size))}
    )


def find_image(registry: Registry, reference: str) -> Image | None:
    """get_container(parse_image_name(reference)): the entity is ignored, names are lower-cased."""
    path, _, tag = reference.partition(":")
    path = path.replace(".simg", "").replace(".img", "")
    parts = path.split("/")
    collection_name = parts[-2].lower() if len(parts) > 1 else "library"
    image_name = parts[-1].lower()
    collection = registry.state.collection_named(collection_name)
    if collection is None:
        return None
    tag = tag or "latest"
    candidates = sorted((i for i in registry.state.images_in(collection) if i.name == image_name), key=lambda i: i.id)
    if tag.startswith("sha256"):
        return next((i for i in candidates if i.version == tag), None)
    return next((i for i in candidates if i.tag == tag), None)


def may_pull(registry: Registry, request: web.BaseRequest, collection: Collection) -> bool:
    if not collection.private:
        return True
    caller = registry.token_user(request)
    return caller is collection.owner


async def get_image(request: web.Request, name: str) -> web.StreamResponse:
    registry = registry_of(request)
    image = find_image(registry, name)
    if image is None:
        return drf_empty(404)
    if image.collection.private and registry.token_user(request) is None:
        raise ServerError("'NoneType' object has no attribute 'user'")  # get_token() returned None
    if not may_pull(registry, request, image.collection):
        return drf_empty(404)
    size = await registry.image_size(image)
    return drf_json({"data": registry.with_unknown_size(shapes.container_metadata(image, registry.state, size=size))})


async def download_image(request: web.Request, name: str) -> web.StreamResponse:
    """GET v1/imagefile/<ref>: a 302 (which client v1.2.2's concurrent pull cannot follow)."""
    registry = registry_of(request)
    image = find_image(registry, name)
    if image is None or not may_pull(registry, request, image.collection):
        return drf_empty(404)
    if registry.bucket is not None:
        return redirect(registry.bucket.presigned_get(image.storage_key))
    secret = image.collection.secret
    return redirect(f"{own_base_url(request, registry)}/containers/{image.id}/download/{secret}")


# --- upload -------------------------------------------------------------------------------------------


async def request_upload_url(request: web.Request, container_id: str) -> web.StreamResponse:
    """POST v2/imagefile/<id>: never reads the body; every call gives a new URL."""
    registry = registry_of(request)
    caller = registry.token_user(request)
    if caller is None:
        return drf_empty(403)
    image = registry.image_by_id(container_id)
    if image is None:
        return drf_empty(404)
    if image.collection.owner is not caller:
        return drf_empty(403)
    if registry.bucket is not None:
        url = registry.bucket.presigned_put(image.storage_key)
    else:
        image.push_secret = new_secret()
        url = f"{own_base_url(request, registry)}/v2/push/imagefile/{image.id}/{image.push_secret}"
    return drf_json({"data": {"uploadURL": url}})


def new_secret() -> str:
    return str(uuid.uuid4())


async def complete_upload(request: web.Request, container_id: str) -> web.StreamResponse:
    """PUT v2/imagefile/<id>/_complete: no token, no check that the object exists; 200 with no body."""
    registry = registry_of(request)
    if registry.image_by_id(container_id) is None:
        return drf_empty(404)
    return drf_empty(200)


async def multipart_start(request: web.Request, upload_id: str) -> web.StreamResponse:
    registry = registry_of(request)
    if registry.token_user(request) is None:
        return drf_empty(403)
    # The container is looked up first (an id it cannot parse is a 500, as seen on sregistry 2.1.2); then
    # MINIO_MULTIPART_UPLOAD=false: 404 before the body is read, so the client falls back to §5.
    registry.image_by_id(upload_id)
    return drf_empty(404)


async def multipart_part(request: web.Request, upload_id: str) -> web.StreamResponse:
    registry = registry_of(request)
    if registry.token_user(request) is None:
        return drf_empty(403)
    if registry.image_by_id(upload_id) is None:
        return drf_empty(404)
    body = json_object(await django_body(request))
    if body.get("uploadID") is None:
        raise ServerError("presign with UploadId=None")  # matches the unset metadata, then botocore fails
    return drf_empty(404)  # no multipart upload was started, so the uploadID never matches


async def multipart_complete(request: web.Request, upload_id: str) -> web.StreamResponse:
    registry = registry_of(request)
    if registry.token_user(request) is None:
        return drf_empty(403)
    body = json_object(await django_body(request))
    try:
        [str(part["token"]).strip('"') for part in body["completedParts"]]
    except (KeyError, TypeError) as error:
        raise ServerError(f"bad completedParts: {error}") from error
    if registry.image_by_id(upload_id) is None:
        return drf_empty(404)
    # CompleteMultipartUpload for an upload sregistry never started: botocore raises NoSuchUpload.
    raise ServerError("NoSuchUpload")


async def multipart_abort(request: web.Request, upload_id: str) -> web.StreamResponse:
    """PUT _multipart_abort: deletes the image row, never aborts anything in S3 (pitfall G6)."""
    registry = registry_of(request)
    if registry.token_user(request) is None:
        return drf_empty(403)
    image = registry.image_by_id(upload_id)
    if image is None:
        return drf_empty(404)
    registry.delete_row(image)
    return drf_empty(200)


# --- tags ---------------------------------------------------------------------------------------------


async def collection_tags(request: web.Request, collection_id: str) -> web.StreamResponse:
    registry = registry_of(request)
    if registry.token_user(request) is None:
        return drf_empty(403)
    try:
        collection = registry.state.collections.get(int(collection_id))
    except ValueError:
        collection = None  # a bare except: 404, not 500
    if collection is None:
        return drf_empty(404)
    return drf_json({"data": shapes.collection_tags(collection, registry.state)})


async def tag_request_body(request: web.Request) -> bytes | web.Response:
    """request.data through DRF's EmptyParser (media type ""): see pitfalls G1 and G2."""
    raw = await django_body(request)
    if not raw:
        raise ServerError("'QueryDict' object has no attribute 'decode'")  # no Content-Length: empty data
    content_type = request.headers.get("Content-Type", "")
    if content_type:
        return unsupported_media_type(content_type)
    return raw


async def set_tag(request: web.Request, collection_id: str) -> web.StreamResponse:
    """POST v1/tags/<id> {"Tag","ImageID"}: the URL's id is ignored; a same name+tag row anywhere goes."""
    registry = registry_of(request)
    if registry.token_user(request) is None:
        return drf_empty(403)
    raw = await tag_request_body(request)
    if isinstance(raw, web.Response):
        return raw
    params = json_object(raw)
    try:
        image_id, tag = str(params["ImageID"]), str(params["Tag"])
    except KeyError as error:
        raise ServerError(f"missing key {error}") from error
    image = registry.image_by_id(image_id)
    if image is None:
        return drf_empty(404)
    same = registry.state.images_named(image.name, tag)
    if len(same) > 1:
        raise ServerError("MultipleObjectsReturned")
    if same:
        existing = same[0]
        if existing.frozen:
            registry.delete_row(image)
            return drf_json({"message": "This tag exists, and is frozen."}, 400)
        if existing.storage_key != image.storage_key:
            await delete_unreferenced_object(registry, existing)
        registry.delete_row(existing)
        if existing is image:
            # Django's delete() clears the pk; the save() below inserts the row again under a new id.
            registry.state.reinsert(image)
    image.tag = tag
    return drf_empty(200)


async def delete_unreferenced_object(registry: Registry, image: Image) -> None:
    """delete_minio_container: only when no other row has the same version."""
    if registry.bucket is None or not registry.settings.minio_cleanup:
        return
    if registry.state.count_with_version(image.version) == 1:
        await registry.bucket.delete(image.storage_key)


# --- the selfhosted flavour's own storage routes --------------------------------------------------------


async def selfhosted_upload(request: web.Request, container_id: str, secret: str) -> web.StreamResponse:
    """PUT v2/push/imagefile/<id>/<secret> (sregistry <= 1.1.23): the registry stores the bytes itself."""
    registry = registry_of(request)
    image = registry.image_by_id(container_id)
    if image is None:
        return drf_empty(404)
    if (image.push_secret or "nope") != secret:
        return drf_empty(403)
    if request.content_length is None or is_chunked(request):
        raise ServerError("'file'")  # request.data is empty without a Content-Length (pitfall G2)
    content_type = request.headers.get("Content-Type", "")
    if content_type.split(";")[0].strip().lower() != "application/octet-stream":
        return unsupported_media_type(content_type)
    path, received = await registry.require_files().store(image, request.content)
    body_was_read(request, received)
    image.push_secret = None
    image.file_path = path
    return drf_empty(200)


async def selfhosted_download(request: web.Request, cid: str, secret: str) -> web.StreamResponse:
    registry = registry_of(request)
    image = registry.state.images.get(int(cid))
    if image is None or image.collection.secret != secret:
        raise PageNotFound()
    if image.file_path is None or not image.file_path.exists():
        raise PageNotFound()
    headers = {
        "Content-Type": "application/img",
        "Content-Disposition": f'attachment; filename="{image.collection.name}-{image.name}-{image.tag}.sif"',
    }
    if request.method == "HEAD":  # uWSGI sends the body on HEAD too (pitfall G3)
        return web.Response(body=image.file_path.read_bytes(), headers=headers)
    # Django's FileResponse: the whole file, 200, whatever Range the client asked for.
    response = web.StreamResponse(headers=headers)
    response.content_length = image.file_path.stat().st_size
    await response.prepare(request)
    with image.file_path.open("rb") as source:
        while chunk := source.read(FILE_CHUNK_BYTES):
            await response.write(chunk)
    await response.write_eof()
    return response
