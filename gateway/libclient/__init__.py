"""signing-gateway's own library-API client: ``push`` and ``pull`` with parallel transfers, retries and resume.

It speaks the library API exactly as the Apptainer client does (docs/protocol.md §2-§7), so it works through the
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
    defaults  defaults and environment variable names

Entry points: ``gateway.libclient.push.push(PushOptions, *, session=None, hooks=None)``,
``gateway.libclient.pull.pull(PullOptions, *, session=None)``, and ``gateway.libclient.cli.add_commands``/``run``.
Nothing is imported here, so that ``gateway.libclient.cli`` loads without aiohttp until a command runs.
"""

from __future__ import annotations

__all__: list[str] = []
