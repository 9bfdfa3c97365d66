"""The request bodies of the intercepted routes, validated. Pure: no I/O.

Every client mistake becomes an InvalidRequest (400) here, before anything reaches S3 or the registry.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, NamedTuple

import orjson

from .config import DEFAULT_IMAGE_ID_PATTERN
from .errors import InvalidRequest
from .etags import is_plausible_etag, normalise_etag
from .plan import MAX_FILESIZE, MAX_PART_SIZE, MAX_PARTS

__all__ = [
    "AbortRequest",
    "CompleteRequest",
    "LegacyStartRequest",
    "PartRequest",
    "StartRequest",
    "check_image_id",
    "parse_flat_json_object",
    "parse_json_object",
]

_SAFE_IMAGE_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")
_DEFAULT_IMAGE_ID = re.compile(DEFAULT_IMAGE_ID_PATTERN)
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


def check_image_id(image_id: str, pattern: re.Pattern[str] = _DEFAULT_IMAGE_ID) -> str:
    """The id must be one the registry issues (``uploads.image_id_pattern``): an id it cannot parse makes
    sregistry fail with a 500 and still counts against its rate limits. The safe set bounds every pattern, as
    the id goes into paths, keys and log lines."""
    if not _SAFE_IMAGE_ID.fullmatch(image_id) or image_id in {".", ".."}:
        raise InvalidRequest("image id must match [A-Za-z0-9._-]{1,128}")
    if not pattern.fullmatch(image_id):
        raise InvalidRequest(f"image id must match {pattern.pattern} (uploads.image_id_pattern)")
    return image_id


def parse_json_object(body: bytes) -> dict[str, Any]:
    """The client sends JSON without a Content-Type; parse whatever arrives, refuse anything but an object."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise InvalidRequest("request body is not valid JSON") from None
    except RecursionError:  # "[[[[...": about a thousand brackets exceed the interpreter's recursion limit
        raise InvalidRequest("request body is nested too deeply") from None
    if not isinstance(data, dict):
        raise InvalidRequest("request body must be a JSON object")
    return data


def parse_flat_json_object(body: bytes) -> dict[str, Any]:
    """parse_json_object for bodies whose values are not objects or lists, with orjson: a fifth of the stdlib's
    cost (a part presign's hot path). What orjson refuses (other encodings, NaN, lone surrogate escapes) or reads
    otherwise (an integer past 64 bits becomes a float) goes to the stdlib parser, which decides as before."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return parse_json_object(body)
    if not isinstance(data, dict) or float in map(type, data.values()):
        return parse_json_object(body)
    return data


def _integer(data: dict[str, Any], name: str, *, low: int, high: int) -> int:
    value = data.get(name)
    if type(value) is not int:  # bool is not an int here
        raise InvalidRequest(f"{name}: expected an integer")
    if not low <= value <= high:
        raise InvalidRequest(f"{name}: must be within {low}..{high}")
    return value


def _string(data: dict[str, Any], name: str) -> str:
    value = data.get(name)
    if not isinstance(value, str) or not value:
        raise InvalidRequest(f"{name}: expected a non-empty string")
    return value


def _sha256(data: dict[str, Any], name: str) -> str:
    value = data.get(name)
    if not isinstance(value, str) or not _SHA256_HEX.fullmatch(value):
        raise InvalidRequest(f"{name}: expected 64 lowercase hex characters")
    return value


@dataclass(frozen=True, slots=True)
class StartRequest:
    filesize: int

    @classmethod
    def parse(cls, body: bytes) -> StartRequest:
        return cls(_integer(parse_flat_json_object(body), "filesize", low=1, high=MAX_FILESIZE))


class PartRequest(NamedTuple):
    """A tuple, not a frozen dataclass: made on every part presign, where the dataclass's field-by-field
    ``object.__setattr__`` cost a fifth of the parse."""

    upload_token: str
    part_number: int
    part_size: int
    sha256: str

    @classmethod
    def parse(cls, body: bytes) -> PartRequest:
        data = parse_flat_json_object(body)
        return cls(
            _string(data, "uploadID"),
            _integer(data, "partNumber", low=1, high=MAX_PARTS),
            _integer(data, "partSize", low=1, high=MAX_PART_SIZE),
            _sha256(data, "sha256sum"),
        )


@dataclass(frozen=True, slots=True)
class CompleteRequest:
    upload_token: str
    parts: tuple[tuple[int, str], ...]  # (part number, ETag without quotes), sorted

    @classmethod
    def parse(cls, body: bytes) -> CompleteRequest:
        data = parse_json_object(body)
        items = data.get("completedParts")
        if not isinstance(items, list) or not items:
            raise InvalidRequest("completedParts: expected a non-empty list")
        if len(items) > MAX_PARTS:
            raise InvalidRequest(f"completedParts: at most {MAX_PARTS} parts")
        parts: dict[int, str] = {}
        for item in items:
            if not isinstance(item, dict):
                raise InvalidRequest("completedParts: each entry must be an object")
            number = _integer(item, "partNumber", low=1, high=MAX_PARTS)
            if number in parts:
                raise InvalidRequest(f"completedParts: part {number} listed twice")
            parts[number] = _etag(item.get("token"))
        return cls(_string(data, "uploadID"), tuple(sorted(parts.items())))


def _etag(value: object) -> str:
    """The client keeps S3's ETag verbatim, quotes included (sregistry strips them); accept either."""
    if not isinstance(value, str):
        raise InvalidRequest("completedParts: token (the part's ETag) must be a string")
    bare = normalise_etag(value)
    if not is_plausible_etag(bare):
        raise InvalidRequest("completedParts: token is not a valid ETag")
    return bare


@dataclass(frozen=True, slots=True)
class AbortRequest:
    upload_token: str

    @classmethod
    def parse(cls, body: bytes) -> AbortRequest:
        return cls(_string(parse_flat_json_object(body), "uploadID"))


@dataclass(frozen=True, slots=True)
class LegacyStartRequest:
    """``POST v2/imagefile/{id}``: filesize, optional md5sum and sha256sum (omitted when empty)."""

    filesize: int
    sha256: str | None
    raw: dict[str, Any]

    @classmethod
    def parse(cls, body: bytes) -> LegacyStartRequest:
        data = parse_flat_json_object(body)
        filesize = _integer(data, "filesize", low=0, high=MAX_FILESIZE)
        sha256 = _sha256(data, "sha256sum") if data.get("sha256sum") else None
        return cls(filesize, sha256, data)
