"""AWS Signature Version 4 for S3: query presigning and header signing.

Pure functions and frozen values, no I/O and no aiohttp: the clock is passed in, so everything here is
tested against fixed vectors (the AWS suite in tests/data/, docs/protocol.md §9.5) and against botocore.

S3 rules encoded here (docs/protocol.md §9):
- object keys are URI-encoded exactly once (``:`` → ``%3A``; ``/`` kept) and paths are never normalised;
- the ``Host`` line carries the port unless it is the scheme's default;
- query values use the unreserved set only, so the ``;`` between signed headers is written ``%3B`` (Go's URL
  parser drops a parameter holding a raw ``;`` and the Apptainer client then sends no sha256 header);
- query pairs are sorted by encoded name, then value (``a`` before ``a-b`` before ``a1``);
- a presigned URL may bind a payload sha256: it is the canonical payload hash AND ``X-Amz-Content-Sha256`` in the
  signed query (variant v3, the form radosgw, SeaweedFS and MinIO all accept), optionally also a signed header (v3h).

Speed (bench/presign.py): the gateway signs one URL per part, so ``presign`` has a direct path for the common
shape (host and at most the sha256 header signed, caller parameters that sort after ``X-Amz-*``) that writes the
canonical query in order instead of sorting it; everything else goes through the general ``presign_canonical``.
``presign_part`` writes a part's ``partNumber``/``uploadId`` pair directly, with the upload id's encoding remembered.
All give the same bytes (tests/core/test_sigv4.py checks it). Also: the per-day key, scope and credential are derived
once, the HMAC key blocks are hashed once, encoded object paths are cached per (bucket, key), and strings with
nothing to encode skip the encoder.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit

if TYPE_CHECKING:
    from _hashlib import HASH

__all__ = [
    "ALGORITHM",
    "MAX_EXPIRES_S",
    "UNSIGNED_PAYLOAD",
    "Credentials",
    "Endpoint",
    "HmacSha256",
    "SignedRequest",
    "SignedURL",
    "Signer",
    "canonical_headers",
    "canonical_query",
    "s3_path",
    "sha256_hex",
    "uri_encode",
    "origin_of",
    "verify_presigned_url",
]

ALGORITHM = "AWS4-HMAC-SHA256"
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
MAX_EXPIRES_S = 604800  # 7 days: S3's limit for a presigned URL
_DEFAULT_PORTS = {"http": 80, "https": 443}
_TWO_DIGITS = tuple(f"{number:02d}" for number in range(100))  # 4x faster than :02d formatting, per field

# Runs of characters outside the unreserved set (plus ``/`` in paths); everything else is written as is.
_RESERVED_RUN = re.compile(r"[^A-Za-z0-9\-_.~]+")
_PATH_RESERVED_RUN = re.compile(r"[^A-Za-z0-9\-_.~/]+")
_is_unreserved = re.compile(r"[A-Za-z0-9\-_.~]+").fullmatch
_PERCENT = tuple(f"%{byte:02X}" for byte in range(256))

# The largest X-Amz-* name a presigned query holds: caller parameters sorting after it follow the auth block.
_LAST_AUTH_PARAM = "X-Amz-SignedHeaders"


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _is_written_as_is(value: str) -> bool:
    """Whether ``value`` needs no encoding in a query or a header (a hex digest does not)."""
    return (value.isalnum() and value.isascii()) or _is_unreserved(value) is not None


def _percent_encode(run: re.Match[str]) -> str:
    return "".join([_PERCENT[byte] for byte in run.group().encode()])


def uri_encode(value: str, *, keep_slash: bool = False) -> str:
    """Percent-encode everything but the unreserved set ``A-Za-z0-9-_.~`` (and ``/`` in paths), UTF-8, upper hex.

    Same result as ``urllib.parse.quote(value, safe="/~" or "~")``, several times faster on strings that are
    already safe or hold a few reserved characters (``quote`` goes character by character once one is found).
    """
    if value.isalnum() and value.isascii():  # most names and values (partNumber, digits): nothing to encode
        return value
    return (_PATH_RESERVED_RUN if keep_slash else _RESERVED_RUN).sub(_percent_encode, value)


_encoded_upload_id = lru_cache(maxsize=1024)(uri_encode)  # one upload asks for many part URLs


@lru_cache(maxsize=1024)  # one upload asks for many part URLs of the same object
def s3_path(bucket: str, key: str) -> str:
    """Path-style canonical URI of an object: ``/<bucket>/<key encoded once>``."""
    return f"/{uri_encode(bucket)}/{uri_encode(key, keep_slash=True)}"


def canonical_query(params: Iterable[tuple[str, str]]) -> str:
    """Encoded ``k=v`` pairs sorted by encoded key, then value (byte order).

    Sorting pairs, not the joined ``k=v`` strings: ``a=`` must come before ``a-b=`` although ``-`` < ``=``.
    """
    pairs = sorted((uri_encode(name), uri_encode(value)) for name, value in params)
    return "&".join([f"{name}={value}" for name, value in pairs])


def canonical_headers(headers: Iterable[tuple[str, str]]) -> tuple[str, str]:
    """Canonical header block and the ``;``-joined signed header names.

    Names are lower-cased; values trimmed with inner whitespace runs collapsed (folded lines included);
    repeated names are joined with ``,`` in the order given.
    """
    merged: dict[str, list[str]] = {}
    for name, value in headers:
        merged.setdefault(name.strip().lower(), []).append(" ".join(value.split()))
    names = sorted(merged)
    block = "".join(f"{name}:{','.join(merged[name])}\n" for name in names)
    return block, ";".join(names)


@dataclass(frozen=True, slots=True)
class Credentials:
    access_key: str
    secret_key: str
    session_token: str = ""

    def __repr__(self) -> str:  # never print the secret
        return f"Credentials(access_key={self.access_key!r}, secret_key='***')"


@dataclass(frozen=True, slots=True)
class Endpoint:
    """An S3 origin: scheme, host and port, with the default port normalised away in ``host_header``."""

    scheme: str
    host: str
    port: int
    # Derived once: every presigned URL needs both.
    _host_header: str = field(init=False, repr=False, compare=False)
    _origin: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.scheme not in _DEFAULT_PORTS:
            raise ValueError(f"expected scheme http or https, got {self.scheme!r}")
        if not 1 <= self.port <= 65535:
            raise ValueError(f"port must be within 1..65535, got {self.port}")
        host = f"[{self.host}]" if ":" in self.host else self.host
        host_header = host if self.port == _DEFAULT_PORTS[self.scheme] else f"{host}:{self.port}"
        object.__setattr__(self, "_host_header", host_header)
        object.__setattr__(self, "_origin", f"{self.scheme}://{host_header}")

    @classmethod
    def parse(cls, url: str) -> Endpoint:
        """``http(s)://host[:port]`` (a lone trailing ``/`` allowed); a path, query or user part is refused.

        S3 is served at the root of its origin (MinIO cannot live under a sub-path), and a URL signed for a
        different path than the one requested is refused by the server, so nothing is silently dropped.
        """
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in _DEFAULT_PORTS:
            raise ValueError(f"expected an http:// or https:// URL, got {url!r}")
        if not parts.hostname:
            raise ValueError(f"missing host in {url!r}")
        if parts.path not in ("", "/") or parts.query or parts.fragment or "@" in parts.netloc:
            raise ValueError(f"expected only scheme, host and port in {url!r}")
        try:
            port = parts.port
        except ValueError as exc:
            raise ValueError(f"bad port in {url!r}") from exc
        if port == 0:
            raise ValueError(f"bad port in {url!r}")
        return cls(scheme, parts.hostname.lower(), port or _DEFAULT_PORTS[scheme])

    @property
    def host_header(self) -> str:
        return self._host_header

    @property
    def origin(self) -> str:
        return self._origin


@dataclass(frozen=True, slots=True)
class SignedURL:
    """A presigned URL with the intermediate texts, for ``presign --explain`` and for tests."""

    url: str
    canonical_request: str
    string_to_sign: str
    signature: str


@dataclass(frozen=True, slots=True)
class SignedRequest:
    """Headers to add to a request (``authorization_headers``) with the intermediate texts."""

    headers: dict[str, str]
    canonical_request: str
    string_to_sign: str
    signature: str


class HmacSha256:
    """HMAC-SHA256 under a fixed key with the padded key blocks hashed once (RFC 2104).

    Copying the two prepared hash states is about twice as fast as ``hmac.new``/``hmac.digest`` per message,
    which rehash the key every time.
    """

    __slots__ = ("_inner", "_outer")

    def __init__(self, key: bytes) -> None:
        block = (hashlib.sha256(key).digest() if len(key) > 64 else key).ljust(64, b"\0")
        self._inner: HASH = hashlib.sha256(bytes(byte ^ 0x36 for byte in block))
        self._outer: HASH = hashlib.sha256(bytes(byte ^ 0x5C for byte in block))

    def digest(self, message: bytes) -> bytes:
        inner = self._inner.copy()
        inner.update(message)
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.digest()

    def hexdigest(self, message: bytes) -> str:
        inner = self._inner.copy()
        inner.update(message)
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.hexdigest()


def origin_of(url: str) -> Endpoint | None:
    """The scheme, host and port of ``url`` (default ports normalised), or None when it has none."""
    try:
        parts = urlsplit(url)
        return Endpoint.parse(f"{parts.scheme}://{parts.netloc}")
    except ValueError:
        return None


@dataclass(frozen=True, slots=True)
class _Day:
    """What one credential-scope day contributes to every signature."""

    signing_key: bytes
    mac: HmacSha256
    scope: str  # <yyyymmdd>/<region>/<service>/aws4_request
    credential: str  # <access key>/<scope>
    credential_param: str  # X-Amz-Credential=<credential, encoded>


class Signer:
    """Signs for one set of credentials, region and service; caches the signing key per date."""

    __slots__ = ("_days", "_token_param", "credentials", "region", "service")

    def __init__(self, credentials: Credentials, region: str, service: str = "s3") -> None:
        self.credentials = credentials
        self.region = region
        self.service = service
        self._days: dict[str, _Day] = {}
        token = credentials.session_token
        self._token_param = f"&X-Amz-Security-Token={uri_encode(token)}" if token else ""

    def _day(self, datestamp: str) -> _Day:
        day = self._days.get(datestamp)
        if day is None:
            key = _hmac(("AWS4" + self.credentials.secret_key).encode(), datestamp)
            for part in (self.region, self.service, "aws4_request"):
                key = _hmac(key, part)
            scope = f"{datestamp}/{self.region}/{self.service}/aws4_request"
            credential = f"{self.credentials.access_key}/{scope}"
            day = _Day(key, HmacSha256(key), scope, credential, f"X-Amz-Credential={uri_encode(credential)}")
            if len(self._days) > 4:  # only today's and yesterday's keys are ever hot
                self._days.clear()
            self._days[datestamp] = day
        return day

    def signing_key(self, datestamp: str) -> bytes:
        return self._day(datestamp).signing_key

    def scope(self, datestamp: str) -> str:
        return f"{datestamp}/{self.region}/{self.service}/aws4_request"

    def _sign(self, amz_date: str, canonical_request: str) -> tuple[str, str]:
        day = self._day(amz_date[:8])
        string_to_sign = (
            f"{ALGORITHM}\n{amz_date}\n{day.scope}\n{hashlib.sha256(canonical_request.encode()).hexdigest()}"
        )
        return string_to_sign, day.mac.hexdigest(string_to_sign.encode())

    # -- query presigning ---------------------------------------------------------------------------------

    def presign_canonical(
        self,
        method: str,
        *,
        origin: str,
        host_header: str,
        canonical_uri: str,
        now: datetime,
        expires_s: int,
        payload_hash: str = UNSIGNED_PAYLOAD,
        query: Iterable[tuple[str, str]] = (),
        headers: Iterable[tuple[str, str]] = (),
        hash_in_query: bool = False,
    ) -> SignedURL:
        """The general presign: ``canonical_uri`` is already encoded; ``headers`` are signed besides ``host``."""
        _check_expires(expires_s)
        amz_date = _amz_date(now)
        header_block, signed_headers = canonical_headers([("host", host_header), *headers])
        params = [
            ("X-Amz-Algorithm", ALGORITHM),
            ("X-Amz-Credential", self._day(amz_date[:8]).credential),
            ("X-Amz-Date", amz_date),
            ("X-Amz-Expires", str(expires_s)),
            ("X-Amz-SignedHeaders", signed_headers),
            *query,
        ]
        if self.credentials.session_token:
            params.append(("X-Amz-Security-Token", self.credentials.session_token))
        if hash_in_query:
            params.append(("X-Amz-Content-Sha256", payload_hash))
        query_string = canonical_query(params)
        canonical_request = (
            f"{method}\n{canonical_uri}\n{query_string}\n{header_block}\n{signed_headers}\n{payload_hash}"
        )
        string_to_sign, signature = self._sign(amz_date, canonical_request)
        url = f"{origin}{canonical_uri}?{query_string}&X-Amz-Signature={signature}"
        return SignedURL(url, canonical_request, string_to_sign, signature)

    def explain_presign(
        self,
        method: str,
        endpoint: Endpoint,
        bucket: str,
        key: str,
        *,
        now: datetime,
        expires_s: int,
        query: Mapping[str, str] | None = None,
        payload_sha256: str | None = None,
        sign_sha256_header: bool = False,
    ) -> SignedURL:
        """Presign an S3 object URL for ``endpoint`` (path-style), by the direct path described in the module doc.

        ``payload_sha256`` binds the body (v3); with ``sign_sha256_header`` the header is also signed (v3h),
        which makes the Apptainer client send it on the legacy single upload.
        """
        if payload_sha256 is None:
            if sign_sha256_header:
                raise ValueError("sign_sha256_header needs payload_sha256")
            payload_hash, hash_param = UNSIGNED_PAYLOAD, ""
        elif _is_written_as_is(payload_sha256):  # e.g. a hex digest: in the query and as a header value as is
            payload_hash, hash_param = payload_sha256, f"X-Amz-Content-Sha256={payload_sha256}&"
        else:
            return self._presign_generally(
                method, endpoint, bucket, key, now, expires_s, query, payload_sha256, sign_sha256_header
            )
        caller_query = ""
        if query:
            pairs = sorted([(uri_encode(name), uri_encode(value)) for name, value in query.items()])
            if pairs[0][0] <= _LAST_AUTH_PARAM:  # a name sorting among the X-Amz-* ones: merge them generally
                return self._presign_generally(
                    method, endpoint, bucket, key, now, expires_s, query, payload_sha256, sign_sha256_header
                )
            caller_query = "&" + "&".join([f"{name}={value}" for name, value in pairs])
        signed = self._presign_encoded(
            method, endpoint, bucket, key, now, expires_s, caller_query, payload_hash, hash_param, sign_sha256_header
        )
        return SignedURL(*signed)

    def presign(
        self,
        method: str,
        endpoint: Endpoint,
        bucket: str,
        key: str,
        *,
        now: datetime,
        expires_s: int,
        query: Mapping[str, str] | None = None,
        payload_sha256: str | None = None,
        sign_sha256_header: bool = False,
    ) -> str:
        """The URL of ``explain_presign``."""
        signed = self.explain_presign(
            method,
            endpoint,
            bucket,
            key,
            now=now,
            expires_s=expires_s,
            query=query,
            payload_sha256=payload_sha256,
            sign_sha256_header=sign_sha256_header,
        )
        return signed.url

    def presign_part(
        self,
        endpoint: Endpoint,
        bucket: str,
        key: str,
        *,
        upload_id: str,
        part_number: int,
        payload_sha256: str,
        now: datetime,
        expires_s: int,
    ) -> str:
        """``presign("PUT", ..., query={"partNumber": ..., "uploadId": ...}, payload_sha256=...)``: the URL of one
        part of a multipart upload, with its sha256 bound. The per-request hot path of an upload: every part of an
        upload brings the same upload id, whose encoding is remembered, and the two names' order is known."""
        if not _is_written_as_is(payload_sha256):
            query = {"partNumber": str(part_number), "uploadId": upload_id}
            return self.presign(
                "PUT", endpoint, bucket, key, now=now, expires_s=expires_s, query=query, payload_sha256=payload_sha256
            )
        caller_query = f"&partNumber={part_number}&uploadId={_encoded_upload_id(upload_id)}"
        hash_param = f"X-Amz-Content-Sha256={payload_sha256}&"
        return self._presign_encoded(
            "PUT", endpoint, bucket, key, now, expires_s, caller_query, payload_sha256, hash_param, False
        )[0]

    def _presign_encoded(
        self,
        method: str,
        endpoint: Endpoint,
        bucket: str,
        key: str,
        now: datetime,
        expires_s: int,
        caller_query: str,
        payload_hash: str,
        hash_param: str,
        sign_sha256_header: bool,
    ) -> tuple[str, str, str, str]:
        """The direct path once the caller's query is encoded, sorted and known to follow the X-Amz-* block: URL,
        canonical request, string to sign, signature (a tuple: the part path takes only the URL)."""
        _check_expires(expires_s)
        amz_date = _amz_date(now)
        day = self._day(amz_date[:8])
        host_header = endpoint.host_header
        if sign_sha256_header:
            signed_headers, signed_headers_param = "host;x-amz-content-sha256", "host%3Bx-amz-content-sha256"
            header_block = f"host:{host_header}\nx-amz-content-sha256:{payload_hash}\n"
        else:
            signed_headers = signed_headers_param = "host"
            header_block = f"host:{host_header}\n"
        query_string = (
            f"X-Amz-Algorithm={ALGORITHM}&{hash_param}{day.credential_param}&X-Amz-Date={amz_date}"
            f"&X-Amz-Expires={expires_s}{self._token_param}&X-Amz-SignedHeaders={signed_headers_param}{caller_query}"
        )
        path = s3_path(bucket, key)
        canonical_request = f"{method}\n{path}\n{query_string}\n{header_block}\n{signed_headers}\n{payload_hash}"
        string_to_sign, signature = self._sign(amz_date, canonical_request)
        url = f"{endpoint.origin}{path}?{query_string}&X-Amz-Signature={signature}"
        return url, canonical_request, string_to_sign, signature

    def _presign_generally(
        self,
        method: str,
        endpoint: Endpoint,
        bucket: str,
        key: str,
        now: datetime,
        expires_s: int,
        query: Mapping[str, str] | None,
        payload_sha256: str | None,
        sign_sha256_header: bool,
    ) -> SignedURL:
        """Object presign through ``presign_canonical``: the reference the direct path must equal."""
        headers = [("x-amz-content-sha256", payload_sha256)] if sign_sha256_header and payload_sha256 else []
        return self.presign_canonical(
            method,
            origin=endpoint.origin,
            host_header=endpoint.host_header,
            canonical_uri=s3_path(bucket, key),
            now=now,
            expires_s=expires_s,
            payload_hash=payload_sha256 or UNSIGNED_PAYLOAD,
            query=(query or {}).items(),
            headers=headers,
            hash_in_query=payload_sha256 is not None,
        )

    # -- header signing (the gateway's own S3 calls) ------------------------------------------------------

    def explain_authorization(
        self,
        method: str,
        *,
        host_header: str,
        canonical_uri: str,
        now: datetime,
        payload_hash: str,
        query: Iterable[tuple[str, str]] = (),
        headers: Iterable[tuple[str, str]] = (),
        content_sha256_header: bool = True,
    ) -> SignedRequest:
        """``authorization_headers`` with the canonical request, string to sign and signature."""
        amz_date = _amz_date(now)
        added = {"x-amz-date": amz_date}
        if content_sha256_header:
            added["x-amz-content-sha256"] = payload_hash
        if self.credentials.session_token:
            added["x-amz-security-token"] = self.credentials.session_token
        header_block, signed_headers = canonical_headers([("host", host_header), *headers, *added.items()])
        canonical_request = (
            f"{method}\n{canonical_uri}\n{canonical_query(query)}\n{header_block}\n{signed_headers}\n"
            f"{payload_hash}"
        )
        string_to_sign, signature = self._sign(amz_date, canonical_request)
        added["Authorization"] = (
            f"{ALGORITHM} Credential={self._day(amz_date[:8]).credential}, "
            f"SignedHeaders={signed_headers}, Signature={signature}"
        )
        return SignedRequest(added, canonical_request, string_to_sign, signature)

    def authorization_headers(
        self,
        method: str,
        *,
        host_header: str,
        canonical_uri: str,
        now: datetime,
        payload_hash: str,
        query: Iterable[tuple[str, str]] = (),
        headers: Iterable[tuple[str, str]] = (),
        content_sha256_header: bool = True,
    ) -> dict[str, str]:
        """Headers to add to a request: ``x-amz-date``, ``x-amz-content-sha256`` and ``Authorization``.

        ``headers`` are the request's other headers to sign (e.g. Content-Type, Content-MD5); ``host`` is
        always signed. S3 requires ``x-amz-content-sha256``; the generic AWS suite does not use it.
        """
        return self.explain_authorization(
            method,
            host_header=host_header,
            canonical_uri=canonical_uri,
            now=now,
            payload_hash=payload_hash,
            query=query,
            headers=headers,
            content_sha256_header=content_sha256_header,
        ).headers


