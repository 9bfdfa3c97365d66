"""Hostile input against a running gateway: every case answers 4xx (never 5xx, never a hang), the registry never
sees what the gateway refused, and afterwards the gateway still serves a normal push.

The stack (SeaweedFS, the sregistry fake, the gateway, each on a real loopback port) is started once for the module
in an event loop of its own thread, so that the tests can be plain functions driven by hypothesis and talk to the
gateway over raw sockets, byte for byte, with a timeout on every read. Every request uses a fresh connection and
is read until the gateway closes it: a gateway that hangs or keeps a refused connection open fails the test.

Expected answers come from the pure validators (gateway.core.bodies) and the known upload plans, so each property is
a differential test: the gateway answers 200 exactly when the validators and the token accept the input.

Counts of inputs tried per category are printed at the end of the module (``-s`` not needed).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import http.client
import io
import json
import logging
import os
import socket
import string
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar
from urllib.parse import quote

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import BaseTestServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.core.bodies import (
    AbortRequest,
    CompleteRequest,
    LegacyStartRequest,
    PartRequest,
    StartRequest,
    check_image_id,
)
from gateway.core.errors import InvalidRequest
from gateway.core.plan import MAX_FILESIZE, MAX_PART_SIZE, MAX_PARTS
from gateway.core.tokens import credential_of
from gateway.face.handler import Gateway
from gateway.face.routes import MAX_JSON_BODY
from gateway.ops.logs import REDACT_PARSER_ERRORS, JsonFormatter
from tests.support.gateway_fixtures import TOKEN_SECRET, make_test_server
from tests.support.library_api import LibraryClient
from tests.support.processes import free_port
from tests.support.s3_fixtures import BUCKET
from tests.support.s3servers import S3Server
from tests.support.stack import MIB, OTHER_TOKEN, OTHER_USER, TOKEN, Stack, start_stack, unique_ref

T = TypeVar("T")

IO_TIMEOUT_S = 15.0  # any single socket operation; a gateway that hangs fails here
CALL_TIMEOUT_S = 60.0  # any coroutine run on the stack's loop
EXAMPLES = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FEW_EXAMPLES = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
BIG_FILE = 70 * MIB + 12345  # three parts of 32 MiB (the stack's part size), the last one short
SMALL_FILE = 1000  # one part
TRIED: Counter[str] = Counter()  # inputs sent per category, printed at the end of the module


# ---------------------------------------------------------------------------------------------------------
# The stack in a thread of its own


class LoopThread:
    """An event loop running in a daemon thread; coroutines are submitted from the test thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="hostile-input-stack", daemon=True)
        self._thread.start()
        self._servers: list[BaseTestServer] = []

    def run(self, coroutine: Coroutine[Any, Any, T], timeout: float = CALL_TIMEOUT_S) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    async def serve(self, app: web.Application | Gateway, *, port: int) -> BaseTestServer:
        """start_stack's ``aiohttp_server``: a test server on a loopback port, closed by close()."""
        server = make_test_server(app, host="127.0.0.1", port=port)
        await server.start_server()
        self._servers.append(server)
        return server

    def close(self) -> None:
        async def close_servers() -> None:
            for server in reversed(self._servers):
                await server.close()
            await self.loop.shutdown_asyncgens()

        try:
            self.run(close_servers())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(IO_TIMEOUT_S)
            self.loop.close()


@dataclass(frozen=True)
class Upload:
    image_id: str
    token: str
    filesize: int
    part_size: int
    total_parts: int

    def expected_part_size(self, number: int) -> int:
        return self.part_size if number < self.total_parts else self.filesize - self.part_size * (self.total_parts - 1)


@dataclass
class Target:
    """The running stack plus images and started uploads the tests aim at."""

    loop: LoopThread
    stack: Stack
    port: int
    start_image: str  # POST _multipart bodies go here
    legacy_image: str  # legacy start bodies go here
    main: Upload  # BIG_FILE on its own image: part presigns, token tampering
    other: Upload  # BIG_FILE on another image of the same caller
    stranger: Upload  # BIG_FILE on an image of OTHER_USER
    small: Upload  # SMALL_FILE on main's image: complete bodies
    aborted: Upload  # SMALL_FILE on main's image: abort bodies

    def registry_log_length(self) -> int:
        async def length() -> int:
            return len(self.stack.requests_seen_by_registry)

        return self.loop.run(length())

    def registry_log(self) -> list[Any]:
        async def records() -> list[Any]:
            return self.stack.requests_seen_by_registry

        return self.loop.run(records())

    def start_gateway(self, *, clock: Callable[[], datetime] | None = None, **uploads: Any) -> int:
        """Another gateway replica on the same registry and S3 (``uploads`` overrides that section); its port."""
        config = self.stack.config
        config = replace(config, uploads=replace(config.uploads, **uploads))
        port = free_port()
        self.loop.run(self.loop.serve(Gateway(config, clock=clock), port=port))
        return port


