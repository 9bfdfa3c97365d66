"""What the client hears when S3 fails during an upload step: the one translation from the S3 client's errors
(gateway.s3.errors) to the gateway's (gateway.errors). Pure.

    NoSuchUpload                         409 Conflict          the upload is gone (aborted or expired)
    at complete: S3UsageError, or an
      S3ClientError blaming the parts    400 InvalidRequest    the client's part list was refused
    any other S3ClientError              503 StorageUnavailable S3 refuses the gateway (AccessDenied, NoSuchBucket)
    S3ServerError, S3ConnectionError     503 StorageUnavailable S3 failed; "retry" when S3 says a retry may work

Which server says "gone" how (radosgw: 404 NoSuchKey, or 500 at complete) is the S3 client's business: it raises
NoSuchUpload for all of them, and recovers a complete that an earlier call made.
"""

from __future__ import annotations

from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Final, TypeVar

from .errors import Conflict, GatewayError, InvalidRequest, StorageUnavailable
from .s3 import NoSuchUpload, S3ClientError, S3Error, S3UsageError

__all__ = ["ABORTING", "COMPLETING", "LISTING_PARTS", "RECORDING", "RELAYING", "STARTING", "Step"]

T = TypeVar("T")

# S3 answers that mean the client's part list was wrong; they become 400, never 404.
_BLAME_THE_PARTS: Final = frozenset(
    {"InvalidPart", "InvalidPartOrder", "EntityTooSmall", "MalformedXML", "InvalidArgument"}
)
_GONE: Final = "upload no longer exists in storage (aborted or expired): start the push again"


@dataclass(frozen=True, slots=True)
class Step:
    """An upload step's calls to S3, as the client hears of their failure: "storage failed <doing>: ..."."""

    doing: str
    gone: str = _GONE  # the 409's message when S3 says the upload is gone
    judges_parts: bool = False  # S3 checks the client's part list here: its refusals are the client's 400

    def error(self, exc: S3Error) -> GatewayError:
        if isinstance(exc, NoSuchUpload):
            return Conflict(self.gone)
        if self.judges_parts and isinstance(exc, S3UsageError):
            return InvalidRequest(f"completedParts: {exc}")
        if self.judges_parts and isinstance(exc, S3ClientError) and exc.code in _BLAME_THE_PARTS:
            return InvalidRequest(f"storage refused the parts: {exc.code}: {exc.message}")
        if isinstance(exc, S3ClientError):
            return StorageUnavailable(f"storage refused the gateway {self.doing}: {exc}")
        retry = "; retry" if exc.retryable else ""
        return StorageUnavailable(f"storage failed {self.doing}: {exc}{retry}")

    async def run(self, call: Awaitable[T]) -> T:
        """``call``'s result; an S3 failure raised as the gateway error for this step."""
        try:
            return await call
        except S3Error as exc:
            raise self.error(exc) from exc


STARTING: Final = Step("starting the upload")
RECORDING: Final = Step("recording the upload")
LISTING_PARTS: Final = Step("listing parts", gone="upload no longer exists in storage (completed, aborted or expired)")
COMPLETING: Final = Step("at complete", judges_parts=True)
RELAYING: Final = Step("relaying the image")
ABORTING: Final = Step("at abort")
