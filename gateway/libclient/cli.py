"""``signing-gateway push FILE library://e/c/n:tags`` and ``signing-gateway pull library://e/c/n:tag FILE``.

Exit codes:
  0    success
  1    failure: network, server or object store (a multipart push that failed this way can be resumed)
  2    usage or configuration: bad arguments, unreadable file, no registry URL or token
  3    integrity: the downloaded image does not match its sha256, or the file changed during a push
  4    authentication refused (401/403): missing, wrong or insufficient token
  5    not found: no such image or tag
  130  interrupted (Ctrl-C); a multipart push keeps its upload for --resume
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Final, TextIO

from .defaults import DEFAULT_ARCH, DEFAULT_JOBS, DEFAULT_PART_SIZE, ENV_TOKEN, ENV_URL
from .errors import EXIT_INTERRUPTED, ClientError, UsageError

if TYPE_CHECKING:
    import aiohttp

    from .auth import Endpoint
    from .refs import LibraryRef

# The flows (and aiohttp) are imported when a command runs, so the gateway's other commands start fast.

__all__ = ["EXIT_CODES_HELP", "add_commands", "run"]

MAX_JOBS: Final = 64
MIB: Final = 1024 * 1024

EXIT_CODES_HELP: Final = """exit codes:
  0 success; 1 network/server failure; 2 usage or configuration; 3 integrity (hash mismatch);
  4 authentication refused (401/403); 5 image or tag not found; 130 interrupted"""

_SOURCES = f"""registry URL: --url, else the reference's host, else ${ENV_URL}, else the active Apptainer remote.
token: --token, else ${ENV_TOKEN}, else the active Apptainer remote's token (~/.apptainer/remote.yaml)."""


def _jobs(text: str) -> int:
    value = int(text)
    if not 1 <= value <= MAX_JOBS:
        raise argparse.ArgumentTypeError(f"must be within 1..{MAX_JOBS}")
    return value


def _part_size_mib(text: str) -> int:
    value = int(text)
    if not 1 <= value <= 1024:
        raise argparse.ArgumentTypeError("must be within 1..1024 (MiB)")
    return value * MIB


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", help=f"registry or gateway base URL (default: ${ENV_URL} or the Apptainer remote)")
    parser.add_argument("--token", help=f"access token (default: ${ENV_TOKEN} or the Apptainer remote's token)")
    parser.add_argument("--arch", default=DEFAULT_ARCH, help=f"image architecture (default: {DEFAULT_ARCH})")
    parser.add_argument(
        "--jobs", type=_jobs, default=DEFAULT_JOBS, metavar="N", help=f"parallel transfers (default: {DEFAULT_JOBS})"
    )
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress display or notes; errors only")


def add_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``push`` and ``pull`` on the program's subcommands."""
    formatter = argparse.RawDescriptionHelpFormatter
    push_parser = subparsers.add_parser(
        "push",
        help="upload an image to a library registry (parallel parts, resumable)",
        description=_SOURCES,
        epilog=EXIT_CODES_HELP,
        formatter_class=formatter,
    )
    push_parser.add_argument("file", type=Path, metavar="FILE", help="the image file (SIF)")
    push_parser.add_argument("ref", metavar="library://entity/collection/container[:tag1,tag2]")
    _common(push_parser)
    push_parser.add_argument(
        "--resume", action="store_true", help="continue an interrupted push of this file from the parts already stored"
    )
    push_parser.set_defaults(client_command="push")

    pull_parser = subparsers.add_parser(
        "pull",
        help="download an image from a library registry (parallel ranges, verified)",
        description=_SOURCES,
        epilog=EXIT_CODES_HELP,
        formatter_class=formatter,
    )
    pull_parser.add_argument("ref", metavar="library://entity/collection/container[:tag]")
    pull_parser.add_argument("file", type=Path, metavar="FILE", help="where to write the image")
    _common(pull_parser)
    pull_parser.add_argument("--force", action="store_true", help="replace FILE if it exists")
    pull_parser.add_argument(
        "--part-size",
        type=_part_size_mib,
        default=DEFAULT_PART_SIZE,
        metavar="MIB",
        help=f"size of each ranged GET in MiB (default: {DEFAULT_PART_SIZE // MIB})",
    )
    pull_parser.set_defaults(client_command="pull")


