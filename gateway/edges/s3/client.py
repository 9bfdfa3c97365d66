"""The gateway's own calls to the internal S3 endpoint: path-style, header-signed, one pooled session.

Retries (exponential backoff with jitter, ``max_retries`` extra attempts, each attempt signed afresh) happen only
where repeating a call cannot do harm: HEAD, GET (until the body starts), List*, DELETE, Abort, single PUTs and
UploadPart with an in-memory body (the same bytes overwrite the same object or part) and CompleteMultipartUpload.
Complete is retried because S3 says so (a 200 <Error> InternalError asks the caller to retry) and the AWS SDKs do.
Complete is idempotent here: when it finds the upload gone, an earlier complete may have made the object (an
attempt whose answer was lost, or an earlier call), so the object is looked up and accepted when it exists with a
multipart ETag for as many parts (``"...-<n>"``). Abort is idempotent too: an upload already gone is fine.
CreateMultipartUpload is retried only when the connection could not even be opened (the request never left);
a repeat could leave an orphan upload. Streamed bodies are never retried: they cannot be replayed.

ETags are returned without their surrounding quotes.

Server behaviours handled here (radosgw 16.2.15, SeaweedFS 4.48; tests/edges/test_s3_client.py):
- radosgw answers CompleteMultipartUpload with ``<ETag></ETag>``: the ETag is then taken from a HEAD;
- radosgw answers ListParts of an aborted upload with 404 NoSuchKey: upload-scoped 404s raise NoSuchUpload;
- radosgw answers CompleteMultipartUpload of an aborted upload with 500 InternalError, every time: after the
  retries, a one-part ListParts tells a gone upload (NoSuchUpload, or success if it was completed) from an outage;
- radosgw answers AbortMultipartUpload of a gone upload with 404 NoSuchUpload, SeaweedFS with 204: both are done;
- SeaweedFS pages ListMultipartUploads by upload id only (no NextKeyMarker): upload-id-marker is sent alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import io
import random
import ssl
from collections.abc import AsyncIterable, AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from types import TracebackType
from typing import Self, TypeVar
from xml.etree import ElementTree

import aiohttp
import yarl
from multidict import CIMultiDictProxy

from ...core.plan import MAX_PARTS
from ...core.sigv4 import (
    UNSIGNED_PAYLOAD,
    Credentials,
    Endpoint,
    Signer,
    canonical_query,
    s3_path,
    sha256_hex,
    uri_encode,
)
from .documents import (
    Malformed,
    complete_body,
    completed_object,
    error_fields,
    error_fields_of,
    http_date,
    is_error_document,
    normalise_etag,
    objects_page,
    parts_page,
    upload_id_of,
    uploads_page,
    xml_root,
)
from .errors import (
    BodyLengthMismatch,
    InvalidPartList,
    NoSuchUpload,
    S3ClientError,
    S3ConnectionError,
    S3Error,
    S3ResponseError,
    S3ServerError,
    S3UsageError,
    classify,
    malformed,
)
from .values import CompleteResult, MultipartUpload, ObjectInfo, ObjectSummary, Part, S3Settings

__all__ = ["ObjectStream", "S3Client"]

ERROR_BODY_CAP = 64 * 1024  # an <Error> document is a few hundred bytes
RESULT_BODY_CAP = 16 * 1024 * 1024  # a listing page of 1,000 long keys stays well below this
MAX_BACKOFF_S = 5.0
READ_CHUNK = 256 * 1024
INLINE_HASH_LIMIT = 1024 * 1024  # larger in-memory bodies are hashed in a thread and sent from a BytesIO

T = TypeVar("T")


class ObjectStream:
    """An open GET response: read it with ``iter_chunks()`` (or ``content``, aiohttp's StreamReader)."""

    def __init__(self, response: aiohttp.ClientResponse, operation: str) -> None:
        self._response = response
        self._operation = operation

    @property
    def status(self) -> int:
        return self._response.status

    @property
    def headers(self) -> CIMultiDictProxy[str]:
        return self._response.headers

    @property
    def size(self) -> int | None:
        """Bytes in this response's body (the range's length for a 206)."""
        return self._response.content_length

    @property
    def etag(self) -> str:
        return normalise_etag(self._response.headers.get("ETag", ""))

    @property
    def content(self) -> aiohttp.StreamReader:
        return self._response.content

    async def iter_chunks(self, chunk_size: int = READ_CHUNK) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._response.content.iter_chunked(chunk_size):
                yield chunk
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise S3ConnectionError(self._operation, _describe(exc), request_sent=True) from exc

    async def read(self) -> bytes:
        """The whole body: for small objects and tests."""
        return b"".join([chunk async for chunk in self.iter_chunks()])



class _Retry(enum.Enum):
    IDEMPOTENT = "idempotent"  # on any retryable error
    UNSENT = "unsent"  # only when the request never left (connect failure)
    NEVER = "never"


@dataclass(frozen=True, slots=True)
class _Request:
    operation: str
    method: str
    path: str  # canonical, already encoded
    query: tuple[tuple[str, str], ...] = ()
    headers: tuple[tuple[str, str], ...] = ()  # signed as well as sent
    body: bytes | None = None
    retry: _Retry = _Retry.IDEMPOTENT
    upload_scoped: bool = False  # a 404 means NoSuchUpload whatever the code says


@dataclass(frozen=True, slots=True)
class _Answer:
    status: int
    headers: CIMultiDictProxy[str]
    root: ElementTree.Element | None  # the parsed XML document, if the body was one


class _ExactLength:
    """Passes a body through, failing before S3 has all the declared bytes if the length is wrong.

    The last chunk is held back until the source is exhausted, so a body that is too long is caught before
    Content-Length bytes have gone out, and one that is too short before the request looks finished.
    """

    def __init__(self, body: AsyncIterable[bytes], length: int) -> None:
        self._source = body.__aiter__()
        self._length = length
        self._received = 0
        self._held: bytes | None = None
        self._done = False
        self.mismatch: BodyLengthMismatch | None = None

    def __aiter__(self) -> _ExactLength:
        return self

    async def __anext__(self) -> bytes:
        while not self._done:
            try:
                chunk = await self._source.__anext__()
            except StopAsyncIteration:
                self._done = True
                if self._received != self._length:
                    self._fail(longer=False)
                break
            if not chunk:
                continue
            self._received += len(chunk)
            if self._received > self._length:
                await self._close_source()
                self._fail(longer=True)
            held, self._held = self._held, bytes(chunk)
            if held is not None:
                return held
        held, self._held = self._held, None
        if held is None:
            raise StopAsyncIteration
        return held

    async def _close_source(self) -> None:
        close = getattr(self._source, "aclose", None)
        if close is not None:
            await close()

    def _fail(self, *, longer: bool) -> None:
        self._done = True
        self.mismatch = BodyLengthMismatch(expected=self._length, received=self._received, longer=longer)
        raise self.mismatch


class S3Client:
    """Calls to one S3 endpoint with one pooled session; use ``async with`` or ``await close()``."""

    def __init__(
        self,
        settings: S3Settings,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.settings = settings
        self._endpoint = Endpoint.parse(settings.endpoint)
        self._signer = Signer(Credentials(settings.access_key, settings.secret_key), settings.region)
        self._clock = clock
        self._ssl = _ssl_setting(settings)
        self._random = random.Random()
        self._session: aiohttp.ClientSession | None = None
        self._closed = False

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        self._closed = True
        if self._session is not None:
            await self._session.close()
            self._session = None

    # -- multipart ------------------------------------------------------------------------------------------

    async def create_multipart_upload(self, bucket: str, key: str, *, content_type: str | None = None) -> str:
        request = _Request(
            "CreateMultipartUpload",
            "POST",
            s3_path(bucket, key),
            query=(("uploads", ""),),
            headers=_content_type(content_type),
            body=b"",
            retry=_Retry.UNSENT,
        )
        return _read(request, upload_id_of, _result(request, await self._call(request)))

    async def upload_part(self, bucket: str, key: str, upload_id: str, number: int, body: bytes) -> str:
        """Upload one part from memory (relay mode); returns its ETag."""
        if not 1 <= number <= MAX_PARTS:
            raise InvalidPartList(f"part number {number} is outside 1..{MAX_PARTS}")
        request = _Request(
            "UploadPart",
            "PUT",
            s3_path(bucket, key),
            query=(("partNumber", str(number)), ("uploadId", upload_id)),
            body=body,
            upload_scoped=True,
        )
        answer = await self._call(request)
        return normalise_etag(answer.headers.get("ETag", ""))

    async def complete_multipart_upload(
        self, bucket: str, key: str, upload_id: str, parts: Sequence[tuple[int, str]]
    ) -> CompleteResult:
        request = _Request(
            "CompleteMultipartUpload",
            "POST",
            s3_path(bucket, key),
            query=(("uploadId", upload_id),),
            body=complete_body(parts),
            upload_scoped=True,
        )
        try:
            answer = await self._call(request)
        except NoSuchUpload:
            # An earlier complete may have made the object: an attempt of this call whose answer was lost, or an
            # earlier call (a client retrying its complete; radosgw and SeaweedFS answer that with 200 themselves).
            completed = await self._completed_earlier(bucket, key, len(parts))
            if completed is not None:
                return completed
            raise
        except S3ServerError:
            # radosgw answers a complete of an aborted upload with 500 InternalError however often it is asked: when
            # the upload is gone, say so (the client gets a 409), or succeed if it was completed after all.
            gone = await self._upload_gone(bucket, key, upload_id)
            if gone is None:
                raise
            completed = await self._completed_earlier(bucket, key, len(parts))
            if completed is not None:
                return completed
            raise gone from None
        etag, location = completed_object(_result(request, answer))
        if not etag:  # radosgw 16 answers <ETag></ETag> the first time; the object has one
            info = await self.head_object(bucket, key)
            etag = info.etag if info is not None else ""
        return CompleteResult(etag=etag, location=location or self._object_url(bucket, key))

    async def _upload_gone(self, bucket: str, key: str, upload_id: str) -> NoSuchUpload | None:
        """NoSuchUpload when a one-part ListParts finds no such upload; None when it exists or S3 cannot tell."""
        query = (("uploadId", upload_id), ("max-parts", "1"))
        request = _Request("ListParts", "GET", s3_path(bucket, key), query=query, upload_scoped=True)
        try:
            await self._call(request)
        except NoSuchUpload as exc:
            return exc
        except S3Error:
            return None
        return None

    async def _completed_earlier(self, bucket: str, key: str, part_count: int) -> CompleteResult | None:
        """The object at ``key`` when it has a multipart ETag for as many parts (``"...-<n>"``), else None."""
        info = await self.head_object(bucket, key)
        if info is None or not info.etag.endswith(f"-{part_count}"):
            return None
        return CompleteResult(etag=info.etag, location=self._object_url(bucket, key))

    async def abort_multipart_upload(self, bucket: str, key: str, upload_id: str) -> None:
        """Abort an upload; one that is gone already is fine (SeaweedFS answers 204 for it, radosgw 404)."""
        request = _Request(
            "AbortMultipartUpload",
            "DELETE",
            s3_path(bucket, key),
            query=(("uploadId", upload_id),),
            upload_scoped=True,
        )
        with contextlib.suppress(NoSuchUpload):
            await self._call(request)

    async def list_parts(self, bucket: str, key: str, upload_id: str, *, page_size: int = 1000) -> list[Part]:
        parts: list[Part] = []
        marker = 0
        for _ in range(_max_pages(MAX_PARTS, page_size)):
            query = [("uploadId", upload_id), ("max-parts", str(page_size))]
            if marker:
                query.append(("part-number-marker", str(marker)))
            request = _Request("ListParts", "GET", s3_path(bucket, key), query=tuple(query), upload_scoped=True)
            page = _read(request, parts_page, _result(request, await self._call(request)))
            parts.extend(page.items)
            if not page.truncated:
                return parts
            next_marker = int(page.next_marker[0] or 0)
            if next_marker <= marker:
                raise _malformed(request, "a truncated page without a usable NextPartNumberMarker")
            marker = next_marker
        raise _malformed(request, "more pages than an upload can have parts")

    async def list_multipart_uploads(
        self, bucket: str, prefix: str = "", *, page_size: int = 1000
    ) -> list[MultipartUpload]:
        uploads: list[MultipartUpload] = []
        key_marker = upload_id_marker = ""
        while True:
            query = [("uploads", ""), ("prefix", prefix), ("max-uploads", str(page_size))]
            if key_marker:
                query.append(("key-marker", key_marker))
            if upload_id_marker:
                query.append(("upload-id-marker", upload_id_marker))
            request = _Request("ListMultipartUploads", "GET", _bucket_path(bucket), query=tuple(query))
            page = _read(request, uploads_page, _result(request, await self._call(request)))
            uploads.extend(page.items)
            if not page.truncated:
                return uploads
            # SeaweedFS pages by upload id alone: no NextKeyMarker, and it wants upload-id-marker without key-marker.
            next_markers = (page.next_marker[0], page.next_marker[1])
            if next_markers in (("", ""), (key_marker, upload_id_marker)):
                raise _malformed(request, "a truncated page without usable NextKeyMarker/NextUploadIdMarker")
            key_marker, upload_id_marker = next_markers

    # -- objects --------------------------------------------------------------------------------------------

    async def head_object(self, bucket: str, key: str) -> ObjectInfo | None:
        request = _Request("HeadObject", "HEAD", s3_path(bucket, key))
        try:
            answer = await self._call(request)
        except S3ClientError as exc:
            if exc.status == 404:
                return None
            raise
        return ObjectInfo(
            size=int(answer.headers.get("Content-Length", "0")),
            etag=normalise_etag(answer.headers.get("ETag", "")),
            last_modified=http_date(answer.headers.get("Last-Modified", "")),
            content_type=answer.headers.get("Content-Type", ""),
        )

    @asynccontextmanager
    async def get_object(self, bucket: str, key: str, *, range: str | None = None) -> AsyncIterator[ObjectStream]:
        """Open an object for reading; ``range`` is a Range header value such as ``bytes=0-99``.

        Missing objects raise S3ClientError (404 NoSuchKey). Retried until the body starts, never after.
        """
        request = _Request("GetObject", "GET", s3_path(bucket, key), headers=(("Range", range),) if range else ())
        response = await self._open(request)
        try:
            yield ObjectStream(response, request.operation)
        finally:
            response.release()

    async def put_object(self, bucket: str, key: str, data: bytes, *, content_type: str | None = None) -> str:
        """A small object from memory, its sha256 signed; returns the ETag."""
        request = _Request("PutObject", "PUT", s3_path(bucket, key), headers=_content_type(content_type), body=data)
        answer = await self._call(request)
        return normalise_etag(answer.headers.get("ETag", ""))

    async def put_object_stream(
        self,
        bucket: str,
        key: str,
        body: AsyncIterable[bytes],
        length: int,
        *,
        content_type: str | None = None,
    ) -> str:
        """Stream ``length`` bytes with a Content-Length (never chunked) and UNSIGNED-PAYLOAD; returns the ETag.

        A body of another length raises BodyLengthMismatch; the connection is dropped before S3 has received
        ``length`` bytes, so no object is created. Never retried.
        """
        if length < 0:
            raise S3UsageError(f"length must be >= 0, got {length}")
        checked = _ExactLength(body, length)
        request = _Request(
            "PutObject",
            "PUT",
            s3_path(bucket, key),
            headers=(*_content_type(content_type), ("Content-Length", str(length))),
            retry=_Retry.NEVER,
        )
        try:
            answer = await self._call(request, stream=checked)
        except S3Error as exc:
            if checked.mismatch is not None:
                raise checked.mismatch from exc
            raise
        if checked.mismatch is not None:  # cannot happen: S3 would be waiting for the missing bytes
            raise checked.mismatch
        return normalise_etag(answer.headers.get("ETag", ""))

    async def delete_object(self, bucket: str, key: str) -> None:
        """Delete an object; one that does not exist is fine."""
        request = _Request("DeleteObject", "DELETE", s3_path(bucket, key))
        try:
            await self._call(request)
        except S3ClientError as exc:
            if exc.status != 404:
                raise

    async def list_objects(self, bucket: str, prefix: str = "", *, page_size: int = 1000) -> list[ObjectSummary]:
        """ListObjectsV2, every page."""
        objects: list[ObjectSummary] = []
        token = ""
        while True:
            query = [("list-type", "2"), ("prefix", prefix), ("max-keys", str(page_size))]
            if token:
                query.append(("continuation-token", token))
            request = _Request("ListObjectsV2", "GET", _bucket_path(bucket), query=tuple(query))
            page = _read(request, objects_page, _result(request, await self._call(request)))
            objects.extend(page.items)
            if not page.truncated:
                return objects
            next_token = page.next_marker[0]
            if not next_token or next_token == token:
                raise _malformed(request, "a truncated page without a usable NextContinuationToken")
            token = next_token

    # -- buckets --------------------------------------------------------------------------------------------

    async def create_bucket(self, bucket: str) -> None:
        """Create a bucket in the endpoint's default location; one we already own is fine."""
        request = _Request("CreateBucket", "PUT", _bucket_path(bucket), body=b"")
        try:
            await self._call(request)
        except S3ClientError as exc:
            if exc.code != "BucketAlreadyOwnedByYou":
                raise

    async def head_bucket(self, bucket: str) -> bool:
        """Whether the bucket exists; other refusals (403) raise."""
        request = _Request("HeadBucket", "HEAD", _bucket_path(bucket))
        try:
            await self._call(request)
        except S3ClientError as exc:
            if exc.status == 404:
                return False
            raise
        return True

    # -- transport ------------------------------------------------------------------------------------------

    async def _call(self, request: _Request, *, stream: AsyncIterable[bytes] | None = None) -> _Answer:
        """Send with retries; a successful answer's body is read (capped) and returned."""
        payload_hash = UNSIGNED_PAYLOAD if stream is not None else await _payload_sha256(request.body)
        attempt = 0
        while True:
            try:
                async with await self._send(request, payload_hash, stream) as response:
                    return await self._answer(request, response)
            except S3Error as exc:
                if not self._should_retry(request, exc, attempt):
                    raise
            await asyncio.sleep(self._backoff_s(attempt))
            attempt += 1

    async def _open(self, request: _Request) -> aiohttp.ClientResponse:
        """Send with retries and return the successful response unread (the caller releases it)."""
        attempt = 0
        while True:
            try:
                response = await self._send(request, await _payload_sha256(request.body), None)
                try:
                    if response.status >= 300:
                        raise await _response_error(request, response)
                except BaseException:
                    response.release()
                    raise
                return response
            except S3Error as exc:
                if not self._should_retry(request, exc, attempt):
                    raise
            await asyncio.sleep(self._backoff_s(attempt))
            attempt += 1

    async def _send(
        self, request: _Request, payload_hash: str, stream: AsyncIterable[bytes] | None
    ) -> aiohttp.ClientResponse:
        session = self._session_for_request()
        signed = self._signer.authorization_headers(
            request.method,
            host_header=self._endpoint.host_header,
            canonical_uri=request.path,
            now=self._clock(),
            payload_hash=payload_hash,
            query=request.query,
            headers=request.headers,
        )
        query = canonical_query(request.query)
        url = yarl.URL(f"{self._endpoint.origin}{request.path}{'?' + query if query else ''}", encoded=True)
        headers = {"Host": self._endpoint.host_header, **dict(request.headers), **signed}
        try:
            return await session.request(
                request.method,
                url,
                headers=headers,
                data=stream if stream is not None else _replayable(request.body),
                allow_redirects=False,
            )
        except aiohttp.ClientConnectorError as exc:
            raise S3ConnectionError(request.operation, _describe(exc), request_sent=False) from exc
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise S3ConnectionError(request.operation, _describe(exc), request_sent=True) from exc

    async def _answer(self, request: _Request, response: aiohttp.ClientResponse) -> _Answer:
        if response.status >= 300:
            raise await _response_error(request, response)
        # S3 may answer 200 and report the failure in the body (CompleteMultipartUpload, after keep-alive
        # whitespace): checked here, inside the retry loop.
        root = xml_root(await _read_capped(request, response, RESULT_BODY_CAP))
        if root is not None and is_error_document(root):
            error = error_fields_of(root)
            raise classify(
                request.operation,
                upload_scoped=request.upload_scoped,
                status=200,
                code=error.get("Code", "") or "InternalError",
                message=error.get("Message", ""),
                request_id=error.get("RequestId", ""),
                resource=error.get("Resource", ""),
            )
        return _Answer(response.status, response.headers, root)

    def _should_retry(self, request: _Request, exc: S3Error, attempt: int) -> bool:
        if attempt >= self.settings.max_retries or not exc.retryable:
            return False
        if request.retry is _Retry.IDEMPOTENT:
            return True
        return request.retry is _Retry.UNSENT and isinstance(exc, S3ConnectionError) and not exc.request_sent

    def _backoff_s(self, attempt: int) -> float:
        ceiling = min(MAX_BACKOFF_S, self.settings.retry_base_delay_s * 2.0**attempt)
        jitter = self._random.uniform(0, ceiling / 2)
        return ceiling / 2 + jitter

    def _session_for_request(self) -> aiohttp.ClientSession:
        if self._closed:
            raise RuntimeError("S3Client is closed")
        if self._session is None:
            # Created on first use so that the client can be built outside the event loop.
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self.settings.pool_limit, ssl=self._ssl),
                timeout=aiohttp.ClientTimeout(
                    total=None,  # a streamed upload may take as long as it needs while bytes flow
                    sock_connect=self.settings.connect_timeout_s,
                    sock_read=self.settings.read_timeout_s,
                ),
                auto_decompress=False,  # objects are returned byte for byte
                # Send exactly the headers we sign: no default Content-Type, no Accept-Encoding.
                skip_auto_headers=("Content-Type", "Accept-Encoding"),
                cookie_jar=aiohttp.DummyCookieJar(),
            )
        return self._session

    def _object_url(self, bucket: str, key: str) -> str:
        return f"{self._endpoint.origin}{s3_path(bucket, key)}"


