"""The small record that lets ``push --resume`` continue a multipart upload, and the resume arithmetic. No network.

One JSON file per (file, registry URL, container path, arch) under ``$XDG_CACHE_HOME/signing-gateway/uploads/``
(default ``~/.cache/...``), mode 0600: the upload ID is only useful to its owner's token, but it is still theirs.
Written right after the multipart start; removed when the upload completes or is aborted.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Final

from .files import FileIdentity, PartSpan

__all__ = [
    "ListedPart",
    "UploadState",
    "default_state_dir",
    "load_state",
    "parse_listed_parts",
    "remove_state",
    "reusable_parts",
    "save_state",
    "state_path",
]

STATE_VERSION: Final = 1


@dataclass(frozen=True, slots=True)
class UploadState:
    file: str
    size: int
    mtime_ns: int
    sha256: str
    url: str
    ref_path: str
    arch: str
    image_id: str
    container_id: str
    upload_id: str
    part_size: int
    total_parts: int
    s3compliant: bool
    version: int = STATE_VERSION

    def describes(self, *, file: Path, identity: FileIdentity, url: str, ref_path: str, arch: str) -> bool:
        """True when this record is about the same, unchanged file pushed to the same place."""
        return (
            self.version == STATE_VERSION
            and self.file == str(file)
            and self.size == identity.size
            and self.mtime_ns == identity.mtime_ns
            and self.url == url
            and self.ref_path == ref_path
            and self.arch == arch
        )


@dataclass(frozen=True, slots=True)
class ListedPart:
    """A part already stored in S3, as ``GET /_gateway/uploads/{uploadID}/parts`` lists it."""

    number: int
    etag: str
    size: int


def default_state_dir(environ: Mapping[str, str] = os.environ) -> Path:
    base = environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "signing-gateway" / "uploads"


def state_path(directory: Path, *, file: Path, url: str, ref_path: str, arch: str) -> Path:
    key = hashlib.sha256("\n".join((str(file), url, ref_path, arch)).encode()).hexdigest()[:32]
    return directory / f"{key}.json"


def save_state(path: Path, state: UploadState) -> None:
    """Atomically (write, fsync, rename), private to the user."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, temporary = tempfile.mkstemp(prefix=".state-", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(asdict(state), handle, indent=1)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temporary, 0o600)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def load_state(path: Path) -> UploadState | None:
    """The record at ``path``; None when it is missing, unreadable or from another version."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    expected = {field.name: field.type for field in fields(UploadState)}
    if set(data) != set(expected):
        return None
    if not all(_has_type(data[name], kind) for name, kind in expected.items()):
        return None
    return UploadState(**data)


def _has_type(value: Any, kind: Any) -> bool:
    wanted = {"str": str, "int": int, "bool": bool}[str(kind)]
    if wanted is int:
        return type(value) is int
    return isinstance(value, wanted)


def remove_state(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def parse_listed_parts(document: Any) -> list[ListedPart]:
    """``{"data":{"parts":[{"partNumber":1,"etag":"\\"…\\"","size":N}, …]}}``; malformed entries are skipped."""
    data = document.get("data") if isinstance(document, dict) else None
    items = data.get("parts") if isinstance(data, dict) else None
    if not isinstance(items, list):
        raise ValueError("the parts listing has no data.parts list")
    listed: list[ListedPart] = []
    for item in items:
        if not isinstance(item, dict):
            continue
        number, etag, size = item.get("partNumber"), item.get("etag"), item.get("size")
        if type(number) is int and isinstance(etag, str) and etag and type(size) is int:
            listed.append(ListedPart(number, etag, size))
    return listed


def reusable_parts(plan: Iterable[PartSpan], listed: Iterable[ListedPart]) -> dict[int, str]:
    """Part number → ETag for the planned parts S3 already holds with exactly the planned size.

    A part of the wrong size (a different part size, a truncated upload) is uploaded again, which replaces it.
    """
    sizes = {part.number: part.size for part in plan}
    return {part.number: part.etag for part in listed if sizes.get(part.number) == part.size}
