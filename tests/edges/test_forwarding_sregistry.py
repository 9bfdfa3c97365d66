"""Forwarding in front of the sregistry fake: what the real sregistry does with the requests a proxy passes on
(Django's Origin check and Host-built links, uWSGI's view of chunked bodies), through the gateway as configured
by default."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import BaseTestServer

from gateway.face.handler import Gateway
from tests.support.gateway_fixtures import gateway_config
from tests.support.processes import free_port
from tests.support.registry import REQUEST_LOG, STATE, RegistrySettings, make_registry_app
from tests.support.stack import TOKEN, USER

ServerFactory = Callable[..., Awaitable[BaseTestServer]]


@dataclass
class Behind:
    registry: web.Application
    registry_url: str
    gateway_url: str


async def start_behind(aiohttp_server: ServerFactory, **upstream: Any) -> Behind:
    """The fake (no S3 needed: nothing here uploads) and a gateway in front of it, each on a loopback port."""
    registry_port, gateway_port = free_port(), free_port()
    registry_url, gateway_url = f"http://127.0.0.1:{registry_port}", f"http://127.0.0.1:{gateway_port}"
    registry = make_registry_app(RegistrySettings(users={TOKEN: USER}, domain_name=registry_url))
    await aiohttp_server(registry, port=registry_port)
    config = gateway_config(upstream_url=registry_url, public_url=gateway_url, upstream=upstream)
    await aiohttp_server(Gateway(config), port=gateway_port)
    return Behind(registry, registry_url, gateway_url)


async def login_post(session: aiohttp.ClientSession, base_url: str, origin: str) -> tuple[int, str]:
    """Django admin's login form as a browser submits it: the CSRF cookie from the GET, the token in the form,
    and the page's origin."""
    async with session.get(f"{base_url}/admin/login/") as page:
        assert page.status == 200
        token = page.cookies["csrftoken"].value
    async with session.post(
        f"{base_url}/admin/login/",
        data={"csrfmiddlewaretoken": token, "username": USER, "password": "wrong"},
        headers={"Origin": origin, "Cookie": f"csrftoken={token}"},
    ) as answer:
        return answer.status, await answer.text()


async def test_a_web_form_post_passes_djangos_origin_check_through_the_gateway(
    aiohttp_server: ServerFactory, session: aiohttp.ClientSession
) -> None:
    behind = await start_behind(aiohttp_server)
    status, page = await login_post(session, behind.gateway_url, origin=behind.gateway_url)
    assert status == 200, page
    assert "correct username and password" in page  # past the CSRF check, into the view


async def test_with_the_upstreams_host_the_origin_check_refuses_the_form(
    aiohttp_server: ServerFactory, session: aiohttp.ClientSession
) -> None:
    # What forward_host = "upstream" costs on sregistry: Django compares Origin with scheme://Host.
    behind = await start_behind(aiohttp_server, forward_host="upstream")
    status, page = await login_post(session, behind.gateway_url, origin=behind.gateway_url)
    assert status == 403
    assert f"Origin checking failed - {behind.gateway_url} does not match any trusted origins." in page


async def test_pagination_links_name_the_public_host_not_the_registrys(
    aiohttp_server: ServerFactory, session: aiohttp.ClientSession
) -> None:
    behind = await start_behind(aiohttp_server)
    state = behind.registry[STATE]
    owner = state.user_named(USER)
    assert owner is not None
    collection = state.create_collection("web", owner, private=False)
    for number in range(12):
        state.create_image(collection, f"img{number}", f"sha256.{number:064x}")
    async with session.get(f"{behind.gateway_url}/api/containers/?limit=5") as response:
        assert response.status == 200
        page = await response.json()
    assert page["count"] == 12 and len(page["results"]) == 5
    assert page["next"] == f"{behind.gateway_url}/api/containers/?limit=5&offset=5"
    assert page["previous"] is None


@pytest.mark.parametrize("via", ["registry", "gateway"])
async def test_the_fake_checks_origin_against_the_host_it_was_sent(
    aiohttp_server: ServerFactory, session: aiohttp.ClientSession, via: str
) -> None:
    behind = await start_behind(aiohttp_server)
    base = behind.registry_url if via == "registry" else behind.gateway_url
    assert (await login_post(session, base, origin=base))[0] == 200
    status, page = await login_post(session, base, origin="https://elsewhere.example")
    assert status == 403 and "Origin checking failed" in page


async def chunked(data: bytes) -> Any:
    yield data


@pytest.mark.parametrize("via", ["registry", "gateway"])
async def test_a_chunked_collection_post_reaches_the_registry_with_a_content_length(
    aiohttp_server: ServerFactory, session: aiohttp.ClientSession, via: str
) -> None:
    behind = await start_behind(aiohttp_server)
    owner = behind.registry[STATE].user_named(USER)
    assert owner is not None
    body = json.dumps({"entity": str(owner.id), "name": f"chunked-{via}", "private": False}).encode()
    base = behind.registry_url if via == "registry" else behind.gateway_url
    async with session.post(
        f"{base}/v1/collections", data=chunked(body), headers={"Authorization": f"Bearer {TOKEN}"}
    ) as answer:
        status = answer.status
    if via == "registry":
        assert status == 500  # uWSGI hands Django an empty body (docs/protocol.md §9b G2)
    else:
        assert status == 200
        assert behind.registry[STATE].collection_named(f"chunked-{via}") is not None
    (seen,) = [r for r in behind.registry[REQUEST_LOG] if r.path == "/v1/collections"]
    assert seen.chunked == (via == "registry")


async def test_discovery_keeps_the_registrys_security_headers_and_names_the_gateway_as_issuer(
    aiohttp_server: ServerFactory, session: aiohttp.ClientSession
) -> None:
    behind = await start_behind(aiohttp_server)
    async with session.get(f"{behind.gateway_url}/assets/config/config.prod.json") as response:
        assert response.status == 200
        headers = response.headers
        document = json.loads(await response.read())
    assert headers["X-Frame-Options"] == "DENY"
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["Referrer-Policy"] == "same-origin"
    assert headers["Cross-Origin-Opener-Policy"] == "same-origin"
    assert headers["Content-Type"].startswith("application/json")  # the rewritten body, not the registry's text/html
    assert document["auth"]["issuer"] == behind.gateway_url
    assert document["libraryAPI"]["uri"] == behind.gateway_url
