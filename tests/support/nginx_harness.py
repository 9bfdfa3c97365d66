"""The production nginx config (deploy/nginx/templates), rendered and run unprivileged on loopback for tests.

Plain Python (no pytest), so fixtures, end-to-end tests and manual runs share it:

    nginx = render_and_start_nginx(tmp_dir, gateway_servers=["127.0.0.1:8081", "127.0.0.1:8082"],
                                   minio_upstream="127.0.0.1:9000", listen_port=free_port(),
                                   minio_listen_port=free_port())
    try:
        ...  # nginx.url, nginx.minio_url (and nginx.ca_file with tls=True)
    finally:
        nginx.stop()

The templates are rendered by deploy/nginx/render.sh (the official image's envsubst step) into
``tmp_dir/conf.d``, next to a test-only main ``nginx.conf`` that keeps pid, logs and temp files in ``tmp_dir``,
runs in the foreground as the current user and includes ``conf.d/*.conf`` inside ``http {}`` as the official
image's nginx.conf does. Needs ``nginx``, ``envsubst`` (gettext-base) and, for TLS, ``openssl`` on PATH.
"""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.support.processes import LOOPBACK

__all__ = [
    "NginxProcess",
    "NginxStartError",
    "TLSFiles",
    "make_self_signed_certificate",
    "render_and_start_nginx",
    "render_templates",
]

REPO = Path(__file__).resolve().parents[2]
TEMPLATES = REPO / "deploy" / "nginx" / "templates"
RENDER_SCRIPT = REPO / "deploy" / "nginx" / "render.sh"
READY_TIMEOUT_S = 15.0
STOP_TIMEOUT_S = 10.0
COMMAND_TIMEOUT_S = 30.0
POLL_INTERVAL_S = 0.05
TEMP_PATHS = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")


class NginxStartError(RuntimeError):
    """nginx refused the config or did not come up; the message carries its output and error log."""


@dataclass(frozen=True, slots=True)
class TLSFiles:
    certificate: Path
    key: Path


@dataclass(slots=True)
class NginxProcess:
    process: subprocess.Popen[bytes]
    prefix: Path
    scheme: str
    listen_port: int
    minio_listen_port: int
    ca_file: Path | None

    @property
    def url(self) -> str:
        """The registry's public server (the gateway replicas behind it)."""
        return f"{self.scheme}://{LOOPBACK}:{self.listen_port}"

    @property
    def minio_url(self) -> str:
        """MinIO's public server."""
        return f"{self.scheme}://{LOOPBACK}:{self.minio_listen_port}"

    @property
    def error_log(self) -> Path:
        return self.prefix / "logs" / "error.log"

    def error_log_text(self) -> str:
        return self.error_log.read_text(encoding="utf-8", errors="replace") if self.error_log.exists() else ""

    def stop(self) -> None:
        stop_nginx(self.process)


