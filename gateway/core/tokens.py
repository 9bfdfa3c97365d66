"""Stateless upload tokens: the ``uploadID`` handed to the client is the upload's whole state, sealed.

Any replica holding the same secret serves any step of an upload, and a restart loses nothing. A token is
``base64url(version || payload || HMAC-SHA256(secret, version || payload))``; the payload is compact JSON.
It is bound to the image id in the path and to the caller's credential (an HMAC of it, so a leaked token
reveals nothing about the credential), and it expires. Secrets can be rotated: tokens are sealed with the
current secret and opened with the current or any previous one.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import orjson

from .errors import Forbidden, Gone, InvalidRequest
from .sigv4 import HmacSha256

__all__ = ["TOKEN_VERSION", "Mode", "TokenSealer", "UploadGrant", "credential_of"]

TOKEN_VERSION = 1
_MAC_BYTES = 32
_MAX_TOKEN_CHARS = 4096

Mode = Literal["adopt", "relay"]


@dataclass(frozen=True, slots=True)
class UploadGrant:
    """What the registry agreed to, for whom, and where the bytes go."""

    mode: Mode
    image_id: str
    bucket: str
    key: str
    upload_id: str  # S3's UploadId
    filesize: int
    part_size: int
    total_parts: int
    expires_at: int  # unix seconds
    caller: str  # hex HMAC of the caller's credential

    def expected_part_size(self, part_number: int) -> int:
        if part_number < self.total_parts:
            return self.part_size
        return self.filesize - self.part_size * (self.total_parts - 1)


_FIELDS = {
    "mode": str,
    "image_id": str,
    "bucket": str,
    "key": str,
    "upload_id": str,
    "filesize": int,
    "part_size": int,
    "total_parts": int,
    "expires_at": int,
    "caller": str,
}


def credential_of(authorization: str | None) -> str:
    """The caller's credential: the Authorization value without a case-insensitive ``Bearer`` scheme."""
    value = (authorization or "").strip()
    scheme, _, rest = value.partition(" ")
    return rest.strip() if scheme.lower() == "bearer" else value


# Tokens opened lately: every part of an upload brings the same one, so its MAC and JSON are checked once. Only
# what the MAC proved is kept; the image, caller and expiry checks run on every request. Bounded: when full, it
# starts over (a few hundred bytes a token).
_OPENED_TOKENS = 1024


class _Opened:
    """A token whose MAC was checked: its grant, the key that sealed it, and the last credential whose caller tag
    matched (so the next part from the same caller compares that credential instead of computing an HMAC)."""

    __slots__ = ("caller_credential", "grant", "key")

    def __init__(self, grant: UploadGrant, key: bytes) -> None:
        self.grant = grant
        self.key = key
        self.caller_credential: bytes | None = None


class TokenSealer:
    __slots__ = ("_keys", "_macs", "_opened")

    def __init__(self, secret: str, previous: Sequence[str] = ()) -> None:
        if not secret:
            raise ValueError("token secret must not be empty")
        self._keys = [s.encode() for s in (secret, *previous)]
        # HMAC states with each key's padded blocks hashed once: half the cost of hmac.digest per token (sigv4.py)
        self._macs = {key: HmacSha256(key) for key in self._keys}
        self._opened: dict[str, _Opened] = {}

    def caller_tag(self, credential: str, *, key: bytes | None = None) -> str:
        return self._caller_tag(_credential_bytes(credential), key or self._keys[0])

    def _caller_tag(self, credential: bytes, key: bytes) -> str:
        message = b"caller\x00" + credential
        mac = self._macs.get(key)
        if mac is None:
            return hmac.digest(key, message, "sha256").hex()[:32]
        return mac.digest(message).hex()[:32]

    def seal(self, grant: UploadGrant) -> str:
        body = bytes([TOKEN_VERSION]) + json.dumps(asdict(grant), separators=(",", ":")).encode()
        mac = hmac.new(self._keys[0], body, hashlib.sha256).digest()
        return base64.urlsafe_b64encode(body + mac).rstrip(b"=").decode("ascii")

    def open(self, token: object, *, image_id: str | None, credential: str, now: float) -> UploadGrant:
        """Verify and decode ``token`` for this image and caller; raise a 4xx GatewayError otherwise.

        ``image_id`` None skips the image binding, for gateway routes that name only the upload.
        """
        if not isinstance(token, str) or not token or len(token) > _MAX_TOKEN_CHARS:
            raise InvalidRequest("uploadID: missing or malformed")
        opened = self._opened.get(token)
        if opened is None:
            opened = _Opened(*self._verify(token))
            if len(self._opened) >= _OPENED_TOKENS:
                self._opened.clear()
            self._opened[token] = opened
        grant = opened.grant
        if image_id is not None and not hmac.compare_digest(grant.image_id, image_id):
            raise Forbidden("uploadID belongs to another image")
        presented = _credential_bytes(credential)
        known = opened.caller_credential
        if known is None or not hmac.compare_digest(presented, known):
            if not hmac.compare_digest(grant.caller, self._caller_tag(presented, opened.key)):
                raise Forbidden("uploadID belongs to another caller")
            opened.caller_credential = presented
        if now >= grant.expires_at:
            raise Gone("upload expired: start the push again")
        return grant

    def _verify(self, token: str) -> tuple[UploadGrant, bytes]:
        """The grant sealed in ``token`` and the key that sealed it, once its MAC is checked."""
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        except (binascii.Error, ValueError):
            raise InvalidRequest("uploadID: malformed") from None
        body, mac = raw[:-_MAC_BYTES], raw[-_MAC_BYTES:]
        if len(body) < 2 or body[0] != TOKEN_VERSION:
            raise InvalidRequest("uploadID: malformed or from an unsupported gateway version")
        key = next((k for k in self._keys if hmac.compare_digest(self._macs[k].digest(body), mac)), None)
        if key is None:
            raise InvalidRequest("uploadID: not issued by this gateway (bad signature)")
        return _decode(body[1:]), key


def _credential_bytes(credential: str) -> bytes:
    # aiohttp decodes header bytes that are not UTF-8 as surrogates: surrogateescape gets the exact bytes back.
    return credential.encode("utf-8", "surrogateescape")


def _decode(payload: bytes) -> UploadGrant:
    # The MAC already proved we wrote this payload; the checks below only guard against our own bugs.
    try:
        data: Any = orjson.loads(payload)
    except ValueError:  # orjson.JSONDecodeError is one
        raise InvalidRequest("uploadID: malformed") from None
    if not isinstance(data, dict) or data.keys() != _FIELDS.keys():
        raise InvalidRequest("uploadID: malformed")
    for name, kind in _FIELDS.items():
        if type(data[name]) is not kind:
            raise InvalidRequest("uploadID: malformed")
    if data["mode"] not in ("adopt", "relay"):
        raise InvalidRequest("uploadID: malformed")
    return UploadGrant(**data)
