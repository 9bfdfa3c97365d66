"""The gateway's S3 side: ``client`` does the I/O (retries and the server behaviours it handles are described
there); ``errors``, ``values`` and ``documents`` (S3's XML) are pure and tested without a server."""

from .client import ObjectStream, S3Client
from .documents import complete_body, error_fields, normalise_etag
from .errors import (
    MALFORMED_ANSWER,
    BodyLengthMismatch,
    InvalidETag,
    InvalidPartList,
    NoSuchUpload,
    S3ClientError,
    S3ConnectionError,
    S3Error,
    S3ResponseError,
    S3ServerError,
    S3UsageError,
    is_retryable,
)
from .values import CompleteResult, MultipartUpload, ObjectInfo, ObjectSummary, Part, S3Settings

__all__ = [
    "MALFORMED_ANSWER",
    "BodyLengthMismatch",
    "CompleteResult",
    "InvalidETag",
    "InvalidPartList",
    "MultipartUpload",
    "NoSuchUpload",
    "ObjectInfo",
    "ObjectStream",
    "ObjectSummary",
    "Part",
    "S3Client",
    "S3ClientError",
    "S3ConnectionError",
    "S3Error",
    "S3ResponseError",
    "S3ServerError",
    "S3Settings",
    "S3UsageError",
    "complete_body",
    "error_fields",
    "is_retryable",
    "normalise_etag",
]
