"""Shared fixtures: real S3 servers, the real Apptainer client, a plain HTTP session."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest

pytest_plugins = ["tests.s3_fixtures", "tests.realclient_fixtures"]


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    """A plain HTTP client session for a test (closed after it)."""
    async with aiohttp.ClientSession() as session:
        yield session
