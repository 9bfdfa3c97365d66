"""Unit tests of the push/pull client (gateway.libclient).

The pure parts (references, part planning and region hashing, progress formatting, token lookup, the resume
record) are tested directly. The flows run against a small in-test aiohttp app that plays both the library API
and the object store behind presigned URLs: a stand-in acceptable for unit tests only; the end-to-end tests
drive the same client against the real gateway, registry fake and S3.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from gateway.libclient import cli
from gateway.libclient.api import semver_at_least
from gateway.libclient.auth import (
    ENV_TOKEN,
    ENV_URL,
    RemoteEndpoint,
    load_remote,
    parse_simple_yaml,
    resolve_endpoint,
)
from gateway.libclient.errors import (
    EXIT_AUTH,
    EXIT_INTEGRITY,
    EXIT_NOT_FOUND,
    EXIT_USAGE,
    AuthRefused,
    IntegrityError,
    NotFound,
    ObjectStoreError,
    UsageError,
)
from gateway.libclient.files import RegionStream, file_digests, hash_region, identify, plan_parts
from gateway.libclient.objectstore import same_origin, signs_content_sha256
from gateway.libclient.progress import Progress, Snapshot, format_bytes, format_eta, format_rate, render_line
from gateway.libclient.pull import PullOptions, pull
from gateway.libclient.push import PartUploaded, PushHooks, PushOptions, PushResult, push
from gateway.libclient.refs import LibraryRef, parse_ref
from gateway.libclient.retry import RetryPolicy
from gateway.libclient.state import (
    ListedPart,
    UploadState,
    load_state,
    parse_listed_parts,
    remove_state,
    reusable_parts,
    save_state,
    state_path,
)

TOKEN = "secret-token"
KIB = 1024
NO_WAIT = RetryPolicy(attempts=3, base_delay_s=0.0)
ServerFactory = Callable[..., Awaitable[TestServer]]


# -- references ----------------------------------------------------------------------------------------------


def test_ref_with_a_tag_list_names_every_tag() -> None:
    ref = parse_ref("library://alice/tools/grep:v1,stable")
    assert (ref.entity, ref.collection, ref.container, ref.tags, ref.host) == (
        "alice",
        "tools",
        "grep",
        ("v1", "stable"),
        "",
    )
    assert ref.path == "alice/tools/grep"


def test_ref_without_a_tag_means_latest() -> None:
    assert parse_ref("library://alice/tools/grep").tags == ("latest",)


def test_ref_with_an_empty_host_is_the_plain_form() -> None:
    assert parse_ref("library:///alice/tools/grep:v2") == LibraryRef("alice", "tools", "grep", ("v2",))


def test_ref_may_name_a_host_with_a_port() -> None:
    ref = parse_ref("library://registry.example.org:8443/alice/tools/grep:v1")
    assert (ref.host, ref.path, ref.tags) == ("registry.example.org:8443", "alice/tools/grep", ("v1",))


@pytest.mark.parametrize(
    "text",
    [
        "docker://alice/tools/grep",
        "library://tools/grep",
        "library://alice/tools/grep:",
        "library://Alice/tools/grep",
        "library://alice/tools/grep:v1,,v2",
        "library://a/b/c/d/e",
    ],
)
def test_malformed_refs_are_usage_errors(text: str) -> None:
    with pytest.raises(UsageError):
        parse_ref(text)


def test_pull_refs_take_one_tag_only() -> None:
    with pytest.raises(UsageError, match="one tag"):
        parse_ref("library://alice/tools/grep:a,b", single_tag=True)


# -- part planning and hashing -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "part_size", "sizes"), [(10, 4, [4, 4, 2]), (12, 4, [4, 4, 4]), (3, 4, [3]), (0, 4, [])]
)
def test_part_plan_covers_the_file_without_an_empty_last_part(size: int, part_size: int, sizes: list[int]) -> None:
    plan = plan_parts(size, part_size)
    assert [part.size for part in plan] == sizes
    assert [part.number for part in plan] == list(range(1, len(sizes) + 1))
    assert all(part.offset == (part.number - 1) * part_size for part in plan)


def test_region_hash_read_in_small_chunks_equals_hashlib_over_the_same_bytes(tmp_path: Path) -> None:
    data = os.urandom(100_003)
    path = tmp_path / "image.sif"
    path.write_bytes(data)
    for part in plan_parts(len(data), 30_000):
        region = data[part.offset : part.offset + part.size]
        assert hash_region(path, part.offset, part.size, chunk_size=4096) == hashlib.sha256(region).hexdigest()


def test_region_hash_of_a_file_that_is_too_short_is_an_integrity_error(tmp_path: Path) -> None:
    path = tmp_path / "short.sif"
    path.write_bytes(b"x" * 10)
    with pytest.raises(IntegrityError):
        hash_region(path, 5, 10)


def test_file_digests_stream_sha256_and_md5_and_count_every_byte(tmp_path: Path) -> None:
    data = os.urandom(50_000)
    path = tmp_path / "image.sif"
    path.write_bytes(data)
    counted: list[int] = []
    digests = file_digests(path, len(data), with_md5=True, chunk_size=7000, on_bytes=counted.append)
    assert digests.sha256 == hashlib.sha256(data).hexdigest()
    assert digests.md5 == hashlib.md5(data).hexdigest()
    assert sum(counted) == len(data) and max(counted) <= 7000


async def test_region_stream_yields_the_region_in_bounded_chunks(tmp_path: Path) -> None:
    data = os.urandom(20_000)
    path = tmp_path / "image.sif"
    path.write_bytes(data)
    stream = RegionStream(path, 1000, 15_000, chunk_size=4096)
    chunks = [chunk async for chunk in stream]
    assert b"".join(chunks) == data[1000:16_000]
    assert max(len(chunk) for chunk in chunks) <= 4096
    assert stream.is_closed()


# -- progress ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("count", "text"),
    [(0, "0 B"), (1023, "1023 B"), (1024, "1.0 KiB"), (1536 * KIB, "1.5 MiB"), (5 * 1024**3, "5.0 GiB")],
)
def test_byte_counts_are_shown_in_binary_units(count: int, text: str) -> None:
    assert format_bytes(count) == text


@pytest.mark.parametrize(
    ("seconds", "text"), [(None, "--:--"), (float("inf"), "--:--"), (7, "0:07"), (3725, "1:02:05")]
)
def test_eta_is_minutes_and_seconds_or_hours(seconds: float | None, text: str) -> None:
    assert format_eta(seconds) == text


def test_progress_line_shows_bytes_percent_rate_eta_and_parts() -> None:
    snapshot = Snapshot(
        done_bytes=512 * 1024**2, total_bytes=1024**3, rate_bps=64 * 1024**2, parts_done=3, parts_total=8
    )
    assert render_line("push", snapshot) == "push  512.0 MiB / 1.0 GiB  50%  64.0 MiB/s  ETA 0:08  parts 3/8"
    assert format_rate(2048) == "2.0 KiB/s"


def test_progress_line_without_a_known_size_shows_bytes_and_rate_only() -> None:
    assert render_line("pull", Snapshot(done_bytes=2048, total_bytes=None, rate_bps=1024)) == "pull  2.0 KiB  1.0 KiB/s"


def test_progress_rate_follows_the_clock_and_rewinds_forget_failed_bytes() -> None:
    now = [100.0]
    progress = Progress("push", total_bytes=1000, stream=io.StringIO(), tty=False, clock=lambda: now[0])
    progress.add(600)
    progress.rewind(200)
    now[0] = 102.0
    snapshot = progress.snapshot()
    assert (snapshot.done_bytes, snapshot.rate_bps) == (400, 200.0)
    assert snapshot.eta_s == 3.0


def test_plain_progress_writes_whole_lines_and_a_terminal_gets_one_redrawn_line() -> None:
    plain, terminal = io.StringIO(), io.StringIO()
    for stream, tty in ((plain, False), (terminal, True)):
        progress = Progress("pull", total_bytes=10, stream=stream, tty=tty, clock=lambda: 1.0)
        progress.add(5)
        progress.draw()
        progress.draw()
    assert plain.getvalue().count("\n") == 2 and "\r" not in plain.getvalue()
    assert terminal.getvalue().count("\r") == 2 and "\n" not in terminal.getvalue()


# -- token and URL lookup ------------------------------------------------------------------------------------

REMOTE_YAML = """\
Active: gw
Remotes:
    DefaultRemote:
        URI: cloud.apptainer.org
        System: true
        Exclusive: false
    gw:
        URI: gateway.example.org
        Token: "remote-token"  # quoted, with a comment
        System: false
        Exclusive: false
