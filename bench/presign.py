"""Microseconds per presigned S3 UploadPart URL: our signer against botocore, minio-py and a hashing floor.

Usage: ``python bench/presign.py [--seconds S]``. Everything runs in one process, one after the other, on the
vectors of docs/protocol.md §9.5 (PUT, partNumber + uploadId, 300 s). Ours binds the part sha256 (variant
v3, docs/protocol.md §9); botocore and minio-py cannot, so they produce the plain UNSIGNED-PAYLOAD form (v0) — the same
amount of signing work. Every signer reads its own clock per URL (ours: ``datetime.now(UTC)``), as a gateway would.
The figure per signer is the best of several rounds (least disturbed by the rest of the machine).
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import botocore.session
from botocore.config import Config
from minio import Minio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from gateway.core.sigv4 import Credentials, Endpoint, Signer  # noqa: E402

ENDPOINT = "http://minio.example.org:9000"
ACCESS_KEY = SECRET_KEY = "minioadmin"
REGION = "us-east-1"
BUCKET = "sregistry"
KEY = "test/big:sha256.92278b7c046c0acf0952b3e1663b8abb819c260e8a96705bad90833d87ca0874"
UPLOAD_ID = (
    "ZjUyNTk1ZWQtZTQwZC00YmI5LWE5Y2ItNzQzMDUzZjNkYWQyLjJkYjI0YWVkLTcyOWEtNDM2ZC04ZTM2LTA2NGIzNThjMmI3Mw"
)
PART_SHA256 = "6ab72eeb9e77b07540897e0c8d6d23ec8eef0f8c3a47e1b3f4e93443d9536bed"
EXPIRES_S = 300
# presign-vectors.json, variant v3, at 2024-01-02T03:04:05Z: checked before timing anything.
V3_SIGNATURE = "6610a25398e5aecb5c859d1a31e1972c54375339838f1d3692af2af721cc106d"

PartSigner = Callable[[int], str]


def ours() -> PartSigner:
    signer = Signer(Credentials(ACCESS_KEY, SECRET_KEY), REGION)
    endpoint = Endpoint.parse(ENDPOINT)

    def sign(part_number: int) -> str:  # the gateway's part path
        return signer.presign_part(
            endpoint,
            BUCKET,
            KEY,
            upload_id=UPLOAD_ID,
            part_number=part_number,
            payload_sha256=PART_SHA256,
            now=datetime.now(UTC),
            expires_s=EXPIRES_S,
        )

    return sign


def check_ours_against_the_v3_vector() -> None:
    url = Signer(Credentials(ACCESS_KEY, SECRET_KEY), REGION).presign(
        "PUT",
        Endpoint.parse(ENDPOINT),
        BUCKET,
        KEY,
        now=datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC),
        expires_s=EXPIRES_S,
        query={"partNumber": "1", "uploadId": UPLOAD_ID},
        payload_sha256=PART_SHA256,
    )
    if not url.endswith(f"&X-Amz-Signature={V3_SIGNATURE}"):
        raise SystemExit(f"our signer does not reproduce the v3 vector: {url}")


def botocore_client() -> tuple[PartSigner, Callable[[], None]]:
    client = botocore.session.get_session().create_client(
        "s3",
        region_name=REGION,
        endpoint_url=ENDPOINT,
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
        config=Config(signature_version="s3v4", s3={"addressing_style": "path"}),
    )

    def sign(part_number: int) -> str:
        url: str = client.generate_presigned_url(
            "upload_part",
            Params={"Bucket": BUCKET, "Key": KEY, "PartNumber": part_number, "UploadId": UPLOAD_ID},
            ExpiresIn=EXPIRES_S,
        )
        return url

    return sign, client.close


def minio_client() -> PartSigner:
    # With the region given, minio-py never asks the server for the bucket location: no network call.
    client = Minio(ENDPOINT.removeprefix("http://"), ACCESS_KEY, SECRET_KEY, secure=False, region=REGION)
    expires = timedelta(seconds=EXPIRES_S)

    def sign(part_number: int) -> str:
        return client.get_presigned_url(
            "PUT",
            BUCKET,
            KEY,
            expires=expires,
            extra_query_params={"partNumber": str(part_number), "uploadId": UPLOAD_ID},
        )

    return sign


def floor() -> PartSigner:
    """The unavoidable work: sha256 of a canonical request and one HMAC of a string to sign, of typical sizes."""
    canonical_request = ("x" * 520).encode()
    string_to_sign = ("y" * 130).encode()
    key = hashlib.sha256(b"signing key").digest()

    def sign(part_number: int) -> str:
        hashlib.sha256(canonical_request).hexdigest()
        return hmac.digest(key, string_to_sign, "sha256").hex()

    return sign


def microseconds_per_call(sign: PartSigner, seconds: float, rounds: int = 7) -> float:
    """Best of ``rounds`` timed loops, each about ``seconds / rounds`` long."""
    calls = _calibrate(sign, seconds / rounds)
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter_ns()
        for part_number in range(1, calls + 1):
            sign(part_number)
        best = min(best, (time.perf_counter_ns() - start) / calls / 1000)
    return best


def _calibrate(sign: PartSigner, round_s: float) -> int:
    calls = 100
    while True:
        start = time.perf_counter()
        for part_number in range(1, calls + 1):
            sign(part_number)
        elapsed = time.perf_counter() - start
        if elapsed >= round_s / 4:
            return max(100, int(calls * round_s / elapsed))
        calls *= 4


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=2.0, help="time budget per signer (default 2)")
    args = parser.parse_args()

    check_ours_against_the_v3_vector()
    boto_sign, boto_close = botocore_client()
    contenders: list[tuple[str, PartSigner]] = [
        ("ours (v3, sha256 bound)", ours()),
        ("botocore generate_presigned_url (v0)", boto_sign),
        ("minio-py get_presigned_url (v0)", minio_client()),
        ("floor (1 sha256 + 1 HMAC)", floor()),
    ]
    print(f"python {sys.version.split()[0]}, part URL: PUT {BUCKET}/{KEY[:20]}… partNumber+uploadId, {EXPIRES_S} s")
    print("ours reproduces presign-vectors.json v3: yes")
    try:
        results = {name: microseconds_per_call(sign, args.seconds) for name, sign in contenders}
    finally:
        boto_close()
    ours_us = results[contenders[0][0]]
    print(f"{'signer':<40} {'µs/URL':>8} {'× ours':>8}")
    for name, us in results.items():
        print(f"{name:<40} {us:8.2f} {us / ours_us:8.2f}")
    botocore_us = results[contenders[1][0]]
    minio_us = results[contenders[2][0]]
    print(f"botocore/ours = {botocore_us / ours_us:.1f}x, minio-py/ours = {minio_us / ours_us:.1f}x")


if __name__ == "__main__":
    main()