# ---------------------------------------------------------------------------------------------------------
# Helpers



def _ssl_setting(settings: S3Settings) -> ssl.SSLContext | bool:
    if not settings.verify_tls:
        return False
    if settings.ca_bundle:
        return ssl.create_default_context(cafile=settings.ca_bundle)
    return True


async def _payload_sha256(body: bytes | None) -> str:
    if body is None or len(body) <= INLINE_HASH_LIMIT:
        return sha256_hex(body or b"")
    return await asyncio.to_thread(sha256_hex, body)  # a 64 MiB part takes ~0.15 s: not on the event loop


def _replayable(body: bytes | None) -> bytes | io.BytesIO | None:
    # aiohttp writes a BytesIO in chunks, yielding to the loop (and warns about large raw bytes); a fresh one
    # per attempt keeps retries correct.
    return io.BytesIO(body) if body is not None and len(body) > INLINE_HASH_LIMIT else body


def _bucket_path(bucket: str) -> str:
    return f"/{uri_encode(bucket)}"


def _content_type(content_type: str | None) -> tuple[tuple[str, str], ...]:
    return (("Content-Type", content_type),) if content_type else ()


def _max_pages(items: int, page_size: int) -> int:
    if page_size < 1:
        raise S3UsageError(f"page_size must be >= 1, got {page_size}")
    return items // page_size + 2


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


