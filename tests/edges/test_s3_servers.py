"""Presigned URLs from gateway.core.sigv4 against real S3 servers (radosgw and SeaweedFS).

The PUTs carry exactly what the Apptainer client sends (docs/protocol.md §4 and §5): Host as in the URL,
User-Agent, Content-Length, X-Amz-Content-Sha256, Accept-Encoding, no Authorization, and Content-Type only
on the legacy single PUT. botocore stands in for the gateway's own S3 calls (create, complete, get), which
are written elsewhere. Where the two servers differ, the test names the server and asserts what it does:
radosgw checks the body against the declared sha256 (as MinIO does), SeaweedFS does not.
"""

from __future__ import annotations

import gzip
import http.client
import os
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qs, urlsplit

import pytest
from botocore.client import BaseClient
from botocore.exceptions import ClientError

from gateway.core.sigv4 import Credentials, Endpoint, Signer, sha256_hex
from tests.support.processes import LOOPBACK
from tests.support.s3_fixtures import BUCKET
from tests.support.s3servers import S3Server

MiB = 1024 * 1024
EXPIRES_S = 900


# ---------------------------------------------------------------------------------------------------------
# What the Apptainer client does on the wire


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    etag: str | None
    body: bytes

    @property
    def error_code(self) -> str | None:
        match = re.search(rb"<Code>([^<]*)</Code>", self.body)
        return match.group(1).decode() if match else None


