"""What an S3 ETag may look like, for the client's part list and the S3 client alike. Pure."""

from __future__ import annotations

import re
from typing import Final

__all__ = ["MAX_ETAG_LENGTH", "is_plausible_etag", "normalise_etag"]

MAX_ETAG_LENGTH: Final = 128
_ETAG: Final = re.compile(rf"[\x21\x23-\x7e]{{1,{MAX_ETAG_LENGTH}}}")  # printable ASCII without space and '"'


def normalise_etag(value: str) -> str:
    """An ETag without its surrounding quotes (clients keep S3's verbatim, sregistry strips them)."""
    return value[1:-1] if len(value) >= 2 and value[0] == value[-1] == '"' else value


def is_plausible_etag(bare: str) -> bool:
    """Whether an unquoted ETag can go into a CompleteMultipartUpload document as it is."""
    return _ETAG.fullmatch(bare) is not None and "<" not in bare and "&" not in bare
