"""Wiring: the aiohttp application, its long-lived clients, and the one place errors become JSON answers."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime

import aiohttp
from aiohttp import web
from aiohttp.typedefs import Handler
from yarl import URL

from .config import Config
from .errors import GatewayError, StorageUnavailable, UpstreamTimeout, UpstreamUnavailable
from .logs import REQUEST_ID, request_id_from
from .metrics import Metrics
from .proxy import Forwarder
from .registry import Registry
from .routes import Handlers, loggable_path, route_class
from .s3 import S3Client, S3Settings
from .service import UploadService
from .sigv4 import Credentials, Signer
from .sweeper import run_periodically
from .tokens import TokenSealer

__all__ = ["CONFIG", "SERVICE", "create_app", "error_middleware", "error_response"]

log = logging.getLogger("gateway.app")
access_log = logging.getLogger("gateway.access")

CONFIG = web.AppKey("config", Config)
SERVICE = web.AppKey("service", UploadService)
HANDLERS = web.AppKey("handlers", Handlers)
METRICS = web.AppKey("metrics", Metrics)


def error_response(status: int, message: str) -> web.Response:
    return web.json_response({"error": {"code": status, "message": message}}, status=status)


@web.middleware
async def observe_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Request id (taken or made, passed upstream, echoed back), one JSON log line and metrics per request."""
    started = time.perf_counter()
    request_id = request_id_from(request.headers.get("X-Request-Id"))
    REQUEST_ID.set(request_id)  # the forwarder and the registry calls send it upstream
    status = "error"
    try:
        response = await handler(request)
        status = str(response.status)
        if not response.prepared:
            response.headers["X-Request-Id"] = request_id
        return response
    finally:
        elapsed = time.perf_counter() - started
        route = route_class(request.method, request.raw_path)
        metrics = request.app[METRICS]
        metrics.requests.inc(route=route, status=status)
        metrics.latency.observe(elapsed, route=route)
        access_log.info(
            "request",
            extra={
                "method": request.method,
                "route": route,
                "path": loggable_path(request.raw_path),
                "status": status,
                "ms": round(elapsed * 1000, 2),
                "remote": request.remote,
            },
        )


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except GatewayError as exc:
        if isinstance(exc, UpstreamUnavailable | UpstreamTimeout):
            request.app[METRICS].upstream_errors.inc(kind=type(exc).__name__)
        elif isinstance(exc, StorageUnavailable):
            request.app[METRICS].s3_errors.inc(kind=type(exc).__name__)
        if exc.status >= 500:
            log.warning("%s %s failed: %s", request.method, loggable_path(request.raw_path), exc.message)
        return error_response(exc.status, exc.message)
    except web.HTTPException as exc:  # aiohttp's own 404/405/413... in the library's error shape
        if exc.status < 400:
            raise
        return error_response(exc.status, exc.reason)
    except Exception:
        log.exception("unexpected error on %s %s", request.method, loggable_path(request.raw_path))
        return error_response(500, "internal gateway error")


def s3_settings(config: Config) -> S3Settings:
    s3 = config.s3
    return S3Settings(
        endpoint=s3.internal_endpoint,
        region=s3.region,
        access_key=s3.access_key,
        secret_key=s3.secret_key,
        verify_tls=s3.verify_tls,
        ca_bundle=s3.ca_bundle,
        connect_timeout_s=s3.connect_timeout_seconds,
        read_timeout_s=s3.read_timeout_seconds,
    )


def create_app(config: Config, *, clock: Callable[[], datetime] | None = None) -> web.Application:
    """The gateway app; clients are created on startup and closed on cleanup. Start-up never calls out."""
    now = clock or (lambda: datetime.now(UTC))
    app = web.Application(middlewares=[observe_middleware, error_middleware], handler_args={"max_field_size": 16384})
    app[CONFIG] = config
    app[METRICS] = metrics = Metrics()

    async def clients(app: web.Application) -> AsyncIterator[None]:
        upstream_session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=config.upstream.pool_size),
            timeout=aiohttp.ClientTimeout(total=None, connect=config.upstream.connect_timeout_seconds),
            auto_decompress=False,
            cookie_jar=aiohttp.DummyCookieJar(),
        )
        s3 = S3Client(s3_settings(config), clock=now)
        try:
            upstream = URL(config.upstream.url)
            registry = Registry(upstream_session, upstream, read_timeout_s=config.upstream.read_timeout_seconds)
            service = UploadService(
                config,
                s3=s3,
                registry=registry,
                signer=Signer(Credentials(config.s3.access_key, config.s3.secret_key), config.s3.region),
                sealer=TokenSealer(config.uploads.token_secret, config.uploads.previous_token_secrets),
                clock=now,
                metrics=metrics,
            )
            forwarder = Forwarder.from_config(config, rewrite_location=service.rewrite_location)
            app[SERVICE] = service
            app[HANDLERS] = Handlers(service, forwarder)
            sweeping = None
            if config.uploads.sweep_interval_seconds > 0:
                sweeping = asyncio.create_task(
                    run_periodically(
                        s3,
                        bucket=config.s3.bucket,
                        staging_prefix=config.uploads.staging_prefix,
                        interval_s=config.uploads.sweep_interval_seconds,
                        grace_s=config.uploads.sweep_grace_seconds,
                        clock=now,
                    )
                )
            yield
            if sweeping is not None:
                sweeping.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await sweeping
        finally:
            if HANDLERS in app:
                await app[HANDLERS].forwarder.close()
            await s3.close()
            await upstream_session.close()

    async def dispatch(request: web.Request) -> web.StreamResponse:
        return await request.app[HANDLERS].dispatch(request)

    app.cleanup_ctx.append(clients)
    # (?s): a path with an encoded newline (%0A) must reach dispatch too, not the router's own 404.
    app.router.add_route("*", "/{tail:(?s:.*)}", dispatch)
    return app
