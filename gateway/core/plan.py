"""How an image is cut into parts, and S3's limits that bound it. Pure: no I/O.

The one place the part limits live: the config check, the request bodies, the S3 client and the
complete's size check all read them from here.
"""

from __future__ import annotations

from .errors import InvalidRequest

__all__ = ["MAX_FILESIZE", "MAX_PARTS", "MAX_PART_SIZE", "MAX_SINGLE_PUT", "MIN_PART_SIZE", "plan_parts"]

MIB = 1024 * 1024
MIN_PART_SIZE = 5 * MIB  # S3: every part but the last
MAX_PART_SIZE = 5 * 1024 * MIB  # S3: any part
MAX_PARTS = 10_000  # S3: part numbers 1..10000
MAX_FILESIZE = 5 * 1024**4  # 5 TiB: S3's object size limit
MAX_SINGLE_PUT = 5 * 1024**3  # 5 GiB: S3's single PUT limit


def plan_parts(filesize: int, part_size: int) -> tuple[int, int]:
    """``(part_size, total_parts)``: total = ceil(size / part), at most 10,000 parts, never an empty last part.

    The part size is raised (to a whole MiB) when the configured one would need more than 10,000 parts.
    """
    if not 1 <= filesize <= MAX_FILESIZE:
        raise InvalidRequest(f"filesize must be within 1..{MAX_FILESIZE}")
    needed = -(-filesize // MAX_PARTS)
    if needed > part_size:
        part_size = -(-needed // MIB) * MIB
    part_size = max(MIN_PART_SIZE, min(part_size, MAX_PART_SIZE))
    return part_size, -(-filesize // part_size)
