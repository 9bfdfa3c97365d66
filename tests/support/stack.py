"""The whole stack in one event loop: real S3 (a fixture), the sregistry fake, and the gateway in front of it,
each on a real loopback port, so the real Go client and plain HTTP clients can talk to them."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from aiohttp.test_utils import BaseTestServer

from gateway.core.config import Config
from gateway.face.handler import Gateway
from tests.support.gateway_fixtures import gateway_config
from tests.support.processes import free_port
from tests.support.registry import REQUEST_LOG, STATE, Flavour, RegistrySettings, make_registry_app
from tests.support.s3servers import S3Server

TOKEN = "0123456789abcdef0123456789abcdef01234567"
USER = "alice"
OTHER_TOKEN = "fedcba9876543210fedcba9876543210fedcba98"
OTHER_USER = "bob"
MIB = 1024 * 1024

ServerFactory = Callable[..., Awaitable[BaseTestServer]]


@dataclass
class Stack:
    s3: S3Server
    registry: web.Application
    registry_url: str
    gateway: Gateway
    gateway_url: str
    config: Config
    flavour: Flavour = "s3"

    @property
    def requests_seen_by_registry(self) -> list[Any]:
        log: list[Any] = self.registry[REQUEST_LOG]
        return list(log)

    @property
    def registry_state(self) -> Any:
        return self.registry[STATE]


def unique_ref(prefix: str = "c") -> tuple[str, str, str]:
    """(entity, collection, container): collection names are global in sregistry, tag POSTs delete same names."""
    suffix = uuid.uuid4().hex[:10]
    return USER, f"{prefix}{suffix}", f"img{suffix}"


def add_public_image(registry: web.Application) -> None:
    """A pushed image in a public collection, as on any registry in use: its pull redirect shows which S3 origin
    the registry signs for (what ``signing-gateway doctor`` reads)."""
    state = registry[STATE]
    owner = state.user_named(USER)
    assert owner is not None
    collection = state.create_collection(f"public{uuid.uuid4().hex[:8]}", owner, private=False)
    state.create_image(collection, "image", f"sha256.{'ab' * 32}")


def registry_settings(s3: S3Server, registry_url: str, /, **overrides: Any) -> RegistrySettings:
    """The sregistry fake beside ``s3``, answering at ``registry_url``; ``overrides`` win over the defaults."""
    defaults: dict[str, Any] = {
        "users": {TOKEN: USER, OTHER_TOKEN: OTHER_USER},
        "domain_name": registry_url,
        "s3_endpoint": f"http://127.0.0.1:{s3.port}",
        # sregistry signs its URLs for MINIO_EXTERNAL_SERVER; here the internal name, as often misconfigured.
        "s3_external_server": f"127.0.0.1:{s3.port}",
        "access_key": s3.access_key,
        "secret_key": s3.secret_key,
        "region": s3.region,
    }
    return RegistrySettings(**(defaults | overrides))


async def start_registry(
    aiohttp_server: ServerFactory, s3: S3Server, /, *, flavour: Flavour = "s3", **settings: Any
) -> tuple[web.Application, str]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    app = make_registry_app(registry_settings(s3, url, flavour=flavour, **settings))
    await aiohttp_server(app, port=port)
    return app, url


def stack_config(s3: S3Server, /, *, registry_url: str, gateway_port: int, **sections: dict[str, Any]) -> Config:
    sections.setdefault("uploads", {})
    sections["uploads"] = {"part_size": 32 * MIB} | sections["uploads"]
    return gateway_config(
        upstream_url=registry_url,
        s3_endpoint=f"http://127.0.0.1:{s3.port}",
        # The same server under another host name: a URL signed for the wrong one fails.
        external_endpoint=f"http://localhost:{s3.port}",
        access_key=s3.access_key,
        secret_key=s3.secret_key,
        public_url=f"http://127.0.0.1:{gateway_port}",
        **sections,
    )


async def start_stack(
    aiohttp_server: ServerFactory,
    s3: S3Server,
    /,
    *,
    flavour: Flavour = "s3",
    registry_settings: dict[str, Any] | None = None,
    **sections: dict[str, Any],
) -> Stack:
    registry, registry_url = await start_registry(aiohttp_server, s3, flavour=flavour, **(registry_settings or {}))
    gateway_port = free_port()
    config = stack_config(s3, registry_url=registry_url, gateway_port=gateway_port, **sections)
    gateway = Gateway(config)
    await aiohttp_server(gateway, port=gateway_port)
    return Stack(s3, registry, registry_url, gateway, f"http://127.0.0.1:{gateway_port}", config, flavour)
