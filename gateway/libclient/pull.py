"""``pull library://e/c/n:tag FILE``: parallel ranged GETs into a preallocated temporary file, verified, renamed.

Sequence: ``GET v1/images/e/c/n:tag?arch=`` (``hash``, ``size``), then ``GET v1/imagefile/e/c/n:tag?arch=``
without following redirects. A 200 is streamed as is. A redirect's ``Location`` (301/302/303/307/308: sregistry
answers 302) is fetched in ``jobs`` parallel ranged GETs when the size is known, from the image's ``size`` or a
``Range: bytes=0-0`` probe's ``Content-Range``; a server that ignores ranges is read as a single stream.
The token goes to the redirect target only when it has the registry's scheme, host and port.

The sha256 is computed while the download runs (the contiguous prefix is hashed as parts land) and compared with
the image's ``sha256.<hex>``; on a mismatch or any failure the temporary file is removed and nothing is left at
the destination. An expired download URL (403) is fetched anew from the registry before a part is retried.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import re
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, NoReturn, TextIO
from urllib.parse import urljoin

import aiohttp

from .api import Image, LibraryApi, error_message, open_session
from .defaults import DEFAULT_ARCH, DEFAULT_JOBS, DEFAULT_PART_SIZE, ERROR_BODY_LIMIT
from .errors import ApiError, IntegrityError, NotFound, ObjectStoreError, TransportError, UsageError, api_error
from .files import CHUNK_SIZE, PartSpan, plan_parts, preallocate
from .objectstore import as_sent, error_detail, is_presigned, same_origin
from .progress import Progress
from .refs import LibraryRef
from .retry import RetryPolicy, with_retries
from .workers import run_workers

__all__ = ["PullOptions", "PullResult", "pull"]

REDIRECTS: Final = frozenset({301, 302, 303, 307, 308})
_HASH = re.compile(r"sha256\.([0-9a-f]{64})")
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


@dataclass(frozen=True, slots=True)
class PullOptions:
    ref: LibraryRef
    destination: Path
    url: str
    token: str | None = None
    arch: str = DEFAULT_ARCH
    jobs: int = DEFAULT_JOBS
    part_size: int = DEFAULT_PART_SIZE
    force: bool = False  # replace an existing destination file
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    progress: TextIO | None = sys.stderr  # None: quiet
    chunk_size: int = CHUNK_SIZE


@dataclass(frozen=True, slots=True)
class PullResult:
    path: Path
    sha256: str
    size: int
    method: str  # "ranged" or "stream"
    parts: int
    seconds: float


class _RangesIgnored(Exception):
    """The object store answered a ranged GET with the whole object (200)."""


async def pull(options: PullOptions, *, session: aiohttp.ClientSession | None = None) -> PullResult:
    """Download, verify, then atomically rename into place; raises a ClientError subclass on failure."""
    destination = options.destination
    if destination.is_dir():
        raise UsageError(f"{destination} is a directory: give the image's file name")
    if destination.exists() and not options.force:
        raise UsageError(f"{destination} exists: pass --force to replace it")
    async with open_session(session, jobs=options.jobs) as http:
        async with Progress("pull", stream=options.progress) as progress:
            return await _Pull(options, http, progress).run()


class _Pull:
    def __init__(self, options: PullOptions, session: aiohttp.ClientSession, progress: Progress) -> None:
        self.options = options
        self.session = session
        self.progress = progress
        self.api = LibraryApi(session, options.url, token=options.token)
        self.started = time.monotonic()
        self.location = ""
        self._refreshing = asyncio.Lock()
        ref = options.ref
        self.imagefile_path = f"v1/imagefile/{ref.path}:{ref.tag}"

    async def run(self) -> PullResult:
        ref = self.options.ref
        try:
            image = await self.api.image(ref.path, ref.tag, arch=self.options.arch)
        except NotFound:
            raise NotFound(404, f"no image {ref.path}:{ref.tag} for {self.options.arch} in the library") from None
        expected = _expected_sha256(image)
        destination = self.options.destination
        fd, temporary = tempfile.mkstemp(prefix=f".{destination.name}.", suffix=".part", dir=destination.parent)
        try:
            method, size, parts, digest = await self._download(image, fd)
            if digest != expected:
                raise IntegrityError(
                    f"downloaded image does not match its hash: got sha256.{digest}, the library says {image.hash}"
                )
            os.fsync(fd)
            os.close(fd)
            fd = -1
            os.chmod(temporary, 0o777 & ~_umask())  # as Apptainer creates images: executable, umask applies
            os.replace(temporary, destination)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise
        finally:
            if fd >= 0:
                os.close(fd)
        return PullResult(destination, expected, size, method, parts, time.monotonic() - self.started)

    # -- where the bytes are ----------------------------------------------------------------------------

    async def _download(self, image: Image, fd: int) -> tuple[str, int, int, str]:
        """(method, size, parts, sha256 hex) after writing the image into ``fd``."""
        address = self.api.url(self.imagefile_path, {"arch": self.options.arch})
        try:
            async with self.session.get(address, headers=self.api.headers(), allow_redirects=False) as response:
                if response.status == 200:
                    size, digest = await self._stream(response, fd, image.size)
                    return "stream", size, 1, digest
                self.location = await self._redirect_target(response)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise TransportError(f"GET {self.imagefile_path}: {exc or type(exc).__name__}") from None
        probed = image.size if image.size is not None else await self._probe_size(fd)
        if isinstance(probed, _Streamed):  # the store ignored the probe's range and sent everything
            return "stream", probed.size, 1, probed.sha256
        try:
            parts, digest = await self._ranged(fd, probed)
        except _RangesIgnored:
            self.progress.note("the object store ignores byte ranges: downloading as one stream")
            return await self._stream_location(fd, probed)
        return "ranged", probed, parts, digest

    async def _redirect_target(self, response: aiohttp.ClientResponse) -> str:
        location = response.headers.get("Location")
        if response.status in REDIRECTS and location:
            return urljoin(str(response.url), location)
        if response.status in REDIRECTS:
            raise ApiError(response.status, "redirect without a Location", method="GET", path=self.imagefile_path)
        document = _json(await response.content.read(ERROR_BODY_LIMIT))
        message = error_message(document, response.status)
        raise api_error(response.status, message, method="GET", path=self.imagefile_path)

    async def _fresh_location(self, stale: str) -> str:
        """A new download URL from the registry, once per expiry however many parts noticed it."""
        async with self._refreshing:
            if self.location != stale:
                return self.location
            address = self.api.url(self.imagefile_path, {"arch": self.options.arch})
            try:
                async with self.session.get(address, headers=self.api.headers(), allow_redirects=False) as response:
                    self.location = await self._redirect_target(response)
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise TransportError(f"GET {self.imagefile_path}: {exc or type(exc).__name__}") from None
            return self.location

    def _object_headers(self, url: str, extra: dict[str, str]) -> dict[str, str]:
        headers = {"User-Agent": self.api.user_agent, "Accept-Encoding": "identity"} | extra
        if self.api.token and same_origin(url, self.api.base_url) and not is_presigned(url):
            # Only to the registry's own origin (as client v1.4.x), and never beside a URL signature (S3 refuses
            # two authentication mechanisms in one request).
            headers["Authorization"] = f"Bearer {self.api.token}"
        return headers

    async def _probe_size(self, fd: int) -> int | _Streamed:
        """The object's size from a one-byte ranged GET, or the whole object when the store ignores ranges."""

        async def attempt(number: int) -> int | _Streamed:
            url = self.location
            try:
                async with self.session.get(
                    as_sent(url), headers=self._object_headers(url, {"Range": "bytes=0-0"})
                ) as response:
                    if response.status == 200:
                        size, digest = await self._stream(response, fd, response.content_length)
                        return _Streamed(size, digest)
                    if response.status != 206:
                        await self._refuse(response, url)
                    await response.read()
                    match = _CONTENT_RANGE.fullmatch(response.headers.get("Content-Range", ""))
                    if match is None or match[3] == "*":
                        raise ObjectStoreError(206, "the size probe's reply has no usable Content-Range")
                    return int(match[3])
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise TransportError(f"download failed: {exc or type(exc).__name__}") from None

        return await with_retries(attempt, self.options.retry, on_retry=self._retrying("size probe"))

    async def _refuse(self, response: aiohttp.ClientResponse, url: str) -> NoReturn:
        detail = error_detail(await response.content.read(ERROR_BODY_LIMIT))
        if response.status in (401, 403):
            await self._fresh_location(url)  # most likely an expired URL: the retry uses a new one
        raise ObjectStoreError(response.status, detail)

    def _retrying(self, what: str) -> Callable[[int, BaseException], None]:
        def note(attempt: int, exc: BaseException) -> None:
            self.progress.note(f"{what}: {exc}; retrying (attempt {attempt + 1})")

        return note

    # -- single stream ------------------------------------------------------------------------------------

    async def _stream(self, response: aiohttp.ClientResponse, fd: int, size_hint: int | None) -> tuple[int, str]:
        self.progress.restart("pull", total_bytes=response.content_length or size_hint, total_parts=1)
        digest = hashlib.sha256()  # hashed inline: a single stream is read in order
        written = await self._write_stream(response, fd, expected_size=response.content_length, on_chunk=digest.update)
        self.progress.part_done()
        return written, digest.hexdigest()

    async def _stream_location(self, fd: int, size: int) -> tuple[str, int, int, str]:
        async def attempt(number: int) -> tuple[int, str]:
            url = self.location
            os.ftruncate(fd, 0)
            try:
                async with self.session.get(as_sent(url), headers=self._object_headers(url, {})) as response:
                    if response.status != 200:
                        await self._refuse(response, url)
                    return await self._stream(response, fd, size)
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise TransportError(f"download failed: {exc or type(exc).__name__}") from None

        written, digest = await with_retries(attempt, self.options.retry, on_retry=self._retrying("download"))
        return "stream", written, 1, digest

    async def _write_stream(
        self,
        response: aiohttp.ClientResponse,
        fd: int,
        *,
        expected_size: int | None,
        on_chunk: Callable[[bytes], object],
    ) -> int:
        os.lseek(fd, 0, os.SEEK_SET)
        written = 0
        try:
            async for chunk in response.content.iter_chunked(self.options.chunk_size):
                os.write(fd, chunk)  # page-cache writes: cheaper inline than a thread hop per chunk
                on_chunk(chunk)
                written += len(chunk)
                self.progress.add(len(chunk))
        except BaseException:
            self.progress.rewind(written)
            raise
        if expected_size is not None and written != expected_size:
            self.progress.rewind(written)
            raise TransportError(f"download ended after {written} of {expected_size} bytes")
        os.ftruncate(fd, written)
        return written

    # -- parallel ranges ----------------------------------------------------------------------------------

    async def _ranged(self, fd: int, size: int) -> tuple[int, str]:
        """(parts, sha256 hex) after ``jobs`` workers wrote every range of ``size`` bytes into ``fd``."""
        preallocate(fd, size)
        plan = plan_parts(size, self.options.part_size)
        self.progress.restart("pull", total_bytes=size, total_parts=len(plan))
        hasher = _PrefixHasher(fd, size, self.options.chunk_size)
        hashing = asyncio.ensure_future(hasher.run())
        queue = iter(plan)

        async def worker() -> None:
            for part in queue:
                await self._fetch_range(fd, part, size)
                self.progress.part_done()
                hasher.part_done(part)

        try:
            if plan:
                await run_workers(min(self.options.jobs, len(plan)), worker)
            await hashing
        finally:
            hashing.cancel()
            await asyncio.gather(hashing, return_exceptions=True)
        return len(plan), hasher.hexdigest()

    async def _fetch_range(self, fd: int, part: PartSpan, total: int) -> None:
        last = part.offset + part.size - 1

        async def attempt(number: int) -> None:
            url = self.location
            written = 0
            try:
                async with self.session.get(
                    as_sent(url), headers=self._object_headers(url, {"Range": f"bytes={part.offset}-{last}"})
                ) as response:
                    if response.status == 200:
                        raise _RangesIgnored()
                    if response.status != 206:
                        await self._refuse(response, url)
                    _check_content_range(response.headers.get("Content-Range", ""), part.offset, last, total)
                    async for chunk in response.content.iter_chunked(self.options.chunk_size):
                        if written + len(chunk) > part.size:
                            raise IntegrityError(f"object store sent more than the {part.size} bytes asked for")
                        os.pwrite(fd, chunk, part.offset + written)
                        written += len(chunk)
                        self.progress.add(len(chunk))
                if written != part.size:
                    raise TransportError(f"range {part.number} ended after {written} of {part.size} bytes")
            except (aiohttp.ClientError, TimeoutError) as exc:
                self.progress.rewind(written)
                raise TransportError(f"download of range {part.number} failed: {exc or type(exc).__name__}") from None
            except BaseException:
                self.progress.rewind(written)
                raise

        await with_retries(attempt, self.options.retry, on_retry=self._retrying(f"range {part.number}"))


