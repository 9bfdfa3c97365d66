"""The upload routes' logic: the registry authorises, S3 stores, tokens carry the state.

No aiohttp types here beyond the header multidict: handlers in gateway.routes translate HTTP to these calls.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit

from multidict import CIMultiDict

from .config import Config
from .errors import Conflict, GatewayError, InvalidRequest, PayloadTooLarge, StorageUnavailable, UpstreamUnavailable
from .journal import JournalEntry, completion_marker_key, journal_key
from .logs import note_upload
from .metrics import Metrics
from .registry import Registry
from .s3 import S3Client, S3ClientError, S3Error, S3UsageError
from .sigv4 import Endpoint, Signer
from .tokens import Mode, TokenSealer, UploadGrant
from .uploads import (
    MAX_SINGLE_PUT,
    AbortRequest,
    CompleteRequest,
    LegacyStartRequest,
    PartRequest,
    StartRequest,
    plan_parts,
)

__all__ = ["S3Location", "UploadService", "origin_of"]

log = logging.getLogger("gateway.uploads")
T = TypeVar("T")

# S3 answers that mean the client sent something wrong at complete; they become 400, never 404.
_CLIENT_MISTAKES = frozenset({"InvalidPart", "InvalidPartOrder", "EntityTooSmall", "MalformedXML", "InvalidArgument"})
_GONE = frozenset({"NoSuchUpload", "NoSuchKey"})  # radosgw answers NoSuchKey for an aborted upload


def origin_of(url: str) -> Endpoint | None:
    """The scheme, host and port of ``url`` (default ports normalised), or None when it has none."""
    try:
        parts = urlsplit(url)
        return Endpoint.parse(f"{parts.scheme}://{parts.netloc}")
    except ValueError:
        return None


@dataclass(frozen=True, slots=True)
class S3Location:
    bucket: str
    key: str


class UploadService:
    def __init__(
        self,
        config: Config,
        *,
        s3: S3Client,
        registry: Registry,
        signer: Signer,
        sealer: TokenSealer,
        clock: Callable[[], datetime],
        metrics: Metrics,
    ) -> None:
        self.config = config
        self.metrics = metrics
        self._readiness: tuple[float, str | None] = (float("-inf"), None)
        self.s3 = s3
        self.registry = registry
        self.signer = signer
        self.sealer = sealer
        self.clock = clock
        self.external = Endpoint.parse(config.s3.external_endpoint)
        self.s3_origins = config.s3_origins()
        self.upstream_origin = origin_of(config.upstream.url)
        self.public_url = config.server.public_url.rstrip("/")
        self._warned_relay = False

    # -- where an upstream URL points -------------------------------------------------------------------

    def s3_location(self, url: str) -> S3Location | None:
        """Bucket and key when ``url`` is a path-style URL on one of our S3 origins, else None."""
        parts = urlsplit(url)
        if origin_of(url) not in self.s3_origins:
            return None
        bucket, _, key = parts.path.lstrip("/").partition("/")
        if not bucket or not key:
            return None
        return S3Location(unquote(bucket), unquote(key))

    def points_at_upstream(self, url: str) -> bool:
        return origin_of(url) == self.upstream_origin

    def to_public(self, url: str) -> str:
        parts = urlsplit(url)
        return self.public_url + parts.path + (f"?{parts.query}" if parts.query else "")

    def rewrite_location(self, location: str) -> str | None:
        """A redirect from the registry: re-sign S3 downloads for the external endpoint; keep clients on us."""
        target = self.s3_location(location)
        if target is not None:
            self.metrics.presigns.inc(kind="download")
            return self.signer.presign(
                "GET",
                self.external,
                target.bucket,
                target.key,
                now=self.clock(),
                expires_s=self.config.downloads.url_expiry_seconds,
            )
        if self.points_at_upstream(location):
            return self.to_public(location)
        return None

    # -- multipart ---------------------------------------------------------------------------------------

    async def start(self, image_id: str, body: bytes, *, headers: CIMultiDict[str], credential: str) -> dict[str, Any]:
        request = StartRequest.parse(body)
        upload_url = await self.registry.start_upload(image_id, headers=headers, filesize=request.filesize)
        mode, target = self._choose_target(image_id, upload_url)
        part_size, total_parts = plan_parts(request.filesize, self.config.uploads.part_size)
        upload_id = await self._s3_call(self.s3.create_multipart_upload(target.bucket, target.key))
        grant = UploadGrant(
            mode=mode,
            image_id=image_id,
            bucket=target.bucket,
            key=target.key,
            upload_id=upload_id,
            filesize=request.filesize,
            part_size=part_size,
            total_parts=total_parts,
            expires_at=int(self.clock().timestamp()) + self.config.uploads.token_ttl_seconds,
            caller=self.sealer.caller_tag(credential),
        )
        await self._journal_start(grant)
        note_upload(mode=mode, parts=total_parts)
        self.metrics.uploads.inc(event="started", mode=mode)
        log.info(
            "upload started",
            extra={
                "event": "start",
                "image_id": image_id,
                "mode": mode,
                "parts": total_parts,
                "bytes": request.filesize,
            },
        )
        return {
            "uploadID": self.sealer.seal(grant),
            "totalParts": total_parts,
            "partSize": part_size,
            "options": {"s3compliant": "true"},
        }

    async def _journal_start(self, grant: UploadGrant) -> None:
        """Record the open upload in S3 for the sweeper; without a record nothing may be handed out."""
        entry = JournalEntry.of(grant, started_at=int(self.clock().timestamp()))
        try:
            await self.s3.put_object(self.config.s3.bucket, self._journal_key(grant), entry.encode())
        except S3Error as exc:
            try:
                await self.s3.abort_multipart_upload(grant.bucket, grant.key, grant.upload_id)
            except S3Error:
                log.warning("could not abort an unjournaled upload", extra={"event": "journal-failed"})
            raise StorageUnavailable(f"storage failed recording the upload: {exc}; retry") from exc

    def _journal_key(self, grant: UploadGrant) -> str:
        return journal_key(self.config.uploads.staging_prefix, upload_id=grant.upload_id, expires_at=grant.expires_at)

    async def _journal_end(self, grant: UploadGrant) -> None:
        # Best effort: a leftover entry only makes the sweeper look at an upload that is already gone.
        try:
            await self.s3.delete_object(self.config.s3.bucket, self._journal_key(grant))
        except S3Error as exc:
            log.warning("journal entry not removed: %s", exc, extra={"event": "journal-leftover"})

    def _choose_target(self, image_id: str, upload_url: str) -> tuple[Mode, S3Location]:
        mode = self.config.uploads.mode
        target = self.s3_location(upload_url)
        if mode == "adopt" and target is None:
            raise UpstreamUnavailable(
                "uploads.mode is adopt but the registry's upload URL is not on a configured S3 origin "
                "(set s3.aliases to the host the registry signs for, or use mode auto)"
            )
        if mode != "relay" and target is not None:
            return "adopt", target
        if mode == "auto" and not self._warned_relay:
            self._warned_relay = True
            log.warning(
                "registry upload URLs are not on any configured S3 origin: relaying uploads, which costs a copy "
                "(set s3.aliases if the registry signs for another S3 host name)",
                extra={"event": "relay-mode", "upload_url_host": urlsplit(upload_url).netloc},
            )
        key = f"{self.config.uploads.staging_prefix}relay/{image_id}/{uuid.uuid4().hex}"
        return "relay", S3Location(self.config.s3.bucket, key)

    def open_grant(self, token: str, image_id: str, credential: str) -> UploadGrant:
        return self.sealer.open(token, image_id=image_id, credential=credential, now=self.clock().timestamp())

    def presign_part(self, image_id: str, body: bytes, *, credential: str) -> dict[str, str]:
        request = PartRequest.parse(body)
        now = self.clock()  # one reading for the token's expiry and the URL's date
        grant = self.sealer.open(request.upload_token, image_id=image_id, credential=credential, now=now.timestamp())
        if request.part_number > grant.total_parts:
            raise InvalidRequest(f"partNumber: this upload has {grant.total_parts} parts")
        expected = grant.expected_part_size(request.part_number)
        if request.part_size != expected:
            raise InvalidRequest(f"partSize: part {request.part_number} must be {expected} bytes")
        note_upload(mode=grant.mode, part=f"{request.part_number}/{grant.total_parts}")
        self.metrics.presigns.inc(kind="part")
        url = self.signer.presign(
            "PUT",
            self.external,
            grant.bucket,
            grant.key,
            now=now,
            expires_s=self.config.uploads.url_expiry_seconds,
            query={"partNumber": str(request.part_number), "uploadId": grant.upload_id},
            payload_sha256=request.sha256,
        )
        return {"presignedURL": url}

    async def complete(
        self, image_id: str, body: bytes, *, headers: CIMultiDict[str], credential: str
    ) -> dict[str, Any]:
        request = CompleteRequest.parse(body)
        grant = self.open_grant(request.upload_token, image_id, credential)
        note_upload(mode=grant.mode, parts=grant.total_parts)
        numbers = [number for number, _ in request.parts]
        if numbers != list(range(1, grant.total_parts + 1)):
            raise InvalidRequest(f"completedParts: expected each of parts 1..{grant.total_parts} exactly once")
        await self._check_part_sizes(grant)
        if grant.mode == "adopt":
            await self._complete_adopted(grant, request.parts)
        else:
            await self._complete_relayed(grant, request.parts, headers=headers)
        await self._journal_end(grant)
        answer = await self.registry.complete_upload(image_id, headers=headers)
        self.metrics.uploads.inc(event="completed", mode=grant.mode)
        log.info("upload completed", extra={"event": "complete", "image_id": image_id, "mode": grant.mode})
        return answer

    async def _check_part_sizes(self, grant: UploadGrant) -> None:
        """Refuse a complete whose stored parts differ from the plan: a part URL binds the body's sha256,
        not its length, so only S3's own record of the parts proves they add up to the registry's filesize.
        Nothing is aborted: the client can upload the wrong part again and complete."""
        try:
            stored = await self.s3.list_parts(grant.bucket, grant.key, grant.upload_id)
        except S3ClientError as exc:
            if exc.code in _GONE:
                return  # completed already or aborted: the complete below tells which
            raise StorageUnavailable(f"storage refused to list parts: {exc.code}") from exc
        except S3Error as exc:
            raise StorageUnavailable(f"storage failed listing parts: {exc}; retry") from exc
        sizes = {part.number: part.size for part in stored}
        for number in range(1, grant.total_parts + 1):
            expected = grant.expected_part_size(number)
            if number not in sizes:
                raise InvalidRequest(f"completedParts: part {number} is not in storage")
            if sizes[number] != expected:
                raise InvalidRequest(
                    f"completedParts: part {number} holds {sizes[number]} bytes, the plan says {expected}; "
                    "upload it again"
                )

    async def _complete_adopted(self, grant: UploadGrant, parts: tuple[tuple[int, str], ...]) -> None:
        try:
            await self.s3.complete_multipart_upload(grant.bucket, grant.key, grant.upload_id, parts)
        except S3UsageError as exc:
            raise InvalidRequest(f"completedParts: {exc}") from exc
        except S3ClientError as exc:
            if exc.code in _GONE and await self._object_has_size(grant.bucket, grant.key, grant.filesize):
                return  # a retried complete after success
            raise self._complete_error(exc) from exc
        except S3Error as exc:
            raise StorageUnavailable(f"storage failed at complete: {exc}; retry") from exc

    async def _complete_relayed(
        self, grant: UploadGrant, parts: tuple[tuple[int, str], ...], *, headers: CIMultiDict[str]
    ) -> None:
        marker = self._completion_marker(grant)
        try:
            await self.s3.complete_multipart_upload(grant.bucket, grant.key, grant.upload_id, parts)
        except S3UsageError as exc:
            raise InvalidRequest(f"completedParts: {exc}") from exc
        except S3ClientError as exc:
            if exc.code not in _GONE:
                raise self._complete_error(exc) from exc
            if await self._s3_call(self.s3.head_object(grant.bucket, marker)) is not None:
                return  # relayed already: a retried complete
            if not await self._object_has_size(grant.bucket, grant.key, grant.filesize):
                raise self._complete_error(exc) from exc
            # S3 completed but the relay did not finish: relay again below.
        except S3Error as exc:
            raise StorageUnavailable(f"storage failed at complete: {exc}; retry") from exc
        # The relay PUT declares filesize: an object of any other size would hang or cut the registry's read.
        info = await self._s3_call(self.s3.head_object(grant.bucket, grant.key))
        if info is None or info.size != grant.filesize:
            size = "missing" if info is None else f"{info.size} bytes"
            raise InvalidRequest(
                f"completedParts: the assembled image is {size}, the registry expects {grant.filesize}"
            )
        # Upload URLs expire: ask the registry for a fresh one, then stream the assembled object to it.
        upload_url = await self.registry.start_upload(grant.image_id, headers=headers, filesize=grant.filesize)
        try:
            async with self.s3.get_object(grant.bucket, grant.key) as stream:
                await self.registry.put_stream(upload_url, stream.iter_chunks(), length=grant.filesize)
        except S3Error as exc:
            raise StorageUnavailable(f"storage failed while relaying: {exc}; retry") from exc
        await self._s3_call(self.s3.put_object(grant.bucket, marker, b"relayed\n"))
        await self._s3_call(self.s3.delete_object(grant.bucket, grant.key))

    def _completion_marker(self, grant: UploadGrant) -> str:
        return completion_marker_key(
            self.config.uploads.staging_prefix, upload_id=grant.upload_id, expires_at=grant.expires_at
        )

    async def _object_has_size(self, bucket: str, key: str, size: int) -> bool:
        info = await self._s3_call(self.s3.head_object(bucket, key))
        return info is not None and info.size == size

    @staticmethod
    def _complete_error(exc: S3ClientError) -> GatewayError:
        if exc.code in _CLIENT_MISTAKES:
            return InvalidRequest(f"storage refused the parts: {exc.code}: {exc.message}")
        if exc.code in _GONE:
            return Conflict("upload no longer exists in storage (aborted or expired): start the push again")
        return UpstreamUnavailable(f"storage refused the gateway: {exc.code}: {exc.message}")

    async def abort(self, image_id: str, body: bytes, *, credential: str) -> dict[str, Any]:
        request = AbortRequest.parse(body)
        grant = self.open_grant(request.upload_token, image_id, credential)
        try:
            await self.s3.abort_multipart_upload(grant.bucket, grant.key, grant.upload_id)
        except S3ClientError as exc:
            if exc.code not in _GONE:
                raise StorageUnavailable(f"storage refused the abort: {exc.code}") from exc
        except S3Error as exc:
            raise StorageUnavailable(f"storage failed at abort: {exc}; retry") from exc
        await self._journal_end(grant)
        self.metrics.uploads.inc(event="aborted", mode=grant.mode)
        log.info("upload aborted", extra={"event": "abort", "image_id": image_id, "mode": grant.mode})
        return {}

    async def uploaded_parts(self, token: str, *, credential: str) -> list[dict[str, Any]]:
        """Parts already in S3 for an upload, for a client resuming a push; only for the token's own caller."""
        grant = self.sealer.open(token, image_id=None, credential=credential, now=self.clock().timestamp())
        try:
            parts = await self.s3.list_parts(grant.bucket, grant.key, grant.upload_id)
        except S3ClientError as exc:
            if exc.code in _GONE:
                raise Conflict("upload no longer exists in storage (completed, aborted or expired)") from exc
            raise StorageUnavailable(f"storage refused to list parts: {exc.code}") from exc
        except S3Error as exc:
            raise StorageUnavailable(f"storage failed listing parts: {exc}; retry") from exc
        return [{"partNumber": p.number, "etag": f'"{p.etag}"', "size": p.size} for p in parts]

    # -- legacy single upload ----------------------------------------------------------------------------

    def rewrite_upload_url(self, request: LegacyStartRequest, upload_url: str) -> str:
        target = self.s3_location(upload_url)
        if target is not None:
            if request.filesize > MAX_SINGLE_PUT:
                raise PayloadTooLarge(
                    "images above 5 GiB need multipart uploads: enable uploads.multipart on the gateway"
                )
            # With the sha256 bound and signed as a header (v3h), the client sends it and S3 verifies the file.
            self.metrics.presigns.inc(kind="legacy")
            return self.signer.presign(
                "PUT",
                self.external,
                target.bucket,
                target.key,
                now=self.clock(),
                expires_s=self.config.uploads.url_expiry_seconds,
                payload_sha256=request.sha256,
                sign_sha256_header=request.sha256 is not None,
            )
        if self.points_at_upstream(upload_url):
            return self.to_public(upload_url)
        return upload_url

    async def readiness(self, *, max_age_s: float = 5.0) -> str | None:
        """None when the registry and S3 answer, else why not; cached briefly so probes cost little."""
        checked_at, reason = self._readiness
        now = time.monotonic()
        if now - checked_at < max_age_s:
            return reason
        reason = await self._check_ready()
        self._readiness = (time.monotonic(), reason)
        return reason

    async def _check_ready(self) -> str | None:
        try:
            answer = await self.registry.call("GET", "/version", headers=CIMultiDict(), body=b"")
        except GatewayError as exc:
            return f"registry: {exc.message}"
        if answer.status >= 500:
            return f"registry: /version answered {answer.status}"
        try:
            if not await self.s3.head_bucket(self.config.s3.bucket):
                return f"s3: bucket {self.config.s3.bucket!r} not found or not accessible"
        except S3Error as exc:
            return f"s3: {exc}"
        return None

    @staticmethod
    async def _s3_call(call: Awaitable[T]) -> T:
        try:
            return await call
        except S3Error as exc:
            raise StorageUnavailable(f"storage failed: {exc}") from exc
