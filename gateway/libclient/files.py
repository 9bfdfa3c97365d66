"""Reading an image file in bounded chunks: part planning, region hashes, region streams.

Nothing here holds more than one chunk of a region in memory; hashing runs in worker threads (hashlib releases the
GIL on large updates), so parts hash on both cores while others upload.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from .errors import IntegrityError, UsageError

__all__ = [
    "CHUNK_SIZE",
    "FileDigests",
    "FileIdentity",
    "PartSpan",
    "RegionStream",
    "file_digests",
    "hash_region",
    "identify",
    "plan_parts",
    "preallocate",
]

CHUNK_SIZE: Final = 1024 * 1024

ByteCounter = Callable[[int], None]


@dataclass(frozen=True, slots=True)
class PartSpan:
    number: int  # 1-based, as S3 and the library API count
    offset: int
    size: int


@dataclass(frozen=True, slots=True)
class FileIdentity:
    """What tells a file apart from its later edits without reading it."""

    size: int
    mtime_ns: int


@dataclass(frozen=True, slots=True)
class FileDigests:
    size: int
    sha256: str
    md5: str | None


def identify(path: Path) -> FileIdentity:
    try:
        status = path.stat()
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from None
    if not path.is_file():
        raise UsageError(f"not a regular file: {path}")
    return FileIdentity(status.st_size, status.st_mtime_ns)


def plan_parts(filesize: int, part_size: int) -> list[PartSpan]:
    """Parts of ``part_size`` bytes, the last one shorter; never an empty part (ceil(size / part))."""
    if part_size < 1:
        raise ValueError("part size must be positive")
    count = -(-filesize // part_size)
    return [
        PartSpan(index + 1, index * part_size, min(part_size, filesize - index * part_size)) for index in range(count)
    ]


def _read_region(path: Path, offset: int, length: int, chunk_size: int, sink: Callable[[memoryview], None]) -> None:
    buffer = bytearray(min(chunk_size, max(length, 1)))
    view = memoryview(buffer)
    remaining = length
    with path.open("rb", buffering=0) as file:
        file.seek(offset)
        while remaining > 0:
            count = file.readinto(view[: min(len(buffer), remaining)])
            if not count:
                raise IntegrityError(f"{path} is shorter than expected: it changed while being read")
            sink(view[:count])
            remaining -= count


def hash_region(path: Path, offset: int, length: int, *, chunk_size: int = CHUNK_SIZE) -> str:
    """sha256 (lowercase hex) of ``length`` bytes at ``offset``, read ``chunk_size`` bytes at a time."""
    digest = hashlib.sha256()
    _read_region(path, offset, length, chunk_size, digest.update)
    return digest.hexdigest()


def file_digests(
    path: Path,
    size: int,
    *,
    with_md5: bool = False,
    chunk_size: int = CHUNK_SIZE,
    on_bytes: ByteCounter | None = None,
) -> FileDigests:
    """One streaming pass over the first ``size`` bytes: sha256, and md5 when the legacy upload will need it."""
    sha256 = hashlib.sha256()
    md5 = hashlib.md5(usedforsecurity=False) if with_md5 else None

    def sink(chunk: memoryview) -> None:
        sha256.update(chunk)
        if md5 is not None:
            md5.update(chunk)
        if on_bytes is not None:
            on_bytes(len(chunk))

    _read_region(path, 0, size, chunk_size, sink)
    return FileDigests(size, sha256.hexdigest(), md5.hexdigest() if md5 is not None else None)


class RegionStream:
    """A file region as an async iterator of chunks, for a request body; reads run in a thread.

    aiohttp iterates a body in its own writer task, which can still be inside a read when the response is already
    in (an early 403) or the request was cancelled; ``close()`` is safe at any such moment: the file is closed
    when no read is in flight, else right after the read returns. An error raised while reading (the file
    shrank) is kept in ``error``: aiohttp only reports it as a connection failure.
    """

    def __init__(
        self, path: Path, offset: int, length: int, *, chunk_size: int = CHUNK_SIZE, on_bytes: ByteCounter | None = None
    ) -> None:
        self.path = path
        self.remaining = length
        self.chunk_size = chunk_size
        self.on_bytes = on_bytes
        self.error: IntegrityError | None = None
        self._file = path.open("rb", buffering=0)
        self._file.seek(offset)
        self._reading = False
        self._closed = False

    def __aiter__(self) -> RegionStream:
        return self

    async def __anext__(self) -> bytes:
        if self._closed or self.remaining <= 0:
            self.close()
            raise StopAsyncIteration
        self._reading = True
        try:
            chunk = await asyncio.to_thread(self._file.read, min(self.chunk_size, self.remaining))
        finally:
            self._reading = False
            if self.is_closed():
                self._file.close()
        if self.is_closed():  # closed by the caller while the read was in flight
            raise StopAsyncIteration
        if not chunk:
            self.error = IntegrityError(f"{self.path} is shorter than expected: it changed while being uploaded")
            self.close()
            raise self.error
        self.remaining -= len(chunk)
        if self.on_bytes is not None:
            self.on_bytes(len(chunk))
        return chunk

    def is_closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        self._closed = True
        if not self._reading:
            self._file.close()


def preallocate(fd: int, size: int) -> None:
    """Reserve ``size`` bytes so parallel writes land in place; a file system without fallocate gets a sparse file."""
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError:
        os.ftruncate(fd, size)
