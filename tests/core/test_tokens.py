"""Upload tokens: sealed, bound to image and caller, expiring; any tampering is a 4xx."""

from __future__ import annotations

import base64
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.core.errors import Forbidden, Gone, InvalidRequest
from gateway.core.tokens import TokenSealer, UploadGrant, credential_of

SEALER = TokenSealer("s3cret-s3cret-s3cret")
CREDENTIAL = "0123456789abcdef0123456789abcdef01234567"


def grant(**changes: object) -> UploadGrant:
    values: dict[str, object] = dict(
        mode="adopt",
        image_id="42",
        bucket="sregistry",
        key="c/n:sha256.ab",
        upload_id="u-1",
        filesize=70 * 2**20,
        part_size=32 * 2**20,
        total_parts=3,
        expires_at=2_000_000_000,
        caller=SEALER.caller_tag(CREDENTIAL),
    )
    values.update(changes)
    return UploadGrant(**values)  # type: ignore[arg-type]


def test_a_sealed_token_opens_to_the_same_grant_on_any_replica() -> None:
    token = SEALER.seal(grant())
    other_replica = TokenSealer("s3cret-s3cret-s3cret")
    assert other_replica.open(token, image_id="42", credential=CREDENTIAL, now=1_900_000_000) == grant()


def test_token_is_bound_to_the_image_in_the_path() -> None:
    with pytest.raises(Forbidden, match="another image"):
        SEALER.open(SEALER.seal(grant()), image_id="43", credential=CREDENTIAL, now=0)


def test_token_is_bound_to_the_caller() -> None:
    with pytest.raises(Forbidden, match="another caller"):
        SEALER.open(SEALER.seal(grant()), image_id="42", credential="someone-else", now=0)


def test_an_expired_token_answers_410() -> None:
    with pytest.raises(Gone):
        SEALER.open(SEALER.seal(grant()), image_id="42", credential=CREDENTIAL, now=2_000_000_000)


def test_a_token_sealed_with_another_secret_is_refused() -> None:
    token = TokenSealer("another-secret-value").seal(grant())
    with pytest.raises(InvalidRequest, match="not issued by this gateway"):
        SEALER.open(token, image_id="42", credential=CREDENTIAL, now=0)


def test_previous_secrets_still_open_tokens_after_rotation() -> None:
    old = TokenSealer("old-secret-old-secret")
    token = old.seal(grant(caller=old.caller_tag(CREDENTIAL)))
    rotated = TokenSealer("new-secret-new-secret", previous=["old-secret-old-secret"])
    assert rotated.open(token, image_id="42", credential=CREDENTIAL, now=0).upload_id == "u-1"


def test_swapping_fields_in_the_payload_breaks_the_seal() -> None:
    raw = base64.urlsafe_b64decode(SEALER.seal(grant()) + "==")
    body = json.loads(raw[1:-32])
    body["key"] = "other/key"
    forged = bytes([1]) + json.dumps(body, separators=(",", ":")).encode() + raw[-32:]
    with pytest.raises(InvalidRequest):
        SEALER.open(base64.urlsafe_b64encode(forged).decode(), image_id="42", credential=CREDENTIAL, now=0)


@given(position=st.integers(min_value=0), bit=st.integers(min_value=0, max_value=7))
def test_any_bit_flip_is_refused_as_a_client_error(position: int, bit: int) -> None:
    raw = bytearray(base64.urlsafe_b64decode(SEALER.seal(grant()) + "=="))
    raw[position % len(raw)] ^= 1 << bit
    token = base64.urlsafe_b64encode(bytes(raw)).decode().rstrip("=")
    with pytest.raises(InvalidRequest):
        SEALER.open(token, image_id="42", credential=CREDENTIAL, now=0)


@given(st.one_of(st.text(max_size=300), st.integers(), st.none(), st.lists(st.text())))
def test_garbage_never_opens_and_never_raises_anything_but_a_4xx(token: object) -> None:
    with pytest.raises(InvalidRequest):
        SEALER.open(token, image_id="42", credential=CREDENTIAL, now=0)


@given(cut=st.integers(min_value=1, max_value=400))
def test_truncated_tokens_are_refused(cut: int) -> None:
    token = SEALER.seal(grant())
    with pytest.raises(InvalidRequest):
        SEALER.open(token[: max(0, len(token) - cut)], image_id="42", credential=CREDENTIAL, now=0)


@pytest.mark.parametrize(
    ("header", "credential"),
    [("BEARER abc", "abc"), ("Bearer abc", "abc"), ("bearer  abc ", "abc"), ("abc", "abc"), (None, ""), ("", "")],
)
def test_the_credential_is_the_token_without_a_case_insensitive_bearer_scheme(
    header: str | None, credential: str
) -> None:
    assert credential_of(header) == credential


def test_bearer_casing_does_not_change_who_the_caller_is() -> None:
    token = SEALER.seal(grant())
    SEALER.open(token, image_id="42", credential=credential_of(f"BEARER {CREDENTIAL}"), now=0)
    SEALER.open(token, image_id="42", credential=credential_of(f"Bearer {CREDENTIAL}"), now=0)


def test_a_token_opened_before_is_still_checked_for_image_caller_and_expiry_each_time() -> None:
    sealer = TokenSealer("s3cret-s3cret-s3cret")
    token = sealer.seal(grant())
    for _ in range(2):  # the second time its MAC and JSON are not read again
        assert sealer.open(token, image_id="42", credential=CREDENTIAL, now=0) == grant()
    with pytest.raises(Forbidden, match="another image"):
        sealer.open(token, image_id="43", credential=CREDENTIAL, now=0)
    with pytest.raises(Forbidden, match="another caller"):
        sealer.open(token, image_id="42", credential="someone-else", now=0)
    with pytest.raises(Gone):
        sealer.open(token, image_id="42", credential=CREDENTIAL, now=2_000_000_000)


def test_the_caller_remembered_for_a_token_never_lets_another_caller_in() -> None:
    sealer = TokenSealer("s3cret-s3cret-s3cret")
    token = sealer.seal(grant())
    sealer.open(token, image_id="42", credential=CREDENTIAL, now=0)  # this caller is remembered for the token
    for other in ("someone-else", CREDENTIAL[:-1], CREDENTIAL + "0", "", "caf\udce9"):
        with pytest.raises(Forbidden, match="another caller"):
            sealer.open(token, image_id="42", credential=other, now=0)
    assert sealer.open(token, image_id="42", credential=CREDENTIAL, now=0) == grant()
    # A caller whose credential is not valid UTF-8 (aiohttp's surrogates) is remembered by its exact bytes.
    odd = "caf\udce9"
    odd_token = sealer.seal(grant(caller=sealer.caller_tag(odd)))
    for _ in range(2):
        assert sealer.open(odd_token, image_id="42", credential=odd, now=0).caller == sealer.caller_tag(odd)
    with pytest.raises(Forbidden, match="another caller"):
        sealer.open(odd_token, image_id="42", credential="caf\udce8", now=0)


def test_tokens_opened_lately_are_remembered_up_to_a_bound() -> None:
    sealer = TokenSealer("s3cret-s3cret-s3cret")
    for n in range(3000):
        sealer.open(sealer.seal(grant(upload_id=f"u-{n}")), image_id="42", credential=CREDENTIAL, now=0)
    assert 0 < len(sealer._opened) <= 1024
