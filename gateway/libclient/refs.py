"""``library://[host/]entity/collection/container[:tag1,tag2]`` references. Pure.

Names follow the library client's push pattern (lower-case ``[a-z0-9]`` words joined by ``.``, ``_`` or ``-``);
the tag list defaults to ``latest``. ``library:///e/c/n`` (empty host) is the same as ``library://e/c/n``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from .errors import UsageError

__all__ = ["DEFAULT_TAG", "LibraryRef", "parse_ref"]

DEFAULT_TAG: Final = "latest"
SCHEME: Final = "library://"
_NAME = re.compile(r"[a-z0-9]+(?:[._-][a-z0-9]+)*")
_TAG = re.compile(r"[A-Za-z0-9]+(?:[._-][A-Za-z0-9]+)*")
_HOST = re.compile(r"[A-Za-z0-9.-]+(?::[0-9]{1,5})?|\[[0-9A-Fa-f:.]+\](?::[0-9]{1,5})?")


@dataclass(frozen=True, slots=True)
class LibraryRef:
    entity: str
    collection: str
    container: str
    tags: tuple[str, ...] = (DEFAULT_TAG,)
    host: str = ""  # only when the reference names one: library://host/e/c/n

    @property
    def path(self) -> str:
        """``entity/collection/container``, as the library API's paths use it."""
        return f"{self.entity}/{self.collection}/{self.container}"

    @property
    def tag(self) -> str:
        return self.tags[0]

    def __str__(self) -> str:
        host = f"{self.host}/" if self.host else ""
        return f"{SCHEME}{host}{self.path}:{','.join(self.tags)}"


def parse_ref(text: str, *, single_tag: bool = False) -> LibraryRef:
    """Parse a reference; ``single_tag`` for pull, where a tag list makes no sense."""
    if not text.startswith(SCHEME):
        raise UsageError(f"not a library reference (expected {SCHEME}entity/collection/container[:tag]): {text}")
    rest = text[len(SCHEME) :]
    head, colon, tail = rest.rpartition(":")
    # The tag list follows the last colon; a colon before a slash belongs to host:port.
    has_tags = bool(colon) and "/" not in tail
    path, raw_tags = (head, tail) if has_tags else (rest, "")
    segments = path.split("/")
    host = ""
    if len(segments) == 4:
        host = segments.pop(0)
        if host and not _HOST.fullmatch(host):
            raise UsageError(f"bad host in library reference: {host!r}")
    if len(segments) != 3:
        raise UsageError(f"library reference needs entity/collection/container: {text}")
    for name in segments:
        if not _NAME.fullmatch(name):
            raise UsageError(f"bad name {name!r} in {text}: use lower-case letters, digits and . _ - between them")
    tags = _parse_tags(raw_tags, text) if has_tags else (DEFAULT_TAG,)
    if single_tag and len(tags) != 1:
        raise UsageError(f"give one tag to pull, not a list: {text}")
    return LibraryRef(segments[0], segments[1], segments[2], tags, host)


def _parse_tags(raw_tags: str, text: str) -> tuple[str, ...]:
    tags = tuple(raw_tags.split(","))
    for tag in tags:
        if not _TAG.fullmatch(tag):
            raise UsageError(f"bad tag {tag!r} in {text}")
    return tuple(dict.fromkeys(tags))  # a repeated tag is set once
