"""Shared fixtures: real S3 servers, the real Apptainer client, a plain HTTP session."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import BaseTestServer

from gateway.face.handler import Gateway
from tests.support.gateway_fixtures import make_test_server

pytest_plugins = ["tests.support.s3_fixtures", "tests.support.realclient_fixtures"]


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    """A plain HTTP client session for a test (closed after it)."""
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def aiohttp_server(
    aiohttp_server: Callable[..., Awaitable[BaseTestServer]],
) -> AsyncIterator[Callable[..., Awaitable[BaseTestServer]]]:
    """pytest-aiohttp's server factory, which also serves a :class:`Gateway` the way production does
    (``GatewayTestServer``); servers are closed after the test either way."""
    gateways: list[BaseTestServer] = []

    async def serve(app: web.Application | Gateway, *, port: int | None = None, **kwargs: Any) -> BaseTestServer:
        if isinstance(app, web.Application):
            return await aiohttp_server(app, port=port, **kwargs)
        server = make_test_server(app, host="127.0.0.1", port=port)
        await server.start_server(**kwargs)
        gateways.append(server)
        return server

    yield serve
    for server in reversed(gateways):
        await server.close()
