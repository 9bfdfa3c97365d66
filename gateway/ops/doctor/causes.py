"""Why a check failed, in plain words: from an exception or a refusal to the likely cause and its fix. Pure: no
call is made here (aiohttp's exception classes are only told apart)."""

from __future__ import annotations

import aiohttp

from ...core.config import Config
from ...core.sigv4 import Endpoint
from ...edges.s3 import MALFORMED_ANSWER, S3ConnectionError, S3ResponseError
from .answers import Answer, host_seen_by_server

__all__ = [
    "REQUEST_TIMEOUT_S",
    "S3_CLOCK_LIMIT",
    "connection_cause",
    "describe",
    "duration",
    "external_refusal_cause",
    "internal_refusal_cause",
    "upstream_status_cause",
]

S3_CLOCK_LIMIT = "15 minutes"  # what S3 servers tolerate before RequestTimeTooSkewed
REQUEST_TIMEOUT_S = 30.0  # any single call the doctor makes


def connection_cause(exc: BaseException, *, tls_hint: str) -> str:
    """Why no HTTP answer came, in plain words (an S3ConnectionError is explained by what raised it)."""
    if isinstance(exc, S3ConnectionError) and exc.__cause__ is not None:
        exc = exc.__cause__
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return f"TLS: the certificate of {exc.host}:{exc.port} is not trusted ({exc.certificate_error}); {tls_hint}"
    if isinstance(exc, aiohttp.ClientSSLError):
        return (
            f"TLS handshake with {exc.host}:{exc.port} failed ({exc.os_error}): an https:// URL for a port that "
            "speaks plain HTTP looks like this (use http://, or the TLS port)"
        )
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        return f"the host name {exc.host} does not resolve from here (DNS, /etc/hosts, a typo in the URL?)"
    if isinstance(exc, aiohttp.ClientConnectorError):
        if isinstance(exc.os_error, ConnectionRefusedError):
            return (
                f"connection refused: nothing listens at {exc.host}:{exc.port} (is the server running, is the "
                "port right?)"
            )
        return f"cannot connect to {exc.host}:{exc.port} ({exc.os_error.strerror or exc.os_error})"
    if isinstance(exc, TimeoutError):
        return (
            f"no answer within {REQUEST_TIMEOUT_S:g} s: a firewall drops the traffic, or the server hangs "
            "(or the timeout settings are too short)"
        )
    if isinstance(exc, aiohttp.ServerDisconnectedError | aiohttp.ClientResponseError | aiohttp.ClientPayloadError):
        return (
            f"the server closed the connection or answered something that is not HTTP ({describe(exc)}): an "
            "http:// URL for a port that speaks TLS looks like this (use https://)"
        )
    return describe(exc)


def internal_refusal_cause(exc: S3ResponseError, config: Config) -> str:
    """Why the internal endpoint refused a header-signed call."""
    s3 = config.s3
    said = f"{exc.status} {exc.code}" + (f" ({exc.message})" if exc.message else "")
    if exc.code == "SignatureDoesNotMatch":
        return (
            f"{said}: S3 computed another signature for the same request. Most likely s3.secret_key is wrong "
            f"(not the secret of access key {s3.access_key}); also possible: s3.region {s3.region!r} is not the "
            "server's, or a proxy in front of the internal endpoint changes the Host header or the path"
        )
    if exc.code == "InvalidAccessKeyId":
        return f"{said}: S3 does not know the access key {s3.access_key!r} (s3.access_key)"
    if exc.code in ("AuthorizationHeaderMalformed", "InvalidRegion"):
        return f"{said}: s3.region {s3.region!r} is not the server's region (MinIO: MINIO_SITE_REGION)"
    if exc.code == "RequestTimeTooSkewed":
        return f"{said}: this machine's clock is more than {S3_CLOCK_LIMIT} off S3's: sync the clocks with NTP"
    if exc.code in ("AccessDenied", "AllAccessDisabled"):
        return (
            f"{said}: the credentials are valid but may not use bucket {s3.bucket!r}: the access key needs to "
            "list, read, write and delete objects in it (and run multipart uploads)"
        )
    if exc.code == "NoSuchBucket":
        return f"{said}: there is no bucket {s3.bucket!r} (s3.bucket)"
    if exc.code in ("PermanentRedirect", "TemporaryRedirect") or 300 <= exc.status < 400:
        return (
            f"{said}: S3 sends the request elsewhere: the bucket lives in another region, or the server wants "
            "virtual-host style (bucket.host); the gateway addresses buckets path-style (/bucket/key)"
        )
    if exc.code == MALFORMED_ANSWER or (not exc.message and exc.code in ("NotFound", "MethodNotAllowed")):
        return (
            f"{said}: the internal endpoint answers, but not like S3: s3.internal_endpoint must be S3's own address "
            "(e.g. http://minio:9000), not a web page, a console port or the registry"
        )
    if exc.status >= 500:
        return f"{said}: the S3 server failed; its log tells why"
    return said


