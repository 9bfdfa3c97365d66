"""The journal of open multipart uploads, kept in S3 itself: one small object per upload under
``<staging_prefix>journal/`` of the staging bucket, written at start and removed at complete or abort.

Every replica sees it, so scaling out needs nothing more; the sweeper reads it to abort abandoned uploads
(MinIO's ListMultipartUploads cannot be trusted for that). Names carry the expiry, so a listing alone tells
which entries are due. Pure: names and bodies only.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass

from ..core.tokens import UploadGrant

__all__ = ["JournalEntry", "completion_marker_key", "expiry_of_key", "journal_key", "journal_prefix"]


@dataclass(frozen=True, slots=True)
class JournalEntry:
    bucket: str
    key: str
    upload_id: str
    image_id: str
    mode: str
    expires_at: int
    started_at: int

    @classmethod
    def of(cls, grant: UploadGrant, *, started_at: int) -> JournalEntry:
        return cls(grant.bucket, grant.key, grant.upload_id, grant.image_id, grant.mode, grant.expires_at, started_at)

    def encode(self) -> bytes:
        return json.dumps(asdict(self), separators=(",", ":")).encode()

    @classmethod
    def decode(cls, raw: bytes) -> JournalEntry:
        data = json.loads(raw)
        return cls(**{name: data[name] for name in cls.__dataclass_fields__})


def _upload_digest(upload_id: str) -> str:
    return hashlib.sha256(upload_id.encode()).hexdigest()[:40]


def journal_prefix(staging_prefix: str) -> str:
    return f"{staging_prefix}journal/"


def journal_key(staging_prefix: str, *, upload_id: str, expires_at: int) -> str:
    return f"{journal_prefix(staging_prefix)}{expires_at:012d}-{_upload_digest(upload_id)}.json"


def completion_marker_key(staging_prefix: str, *, upload_id: str, expires_at: int) -> str:
    """Relay mode: says a relayed upload finished, so a retried complete answers success until expiry."""
    return f"{staging_prefix}done/{expires_at:012d}-{_upload_digest(upload_id)}"


def expiry_of_key(key: str) -> int | None:
    """The expiry encoded in a journal or marker key's last segment, or None for a foreign key."""
    stamp = key.rsplit("/", 1)[-1].split("-", 1)[0]
    return int(stamp) if stamp.isdigit() else None
