"""What the doctor reads out of an answer: the answer itself (status, headers, body capped) and the few
documents it looks into. Pure: bytes in, values out."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

from multidict import CIMultiDictProxy

from ...edges.s3 import error_fields

__all__ = ["Answer", "api_version", "first_public_image", "host_seen_by_server", "http_date", "is_healthy"]


@dataclass(frozen=True, slots=True)
class Answer:
    """An HTTP answer from the external endpoint or a plain URL, body capped."""

    status: int
    headers: CIMultiDictProxy[str]
    body: bytes

    @property
    def error(self) -> dict[str, str]:
        """The fields of an S3 ``<Error>`` document; empty when the body is not one."""
        return error_fields(self.body)

    @property
    def code(self) -> str:
        return self.error.get("Code", "")

    @property
    def summary(self) -> str:
        message = self.error.get("Message", "")
        return f"{self.status} {self.code}" + (f" ({message})" if message else "") if self.code else str(self.status)


def api_version(body: bytes) -> str | None:
    document = _json_object(body)
    data = document.get("data") if document is not None else None
    version = data.get("apiVersion") if isinstance(data, dict) else None
    return version if isinstance(version, str) and version else None


def first_public_image(body: bytes) -> str | None:
    """``collection/name:version`` of the first entry of sregistry's paginated public container list."""
    document = _json_object(body)
    results = document.get("results") if document is not None else None
    first = results[0] if isinstance(results, list) and results else None
    if not isinstance(first, dict):
        return None
    collection, name = first.get("collection"), first.get("name")
    version = first.get("version") or first.get("tag")
    if not all(isinstance(part, str) and part for part in (collection, name, version)):
        return None
    return f"{collection}/{name}:{version}"


def is_healthy(body: bytes) -> bool:
    document = _json_object(body)
    return document is not None and document.get("status") == "ok"


def _json_object(body: bytes) -> dict[str, Any] | None:
    """The body as a JSON object; None when it is not one."""
    try:
        document = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    return document if isinstance(document, dict) else None


def host_seen_by_server(canonical_request: str) -> str:
    """The ``host:`` line of the canonical request a server put in its SignatureDoesNotMatch answer."""
    for line in canonical_request.splitlines():
        if line.startswith("host:"):
            return line.removeprefix("host:")
    return ""


def http_date(text: str) -> datetime | None:
    try:
        parsed = parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
