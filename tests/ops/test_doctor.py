"""``signing-gateway doctor`` against real servers: a working configuration passes every check, and each broken
one is found with its likely cause (radosgw, which verifies signatures and bodies; SeaweedFS, which does not
verify bodies, for the warning that says so)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from yarl import URL

from gateway.core.config import Config
from gateway.face.handler import Gateway
from gateway.ops.doctor import Status, run_doctor
from tests.support.processes import free_port
from tests.support.s3_fixtures import BUCKET
from tests.support.s3servers import S3Server
from tests.support.stack import add_public_image, stack_config, start_registry

UNKNOWN_S3_SERVER = "minio.invalid:9000"  # MINIO_EXTERNAL_SERVER naming a host that never resolves (RFC 6761)

CLI_TIMEOUT_S = 120


async def doctor(config: Config, *, clock: Callable[[], datetime] | None = None) -> tuple[int, list[str]]:
    """Run doctor in-process; its exit code and every line it printed."""
    lines: list[str] = []
    if clock is None:
        code = await run_doctor(config, out=lines.append)
    else:
        code = await run_doctor(config, out=lines.append, clock=clock)
    return code, lines


def line_about(lines: list[str], fragment: str) -> str:
    (line,) = [line for line in lines if fragment in line]
    return line


def check_lines(lines: list[str]) -> list[str]:
    return [line for line in check_and_config_lines(lines) if line not in config_lines(lines)]


def config_lines(lines: list[str]) -> list[str]:
    """The warnings about risky settings, printed before the checks."""
    return [line for line in lines if line.startswith("⚠ configuration: ")]


def check_and_config_lines(lines: list[str]) -> list[str]:
    return [line for line in lines if line[:1] in {status.value for status in Status}]


async def configured(
    aiohttp_server: Any,
    server: S3Server,
    /,
    *,
    public_image: bool = True,
    registry: dict[str, Any] | None = None,
    **sections: dict[str, Any],
) -> Config:
    """A config for a live registry fake in front of ``server`` (holding one public image unless told otherwise,
    with ``registry`` settings overridden), with ``sections`` overridden."""
    app, registry_url = await start_registry(aiohttp_server, server, **(registry or {}))
    if public_image:
        add_public_image(app)
    return stack_config(server, registry_url=registry_url, gateway_port=free_port(), **sections)


async def start_gateway(aiohttp_server: Any, config: Config) -> None:
    await aiohttp_server(Gateway(config), port=URL(config.server.public_url).port)


def leftover_probes(s3: S3Server) -> list[str]:
    client = s3.botocore_client()
    try:
        listed = client.list_objects_v2(Bucket=BUCKET, Prefix="_gateway/doctor/")
    finally:
        client.close()
    return [item["Key"] for item in listed.get("Contents", [])]


def host_dropping_proxy(s3_port: int) -> web.Application:
    """A proxy in front of S3 that sends ``Host`` without the port, like nginx's ``proxy_set_header Host $host``."""
    session_key = web.AppKey("session", aiohttp.ClientSession)

    async def client_session(app: web.Application) -> AsyncIterator[None]:
        app[session_key] = aiohttp.ClientSession(auto_decompress=False)
        yield
        await app[session_key].close()

    async def forward(request: web.Request) -> web.Response:
        headers = {name: value for name, value in request.headers.items() if name.lower() != "host"}
        headers["Host"] = request.host.rpartition(":")[0]
        async with request.app[session_key].request(
            request.method,
            URL(f"http://127.0.0.1:{s3_port}{request.raw_path}", encoded=True),
            headers=headers,
            data=await request.read(),
            skip_auto_headers=("Content-Type",),
            allow_redirects=False,
        ) as answer:
            return web.Response(status=answer.status, body=await answer.read())

    app = web.Application()
    app.cleanup_ctx.append(client_session)
    app.router.add_route("*", "/{tail:.*}", forward)
    return app


