"""The gateway's S3 side: ``client`` does the I/O; ``errors``, ``values`` and ``documents`` (S3's XML) are pure
and testable without a server. Server behaviours handled (radosgw 16.2.15, SeaweedFS 4.48;
tests/test_s3_client.py):

- radosgw answers CompleteMultipartUpload with ``<ETag></ETag>``: the ETag is then taken from a HEAD;
- radosgw answers ListParts of an aborted upload with 404 NoSuchKey: upload-scoped 404s raise NoSuchUpload;
- radosgw answers CompleteMultipartUpload of an aborted upload with 500 InternalError, every time: after the
  retries, a one-part ListParts tells a gone upload (NoSuchUpload, or success if it was completed) from an outage;
- radosgw answers AbortMultipartUpload of a gone upload with 404 NoSuchUpload, SeaweedFS with 204: both are done;
- SeaweedFS pages ListMultipartUploads by upload id only (no NextKeyMarker): upload-id-marker is sent alone.
"""

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
