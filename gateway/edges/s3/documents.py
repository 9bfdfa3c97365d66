"""S3's XML documents, read and written. Pure: no I/O.

Readers take a parsed root and raise :class:`Malformed` (with the reason) for a document the client cannot
use; the client turns that into an S3ServerError naming the operation. Namespaces are ignored: S3 servers
write documents with and without ``xmlns``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Generic, TypeVar
from xml.etree import ElementTree
from xml.sax.saxutils import escape as xml_escape

from ...core.etags import MAX_ETAG_LENGTH, is_plausible_etag, normalise_etag
from ...core.plan import MAX_PARTS
from .errors import InvalidETag, InvalidPartList
from .values import MultipartUpload, ObjectSummary, Part

__all__ = [
    "MAX_ETAG_LENGTH",
    "Malformed",
    "Page",
    "complete_body",
    "completed_object",
    "error_fields",
    "error_fields_of",
    "http_date",
    "is_error_document",
    "normalise_etag",
    "objects_page",
    "parts_page",
    "upload_id_of",
    "uploads_page",
    "validated_etag",
    "xml_root",
]


T = TypeVar("T")


class Malformed(ValueError):
    """A document without what the operation needs; the message is the reason."""


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    """One page of a listing: its items, whether more follow, and the marker(s) S3 gave for the next page."""

    items: list[T]
    truncated: bool
    next_marker: tuple[str, ...]


def validated_etag(value: str) -> str:
    """A part's ETag, quotes optional, checked to be a plausible ETag; returned bare."""
    bare = normalise_etag(value)
    if not is_plausible_etag(bare):
        raise InvalidETag(f"not a plausible ETag: {value[: MAX_ETAG_LENGTH + 2]!r}")
    return bare


def complete_body(parts: Sequence[tuple[int, str]]) -> bytes:
    """The CompleteMultipartUpload document; parts are sorted, numbers 1..10000 and unique, ETags validated."""
    if not parts:
        raise InvalidPartList("a multipart upload needs at least one part")
    ordered = sorted(parts, key=lambda part: part[0])
    previous = 0
    for number, _ in ordered:
        if not 1 <= number <= MAX_PARTS:
            raise InvalidPartList(f"part number {number} is outside 1..{MAX_PARTS}")
        if number == previous:
            raise InvalidPartList(f"part number {number} is listed twice")
        previous = number
    items = "".join(
        f'<Part><PartNumber>{number}</PartNumber><ETag>"{xml_escape(validated_etag(etag))}"</ETag></Part>'
        for number, etag in ordered
    )
    return f'<?xml version="1.0" encoding="UTF-8"?><CompleteMultipartUpload>{items}</CompleteMultipartUpload>'.encode()


def xml_root(body: bytes) -> ElementTree.Element | None:
    """The parsed document, or None for an empty body or one that is not XML."""
    if not body.strip():
        return None
    try:
        return ElementTree.fromstring(body)
    except ElementTree.ParseError:
        return None


def is_error_document(root: ElementTree.Element) -> bool:
    return _local(root.tag) == "Error"


def error_fields_of(root: ElementTree.Element) -> dict[str, str]:
    """Code, Message, RequestId, Resource of an <Error> document."""
    return {_local(child.tag): (child.text or "").strip() for child in root}


def error_fields(body: bytes) -> dict[str, str]:
    """Code, Message, RequestId, Resource of an <Error> document; empty if the body is not one."""
    root = xml_root(body)
    if root is None or not is_error_document(root):
        return {}
    return error_fields_of(root)


def upload_id_of(root: ElementTree.Element) -> str:
    """CreateMultipartUpload's answer."""
    upload_id = _child_text(root, "UploadId")
    if not upload_id:
        raise Malformed("no UploadId in the answer")
    return upload_id


def completed_object(root: ElementTree.Element) -> tuple[str, str]:
    """CompleteMultipartUpload's answer: ``(etag, location)``, either may be empty (radosgw 16: no ETag)."""
    return normalise_etag(_child_text(root, "ETag")), _child_text(root, "Location")


def parts_page(root: ElementTree.Element) -> Page[Part]:
    """A ListParts page; ``next_marker`` is ``(NextPartNumberMarker,)``, taken from the last part if absent."""
    items = [_part(element) for element in _children(root, "Part")]
    marker = _child_text(root, "NextPartNumberMarker")
    if not marker.isdigit() and items:
        marker = str(items[-1].number)
    return Page(items, _is_truncated(root), (marker if marker.isdigit() else "",))


def uploads_page(root: ElementTree.Element) -> Page[MultipartUpload]:
    """A ListMultipartUploads page; ``next_marker`` is ``(NextKeyMarker, NextUploadIdMarker)``."""
    items = [
        MultipartUpload(
            key=_child_text(element, "Key"),
            upload_id=_child_text(element, "UploadId"),
            initiated=_timestamp(_child_text(element, "Initiated")),
        )
        for element in _children(root, "Upload")
    ]
    markers = (_child_text(root, "NextKeyMarker"), _child_text(root, "NextUploadIdMarker"))
    return Page(items, _is_truncated(root), markers)


def objects_page(root: ElementTree.Element) -> Page[ObjectSummary]:
    """A ListObjectsV2 page; ``next_marker`` is ``(NextContinuationToken,)``."""
    items = [
        ObjectSummary(
            key=_child_text(element, "Key"),
            size=_int_or_none(_child_text(element, "Size")) or 0,
            etag=normalise_etag(_child_text(element, "ETag")),
            last_modified=_timestamp(_child_text(element, "LastModified")),
        )
        for element in _children(root, "Contents")
    ]
    return Page(items, _is_truncated(root), (_child_text(root, "NextContinuationToken"),))


def http_date(text: str) -> datetime | None:
    """An RFC 7231 date as in Last-Modified."""
    try:
        return datetime.strptime(text, "%a, %d %b %Y %H:%M:%S GMT").replace(tzinfo=UTC)
    except ValueError:
        return None


def _part(element: ElementTree.Element) -> Part:
    number = _int_or_none(_child_text(element, "PartNumber"))
    size = _int_or_none(_child_text(element, "Size"))
    if number is None or size is None:
        raise Malformed("a Part without PartNumber or Size")
    return Part(number=number, etag=normalise_etag(_child_text(element, "ETag")), size=size)


def _local(tag: str) -> str:
    """A tag without its namespace."""
    return tag.rpartition("}")[2]


def _children(element: ElementTree.Element, name: str) -> list[ElementTree.Element]:
    return [child for child in element if _local(child.tag) == name]


def _child_text(element: ElementTree.Element, name: str) -> str:
    for child in element:
        if _local(child.tag) == name:
            return (child.text or "").strip()
    return ""


def _is_truncated(root: ElementTree.Element) -> bool:
    return _child_text(root, "IsTruncated").lower() == "true"


def _int_or_none(text: str) -> int | None:
    return int(text) if text.isdigit() else None


def _timestamp(text: str) -> datetime | None:
    """An ISO 8601 time as S3 lists write it (``2024-01-02T03:04:05.000Z``)."""
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
