"""TLS to S3 with a private CA: ``s3.ca_bundle`` trusts it, the system trust store does not, ``verify_tls = false``
trusts anything.

A CA and a server certificate for 127.0.0.1 and localhost are made with the openssl CLI; nginx terminates TLS on a
loopback port in front of the SeaweedFS fixture (``proxy_set_header Host $http_host``, so the SigV4 signature made
for the TLS host still matches, and no buffering). Its access log shows which S3 calls went through TLS.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.edges.s3 import S3Client, S3ConnectionError, S3Settings
from tests.support.library_api import LibraryClient
from tests.support.nginx_harness import stop_nginx, user_directive
from tests.support.processes import free_port
from tests.support.s3_fixtures import BUCKET
from tests.support.s3servers import S3Server
from tests.support.stack import MIB, Stack, start_stack, unique_ref

COMMAND_TIMEOUT_S = 30.0
READY_TIMEOUT_S = 15.0
VERIFY_FAILED = "CERTIFICATE_VERIFY_FAILED"


# ---------------------------------------------------------------------------------------------------------
# Certificates


@dataclass(frozen=True)
class Authority:
    certificate: Path
    key: Path


@dataclass(frozen=True)
class ServerCertificate:
    certificate: Path
    key: Path


def openssl(*arguments: str | Path) -> None:
    if shutil.which("openssl") is None:
        raise RuntimeError("openssl not found (Debian: apt-get install openssl)")
    done = subprocess.run(
        ["openssl", *map(str, arguments)], capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"openssl {arguments[0]} failed: {done.stderr}")


def make_authority(directory: Path, name: str) -> Authority:
    """A self-signed CA (P-256, valid two days)."""
    directory.mkdir(parents=True, exist_ok=True)
    ca = Authority(directory / f"{name}.pem", directory / f"{name}.key")
    openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2",
        "-subj", f"/CN={name}", "-keyout", ca.key, "-out", ca.certificate,
        "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
    )  # fmt: skip
    return ca


def make_server_certificate(directory: Path, ca: Authority) -> ServerCertificate:
    """A server certificate for 127.0.0.1 and localhost, signed by ``ca``."""
    server = ServerCertificate(directory / "server.pem", directory / "server.key")
    request = directory / "server.csr"
    extensions = directory / "server.ext"
    extensions.write_text(
        "subjectAltName = IP:127.0.0.1, DNS:localhost\n"
        "basicConstraints = critical, CA:FALSE\n"
        "keyUsage = critical, digitalSignature\n"
        "extendedKeyUsage = serverAuth\n"
        "subjectKeyIdentifier = hash\n"
        "authorityKeyIdentifier = keyid, issuer\n"
    )
    openssl(
        "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-subj", "/CN=localhost", "-keyout", server.key, "-out", request,
    )  # fmt: skip
    openssl(
        "x509", "-req", "-in", request, "-CA", ca.certificate, "-CAkey", ca.key, "-CAcreateserial",
        "-days", "2", "-extfile", extensions, "-out", server.certificate,
    )  # fmt: skip
    return server


# ---------------------------------------------------------------------------------------------------------
# nginx terminating TLS in front of S3


@dataclass
class TLSTerminator:
    process: subprocess.Popen[bytes]
    prefix: Path
    port: int
    ca: Authority  # the CA that signed its certificate

    def url(self, host: str = "127.0.0.1") -> str:
        return f"https://{host}:{self.port}"

    @property
    def access_log(self) -> str:
        path = self.prefix / "access.log"
        return path.read_text(errors="replace") if path.exists() else ""

    @property
    def error_log(self) -> str:
        path = self.prefix / "error.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        stop_nginx(self.process)


def nginx_config(prefix: Path, *, port: int, upstream_port: int, server: ServerCertificate) -> str:
    kinds = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    temp_paths = "\n".join(f"    {kind}_temp_path {prefix}/{kind};" for kind in kinds)
    return f"""{user_directive()}daemon off;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 64; }}
