"""Fuzz target: the validators of the intercepted routes' JSON bodies (gateway.core.bodies).

Run: ``python -m fuzz.fuzz_bodies [libFuzzer flags] [corpus dir]`` from the repository root (see fuzz/run.py).

The input picks the validator, then the body: raw bytes (the JSON parser's input), deeply nested JSON (the
parser's recursion, which raw bytes reach only by luck), or a JSON object with the route's own field names and
values of any JSON type, so the fuzzer spends most of its time behind the JSON parser. A body is either refused
with a 4xx GatewayError or parsed into a request whose fields hold what the route relies on; anything else is a
crash.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable
from typing import Any

import atheris

with atheris.instrument_imports():
    from gateway.core.bodies import (
        AbortRequest,
        CompleteRequest,
        LegacyStartRequest,
        PartRequest,
        StartRequest,
    )
    from gateway.core.plan import MAX_FILESIZE, MAX_PART_SIZE, MAX_PARTS

from fuzz.harness import ClientError, refused_as_client_error

SHA256_HEX = re.compile(r"[0-9a-f]{64}")
ETAG = re.compile(r"[\x21\x23-\x7e]{1,128}")


def check_start(request: StartRequest) -> None:
    assert type(request.filesize) is int and 1 <= request.filesize <= MAX_FILESIZE


def check_part(request: PartRequest) -> None:
    assert isinstance(request.upload_token, str) and request.upload_token
    assert type(request.part_number) is int and 1 <= request.part_number <= MAX_PARTS
    assert type(request.part_size) is int and 1 <= request.part_size <= MAX_PART_SIZE
    assert SHA256_HEX.fullmatch(request.sha256)


def check_complete(request: CompleteRequest) -> None:
    assert isinstance(request.upload_token, str) and request.upload_token
    numbers = [number for number, _ in request.parts]
    assert numbers == sorted(set(numbers)) and 1 <= len(numbers) <= MAX_PARTS
    assert all(type(n) is int and 1 <= n <= MAX_PARTS for n in numbers)
    # The ETag goes into the CompleteMultipartUpload XML: no quote, '<' or '&' may reach it.
    assert all(ETAG.fullmatch(etag) and "<" not in etag and "&" not in etag for _, etag in request.parts)


def check_abort(request: AbortRequest) -> None:
    assert isinstance(request.upload_token, str) and request.upload_token


def check_legacy(request: LegacyStartRequest) -> None:
    assert type(request.filesize) is int and 0 <= request.filesize <= MAX_FILESIZE
    assert request.sha256 is None or SHA256_HEX.fullmatch(request.sha256)


Validator = tuple[Callable[[bytes], Any], Callable[[Any], None], tuple[str, ...]]
VALIDATORS: tuple[Validator, ...] = (
    (StartRequest.parse, check_start, ("filesize",)),
    (PartRequest.parse, check_part, ("uploadID", "partNumber", "partSize", "sha256sum")),
    (CompleteRequest.parse, check_complete, ("uploadID", "completedParts")),
    (AbortRequest.parse, check_abort, ("uploadID",)),
    (LegacyStartRequest.parse, check_legacy, ("filesize", "sha256sum", "md5sum")),
)
PART_FIELDS = ("partNumber", "token")
HEXISH = list('0123456789abcdefABCDEF"<&')  # sha256sum-like strings, with a few wrong characters


def json_value(provider: atheris.FuzzedDataProvider, names: tuple[str, ...], depth: int = 0) -> Any:
    kind = provider.ConsumeIntInRange(0, 9 if depth < 3 else 6)
    if kind == 0:
        return None
    if kind == 1:
        return provider.ConsumeBool()
    if kind == 2:
        return provider.ConsumeIntInRange(-(2**64), 2**64)
    if kind == 3:
        return provider.ConsumeIntInRange(0, 10_001)  # the interesting range of part numbers
    if kind == 4:
        return provider.ConsumeRegularFloat()
    if kind == 5:
        return provider.ConsumeUnicodeNoSurrogates(provider.ConsumeIntInRange(0, 130))
    if kind == 6:
        return "".join(provider.PickValueInList(HEXISH) for _ in range(64))
    if kind == 7:
        return [json_value(provider, PART_FIELDS, depth + 1) for _ in range(provider.ConsumeIntInRange(0, 4))]
    return {
        provider.PickValueInList([*names, "", "x"]): json_value(provider, PART_FIELDS, depth + 1)
        for _ in range(provider.ConsumeIntInRange(0, len(names) + 1))
    }


def body_of(provider: atheris.FuzzedDataProvider, names: tuple[str, ...]) -> bytes:
    shape = provider.ConsumeIntInRange(0, 2)
    if shape == 0:
        return provider.ConsumeBytes(provider.ConsumeIntInRange(0, 4096))
    if shape == 1:  # deep nesting: the JSON parser's recursion, which raw bytes reach only by luck
        opener = provider.PickValueInList([b"[", b'{"uploadID":', b'{"completedParts":['])
        return opener * provider.ConsumeIntInRange(0, 200_000)
    document = {
        provider.PickValueInList(list(names)): json_value(provider, names)
        for _ in range(provider.ConsumeIntInRange(0, len(names) + 1))
    }
    return json.dumps(document).encode()


def test_one_input(data: bytes) -> None:
    provider = atheris.FuzzedDataProvider(data)
    parse, check, names = VALIDATORS[provider.ConsumeIntInRange(0, len(VALIDATORS) - 1)]
    body = body_of(provider, names)
    outcome = refused_as_client_error(lambda: parse(body))
    if not isinstance(outcome, ClientError):
        check(outcome)


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
