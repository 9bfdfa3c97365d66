"""The values the S3 client takes and returns. Pure."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from ...core.config import S3Config

__all__ = ["CompleteResult", "MultipartUpload", "ObjectInfo", "ObjectSummary", "Part", "S3Settings"]


@dataclass(frozen=True, slots=True)
class S3Settings:
    endpoint: str
    region: str
    access_key: str
    secret_key: str
    verify_tls: bool = True
    ca_bundle: str = ""  # "" = the system's trust store
    connect_timeout_s: float = 10.0
    read_timeout_s: float = 60.0
    max_retries: int = 3
    pool_limit: int = 64
    retry_base_delay_s: float = 0.1

    @classmethod
    def of(cls, s3: S3Config) -> S3Settings:
        """The client settings for the gateway's own calls: the internal endpoint."""
        return cls(
            endpoint=s3.internal_endpoint,
            region=s3.region,
            access_key=s3.access_key,
            secret_key=s3.secret_key,
            verify_tls=s3.verify_tls,
            ca_bundle=s3.ca_bundle,
            connect_timeout_s=s3.connect_timeout_seconds,
            read_timeout_s=s3.read_timeout_seconds,
        )

    def __repr__(self) -> str:  # never print the secret
        return f"S3Settings(endpoint={self.endpoint!r}, region={self.region!r}, access_key={self.access_key!r})"


@dataclass(frozen=True, slots=True)
class CompleteResult:
    etag: str
    location: str


@dataclass(frozen=True, slots=True)
class Part:
    number: int
    etag: str
    size: int


@dataclass(frozen=True, slots=True)
class MultipartUpload:
    key: str
    upload_id: str
    initiated: datetime | None


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    size: int
    etag: str
    last_modified: datetime | None
    content_type: str


@dataclass(frozen=True, slots=True)
class ObjectSummary:
    key: str
    size: int
    etag: str
    last_modified: datetime | None
