"""Which way an upload goes and why, decided from where the registry's upload URL points.

Pure: shared by the upload steps, which logs and counts each choice, and by ``doctor``, which predicts it
from the origin the registry signs for (sregistry signs uploads and pull redirects for ``MINIO_EXTERNAL_SERVER``).
"""

from __future__ import annotations

import enum
from collections.abc import Collection
from dataclasses import dataclass
from typing import Literal
from urllib.parse import unquote, urlsplit

from .sigv4 import Endpoint, origin_of

__all__ = [
    "Destination",
    "LegacyChoice",
    "ModeChoice",
    "S3Location",
    "choose_legacy",
    "choose_mode",
    "destination_of",
    "s3_location",
]

# Why a mode was chosen: the values of the ``reason`` log field and metric label.
CONFIGURED = "configured"  # uploads.mode says so
SIGNS_FOR_OUR_S3 = "registry_signs_for_our_s3"  # the URL's origin is the internal/external endpoint or an alias
STORES_ITSELF = "registry_stores_images_itself"  # the URL points at the registry (it keeps images on its disk)
SIGNS_FOR_UNKNOWN_HOST = "registry_signs_for_unknown_host"  # any other origin: not ours, maybe not reachable
# What to do about it, appended to the log line and the relay error that report it.
UNKNOWN_HOST_FIX = (
    " (the registry's upload URLs name a host that is none of the gateway's S3 origins: if it is the same "
    "S3 under another name, add it to s3.aliases; else make the registry sign for S3 as clients and the gateway "
    "reach it, sregistry: MINIO_EXTERNAL_SERVER)"
)


class Destination(enum.Enum):
    OUR_S3 = "our_s3"
    REGISTRY = "registry"
    UNKNOWN_HOST = "unknown_host"


@dataclass(frozen=True, slots=True)
class S3Location:
    bucket: str
    key: str


def s3_location(url: str, s3_origins: Collection[Endpoint]) -> S3Location | None:
    """Bucket and key when ``url`` is a path-style URL on one of ``s3_origins``, else None."""
    if origin_of(url) not in s3_origins:
        return None
    bucket, _, key = urlsplit(url).path.lstrip("/").partition("/")
    if not bucket or not key:
        return None
    return S3Location(unquote(bucket), unquote(key))


def destination_of(
    url: str, *, s3_origins: Collection[Endpoint], registry_origins: Collection[Endpoint | None]
) -> Destination:
    if s3_location(url, s3_origins) is not None:
        return Destination.OUR_S3
    if origin_of(url) in registry_origins:
        return Destination.REGISTRY
    return Destination.UNKNOWN_HOST


_WHY = {
    Destination.OUR_S3: SIGNS_FOR_OUR_S3,
    Destination.REGISTRY: STORES_ITSELF,
    Destination.UNKNOWN_HOST: SIGNS_FOR_UNKNOWN_HOST,
}


@dataclass(frozen=True, slots=True)
class ModeChoice:
    """A multipart upload's mode; ``mode`` None: refused (``adopt`` configured, the URL is not on our S3)."""

    mode: Literal["adopt", "relay"] | None
    reason: str


def choose_mode(configured: str, destination: Destination) -> ModeChoice:
    """``uploads.mode`` applied: ``auto`` adopts only an upload URL on our S3 and relays every other one."""
    if configured == "relay":
        return ModeChoice("relay", CONFIGURED)
    if destination is Destination.OUR_S3:
        return ModeChoice("adopt", CONFIGURED if configured == "adopt" else SIGNS_FOR_OUR_S3)
    if configured == "adopt":
        return ModeChoice(None, _WHY[destination])
    return ModeChoice("relay", _WHY[destination])


@dataclass(frozen=True, slots=True)
class LegacyChoice:
    """What a single-PUT upload's URL becomes: re-signed for the external endpoint (``presign``), moved onto the
    gateway's public URL (``via_gateway``), or handed on as the registry wrote it (``unchanged``)."""

    mode: Literal["presign", "via_gateway", "unchanged"]
    reason: str


def choose_legacy(destination: Destination) -> LegacyChoice:
    if destination is Destination.OUR_S3:
        return LegacyChoice("presign", SIGNS_FOR_OUR_S3)
    if destination is Destination.REGISTRY:
        return LegacyChoice("via_gateway", STORES_ITSELF)
    return LegacyChoice("unchanged", SIGNS_FOR_UNKNOWN_HOST)