class LogLines(logging.Handler):
    """Every log record of the module's run, rendered by the gateway's own JSON formatter (exceptions included)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(JsonFormatter())
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.name != "aiohttp.access":  # the test server's access log: the gateway runs with access_log=None
            self.lines.append(self.format(record))


async def new_image(session: aiohttp.ClientSession, base_url: str, *, token: str = TOKEN) -> str:
    client = LibraryClient(session, base_url, token=token)
    entity, collection, container = unique_ref("h")
    if token == OTHER_TOKEN:
        entity = OTHER_USER
    return await client.create_image(entity, collection, container, hashlib.sha256(uuid.uuid4().bytes).hexdigest())


async def start_upload(
    session: aiohttp.ClientSession, base_url: str, image_id: str, filesize: int, **kw: Any
) -> Upload:
    answer = await LibraryClient(session, base_url, **kw).start(image_id, filesize)
    assert answer.status == 200, answer.body
    data = answer.data
    return Upload(image_id, data["uploadID"], filesize, data["partSize"], data["totalParts"])


async def prepare(loop: LoopThread, s3: S3Server) -> Target:
    # A staging prefix of its own: journal entries of the uploads started here stay out of the sweeper tests' way.
    stack = await start_stack(loop.serve, s3, uploads={"staging_prefix": f"_gateway-hostile-{uuid.uuid4().hex[:8]}/"})
    url = stack.gateway_url
    async with aiohttp.ClientSession() as session:
        start_image, legacy_image, main_image, other_image = [await new_image(session, url) for _ in range(4)]
        stranger_image = await new_image(session, url, token=OTHER_TOKEN)
        return Target(
            loop=loop,
            stack=stack,
            port=int(url.rsplit(":", 1)[1]),
            start_image=start_image,
            legacy_image=legacy_image,
            main=await start_upload(session, url, main_image, BIG_FILE),
            other=await start_upload(session, url, other_image, BIG_FILE),
            stranger=await start_upload(session, url, stranger_image, BIG_FILE, token=OTHER_TOKEN),
            small=await start_upload(session, url, main_image, SMALL_FILE),
            aborted=await start_upload(session, url, main_image, SMALL_FILE),
        )


@pytest.fixture(scope="module")
def log_lines() -> Iterator[LogLines]:
    """What the gateway logs, as gateway.ops.logs.setup_logging configures it (without taking over the root logger)."""
    root, server = logging.getLogger(), logging.getLogger("aiohttp.server")
    handler, level = LogLines(), root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    server.addFilter(REDACT_PARSER_ERRORS)
    try:
        yield handler
    finally:
        server.removeFilter(REDACT_PARSER_ERRORS)
        root.removeHandler(handler)
        root.setLevel(level)


@pytest.fixture(scope="module")
def target(seaweedfs: S3Server, log_lines: LogLines, request: pytest.FixtureRequest) -> Iterator[Target]:
    loop = LoopThread()
    try:
        prepared = loop.run(prepare(loop, seaweedfs))
        assert (prepared.main.total_parts, prepared.small.total_parts) == (3, 1)
        yield prepared
    finally:
        loop.close()
        print_tally(request.config)


def print_tally(config: pytest.Config) -> None:
    """The inputs tried per category, on the terminal (past output capture), for the closing note."""
    report = config.pluginmanager.get_plugin("terminalreporter")
    capture = config.pluginmanager.get_plugin("capturemanager")
    if report is None or capture is None or not TRIED:
        return
    with capture.global_and_fixture_disabled():
        report.write_line("")
        report.write_line(f"hostile inputs tried: {sum(TRIED.values())} in total")
        for category, count in sorted(TRIED.items()):
            report.write_line(f"  {category}: {count}")


# ---------------------------------------------------------------------------------------------------------
# A raw HTTP/1.1 client: bytes out, one answer back, connection read until the gateway closes it


@dataclass(frozen=True)
class Reply:
    status: int
    content_type: str
    body: bytes
    after: bytes  # whatever came after the first answer before the gateway closed the connection

    def error(self) -> dict[str, Any]:
        """The library error shape, checked; its {"code", "message"}."""
        assert self.content_type.startswith("application/json"), self
        document = json.loads(self.body)
        assert isinstance(document, dict) and set(document) == {"error"}, document
        error = document["error"]
        assert set(error) == {"code", "message"} and error["code"] == self.status, document
        assert isinstance(error["message"], str) and error["message"], document
        return dict(error)

    @property
    def data(self) -> Any:
        return json.loads(self.body)["data"]


class _Received(io.BytesIO):
    """The bytes received, kept readable after http.client closes its file at the end of the answer."""

    def close(self) -> None:
        pass

    def rest(self) -> bytes:
        return self.read()


class _Recorded:
    """What http.client needs from a socket: a file to read the answer from."""

    def __init__(self, stream: io.BufferedIOBase | io.BytesIO) -> None:
        self.stream = stream

    def makefile(self, mode: str) -> io.BufferedIOBase | io.BytesIO:
        return self.stream


def exchange(port: int, request: bytes, *, pause_after: tuple[int, ...] = (), read_to_eof: bool = True) -> Reply:
    """Send ``request`` (split at the ``pause_after`` offsets, so that it arrives in pieces) and read the answer.

    ``read_to_eof``: read until the gateway closes the connection, and keep what followed the first answer; the
    request must ask for the connection to be closed or be one the gateway refuses.
    """
    with socket.create_connection(("127.0.0.1", port), timeout=IO_TIMEOUT_S) as sock:
        _send(sock, request, pause_after)
        if not read_to_eof:
            return _answer(sock.makefile("rb"))
        received = bytearray()
        try:
            while chunk := sock.recv(65536):
                received += chunk
        except TimeoutError:
            raise AssertionError(f"no answer, or connection left open, after {IO_TIMEOUT_S} s: {received!r}") from None
        except ConnectionResetError:
            pass  # answered, then reset: the gateway did not read a body it refused
    return _answer(_Received(bytes(received)))


def _send(sock: socket.socket, request: bytes, pause_after: tuple[int, ...]) -> None:
    sent = 0
    try:
        for offset in (*pause_after, len(request)):
            sock.sendall(request[sent:offset])
            sent = offset
            if offset < len(request):
                time.sleep(0.05)  # lets the gateway read what has arrived; no timing is asserted
    except (BrokenPipeError, ConnectionResetError):
        pass  # the gateway answered (and closed) before the whole request was sent: read what it said


def _answer(stream: io.BufferedIOBase | io.BytesIO) -> Reply:
    response = http.client.HTTPResponse(_Recorded(stream))  # type: ignore[arg-type]
    try:
        response.begin()
        body = response.read()
    except (http.client.HTTPException, OSError) as exc:
        raise AssertionError(f"not an HTTP answer: {exc!r}") from None
    after = stream.rest() if isinstance(stream, _Received) else b""
    return Reply(response.status, response.getheader("Content-Type", ""), body, after)


def http_request(
    method: str,
    target: str,
    body: bytes = b"",
    *,
    token: str | None = TOKEN,
    headers: tuple[tuple[str, str], ...] = (),
) -> bytes:
    lines = [f"{method} {target} HTTP/1.1", "Host: 127.0.0.1", "Connection: close", f"Content-Length: {len(body)}"]
    if token is not None:
        lines.append(f"Authorization: BEARER {token}")
    lines += [f"{name}: {value}" for name, value in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8", "surrogateescape") + body


def call(target: Target, method: str, path: str, body: bytes = b"", **kw: Any) -> Reply:
    return exchange(target.port, http_request(method, path, body, **kw))


def json_bytes(value: Any) -> bytes:
    return json.dumps(value).encode()


def accepted(parse: Callable[[bytes], T], body: bytes) -> T | None:
    try:
        return parse(body)
    except InvalidRequest:
        return None


def assert_client_error(reply: Reply, *statuses: int) -> dict[str, Any]:
    assert 400 <= reply.status < 500, reply
    if statuses:
        assert reply.status in statuses, reply
    return reply.error()


def assert_refused_by_the_http_parser(reply: Reply) -> None:
    """aiohttp's parser refuses before the app sees the request: its own plain 400, then it closes."""
    assert reply.status == 400, reply
    assert reply.after == b"", reply  # nothing answered after it: a smuggled request was never processed


