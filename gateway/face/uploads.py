"""The multipart upload steps: start, part presign, complete (adopted or relayed), abort, the parts so far.

The registry authorises, S3 stores, the sealed token carries the upload's state; the journal in S3 lets the
sweeper find abandoned uploads. No aiohttp types here beyond the header multidict: handlers in gateway.face.routes
translate HTTP to these calls. Where URLs point is gateway.face.locations'; the legacy single upload is
gateway.face.legacy_upload; readiness is gateway.face.readiness.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from multidict import CIMultiDict

from ..core.bodies import AbortRequest, CompleteRequest, PartRequest, StartRequest
from ..core.config import Config
from ..core.errors import (
    InvalidRequest,
    RelayFailed,
    UpstreamUnavailable,
)
from ..core.plan import plan_parts
from ..core.sigv4 import Signer
from ..core.tokens import Mode, TokenSealer, UploadGrant
from ..core.upload_mode import UNKNOWN_HOST_FIX, Destination, S3Location, choose_mode
from ..edges.registry_client import RegistryClient
from ..edges.s3 import NoSuchUpload, S3Client, S3Error
from ..ops.journal import JournalEntry, completion_marker_key, journal_key
from ..ops.logs import note_upload
from ..ops.metrics import Metrics
from .locations import LocationPolicy
from .mode_log import ModeLog
from .storage_errors import ABORTING, COMPLETING, LISTING_PARTS, RECORDING, RELAYING, STARTING

__all__ = ["UploadSteps"]

log = logging.getLogger("gateway.uploads")


@dataclass(eq=False, kw_only=True)
class UploadSteps:
    config: Config
    s3: S3Client
    registry: RegistryClient
    signer: Signer
    sealer: TokenSealer
    clock: Callable[[], datetime]
    metrics: Metrics
    locations: LocationPolicy  # where the registry's upload URL points; the endpoint part URLs are signed for
    modes: ModeLog

    # -- multipart ---------------------------------------------------------------------------------------

    async def start(self, image_id: str, body: bytes, *, headers: CIMultiDict[str], credential: str) -> dict[str, Any]:
        request = StartRequest.parse(body)
        upload_url = await self.registry.start_upload(image_id, headers=headers, filesize=request.filesize)
        mode, target = self._choose_target(image_id, upload_url)
        part_size, total_parts = plan_parts(request.filesize, self.config.uploads.part_size)
        upload_id = await STARTING.run(self.s3.create_multipart_upload(target.bucket, target.key))
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
            raise RECORDING.error(exc) from exc

    def _journal_key(self, grant: UploadGrant) -> str:
        return journal_key(self.config.uploads.staging_prefix, upload_id=grant.upload_id, expires_at=grant.expires_at)

    async def _journal_end(self, grant: UploadGrant) -> None:
        # Best effort: a leftover entry only makes the sweeper look at an upload that is already gone.
        try:
            await self.s3.delete_object(self.config.s3.bucket, self._journal_key(grant))
        except S3Error as exc:
            log.warning("journal entry not removed: %s", exc, extra={"event": "journal-leftover"})

    def _choose_target(self, image_id: str, upload_url: str) -> tuple[Mode, S3Location]:
        choice = choose_mode(self.config.uploads.mode, self.locations.destination_of(upload_url))
        self.modes.tell("multipart", choice.mode or "refused", choice.reason, upload_url)
        if choice.mode is None:
            raise UpstreamUnavailable(
                "uploads.mode is adopt but the registry's upload URL is not on a configured S3 origin "
                "(set s3.aliases to the host the registry signs for, or use mode auto)"
            )
        target = self.locations.s3_location(upload_url)
        if choice.mode == "adopt" and target is not None:
            return "adopt", target
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
        url = self.signer.presign_part(
            self.locations.external,
            grant.bucket,
            grant.key,
            upload_id=grant.upload_id,
            part_number=request.part_number,
            payload_sha256=request.sha256,
            now=now,
            expires_s=self.config.uploads.url_expiry_seconds,
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
        except NoSuchUpload:
            return  # completed already or aborted: the complete below tells which
        except S3Error as exc:
            raise LISTING_PARTS.error(exc) from exc
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
        # A retried complete after success succeeds again: the S3 client recognises the object made earlier.
        await COMPLETING.run(self.s3.complete_multipart_upload(grant.bucket, grant.key, grant.upload_id, parts))

    async def _complete_relayed(
        self, grant: UploadGrant, parts: tuple[tuple[int, str], ...], *, headers: CIMultiDict[str]
    ) -> None:
        marker = self._completion_marker(grant)
        if await RELAYING.run(self.s3.head_object(grant.bucket, marker)) is not None:
            return  # relayed already: a retried complete
        # On a retried complete whose relay did not finish, the S3 client recognises the object made earlier and
        # the relay runs again.
        await COMPLETING.run(self.s3.complete_multipart_upload(grant.bucket, grant.key, grant.upload_id, parts))
        # The relay PUT declares filesize: an object of any other size would hang or cut the registry's read.
        info = await RELAYING.run(self.s3.head_object(grant.bucket, grant.key))
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
            raise RELAYING.error(exc) from exc
        except RelayFailed as exc:
            raise await self._relay_failed(grant, upload_url, exc) from exc
        await RELAYING.run(self.s3.put_object(grant.bucket, marker, b"relayed\n"))
        await RELAYING.run(self.s3.delete_object(grant.bucket, grant.key))

    async def _relay_failed(self, grant: UploadGrant, upload_url: str, exc: RelayFailed) -> RelayFailed:
        """What the client hears about a failed relay. A failure that retrying cannot cure removes the staged
        image and its journal entry at once, instead of leaving both to the sweeper for a day; any other keeps
        them, so a retried complete relays again (until the upload expires, then the sweeper removes them)."""
        self.metrics.uploads.inc(event="relay_failed", mode=grant.mode)
        log.warning(
            "relay failed: %s",
            exc.message,
            extra={"event": "relay-failed", "image_id": grant.image_id, "retryable": exc.retryable},
        )
        if exc.retryable:
            until = datetime.fromtimestamp(grant.expires_at, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            return RelayFailed(
                f"{exc.message}. This may pass: the assembled image is kept and retrying the completion relays it "
                f"again, until the upload expires at {until}; the sweeper removes it after that",
                retryable=True,
                status=exc.status,
            )
        try:
            await self.s3.delete_object(grant.bucket, grant.key)
        except S3Error as cleanup:
            log.warning("staged relay object not removed: %s", cleanup, extra={"event": "relay-leftover"})
        await self._journal_end(grant)
        hint = UNKNOWN_HOST_FIX if self.locations.destination_of(upload_url) is Destination.UNKNOWN_HOST else ""
        return RelayFailed(
            f"{exc.message}. Retrying cannot help, so the staged image was removed: push again once the "
            f"registry's upload URL accepts the image from the gateway{hint}",
            retryable=False,
            status=exc.status,
        )

    def _completion_marker(self, grant: UploadGrant) -> str:
        return completion_marker_key(
            self.config.uploads.staging_prefix, upload_id=grant.upload_id, expires_at=grant.expires_at
        )

    async def abort(self, image_id: str, body: bytes, *, credential: str) -> dict[str, Any]:
        request = AbortRequest.parse(body)
        grant = self.open_grant(request.upload_token, image_id, credential)
        # One already gone is fine: the S3 client says so for every server.
        await ABORTING.run(self.s3.abort_multipart_upload(grant.bucket, grant.key, grant.upload_id))
        await self._journal_end(grant)
        self.metrics.uploads.inc(event="aborted", mode=grant.mode)
        log.info("upload aborted", extra={"event": "abort", "image_id": image_id, "mode": grant.mode})
        return {}

    async def uploaded_parts(self, token: str, *, credential: str) -> list[dict[str, Any]]:
        """Parts already in S3 for an upload, for a client resuming a push; only for the token's own caller."""
        grant = self.sealer.open(token, image_id=None, credential=credential, now=self.clock().timestamp())
        parts = await LISTING_PARTS.run(self.s3.list_parts(grant.bucket, grant.key, grant.upload_id))
        return [{"partNumber": p.number, "etag": f'"{p.etag}"', "size": p.size} for p in parts]
