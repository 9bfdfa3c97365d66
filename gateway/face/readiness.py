"""Readiness: whether the registry and S3 answer, for ``/_gateway/readyz``; cached briefly so probes cost little."""

from __future__ import annotations

import time

from multidict import CIMultiDict

from ..core.errors import GatewayError
from ..edges.registry_client import RegistryClient
from ..edges.s3 import S3Client, S3Error

__all__ = ["Readiness"]


class Readiness:
    def __init__(self, *, registry: RegistryClient, s3: S3Client, bucket: str) -> None:
        self.registry = registry
        self.s3 = s3
        self.bucket = bucket
        self._last: tuple[float, str | None] = (float("-inf"), None)  # (monotonic time checked, reason)

    async def not_ready_reason(self, *, max_age_s: float = 5.0) -> str | None:
        """None when the registry and S3 answer, else why not."""
        checked_at, reason = self._last
        now = time.monotonic()
        if now - checked_at < max_age_s:
            return reason
        reason = await self._check()
        self._last = (time.monotonic(), reason)
        return reason

    async def _check(self) -> str | None:
        try:
            answer = await self.registry.call("GET", "/version", headers=CIMultiDict(), body=b"")
        except GatewayError as exc:
            return f"registry: {exc.message}"
        if answer.status >= 500:
            return f"registry: /version answered {answer.status}"
        try:
            if not await self.s3.head_bucket(self.bucket):
                return f"s3: bucket {self.bucket!r} not found or not accessible"
        except S3Error as exc:
            return f"s3: {exc}"
        return None
