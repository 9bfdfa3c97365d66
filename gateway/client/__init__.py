"""signing-gateway's own library-API client: ``push`` and ``pull`` with parallel transfers, retries and resume.

It speaks the library API exactly as the Apptainer client does (PROTOCOL.md §2-§7), so it works through the
gateway against any registry behind it. It imports nothing from the server side of this package.

    refs      library:// references
    api       library-API calls and JSON shapes
    files     part planning, region hashing, region streams
    state     the resume record and resume arithmetic
    retry     bounded retries with backoff
    workers   the parallel worker pool
    progress  the progress display
    auth      token and URL lookup (flags, environment, Apptainer's remote.yaml)
    push      the push flow
    pull      the pull flow
    cli       the push/pull subcommands and exit codes
"""

from __future__ import annotations

from .errors import ClientError
from .pull import PullOptions, PullResult, pull
from .push import PartUploaded, PushHooks, PushOptions, PushResult, push
from .refs import LibraryRef, parse_ref

__all__ = [
    "ClientError",
    "LibraryRef",
    "PartUploaded",
    "PullOptions",
    "PullResult",
    "PushHooks",
    "PushOptions",
    "PushResult",
    "parse_ref",
    "pull",
    "push",
]
