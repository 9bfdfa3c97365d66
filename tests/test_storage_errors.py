"""gateway.storage_errors: the one translation of S3 failures during upload steps into the gateway's errors."""

from __future__ import annotations

import pytest

from gateway.errors import Conflict, GatewayError, InvalidRequest, StorageUnavailable
from gateway.s3 import InvalidPartList, NoSuchUpload, S3ClientError, S3ConnectionError, S3Error, S3ServerError
from gateway.s3.errors import malformed
from gateway.storage_errors import ABORTING, COMPLETING, LISTING_PARTS, RECORDING, RELAYING, STARTING, Step

ALL_STEPS = [STARTING, RECORDING, LISTING_PARTS, COMPLETING, RELAYING, ABORTING]


def client_error(code: str, status: int = 400) -> S3ClientError:
    return S3ClientError("CompleteMultipartUpload", status=status, code=code, message="m", request_id="r1")


@pytest.mark.parametrize("step", ALL_STEPS, ids=lambda step: step.doing)
def test_an_upload_gone_from_storage_is_409_at_every_step(step: Step) -> None:
    error = step.error(NoSuchUpload("ListParts", status=404, code="NoSuchKey", message=""))
    assert type(error) is Conflict and error.status == 409
    assert error.message.startswith("upload no longer exists in storage")


def test_listing_the_parts_of_a_gone_upload_does_not_tell_the_client_to_push_again() -> None:
    # The upload may have completed: the resuming client learns it is gone, not that its push failed.
    assert LISTING_PARTS.error(NoSuchUpload("ListParts", status=404, code="NoSuchUpload", message="")).message == (
        "upload no longer exists in storage (completed, aborted or expired)"
    )
    assert COMPLETING.error(NoSuchUpload("ListParts", status=404, code="NoSuchUpload", message="")).message.endswith(
        "start the push again"
    )


@pytest.mark.parametrize(
    "code", ["InvalidPart", "InvalidPartOrder", "EntityTooSmall", "MalformedXML", "InvalidArgument"]
)
def test_at_complete_storage_refusing_the_parts_is_the_clients_400(code: str) -> None:
    error = COMPLETING.error(client_error(code))
    assert type(error) is InvalidRequest and error.status == 400
    assert error.message == f"storage refused the parts: {code}: m"
    # Elsewhere the gateway made the request, not the client: its refusal is storage's failure.
    assert type(LISTING_PARTS.error(client_error(code))) is StorageUnavailable


def test_a_part_list_refused_before_sending_is_the_clients_400_at_complete_only() -> None:
    refused = InvalidPartList("part number 0 is outside 1..10000")
    assert COMPLETING.error(refused).status == 400
    assert COMPLETING.error(refused).message == "completedParts: part number 0 is outside 1..10000"
    assert STARTING.error(refused).status == 503


@pytest.mark.parametrize("step", ALL_STEPS, ids=lambda step: step.doing)
def test_storage_refusing_the_gateway_is_503_at_every_step(step: Step) -> None:
    # Issue 15: at complete this was a 502 UpstreamUnavailable, an error named for the registry.
    error = step.error(client_error("AccessDenied", status=403))
    assert type(error) is StorageUnavailable and error.status == 503
    assert error.message.startswith(f"storage refused the gateway {step.doing}: ")
    assert "403 AccessDenied" in error.message


@pytest.mark.parametrize(
    ("failure", "retry"),
    [
        (S3ServerError("CompleteMultipartUpload", status=500, code="InternalError", message=""), True),
        (S3ConnectionError("CreateMultipartUpload", "ClientConnectorCertificateError: …", request_sent=False), True),
        (malformed("ListParts", "the answer is not XML"), False),
    ],
    ids=["server-error", "connection", "malformed-answer"],
)
@pytest.mark.parametrize("step", ALL_STEPS, ids=lambda step: step.doing)
def test_storage_failing_is_503_saying_what_failed_and_whether_to_retry(
    step: Step, failure: S3Error, retry: bool
) -> None:
    error = step.error(failure)
    assert type(error) is StorageUnavailable and error.status == 503
    assert error.message.startswith(f"storage failed {step.doing}: {failure}")
    assert error.message.endswith("; retry") is retry


async def test_run_raises_the_translation_with_the_s3_error_as_its_cause() -> None:
    failure = S3ServerError("HeadObject", status=503, code="SlowDown", message="")

    async def failing() -> None:
        raise failure

    with pytest.raises(GatewayError) as raised:
        await RELAYING.run(failing())
    assert raised.value.status == 503 and raised.value.__cause__ is failure
    assert await RELAYING.run(_value()) == 7


async def _value() -> int:
    return 7
