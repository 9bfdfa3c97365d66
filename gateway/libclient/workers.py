"""A fixed pool of worker coroutines that stops at the first failure and re-raises it unwrapped."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

__all__ = ["run_workers"]


async def run_workers(count: int, worker: Callable[[], Awaitable[None]]) -> None:
    """Run ``count`` copies of ``worker``; the first exception cancels the others and propagates as itself.

    (A TaskGroup would wrap it in an ExceptionGroup; callers here decide on the failure's type.)
    """
    tasks = [asyncio.ensure_future(worker()) for _ in range(max(count, 1))]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    for task in tasks:
        if task in done and not task.cancelled() and task.exception() is not None:
            failure = task.exception()
            assert failure is not None
            raise failure