@dataclass(frozen=True, slots=True)
class _Streamed:
    size: int
    sha256: str


class _PrefixHasher:
    """sha256 of the file as its contiguous prefix completes, so verifying overlaps the download."""

    def __init__(self, fd: int, size: int, chunk_size: int) -> None:
        self.fd = fd
        self.size = size
        self.chunk_size = chunk_size
        self.hashed = 0
        self._digest = hashlib.sha256()
        self._finished: dict[int, int] = {}  # offset → length of completed parts beyond the prefix
        self._wake = asyncio.Event()

    def part_done(self, part: PartSpan) -> None:
        self._finished[part.offset] = part.size
        self._wake.set()

    async def run(self) -> None:
        while self.hashed < self.size:
            await self._wake.wait()
            self._wake.clear()
            end = self.hashed
            while end in self._finished:
                end += self._finished.pop(end)
            if end > self.hashed:
                await asyncio.to_thread(self._hash, self.hashed, end)
                self.hashed = end

    def _hash(self, start: int, end: int) -> None:
        position = start
        while position < end:
            chunk = os.pread(self.fd, min(self.chunk_size, end - position), position)
            if not chunk:
                raise IntegrityError("the temporary file is shorter than what was written")
            self._digest.update(chunk)
            position += len(chunk)

    def hexdigest(self) -> str:
        return self._digest.hexdigest()


def _check_content_range(header: str, first: int, last: int, total: int) -> None:
    match = _CONTENT_RANGE.fullmatch(header)
    if match is None or (int(match[1]), int(match[2])) != (first, last):
        raise ObjectStoreError(206, f"Content-Range {header!r} is not bytes {first}-{last}")
    if match[3] != "*" and int(match[3]) != total:
        raise IntegrityError(f"the object is {match[3]} bytes, the library says {total}")


def _expected_sha256(image: Image) -> str:
    match = _HASH.fullmatch(image.hash)
    if match is None:
        raise IntegrityError(f"the library gives no sha256 for this image (hash {image.hash!r}): cannot verify it")
    return match[1]


def _json(body: bytes) -> object:
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current
