"""Cleaning up abandoned uploads: abort the multipart uploads whose token expired (plus a grace period),
remove their journal entries, old completion markers, and staged relay objects nobody will complete.

Every step is idempotent, so every replica may sweep at once (the periodic task adds jitter only to spread
the load); a sweep that dies half-way is finished by the next one.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from ..edges.s3 import S3Client, S3ClientError, S3Error
from .journal import JournalEntry, expiry_of_key, journal_prefix

__all__ = ["SweepReport", "run_periodically", "sweep"]

log = logging.getLogger("gateway.sweeper")


@dataclass
class SweepReport:
    journal_entries: int = 0
    aborted_uploads: int = 0
    removed_markers: int = 0
    removed_staged_objects: int = 0
    errors: list[str] = field(default_factory=list)


async def sweep(
    s3: S3Client, *, bucket: str, staging_prefix: str, now: float, grace_s: int, dry_run: bool = False
) -> SweepReport:
    report = SweepReport()
    due = now - grace_s
    listed = await s3.list_objects(bucket, journal_prefix(staging_prefix))
    report.journal_entries = len(listed)
    for summary in listed:
        expiry = expiry_of_key(summary.key)
        if expiry is not None and expiry > due:
            continue  # still live
        try:
            entry = await _journal_entry(s3, bucket, summary.key)
        except _UNREADABLE as exc:
            report.errors.append(f"{summary.key}: unreadable journal entry: {exc}")
            continue
        if entry is None:
            continue
        if dry_run:
            report.aborted_uploads += 1
            continue
        try:
            await s3.abort_multipart_upload(entry.bucket, entry.key, entry.upload_id)  # one gone already is done
        except S3ClientError as exc:
            report.errors.append(f"{summary.key}: abort refused: {exc}")
            continue
        except S3Error as exc:
            report.errors.append(f"{summary.key}: abort failed: {exc}")
            continue
        if entry.mode == "relay":
            await _delete(s3, entry.bucket, entry.key, report)
        await _delete(s3, bucket, summary.key, report)
        report.aborted_uploads += 1
        log.info("swept an abandoned upload", extra={"event": "sweep-abort", "image_id": entry.image_id})
    await _sweep_markers(s3, bucket, staging_prefix, due, report, dry_run=dry_run)
    await _sweep_orphaned_staging(s3, bucket, staging_prefix, now, grace_s, report, dry_run=dry_run)
    return report


async def _sweep_markers(
    s3: S3Client, bucket: str, staging_prefix: str, due: float, report: SweepReport, *, dry_run: bool
) -> None:
    for summary in await s3.list_objects(bucket, f"{staging_prefix}done/"):
        expiry = expiry_of_key(summary.key)
        if expiry is not None and expiry <= due:
            if not dry_run:
                await _delete(s3, bucket, summary.key, report)
            report.removed_markers += 1


async def _sweep_orphaned_staging(
    s3: S3Client, bucket: str, staging_prefix: str, now: float, grace_s: int, report: SweepReport, *, dry_run: bool
) -> None:
    """A staged relay object exists only between S3's complete and the end of the relay; one that outlived the
    grace period with no journal entry left is an orphan (the relay failed and nobody retried)."""
    staged = await s3.list_objects(bucket, f"{staging_prefix}relay/")
    if not staged:
        return
    live = set()
    for summary in await s3.list_objects(bucket, journal_prefix(staging_prefix)):
        try:
            entry = await _journal_entry(s3, bucket, summary.key)
        except _UNREADABLE:
            return  # cannot tell live from orphaned: leave everything for the next sweep
        if entry is not None:
            live.add(entry.key)
    for summary in staged:
        modified = summary.last_modified.timestamp() if summary.last_modified else now
        if summary.key not in live and modified <= now - grace_s:
            if not dry_run:
                await _delete(s3, bucket, summary.key, report)
            report.removed_staged_objects += 1


# A journal entry that cannot be read: S3 failed or refused, or its content is not an entry.
_UNREADABLE = (S3Error, ValueError, KeyError, TypeError)


async def _journal_entry(s3: S3Client, bucket: str, key: str) -> JournalEntry | None:
    """The journal entry at ``key``; None when another sweeper (or the upload's complete) removed it meanwhile."""
    try:
        async with s3.get_object(bucket, key) as stream:
            return JournalEntry.decode(await stream.read())
    except S3ClientError as exc:
        if exc.status == 404:
            return None
        raise


async def _delete(s3: S3Client, bucket: str, key: str, report: SweepReport) -> None:
    try:
        await s3.delete_object(bucket, key)
    except S3Error as exc:
        report.errors.append(f"{key}: delete failed: {exc}")


async def run_periodically(
    s3: S3Client,
    *,
    bucket: str,
    staging_prefix: str,
    interval_s: float,
    grace_s: int,
    clock: Callable[[], datetime],
) -> None:
    """Sweep every ``interval_s`` (±20 % jitter) until cancelled; failures are logged and retried next time."""
    while True:
        await asyncio.sleep(interval_s * random.uniform(0.8, 1.2))
        try:
            report = await sweep(
                s3, bucket=bucket, staging_prefix=staging_prefix, now=clock().timestamp(), grace_s=grace_s
            )
        except S3Error as exc:
            log.warning("sweep failed: %s", exc, extra={"event": "sweep-failed"})
            continue
        if report.aborted_uploads or report.removed_markers or report.removed_staged_objects or report.errors:
            log.info("sweep done", extra={"event": "sweep", **report.__dict__})