def external_refusal_cause(answer: Answer, external: Endpoint) -> str:
    """Why the external endpoint refused the presigned PUT that internal calls with the same keys would pass."""
    said = answer.summary
    code = answer.code
    if code == "SignatureDoesNotMatch":
        seen = host_seen_by_server(answer.error.get("CanonicalRequest", ""))
        seen_note = f" The server saw Host {seen!r}, the URL was signed for {external.host_header!r}." if seen else ""
        return (
            f"{said}: the server checked the signature against another request than the one signed for "
            f"{external.origin}.{seen_note} The secret is right (internal calls pass), so the Host header or the "
            "path changed on the way: a proxy in front must pass Host unchanged, port included (nginx: "
            "`proxy_set_header Host $http_host`; `$host` drops the port) and the path untouched (`proxy_pass` "
            "without a URI part); or s3.external_endpoint reaches a different S3 server (other keys or region)"
        )
    if code == "InvalidAccessKeyId":
        return f"{said}: s3.external_endpoint reaches a different S3 server than s3.internal_endpoint"
    if code == "NoSuchBucket":
        return (
            f"{said}: s3.external_endpoint reaches a different S3 server than s3.internal_endpoint, or one that "
            "wants virtual-host style; the gateway signs path-style URLs (/bucket/key)"
        )
    if code == "RequestTimeTooSkewed" or "expired" in answer.error.get("Message", "").lower():
        return f"{said}: the clocks of this machine and S3 differ too much: sync them with NTP"
    if code == "XAmzContentSHA256Mismatch":
        return f"{said}: the body that reached S3 is not the one sent: something on the way rewrites bodies"
    if answer.status == 411:
        return (
            f"{said}: a proxy turned the body into a chunked one without Content-Length (nginx: "
            "`proxy_http_version 1.1` and `proxy_request_buffering off`)"
        )
    if answer.status == 413:
        return f"{said}: a proxy caps request bodies (nginx: `client_max_body_size 0`)"
    if 300 <= answer.status < 400:
        location = answer.headers.get("Location", "")
        return (
            f"{said}: redirected to {location!r}: s3.external_endpoint must name S3 itself (path-style), not a "
            "front that redirects"
        )
    if not code:
        return (
            f"{said}, not an S3 answer: something other than S3 answers at {external.origin} (a proxy without a "
            "server block for this host, or the registry's host instead of MinIO's)"
        )
    if answer.status >= 500:
        return f"{said}: the S3 server (or a proxy in front) failed; its log tells why"
    return f"{said}: the external endpoint refused the presigned request (check its server log)"


def upstream_status_cause(status: int) -> str:
    if status == 404:
        return (
            "GET /version answered 404: upstream.url is not a library-API registry (Singularity Registry Server), "
            "or it points at the wrong port or at a path below the registry's root"
        )
    if status in (401, 403):
        return f"GET /version answered {status}: the registry should answer it without a token; a proxy in front?"
    if status >= 500:
        return f"GET /version answered {status}: the registry (or a proxy in front of it) fails; its log tells why"
    return f"GET /version answered {status}, expected 200"



def duration(seconds: float) -> str:
    whole = round(seconds)
    minutes, rest = divmod(whole, 60)
    if not minutes:
        return f"{rest} s"
    return f"{minutes} min {rest} s" if rest else f"{minutes} min"


def describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