def assert_answered_without_failing(target: Target, reply: Reply, registry_log_length: int) -> None:
    """Any answer but a gateway failure: a 502 only passes on the registry's own 5xx (the fake, like sregistry,
    answers an image id that is not a number with a 500 page)."""
    if reply.status == 502:
        upstream = target.registry_log()[registry_log_length:]
        assert upstream and upstream[-1].status >= 500, reply
    else:
        assert reply.status < 500, reply
    if reply.status >= 400:
        reply.error()


def part_body(upload: Upload, number: int = 1, **changes: Any) -> bytes:
    body = {
        "uploadID": upload.token,
        "partNumber": number,
        "partSize": upload.expected_part_size(number),
        "sha256sum": "ab" * 32,
    }
    return json_bytes(body | changes)


def assert_still_serves_a_push(target: Target) -> None:
    data = os.urandom(MIB + 7)
    sha = hashlib.sha256(data).hexdigest()

    async def push() -> str:
        async with aiohttp.ClientSession() as session:
            client = LibraryClient(session, target.stack.gateway_url)
            entity, collection, container = unique_ref("ok")
            image_id = await client.create_image(entity, collection, container, sha)
            start = await client.start(image_id, len(data))
            assert start.status == 200, start.body
            etags = await client.upload_parts(image_id, start.data, data)
            done = await client.complete(image_id, start.data["uploadID"], etags)
            assert done.status == 200, done.body
            return f"{collection}/{container}:sha256.{sha}"

    assert target.stack.s3.read_object(target.loop.run(push()), BUCKET) == data


# ---------------------------------------------------------------------------------------------------------
# Strategies

JSON_SCALARS = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=10,
)
SHA256 = st.from_regex(r"[0-9a-f]{64}", fullmatch=True)
NOT_QUITE_SHA256 = st.from_regex(r"[0-9a-fA-F]{63,65}", fullmatch=True) | st.text(max_size=70)
ETAGS = st.from_regex(r'"?[0-9a-f]{32}(-[0-9]{1,2})?"?', fullmatch=True) | st.text(max_size=40)


