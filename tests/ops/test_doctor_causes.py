"""doctor's pure parts, without a server: what it reads out of an answer and the causes it names in plain words
(tests/ops/test_doctor.py runs the checks against real servers)."""

from __future__ import annotations

from multidict import CIMultiDict, CIMultiDictProxy

from gateway.core.sigv4 import Endpoint
from gateway.edges.s3 import S3ClientError, S3ServerError
from gateway.ops.doctor.answers import Answer, api_version, first_public_image, host_seen_by_server, is_healthy
from gateway.ops.doctor.causes import (
    connection_cause,
    duration,
    external_refusal_cause,
    internal_refusal_cause,
    upstream_status_cause,
)
from tests.support.gateway_fixtures import gateway_config

CONFIG = gateway_config(upstream_url="http://127.0.0.1:9")
EXTERNAL = Endpoint.parse("http://localhost:9000")


def answer(status: int, body: bytes = b"", **headers: str) -> Answer:
    return Answer(status, CIMultiDictProxy(CIMultiDict(headers)), body)


def test_the_registry_documents_doctor_reads() -> None:
    assert api_version(b'{"data":{"apiVersion":"2.0.0"}}') == "2.0.0"
    assert api_version(b"<html>") is None and api_version(b'{"data":{"apiVersion":""}}') is None
    listing = b'{"results":[{"collection":"c","name":"n","tag":"v1"}]}'
    assert first_public_image(listing) == "c/n:v1"
    assert first_public_image(b'{"results":[]}') is None
    assert first_public_image(b'{"results":[{"collection":"c","name":"","version":"v"}]}') is None
    assert is_healthy(b'{"status":"ok"}') and not is_healthy(b'{"status":"starting"}') and not is_healthy(b"ok")


def test_durations_read_as_minutes_and_seconds() -> None:
    assert [duration(s) for s in (5, 60, 61.4, 3600)] == ["5 s", "1 min", "1 min 1 s", "60 min"]


def test_a_refused_signature_at_the_internal_endpoint_blames_the_secret_first() -> None:
    exc = S3ClientError("ListObjectsV2", status=403, code="SignatureDoesNotMatch", message="")
    cause = internal_refusal_cause(exc, CONFIG)
    assert cause.startswith("403 SignatureDoesNotMatch: ") and "s3.secret_key is wrong" in cause
    missing = S3ClientError("ListObjectsV2", status=404, code="NoSuchBucket", message="")
    assert f"there is no bucket {CONFIG.s3.bucket!r}" in internal_refusal_cause(missing, CONFIG)
    broken = S3ServerError("ListObjectsV2", status=500, code="InternalError", message="x")
    failed = internal_refusal_cause(broken, CONFIG)
    assert failed == "500 InternalError (x): the S3 server failed; its log tells why"


def test_a_refused_signature_at_the_external_endpoint_names_the_host_the_server_saw() -> None:
    document = (
        b"<Error><Code>SignatureDoesNotMatch</Code><Message>no</Message>"
        b"<CanonicalRequest>PUT\n/b/k\n\nhost:localhost\n</CanonicalRequest></Error>"
    )
    assert host_seen_by_server("PUT\n/b/k\n\nhost:localhost\n") == "localhost"
    cause = external_refusal_cause(answer(403, document), EXTERNAL)
    assert cause.startswith("403 SignatureDoesNotMatch (no): ")
    assert "The server saw Host 'localhost', the URL was signed for 'localhost:9000'." in cause


def test_answers_that_are_not_s3_are_told_apart_from_s3_refusals() -> None:
    assert "not an S3 answer" in external_refusal_cause(answer(404, b"<html>"), EXTERNAL)
    assert "client_max_body_size 0" in external_refusal_cause(answer(413), EXTERNAL)
    redirect = external_refusal_cause(answer(301, Location="https://elsewhere/"), EXTERNAL)
    assert "redirected to 'https://elsewhere/'" in redirect


def test_connection_and_status_causes() -> None:
    assert connection_cause(TimeoutError(), tls_hint="").startswith("no answer within 30 s")
    assert connection_cause(ValueError("odd"), tls_hint="") == "ValueError: odd"
    assert "not a library-API registry" in upstream_status_cause(404)
    assert upstream_status_cause(418) == "GET /version answered 418, expected 200"
