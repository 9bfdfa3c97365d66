"""Running the app: bind, serve, and shut down gracefully on SIGTERM/SIGINT."""

from __future__ import annotations

import logging

from aiohttp import web

from .app import create_app
from .config import Config, masked
from .logs import setup_logging

__all__ = ["serve"]

log = logging.getLogger("gateway.server")


def serve(config: Config) -> None:
    setup_logging(config.server.log_level)
    log.info("starting", extra={"event": "start", "config": masked(config)})
    # run_app stops accepting on SIGTERM/SIGINT and lets in-flight requests finish within the grace period.
    web.run_app(
        create_app(config),
        host=config.server.host,
        port=config.server.port,
        shutdown_timeout=config.server.shutdown_grace_seconds,
        access_log=None,
        print=None,
        handle_signals=True,
    )