def either(valid: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """A field's value: mostly near the valid range, sometimes any JSON at all."""
    return st.one_of(valid, valid, JSON_VALUES)


def bodies(fields: dict[str, st.SearchStrategy[Any]]) -> st.SearchStrategy[bytes]:
    """JSON objects with the route's fields (each present or not) and junk keys; any JSON; any bytes; nesting."""
    objects = st.tuples(
        st.fixed_dictionaries({}, optional={name: either(valid) for name, valid in fields.items()}),
        st.dictionaries(st.text(max_size=8), JSON_VALUES, max_size=2),
    ).map(lambda pair: pair[1] | pair[0])
    return st.one_of(
        objects.map(json_bytes),
        objects.map(json_bytes),
        JSON_VALUES.map(json_bytes),
        st.binary(max_size=300),
        st.integers(min_value=1, max_value=50_000).map(lambda depth: b"[" * depth),
    )


def sizes_around(*interesting: int) -> st.SearchStrategy[int]:
    edges = {n + delta for n in interesting for delta in (-1, 0, 1)}
    return st.sampled_from(sorted(edges)) | st.integers(min_value=-(2**64), max_value=2**64)


def token_choices(upload: Upload) -> st.SearchStrategy[Any]:
    return st.sampled_from([upload.token, upload.token]) | st.text(max_size=60) | JSON_VALUES


# ---------------------------------------------------------------------------------------------------------
# JSON bodies of every intercepted route


def test_start_bodies_answer_200_exactly_when_valid_and_refusals_never_reach_the_registry(target: Target) -> None:
    path = f"/v2/imagefile/{target.start_image}/_multipart"

    @EXAMPLES
    @given(bodies({"filesize": sizes_around(0, 1, BIG_FILE, MAX_FILESIZE)}))
    def each(body: bytes) -> None:
        TRIED["json bodies: POST _multipart (start)"] += 1
        seen = target.registry_log_length()
        reply = call(target, "POST", path, body)
        if accepted(StartRequest.parse, body) is None:
            assert_client_error(reply, 400)
            assert target.registry_log_length() == seen
        else:
            assert reply.status == 200, reply
            assert {"uploadID", "totalParts", "partSize"} <= set(reply.data)

    each()
    assert_still_serves_a_push(target)


def test_part_bodies_are_presigned_exactly_when_they_fit_the_upload_plan(target: Target) -> None:
    upload = target.main
    path = f"/v2/imagefile/{upload.image_id}/_multipart"
    fields = {
        "uploadID": token_choices(upload),
        "partNumber": sizes_around(0, 1, 3, MAX_PARTS),
        "partSize": sizes_around(0, upload.part_size, upload.expected_part_size(3), MAX_PART_SIZE),
        "sha256sum": SHA256 | NOT_QUITE_SHA256,
    }

    @EXAMPLES
    @given(bodies(fields))
    def each(body: bytes) -> None:
        TRIED["json bodies: PUT _multipart (part)"] += 1
        reply = call(target, "PUT", path, body)
        request = accepted(PartRequest.parse, body)
        if request is None or request.upload_token != upload.token:
            assert_client_error(reply, 400)
            return
        fits = request.part_number <= upload.total_parts and request.part_size == upload.expected_part_size(
            request.part_number
        )
        if fits:
            assert reply.status == 200, reply
            assert f"X-Amz-Content-Sha256={request.sha256}" in reply.data["presignedURL"]
        else:
            assert_client_error(reply, 400)

    each()
    assert_still_serves_a_push(target)


def test_complete_bodies_are_refused_with_4xx_unless_they_list_exactly_the_plans_parts(target: Target) -> None:
    upload = target.small
    path = f"/v2/imagefile/{upload.image_id}/_multipart_complete"
    part = st.fixed_dictionaries({}, optional={"partNumber": either(sizes_around(0, 1, 2)), "token": either(ETAGS)})
    fields = {"uploadID": token_choices(upload), "completedParts": st.lists(part, max_size=4)}
    seen_before = target.registry_log_length()

    @EXAMPLES
    @given(bodies(fields))
    def each(body: bytes) -> None:
        TRIED["json bodies: PUT _multipart_complete"] += 1
        reply = call(target, "PUT", path, body)
        request = accepted(CompleteRequest.parse, body)
        if request is None or request.upload_token != upload.token:
            assert_client_error(reply, 400)
        elif [number for number, _ in request.parts] != [1]:
            assert_client_error(reply, 400)
        else:
            # S3 decides: part 1 was never uploaded, so it refuses (4xx), never a 5xx.
            assert_client_error(reply)

    each()
    # Nothing reached the registry: a complete is only announced to it after S3 completed the object.
    assert target.registry_log_length() == seen_before
    assert_still_serves_a_push(target)


def test_abort_bodies_abort_exactly_when_the_token_is_genuine(target: Target) -> None:
    upload = target.aborted
    path = f"/v2/imagefile/{upload.image_id}/_multipart_abort"

    @EXAMPLES
    @given(bodies({"uploadID": token_choices(upload)}))
    def each(body: bytes) -> None:
        TRIED["json bodies: PUT _multipart_abort"] += 1
        reply = call(target, "PUT", path, body)
        request = accepted(AbortRequest.parse, body)
        if request is None or request.upload_token != upload.token:
            assert_client_error(reply, 400)
        else:
            assert (reply.status, json.loads(reply.body)) == (200, {}), reply

    each()
    assert_still_serves_a_push(target)


def test_legacy_start_bodies_are_validated_before_the_registry_sees_them(target: Target) -> None:
    path = f"/v2/imagefile/{target.legacy_image}"
    fields = {
        "filesize": sizes_around(0, 1, 5 * 1024**3, MAX_FILESIZE),
        "sha256sum": SHA256 | NOT_QUITE_SHA256 | st.just(""),
        "md5sum": st.text(max_size=40),
    }

    @EXAMPLES
    @given(bodies(fields))
    def each(body: bytes) -> None:
        TRIED["json bodies: POST v2/imagefile/{id} (legacy start)"] += 1
        seen = target.registry_log_length()
        reply = call(target, "POST", path, body)
        request = accepted(LegacyStartRequest.parse, body)
        if request is None:
            assert_client_error(reply, 400)
            assert target.registry_log_length() == seen
        elif request.filesize > 5 * 1024**3:
            assert_client_error(reply, 413)
        else:
            assert reply.status == 200, reply
            assert reply.data["uploadURL"].startswith(f"http://localhost:{target.stack.s3.port}/")

    each()
    assert_still_serves_a_push(target)


# ---------------------------------------------------------------------------------------------------------
# Path parameters

SPECIAL_SEGMENTS = [
    "..", ".", "%2e%2e", "%2E%2E", ".%2e", "%2e", "a%2Fb", "a%2fb", "%2F", "%5C", "a%5C..%5Cb", "%00", "a%00b",
    "1%00", "%252F", "%252e%252e", "%25", "%", "%zz", "%C0%AE%C0%AE", "%C3%A9", "%E2%80%AE", "%EF%BC%8F",
    "%F0%9F%92%A9", "%0A", "%0D%0A", "1%0D%0AX-Injected:%201", "%09", "%20", "+", "a;b", "a,b", "a:b", "~", "1" * 129,
    "1" * 128, "x" * 20_000, "%41" * 3000, "1.", ".1", "-", "_", "1..2",
]  # fmt: skip

ROUTES = [  # (method, path template, body for the upload of Target.main)
    ("POST", "/v2/imagefile/{}/_multipart", "start"),
    ("PUT", "/v2/imagefile/{}/_multipart", "part"),
    ("PUT", "/v2/imagefile/{}/_multipart_complete", "complete"),
    ("PUT", "/v2/imagefile/{}/_multipart_abort", "abort"),
    ("POST", "/v2/imagefile/{}", "legacy"),
]

SEGMENTS = st.one_of(
    st.text(max_size=40).map(lambda text: quote(text, safe="")),  # any unicode, percent-encoded as UTF-8
    st.binary(max_size=40).map(lambda raw: "".join(f"%{byte:02X}" for byte in raw)),  # any bytes
    st.text(alphabet=string.ascii_letters + string.digits + "%.-_~!$&'()*+,;=:@", min_size=1, max_size=40),
    st.from_regex(r"[A-Za-z0-9._-]{120,135}", fullmatch=True),  # around the length cap
    st.sampled_from(SPECIAL_SEGMENTS),
)


def route_body(target: Target, kind: str) -> bytes:
    upload = target.main
    return {
        "start": json_bytes({"filesize": SMALL_FILE}),
        "part": part_body(upload),
        "complete": json_bytes({"uploadID": upload.token, "completedParts": [{"partNumber": 1, "token": "x"}]}),
        "abort": json_bytes({"uploadID": "not-a-token"}),
        "legacy": json_bytes({"filesize": SMALL_FILE}),
    }[kind]


def is_valid_image_id(segment: str) -> bool:
    try:
        check_image_id(segment)  # as written: an encoded spelling is not the library API's plain shape
    except InvalidRequest:
        return False
    return True


def test_image_ids_outside_the_allowed_set_are_400_and_never_reach_the_registry(target: Target) -> None:
    @EXAMPLES
    @given(segment=SEGMENTS, route=st.sampled_from(ROUTES))
    def each(segment: str, route: tuple[str, str, str]) -> None:
        TRIED["path parameters: image id on the intercepted routes"] += 1
        method, template, kind = route
        seen = target.registry_log_length()
        reply = call(target, method, template.format(segment), route_body(target, kind))
        if len(template.format(segment)) > 8190:
            assert_refused_by_the_http_parser(reply)  # aiohttp's request-line limit
        elif not is_valid_image_id(segment):
            assert_client_error(reply, 400)
            assert target.registry_log_length() == seen
        else:
            assert_answered_without_failing(target, reply, seen)

    each()
    # The multipart routes are answered by the gateway only: sregistry's own abort would delete the image row.
    assert not any("_multipart" in record.path for record in target.registry_log())
    assert_still_serves_a_push(target)


@pytest.mark.parametrize(
    "raw_path",
    [
        b"/v2/imagefile/a\x00b/_multipart",
        b"/v2/imagefile/\xc3\xa9/_multipart",
        b"/v2/imagefile/a b/_multipart",
        b"/v2/imagefile/a\tb/_multipart",
        b"/v2/imagefile/a\x7fb/_multipart",
        b"/v2/imagefile/a\rb/_multipart",
        b"/v2/imagefile/a\x0bb/_multipart",
        b"/v2/imagefile/\xff/_multipart",
    ],
    ids=["NUL", "raw-utf8", "space", "tab", "DEL", "CR", "VT", "0xff"],
)
def test_raw_control_and_non_ascii_bytes_in_the_path_are_refused_by_the_http_parser(
    target: Target, raw_path: bytes
) -> None:
    TRIED["path parameters: raw bytes in the request line"] += 1
    seen = target.registry_log_length()
    body = json_bytes({"filesize": 10})
    request = b"POST " + raw_path + b" HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body) + body
    reply = exchange(target.port, request)
    assert reply.status == 400, reply
    if reply.content_type.startswith("application/json"):
        reply.error()
    assert target.registry_log_length() == seen


@pytest.mark.parametrize(
    "request_target",
    ["http://127.0.0.1:1/v2/imagefile/1/_multipart_abort", "http://evil.example/v1/entities/alice", "a://b@c/d"],
)
def test_absolute_form_request_targets_are_400_and_never_forwarded(target: Target, request_target: str) -> None:
    TRIED["path parameters: absolute-form targets"] += 1
    seen = target.registry_log_length()
    reply = call(target, "PUT", request_target, json_bytes({"uploadID": target.main.token}))
    assert_client_error(reply, 400)
    assert target.registry_log_length() == seen


def test_the_parts_listing_refuses_any_token_in_its_path_with_4xx(target: Target) -> None:
    @FEW_EXAMPLES
    @given(SEGMENTS)
    def each(segment: str) -> None:
        TRIED["path parameters: token in /_gateway/uploads/{token}/parts"] += 1
        path = f"/_gateway/uploads/{segment}/parts"
        reply = call(target, "GET", path)
        if len(path) > 8190:
            assert_refused_by_the_http_parser(reply)
        else:
            assert_client_error(reply)

    each()
    assert call(target, "GET", f"/_gateway/uploads/{target.main.token}/parts").status == 200


# ---------------------------------------------------------------------------------------------------------
# Upload tokens over HTTP (the unit-level cases are in test_tokens.py)


def raw_token(token: str) -> bytes:
    return base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))


