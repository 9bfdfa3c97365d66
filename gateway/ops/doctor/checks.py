"""``signing-gateway doctor``: check, step by step, that a configuration works against the real services.

Each check prints one line: ``✓`` passed, ``⚠`` works but deserves attention, ``✗`` failed (with the likely
cause in plain words), ``–`` not checked because an earlier check failed. The exit code is 1 if any check
failed, else 0 (warnings do not fail). First, one ``⚠ configuration`` line per risky setting the config accepts
(``config.config_warnings``: an http:// public URL, an external S3 endpoint equal to the internal one); then the
checks, in order:

1. the upstream answers ``GET /version`` with the library API's document (``data.apiVersion``);
1b. the registry signs for an S3 origin the gateway knows: read from the pull redirect of a public image
   (``GET /api/containers/`` then ``GET v1/imagefile/…``, both read-only, so no row is left behind), since
   sregistry signs uploads and downloads for the same ``MINIO_EXTERNAL_SERVER``. An unknown origin that does not
   answer fails (every relayed push would fail), one that answers warns; no public image warns, naming what
   was not checked;
2. the internal S3 endpoint accepts the credentials (ListObjectsV2 on the bucket);
3. the bucket is writable: a small object under the staging prefix is written, read back and deleted;
4. the clocks agree: S3's ``Date`` against this machine's clock (> 1 min warns, > 5 min fails);
5. the external S3 endpoint answers at all;
6. a PUT presigned for the external endpoint with a bound sha256 (v3, header sent, as the Apptainer client
   does) is accepted, and the same URL with another body is refused: the store verifies what it stores;
7. ``server.public_url`` reaches a gateway (``/_gateway/healthz``); only a warning when nothing answers yet.

Internal S3 calls go through :class:`gateway.edges.s3.S3Client`, exactly as the gateway makes them; the external
endpoint and the public URL are called with a plain HTTP client, as the users' clients call them.
"""

from __future__ import annotations

import dataclasses
import enum
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import aiohttp
import yarl

from ...core.config import Config, config_warnings
from ...core.sigv4 import Credentials, Signer, origin_of, sha256_hex
from ...core.upload_mode import Destination, choose_mode, destination_of
from ...edges.s3 import S3Client, S3ConnectionError, S3Error, S3ResponseError, S3Settings
from .answers import Answer, api_version, first_public_image, http_date, is_healthy
from .causes import (
    REQUEST_TIMEOUT_S,
    S3_CLOCK_LIMIT,
    connection_cause,
    duration,
    external_refusal_cause,
    internal_refusal_cause,
    upstream_status_cause,
)

__all__ = ["CLOCK_FAIL_S", "CLOCK_WARN_S", "Finding", "Status", "run_doctor"]

CLOCK_WARN_S = 60.0
CLOCK_FAIL_S = 300.0
PROBE_EXPIRES_S = 300
PROBE_BODY = b"signing-gateway doctor probe\n" * 512  # 14.5 KiB: small, but more than one TCP segment
ANSWER_CAP = 64 * 1024  # error documents are a few hundred bytes
CONTENT_SHA256 = "X-Amz-Content-Sha256"


class Status(enum.Enum):
    PASS = "✓"
    WARN = "⚠"
    FAIL = "✗"
    SKIP = "–"


@dataclass(frozen=True, slots=True)
class Finding:
    status: Status
    what: str
    detail: str = ""  # the likely cause, for warnings and failures; a note otherwise

    def line(self) -> str:
        return f"{self.status.value} {self.what}" + (f": {self.detail}" if self.detail else "")


class _BucketState(enum.Enum):
    UNKNOWN = "unknown"  # S3 could not be asked (unreachable, credentials refused)
    MISSING = "missing"
    PRESENT = "present"


def _utc_now() -> datetime:
    return datetime.now(UTC)