async def test_doctor_passes_every_check_for_a_working_deployment(aiohttp_server: Any, radosgw: S3Server) -> None:
    config = await configured(aiohttp_server, radosgw)
    await start_gateway(aiohttp_server, config)
    code, lines = await doctor(config)
    assert code == 0, "\n".join(lines)
    warned, checks = config_lines(lines), check_lines(lines)
    assert len(checks) == 9
    assert all(line.startswith("✓") for line in checks), "\n".join(lines)
    assert "apiVersion 2.0.0" in line_about(lines, "speaks the library API")
    assert f"http://127.0.0.1:{radosgw.port}, one of the gateway's S3 origins" in line_about(lines, "signs for")
    assert "XAmzContentSHA256Mismatch" in line_about(lines, "refuses a body that does not match")
    # The test stack's public URL is plain http on loopback: the only thing doctor has to say about it.
    assert [line.split(": ", 2)[1] for line in warned] == ["server.public_url"]
    assert lines[-1] == "doctor: no check failed, 1 warning: read it"
    assert leftover_probes(radosgw) == []


async def test_doctor_only_warns_when_the_gateway_is_not_running_yet(aiohttp_server: Any, radosgw: S3Server) -> None:
    config = await configured(aiohttp_server, radosgw)
    code, lines = await doctor(config)
    assert code == 0, "\n".join(lines)
    public = line_about(lines, "reaches a gateway")
    assert public.startswith("⚠")
    assert "connection refused" in public and "not running yet" in public
    assert lines[-1] == "doctor: no check failed, 2 warnings: read them"  # and the http:// public URL


async def test_doctor_blames_the_secret_key_when_s3_computes_another_signature(
    aiohttp_server: Any, radosgw: S3Server
) -> None:
    config = await configured(aiohttp_server, radosgw, s3={"secret_key": "not-the-secret"})
    code, lines = await doctor(config)
    assert code == 1
    credentials = line_about(lines, "accepts the credentials")
    assert credentials.startswith("✗")
    assert "SignatureDoesNotMatch" in credentials and "s3.secret_key is wrong" in credentials
    assert line_about(lines, "present and writable").startswith("–")
    assert line_about(lines, "presigned PUT").startswith("–")
    assert line_about(lines, "speaks the library API").startswith("✓")


async def test_doctor_finds_an_external_endpoint_where_nothing_listens(aiohttp_server: Any, radosgw: S3Server) -> None:
    unused = free_port()
    config = await configured(aiohttp_server, radosgw, s3={"external_endpoint": f"http://127.0.0.1:{unused}"})
    code, lines = await doctor(config)
    assert code == 1
    external = line_about(lines, "external endpoint http://")
    assert external.startswith("✗")
    assert f"connection refused: nothing listens at 127.0.0.1:{unused}" in external
    assert line_about(lines, "presigned PUT").startswith("–")
    assert line_about(lines, "accepts the credentials").startswith("✓")


async def test_doctor_finds_a_proxy_that_changes_the_host_of_presigned_urls(
    aiohttp_server: Any, radosgw: S3Server
) -> None:
    proxy = await aiohttp_server(host_dropping_proxy(radosgw.port))
    config = await configured(aiohttp_server, radosgw, s3={"external_endpoint": f"http://127.0.0.1:{proxy.port}"})
    code, lines = await doctor(config)
    assert code == 1
    assert line_about(lines, "external endpoint http://").startswith("✓")
    presigned = line_about(lines, "with a bound sha256 is accepted")
    assert presigned.startswith("✗")
    assert "SignatureDoesNotMatch" in presigned and "Host" in presigned and "$http_host" in presigned
    assert leftover_probes(radosgw) == []


async def test_doctor_warns_about_risky_settings_one_line_each_before_the_checks(
    aiohttp_server: Any, radosgw: S3Server
) -> None:
    config = await configured(aiohttp_server, radosgw, s3={"external_endpoint": f"http://127.0.0.1:{radosgw.port}"})
    await start_gateway(aiohttp_server, config)
    code, lines = await doctor(config)
    assert code == 0, "\n".join(lines)
    assert lines[:2] == config_lines(lines)
    assert lines[0].startswith("⚠ configuration: server.public_url: http:// sends registry credentials")
    assert lines[1].startswith("⚠ configuration: s3.external_endpoint: equal to s3.internal_endpoint")
    assert all(line.startswith("✓") for line in check_lines(lines)), "\n".join(lines)
    assert lines[-1] == "doctor: no check failed, 2 warnings: read them"