def stop_nginx(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the master (it stops its workers), then SIGKILL to its whole process group (started with
    ``start_new_session``): workers left by a master that died or lingers."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    if process.poll() is None:
        process.wait(timeout=STOP_TIMEOUT_S)


def user_directive() -> str:
    """nginx's ``user`` line for this user when running as root (else nginx would switch its workers to "nobody",
    who cannot write the temp directories); empty otherwise."""
    if os.geteuid() != 0:
        return ""
    return f"user {pwd.getpwuid(os.getuid()).pw_name} {grp.getgrgid(os.getgid()).gr_name};\n"


def make_self_signed_certificate(directory: Path, *, names: Sequence[str] = ("localhost",)) -> TLSFiles:
    """A P-256 certificate for ``names`` and 127.0.0.1, valid two days, made by the openssl CLI."""
    if shutil.which("openssl") is None:
        raise NginxStartError("openssl not found (Debian: apt-get install openssl)")
    directory.mkdir(parents=True, exist_ok=True)
    files = TLSFiles(directory / "server.crt", directory / "server.key")
    alt_names = ",".join([*(f"DNS:{name}" for name in names), f"IP:{LOOPBACK}"])
    command = [
        "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-days", "2", "-subj", f"/CN={names[0]}", "-addext", f"subjectAltName={alt_names}",
        "-keyout", str(files.key), "-out", str(files.certificate),
    ]  # fmt: skip
    _run(command, what="openssl req")
    return files


def render_and_start_nginx(
    tmp_dir: Path,
    *,
    gateway_servers: Sequence[str],
    minio_upstream: str,
    listen_port: int,
    minio_listen_port: int,
    tls: bool = False,
    tls_files: TLSFiles | None = None,
    internal_networks: Sequence[str] = (LOOPBACK,),
    server_name: str = "registry.localtest",
    minio_server_name: str = "s3.localtest",
) -> NginxProcess:
    """Render the templates for loopback, check them with ``nginx -t``, start nginx and wait until it listens.

    ``gateway_servers``: ``host:port`` of each gateway replica. ``internal_networks``: addresses or CIDR
    networks allowed to reach ``/_gateway/``. ``tls``: serve HTTPS with ``tls_files`` (default: a fresh
    self-signed certificate in ``tmp_dir``, exposed as ``NginxProcess.ca_file``).
    """
    prefix = Path(tmp_dir)
    for directory in ("logs", "temp"):
        (prefix / directory).mkdir(parents=True, exist_ok=True)
    if tls and tls_files is None:
        tls_files = make_self_signed_certificate(prefix / "tls")
    variables = {
        "SCHEME": "https" if tls else "http",
        "LISTEN": f"{LOOPBACK}:{listen_port}",
        "SERVER_NAME": server_name,
        "MINIO_LISTEN": f"{LOOPBACK}:{minio_listen_port}",
        "MINIO_SERVER_NAME": minio_server_name,
        "GATEWAY_SERVERS": " ".join(f"server {server};" for server in gateway_servers),
        "MINIO_UPSTREAM": minio_upstream,
        "INTERNAL_ALLOW": " ".join(f"allow {network};" for network in internal_networks),
    }
    if tls_files is not None:
        for name in ("SSL_CERTIFICATE", "MINIO_SSL_CERTIFICATE"):
            variables[name] = str(tls_files.certificate)
        for name in ("SSL_CERTIFICATE_KEY", "MINIO_SSL_CERTIFICATE_KEY"):
            variables[name] = str(tls_files.key)
    render_templates(prefix / "conf.d", variables)
    main_config = prefix / "nginx.conf"
    main_config.write_text(_main_config(prefix), encoding="utf-8")
    command = ["nginx", "-p", str(prefix), "-c", str(main_config)]
    _run([*command, "-t", "-q"], what="nginx -t", log=prefix / "logs" / "error.log")
    process = subprocess.Popen(
        command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    nginx = NginxProcess(
        process,
        prefix,
        variables["SCHEME"],
        listen_port,
        minio_listen_port,
        tls_files.certificate if tls_files else None,
    )
    try:
        _wait_listening(nginx)
    except BaseException:
        nginx.stop()
        raise
    return nginx


def render_templates(output_dir: Path, variables: Mapping[str, str]) -> None:
    """deploy/nginx/render.sh with exactly ``variables`` (and PATH) in its environment."""
    environment = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **variables}
    _run(["sh", str(RENDER_SCRIPT), str(output_dir), str(TEMPLATES)], what="render.sh", env=environment)


def _main_config(prefix: Path) -> str:
    temp_paths = "".join(f"    {kind}_temp_path {prefix}/temp/{kind};\n" for kind in TEMP_PATHS)
    return (
        f"{user_directive()}"
        "daemon off;\n"
        "worker_processes 1;\n"
        f"pid {prefix}/nginx.pid;\n"
        # warn: nginx reports a request or response body spooled to a temporary file at this level.
        f"error_log {prefix}/logs/error.log warn;\n"
        "events { worker_connections 256; }\n"
        "http {\n"
        f"    access_log {prefix}/logs/access.log;\n"
        f"{temp_paths}"
        "    include conf.d/*.conf;\n"
        "}\n"
    )


def _wait_listening(nginx: NginxProcess) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    pending = {nginx.listen_port, nginx.minio_listen_port}
    while pending:
        if nginx.process.poll() is not None:
            raise NginxStartError(f"nginx exited with {nginx.process.returncode}:\n{nginx.error_log_text()}")
        if time.monotonic() > deadline:
            raise NginxStartError(f"nginx not listening on {sorted(pending)} after {READY_TIMEOUT_S} s")
        for port in list(pending):
            try:
                socket.create_connection((LOOPBACK, port), timeout=1.0).close()
                pending.discard(port)
            except OSError:
                pass
        if pending:
            time.sleep(POLL_INTERVAL_S)


def _run(command: Sequence[str], *, what: str, env: Mapping[str, str] | None = None, log: Path | None = None) -> None:
    try:
        result = subprocess.run(
            command, capture_output=True, text=True, env=env, timeout=COMMAND_TIMEOUT_S, check=False
        )
    except FileNotFoundError as exc:
        raise NginxStartError(f"{what}: {exc.filename} not found") from None
    if result.returncode != 0:
        log_text = log.read_text(encoding="utf-8", errors="replace") if log and log.exists() else ""
        raise NginxStartError(f"{what} failed ({result.returncode}):\n{result.stdout}{result.stderr}{log_text}")
