"""Fuzz target: ``TokenSealer.open``, the parser of the ``uploadID`` every multipart call carries.

Run: ``python -m fuzz.fuzz_tokens [libFuzzer flags] [corpus dir]`` from the repository root (see fuzz/run.py).

Each input picks one of three shapes, so the fuzzer reaches every layer of the parser:

* any text as the token: it must never open (that would be a forgery);
* a genuine token with bytes changed: it opens only when the decoded bytes are unchanged;
* any payload sealed with the real secret (what a bug in our own sealing could produce): it opens only into a
  well-typed grant, and otherwise is refused with a 4xx.

The image id, the caller's credential (as aiohttp hands header bytes over: surrogate-escaped) and the clock come
from the input too. Any exception other than a 4xx GatewayError is a crash.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import sys

import atheris

with atheris.instrument_imports():
    from gateway.core.tokens import TOKEN_VERSION, TokenSealer, UploadGrant

from fuzz.harness import ClientError, refused_as_client_error

SECRET = "fuzz-secret-fuzz-secret"
PREVIOUS = "fuzz-previous-secret-0"
CREDENTIAL = "0123456789abcdef0123456789abcdef01234567"
SEALER = TokenSealer(SECRET, [PREVIOUS])
GRANT = UploadGrant(
    mode="adopt",
    image_id="42",
    bucket="sregistry",
    key="collection/container:sha256.ab",
    upload_id="upload-1",
    filesize=70 * 2**20,
    part_size=32 * 2**20,
    total_parts=3,
    expires_at=2_000_000_000,
    caller=SEALER.caller_tag(CREDENTIAL),
)
GENUINE = SEALER.seal(GRANT)
GENUINE_RAW = base64.urlsafe_b64decode(GENUINE + "=" * (-len(GENUINE) % 4))
FIELD_TYPES = {"filesize": int, "part_size": int, "total_parts": int, "expires_at": int}


def decoded(token: str) -> bytes | None:
    try:
        return base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    except (binascii.Error, ValueError):
        return None


def open_token(token: str, provider: atheris.FuzzedDataProvider) -> UploadGrant | ClientError:
    image_id = provider.PickValueInList(["42", "43", None])
    credential = provider.PickValueInList([CREDENTIAL, "", "someone-else", "\udcff\udcfe"])
    now = provider.ConsumeIntInRange(0, 2**40)
    return refused_as_client_error(lambda: SEALER.open(token, image_id=image_id, credential=credential, now=now))


def any_text(provider: atheris.FuzzedDataProvider) -> None:
    token = provider.ConsumeUnicodeNoSurrogates(provider.ConsumeIntInRange(0, 5000))
    outcome = open_token(token, provider)
    assert isinstance(outcome, ClientError) or decoded(token) == GENUINE_RAW, f"forged token opened: {token!r}"


def edited_genuine(provider: atheris.FuzzedDataProvider) -> None:
    raw = bytearray(GENUINE_RAW)
    for _ in range(provider.ConsumeIntInRange(0, 8)):
        position = provider.ConsumeIntInRange(0, len(raw) - 1)
        raw[position] ^= provider.ConsumeIntInRange(0, 255)
    cut = provider.ConsumeIntInRange(0, len(raw))
    token = base64.urlsafe_b64encode(bytes(raw[:cut])).decode().rstrip("=")
    outcome = open_token(token, provider)
    if not isinstance(outcome, ClientError):
        assert bytes(raw[:cut]) == GENUINE_RAW, "an edited token opened"
        assert outcome == GRANT


def sealed_payload(provider: atheris.FuzzedDataProvider) -> None:
    """A payload with a valid MAC: the checks behind the seal must still refuse garbage with a 4xx."""
    key = provider.PickValueInList([SECRET, PREVIOUS]).encode()
    body = bytes([TOKEN_VERSION]) + provider.ConsumeBytes(provider.ConsumeIntInRange(0, 2000))
    mac = hmac.new(key, body, hashlib.sha256).digest()
    token = base64.urlsafe_b64encode(body + mac).decode().rstrip("=")
    outcome = open_token(token, provider)
    if not isinstance(outcome, ClientError):
        assert outcome.mode in ("adopt", "relay")
        for name, kind in FIELD_TYPES.items():
            assert type(getattr(outcome, name)) is kind, name


SHAPES = (any_text, edited_genuine, sealed_payload)


def test_one_input(data: bytes) -> None:
    provider = atheris.FuzzedDataProvider(data)
    SHAPES[provider.ConsumeIntInRange(0, len(SHAPES) - 1)](provider)


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
