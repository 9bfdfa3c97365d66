"""What every target shares: the one outcome allowed besides success."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from gateway.core.errors import GatewayError

__all__ = ["ClientError", "refused_as_client_error"]

T = TypeVar("T")


class ClientError(Exception):
    """Marker: the call answered a 4xx, which is the allowed way to refuse input."""


def refused_as_client_error(call: Callable[[], T]) -> T | ClientError:
    """``call()``'s result, or a ClientError when it refused with a 4xx GatewayError.

    Anything else propagates, and atheris reports it as a crash: a 5xx GatewayError (the gateway would answer
    500 for bad input), or any other exception (the error middleware would turn it into a 500).
    """
    try:
        return call()
    except GatewayError as exc:
        if not 400 <= exc.status < 500:
            raise
        return ClientError(f"{exc.status}: {exc.message}")
