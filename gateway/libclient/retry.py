"""Bounded retries with exponential backoff, and what counts as worth another try."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final, TypeVar

from .errors import ApiError, ObjectStoreError, TransportError

__all__ = ["RetryPolicy", "is_retryable", "with_retries"]

T = TypeVar("T")

# Object-store answers that another attempt (with a freshly presigned URL) can turn into a success.
_RETRYABLE_STORE_STATUSES: Final = frozenset({403, 408, 429})  # 403: an expired URL or a skewed clock
_RETRYABLE_STORE_CODES: Final = frozenset(
    {"RequestTimeout", "IncompleteBody", "XAmzContentSHA256Mismatch", "BadDigest", "ExpiredToken"}
)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    attempts: int = 4
    base_delay_s: float = 0.5
    max_delay_s: float = 8.0

    def delay_s(self, failed_attempt: int) -> float:
        """Full-range jitter over an exponential ceiling, so parallel parts don't retry in step."""
        ceiling = min(self.max_delay_s, self.base_delay_s * 2 ** (failed_attempt - 1))
        return random.uniform(ceiling / 2, ceiling) if ceiling > 0 else 0.0


def is_retryable(exc: BaseException) -> bool:
    """Network trouble, transient object-store failures (an expired URL is re-presigned, a body damaged on the way
    is sent again) and server-side API failures. Everything else (a 404: the upload is gone; 413; API 4xx) is final.
    """
    if isinstance(exc, TransportError):
        return True
    if isinstance(exc, ObjectStoreError):
        return exc.status >= 500 or exc.status in _RETRYABLE_STORE_STATUSES or exc.code in _RETRYABLE_STORE_CODES
    if isinstance(exc, ApiError):
        return exc.status >= 500 or exc.status in (408, 429)
    return False


async def with_retries(
    operation: Callable[[int], Awaitable[T]],
    policy: RetryPolicy,
    *,
    on_retry: Callable[[int, BaseException], None] | None = None,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> T:
    """Run ``operation(attempt)`` until it succeeds, fails for good, or ``policy.attempts`` are used up."""
    attempt = 1
    while True:
        try:
            return await operation(attempt)
        except Exception as exc:
            if attempt >= policy.attempts or not is_retryable(exc):
                raise
            if on_retry is not None:
                on_retry(attempt, exc)
            await sleep(policy.delay_s(attempt))
            attempt += 1
