"""pytest plugin: real S3 servers, started once per session (add "tests.support.s3_fixtures" to pytest_plugins).

Fixtures:
    radosgw    -- RadosGW, strict (checks the body against the declared sha256); bucket BUCKET exists
    seaweedfs  -- SeaweedFS, fast; bucket BUCKET exists
    s3_server  -- each of the two in turn (ids "radosgw", "seaweedfs"); a server starts only when first used

A server that cannot start fails the tests that use it (never a skip).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TypeVar

import pytest

from tests.support.s3servers import RadosGW, S3Server, SeaweedFS

BUCKET = "sregistry"

ServerT = TypeVar("ServerT", bound=S3Server)


@contextmanager
def serving(server: ServerT) -> Iterator[ServerT]:
    """The server started, with BUCKET created; stopped (processes and temp dir gone) on exit."""
    server.start()
    try:
        server.create_bucket(BUCKET)
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def radosgw() -> Iterator[RadosGW]:
    with serving(RadosGW()) as server:
        yield server


@pytest.fixture(scope="session")
def seaweedfs() -> Iterator[SeaweedFS]:
    with serving(SeaweedFS()) as server:
        yield server


@pytest.fixture(scope="session", params=["radosgw", "seaweedfs"], ids=["radosgw", "seaweedfs"])
def s3_server(request: pytest.FixtureRequest) -> S3Server:
    server: S3Server = request.getfixturevalue(request.param)
    return server