async def test_doctor_finds_a_bucket_that_does_not_exist(aiohttp_server: Any, radosgw: S3Server) -> None:
    config = await configured(aiohttp_server, radosgw, s3={"bucket": "no-such-bucket"})
    code, lines = await doctor(config)
    assert code == 1
    assert line_about(lines, "accepts the credentials").startswith("✓")
    bucket = line_about(lines, "present and writable")
    assert bucket.startswith("✗")
    assert "NoSuchBucket" in bucket and "'no-such-bucket'" in bucket and "s3.bucket" in bucket


async def test_doctor_finds_an_upstream_that_is_not_reachable(aiohttp_server: Any, radosgw: S3Server) -> None:
    unused = free_port()
    config = await configured(aiohttp_server, radosgw, upstream={"url": f"http://127.0.0.1:{unused}"})
    code, lines = await doctor(config)
    assert code == 1
    upstream = line_about(lines, "speaks the library API")
    assert upstream.startswith("✗")
    assert f"connection refused: nothing listens at 127.0.0.1:{unused}" in upstream and "upstream.url" in upstream
    assert line_about(lines, "present and writable").startswith("✓")


async def test_doctor_finds_an_upstream_that_does_not_speak_the_library_api(
    aiohttp_server: Any, radosgw: S3Server
) -> None:
    not_a_registry = await aiohttp_server(web.Application())  # answers 404 to everything
    config = await configured(aiohttp_server, radosgw, upstream={"url": f"http://127.0.0.1:{not_a_registry.port}"})
    code, lines = await doctor(config)
    assert code == 1
    upstream = line_about(lines, "speaks the library API")
    assert upstream.startswith("✗") and "404" in upstream and "not a library-API registry" in upstream


async def test_doctor_fails_a_clock_more_than_five_minutes_off(aiohttp_server: Any, radosgw: S3Server) -> None:
    config = await configured(aiohttp_server, radosgw)
    code, lines = await doctor(config, clock=lambda: datetime.now(UTC) + timedelta(minutes=10))
    assert code == 1
    clock = line_about(lines, "clock agrees")
    assert clock.startswith("✗") and "ahead of S3's" in clock and "NTP" in clock


async def test_doctor_warns_about_a_clock_more_than_a_minute_off(aiohttp_server: Any, radosgw: S3Server) -> None:
    config = await configured(aiohttp_server, radosgw)
    code, lines = await doctor(config, clock=lambda: datetime.now(UTC) - timedelta(minutes=2))
    assert code == 0
    clock = line_about(lines, "clock agrees")
    assert clock.startswith("⚠") and "behind S3's" in clock


async def test_doctor_warns_that_seaweedfs_does_not_verify_part_hashes(
    aiohttp_server: Any, seaweedfs: S3Server
) -> None:
    config = await configured(aiohttp_server, seaweedfs)
    await start_gateway(aiohttp_server, config)
    code, lines = await doctor(config)
    assert code == 0, "\n".join(lines)
    verify = line_about(lines, "refuses a body that does not match")
    assert verify.startswith("⚠") and "does not verify part hashes" in verify
    assert line_about(lines, "with a bound sha256 is accepted").startswith("✓")
    assert lines[-1] == "doctor: no check failed, 2 warnings: read them"  # and the http:// public URL
    assert leftover_probes(seaweedfs) == []