http {{
    access_log {prefix}/access.log;
{temp_paths}
    server {{
        listen 127.0.0.1:{port} ssl;
        ssl_certificate {server.certificate};
        ssl_certificate_key {server.key};
        client_max_body_size 0;
        proxy_request_buffering off;
        proxy_buffering off;
        location / {{
            proxy_pass http://127.0.0.1:{upstream_port};
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $http_host;
        }}
    }}
}}
"""


def start_tls_terminator(
    prefix: Path, *, upstream_port: int, ca: Authority, server: ServerCertificate
) -> TLSTerminator:
    if shutil.which("nginx") is None:
        raise RuntimeError("nginx not found (Debian: apt-get install nginx-light)")
    port = free_port()
    config = prefix / "nginx.conf"
    config.write_text(nginx_config(prefix, port=port, upstream_port=upstream_port, server=server))
    output = (prefix / "nginx.out").open("wb")
    with output:
        process = subprocess.Popen(
            ["nginx", "-p", str(prefix), "-c", str(config), "-e", str(prefix / "error.log")],
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: stop() can kill the workers too
        )
    terminator = TLSTerminator(process, prefix, port, ca)
    deadline = time.monotonic() + READY_TIMEOUT_S
    while True:
        if process.poll() is not None:
            out = (prefix / "nginx.out").read_text(errors="replace")
            raise RuntimeError(f"nginx exited with {process.returncode}: {out}\n{terminator.error_log}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1.0).close()
            return terminator
        except OSError:
            if time.monotonic() > deadline:
                terminator.stop()
                raise RuntimeError(f"nginx not listening on {port} after {READY_TIMEOUT_S} s") from None
            time.sleep(0.05)


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> tuple[Authority, ServerCertificate, Authority]:
    """(the CA, a server certificate it signed, another CA that signed nothing here)."""
    directory = tmp_path_factory.mktemp("tls")
    ca = make_authority(directory, "test-ca")
    return ca, make_server_certificate(directory, ca), make_authority(directory, "stranger-ca")


@pytest.fixture(scope="module")
def tls_s3(
    seaweedfs: S3Server, certificates: tuple[Authority, ServerCertificate, Authority], tmp_path_factory: Any
) -> Iterator[TLSTerminator]:
    ca, server, _ = certificates
    terminator = start_tls_terminator(
        tmp_path_factory.mktemp("nginx-tls"), upstream_port=seaweedfs.port, ca=ca, server=server
    )
    try:
        yield terminator
    finally:
        terminator.stop()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


# ---------------------------------------------------------------------------------------------------------
# The S3 client on its own


def settings(s3: S3Server, endpoint: str, **tls: Any) -> S3Settings:
    return S3Settings(
        endpoint=endpoint, region=s3.region, access_key=s3.access_key, secret_key=s3.secret_key, max_retries=0, **tls
    )


async def multipart_round_trip(client: S3Client) -> None:
    """Create, two parts (5 MiB and a short last one), complete, read back: every call a multipart upload makes."""
    key = f"tls/{uuid.uuid4().hex}"
    data = os.urandom(5 * MIB + 4321)
    upload_id = await client.create_multipart_upload(BUCKET, key)
    etags = [
        await client.upload_part(BUCKET, key, upload_id, 1, data[: 5 * MIB]),
        await client.upload_part(BUCKET, key, upload_id, 2, data[5 * MIB :]),
    ]
    await client.complete_multipart_upload(BUCKET, key, upload_id, list(enumerate(etags, 1)))
    async with client.get_object(BUCKET, key) as stream:
        assert b"".join([chunk async for chunk in stream.iter_chunks()]) == data


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
async def test_the_s3_client_completes_a_multipart_upload_over_tls_trusting_the_ca_bundle(
    seaweedfs: S3Server, tls_s3: TLSTerminator, host: str
) -> None:
    async with S3Client(settings(seaweedfs, tls_s3.url(host), ca_bundle=str(tls_s3.ca.certificate))) as client:
        await multipart_round_trip(client)
    assert "POST /sregistry/tls/" in tls_s3.access_log  # it went through the TLS terminator


async def test_without_the_bundle_the_system_trust_store_refuses_the_private_ca(
    seaweedfs: S3Server, tls_s3: TLSTerminator
) -> None:
    async with S3Client(settings(seaweedfs, tls_s3.url())) as client:
        with pytest.raises(S3ConnectionError, match=VERIFY_FAILED) as refused:
            await client.create_multipart_upload(BUCKET, "tls/refused")
    assert not refused.value.request_sent


async def test_a_bundle_holding_another_ca_is_refused(
    seaweedfs: S3Server, tls_s3: TLSTerminator, certificates: tuple[Authority, ServerCertificate, Authority]
) -> None:
    stranger = certificates[2]
    async with S3Client(settings(seaweedfs, tls_s3.url(), ca_bundle=str(stranger.certificate))) as client:
        with pytest.raises(S3ConnectionError, match=VERIFY_FAILED):
            await client.head_bucket(BUCKET)


async def test_verify_tls_false_accepts_the_unknown_ca(seaweedfs: S3Server, tls_s3: TLSTerminator) -> None:
    async with S3Client(settings(seaweedfs, tls_s3.url(), verify_tls=False)) as client:
        await multipart_round_trip(client)


# ---------------------------------------------------------------------------------------------------------
# The whole gateway: registry fake, gateway with its S3 calls over TLS, client PUTs to the external endpoint


async def tls_stack(
    aiohttp_server: Any,
    seaweedfs: S3Server,
    tls_s3: TLSTerminator,
    *,
    downloads: dict[str, Any] | None = None,
    **tls: Any,
) -> Stack:
    return await start_stack(
        aiohttp_server,
        seaweedfs,
        s3={
            "internal_endpoint": tls_s3.url(),
            # The registry signs its upload URLs for the plain port: an alias keeps the upload adopted.
            "aliases": [f"http://127.0.0.1:{seaweedfs.port}"],
            **tls,
        },
        uploads={"staging_prefix": f"_gateway-tls-{uuid.uuid4().hex[:8]}/"},
        downloads=downloads or {},
    )


async def push(stack: Stack, session: aiohttp.ClientSession, data: bytes) -> tuple[int, bytes, str]:
    """(status of the start or of the complete, its body, the object key)."""
    client = LibraryClient(session, stack.gateway_url)
    sha = hashlib.sha256(data).hexdigest()
    entity, collection, container = unique_ref("tls")
    image_id = await client.create_image(entity, collection, container, sha)
    key = f"{collection}/{container}:sha256.{sha}"
    start = await client.start(image_id, len(data))
    if start.status != 200:
        return start.status, start.body, key
    etags = await client.upload_parts(image_id, start.data, data)
    done = await client.complete(image_id, start.data["uploadID"], etags)
    return done.status, done.body, key


async def test_a_push_through_the_gateway_talks_to_s3_over_tls_with_the_ca_bundle(
    aiohttp_server: Any, seaweedfs: S3Server, tls_s3: TLSTerminator, session: aiohttp.ClientSession
) -> None:
    stack = await tls_stack(aiohttp_server, seaweedfs, tls_s3, ca_bundle=str(tls_s3.ca.certificate))
    data = os.urandom(40 * MIB + 17)  # two parts of the stack's 32 MiB
    status, body, key = await push(stack, session, data)
    assert status == 200, body
    assert seaweedfs.read_object(key, BUCKET) == data
    quoted_key = key.replace(":", "%3A")
    log = tls_s3.access_log
    assert f"POST /{BUCKET}/{quoted_key}?uploads" in log  # CreateMultipartUpload over TLS
    assert f"POST /{BUCKET}/{quoted_key}?uploadId=" in log  # CompleteMultipartUpload over TLS
    assert f"PUT /{BUCKET}/{quoted_key}" not in log  # parts went to the external endpoint, not through the gateway


async def test_without_the_bundle_the_gateway_answers_a_503_naming_the_certificate_failure(
    aiohttp_server: Any, seaweedfs: S3Server, tls_s3: TLSTerminator, session: aiohttp.ClientSession
) -> None:
    # verify_tls true, the system trust store. With "keep" the push's image lookup does not ask S3 for a size
    # (with 303 it is that lookup that answers this 503), so the failure shown is the upload start's.
    stack = await tls_stack(aiohttp_server, seaweedfs, tls_s3, downloads={"redirect_status": "keep"})
    status, body, _ = await push(stack, session, os.urandom(MIB))
    assert status == 503, body
    message = json.loads(body)["error"]["message"]
    assert message.startswith("storage failed") and VERIFY_FAILED in message, message
    async with session.get(f"{stack.gateway_url}/_gateway/readyz") as ready:
        assert ready.status == 503
        assert VERIFY_FAILED in (await ready.json())["error"]["message"]


async def test_with_verify_tls_false_the_gateway_pushes_through_any_certificate(
    aiohttp_server: Any, seaweedfs: S3Server, tls_s3: TLSTerminator, session: aiohttp.ClientSession
) -> None:
    stack = await tls_stack(aiohttp_server, seaweedfs, tls_s3, verify_tls=False)
    data = os.urandom(MIB + 3)
    status, body, key = await push(stack, session, data)
    assert status == 200, body
    assert seaweedfs.read_object(key, BUCKET) == data
