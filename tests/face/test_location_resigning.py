"""Which redirects from the registry the gateway re-signs (issue 13 point 7), against a registry that reflects its
input into Location: only a download the registry itself granted, on the download route, for an image key of the
configured bucket. Everything else passes as the registry sent it, so a reflected URL gains no signature.

The genuine URLs are presigned with botocore, as sregistry does (tests/support/registry/objectstore.py), with the
gateway's own S3 access key and secret."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from unittest import mock

import botocore.session
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from botocore.config import Config as BotoConfig

from gateway.core.config import DEFAULT_DOWNLOAD_EXPIRY_S
from gateway.face.handler import Gateway
from tests.support.gateway_fixtures import GatewayTestServer, gateway_config

Client = Callable[..., Awaitable[TestClient[web.Request, web.Application]]]
ServerFactory = Callable[..., Awaitable[TestServer]]

S3 = "http://127.0.0.1:9"  # the gateway's S3 endpoint in gateway_config (nothing listens: nothing is fetched)
ACCESS_KEY, SECRET_KEY = "AKIDEXAMPLE", "secret-secret"  # gateway_config's
IMAGE_KEY = "alice/c/img:sha256.ab"
DOWNLOAD = "/v1/imagefile/alice/c/img:v1"


def registry_presigned_get(
    bucket: str, key: str, *, secret_key: str = SECRET_KEY, signed_at: datetime | None = None, expires_s: int = 600
) -> str:
    """A GET URL presigned the way sregistry's boto3 client does it."""
    client = botocore.session.get_session().create_client(
        "s3",
        endpoint_url=S3,
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=secret_key,
        region_name="us-east-1",
        config=BotoConfig(signature_version="s3v4", s3={"addressing_style": "path"}),
    )
    try:
        naive_utc = (signed_at or datetime.now(UTC)).astimezone(UTC).replace(tzinfo=None)
        with mock.patch("botocore.auth.get_current_datetime", return_value=naive_utc):
            url = client.generate_presigned_url(
                "get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=expires_s
            )
        return str(url)
    finally:
        client.close()


def reflecting_registry() -> web.Application:
    """Answers every path with a redirect to its ``to`` parameter: a registry that reflects input into Location."""

    async def reflect(request: web.Request) -> web.Response:
        return web.Response(status=302, headers={"Location": request.query["to"]})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", reflect)
    return app


@pytest.fixture
async def gateway(aiohttp_client: Client, aiohttp_server: ServerFactory) -> Any:
    registry = await aiohttp_server(reflecting_registry())
    config = gateway_config(upstream_url=str(registry.make_url("")))
    return await aiohttp_client(GatewayTestServer(Gateway(config)))


async def redirect_of(gateway: Any, path: str, to: str, method: str = "GET", *, status: int = 302) -> str:
    response = await gateway.request(method, path, params={"to": to}, allow_redirects=False)
    assert response.status == status  # 302: the registry's own, kept for a Location passed on unchanged
    return str(response.headers["Location"])


async def test_a_download_the_registry_signed_is_resigned_for_the_external_endpoint(gateway: Any) -> None:
    granted = registry_presigned_get("sregistry", IMAGE_KEY)
    for method in ("GET", "HEAD"):
        location = await redirect_of(gateway, DOWNLOAD, granted, method, status=303)  # downloads.redirect_status
        assert location.startswith(f"{S3}/sregistry/alice/c/img%3Asha256.ab?X-Amz-Algorithm=AWS4-HMAC-SHA256")
        assert location != granted and f"X-Amz-Expires={DEFAULT_DOWNLOAD_EXPIRY_S}&" in location


async def test_the_303_download_route_resigns_only_what_the_registry_signed(
    aiohttp_client: Client, aiohttp_server: ServerFactory
) -> None:
    registry = await aiohttp_server(reflecting_registry())
    config = gateway_config(upstream_url=str(registry.make_url("")), downloads={"redirect_status": "303"})
    gateway = await aiohttp_client(GatewayTestServer(Gateway(config)))
    unsigned = f"{S3}/sregistry/{IMAGE_KEY}"
    for to, resigned in ((registry_presigned_get("sregistry", IMAGE_KEY), True), (unsigned, False)):
        response = await gateway.get(DOWNLOAD, params={"to": to}, allow_redirects=False)
        assert response.status == (303 if resigned else 302)  # a Location passed on unchanged keeps its status
        assert (response.headers["Location"] != to) is resigned


LONG_AGO = datetime.now(UTC) - timedelta(hours=2)


@pytest.mark.parametrize(
    ("path", "to"),
    [
        # Unsigned, or with a signature only claimed: the registry granted nothing.
        (DOWNLOAD, f"{S3}/sregistry/{IMAGE_KEY}"),
        (DOWNLOAD, f"{S3}/sregistry/{IMAGE_KEY}?X-Amz-Credential={ACCESS_KEY}%2F20260101%2Fus-east-1%2Fs3"),
        (DOWNLOAD, f"{S3}/sregistry/_gateway/journal/000000000001-x.json?X-Amz-Signature=old"),
        # Signed, but not with our secret, or expired, or on another route than the download.
        (DOWNLOAD, lambda: registry_presigned_get("sregistry", IMAGE_KEY, secret_key="another-secret")),
        (DOWNLOAD, lambda: registry_presigned_get("sregistry", IMAGE_KEY, signed_at=LONG_AGO, expires_s=60)),
        ("/v1/images/alice/c/img:v1", lambda: registry_presigned_get("sregistry", IMAGE_KEY)),
        ("/v1/collections/7", lambda: registry_presigned_get("sregistry", IMAGE_KEY)),
        ("/v2/imagefile/101/_complete", lambda: registry_presigned_get("sregistry", IMAGE_KEY)),
        # Signed by the registry, but outside what a download may name: another bucket, the gateway's own
        # prefix, or a key some servers normalise into it.
        (DOWNLOAD, lambda: registry_presigned_get("private", IMAGE_KEY)),
        (DOWNLOAD, lambda: registry_presigned_get("sregistry", "_gateway/journal/000000000001-x.json")),
        (DOWNLOAD, lambda: registry_presigned_get("sregistry", "_gateway/relay/101/abc")),
        (DOWNLOAD, lambda: registry_presigned_get("sregistry", "alice/../_gateway/done/x")),
        (DOWNLOAD, lambda: registry_presigned_get("sregistry", "/_gateway/done/x")),
    ],
    ids=[
        "unsigned",
        "claimed-credential",
        "journal-unsigned",
        "other-secret",
        "expired",
        "image-route",
        "other-route",
        "legacy-complete",
        "other-bucket",
        "journal",
        "relay-staging",
        "dot-segments",
        "leading-slash",
    ],
)
async def test_a_reflected_location_passes_unchanged_unless_the_download_route_can_justify_it(
    gateway: Any, path: str, to: str | Callable[[], str]
) -> None:
    url = to if isinstance(to, str) else to()
    if path.startswith("/v2/"):
        response = await gateway.put(path, params={"to": url}, allow_redirects=False)
        assert response.status == 302
        location = response.headers["Location"]
    else:
        location = await redirect_of(gateway, path, url)
    assert location == url, "the gateway signed a URL the registry did not grant"
