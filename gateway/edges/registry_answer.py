"""The registry's answer to one request, read whole: what the forwarder's fetch and call return and the registry
client hands on. (``core.http1.ResponseHead`` is only its parsed head.)"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from multidict import CIMultiDict

__all__ = ["RegistryAnswer"]


@dataclass(frozen=True)
class RegistryAnswer:
    """Status line, the headers as the client would get them, and the body (at most 1 MiB: the few answers the
    gateway reads or edits)."""

    status: int
    reason: str
    headers: CIMultiDict[str]
    body: bytes

    @cached_property
    def json(self) -> Any:
        """The decoded body whatever its Content-Type (sregistry sends JSON as text/html, G5), or None when it is
        not JSON. Decoded once: an edit to it is what a caller sends on."""
        try:
            return json.loads(self.body) if self.body else None
        except (ValueError, UnicodeDecodeError):
            return None