Credentials:
    - URI: oras://registry.example.org
      Insecure: false
"""


def test_remote_yaml_parser_reads_go_yaml_mappings_and_skips_sequences() -> None:
    config = parse_simple_yaml(REMOTE_YAML)
    assert config["Active"] == "gw"
    assert config["Remotes"]["gw"] == {
        "URI": "gateway.example.org",
        "Token": "remote-token",
        "System": False,
        "Exclusive": False,
    }
    assert "Credentials" in config and config["Remotes"]["DefaultRemote"]["System"] is True


def test_active_apptainer_remote_is_read_from_the_config_dir(tmp_path: Path) -> None:
    (tmp_path / "remote.yaml").write_text(REMOTE_YAML)
    remote = load_remote({"APPTAINER_CONFIGDIR": str(tmp_path)}, system_files=())
    assert remote == RemoteEndpoint("gw", "gateway.example.org", "remote-token")
    assert remote.base_url == "https://gateway.example.org"


def test_token_lookup_prefers_the_flag_then_the_environment_then_the_apptainer_remote() -> None:
    remote = RemoteEndpoint("gw", "gateway.example.org", "remote-token")
    env = {ENV_TOKEN: "env-token", ENV_URL: "https://gateway.example.org"}
    flag = resolve_endpoint(cli_url=None, cli_token="flag-token", environ=env, remote=remote)
    from_env = resolve_endpoint(cli_url=None, cli_token=None, environ=env, remote=remote)
    from_remote = resolve_endpoint(cli_url=None, cli_token=None, environ={ENV_URL: env[ENV_URL]}, remote=remote)
    assert [flag.token, from_env.token, from_remote.token] == ["flag-token", "env-token", "remote-token"]
    assert from_remote.url == "https://gateway.example.org" and from_remote.url_source == ENV_URL


def test_remote_token_is_not_sent_to_another_registry() -> None:
    remote = RemoteEndpoint("gw", "gateway.example.org", "remote-token")
    endpoint = resolve_endpoint(cli_url="https://other.example.org", cli_token=None, environ={}, remote=remote)
    assert endpoint.token is None


def test_without_any_url_the_remote_is_discovered_and_without_a_remote_it_is_a_usage_error() -> None:
    remote = RemoteEndpoint("gw", "gateway.example.org", "remote-token")
    endpoint = resolve_endpoint(cli_url=None, cli_token=None, environ={}, remote=remote)
    assert (endpoint.url, endpoint.remote, endpoint.token) == (None, remote, "remote-token")
    with pytest.raises(UsageError, match="no registry URL"):
        resolve_endpoint(cli_url=None, cli_token="t", environ={}, remote=None)


def test_api_versions_compare_by_semver_precedence() -> None:
    assert semver_at_least("2.0.0-alpha.2", "2.0.0-alpha.1")
    assert not semver_at_least("2.0.0-alpha.1", "2.0.0-alpha.2")
    assert semver_at_least("2.0.0", "2.0.0-alpha.2") and semver_at_least("2.1.0-alpha.1", "2.0.0-alpha.2")
    assert not semver_at_least(None, "2.0.0-alpha.1") and not semver_at_least("v2.0.0", "2.0.0-alpha.1")


def test_legacy_sha_header_follows_the_signed_headers_and_tokens_follow_only_the_same_origin() -> None:
    assert signs_content_sha256("http://s3/b/k?X-Amz-SignedHeaders=host%3Bx-amz-content-sha256&X-Amz-Signature=a")
    assert not signs_content_sha256("http://s3/b/k?X-Amz-SignedHeaders=host&X-Amz-Signature=a")
    assert same_origin("https://gw.example.org/v1/x", "https://gw.example.org:443/")
    assert not same_origin("http://gw.example.org:9000/b/k", "http://gw.example.org/")


# -- the resume record ---------------------------------------------------------------------------------------


def _state(file: Path, **changes: Any) -> UploadState:
    values: dict[str, Any] = dict(
        file=str(file),
        size=300,
        mtime_ns=5,
        sha256="ab" * 32,
        url="http://gw/",
        ref_path="e/c/n",
        arch="amd64",
        image_id="7",
        container_id="3",
        upload_id="up-1",
        part_size=100,
        total_parts=3,
        s3compliant=True,
    )
    return UploadState(**(values | changes))


def test_state_file_round_trips_privately_and_is_removed(tmp_path: Path) -> None:
    path = state_path(tmp_path / "state", file=tmp_path / "a.sif", url="http://gw/", ref_path="e/c/n", arch="amd64")
    state = _state(tmp_path / "a.sif")
    save_state(path, state)
    assert load_state(path) == state
    assert path.stat().st_mode & 0o777 == 0o600
    remove_state(path)
    assert load_state(path) is None


def test_state_describes_only_the_same_unchanged_file_and_target(tmp_path: Path) -> None:
    file = tmp_path / "a.sif"
    file.write_bytes(b"x" * 300)
    identity = identify(file)
    state = _state(file, size=identity.size, mtime_ns=identity.mtime_ns)

    def describes(*, identity: Any = identity, arch: str = "amd64") -> bool:
        return state.describes(file=file, identity=identity, url="http://gw/", ref_path="e/c/n", arch=arch)

    assert describes()
    later = identity.mtime_ns + 1_000_000_000
    os.utime(file, ns=(later, later))
    assert not describes(identity=identify(file))
    assert not describes(arch="arm64")


def test_unreadable_or_foreign_state_files_are_ignored(tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    for content in ("not json", "[]", json.dumps({"file": "x"})):
        path.write_text(content)
        assert load_state(path) is None


def test_resume_reuses_only_listed_parts_of_the_planned_size() -> None:
    plan = plan_parts(250, 100)  # 100, 100, 50
    listing = {
        "data": {
            "parts": [
                {"partNumber": 1, "etag": '"e1"', "size": 100},
                {"partNumber": 2, "etag": '"e2"', "size": 60},
                {"partNumber": 3, "etag": '"e3"', "size": 50},
                {"partNumber": 9, "etag": '"e9"', "size": 100},
                "junk",
            ]
        }
    }
    listed = parse_listed_parts(listing)
    assert ListedPart(2, '"e2"', 60) in listed
    assert reusable_parts(plan, listed) == {1: '"e1"', 3: '"e3"'}


# -- an in-test library API and object store -----------------------------------------------------------------


@dataclass
class FakeLibrary:
    """Library API + presigned-URL object store in one app; it records what it was asked."""

    api_version: str = "2.0.0-alpha.2"
    part_size: int = 64 * KIB
    multipart: bool = True
    fail_part_once: set[int] = field(default_factory=set)
    fail_part_always: set[int] = field(default_factory=set)
    forget_uploads: bool = False
    corrupt_downloads: bool = False
    image_size_known: bool = True
    serve_directly: bool = False  # answer GET v1/imagefile with the bytes instead of a redirect
    ignore_ranges: bool = False
    expired_signatures: int = 0  # download URLs handed out before this count are already expired
    signatures_issued: int = 0
    log: list[tuple[str, str]] = field(default_factory=list)
    json_requests: list[dict[str, Any]] = field(default_factory=list)
    images: dict[str, str] = field(default_factory=dict)  # hash -> id
    parts: dict[int, bytes] = field(default_factory=dict)
    etags: dict[int, str] = field(default_factory=dict)
    part_puts: list[int] = field(default_factory=list)
    objects: dict[str, bytes] = field(default_factory=dict)  # image id -> bytes
    tags: dict[str, str] = field(default_factory=dict)  # tag -> image id
    aborted: list[str] = field(default_factory=list)
    legacy_headers: list[dict[str, str]] = field(default_factory=list)
    ranges: list[str] = field(default_factory=list)
    published: dict[str, bytes] = field(default_factory=dict)  # "e/c/n:tag" -> bytes

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        return app

    async def handle(self, request: web.Request) -> web.StreamResponse:
        path = request.raw_path.partition("?")[0]
        self.log.append((request.method, path))
        if path.startswith("/s3/"):
            return await self.object_store(request, path)
        if path == "/version":
            return web.json_response({"data": {"version": "v1.0.0", "apiVersion": self.api_version}})
        if request.headers.get("Authorization") != f"Bearer {TOKEN}":
            return web.json_response({"error": {"code": 401, "message": "Unauthorized"}}, status=401)
        body = await request.read()
        if body:
            self.json_requests.append(
                {"path": path, "content_type": request.headers.get("Content-Type"), "body": json.loads(body)}
            )
        data = json.loads(body) if body else {}
        return self.library(request, path, data)

    def library(self, request: web.Request, path: str, data: dict[str, Any]) -> web.StreamResponse:
        base = f"http://{request.host}"
        method = request.method
        if path == "/v1/entities/alice":
            return _data({"id": "ent-1"})
        if path == "/v1/collections/alice/tools":
            return _not_found()
        if path == "/v1/collections" and method == "POST":
            return _data({"id": "col-1"})
        if path == "/v1/containers/alice/tools/grep":
            return _data({"id": "con-1"})
        if path.startswith("/v1/images/") and ":sha256." in path:
            image_hash = path.rpartition(":")[2]
            if image_hash not in self.images:
                return _not_found()
            return _data({"id": self.images[image_hash], "uploaded": False})
        if path == "/v1/images" and method == "POST":
            self.images[data["hash"]] = image_id = str(40 + len(self.images))
            return _data({"id": image_id, "hash": data["hash"]})
        if path.startswith("/v2/imagefile/"):
            return self.upload_route(method, path, data, base)
        if path.startswith("/_gateway/uploads/") and path.endswith("/parts"):
            if self.forget_uploads:
                return web.json_response({"error": {"code": 410, "message": "upload expired"}}, status=410)
            listed = [{"partNumber": n, "etag": self.etags[n], "size": len(body)} for n, body in self.parts.items()]
            return _data({"parts": listed})
        if path in ("/v1/tags/con-1", "/v2/tags/con-1"):
            if method == "POST":
                self.tags[data["Tag"]] = data["ImageID"]
            return _data(dict(self.tags))
        if path.startswith("/v1/images/"):
            key = path.removeprefix("/v1/images/")
            if key not in self.published:
                return _not_found()
            content = self.published[key]
            size = len(content) if self.image_size_known else None
            return _data({"id": "9", "hash": f"sha256.{hashlib.sha256(content).hexdigest()}", "size": size})
        if path.startswith("/v1/imagefile/"):
            key = path.removeprefix("/v1/imagefile/")
            if key not in self.published:
                return _not_found()
            if self.serve_directly:
                return web.Response(body=self.published[key])
            self.signatures_issued += 1
            location = f"{base}/s3/object/{key.replace(':', '%3A')}?X-Amz-Signature={self.signatures_issued}"
            raise web.HTTPFound(location)
        return _not_found()

    def upload_route(self, method: str, path: str, data: dict[str, Any], base: str) -> web.StreamResponse:
        image_id, _, action = path.removeprefix("/v2/imagefile/").partition("/")
        if action == "_multipart" and method == "POST":
            if not self.multipart:
                return _not_found()
            total = -(-data["filesize"] // self.part_size)
            return _data(
                {
                    "uploadID": "up-1",
                    "totalParts": total,
                    "partSize": self.part_size,
                    "options": {"s3compliant": "true"},
                }
            )
        if action == "_multipart" and method == "PUT":
            url = f"{base}/s3/part/{data['partNumber']}?sha={data['sha256sum']}&size={data['partSize']}"
            return _data({"presignedURL": url})
        if action == "_multipart_complete":
            tokens = {part["partNumber"]: part["token"] for part in data["completedParts"]}
            assert tokens == self.etags, "complete must name every part with its ETag, quotes included"
            self.objects[image_id] = b"".join(self.parts[n] for n in sorted(self.parts))
            return web.json_response({})
        if action == "_multipart_abort":
            self.aborted.append(data["uploadID"])
            return web.json_response({})
        if action == "" and method == "POST":
            url = f"{base}/s3/legacy/{image_id}?X-Amz-SignedHeaders=host%3Bx-amz-content-sha256&X-Amz-Signature=x"
            return _data({"uploadURL": url})
        if action == "_complete":
            return web.Response(status=200)
        return _not_found()

    async def object_store(self, request: web.Request, path: str) -> web.StreamResponse:
        if request.headers.get("Authorization"):
            return web.Response(status=400, text="presigned requests carry no Authorization")
        if path.startswith("/s3/part/") and request.method == "PUT":
            return await self.put_part(request, int(path.rpartition("/")[2]))
        if path.startswith("/s3/legacy/") and request.method == "PUT":
            self.legacy_headers.append(dict(request.headers))
            self.objects[path.rpartition("/")[2]] = await request.read()
            return web.Response(status=200, headers={"ETag": '"whole"'})
        if path.startswith("/s3/object/") and request.method == "GET":
            return self.get_object(request, path.removeprefix("/s3/object/").replace("%3A", ":"))
        return web.Response(status=404)

    async def put_part(self, request: web.Request, number: int) -> web.Response:
        self.part_puts.append(number)
        assert "Content-Type" not in request.headers and "Transfer-Encoding" not in request.headers
        body = await request.read()
        if number in self.fail_part_once or number in self.fail_part_always:
            self.fail_part_once.discard(number)
            return web.Response(status=500, text="<Error><Code>InternalError</Code></Error>")
        declared = request.headers.get("X-Amz-Content-Sha256")
        if declared != request.query["sha"] or hashlib.sha256(body).hexdigest() != declared:
            return web.Response(status=400, text="<Error><Code>XAmzContentSHA256Mismatch</Code></Error>")
        if len(body) != int(request.query["size"]):
            return web.Response(status=400, text="<Error><Code>IncompleteBody</Code></Error>")
        self.parts[number] = body
        self.etags[number] = f'"{hashlib.md5(body).hexdigest()}"'
        return web.Response(status=200, headers={"ETag": self.etags[number]})

    def get_object(self, request: web.Request, key: str) -> web.Response:
        content = self.published[key]
        if int(request.query["X-Amz-Signature"]) <= self.expired_signatures:
            return web.Response(status=403, text="<Error><Code>AccessDenied</Code></Error>")
        if self.corrupt_downloads:
            content = bytes([content[0] ^ 0xFF]) + content[1:]
        header = request.headers.get("Range")
        if header is None or self.ignore_ranges:
            return web.Response(body=content)
        self.ranges.append(header)
        first, _, last = header.removeprefix("bytes=").partition("-")
        start, end = int(first), min(int(last), len(content) - 1)
        return web.Response(
            status=206, body=content[start : end + 1], headers={"Content-Range": f"bytes {start}-{end}/{len(content)}"}
        )


def _data(value: Any) -> web.Response:
    return web.json_response({"data": value})


def _not_found() -> web.Response:
    return web.json_response({"error": {"code": 404, "message": "Not Found"}}, status=404)


@pytest.fixture
def library() -> FakeLibrary:
    return FakeLibrary()


@pytest.fixture
async def library_url(library: FakeLibrary, aiohttp_server: ServerFactory) -> str:
    server = await aiohttp_server(library.app())
    return str(server.make_url("/"))


@pytest.fixture
def image(tmp_path: Path) -> Path:
    path = tmp_path / "image.sif"
    path.write_bytes(os.urandom(300 * KIB + 123))  # 5 parts of 64 KiB
    return path


def push_options(image: Path, url: str, tmp_path: Path, **changes: Any) -> PushOptions:
    values: dict[str, Any] = dict(
        file=image,
        ref=parse_ref("library://alice/tools/grep:v1,stable"),
        url=url,
        token=TOKEN,
        jobs=3,
        retry=NO_WAIT,
        multipart_min_size=1,
        state_dir=tmp_path / "state",
        progress=None,
        chunk_size=16 * KIB,
    )
    return PushOptions(**(values | changes))


def state_files(tmp_path: Path) -> list[Path]:
    directory = tmp_path / "state"
    return sorted(directory.glob("*.json")) if directory.exists() else []


# -- push ----------------------------------------------------------------------------------------------------


async def test_push_follows_the_real_clients_sequence_with_parts_in_parallel(
    library: FakeLibrary, library_url: str, image: Path, tmp_path: Path
) -> None:
    result = await push(push_options(image, library_url, tmp_path))
    sha = hashlib.sha256(image.read_bytes()).hexdigest()
    assert (result.method, result.parts_total, result.sha256) == ("multipart", 5, sha)
    assert library.objects[result.image_id] == image.read_bytes()
    api_calls = [entry for entry in library.log if not entry[1].startswith("/s3/")]
    assert api_calls[:8] == [
        ("GET", "/v1/entities/alice"),
        ("GET", "/v1/collections/alice/tools"),
        ("POST", "/v1/collections"),
        ("GET", "/v1/containers/alice/tools/grep"),
        ("GET", f"/v1/images/alice/tools/grep:sha256.{sha}"),
        ("POST", "/v1/images"),
        ("GET", "/version"),
        ("POST", "/v2/imagefile/40/_multipart"),
    ]
    assert api_calls[-4:] == [
        ("PUT", "/v2/imagefile/40/_multipart_complete"),
        ("GET", "/v2/tags/con-1"),
        ("POST", "/v2/tags/con-1"),
        ("POST", "/v2/tags/con-1"),
    ]
    assert library.tags == {"v1": "40", "stable": "40"}
    assert all(request["content_type"] is None for request in library.json_requests)
    part_request = next(
        r["body"] for r in library.json_requests if r["path"].endswith("/_multipart") and "partNumber" in r["body"]
    )
    assert list(part_request) == ["partSize", "uploadID", "partNumber", "sha256sum"]
    assert state_files(tmp_path) == []


async def test_a_failed_part_put_is_presigned_and_sent_again_without_an_abort(
    library: FakeLibrary, library_url: str, image: Path, tmp_path: Path
) -> None:
    library.fail_part_once = {3}
    notes = io.StringIO()
    result = await push(push_options(image, library_url, tmp_path, progress=notes))
    assert sorted(library.part_puts) == [1, 2, 3, 3, 4, 5]
    presigns = [r["body"]["partNumber"] for r in library.json_requests if "partNumber" in r["body"]]
    assert sorted(presigns) == [1, 2, 3, 3, 4, 5]
    assert library.aborted == []
    assert library.objects[result.image_id] == image.read_bytes()
    assert "part 3: object store returned an error: 500 (InternalError); retrying" in notes.getvalue()


async def test_a_part_that_keeps_failing_aborts_the_upload_and_forgets_the_state(
    library: FakeLibrary, library_url: str, image: Path, tmp_path: Path
) -> None:
    library.fail_part_always = {2}
    with pytest.raises(ObjectStoreError) as failure:
        await push(push_options(image, library_url, tmp_path, jobs=1))
    assert failure.value.exit_code == 1
    assert library.part_puts.count(2) == NO_WAIT.attempts
    assert library.aborted == ["up-1"]
    assert state_files(tmp_path) == []


class Interrupted(Exception):
    pass


def interrupt_after(part_count: int) -> PushHooks:
    def after_part(done: PartUploaded) -> None:
        if done.parts_done == part_count:
            raise Interrupted(f"stopped after {part_count} parts")

    return PushHooks(after_part=after_part)


async def test_an_interrupted_push_resumes_with_only_the_missing_parts(
    library: FakeLibrary, library_url: str, image: Path, tmp_path: Path
) -> None:
    with pytest.raises(Interrupted):
        await push(push_options(image, library_url, tmp_path, jobs=1), hooks=interrupt_after(2))
    assert library.aborted == [] and len(state_files(tmp_path)) == 1
    assert library.part_puts == [1, 2]
    library.log.clear()

    result: PushResult = await push(push_options(image, library_url, tmp_path, resume=True))
    assert (result.resumed, result.parts_reused, result.parts_uploaded) == (True, 2, 3)
    assert result.bytes_uploaded == image.stat().st_size - 2 * 64 * KIB
    assert sorted(library.part_puts) == [1, 2, 3, 4, 5]
    assert library.objects[result.image_id] == image.read_bytes()
    assert ("GET", "/_gateway/uploads/up-1/parts") in library.log
    assert not any(path.startswith("/v1/entities") for _, path in library.log), "resume skips the resolve steps"
    assert library.tags == {"v1": result.image_id, "stable": result.image_id}
    assert state_files(tmp_path) == []


async def test_an_interruption_with_parts_in_flight_resumes_to_the_exact_file(
    library: FakeLibrary, library_url: str, image: Path, tmp_path: Path
) -> None:
    with pytest.raises(Interrupted):
        await push(push_options(image, library_url, tmp_path, jobs=3), hooks=interrupt_after(2))
    result = await push(push_options(image, library_url, tmp_path, jobs=3, resume=True))
    assert result.resumed and result.parts_reused >= 2
    assert library.objects[result.image_id] == image.read_bytes()


async def test_a_file_that_shrinks_during_the_push_is_an_integrity_error_and_the_upload_is_aborted(
    library: FakeLibrary, library_url: str, image: Path, tmp_path: Path
) -> None:
    def truncate(state: UploadState) -> None:
        with image.open("r+b") as file:
            file.truncate(100 * KIB)

    with pytest.raises(IntegrityError, match="shorter than expected") as failure:
        await push(push_options(image, library_url, tmp_path, jobs=2), hooks=PushHooks(after_start=truncate))
    assert failure.value.exit_code == EXIT_INTEGRITY
    assert library.aborted == ["up-1"] and state_files(tmp_path) == []


async def test_resume_starts_over_when_the_gateway_no_longer_knows_the_upload(
    library: FakeLibrary, library_url: str, image: Path, tmp_path: Path
) -> None:
    with pytest.raises(Interrupted):
        await push(push_options(image, library_url, tmp_path, jobs=1), hooks=interrupt_after(1))
    library.forget_uploads = True
    library.parts.clear()
    library.etags.clear()
    notes = io.StringIO()
    result = await push(push_options(image, library_url, tmp_path, resume=True, progress=notes))
    assert (result.resumed, result.parts_uploaded) == (False, 5)
    assert "cannot resume the saved upload (upload expired): starting over" in notes.getvalue()
    assert library.objects[result.image_id] == image.read_bytes()


async def test_resume_of_a_changed_file_starts_a_new_push(
    library: FakeLibrary, library_url: str, image: Path, tmp_path: Path
) -> None:
    with pytest.raises(Interrupted):
        await push(push_options(image, library_url, tmp_path, jobs=1), hooks=interrupt_after(1))
    image.write_bytes(os.urandom(200 * KIB))
    library.parts.clear()
    library.etags.clear()
    result = await push(push_options(image, library_url, tmp_path, resume=True))
    assert not result.resumed
    assert library.objects[result.image_id] == image.read_bytes()


async def test_start_answering_404_falls_back_to_the_legacy_single_put(
    library: FakeLibrary, library_url: str, image: Path, tmp_path: Path
) -> None:
    library.multipart = False
    result = await push(push_options(image, library_url, tmp_path))
    assert result.method == "legacy"
    assert library.objects[result.image_id] == image.read_bytes()
    headers = library.legacy_headers[0]
    assert headers["Content-Type"] == "application/octet-stream"
    assert headers["X-Amz-Content-Sha256"] == result.sha256  # the URL signs it
    assert headers["Content-Length"] == str(image.stat().st_size)
    legacy_body = next(r["body"] for r in library.json_requests if r["path"] == f"/v2/imagefile/{result.image_id}")
    assert legacy_body == {"filesize": image.stat().st_size, "sha256sum": result.sha256}
    assert ("PUT", f"/v2/imagefile/{result.image_id}/_complete") in library.log


async def test_a_small_file_goes_up_in_one_legacy_put_with_its_md5(
    library: FakeLibrary, library_url: str, tmp_path: Path
) -> None:
    small = tmp_path / "small.sif"
    small.write_bytes(b"tiny image")
    result = await push(push_options(small, library_url, tmp_path, multipart_min_size=1024))
    assert result.method == "legacy" and not any(path.endswith("/_multipart") for _, path in library.log)
    legacy_body = next(r["body"] for r in library.json_requests if r["path"] == f"/v2/imagefile/{result.image_id}")
    assert legacy_body["md5sum"] == hashlib.md5(b"tiny image").hexdigest()


async def test_v1_tags_are_used_when_the_api_version_predates_arch_tags(
    library: FakeLibrary, library_url: str, image: Path, tmp_path: Path
) -> None:
    library.api_version = "2.0.0-alpha.1"
    await push(push_options(image, library_url, tmp_path))
    tag_bodies = [r["body"] for r in library.json_requests if r["path"] == "/v1/tags/con-1"]
    assert tag_bodies == [{"Tag": "v1", "ImageID": "40"}, {"Tag": "stable", "ImageID": "40"}]


async def test_a_refused_token_is_an_auth_error_carrying_the_servers_message(
    library_url: str, image: Path, tmp_path: Path
) -> None:
    with pytest.raises(AuthRefused, match="Unauthorized") as failure:
        await push(push_options(image, library_url, tmp_path, token="wrong"))
    assert failure.value.exit_code == EXIT_AUTH and failure.value.message == "Unauthorized"


# -- pull ----------------------------------------------------------------------------------------------------


def pull_options(destination: Path, url: str, **changes: Any) -> PullOptions:
    values: dict[str, Any] = dict(
        ref=parse_ref("library://alice/tools/grep:v1", single_tag=True),
        destination=destination,
        url=url,
        token=TOKEN,
        jobs=3,
        part_size=64 * KIB,
        retry=NO_WAIT,
        progress=None,
        chunk_size=16 * KIB,
    )
    return PullOptions(**(values | changes))


async def test_pull_fetches_parallel_ranges_and_verifies_the_hash(
    library: FakeLibrary, library_url: str, tmp_path: Path
) -> None:
    content = os.urandom(300 * KIB + 7)
    library.published["alice/tools/grep:v1"] = content
    result = await pull(pull_options(tmp_path / "out.sif", library_url))
    assert (tmp_path / "out.sif").read_bytes() == content
    assert (result.method, result.parts) == ("ranged", 5)
    assert len(library.ranges) == 5 and "bytes=262144-307206" in library.ranges
    assert [path.name for path in tmp_path.iterdir()] == ["out.sif"]


async def test_pull_probes_the_size_when_the_library_does_not_know_it(
    library: FakeLibrary, library_url: str, tmp_path: Path
) -> None:
    library.image_size_known = False
    content = os.urandom(100 * KIB)
    library.published["alice/tools/grep:v1"] = content
    result = await pull(pull_options(tmp_path / "out.sif", library_url))
    assert library.ranges[0] == "bytes=0-0" and result.size == len(content)
    assert (tmp_path / "out.sif").read_bytes() == content


async def test_pull_streams_an_image_the_registry_serves_itself(
    library: FakeLibrary, library_url: str, tmp_path: Path
) -> None:
    library.serve_directly = True
    content = os.urandom(100 * KIB)
    library.published["alice/tools/grep:v1"] = content
    result = await pull(pull_options(tmp_path / "out.sif", library_url))
    assert result.method == "stream" and (tmp_path / "out.sif").read_bytes() == content


async def test_pull_reads_one_stream_when_the_object_store_ignores_ranges(
    library: FakeLibrary, library_url: str, tmp_path: Path
) -> None:
    library.ignore_ranges = True
    content = os.urandom(200 * KIB)
    library.published["alice/tools/grep:v1"] = content
    result = await pull(pull_options(tmp_path / "out.sif", library_url))
    assert result.method == "stream" and (tmp_path / "out.sif").read_bytes() == content


async def test_an_expired_download_url_is_fetched_anew_from_the_registry(
    library: FakeLibrary, library_url: str, tmp_path: Path
) -> None:
    library.expired_signatures = 1
    content = os.urandom(200 * KIB)
    library.published["alice/tools/grep:v1"] = content
    await pull(pull_options(tmp_path / "out.sif", library_url))
    assert (tmp_path / "out.sif").read_bytes() == content
    assert library.log.count(("GET", "/v1/imagefile/alice/tools/grep:v1")) == 2


async def test_a_corrupted_download_is_detected_and_no_file_is_left_behind(
    library: FakeLibrary, library_url: str, tmp_path: Path
) -> None:
    library.published["alice/tools/grep:v1"] = os.urandom(200 * KIB)
    library.corrupt_downloads = True
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    with pytest.raises(IntegrityError, match="does not match its hash") as failure:
        await pull(pull_options(downloads / "out.sif", library_url))
    assert failure.value.exit_code == EXIT_INTEGRITY
    assert list(downloads.iterdir()) == []


async def test_pulling_a_missing_tag_is_not_found(library_url: str, tmp_path: Path) -> None:
    with pytest.raises(NotFound) as failure:
        await pull(pull_options(tmp_path / "out.sif", library_url))
    assert failure.value.exit_code == EXIT_NOT_FOUND
    assert list(tmp_path.iterdir()) == []


async def test_pull_refuses_to_replace_an_existing_file_without_force(
    library: FakeLibrary, library_url: str, tmp_path: Path
) -> None:
    library.published["alice/tools/grep:v1"] = b"new image"
    existing = tmp_path / "out.sif"
    existing.write_bytes(b"old")
    with pytest.raises(UsageError, match="--force"):
        await pull(pull_options(existing, library_url))
    await pull(pull_options(existing, library_url, force=True))
    assert existing.read_bytes() == b"new image"


# -- command line --------------------------------------------------------------------------------------------


def parse_cli(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="signing-gateway")
    cli.add_commands(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


def test_cli_registers_push_and_pull_with_their_options(tmp_path: Path) -> None:
    args = parse_cli(
        [
            "push",
            str(tmp_path / "a.sif"),
            "library://alice/tools/grep:v1",
            "--jobs",
            "8",
            "--resume",
            "--quiet",
            "--token",
            "t",
            "--url",
            "http://127.0.0.1:9",
            "--arch",
            "arm64",
        ]
    )
    assert (args.client_command, args.jobs, args.resume, args.quiet, args.arch) == ("push", 8, True, True, "arm64")
    args = parse_cli(["pull", "library://alice/tools/grep", str(tmp_path / "b.sif"), "--part-size", "32"])
    assert (args.client_command, args.part_size, args.jobs) == ("pull", 32 * 1024 * 1024, 4)


def test_cli_usage_errors_exit_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv(ENV_TOKEN, raising=False)
    monkeypatch.setenv("APPTAINER_CONFIGDIR", str(tmp_path / "no-apptainer"))
    bad_ref = parse_cli(["pull", "library://only/two", str(tmp_path / "x.sif"), "--url", "http://127.0.0.1:9"])
    assert cli.run(bad_ref) == EXIT_USAGE
    no_token = parse_cli(["push", str(tmp_path / "a.sif"), "library://alice/tools/grep", "--url", "http://127.0.0.1:9"])
    assert cli.run(no_token) == EXIT_USAGE
    assert "pushing needs a token" in capsys.readouterr().err