async def run_doctor(
    config: Config, *, out: Callable[[str], object] = print, clock: Callable[[], datetime] = _utc_now
) -> int:
    """Run every check, printing one line each through ``out``; 0 if none failed, else 1."""
    settings = dataclasses.replace(
        S3Settings.of(config.s3), max_retries=0, read_timeout_s=min(config.s3.read_timeout_seconds, REQUEST_TIMEOUT_S)
    )
    async with (
        S3Client(settings, clock=clock) as s3,
        aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S),
            cookie_jar=aiohttp.DummyCookieJar(),
            auto_decompress=False,
        ) as session,
    ):
        doctor = _Doctor(config, s3=s3, session=session, out=out, clock=clock)
        await doctor.run()
    failed = sum(finding.status is Status.FAIL for finding in doctor.findings)
    warned = sum(finding.status is Status.WARN for finding in doctor.findings)
    warnings = f"{warned} warning{'s' * (warned != 1)}"
    if failed:
        out(f"doctor: {failed} check{'s' * (failed != 1)} failed" + (f", {warnings}" if warned else ""))
        return 1
    # A warning may be a check that could not be made: never call that "passed".
    out(
        f"doctor: no check failed, {warnings}: read {'them' if warned != 1 else 'it'}"
        if warned
        else "doctor: all checks passed"
    )
    return 0


