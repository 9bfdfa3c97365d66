"""pytest plugin: the real Apptainer library client, built once per test session."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.realclient import RealClient, build_realclient


def _go_cache(config: pytest.Config, build_dir: Path) -> Path:
    """Reuse Go's build cache across sessions via pytest's cache dir (a cold build takes ~30 s, a warm one ~1 s).

    Go's cache is content-addressed and safe to share; without the cache provider the build stays cold.
    """
    cache = getattr(config, "cache", None)
    return cache.mkdir("realclient-gocache") if cache is not None else build_dir / "gocache"


@pytest.fixture(scope="session")
def realclient(tmp_path_factory: pytest.TempPathFactory, pytestconfig: pytest.Config) -> RealClient:
    """The Go tool, with request tracing on so a failing test's Result.stderr shows every HTTP exchange."""
    build_dir = tmp_path_factory.mktemp("realclient")
    return RealClient(build_realclient(build_dir, gocache=_go_cache(pytestconfig, build_dir)), trace=True)