_AMZ_DATE = re.compile(r"[0-9]{8}T[0-9]{6}Z")
_SIGNATURE = re.compile(r"[0-9a-f]{64}")
MAX_CLOCK_SKEW_S = 900  # S3's own tolerance for a request's date


def verify_presigned_url(url: str, credentials: Credentials, *, method: str, now: datetime) -> bool:
    """Whether ``url`` is a query-presigned SigV4 URL for ``method`` that ``credentials`` signed and that is valid at
    ``now``: their access key in ``X-Amz-Credential``, a signature only their secret makes over the URL as written
    (path unnormalised, every query parameter), signed less than 15 minutes in the future and not expired.

    Only the shape S3 clients presign for a download is taken: ``host`` the only signed header, an unsigned
    payload. Anything else, malformed or not, is False."""
    try:
        parts = urlsplit(url)
        host_header = Endpoint.parse(f"{parts.scheme}://{parts.netloc}").host_header
        pairs = []
        auth: dict[str, str] = {}
        for item in parts.query.split("&"):
            raw_name, _, raw_value = item.partition("=")
            name, value = unquote(raw_name, errors="strict"), unquote(raw_value, errors="strict")
            if name.startswith("X-Amz-"):
                if name in auth:
                    return False  # which one would S3 take?
                auth[name] = value
            if name != "X-Amz-Signature":
                pairs.append((name, value))
    except (ValueError, UnicodeDecodeError):
        return False
    access_key, _, scope = auth.get("X-Amz-Credential", "").partition("/")
    datestamp, region, service, terminator = (scope.split("/") + ["", "", "", ""])[:4]
    amz_date, expires = auth.get("X-Amz-Date", ""), auth.get("X-Amz-Expires", "")
    signature = auth.get("X-Amz-Signature", "")
    if (
        parts.fragment
        or not parts.path.startswith("/")
        or auth.get("X-Amz-Algorithm") != ALGORITHM
        or auth.get("X-Amz-SignedHeaders") != "host"
        or "X-Amz-Content-Sha256" in auth
        or not hmac.compare_digest(access_key.encode(), credentials.access_key.encode())
        or scope.count("/") != 3
        or (service, terminator) != ("s3", "aws4_request")
        or _AMZ_DATE.fullmatch(amz_date) is None
        or amz_date[:8] != datestamp
        or not (expires.isdigit() and expires.isascii() and 1 <= int(expires) <= MAX_EXPIRES_S)
        or _SIGNATURE.fullmatch(signature) is None
    ):
        return False
    try:
        signed_at = datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    except ValueError:
        return False
    age = (now - signed_at).total_seconds()
    if not -MAX_CLOCK_SKEW_S <= age < int(expires):
        return False
    canonical_request = (
        f"{method}\n{parts.path}\n{canonical_query(pairs)}\nhost:{host_header}\n\nhost\n{UNSIGNED_PAYLOAD}"
    )
    _, expected = Signer(credentials, region, service)._sign(amz_date, canonical_request)  # the signer's own steps
    return hmac.compare_digest(expected, signature)


def _hmac(key: bytes, message: str) -> bytes:
    return hmac.digest(key, message.encode(), "sha256")


def _check_expires(expires_s: int) -> None:
    if not 1 <= expires_s <= MAX_EXPIRES_S:
        raise ValueError(f"expires_s must be within 1..{MAX_EXPIRES_S}, got {expires_s}")


_last_amz_date: tuple[float, str] = (float("nan"), "")  # (the second, its text): every URL of a second shares it


def _amz_date(now: datetime) -> str:
    """``yyyymmddTHHMMSSZ`` in UTC; a naive time is refused (it would silently be local time)."""
    global _last_amz_date
    if now.utcoffset() is None:
        raise ValueError("now must be an aware datetime")
    second = now.timestamp() // 1
    last = _last_amz_date
    if last[0] == second:
        return last[1]
    utc = now.astimezone(UTC)
    two = _TWO_DIGITS
    text = f"{utc.year:04d}{two[utc.month]}{two[utc.day]}T{two[utc.hour]}{two[utc.minute]}{two[utc.second]}Z"
    _last_amz_date = (second, text)
    return text
