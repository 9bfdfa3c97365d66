"""Part arithmetic and request validation of the intercepted routes (pure)."""

from __future__ import annotations

import json
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.errors import InvalidRequest
from gateway.plan import MAX_FILESIZE, MAX_PARTS, plan_parts
from gateway.uploads import (
    CompleteRequest,
    LegacyStartRequest,
    PartRequest,
    StartRequest,
    check_image_id,
)

MIB = 2**20
SHA = "1b37" + "0" * 60


@given(filesize=st.integers(min_value=1, max_value=MAX_FILESIZE), part_size=st.integers(5 * MIB, 5 * 1024 * MIB))
def test_parts_cover_the_file_within_s3_limits_with_no_empty_last_part(filesize: int, part_size: int) -> None:
    size, total = plan_parts(filesize, part_size)
    assert 5 * MIB <= size <= 5 * 1024 * MIB
    assert 1 <= total <= MAX_PARTS
    assert (total - 1) * size < filesize <= total * size  # the last part holds at least one byte


def test_an_exact_multiple_of_the_part_size_has_no_empty_last_part() -> None:
    assert plan_parts(3 * 64 * MIB, 64 * MIB) == (64 * MIB, 3)  # sregistry sent 4, the last empty


def test_part_size_is_raised_to_stay_within_10000_parts() -> None:
    size, total = plan_parts(1024**4, 64 * MIB)  # 1 TiB
    assert total <= MAX_PARTS and size % MIB == 0 and size > 64 * MIB


@pytest.mark.parametrize("filesize", [0, -1, MAX_FILESIZE + 1])
def test_filesize_outside_1_byte_to_5_tib_is_refused(filesize: int) -> None:
    with pytest.raises(InvalidRequest, match="filesize"):
        StartRequest.parse(json.dumps({"filesize": filesize}).encode())


@pytest.mark.parametrize(
    "body",
    [b"", b"not json", b"[]", b'{"filesize": "10"}', b'{"filesize": true}', b'{"filesize": 1.5}', b"\xff\xfe"],
)
def test_start_bodies_that_are_not_a_filesize_object_are_400(body: bytes) -> None:
    with pytest.raises(InvalidRequest):
        StartRequest.parse(body)


def test_part_request_parses_the_clients_fields() -> None:
    body = json.dumps({"partSize": 33554432, "uploadID": "t", "partNumber": 1, "sha256sum": SHA}).encode()
    assert PartRequest.parse(body) == PartRequest("t", 1, 33554432, SHA)


@pytest.mark.parametrize(
    "changes",
    [
        {"sha256sum": SHA.upper()},
        {"sha256sum": SHA[:-1]},
        {"sha256sum": ""},
        {"partNumber": 0},
        {"partNumber": 10001},
        {"uploadID": ""},
        {"uploadID": 5},
        {"partSize": 0},
    ],
)
def test_part_requests_with_bad_fields_are_400(changes: dict[str, object]) -> None:
    body = {"partSize": 33554432, "uploadID": "t", "partNumber": 1, "sha256sum": SHA} | changes
    with pytest.raises(InvalidRequest):
        PartRequest.parse(json.dumps(body).encode())


def test_complete_accepts_quoted_and_bare_etags_and_sorts_parts() -> None:
    body = {"uploadID": "t", "completedParts": [{"partNumber": 2, "token": "b2"}, {"partNumber": 1, "token": '"a1"'}]}
    assert CompleteRequest.parse(json.dumps(body).encode()).parts == ((1, "a1"), (2, "b2"))


@pytest.mark.parametrize(
    "parts",
    [
        [],
        [{"partNumber": 1, "token": "a"}, {"partNumber": 1, "token": "b"}],
        [{"partNumber": 1, "token": "a<b"}],
        [{"partNumber": 1, "token": '"'}],
        [{"partNumber": 1, "token": 7}],
        [{"partNumber": 1}],
        ["x"],
    ],
)
def test_complete_refuses_bad_part_lists(parts: list[object]) -> None:
    with pytest.raises(InvalidRequest):
        CompleteRequest.parse(json.dumps({"uploadID": "t", "completedParts": parts}).encode())


def test_legacy_start_keeps_the_declared_sha256_and_tolerates_its_absence() -> None:
    assert LegacyStartRequest.parse(b'{"filesize": 5, "sha256sum": "' + SHA.encode() + b'"}').sha256 == SHA
    assert LegacyStartRequest.parse(b'{"filesize": 5}').sha256 is None


@pytest.mark.parametrize("image_id", ["42", "1", "9" * 18])
def test_valid_image_ids(image_id: str) -> None:
    assert check_image_id(image_id) == image_id


# sregistry: int() of the id raises ValueError, a number past SQLite's 64-bit INTEGER OverflowError (its 500s).
@pytest.mark.parametrize(
    "image_id",
    ["", "..", ".", "a/b", "a%2Fb", "é", "x" * 129, "a b", "a\r\nb", "abc", "1.0", "99999999999999999999999",
     "9" * 19, "0", "042", "+1", "-1", "1_0", "a.b-c_D", "5f1e3b2c9d4a6e7f8a9b0c1d"],
)  # fmt: skip
def test_invalid_image_ids_are_400(image_id: str) -> None:
    with pytest.raises(InvalidRequest):
        check_image_id(image_id)


def test_another_registrys_object_ids_pass_with_the_documented_pattern() -> None:
    object_ids = re.compile("[0-9a-f]{24}")  # docs/configuration.md, uploads.image_id_pattern
    assert check_image_id("5f1e3b2c9d4a6e7f8a9b0c1d", object_ids) == "5f1e3b2c9d4a6e7f8a9b0c1d"
    for bad in ("42", "5F1E3B2C9D4A6E7F8A9B0C1D", "5f1e3b2c9d4a6e7f8a9b0c1d0"):
        with pytest.raises(InvalidRequest):
            check_image_id(bad, object_ids)
    with pytest.raises(InvalidRequest):  # the safe set bounds every pattern
        check_image_id("a/b", re.compile(".*"))


def test_bodies_orjson_refuses_are_decided_by_the_stdlib_parser_as_before() -> None:
    # orjson parses the common case; UTF-16 bodies and integers past 64 bits it refuses, the stdlib takes.
    assert StartRequest.parse('{"filesize": 10}'.encode("utf-16")).filesize == 10
    with pytest.raises(InvalidRequest, match="filesize: must be within"):
        StartRequest.parse(b'{"filesize": 99999999999999999999999}')
    with pytest.raises(InvalidRequest, match="nested too deeply"):
        StartRequest.parse(b"[" * 100_000)
