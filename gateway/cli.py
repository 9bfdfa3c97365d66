"""Command line: ``signing-gateway serve | check-config | doctor | sweep | presign | push | pull | --version``.

Exit codes: 0 success, 1 a command failed (sweep: S3 errors; doctor: a check failed), 2 bad configuration or
usage (one line on stderr naming the key).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
from collections.abc import Sequence
from datetime import UTC, datetime

from . import __version__
from .core.config import Config, ConfigError, load_config, masked
from .core.sigv4 import MAX_EXPIRES_S, Credentials, Signer
from .libclient.cli import add_commands as add_client_commands
from .libclient.cli import run as run_client

__all__ = ["main"]

EXIT_CONFIG = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="signing-gateway",
        description="Presigned S3 multipart uploads in front of a Singularity/Apptainer library registry.",
    )
    parser.add_argument("--version", action="version", version=f"signing-gateway {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    def with_config(sub: argparse.ArgumentParser) -> argparse.ArgumentParser:
        sub.add_argument(
            "--config", metavar="FILE", help="TOML file; GATEWAY_<SECTION>_<KEY> environment variables win over it"
        )
        return sub

    with_config(commands.add_parser("serve", help="run the gateway"))
    with_config(commands.add_parser("check-config", help="print the effective configuration, secrets masked"))
    with_config(
        commands.add_parser("doctor", help="check step by step that the configuration works against the real services")
    )
    sweep = with_config(
        commands.add_parser("sweep", help="abort abandoned uploads and remove their leftovers, once (cron-safe)")
    )
    sweep.add_argument("--grace-seconds", type=int, metavar="S", help="default: uploads.sweep_grace_seconds")
    sweep.add_argument("--dry-run", action="store_true", help="report what would be removed, remove nothing")
    presign = with_config(
        commands.add_parser("presign", help="print a presigned URL for the external S3 endpoint (debugging)")
    )
    presign.add_argument("method", type=str.upper, choices=["GET", "PUT", "HEAD", "DELETE"])
    presign.add_argument("bucket")
    presign.add_argument("key", help="the object key, not URL-encoded")
    presign.add_argument("--part", type=int, metavar="N", help="part number (with --upload-id)")
    presign.add_argument("--upload-id", metavar="ID", help="S3 UploadId of a multipart upload")
    presign.add_argument("--sha256", metavar="HEX", help="bind this payload sha256 into the signature (v3)")
    presign.add_argument(
        "--sign-header", action="store_true", help="also sign the x-amz-content-sha256 header (v3h, single PUTs)"
    )
    presign.add_argument("--expires", type=int, metavar="S", help="lifetime in seconds (default: the config's)")
    presign.add_argument(
        "--explain", action="store_true", help="also print the canonical request and the string to sign"
    )
    add_client_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command in ("push", "pull"):  # clients of a gateway: no gateway config
        return run_client(args)
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    if args.command == "check-config":
        print(json.dumps(masked(config), indent=2))
        return 0
    if args.command == "presign":
        return _presign(config, args)
    if args.command == "sweep":
        return asyncio.run(_sweep(config, args))
    if args.command == "doctor":
        from .ops.doctor import run_doctor

        return asyncio.run(run_doctor(config))
    from .face.server import serve  # aiohttp is imported only when serving

    serve(config)
    return 0


async def _sweep(config: Config, args: argparse.Namespace) -> int:
    from .edges.s3 import S3Client, S3Error, S3Settings
    from .ops.sweeper import sweep

    grace = args.grace_seconds if args.grace_seconds is not None else config.uploads.sweep_grace_seconds
    async with S3Client(S3Settings.of(config.s3)) as s3:
        try:
            report = await sweep(
                s3,
                bucket=config.s3.bucket,
                staging_prefix=config.uploads.staging_prefix,
                now=datetime.now(UTC).timestamp(),
                grace_s=grace,
                dry_run=args.dry_run,
            )
        except S3Error as exc:
            print(f"sweep failed: {exc}", file=sys.stderr)
            return 1
    print(json.dumps(report.__dict__ | {"dry_run": args.dry_run}))
    return 1 if report.errors else 0


def _presign(config: Config, args: argparse.Namespace) -> int:
    if (args.part is None) != (args.upload_id is None):
        print("usage error: --part and --upload-id go together", file=sys.stderr)
        return EXIT_CONFIG
    if args.sha256 is not None and not re.fullmatch(r"[0-9a-f]{64}", args.sha256):
        print("usage error: --sha256 must be 64 lowercase hex characters", file=sys.stderr)
        return EXIT_CONFIG
    if args.sign_header and args.sha256 is None:
        print("usage error: --sign-header needs --sha256", file=sys.stderr)
        return EXIT_CONFIG
    expires = args.expires if args.expires is not None else config.uploads.url_expiry_seconds
    if not 1 <= expires <= MAX_EXPIRES_S:
        print(f"usage error: --expires must be within 1..{MAX_EXPIRES_S}", file=sys.stderr)
        return EXIT_CONFIG
    query = {"partNumber": str(args.part), "uploadId": args.upload_id} if args.part is not None else None
    signer = Signer(Credentials(config.s3.access_key, config.s3.secret_key), config.s3.region)
    signed = signer.explain_presign(
        args.method,
        config.external_endpoint,
        args.bucket,
        args.key,
        now=datetime.now(UTC),
        expires_s=expires,
        query=query,
        payload_sha256=args.sha256,
        sign_sha256_header=args.sign_header,
    )
    print(signed.url)
    if args.explain:
        print("\n# canonical request (the server must compute exactly this; compare with its error's)")
        print(signed.canonical_request)
        print("\n# string to sign")
        print(signed.string_to_sign)
        host_line = signed.canonical_request.split("\n")[3]
        print(
            "\n# the client must send the header "
            f"'{host_line.replace('host:', 'Host: ', 1)}' exactly"
            + (f" and 'X-Amz-Content-Sha256: {args.sha256}'" if args.sha256 else "")
        )
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