def decodes_to(token: str, raw: bytes) -> bool:
    try:
        return raw_token(token) == raw
    except ValueError:
        return False


def encode_token(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def presign_with(target: Target, token: str, *, upload: Upload | None = None, port: int | None = None) -> Reply:
    upload = upload or target.main
    path = f"/v2/imagefile/{upload.image_id}/_multipart"
    return exchange(port or target.port, http_request("PUT", path, part_body(upload, uploadID=token)))


def test_any_bit_flip_in_the_token_text_is_refused_unless_it_decodes_to_the_same_bytes(target: Target) -> None:
    genuine = raw_token(target.main.token)

    @FEW_EXAMPLES
    @given(position=st.integers(min_value=0), bit=st.integers(min_value=0, max_value=6))
    def each(position: int, bit: int) -> None:
        TRIED["tokens: bit flips in the token text"] += 1
        text = bytearray(target.main.token.encode())
        text[position % len(text)] ^= 1 << bit
        token = text.decode("latin-1")
        reply = presign_with(target, token)
        if decodes_to(token, genuine):  # base64 ignores the unused low bits of its last character
            assert reply.status == 200, reply
        else:
            assert_client_error(reply, 400)

    each()


def test_any_bit_flip_in_the_token_bytes_is_refused(target: Target) -> None:
    genuine = raw_token(target.main.token)

    @FEW_EXAMPLES
    @given(position=st.integers(min_value=0), bit=st.integers(min_value=0, max_value=7))
    def each(position: int, bit: int) -> None:
        TRIED["tokens: bit flips in the sealed bytes"] += 1
        raw = bytearray(genuine)
        raw[position % len(raw)] ^= 1 << bit
        assert_client_error(presign_with(target, encode_token(bytes(raw))), 400)

    each()


def test_truncated_or_extended_tokens_are_refused(target: Target) -> None:
    token = target.main.token

    @FEW_EXAMPLES
    @given(cut=st.integers(min_value=0, max_value=len(token) - 1), tail=st.sampled_from(["", "A", "AA", "=", "AAAA"]))
    def each(cut: int, tail: str) -> None:
        TRIED["tokens: truncated or extended"] += 1
        forged = token[:cut] + tail
        reply = presign_with(target, forged)
        if decodes_to(forged, raw_token(token)):
            assert reply.status == 200, reply
        else:
            assert_client_error(reply, 400)

    each()
    assert_client_error(presign_with(target, token + "AAAA"), 400)


FIELDS = ["mode", "image_id", "bucket", "key", "upload_id", "filesize", "part_size", "total_parts", "expires_at"]


def test_fields_swapped_between_two_genuine_tokens_break_the_seal(target: Target) -> None:
    mine, theirs = raw_token(target.main.token), raw_token(target.stranger.token)
    my_fields, their_fields = json.loads(mine[1:-32]), json.loads(theirs[1:-32])

    @FEW_EXAMPLES
    @given(
        swapped=st.sets(st.sampled_from([*FIELDS, "caller"]), min_size=1),
        mac=st.sampled_from(["mine", "theirs"]),
        splice=st.integers(min_value=1, max_value=len(mine) - 1),
    )
    def each(swapped: set[str], mac: str, splice: int) -> None:
        TRIED["tokens: fields swapped or spliced between two genuine tokens"] += 2
        payload = my_fields | {name: their_fields[name] for name in swapped}
        body = mine[:1] + json.dumps(payload, separators=(",", ":")).encode()
        forged = body + (mine if mac == "mine" else theirs)[-32:]
        # Only a forgery that happens to equal one of the two genuine tokens opens, with that token's binding.
        assert_opens_only_as_genuine(presign_with(target, encode_token(forged)), forged)
        spliced = mine[:splice] + theirs[splice:]
        assert_opens_only_as_genuine(presign_with(target, encode_token(spliced)), spliced)

    def assert_opens_only_as_genuine(reply: Reply, forged: bytes) -> None:
        if forged == mine:
            assert reply.status == 200, reply
        else:
            assert_client_error(reply, 403 if forged == theirs else 400)

    each()


ROUTES_TAKING_A_TOKEN = ["part", "complete", "abort", "parts"]


def token_call(target: Target, route: str, upload: Upload, image_id: str, token: str | None) -> Reply:
    body = json_bytes({"uploadID": upload.token})
    if route == "part":
        return call(target, "PUT", f"/v2/imagefile/{image_id}/_multipart", part_body(upload), token=token)
    if route == "complete":
        parts = [{"partNumber": n, "token": "0" * 32} for n in range(1, upload.total_parts + 1)]
        body = json_bytes({"uploadID": upload.token, "completedParts": parts})
        return call(target, "PUT", f"/v2/imagefile/{image_id}/_multipart_complete", body, token=token)
    if route == "abort":
        return call(target, "PUT", f"/v2/imagefile/{image_id}/_multipart_abort", body, token=token)
    return call(target, "GET", f"/_gateway/uploads/{upload.token}/parts", token=token)


@pytest.mark.parametrize("route", ROUTES_TAKING_A_TOKEN)
def test_a_token_replayed_by_another_caller_is_403(target: Target, route: str) -> None:
    for caller in (OTHER_TOKEN, None, "", TOKEN.upper(), TOKEN + " ", "\udcff"):
        TRIED["tokens: replayed by another caller"] += 1
        if credential_of(f"BEARER {caller}" if caller is not None else None) == TOKEN:
            continue  # the same credential (the Bearer scheme and surrounding blanks are not part of it)
        assert_client_error(token_call(target, route, target.main, target.main.image_id, caller), 403)


@pytest.mark.parametrize("route", ["part", "complete", "abort"])
def test_a_token_replayed_on_another_image_is_403(target: Target, route: str) -> None:
    for image_id in (target.other.image_id, target.stranger.image_id, target.start_image, "999999"):
        TRIED["tokens: replayed on another image"] += 1
        assert_client_error(token_call(target, route, target.main, image_id, TOKEN), 403)
    TRIED["tokens: replayed on another image"] += 1
    # The stranger's token on the stranger's image, presented by us: the caller binding holds there too.
    assert_client_error(token_call(target, route, target.stranger, target.stranger.image_id, TOKEN), 403)


def test_an_expired_token_is_410_on_every_route_and_valid_until_then(target: Target) -> None:
    ttl = target.stack.config.uploads.token_ttl_seconds
    late = target.start_gateway(clock=lambda: datetime.now(UTC) + timedelta(seconds=ttl + 60))
    early = target.start_gateway(clock=lambda: datetime.now(UTC) + timedelta(seconds=ttl - 60))
    late_target = replace(target, port=late)
    for route in ROUTES_TAKING_A_TOKEN:
        TRIED["tokens: expired"] += 1
        assert_client_error(token_call(late_target, route, target.main, target.main.image_id, TOKEN), 410)
    assert presign_with(target, target.main.token, port=early).status == 200


def test_rotated_secrets_keep_open_uploads_working_and_retired_secrets_stop_them(target: Target) -> None:
    new_secret = "rotated-secret-" + uuid.uuid4().hex
    rotated = target.start_gateway(token_secret=new_secret, previous_token_secrets=[TOKEN_SECRET])
    retired = target.start_gateway(token_secret=new_secret, previous_token_secrets=[])
    rotated_url = f"http://127.0.0.1:{rotated}"
    data = os.urandom(3 * MIB)
    sha = hashlib.sha256(data).hexdigest()

    async def push_across_a_rotation() -> tuple[str, Upload]:
        """Started on a replica with the old secret, finished on one rotated to the new secret."""
        async with aiohttp.ClientSession() as session:
            entity, collection, container = unique_ref("rot")
            image_id = await LibraryClient(session, target.stack.gateway_url).create_image(
                entity, collection, container, sha
            )
            upload = await start_upload(session, target.stack.gateway_url, image_id, len(data))
            client = LibraryClient(session, rotated_url)
            plan = {"uploadID": upload.token, "partSize": upload.part_size, "totalParts": upload.total_parts}
            done = await client.complete(image_id, upload.token, await client.upload_parts(image_id, plan, data))
            assert done.status == 200, done.body
            fresh = await start_upload(session, rotated_url, await new_image(session, rotated_url), SMALL_FILE)
            return f"{collection}/{container}:sha256.{sha}", fresh

    key, fresh = target.loop.run(push_across_a_rotation())
    assert target.stack.s3.read_object(key, BUCKET) == data
    TRIED["tokens: secret rotation"] += 4
    assert presign_with(target, target.main.token, port=rotated).status == 200
    assert_client_error(presign_with(target, target.main.token, port=retired), 400)
    # A token sealed with the new secret is not opened by a replica that does not know it yet.
    assert presign_with(target, fresh.token, upload=fresh, port=rotated).status == 200
    assert_client_error(presign_with(target, fresh.token, upload=fresh), 400)


# ---------------------------------------------------------------------------------------------------------
# Header abuse and request smuggling: raw bytes on the wire


def smuggled(marker: str) -> bytes:
    """A second request hidden in the first one's body: reaching the registry would prove desynchronised framing."""
    return f"GET /v1/smuggled-{marker} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()


def head(method: str, path: str, *lines: bytes, version: bytes = b"HTTP/1.1") -> bytes:
    start = f"{method} {path} ".encode() + version
    return b"\r\n".join([start, b"Host: 127.0.0.1", f"Authorization: BEARER {TOKEN}".encode(), *lines]) + b"\r\n\r\n"


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


SmugglingCase = Callable[[str, bytes, bytes], bytes]  # (path, a valid body, the smuggled request) -> the bytes


def _cl(n: int) -> bytes:
    return b"Content-Length: %d" % n


SMUGGLING: dict[str, SmugglingCase] = {
    "duplicate Content-Length, different values": lambda p, b, s: head("PUT", p, _cl(len(b)), _cl(len(b + s))) + b + s,
    "duplicate Content-Length, same value": lambda p, b, s: head("PUT", p, _cl(len(b)), _cl(len(b))) + b + s,
    "Content-Length: 5, 5": lambda p, b, s: head("PUT", p, b"Content-Length: %d, %d" % (len(b), len(b))) + b + s,
    "Content-Length then Transfer-Encoding": lambda p, b, s: (
        head("PUT", p, _cl(len(chunk(b) + b"0\r\n\r\n")), b"Transfer-Encoding: chunked") + chunk(b) + b"0\r\n\r\n" + s
    ),
    "Transfer-Encoding then Content-Length": lambda p, b, s: (
        head("PUT", p, b"Transfer-Encoding: chunked", _cl(len(chunk(b) + b"0\r\n\r\n" + s)))
        + chunk(b)
        + b"0\r\n\r\n"
        + s
    ),
    "Transfer-Encoding: chunked, identity": lambda p, b, s: (
        head("PUT", p, b"Transfer-Encoding: chunked, identity") + chunk(b) + b"0\r\n\r\n" + s
    ),
    "Transfer-Encoding: identity, chunked": lambda p, b, s: (
        head("PUT", p, b"Transfer-Encoding: identity, chunked", _cl(len(b))) + b + s
    ),
    "two Transfer-Encoding headers": lambda p, b, s: (
        head("PUT", p, b"Transfer-Encoding: chunked", b"Transfer-Encoding: identity") + chunk(b) + b"0\r\n\r\n" + s
    ),
    "Transfer-Encoding: xchunked": lambda p, b, s: head("PUT", p, b"Transfer-Encoding: xchunked") + chunk(b) + s,
    "space before the colon": lambda p, b, s: (
        head("PUT", p, b"Transfer-Encoding : chunked", _cl(len(chunk(b) + s))) + chunk(b) + s
    ),
    "vertical tab before chunked": lambda p, b, s: (
        head("PUT", p, b"Transfer-Encoding:\x0bchunked", _cl(len(chunk(b) + s))) + chunk(b) + s
    ),
    "obs-fold continuing Content-Length": lambda p, b, s: (
        head("PUT", p, _cl(len(b)), b" " + b"%d" % len(b + s)) + b + s
    ),
    "obs-fold hiding Transfer-Encoding": lambda p, b, s: (
        head("PUT", p, _cl(len(b + s)), b"X-Folded: a", b" Transfer-Encoding: chunked") + b + s
    ),
    "bare LF before Transfer-Encoding": lambda p, b, s: (
        head("PUT", p, _cl(len(b + s)), b"X-A: a\nTransfer-Encoding: chunked") + b + s
    ),
    "bare CR in a header": lambda p, b, s: (
        head("PUT", p, _cl(len(b + s)), b"X-A: a\rTransfer-Encoding: chunked") + b + s
    ),
    "bare LF line endings throughout": lambda p, b, s: (
        f"PUT {p} HTTP/1.1\nHost: 127.0.0.1\nAuthorization: BEARER {TOKEN}\nContent-Length: {len(b)}\n\n".encode()
        + b
        + s
    ),
    "NUL in a header value": lambda p, b, s: head("PUT", p, _cl(len(b)), b"X-A: a\x00b") + b + s,
    "negative Content-Length": lambda p, b, s: head("PUT", p, b"Content-Length: -1") + b + s,
    "Content-Length with a plus sign": lambda p, b, s: head("PUT", p, b"Content-Length: +%d" % len(b)) + b + s,
    "hexadecimal Content-Length": lambda p, b, s: head("PUT", p, b"Content-Length: 0x%x" % len(b)) + b + s,
    "Content-Length overflowing 64 bits": lambda p, b, s: head("PUT", p, b"Content-Length: 1" + b"0" * 25) + b + s,
    "chunk size not hexadecimal": lambda p, b, s: head("PUT", p, b"Transfer-Encoding: chunked") + b"zz\r\n" + b + s,
    "negative chunk size": lambda p, b, s: head("PUT", p, b"Transfer-Encoding: chunked") + b"-1\r\n" + b + s,
    "chunk size with 0x": lambda p, b, s: head("PUT", p, b"Transfer-Encoding: chunked") + b"0x%x\r\n" % len(b) + b + s,
    "chunk size overflowing 64 bits": lambda p, b, s: (
        head("PUT", p, b"Transfer-Encoding: chunked") + b"f" * 20 + b"\r\n" + b + s
    ),
    "chunk longer than its size": lambda p, b, s: (
        head("PUT", p, b"Transfer-Encoding: chunked") + b"%x\r\n" % (len(b) - 1) + b + b"\r\n0\r\n\r\n" + s
    ),
    "chunk extension with a bare LF": lambda p, b, s: (
        head("PUT", p, b"Transfer-Encoding: chunked") + b"%x;a=b\nc\r\n" % len(b) + b + b"\r\n0\r\n\r\n" + s
    ),
    "chunk extension with an unterminated quote": lambda p, b, s: (
        head("PUT", p, b"Transfer-Encoding: chunked") + b'%x;a="\r\n' % len(b) + b + b"\r\n0\r\n\r\n" + s
    ),
    "header value above the 16 KiB field limit": lambda p, b, s: (
        head("PUT", p, _cl(len(b)), b"X-Long: " + b"a" * 20_000) + b + s
    ),
    "header name above the field limit": lambda p, b, s: head("PUT", p, _cl(len(b)), b"X" * 20_000 + b": a") + b + s,
    "two hundred headers": lambda p, b, s: head("PUT", p, _cl(len(b)), *(b"X-%d: a" % i for i in range(200))) + b + s,
    "chunked HTTP/1.0 with a request after it": lambda p, b, s: (
        head("PUT", p, b"Transfer-Encoding: chunked", version=b"HTTP/1.0") + chunk(b) + b"0\r\n\r\n" + s
    ),
    "a request after Connection: close": lambda p, b, s: head("PUT", p, _cl(len(b)), b"Connection: close") + b + s,
    "request line above 8 KiB": lambda p, b, s: head("PUT", p + "?" + "a" * 9000, _cl(len(b))) + b + s,
}


@pytest.mark.parametrize("route", ["intercepted", "forwarded"])
@pytest.mark.parametrize("case", sorted(SMUGGLING))
def test_request_smuggling_shapes_are_refused_and_the_hidden_request_never_reaches_the_registry(
    target: Target, case: str, route: str
) -> None:
    TRIED["headers: smuggling and malformed framing (raw socket)"] += 1
    marker = uuid.uuid4().hex
    if route == "intercepted":
        path, body = f"/v2/imagefile/{target.main.image_id}/_multipart", part_body(target.main)
    else:
        path, body = "/v1/collections", json_bytes({"name": "c" + marker[:10], "entity": "1"})
    reply = exchange(target.port, SMUGGLING[case](path, body, smuggled(marker)))
    assert_refused_by_the_http_parser(reply)
    assert not any(marker in record.raw_path for record in target.registry_log())
    assert call(target, "GET", "/_gateway/healthz").status == 200


# A plain CRLF just starts another header, so it is not in the list; each of these must never do that.
SEPARATORS = [b"\n", b"\r", b"\x00", b"\r\n ", b"\r\n\t", b"\n\r", b"\r\r\n", b"\x0b", b"\x0c", b"\x7f", b"\x85"]


def test_line_breaks_and_controls_injected_into_headers_never_reach_the_registry_as_headers(target: Target) -> None:
    @EXAMPLES
    @given(
        prefix=st.text(alphabet=string.ascii_letters + string.digits + " -_=;,", max_size=12),
        separator=st.sampled_from(SEPARATORS),
        where=st.sampled_from(["value", "name"]),
        route=st.sampled_from(["intercepted", "forwarded"]),
    )
    def each(prefix: str, separator: bytes, where: str, route: str) -> None:
        TRIED["headers: CR/LF/control injection (raw socket)"] += 1
        marker = uuid.uuid4().hex
        injected = f"X-Injected-{marker}: 1".encode()
        line = (
            b"X-Probe: " + prefix.encode() + separator + injected
            if where == "value"
            else b"X-Probe" + prefix.replace(" ", "").encode() + separator + injected + b": 1"
        )
        if route == "intercepted":
            path, body = f"/v2/imagefile/{target.main.image_id}/_multipart", part_body(target.main)
        else:
            path, body = "/v1/entities/alice", b""
        method = "PUT" if route == "intercepted" else "GET"
        seen = target.registry_log_length()
        reply = exchange(target.port, head(method, path, b"Connection: close", line, _cl(len(body))) + body)
        assert reply.status < 500, reply
        for record in target.registry_log()[seen:]:
            assert not any(marker in name for name in record.headers), record  # no header was made up
            texts = [text for header in record.headers.items() for text in header]
            assert not any(c in text for text in texts for c in "\r\n\x00"), record

    each()
    assert_still_serves_a_push(target)


# ---------------------------------------------------------------------------------------------------------
# Oversized and fragmented bodies on the intercepted routes


def chunked_request(method: str, path: str, pieces: list[bytes]) -> bytes:
    return (
        head(method, path, b"Transfer-Encoding: chunked", b"Connection: close")
        + b"".join(chunk(piece) for piece in pieces)
        + b"0\r\n\r\n"
    )


def route_path(target: Target, kind: str) -> tuple[str, str]:
    method, template, _ = next(route for route in ROUTES if route[2] == kind)
    return method, template.format(target.main.image_id)


@pytest.mark.parametrize("kind", [route[2] for route in ROUTES])
def test_a_chunked_body_above_the_cap_is_413_and_never_reaches_the_registry(target: Target, kind: str) -> None:
    TRIED["oversized bodies"] += 1
    method, path = route_path(target, kind)
    seen = target.registry_log_length()
    reply = exchange(target.port, chunked_request(method, path, [b" " * (256 * 1024)] * 5))
    assert_client_error(reply, 413)
    assert target.registry_log_length() == seen


@pytest.mark.parametrize("kind", [route[2] for route in ROUTES])
def test_a_declared_length_above_the_cap_is_413_before_any_body_byte_is_sent(target: Target, kind: str) -> None:
    TRIED["oversized bodies"] += 1
    method, path = route_path(target, kind)
    request = head(method, path, _cl(MAX_JSON_BODY + 1))  # the body never comes: the answer must not wait for it
    assert_client_error(exchange(target.port, request, read_to_eof=False), 413)


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_the_cap_is_exactly_one_mebibyte(target: Target, framing: str) -> None:
    TRIED["oversized bodies"] += 2
    path = f"/v2/imagefile/{target.main.image_id}/_multipart_abort"
    document = json_bytes({"uploadID": "not-a-token"})
    for size, status in ((MAX_JSON_BODY, 400), (MAX_JSON_BODY + 1, 413)):
        body = document + b" " * (size - len(document))
        if framing == "chunked":
            request = chunked_request("PUT", path, [body[: size // 2], body[size // 2 :]])
        else:
            request = head("PUT", path, _cl(size), b"Connection: close") + body
        error = assert_client_error(exchange(target.port, request), status)
        if status == 400:
            assert error["message"].startswith("uploadID"), error  # parsed whole, refused for its content


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_a_body_arriving_in_pieces_is_read_whole(target: Target, framing: str) -> None:
    """A 10,000-part complete is ~0.6 MiB: it never arrives in one read, and must not be cut at the first one."""
    TRIED["fragmented bodies"] += 1
    upload = target.small
    parts = [{"partNumber": n, "token": '"' + "0" * 32 + '"'} for n in range(1, MAX_PARTS + 1)]
    body = json_bytes({"uploadID": upload.token, "completedParts": parts})
    path = f"/v2/imagefile/{upload.image_id}/_multipart_complete"
    if framing == "chunked":
        pieces = [body[i : i + 100_000] for i in range(0, len(body), 100_000)]
        request = chunked_request("PUT", path, pieces)
        pause_after = tuple(len(request) * k // 4 for k in (1, 2, 3))
    else:
        request = head("PUT", path, _cl(len(body)), b"Connection: close") + body
        pause_after = (len(request) - len(body) + 1000, len(request) - 1000)
    error = assert_client_error(exchange(target.port, request, pause_after=pause_after), 400)
    assert error["message"] == "completedParts: expected each of parts 1..1 exactly once", error


def test_after_all_of_it_the_gateway_still_serves_a_push(target: Target) -> None:
    assert_still_serves_a_push(target)


def test_no_credential_upload_token_or_secret_reached_a_log_line(target: Target, log_lines: LogLines) -> None:
    """Runs last: every line logged while the module ran, as the gateway would write it (JSON, tracebacks too)."""
    secrets = {
        "credential": TOKEN,
        "other credential": OTHER_TOKEN,
        "token secret": TOKEN_SECRET,
        "S3 secret key": target.stack.s3.secret_key,
        **{
            f"upload token {name}": upload.token[-43:]  # the MAC, unique to each token
            for name, upload in vars(target).items()
            if isinstance(upload, Upload)
        },
    }
    assert any('"logger":"gateway.access"' in line for line in log_lines.lines)  # the capture works
    leaks: dict[str, list[str]] = {}
    for line in log_lines.lines:
        for name, secret in secrets.items():
            if secret in line:
                leaks.setdefault(name, []).append(line)
    assert not leaks, "\n".join(f"{name}: {len(lines)} lines, e.g. {lines[0][:1500]}" for name, lines in leaks.items())
