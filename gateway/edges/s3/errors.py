"""What the S3 client raises, and how an S3 answer is classified into it. Pure: no I/O.

    S3Error
    ├── S3ResponseError        S3 answered with an error: status, code, message, request_id, resource
    │   ├── S3ClientError      4xx (and a 200 <Error> body with any other code)
    │   │   └── NoSuchUpload   an upload-scoped call found no upload (AWS: NoSuchUpload; radosgw: 404 NoSuchKey)
    │   └── S3ServerError      5xx, or a 200 <Error> body with InternalError / ServiceUnavailable / SlowDown
    ├── S3ConnectionError      connect failure, timeout, connection lost; ``request_sent`` says if S3 may have acted
    └── S3UsageError           ValueError: the arguments were refused here, nothing was sent
        ├── InvalidETag
        ├── InvalidPartList
        └── BodyLengthMismatch a streamed body was shorter or longer than its declared length
"""

from __future__ import annotations

__all__ = [
    "MALFORMED_ANSWER",
    "BodyLengthMismatch",
    "InvalidETag",
    "InvalidPartList",
    "NoSuchUpload",
    "S3ClientError",
    "S3ConnectionError",
    "S3Error",
    "S3ResponseError",
    "S3ServerError",
    "S3UsageError",
    "classify",
    "malformed",
    "is_retryable",
]

MALFORMED_ANSWER = "MalformedAnswer"  # our code for an answer we cannot use (not XML, too large, no UploadId)

# Codes that a 200 <Error> body (CompleteMultipartUpload, CopyObject) uses for "failed, try again".
_SERVER_SIDE_CODES = frozenset({"InternalError", "ServiceUnavailable", "SlowDown"})
# 4xx codes AWS SDKs also retry: the request was fine, the moment was not.
_RETRYABLE_CLIENT_CODES = frozenset({"RequestTimeout", "RequestTimeoutException", "TooManyRequests"})


class S3Error(Exception):
    """Anything the S3 client raises."""

    @property
    def retryable(self) -> bool:
        return False


class S3ResponseError(S3Error):
    """S3 answered with an error status or an <Error> document."""

    def __init__(
        self,
        operation: str,
        *,
        status: int,
        code: str,
        message: str,
        request_id: str = "",
        resource: str = "",
    ) -> None:
        self.operation = operation
        self.status = status
        self.code = code
        self.message = message
        self.request_id = request_id
        self.resource = resource
        super().__init__(str(self))

    def __str__(self) -> str:
        detail = f": {self.message}" if self.message else ""
        request = f" (request {self.request_id})" if self.request_id else ""
        return f"{self.operation}: {self.status} {self.code}{detail}{request}"

    @property
    def retryable(self) -> bool:
        return self.code in _RETRYABLE_CLIENT_CODES or self.status == 429


class S3ClientError(S3ResponseError):
    """A 4xx: the request was refused (InvalidPart, EntityTooSmall, NoSuchKey, AccessDenied, ...: see ``code``)."""


class NoSuchUpload(S3ClientError):
    """The multipart upload does not exist (any more); ``code`` keeps the server's word for it."""


class S3ServerError(S3ResponseError):
    """A 5xx, or a 200 whose body is an <Error> S3 asks to retry, or an answer this client cannot use."""

    @property
    def retryable(self) -> bool:
        return self.code != MALFORMED_ANSWER


class S3ConnectionError(S3Error):
    """No usable answer: connect failure, timeout or a connection lost mid-request."""

    def __init__(self, operation: str, reason: str, *, request_sent: bool) -> None:
        self.operation = operation
        self.reason = reason
        self.request_sent = request_sent  # False: S3 cannot have acted on it
        super().__init__(f"{operation}: {reason}")

    @property
    def retryable(self) -> bool:
        return True


class S3UsageError(S3Error, ValueError):
    """The arguments were refused before anything was sent."""


class InvalidETag(S3UsageError):
    pass


class InvalidPartList(S3UsageError):
    pass


class BodyLengthMismatch(S3UsageError):
    """A streamed body did not have the declared length; the request was aborted before S3 got all the bytes."""

    def __init__(self, *, expected: int, received: int, longer: bool) -> None:
        self.expected = expected
        self.received = received
        relation = "more than" if longer else "only"
        super().__init__(f"body length mismatch: declared {expected} bytes, the body gave {relation} {received}")


def is_retryable(exc: BaseException) -> bool:
    """Whether repeating the same (idempotent) call may succeed."""
    return isinstance(exc, S3Error) and exc.retryable


def classify(
    operation: str,
    *,
    upload_scoped: bool,
    status: int,
    code: str,
    message: str = "",
    request_id: str = "",
    resource: str = "",
) -> S3ResponseError:
    """The typed error for an S3 error answer (``status`` 200 for an <Error> document in a 200)."""
    cls: type[S3ResponseError]
    if status >= 500 or (status < 300 and code in _SERVER_SIDE_CODES):
        cls = S3ServerError
    elif upload_scoped and (code == "NoSuchUpload" or (status == 404 and code == "NoSuchKey")):
        cls = NoSuchUpload  # radosgw says 404 NoSuchKey for an upload that was aborted
    else:
        cls = S3ClientError
    return cls(operation, status=status, code=code, message=message, request_id=request_id, resource=resource)


def malformed(operation: str, reason: str, *, status: int = 200) -> S3ServerError:
    """An answer this client cannot use (not XML, too large, a field missing): not retried."""
    return S3ServerError(operation, status=status, code=MALFORMED_ANSWER, message=reason)
