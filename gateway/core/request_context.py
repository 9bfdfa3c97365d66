"""What the request being served carries to every layer below the handler. Pure: a context variable, no I/O."""

from __future__ import annotations

from contextvars import ContextVar

__all__ = ["REQUEST_ID"]

# The X-Request-Id of the request being served: sent upstream with every call made for it, on every log line.
REQUEST_ID: ContextVar[str] = ContextVar("request_id", default="")
