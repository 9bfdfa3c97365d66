"""``push FILE library://e/c/n:tags``: the real client's request sequence, with parallel parts, retries and resume.

Sequence (docs/protocol.md §3-§6): entity, collection, container, ``GET v1/images/e/c/n:sha256.<hex>`` (404 ⇒ POST),
``GET version``, then the upload, then the tags. What differs from the real client:

* Multipart is used for any file of at least 5 MiB (S3's smallest part; a smaller file is always one part), not
  only above 64 MiB, so mid-sized images also get parallel parts, per-part retries and ``--resume``. A 404 on the
  start call falls back to the legacy single PUT, as the real client does. The md5 that the legacy request
  carries is computed in the hashing pass only when the legacy upload is planned (small files); after a 404
  fallback it is omitted (the field is omitempty in the real client and nothing reads it).
* Parts go up ``jobs`` at a time. Each part is hashed in a streaming pass over its region (in a thread), then
  streamed again from the file for the PUT; memory stays at about ``jobs`` x 2 chunks.
* The part count is ``ceil(size / partSize)`` computed here; a server announcing more (sregistry's off-by-one on
  exact multiples) is not followed into 0-byte parts, one announcing fewer is refused (it would truncate).
* A failed part is re-presigned and re-sent (bounded attempts, exponential backoff with jitter) when another try
  can help (network errors, 5xx, 403 for an expired URL, a body damaged in transit). Giving up on a part the
  servers keep refusing, or on a file that changed, aborts the upload with ``_multipart_abort``. A network
  failure that outlasts the retries (the servers are out of reach: an abort could not arrive either), Ctrl-C or a
  hook exception leave the upload and its state file in place for ``--resume``, which asks the gateway
  (``GET /_gateway/uploads/{uploadID}/parts``) which parts S3 holds and sends only the others. The state file
  is trusted while the file's size and mtime are unchanged: a resume does not hash the whole file again.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Final, TextIO

import aiohttp

from .api import (
    API_V2_ARCH_TAGS,
    API_V2_UPLOAD,
    Image,
    LibraryApi,
    MultipartStart,
    error_message,
    open_session,
    semver_at_least,
)
from .defaults import DEFAULT_ARCH, DEFAULT_JOBS, ERROR_BODY_LIMIT
from .errors import ApiError, ClientError, NotFound, ObjectStoreError, TransportError, api_error
from .files import CHUNK_SIZE, FileDigests, FileIdentity, PartSpan, RegionStream, file_digests, hash_region, identify
from .files import plan_parts as plan_file_parts
from .objectstore import as_sent, error_detail, signs_content_sha256
from .progress import Progress
from .refs import LibraryRef
from .retry import RetryPolicy, with_retries
from .state import (
    UploadState,
    default_state_dir,
    load_state,
    parse_listed_parts,
    remove_state,
    reusable_parts,
    save_state,
    state_path,
)
from .workers import run_workers

__all__ = ["MULTIPART_MIN_SIZE", "PartUploaded", "PushHooks", "PushOptions", "PushResult", "push"]

MULTIPART_MIN_SIZE: Final = 5 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class PushOptions:
    file: Path
    ref: LibraryRef
    url: str
    token: str | None = None
    arch: str = DEFAULT_ARCH
    jobs: int = DEFAULT_JOBS
    resume: bool = False
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    multipart_min_size: int = MULTIPART_MIN_SIZE
    state_dir: Path | None = None  # default: $XDG_CACHE_HOME/signing-gateway/uploads
    progress: TextIO | None = sys.stderr  # None: quiet
    chunk_size: int = CHUNK_SIZE


@dataclass(frozen=True, slots=True)
class PartUploaded:
    number: int
    size: int
    etag: str
    parts_done: int
    parts_total: int


@dataclass(frozen=True, slots=True)
class PushHooks:
    """Test and integration points; an exception raised here interrupts the push like Ctrl-C (no abort)."""

    after_start: Callable[[UploadState], None] | None = None
    after_part: Callable[[PartUploaded], None] | None = None


@dataclass(frozen=True, slots=True)
class PushResult:
    image_id: str
    container_id: str
    sha256: str
    size: int
    method: str  # "multipart", "legacy", "v1" or "already-uploaded"
    tags: tuple[str, ...]
    parts_total: int = 0
    parts_uploaded: int = 0
    parts_reused: int = 0
    bytes_uploaded: int = 0  # what this run sent: less than size after a resume
    resumed: bool = False
    container_url: str | None = None
    seconds: float = 0.0


async def push(
    options: PushOptions, *, session: aiohttp.ClientSession | None = None, hooks: PushHooks | None = None
) -> PushResult:
    """Push ``options.file``; raises a ClientError subclass (its ``exit_code`` says which kind) on failure."""
    async with open_session(session, jobs=options.jobs) as http:
        async with Progress("push", stream=options.progress) as progress:
            return await _Push(options, http, hooks or PushHooks(), progress).run()


@dataclass(slots=True)
class _Upload:
    """One multipart upload in flight."""

    state: UploadState
    plan: list[PartSpan]
    etags: dict[int, str]  # part number → ETag, filled as parts land
    reused: frozenset[int] = frozenset()  # parts S3 already held when a resume began


class _Push:
    def __init__(
        self, options: PushOptions, session: aiohttp.ClientSession, hooks: PushHooks, progress: Progress
    ) -> None:
        self.options = options
        self.session = session
        self.hooks = hooks
        self.progress = progress
        self.api = LibraryApi(session, options.url, token=options.token)
        self.file = options.file.resolve()
        self.started = time.monotonic()
        self.state_file = state_path(
            options.state_dir or default_state_dir(),
            file=self.file,
            url=self.api.base_url,
            ref_path=options.ref.path,
            arch=options.arch,
        )

    # -- the whole flow ---------------------------------------------------------------------------------

    async def run(self) -> PushResult:
        identity = identify(self.file)
        known_sha256 = None
        saved = load_state(self.state_file)
        if saved is not None and self._describes(saved, identity):
            if self.options.resume:
                resumed = await self._resume(saved)
                if resumed is not None:
                    return resumed
            else:
                self.progress.note("an interrupted push of this file exists; pass --resume to continue it instead")
            known_sha256 = saved.sha256  # the file is unchanged: its hash still holds
        elif self.options.resume:
            why = "the file changed since the interrupted push" if saved is not None else "nothing to resume"
            self.progress.note(f"{why}: starting a new push")
        digests = await self._digests(identity, known_sha256)
        container_id, image = await self._resolve(digests.sha256)
        version = await self.api.api_version()
        if image.uploaded:
            self.progress.note("the registry already has this image: setting tags only")
            result = self._result(image.id, container_id, digests, "already-uploaded")
        elif not semver_at_least(version, API_V2_UPLOAD):
            result = await self._upload_v1(image.id, container_id, digests)
        elif digests.size >= self.options.multipart_min_size:
            result = await self._upload_multipart_or_legacy(image.id, container_id, digests)
        else:
            result = await self._upload_legacy(image.id, container_id, digests)
        await self._tag(result, version)
        return result

    def _describes(self, state: UploadState, identity: FileIdentity) -> bool:
        return state.describes(
            file=self.file,
            identity=identity,
            url=self.api.base_url,
            ref_path=self.options.ref.path,
            arch=self.options.arch,
        )

    async def _digests(self, identity: FileIdentity, known_sha256: str | None) -> FileDigests:
        legacy_planned = identity.size < self.options.multipart_min_size
        if known_sha256 is not None and not legacy_planned:
            return FileDigests(identity.size, known_sha256, None)
        self.progress.restart("hash", total_bytes=identity.size)
        return await asyncio.to_thread(
            file_digests,
            self.file,
            identity.size,
            with_md5=legacy_planned,
            chunk_size=self.options.chunk_size,
            on_bytes=self.progress.add,
        )

    async def _resolve(self, sha256_hex: str) -> tuple[str, Image]:
        ref = self.options.ref
        entity_id = await self.api.entity(ref.entity)
        collection_id = await self.api.collection(ref.entity, ref.collection, entity_id)
        container_id = await self.api.container(ref.entity, ref.collection, ref.container, collection_id)
        image = await self.api.image_for_push(ref.path, sha256_hex, container_id, arch=self.options.arch)
        return container_id, image

    async def _tag(self, result: PushResult, version: str | None) -> None:
        v2 = semver_at_least(version, API_V2_ARCH_TAGS)
        await self.api.set_tags(result.container_id, result.image_id, list(result.tags), arch=self.options.arch, v2=v2)

    def _result(self, image_id: str, container_id: str, digests: FileDigests, method: str) -> PushResult:
        return PushResult(
            image_id=image_id,
            container_id=container_id,
            sha256=digests.sha256,
            size=digests.size,
            method=method,
            tags=self.options.ref.tags,
            seconds=time.monotonic() - self.started,
        )

    # -- multipart ----------------------------------------------------------------------------------------

    async def _upload_multipart_or_legacy(self, image_id: str, container_id: str, digests: FileDigests) -> PushResult:
        try:
            start = await self.api.multipart_start(image_id, digests.size)
        except NotFound:
            # The real client's one clean fallback: 404 on the start call means "no multipart here".
            self.progress.note("the registry has no multipart uploads: using a single upload")
            return await self._upload_legacy(image_id, container_id, digests)
        upload = self._begin(start, image_id, container_id, digests)
        if len(upload.plan) > start.total_parts:
            await self._abort(upload)
            raise ApiError(200, f"server planned {start.total_parts} parts, the file needs {len(upload.plan)}")
        save_state(self.state_file, upload.state)
        if self.hooks.after_start is not None:
            self.hooks.after_start(upload.state)
        container_url = await self._send_and_complete(upload)
        return replace(
            self._result(image_id, container_id, digests, "multipart"),
            parts_total=len(upload.plan),
            parts_uploaded=len(upload.plan),
            bytes_uploaded=digests.size,
            container_url=container_url,
        )

    def _begin(self, start: MultipartStart, image_id: str, container_id: str, digests: FileDigests) -> _Upload:
        identity = identify(self.file)
        state = UploadState(
            file=str(self.file),
            size=digests.size,
            mtime_ns=identity.mtime_ns,
            sha256=digests.sha256,
            url=self.api.base_url,
            ref_path=self.options.ref.path,
            arch=self.options.arch,
            image_id=image_id,
            container_id=container_id,
            upload_id=start.upload_id,
            part_size=start.part_size,
            total_parts=start.total_parts,
            s3compliant=start.s3compliant,
        )
        return _Upload(state, plan_file_parts(digests.size, start.part_size), {})

    async def _resume(self, state: UploadState) -> PushResult | None:
        """Continue ``state``'s upload; None when the gateway no longer knows it (then start over)."""
        try:
            listed = parse_listed_parts(await self.api.uploaded_parts(state.upload_id))
        except (ApiError, ValueError) as exc:
            reason = exc.message if isinstance(exc, ApiError) else str(exc)
            self.progress.note(f"cannot resume the saved upload ({reason}): starting over")
            remove_state(self.state_file)
            return None
        plan = plan_file_parts(state.size, state.part_size)
        etags = reusable_parts(plan, listed)
        upload = _Upload(state, plan, etags, frozenset(etags))
        self.progress.note(f"resuming: {len(etags)} of {len(plan)} parts are already uploaded")
        container_url = await self._send_and_complete(upload)
        result = replace(
            self._result(state.image_id, state.container_id, FileDigests(state.size, state.sha256, None), "multipart"),
            parts_total=len(plan),
            parts_uploaded=len(plan) - len(upload.reused),
            parts_reused=len(upload.reused),
            bytes_uploaded=sum(part.size for part in plan if part.number not in upload.reused),
            resumed=True,
            container_url=container_url,
        )
        await self._tag(result, await self.api.api_version())
        return result

    async def _send_and_complete(self, upload: _Upload) -> str | None:
        state = upload.state
        missing = [part for part in upload.plan if part.number not in upload.etags]
        reused_bytes = sum(part.size for part in upload.plan if part.number in upload.etags)
        self.progress.restart("push", total_bytes=state.size, total_parts=len(upload.plan), done=reused_bytes)
        self.progress.parts_done = len(upload.etags)
        try:
            await self._send_parts(upload, missing)
            container_url = await self.api.multipart_complete(state.image_id, state.upload_id, upload.etags)
        except ClientError as exc:
            if exc.resumable:
                done = len(upload.etags)
                self.progress.note(
                    f"push interrupted with {done} of {len(upload.plan)} parts uploaded: "
                    "run the same command with --resume to continue"
                )
            else:
                await self._abort(upload)
            raise
        remove_state(self.state_file)
        return container_url

    async def _send_parts(self, upload: _Upload, missing: list[PartSpan]) -> None:
        queue = iter(missing)

        async def worker() -> None:
            for part in queue:  # a shared iterator: each worker takes the next part when it is free
                upload.etags[part.number] = await self._send_part(upload.state, part)
                self.progress.part_done()
                if self.hooks.after_part is not None:
                    done = PartUploaded(
                        part.number, part.size, upload.etags[part.number], len(upload.etags), len(upload.plan)
                    )
                    self.hooks.after_part(done)

        if missing:
            await run_workers(min(self.options.jobs, len(missing)), worker)

    async def _send_part(self, state: UploadState, part: PartSpan) -> str:
        sha256_hex = ""
        if state.s3compliant:
            sha256_hex = await asyncio.to_thread(
                hash_region, self.file, part.offset, part.size, chunk_size=self.options.chunk_size
            )

        async def attempt(number: int) -> str:
            url = await self.api.presign_part(
                state.image_id, state.upload_id, number=part.number, size=part.size, sha256_hex=sha256_hex
            )
            return await self._put_part(url, part, sha256_hex)

        def retrying(attempt_number: int, exc: BaseException) -> None:
            self.progress.note(f"part {part.number}: {exc}; retrying (attempt {attempt_number + 1})")

        return await with_retries(attempt, self.options.retry, on_retry=retrying)

    async def _put_part(self, url: str, part: PartSpan, sha256_hex: str) -> str:
        headers = {"Content-Length": str(part.size), "User-Agent": self.api.user_agent}
        if sha256_hex:
            headers["X-Amz-Content-Sha256"] = sha256_hex
        status, etag = await self._put_file_region(url, part.offset, part.size, headers)
        if status != 200:
            raise ObjectStoreError(status, etag)
        if not etag:
            raise ObjectStoreError(status, "no ETag in the reply")
        return etag  # verbatim, quotes included, as the real client keeps it

    async def _put_file_region(self, url: str, offset: int, size: int, headers: dict[str, str]) -> tuple[int, str]:
        """PUT the region to a presigned URL; (200, ETag) on success, else (status, S3 error code)."""
        sent = 0

        def count(chunk_length: int) -> None:
            nonlocal sent
            sent += chunk_length
            self.progress.add(chunk_length)

        body = RegionStream(self.file, offset, size, chunk_size=self.options.chunk_size, on_bytes=count)
        try:
            async with self.session.put(
                as_sent(url),
                data=body if size else b"",
                headers=headers,
                skip_auto_headers=("Content-Type",),  # none on part PUTs; the legacy PUT names its own
                allow_redirects=False,
            ) as response:
                if response.status == 200:
                    await response.read()
                    return 200, response.headers.get("ETag", "")
                detail = error_detail(await response.content.read(ERROR_BODY_LIMIT))
                self.progress.rewind(sent)
                return response.status, detail
        except (aiohttp.ClientError, TimeoutError) as exc:
            self.progress.rewind(sent)
            if body.error is not None:
                raise body.error from None
            raise TransportError(f"upload to object store failed: {exc or type(exc).__name__}") from None
        except BaseException:
            self.progress.rewind(sent)
            raise
        finally:
            body.close()

    async def _abort(self, upload: _Upload) -> None:
        """Give the upload up; a failing abort is only reported (the gateway's sweeper will find it)."""
        remove_state(self.state_file)
        try:
            await self.api.multipart_abort(upload.state.image_id, upload.state.upload_id)
        except ClientError as exc:
            self.progress.note(f"could not abort the multipart upload: {exc}")

    # -- legacy single PUT and v1 ---------------------------------------------------------------------------

    async def _upload_legacy(self, image_id: str, container_id: str, digests: FileDigests) -> PushResult:
        self.progress.restart("push", total_bytes=digests.size, total_parts=1)

        async def attempt(number: int) -> None:
            url = await self.api.legacy_start(
                image_id, filesize=digests.size, sha256_hex=digests.sha256, md5_hex=digests.md5
            )
            headers = {
                "Content-Length": str(digests.size),
                "Content-Type": "application/octet-stream",
                "User-Agent": self.api.user_agent,
            }
            if signs_content_sha256(url):
                headers["X-Amz-Content-Sha256"] = digests.sha256
            status, detail = await self._put_file_region(url, 0, digests.size, headers)
            if status != 200:
                raise ObjectStoreError(status, detail)

        def retrying(attempt_number: int, exc: BaseException) -> None:
            self.progress.note(f"upload: {exc}; retrying (attempt {attempt_number + 1})")

        await with_retries(attempt, self.options.retry, on_retry=retrying)
        self.progress.part_done()
        container_url = await self.api.legacy_complete(image_id)
        result = self._result(image_id, container_id, digests, "legacy")
        return replace(
            result, parts_total=1, parts_uploaded=1, bytes_uploaded=digests.size, container_url=container_url
        )

    async def _upload_v1(self, image_id: str, container_id: str, digests: FileDigests) -> PushResult:
        """``POST v1/imagefile/{id}`` with the raw file: for registries without a usable ``/version``."""
        self.progress.note("the registry has no v2 upload API: sending the file in one v1 request")
        self.progress.restart("push", total_bytes=digests.size, total_parts=1)
        body = RegionStream(self.file, 0, digests.size, chunk_size=self.options.chunk_size, on_bytes=self.progress.add)
        headers = self.api.headers() | {"Content-Length": str(digests.size)}
        path = f"v1/imagefile/{image_id}"
        try:
            async with self.session.post(
                self.api.url(path), data=body, headers=headers, skip_auto_headers=("Content-Type",)
            ) as response:
                raw = await response.content.read(ERROR_BODY_LIMIT)
                status = response.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            if body.error is not None:
                raise body.error from None
            raise TransportError(f"POST {path}: {exc or type(exc).__name__}") from None
        finally:
            body.close()
        if status != 200:
            raise api_error(status, error_message(_json_or_none(raw), status), method="POST", path=path)
        self.progress.part_done()
        result = self._result(image_id, container_id, digests, "v1")
        return replace(result, parts_total=1, parts_uploaded=1, bytes_uploaded=digests.size)


def _json_or_none(raw: bytes) -> object:
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None