def run(args: argparse.Namespace) -> int:
    """Run the parsed ``push`` or ``pull`` command; returns the exit code."""
    stream: TextIO | None = None if args.quiet else sys.stderr
    try:
        return asyncio.run(_run(args, stream))
    except ClientError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        hint = " (run the same command with --resume to continue)" if args.client_command == "push" else ""
        print(f"interrupted{hint}", file=sys.stderr)
        return EXIT_INTERRUPTED


def _endpoint(args: argparse.Namespace, ref: LibraryRef) -> Endpoint:
    from .auth import load_remote, resolve_endpoint

    environ = os.environ
    needs_remote = not (args.url or ref.host or environ.get(ENV_URL)) or not (args.token or environ.get(ENV_TOKEN))
    remote = load_remote(environ) if needs_remote else None
    return resolve_endpoint(cli_url=args.url, cli_token=args.token, ref_host=ref.host, environ=environ, remote=remote)


async def _run(args: argparse.Namespace, stream: TextIO | None) -> int:
    from .api import open_session
    from .auth import discover_library_url
    from .refs import parse_ref

    is_push = args.client_command == "push"
    ref = parse_ref(args.ref, single_tag=not is_push)
    endpoint = _endpoint(args, ref)
    if is_push and not endpoint.token:
        raise UsageError(f"pushing needs a token: pass --token, set {ENV_TOKEN}, or log in with apptainer remote login")
    async with open_session(None, jobs=args.jobs) as session:
        url = endpoint.url
        if url is None:
            assert endpoint.remote is not None  # resolve_endpoint only leaves the URL open for a remote
            url = await discover_library_url(session, endpoint.remote)
        if is_push:
            await _push(args, ref, url, endpoint.token, session, stream)
        else:
            await _pull(args, ref, url, endpoint.token, session, stream)
    return 0


async def _push(
    args: argparse.Namespace,
    ref: LibraryRef,
    url: str,
    token: str | None,
    session: aiohttp.ClientSession,
    stream: TextIO | None,
) -> None:
    from .progress import format_bytes, format_rate
    from .push import PushOptions, push

    options = PushOptions(
        file=args.file,
        ref=ref,
        url=url,
        token=token,
        arch=args.arch,
        jobs=args.jobs,
        resume=args.resume,
        progress=stream,
    )
    pushed = await push(options, session=session)
    if stream is None:
        return
    rate = format_rate(pushed.bytes_uploaded / pushed.seconds) if pushed.seconds > 0 else "-"
    reused = f", {pushed.parts_reused} parts reused" if pushed.resumed else ""
    print(
        f"pushed {ref} (sha256.{pushed.sha256}, {format_bytes(pushed.size)}, {pushed.method}{reused}, "
        f"{pushed.seconds:.1f} s, {rate})",
        file=stream,
    )
    if pushed.container_url:
        print(f"container: {pushed.container_url}", file=stream)


async def _pull(
    args: argparse.Namespace,
    ref: LibraryRef,
    url: str,
    token: str | None,
    session: aiohttp.ClientSession,
    stream: TextIO | None,
) -> None:
    from .progress import format_bytes, format_rate
    from .pull import PullOptions, pull

    options = PullOptions(
        ref=ref,
        destination=args.file,
        url=url,
        token=token,
        arch=args.arch,
        jobs=args.jobs,
        part_size=args.part_size,
        force=args.force,
        progress=stream,
    )
    pulled = await pull(options, session=session)
    if stream is not None:
        rate = format_rate(pulled.size / pulled.seconds) if pulled.seconds > 0 else "-"
        print(
            f"pulled {ref} to {pulled.path} (sha256 verified, {format_bytes(pulled.size)}, {pulled.method}, "
            f"{pulled.seconds:.1f} s, {rate})",
            file=stream,
        )
