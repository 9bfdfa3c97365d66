"""Run the sregistry fake as a process (the demo, and tests that kill processes).

    python -m tests.support.registry --port 0 --flavour s3 --s3-endpoint http://127.0.0.1:8333 \
        --s3-external-server 127.0.0.1:8333 --access-key AK --secret-key SK --bucket sregistry \
        --token 0123456789abcdef0123456789abcdef01234567:alice --domain-name http://127.0.0.1:8080

Prints one line "listening on http://127.0.0.1:<port>" once it accepts connections; stops on SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import socket
import sys
from collections.abc import Sequence
from pathlib import Path

from aiohttp import web

from .app import make_registry_app
from .settings import RegistrySettings


def parse_token(value: str) -> tuple[str, str]:
    token, separator, user = value.partition(":")
    if not separator or not user:
        raise argparse.ArgumentTypeError(f"expected TOKEN:USER, got {value!r}")
    return token, user


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tests.support.registry", description="sregistry library-API fake")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--flavour", choices=("s3", "selfhosted"), default="s3")
    parser.add_argument("--token", type=parse_token, action="append", default=[], metavar="TOKEN:USER")
    parser.add_argument("--never-logged-in", action="append", default=[], metavar="USER")
    parser.add_argument("--domain-name", help="DOMAIN_NAME (default: the fake's own URL)")
    parser.add_argument("--public-url", help="selfhosted uploadURL/download base (default: the fake's own URL)")
    parser.add_argument("--s3-endpoint", default="http://127.0.0.1:9000", help="scheme://MINIO_SERVER")
    parser.add_argument("--s3-external-server", default="127.0.0.1:9000", help="MINIO_EXTERNAL_SERVER")
    parser.add_argument("--access-key", default="minioadmin")
    parser.add_argument("--secret-key", default="minioadmin")
    parser.add_argument("--bucket", default="sregistry")
    parser.add_argument("--region", default="us-east-1")
    parser.add_argument("--expire-s", type=int, default=300, help="signed URL lifetime")
    parser.add_argument("--storage-dir", type=Path)
    parser.add_argument("--report-image-size", action="store_true")
    parser.add_argument("--close-after-unread-body", action="store_true")
    parser.add_argument("--no-minio-cleanup", action="store_true", help="DISABLE_MINIO_CLEANUP=True")
    parser.add_argument("--view-rate-limit", type=int)
    parser.add_argument("--first-image-id", type=int, default=1)
    return parser.parse_args(argv)


def settings_from(args: argparse.Namespace, own_url: str) -> RegistrySettings:
    return RegistrySettings(
        flavour=args.flavour,
        users=dict(args.token),
        users_never_logged_in=frozenset(args.never_logged_in),
        domain_name=args.domain_name or own_url,
        s3_endpoint=args.s3_endpoint,
        s3_external_server=args.s3_external_server,
        bucket=args.bucket,
        access_key=args.access_key,
        secret_key=args.secret_key,
        region=args.region,
        signed_url_expire_s=args.expire_s,
        minio_cleanup=not args.no_minio_cleanup,
        public_url=args.public_url or own_url,
        storage_dir=args.storage_dir,
        report_image_size=args.report_image_size,
        close_after_unread_body=args.close_after_unread_body,
        view_rate_limit=args.view_rate_limit,
        first_image_id=args.first_image_id,
    )


async def serve(args: argparse.Namespace) -> None:
    # Bind first, so the settings (own URL) can name the real port when --port is 0.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((args.host, args.port))
        own_url = f"http://{args.host}:{listener.getsockname()[1]}"
        runner = web.AppRunner(make_registry_app(settings_from(args, own_url)), access_log=None)
        await runner.setup()
        try:
            await web.SockSite(runner, listener).start()
            print(f"listening on {own_url}", flush=True)
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(signum, stop.set)
            await stop.wait()
        finally:
            await runner.cleanup()


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        asyncio.run(serve(args))
    except ValueError as error:  # settings validation
        print(f"config error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