def test_doctor_command_prints_one_line_per_check_and_exits_1_on_a_failure(radosgw: S3Server, tmp_path: Path) -> None:
    config_file = tmp_path / "gateway.toml"
    config_file.write_text(
        f'[upstream]\nurl = "http://127.0.0.1:{free_port()}"\n'
        f'[s3]\ninternal_endpoint = "http://127.0.0.1:{radosgw.port}"\n'
        f'external_endpoint = "http://localhost:{radosgw.port}"\n'
        f'access_key = "{radosgw.access_key}"\nsecret_key = "{radosgw.secret_key}"\nbucket = "{BUCKET}"\n'
        '[uploads]\ntoken_secret = "doctor-test-token-secret-0123"\n',
        encoding="utf-8",
    )
    environment = {name: value for name, value in os.environ.items() if not name.startswith("GATEWAY_")}
    done = subprocess.run(
        [sys.executable, "-m", "gateway", "doctor", "--config", str(config_file)],
        capture_output=True,
        text=True,
        env=environment,
        timeout=CLI_TIMEOUT_S,
        check=False,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert len(check_lines(lines)) == 9 and len(config_lines(lines)) == 1  # the default http:// public URL
    assert line_about(lines, "speaks the library API").startswith("✗")
    assert line_about(lines, "signs for").startswith("–")
    assert line_about(lines, "present and writable").startswith("✓")
    assert lines[-1].startswith("doctor: 1 check failed")
    assert radosgw.secret_key not in done.stdout


async def test_doctor_fails_a_registry_that_signs_for_a_host_the_gateway_does_not_know(
    aiohttp_server: Any, radosgw: S3Server
) -> None:
    # Issue 12: with MINIO_EXTERNAL_SERVER naming a host the gateway does not know and no s3.aliases, auto mode
    # relays every multipart push to that host, and each fails; doctor said "all checks passed".
    config = await configured(aiohttp_server, radosgw, registry={"s3_external_server": UNKNOWN_S3_SERVER})
    await start_gateway(aiohttp_server, config)
    code, lines = await doctor(config)
    assert code == 1, "\n".join(lines)
    signs_for = line_about(lines, "signs for")
    assert signs_for.startswith("✗"), signs_for
    assert f"http://{UNKNOWN_S3_SERVER}" in signs_for and "MINIO_EXTERNAL_SERVER" in signs_for
    assert "does not resolve" in signs_for and "relayed" in signs_for and "s3.aliases" in signs_for
    assert lines[-1] == "doctor: 1 check failed, 1 warning"  # the warning: the http:// public URL
    assert not [line for line in lines if "all checks passed" in line]


async def test_doctor_passes_a_registry_whose_s3_host_is_an_alias(aiohttp_server: Any, radosgw: S3Server) -> None:
    config = await configured(
        aiohttp_server,
        radosgw,
        registry={"s3_external_server": UNKNOWN_S3_SERVER},
        s3={"aliases": [f"http://{UNKNOWN_S3_SERVER}"]},
    )
    code, lines = await doctor(config)
    assert code == 0, "\n".join(lines)
    signs_for = line_about(lines, "signs for")
    assert signs_for.startswith("✓") and "straight into the registry's bucket" in signs_for


async def test_doctor_says_what_it_could_not_check_when_no_image_is_public(
    aiohttp_server: Any, radosgw: S3Server
) -> None:
    config = await configured(
        aiohttp_server, radosgw, public_image=False, registry={"s3_external_server": UNKNOWN_S3_SERVER}
    )
    await start_gateway(aiohttp_server, config)
    code, lines = await doctor(config)
    assert code == 0, "\n".join(lines)
    signs_for = line_about(lines, "signs for")
    assert signs_for.startswith("⚠ ") and "not checked: the registry lists no public image" in signs_for
    assert "MINIO_EXTERNAL_SERVER" in signs_for and "relays" in signs_for and "gateway_upload_mode" in signs_for
    assert lines[-1] == "doctor: no check failed, 2 warnings: read them"  # and the http:// public URL


async def test_doctor_warns_about_a_registry_that_signs_for_another_host_the_gateway_reaches(
    aiohttp_server: Any, radosgw: S3Server
) -> None:
    other = await aiohttp_server(web.Application())  # answers (404): reachable, but not one of our S3 origins
    config = await configured(aiohttp_server, radosgw, registry={"s3_external_server": f"127.0.0.1:{other.port}"})
    code, lines = await doctor(config)
    assert code == 0, "\n".join(lines)
    signs_for = line_about(lines, "signs for")
    assert signs_for.startswith("⚠") and f"http://127.0.0.1:{other.port}" in signs_for
    assert "relays every multipart push there" in signs_for and "s3.aliases" in signs_for
