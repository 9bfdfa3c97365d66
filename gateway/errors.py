"""The gateway's one error hierarchy.

Handlers raise; one place (Gateway.error_answer in gateway.app) renders every GatewayError as
``{"error":{"code":<status>,"message":"..."}}``, the shape the library client prints.

    GatewayError                     500
    ├── InvalidRequest               400  malformed JSON, bad field, part out of range
    │   ├── Unauthorized             401
    │   ├── Forbidden                403
    │   ├── NotFound                 404  only where the protocol gives 404 a meaning
    │   ├── MethodNotAllowed         405
    │   ├── Conflict                 409  the upload is in a state that refuses this step
    │   ├── Gone                     410  the upload token expired
    │   ├── PayloadTooLarge          413
    │   └── UpstreamRefused          4xx  the registry said no; its status is passed on
    ├── UpstreamUnavailable          502
    │   └── RelayFailed              502/504  the relay PUT of an assembled image failed; says if a retry can work
    ├── StorageUnavailable           503  S3 down, erroring or refusing the gateway (gateway.storage_errors)
    ├── NotReady                     503  readiness probe: the registry or S3 is not reachable
    └── UpstreamTimeout              504
"""

from __future__ import annotations

__all__ = [
    "Conflict",
    "Forbidden",
    "GatewayError",
    "Gone",
    "InvalidRequest",
    "MethodNotAllowed",
    "NotFound",
    "NotReady",
    "PayloadTooLarge",
    "RelayFailed",
    "StorageUnavailable",
    "Unauthorized",
    "UpstreamRefused",
    "UpstreamTimeout",
    "UpstreamUnavailable",
]


class GatewayError(Exception):
    status = 500

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status


class InvalidRequest(GatewayError):
    status = 400


class Unauthorized(InvalidRequest):
    status = 401


class Forbidden(InvalidRequest):
    status = 403


class NotFound(InvalidRequest):
    status = 404


class MethodNotAllowed(InvalidRequest):
    status = 405


class Conflict(InvalidRequest):
    status = 409


class Gone(InvalidRequest):
    status = 410


class PayloadTooLarge(InvalidRequest):
    status = 413


class UpstreamRefused(InvalidRequest):
    """The registry refused; its 4xx status is passed on to the client unchanged."""


class UpstreamUnavailable(GatewayError):
    status = 502


class RelayFailed(UpstreamUnavailable):
    """Streaming an assembled image to the registry's upload URL failed. ``retryable``: the host may take it later
    (5xx, timeout, connection cut); not: it never will as configured (name does not resolve, connection refused,
    TLS refused, 4xx)."""

    def __init__(self, message: str, *, retryable: bool, status: int | None = None) -> None:
        super().__init__(message, status=status)
        self.retryable = retryable


class StorageUnavailable(GatewayError):
    status = 503


class NotReady(GatewayError):
    status = 503


class UpstreamTimeout(GatewayError):
    status = 504
