"""Defaults and environment variable names shared by the command line and the flows (no heavy imports here:
the gateway's command line loads this package only when push or pull runs)."""

from __future__ import annotations

from typing import Final

__all__ = ["DEFAULT_ARCH", "DEFAULT_JOBS", "DEFAULT_PART_SIZE", "ENV_TOKEN", "ENV_URL", "ERROR_BODY_LIMIT"]

ENV_TOKEN: Final = "SIGNING_GATEWAY_TOKEN"
ENV_URL: Final = "SIGNING_GATEWAY_URL"
DEFAULT_ARCH: Final = "amd64"
DEFAULT_JOBS: Final = 4
DEFAULT_PART_SIZE: Final = 16 * 1024 * 1024  # pull's ranged GETs
ERROR_BODY_LIMIT: Final = 64 * 1024  # of an error answer, read for its message