class _Doctor:
    def __init__(
        self,
        config: Config,
        *,
        s3: S3Client,
        session: aiohttp.ClientSession,
        out: Callable[[str], object],
        clock: Callable[[], datetime],
    ) -> None:
        self.config = config
        self.s3 = s3
        self.session = session
        self.out = out
        self.clock = clock
        self.findings: list[Finding] = []
        probe = f"{config.uploads.staging_prefix}doctor/{uuid.uuid4().hex}"
        self.internal_probe_key = f"{probe}-internal"
        self.presigned_probe_key = f"{probe}-presigned"

    def report(self, status: Status, what: str, detail: str = "") -> None:
        finding = Finding(status, what, detail)
        self.findings.append(finding)
        self.out(finding.line())

    async def run(self) -> None:
        for warning in config_warnings(self.config):
            self.report(Status.WARN, "configuration", warning)
        if await self.check_upstream():
            await self.check_registry_s3_origin()
        else:
            self.report(Status.SKIP, _SIGNS_FOR, "not checked, needs the upstream")
        bucket = await self.check_s3_credentials()
        writable, server_date = await self.check_bucket(bucket)
        self.check_clock(server_date)
        external_answers = await self.check_external_endpoint()
        if writable and external_answers:
            await self.check_presigned_put()
        else:
            needs = "a writable bucket" if not writable else "an external endpoint that answers"
            self.report(Status.SKIP, "presigned PUT through the external endpoint", f"not checked, needs {needs}")
        await self.check_public_url()

    # -- 1. upstream ---------------------------------------------------------------------------------------

    @property
    def upstream_timeout(self) -> aiohttp.ClientTimeout:
        return aiohttp.ClientTimeout(
            total=min(self.config.upstream.read_timeout_seconds, REQUEST_TIMEOUT_S),
            sock_connect=self.config.upstream.connect_timeout_seconds,
        )

    async def check_upstream(self) -> bool:
        upstream = yarl.URL(self.config.upstream.url).origin()
        what = f"upstream {upstream} speaks the library API"
        try:
            answer = await self.fetch("GET", upstream.with_path("/version"), timeout=self.upstream_timeout)
        except (aiohttp.ClientError, TimeoutError) as exc:
            cause = connection_cause(exc, tls_hint="the gateway uses the system's trust store for the upstream")
            self.report(Status.FAIL, what, f"{cause}; check upstream.url")
            return False
        if answer.status != 200:
            self.report(Status.FAIL, what, upstream_status_cause(answer.status))
            return False
        version = api_version(answer.body)
        if version is None:
            self.report(
                Status.FAIL,
                what,
                "GET /version answered 200 but not with the library API's document (no data.apiVersion): "
                "upstream.url must be the registry's own root (Singularity Registry Server), not a web page",
            )
            return False
        self.report(Status.PASS, what, f"apiVersion {version}")
        return True

    # -- 1b. the S3 origin the registry signs for --------------------------------------------------------

    async def check_registry_s3_origin(self) -> None:
        """Learn the origin from a public image's pull redirect: read-only, unlike an upload start, which on
        sregistry needs a token and creates an image row (``GET v1/images/…:sha256.…``) that only a forwarded
        abort would delete."""
        upstream = yarl.URL(self.config.upstream.url).origin()
        try:
            location = await self.public_pull_redirect(upstream)
        except (aiohttp.ClientError, TimeoutError) as exc:
            cause = connection_cause(exc, tls_hint="the gateway uses the system's trust store for the upstream")
            self.report(Status.WARN, _SIGNS_FOR, f"not checked: {cause}. {_NOT_CHECKED}")
            return
        if isinstance(location, _NoRedirect):
            self.report(Status.WARN, _SIGNS_FOR, f"not checked: {location.why}. {_NOT_CHECKED}")
            return
        origin = origin_of(location)
        config = self.config
        public = origin_of(config.server.public_url)
        destination = destination_of(
            location, s3_origins=config.s3_origins(), registry_origins={origin_of(config.upstream.url), public}
        )
        choice = choose_mode(config.uploads.mode, destination)
        shown = origin.origin if origin is not None else repr(location)
        if destination is Destination.OUR_S3:
            self.report(
                Status.PASS,
                _SIGNS_FOR,
                f"it signs for {shown}, one of the gateway's S3 origins: {_UPLOADS_GO[choice.mode or 'adopt']}, "
                f"pull redirects are re-signed for {config.external_endpoint.origin}",
            )
            return
        if destination is Destination.REGISTRY:
            status = Status.FAIL if choice.mode is None else Status.PASS
            outcome = (
                "uploads.mode adopt refuses every multipart push: use auto or relay"
                if choice.mode is None
                else "multipart uploads are relayed to it"
            )
            self.report(status, _SIGNS_FOR, f"the registry serves images itself ({shown}): {outcome}")
            return
        await self.report_unknown_origin(shown, choice.mode)

    async def public_pull_redirect(self, upstream: yarl.URL) -> str | _NoRedirect:
        """The ``Location`` of a pull of the first public image, or why there is none."""
        listing = await self.fetch(
            "GET", upstream.with_path("/api/containers/").with_query(limit="1"), timeout=self.upstream_timeout
        )
        image = first_public_image(listing.body) if listing.status == 200 else None
        if image is None:
            why = (
                "the registry lists no public image (GET /api/containers/ "
                + ("is empty" if listing.status == 200 else f"answered {listing.status}")
                + ")"
            )
            return _NoRedirect(why)
        reference = yarl.URL.build(path=f"/v1/imagefile/{image}", encoded=False).raw_path
        pulled = await self.fetch(
            "GET", upstream.with_path(reference, encoded=True).with_query(arch="amd64"), timeout=self.upstream_timeout
        )
        location = pulled.headers.get("Location", "")
        if pulled.status not in (301, 302, 303, 307, 308) or not location:
            return _NoRedirect(f"a pull of the public image {image} answered {pulled.status}, not a redirect")
        return location

    async def report_unknown_origin(self, shown: str, mode: str | None) -> None:
        config = self.config
        ours = ", ".join(sorted({e.origin for e in config.s3_origins()}))
        said = (
            f"it signs upload URLs and pull redirects for {shown} (sregistry: MINIO_EXTERNAL_SERVER), which is not "
            f"one of the gateway's S3 origins ({ours}; s3.internal_endpoint, s3.external_endpoint, s3.aliases)"
        )
        fix = (
            f"If {shown} is the same S3 under another name, add it to s3.aliases (uploads then go straight to the "
            "bucket and pull redirects are re-signed); otherwise make MINIO_EXTERNAL_SERVER name S3 as clients "
            "reach it"
        )
        if mode is None:
            self.report(Status.FAIL, _SIGNS_FOR, f"{said}: uploads.mode adopt refuses every multipart push. {fix}")
            return
        reach = f"{shown}/"
        try:
            await self.fetch("GET", yarl.URL(reach, encoded=True))
        except (aiohttp.ClientError, TimeoutError) as exc:
            cause = connection_cause(exc, tls_hint=_EXTERNAL_TLS_HINT)
            self.report(
                Status.FAIL,
                _SIGNS_FOR,
                f"{said}, and {cause}: every multipart push is relayed there by the gateway and fails "
                f"(502), single-PUT pushes and pulls hand clients URLs for {shown} unchanged. {fix}",
            )
            return
        self.report(
            Status.WARN,
            _SIGNS_FOR,
            f"{said}: the gateway relays every multipart push there (a second copy of each image through the "
            f"gateway) and hands clients URLs for {shown} unchanged on single-PUT pushes and pulls. {fix}",
        )

    # -- 2. internal endpoint and credentials --------------------------------------------------------------

    async def check_s3_credentials(self) -> _BucketState:
        what = f"S3 internal endpoint {self.config.s3.internal_endpoint} accepts the credentials"
        try:
            # A prefix nothing lives under: one page, whatever the bucket holds.
            await self.s3.list_objects(self.config.s3.bucket, f"{self.internal_probe_key}/", page_size=1)
        except S3ResponseError as exc:
            if exc.code == "NoSuchBucket":  # answered after the signature was checked
                self.report(Status.PASS, what, f"access key {self.config.s3.access_key}")
                return _BucketState.MISSING
            self.report(Status.FAIL, what, internal_refusal_cause(exc, self.config))
            return _BucketState.UNKNOWN
        except S3ConnectionError as exc:
            self.report(Status.FAIL, what, f"{self.internal_connection_cause(exc)}; check s3.internal_endpoint")
            return _BucketState.UNKNOWN
        self.report(Status.PASS, what, f"access key {self.config.s3.access_key}")
        return _BucketState.PRESENT

    def internal_connection_cause(self, exc: BaseException) -> str:
        return connection_cause(
            exc,
            tls_hint="for a private CA set s3.ca_bundle to its PEM file (keep s3.verify_tls = true)",
        )

    # -- 3. bucket -----------------------------------------------------------------------------------------

    async def check_bucket(self, state: _BucketState) -> tuple[bool, datetime | None]:
        """Whether the bucket took, returned and let go of an object; S3's Date header from the read."""
        bucket = self.config.s3.bucket
        what = f"bucket {bucket!r} is present and writable"
        if state is _BucketState.UNKNOWN:
            self.report(Status.SKIP, what, "not checked, needs S3 to accept the credentials")
            return False, None
        if state is _BucketState.MISSING:
            self.report(
                Status.FAIL,
                what,
                f"NoSuchBucket: there is no bucket {bucket!r} at {self.config.s3.internal_endpoint}. Create it, or "
                "set s3.bucket to the registry's bucket (sregistry: MINIO_BUCKET). The gateway addresses buckets "
                "path-style (/bucket/key): a server that only serves virtual-host style answers the same",
            )
            return False, None
        key = self.internal_probe_key
        step = "writing"
        try:
            await self.s3.put_object(bucket, key, PROBE_BODY)
            step = "reading back"
            async with self.s3.get_object(bucket, key) as stream:
                server_date = http_date(stream.headers.get("Date", ""))
                read_back = await stream.read()
            step = "deleting"
            await self.s3.delete_object(bucket, key)
        except S3Error as exc:
            cause = (
                internal_refusal_cause(exc, self.config)
                if isinstance(exc, S3ResponseError)
                else self.internal_connection_cause(exc)
            )
            self.report(Status.FAIL, what, f"{step} {key!r} failed: {cause}")
            await self.remove(key)
            return False, None
        if read_back != PROBE_BODY:
            self.report(Status.FAIL, what, "an object read back differs from the one written: the store corrupts data")
            return False, server_date
        self.report(Status.PASS, what, f"wrote, read back and deleted {key!r}")
        return True, server_date

    async def remove(self, key: str) -> None:
        """Best-effort cleanup of a probe object; a failure here was already reported by its check."""
        try:
            await self.s3.delete_object(self.config.s3.bucket, key)
        except S3Error:
            pass

    # -- 4. clock ------------------------------------------------------------------------------------------

    def check_clock(self, server_date: datetime | None) -> None:
        what = "clock agrees with S3's"
        if server_date is None:
            self.report(Status.SKIP, what, "not compared, needs an S3 answer with a Date header")
            return
        skew_s = (self.clock() - server_date).total_seconds()  # positive: this machine is ahead
        if abs(skew_s) <= CLOCK_WARN_S:
            self.report(Status.PASS, what, f"within {duration(CLOCK_WARN_S)} (Date has 1 s resolution)")
            return
        direction = "ahead of" if skew_s > 0 else "behind"
        detail = (
            f"this machine's clock is {duration(abs(skew_s))} {direction} S3's. Presigned URLs are dated by the "
            f"gateway's clock and S3 refuses requests more than {S3_CLOCK_LIMIT} off (RequestTimeTooSkewed, or "
            "URLs that expire early or are not yet valid): sync both machines with NTP"
        )
        status = Status.FAIL if abs(skew_s) > CLOCK_FAIL_S else Status.WARN
        self.report(status, what, detail)

    # -- 5. external endpoint ------------------------------------------------------------------------------

    async def check_external_endpoint(self) -> bool:
        external = self.config.external_endpoint
        what = f"S3 external endpoint {external.origin} answers"
        try:
            answer = await self.fetch("GET", yarl.URL(f"{external.origin}/", encoded=True))
        except (aiohttp.ClientError, TimeoutError) as exc:
            cause = connection_cause(exc, tls_hint=_EXTERNAL_TLS_HINT)
            self.report(
                Status.FAIL,
                what,
                f"{cause}. Clients upload and download there: s3.external_endpoint must be the S3 origin they "
                "reach (scheme, host and port), e.g. nginx's MinIO server",
            )
            return False
        if answer.status in (502, 503, 504):
            self.report(
                Status.FAIL,
                what,
                f"a proxy answers {answer.status}: the S3 server behind it is down or unreachable from the proxy "
                "(nginx: MINIO_UPSTREAM)",
            )
            return False
        self.report(Status.PASS, what, f"HTTP {answer.status} to an anonymous GET /")
        return True

    # -- 6. presigned PUT ----------------------------------------------------------------------------------

    async def check_presigned_put(self) -> None:
        key = self.presigned_probe_key
        try:
            if await self.check_signed_body_accepted(key):
                await self.check_wrong_body_refused(key)
        finally:
            await self.remove(key)

    def presign_probe(self, key: str, sha256: str) -> yarl.URL:
        signer = Signer(Credentials(self.config.s3.access_key, self.config.s3.secret_key), self.config.s3.region)
        url = signer.presign(
            "PUT",
            self.config.external_endpoint,
            self.config.s3.bucket,
            key,
            now=self.clock(),
            expires_s=PROBE_EXPIRES_S,
            payload_sha256=sha256,
        )
        return yarl.URL(url, encoded=True)  # byte for byte as signed: aiohttp must not re-encode it

    async def put_probe(self, url: yarl.URL, body: bytes, sha256: str) -> Answer:
        # As the Apptainer client sends a part: the declared sha256 as a header, no Content-Type.
        return await self.fetch("PUT", url, data=body, headers={CONTENT_SHA256: sha256})

    async def check_signed_body_accepted(self, key: str) -> bool:
        external = self.config.external_endpoint
        what = f"a PUT presigned for {external.origin} with a bound sha256 is accepted"
        sha256 = sha256_hex(PROBE_BODY)
        try:
            answer = await self.put_probe(self.presign_probe(key, sha256), PROBE_BODY, sha256)
        except (aiohttp.ClientError, TimeoutError) as exc:
            self.report(Status.FAIL, what, connection_cause(exc, tls_hint=_EXTERNAL_TLS_HINT))
            return False
        if answer.status != 200:
            self.report(Status.FAIL, what, external_refusal_cause(answer, external))
            return False
        stored = await self.stored_size(key)
        if stored != len(PROBE_BODY):
            self.report(
                Status.FAIL,
                what,
                f"the external endpoint answered 200, but the object is not in bucket {self.config.s3.bucket!r} at "
                f"the internal endpoint (size {stored}): the two endpoints reach different S3 servers",
            )
            return False
        self.report(Status.PASS, what, "v3 URL, X-Amz-Content-Sha256 header sent as the Apptainer client does")
        return True

    async def stored_size(self, key: str) -> int | None:
        try:
            info = await self.s3.head_object(self.config.s3.bucket, key)
        except S3Error:
            return None
        return info.size if info is not None else None

    async def check_wrong_body_refused(self, key: str) -> None:
        what = "the store refuses a body that does not match the signed sha256"
        sha256 = sha256_hex(PROBE_BODY)
        wrong_body = PROBE_BODY[::-1]  # same length, other bytes: only the hash can tell
        try:
            answer = await self.put_probe(self.presign_probe(key, sha256), wrong_body, sha256)
        except (aiohttp.ClientError, TimeoutError) as exc:
            self.report(Status.FAIL, what, connection_cause(exc, tls_hint=_EXTERNAL_TLS_HINT))
            return
        if 400 <= answer.status < 500:
            self.report(Status.PASS, what, answer.summary)
            return
        if answer.status == 200:
            self.report(
                Status.WARN,
                what,
                "the store accepted and stored a body whose sha256 differs from the signed one: it does not verify "
                "part hashes (SeaweedFS behaves so; MinIO and Ceph radosgw verify). Uploads work, but a part "
                "corrupted on the way is stored as it arrived; clients only notice when they pull",
            )
            return
        self.report(Status.FAIL, what, f"unexpected answer {answer.summary} to a PUT with the wrong body")

    # -- 7. public URL -------------------------------------------------------------------------------------

    async def check_public_url(self) -> None:
        public_url = self.config.server.public_url.rstrip("/")
        what = f"public_url {public_url} reaches a gateway"
        not_running = "expected if the gateway is not running yet: run doctor again once it is"
        try:
            answer = await self.fetch("GET", yarl.URL(f"{public_url}/_gateway/healthz"))
        except (aiohttp.ClientSSLError, aiohttp.ClientConnectorDNSError) as exc:
            self.report(Status.FAIL, what, connection_cause(exc, tls_hint=_PUBLIC_TLS_HINT))
            return
        except (aiohttp.ClientError, TimeoutError) as exc:
            cause = connection_cause(exc, tls_hint=_PUBLIC_TLS_HINT)
            self.report(Status.WARN, what, f"{cause}; {not_running}")
            return
        if answer.status == 200 and is_healthy(answer.body):
            self.report(Status.PASS, what, "GET /_gateway/healthz answered ok")
        elif answer.status in (502, 503, 504):
            self.report(Status.WARN, what, f"a proxy answers {answer.status} but no gateway behind it; {not_running}")
        elif answer.status == 403:
            self.report(
                Status.WARN,
                what,
                "answered 403 to /_gateway/healthz: a proxy refuses /_gateway/ to this machine (nginx: "
                "INTERNAL_ALLOW), as intended for addresses outside the internal networks",
            )
        else:
            self.report(
                Status.FAIL,
                what,
                f"answered {answer.status} to /_gateway/healthz, which every gateway answers: something else "
                "serves public_url (the registry itself?). server.public_url must be the URL clients use for the "
                "gateway",
            )

    # -- transport -----------------------------------------------------------------------------------------

    async def fetch(
        self,
        method: str,
        url: yarl.URL,
        *,
        data: bytes | None = None,
        headers: dict[str, str] | None = None,
        timeout: aiohttp.ClientTimeout | None = None,
    ) -> Answer:
        async with self.session.request(
            method,
            url,
            data=data,
            headers=headers,
            allow_redirects=False,
            skip_auto_headers=("Content-Type",),
            timeout=timeout
            or aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S, sock_connect=self.config.s3.connect_timeout_seconds),
        ) as response:
            body = bytearray()
            while len(body) < ANSWER_CAP and (chunk := await response.content.readany()):
                body += chunk
            return Answer(response.status, response.headers, bytes(body[:ANSWER_CAP]))


# ---------------------------------------------------------------------------------------------------------
# What the checks say

_SIGNS_FOR = "the registry signs for an S3 origin the gateway knows"
_NOT_CHECKED = (
    "Which S3 origin the registry signs upload URLs for (sregistry: MINIO_EXTERNAL_SERVER) is read from a public "
    "image's pull redirect. uploads.mode auto adopts only URLs on s3.internal_endpoint, s3.external_endpoint or "
    "s3.aliases and relays every other upload to the registry's URL, which fails if the gateway cannot reach that "
    "host. Push an image to a public collection and run doctor again, or read the gateway's upload-mode log line "
    "(gateway_upload_mode metric) at the first push"
)


_UPLOADS_GO = {
    "adopt": "multipart uploads go straight into the registry's bucket",
    "relay": "multipart uploads are relayed (uploads.mode relay)",
}


@dataclass(frozen=True, slots=True)
class _NoRedirect:
    why: str


_EXTERNAL_TLS_HINT = (
    "clients verify this certificate with their own trust store: serve a chain they trust (a private CA must be "
    "installed on every client; s3.ca_bundle covers only the internal endpoint)"
)
_PUBLIC_TLS_HINT = "clients verify this certificate with their own trust store: serve a chain they trust"