async def _read_capped(request: _Request, response: aiohttp.ClientResponse, cap: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    try:
        while chunk := await response.content.readany():
            size += len(chunk)
            if size > cap:
                response.close()  # the rest is not worth reading; do not reuse the connection
                raise _malformed(request, f"answer larger than {cap} bytes", status=response.status)
            chunks.append(chunk)
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise S3ConnectionError(request.operation, _describe(exc), request_sent=True) from exc
    return b"".join(chunks)


async def _response_error(request: _Request, response: aiohttp.ClientResponse) -> S3ResponseError:
    """The typed error for a non-2xx answer (HEAD answers have no body: the status speaks)."""
    body = b""
    if request.method != "HEAD":
        try:
            body = await _read_capped(request, response, ERROR_BODY_CAP)
        except S3ResponseError:
            body = b""  # an oversized error page: the status alone must do
    error = error_fields(body)
    code = error.get("Code") or (response.reason or f"HTTP{response.status}").replace(" ", "")
    return classify(
        request.operation,
        upload_scoped=request.upload_scoped,
        status=response.status,
        code=code,
        message=error.get("Message", "") or (body[:200].decode("utf-8", "replace") if not error else ""),
        request_id=error.get("RequestId", "") or response.headers.get("x-amz-request-id", ""),
        resource=error.get("Resource", ""),
    )


def _result(request: _Request, answer: _Answer) -> ElementTree.Element:
    """The root of a success document."""
    if answer.root is None:
        raise _malformed(request, "the answer is not XML")
    return answer.root


def _malformed(request: _Request, reason: str, *, status: int = 200) -> S3ServerError:
    return malformed(request.operation, reason, status=status)


def _read(request: _Request, read: Callable[[ElementTree.Element], T], root: ElementTree.Element) -> T:
    """A document reader's result; a document without what the operation needs is a malformed answer."""
    try:
        return read(root)
    except Malformed as exc:
        raise _malformed(request, str(exc)) from None
