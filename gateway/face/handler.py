"""Wiring: the gateway's one request handler, the long-lived clients it owns, and the one place errors become
JSON answers.

The gateway routes on the raw path itself (route_table.py, routes.py), so it runs on aiohttp's low-level server
(:class:`GatewayRunner`) rather than a ``web.Application``: the application layer's router and middleware chain
cost about a third of a forwarded request's own CPU time here and do nothing the gateway uses.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from ..core.config import Config
from ..core.errors import GatewayError, StorageUnavailable, UpstreamTimeout, UpstreamUnavailable
from ..core.request_context import REQUEST_ID
from ..core.route_table import Route, classify, loggable_path
from ..core.sigv4 import Credentials, Signer
from ..core.tokens import TokenSealer
from ..edges.forwarder import Forwarder, close_if_body_unread
from ..edges.registry_client import RegistryClient
from ..edges.s3 import S3Client, S3Settings
from ..ops.logs import ACCESS_LOG, UPLOAD_FIELDS, request_id_from
from ..ops.metrics import Metrics
from ..ops.sweeper import run_periodically
from .connections import ConnectionLimits, GatewayServer
from .legacy_upload import LegacyUpload
from .locations import LocationPolicy
from .mode_log import ModeLog
from .readiness import Readiness
from .routes import Router
from .uploads import UploadSteps

__all__ = ["Gateway", "GatewayRunner", "error_response"]

log = logging.getLogger("gateway.app")

# aiohttp's low-level server options: a client that hangs up cancels its handler (so the forwarder drops the
# upstream request too); the gateway writes its own access log; long Authorization headers fit.
SERVER_OPTIONS: dict[str, Any] = {"handler_cancellation": True, "access_log": None, "max_field_size": 16384}


def error_response(status: int, message: str) -> web.Response:
    return web.json_response({"error": {"code": status, "message": message}}, status=status)


class Gateway:
    """Answers every request: takes or makes its request id, dispatches it (routes.py), turns errors into the
    library's JSON error shape, and counts and logs it. ``start`` creates the clients (it never calls out),
    ``close`` closes them."""

    def __init__(self, config: Config, *, clock: Callable[[], datetime] | None = None) -> None:
        self.config = config
        self.metrics = Metrics()
        self._now = clock or (lambda: datetime.now(UTC))
        self._router: Router | None = None
        self._closing: list[Callable[[], Awaitable[None]]] = []
        self._sweeping: asyncio.Task[None] | None = None

    @property
    def router(self) -> Router:
        if self._router is None:
            raise RuntimeError("the gateway is not started")
        return self._router

    async def start(self) -> None:
        config = self.config
        s3 = S3Client(S3Settings.of(config.s3), clock=self._now)
        self._closing.append(s3.close)
        signer = Signer(Credentials(config.s3.access_key, config.s3.secret_key), config.s3.region)
        locations = LocationPolicy(config, signer=signer, clock=self._now, metrics=self.metrics)
        modes = ModeLog(self.metrics)
        forwarder = Forwarder.from_config(config, rewrite_location=locations.public_location)
        self._closing.append(forwarder.close)
        registry = RegistryClient.from_config(config, forwarder)  # its JSON calls share the forwarder's pool
        self._closing.append(registry.close)
        uploads = UploadSteps(
            config=config,
            s3=s3,
            registry=registry,
            signer=signer,
            sealer=TokenSealer(config.uploads.token_secret, config.uploads.previous_token_secrets),
            clock=self._now,
            metrics=self.metrics,
            locations=locations,
            modes=modes,
        )
        legacy = LegacyUpload(
            locations=locations,
            url_expiry_s=config.uploads.url_expiry_seconds,
            signer=signer,
            clock=self._now,
            metrics=self.metrics,
            modes=modes,
        )
        self._router = Router(
            config=config,
            uploads=uploads,
            legacy=legacy,
            locations=locations,
            readiness=Readiness(registry=registry, s3=s3, bucket=config.s3.bucket),
            registry=registry,
            s3=s3,
            metrics=self.metrics,
            forwarder=forwarder,
        )
        if config.uploads.sweep_interval_seconds > 0:
            self._sweeping = asyncio.create_task(
                run_periodically(
                    s3,
                    bucket=config.s3.bucket,
                    staging_prefix=config.uploads.staging_prefix,
                    interval_s=config.uploads.sweep_interval_seconds,
                    grace_s=config.uploads.sweep_grace_seconds,
                    clock=self._now,
                )
            )

    async def close(self) -> None:
        if self._sweeping is not None:
            self._sweeping.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeping
        while self._closing:
            await self._closing.pop()()

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        started = time.perf_counter()
        request_id = request_id_from(request.headers.get("X-Request-Id"))
        REQUEST_ID.set(request_id)  # the forwarder and the registry calls send it upstream
        status = "error"  # stays so when the client goes away mid-request
        route = classify(request.method, request.raw_path)
        upload: dict[str, object] | None = None
        if route.image_id:  # an upload route: its access line also says what the handler learnt (note_upload)
            upload = {"image_id": route.image_id[:128]}
            UPLOAD_FIELDS.set(upload)
        try:
            try:
                response = await self.router.dispatch(request, route)
            except Exception as exc:
                response = self.error_answer(request, exc)
            status = str(response.status)
            if not response.prepared:
                response.headers["X-Request-Id"] = request_id
                close_if_body_unread(request, response)
            return response
        finally:
            self.observe(request, route, status, time.perf_counter() - started, upload)

    def error_answer(self, request: web.BaseRequest, exc: Exception) -> web.Response:
        if isinstance(exc, GatewayError):
            if isinstance(exc, UpstreamUnavailable | UpstreamTimeout):
                self.metrics.upstream_errors.inc(kind=type(exc).__name__)
            elif isinstance(exc, StorageUnavailable):
                self.metrics.s3_errors.inc(kind=type(exc).__name__)
            if exc.status >= 500:
                log.warning("%s %s failed: %s", request.method, loggable_path(request.raw_path), exc.message)
            return error_response(exc.status, exc.message)
        if isinstance(exc, web.HTTPException) and exc.status >= 400:  # aiohttp's own, in the library's shape
            return error_response(exc.status, exc.reason)
        log.exception("unexpected error on %s %s", request.method, loggable_path(request.raw_path), exc_info=exc)
        return error_response(500, "internal gateway error")

    def observe(
        self, request: web.BaseRequest, route: Route, status: str, elapsed: float, upload: dict[str, object] | None
    ) -> None:
        """Count the request and write its access line: one line per request, an upload route's included (it
        carries the image id and the route's own fields, such as ``mode`` and ``part``)."""
        self.metrics.answered(route.name, status, elapsed)
        if ACCESS_LOG.enabled():  # the remote address and the path cost more than the check
            path = loggable_path(route.path)  # the route has the query cut off already
            ACCESS_LOG.request(request.method, route.name, path, status, elapsed, request.remote, upload)


class GatewayRunner(web.BaseRunner):
    """Serves a :class:`Gateway` on aiohttp's low-level server (sites as for any runner): ``setup`` starts the
    gateway, ``cleanup`` stops accepting, lets in-flight requests finish within ``shutdown_timeout``, then
    closes it."""

    def __init__(self, gateway: Gateway, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.gateway = gateway

    async def shutdown(self) -> None:
        pass  # nothing to tell before in-flight requests drain

    async def _make_server(self) -> web.Server:
        await self.gateway.start()
        server = self.gateway.config.server
        # aiohttp's own default keeps an idle client connection 3630 s; the deploy templates assume 75 s.
        keepalive = {"keepalive_timeout": server.keepalive_seconds}
        limits = ConnectionLimits(
            header_timeout_s=server.header_timeout_seconds,
            max_connections=server.max_connections,
            write_timeout_s=server.client_write_timeout_seconds,
        )
        return GatewayServer(
            self.gateway.handle,
            limits=limits,
            closed=self.gateway.metrics.connections_closed,
            **(SERVER_OPTIONS | keepalive | self._kwargs),
        )

    async def _cleanup_server(self) -> None:
        await self.gateway.close()