def put_like_apptainer(
    url: str,
    body: bytes,
    *,
    sha256_header: str | None,
    content_type: str | None = None,
    host_header: str | None = None,
) -> Reply:
    """PUT `body` to a presigned URL, always connecting to loopback; `host_header` defaults to the URL's."""
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(LOOPBACK, parts.port, timeout=60)
    try:
        connection.putrequest("PUT", f"{parts.path}?{parts.query}", skip_host=True, skip_accept_encoding=True)
        connection.putheader("Host", host_header or parts.netloc)
        connection.putheader("User-Agent", "Go-http-client/1.1")
        connection.putheader("Content-Length", str(len(body)))
        if content_type is not None:
            connection.putheader("Content-Type", content_type)
        if sha256_header is not None:
            connection.putheader("X-Amz-Content-Sha256", sha256_header)
        connection.putheader("Accept-Encoding", "gzip")
        try:
            connection.endheaders(body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # a server may answer and close before reading the whole body; its answer is still readable
        response = connection.getresponse()
        payload = response.read()
        if response.getheader("Content-Encoding") == "gzip":
            payload = gzip.decompress(payload)
        return Reply(response.status, response.getheader("ETag"), payload)
    finally:
        connection.close()


# ---------------------------------------------------------------------------------------------------------
# Fixtures and helpers


@dataclass(frozen=True, slots=True)
class Upload:
    key: str
    upload_id: str


def new_key() -> str:
    # sregistry's key shape, with the ':' that must be encoded exactly once
    return f"test/s3servers:sha256.{uuid.uuid4().hex}"


@pytest.fixture
def botocore_s3(s3_server: S3Server) -> Iterator[BaseClient]:
    client = s3_server.botocore_client()
    yield client
    client.close()


@pytest.fixture
def signer(s3_server: S3Server) -> Signer:
    return Signer(Credentials(s3_server.access_key, s3_server.secret_key), region=s3_server.region)


@pytest.fixture
def upload(botocore_s3: BaseClient) -> Iterator[Upload]:
    key = new_key()
    upload_id = botocore_s3.create_multipart_upload(Bucket=BUCKET, Key=key)["UploadId"]
    yield Upload(key, upload_id)
    try:
        botocore_s3.abort_multipart_upload(Bucket=BUCKET, Key=key, UploadId=upload_id)
    except ClientError:
        pass  # already completed (or aborted) by the test


def presign_part(
    signer: Signer,
    endpoint: str,
    upload: Upload,
    part_number: int,
    part_sha256: str,
    *,
    now: datetime | None = None,
    expires_s: int = EXPIRES_S,
) -> str:
    """A v3 part URL, as the gateway hands it out."""
    return signer.presign(
        "PUT",
        Endpoint.parse(endpoint),
        BUCKET,
        upload.key,
        now=now or datetime.now(UTC),
        expires_s=expires_s,
        query={"partNumber": str(part_number), "uploadId": upload.upload_id},
        payload_sha256=part_sha256,
    )


def presign_legacy_put(signer: Signer, endpoint: str, key: str, file_sha256: str) -> str:
    """A v3h single-PUT URL: the signed header makes the client send X-Amz-Content-Sha256."""
    return signer.presign(
        "PUT",
        Endpoint.parse(endpoint),
        BUCKET,
        key,
        now=datetime.now(UTC),
        expires_s=EXPIRES_S,
        payload_sha256=file_sha256,
        sign_sha256_header=True,
    )


def complete(client: BaseClient, upload: Upload, etags: list[str]) -> None:
    parts = [{"PartNumber": number, "ETag": etag} for number, etag in enumerate(etags, start=1)]
    client.complete_multipart_upload(
        Bucket=BUCKET, Key=upload.key, UploadId=upload.upload_id, MultipartUpload={"Parts": parts}
    )


def read_object(client: BaseClient, key: str) -> bytes:
    body = client.get_object(Bucket=BUCKET, Key=key)["Body"]
    try:
        data: bytes = body.read()
        return data
    finally:
        body.close()


def object_exists(client: BaseClient, key: str) -> bool:
    try:
        client.head_object(Bucket=BUCKET, Key=key)
    except ClientError as error:
        if error.response["Error"]["Code"] in ("404", "NoSuchKey"):
            return False
        raise
    return True


def corrupted(body: bytes) -> bytes:
    """Same length, one byte flipped: only the sha256 can tell."""
    return body[:-1] + bytes([body[-1] ^ 0xFF])


def part_numbers_stored(client: BaseClient, upload: Upload) -> list[int]:
    listing = client.list_parts(Bucket=BUCKET, Key=upload.key, UploadId=upload.upload_id)
    return [part["PartNumber"] for part in listing.get("Parts", [])]


# ---------------------------------------------------------------------------------------------------------
# Both servers


def test_multipart_upload_through_v3_part_urls_returns_the_same_bytes(
    s3_server: S3Server, botocore_s3: BaseClient, signer: Signer, upload: Upload
) -> None:
    parts = [os.urandom(5 * MiB + 17), os.urandom(MiB + 3)]  # the first part at S3's 5 MiB minimum
    etags = []
    for number, body in enumerate(parts, start=1):
        part_sha256 = sha256_hex(body)
        url = presign_part(signer, s3_server.endpoint, upload, number, part_sha256)

        reply = put_like_apptainer(url, body, sha256_header=part_sha256)

        assert reply.status == 200, reply
        assert reply.etag is not None
        etags.append(reply.etag)  # kept with its quotes, as the client does
    complete(botocore_s3, upload, etags)
    assert read_object(botocore_s3, upload.key) == b"".join(parts)


def test_part_url_signed_for_another_host_is_refused(
    s3_server: S3Server, signer: Signer, upload: Upload
) -> None:
    body = os.urandom(4096)
    part_sha256 = sha256_hex(body)
    url = presign_part(signer, f"http://localhost:{s3_server.port}", upload, 1, part_sha256)

    # the same server reached under its other name; no X-Forwarded-Host (SeaweedFS would trust it)
    refused = put_like_apptainer(url, body, sha256_header=part_sha256,
                                 host_header=f"{LOOPBACK}:{s3_server.port}")
    accepted = put_like_apptainer(url, body, sha256_header=part_sha256)

    assert (refused.status, refused.error_code) == (403, "SignatureDoesNotMatch"), refused
    assert accepted.status == 200, accepted  # the URL itself is good for the host it was signed for


EXPIRED_URL_ERROR = {"radosgw": "AccessDenied", "seaweedfs": "AccessDenied"}


def test_expired_part_url_is_refused(s3_server: S3Server, signer: Signer, upload: Upload) -> None:
    body = os.urandom(4096)
    part_sha256 = sha256_hex(body)
    signed_long_ago = datetime.now(UTC) - timedelta(hours=1)
    expired_url = presign_part(signer, s3_server.endpoint, upload, 1, part_sha256,
                               now=signed_long_ago, expires_s=60)
    fresh_url = presign_part(signer, s3_server.endpoint, upload, 1, part_sha256)

    refused = put_like_apptainer(expired_url, body, sha256_header=part_sha256)
    accepted = put_like_apptainer(fresh_url, body, sha256_header=part_sha256)

    assert (refused.status, refused.error_code) == (403, EXPIRED_URL_ERROR[s3_server.name]), refused
    assert accepted.status == 200, accepted


def test_legacy_single_put_through_a_v3h_url_stores_the_file(
    s3_server: S3Server, botocore_s3: BaseClient, signer: Signer
) -> None:
    key, body = new_key(), os.urandom(MiB + 5)
    url = presign_legacy_put(signer, s3_server.endpoint, key, sha256_hex(body))
    # the client sends the sha header only because SignedHeaders lists it (docs/protocol.md §5)
    assert parse_qs(urlsplit(url).query)["X-Amz-SignedHeaders"] == ["host;x-amz-content-sha256"]

    reply = put_like_apptainer(url, body, sha256_header=sha256_hex(body),
                               content_type="application/octet-stream")

    assert reply.status == 200, reply
    assert read_object(botocore_s3, key) == body


# ---------------------------------------------------------------------------------------------------------
# radosgw: checks the body against the declared sha256, takes the payload hash from the header


@pytest.mark.parametrize("s3_server", ["radosgw"], indirect=True)
def test_radosgw_refuses_a_part_whose_body_does_not_match_the_declared_sha256(
    s3_server: S3Server, botocore_s3: BaseClient, signer: Signer, upload: Upload
) -> None:
    body = os.urandom(4096)
    url = presign_part(signer, s3_server.endpoint, upload, 1, sha256_hex(body))

    reply = put_like_apptainer(url, corrupted(body), sha256_header=sha256_hex(body))

    assert (reply.status, reply.error_code) == (400, "XAmzContentSHA256Mismatch"), reply
    assert part_numbers_stored(botocore_s3, upload) == []


@pytest.mark.parametrize("s3_server", ["radosgw"], indirect=True)
def test_radosgw_refuses_a_legacy_put_whose_body_does_not_match_the_declared_sha256(
    s3_server: S3Server, botocore_s3: BaseClient, signer: Signer
) -> None:
    key, body = new_key(), os.urandom(MiB)
    url = presign_legacy_put(signer, s3_server.endpoint, key, sha256_hex(body))

    reply = put_like_apptainer(url, corrupted(body), sha256_header=sha256_hex(body),
                               content_type="application/octet-stream")

    assert (reply.status, reply.error_code) == (400, "XAmzContentSHA256Mismatch"), reply
    assert not object_exists(botocore_s3, key)


@pytest.mark.parametrize("s3_server", ["radosgw"], indirect=True)
def test_radosgw_refuses_a_v3_part_url_sent_without_the_sha256_header(
    s3_server: S3Server, botocore_s3: BaseClient, signer: Signer, upload: Upload
) -> None:
    # radosgw takes the payload hash from the header, not from the signed query: without the header it
    # computes another canonical request. This is why the client must send it (s3compliant answered "true").
    body = os.urandom(4096)
    url = presign_part(signer, s3_server.endpoint, upload, 1, sha256_hex(body))

    reply = put_like_apptainer(url, body, sha256_header=None)

    assert (reply.status, reply.error_code) == (403, "SignatureDoesNotMatch"), reply
    assert part_numbers_stored(botocore_s3, upload) == []


# ---------------------------------------------------------------------------------------------------------
# SeaweedFS: never checks the body, takes the payload hash from the signed query. These tests record that
# behaviour, so the suite notices if it changes; integrity tests must use radosgw.


@pytest.mark.parametrize("s3_server", ["seaweedfs"], indirect=True)
def test_seaweedfs_stores_a_part_whose_body_does_not_match_the_declared_sha256(
    s3_server: S3Server, botocore_s3: BaseClient, signer: Signer, upload: Upload
) -> None:
    body = os.urandom(4096)
    url = presign_part(signer, s3_server.endpoint, upload, 1, sha256_hex(body))

    reply = put_like_apptainer(url, corrupted(body), sha256_header=sha256_hex(body))

    assert reply.status == 200, reply
    assert reply.etag is not None
    complete(botocore_s3, upload, [reply.etag])
    assert read_object(botocore_s3, upload.key) == corrupted(body)


@pytest.mark.parametrize("s3_server", ["seaweedfs"], indirect=True)
def test_seaweedfs_stores_a_legacy_put_whose_body_does_not_match_the_declared_sha256(
    s3_server: S3Server, botocore_s3: BaseClient, signer: Signer
) -> None:
    key, body = new_key(), os.urandom(MiB)
    url = presign_legacy_put(signer, s3_server.endpoint, key, sha256_hex(body))

    reply = put_like_apptainer(url, corrupted(body), sha256_header=sha256_hex(body),
                               content_type="application/octet-stream")

    assert reply.status == 200, reply
    assert read_object(botocore_s3, key) == corrupted(body)


@pytest.mark.parametrize("s3_server", ["seaweedfs"], indirect=True)
def test_seaweedfs_accepts_a_v3_part_url_sent_without_the_sha256_header(
    s3_server: S3Server, botocore_s3: BaseClient, signer: Signer, upload: Upload
) -> None:
    body = os.urandom(4096)
    url = presign_part(signer, s3_server.endpoint, upload, 1, sha256_hex(body))

    reply = put_like_apptainer(url, body, sha256_header=None)

    assert reply.status == 200, reply
    assert part_numbers_stored(botocore_s3, upload) == [1]
