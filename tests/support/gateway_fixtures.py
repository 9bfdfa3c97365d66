"""Building a gateway config and serving it for tests: one place, so every test states only what differs."""

from __future__ import annotations

import os
from dataclasses import asdict, fields, replace
from typing import Any

from aiohttp import web
from aiohttp.test_utils import BaseTestServer, TestServer
from aiohttp.web import BaseRunner

from gateway.core.config import Config, load_config
from gateway.face.handler import Gateway, GatewayRunner

TOKEN_SECRET = "test-token-secret-0123456789"


def gateway_variables(
    *,
    upstream_url: str,
    s3_endpoint: str = "http://127.0.0.1:9",
    external_endpoint: str | None = None,
    access_key: str = "AKIDEXAMPLE",
    secret_key: str = "secret-secret",
    public_url: str = "http://127.0.0.1:8080",
) -> dict[str, str]:
    """The GATEWAY_* variables of a minimal valid config: what tests start from, in a process or in this one."""
    return {
        "GATEWAY_UPSTREAM_URL": upstream_url,
        "GATEWAY_SERVER_PUBLIC_URL": public_url,
        "GATEWAY_S3_INTERNAL_ENDPOINT": s3_endpoint,
        "GATEWAY_S3_EXTERNAL_ENDPOINT": external_endpoint or s3_endpoint,
        "GATEWAY_S3_ACCESS_KEY": access_key,
        "GATEWAY_S3_SECRET_KEY": secret_key,
        "GATEWAY_UPLOADS_TOKEN_SECRET": TOKEN_SECRET,
    }


def gateway_config(*, upstream_url: str, **options: Any) -> Config:
    """A validated Config: ``options`` are gateway_variables' keywords, or sections whose fields they override,
    e.g. ``uploads={"multipart": False}``."""
    sections = {name: value for name, value in options.items() if isinstance(value, dict)}
    variables = {name: value for name, value in options.items() if not isinstance(value, dict)}
    env = gateway_variables(upstream_url=upstream_url, **variables)
    config = load_config(None, env)
    for name, values in sections.items():
        config = replace(config, **{name: replace(getattr(config, name), **values)})
    return config


def gateway_env(config: Config) -> dict[str, str]:
    """This process's environment without GATEWAY_* variables, plus ``config`` as GATEWAY_* variables: what a
    `signing-gateway serve|sweep` subprocess needs to run with exactly this config."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("GATEWAY_")}
    for section in fields(config):
        for key, value in asdict(getattr(config, section.name)).items():
            if isinstance(value, list):
                text = ",".join(value)
            elif isinstance(value, bool):
                text = "true" if value else "false"
            else:
                text = str(value)
            env[f"GATEWAY_{section.name}_{key}".upper()] = text
    return env


class GatewayTestServer(BaseTestServer):
    """aiohttp's test server around a gateway, run by the production runner (GatewayRunner): usable with the
    ``aiohttp_client`` fixture, or started on a port with the ``aiohttp_server`` fixture (conftest.py)."""

    def __init__(self, gateway: Gateway, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.gateway = gateway

    async def _make_runner(self, **kwargs: Any) -> BaseRunner:
        return GatewayRunner(self.gateway, **kwargs)


def make_test_server(app: web.Application | Gateway, **kwargs: Any) -> BaseTestServer:
    """aiohttp's TestServer for an app (the registry fake, an upstream), GatewayTestServer for a gateway."""
    return TestServer(app, **kwargs) if isinstance(app, web.Application) else GatewayTestServer(app, **kwargs)
