"""Small facts about presigned object-store requests. Pure."""

from __future__ import annotations

import re
from urllib.parse import parse_qs, urlsplit

from yarl import URL

__all__ = ["as_sent", "error_detail", "is_presigned", "same_origin", "signs_content_sha256"]

_CODE = re.compile(rb"<Code>([^<]{1,100})</Code>")


def as_sent(url: str) -> URL:
    """The URL exactly as the server signed it: yarl would otherwise decode ``%3A`` in the path and ``%2F`` in the
    query (the Go client sends a parsed URL's original escaping)."""
    return URL(url, encoded=True)


def error_detail(body: bytes) -> str:
    """The S3 error code of an XML error body (``SignatureDoesNotMatch``, ``XAmzContentSHA256Mismatch``), or ''."""
    match = _CODE.search(body)
    return match[1].decode("ascii", "replace") if match else ""


def signs_content_sha256(url: str) -> bool:
    """Whether ``X-Amz-SignedHeaders`` lists x-amz-content-sha256: the real client then sends the header on a
    legacy single PUT, and only then."""
    values = parse_qs(urlsplit(url).query).get("X-Amz-SignedHeaders", [])
    return bool(values) and "x-amz-content-sha256" in values[0].split(";")


def same_origin(first: str, second: str) -> bool:
    """Scheme, host and port equal (default ports filled in): where a token may follow a redirect."""
    a, b = urlsplit(first), urlsplit(second)
    defaults = {"http": 80, "https": 443}
    try:
        a_port = a.port or defaults.get(a.scheme)
        b_port = b.port or defaults.get(b.scheme)
    except ValueError:
        return False
    return (a.scheme, (a.hostname or "").lower(), a_port) == (b.scheme, (b.hostname or "").lower(), b_port)


def is_presigned(url: str) -> bool:
    """A URL that authenticates itself (SigV4 or SigV2 query signature): it must not also get a token."""
    query = parse_qs(urlsplit(url).query)
    return "X-Amz-Signature" in query or "Signature" in query
