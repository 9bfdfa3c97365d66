"""Where the token and the registry URL come from.

Token: ``--token``, else ``$SIGNING_GATEWAY_TOKEN``, else the ``Token`` of Apptainer's active remote
(``$APPTAINER_CONFIGDIR/remote.yaml``, default ``~/.apptainer/remote.yaml``) when the URL belongs to that remote.
URL: ``--url``, else the host named in the reference (``library://host/e/c/n`` ⇒ ``https://host``), else
``$SIGNING_GATEWAY_URL``, else the active remote's library URL (``libraryAPI.uri`` from
``https://<URI>/assets/config/config.prod.json``, as Apptainer discovers it).

remote.yaml is written by Go's YAML encoder; the few fields needed are read with a small block-mapping parser
(no PyYAML): ``Active``, ``Remotes.<name>.URI``, ``.Token``, ``.Insecure``.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

import aiohttp

from .defaults import ENV_TOKEN, ENV_URL
from .errors import TransportError, UsageError

__all__ = [
    "ENV_TOKEN",
    "ENV_URL",
    "Endpoint",
    "RemoteEndpoint",
    "discover_library_url",
    "load_remote",
    "parse_simple_yaml",
    "resolve_endpoint",
]

DISCOVERY_PATH: Final = "assets/config/config.prod.json"
SYSTEM_REMOTE_FILES: Final = (Path("/etc/apptainer/remote.yaml"), Path("/usr/local/etc/apptainer/remote.yaml"))


@dataclass(frozen=True, slots=True)
class RemoteEndpoint:
    """Apptainer's active remote."""

    name: str
    uri: str
    token: str | None
    insecure: bool = False

    @property
    def base_url(self) -> str:
        if "://" in self.uri:
            return self.uri.rstrip("/")
        return f"{'http' if self.insecure else 'https'}://{self.uri.rstrip('/')}"


@dataclass(frozen=True, slots=True)
class Endpoint:
    """The resolved registry URL (None: discover it from ``remote``) and token, with where each came from."""

    url: str | None
    url_source: str
    token: str | None
    token_source: str
    remote: RemoteEndpoint | None = None


# -- remote.yaml ---------------------------------------------------------------------------------------------


def parse_simple_yaml(text: str) -> dict[str, Any]:
    """Block mappings of scalars, as Go's encoder writes them; sequences are skipped (not needed here)."""
    root: dict[str, Any] = {}
    stack: list[tuple[int, dict[str, Any]]] = [(-1, root)]
    skipping_below: int | None = None
    for number, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        if not stripped or stripped.startswith("#") or stripped in ("---", "..."):
            continue
        indent = len(raw) - len(raw.lstrip(" "))
        if skipping_below is not None:
            if indent > skipping_below or (indent == skipping_below and stripped.startswith("-")):
                continue
            skipping_below = None
        while indent <= stack[-1][0]:
            stack.pop()
        if stripped.startswith("-"):
            skipping_below = indent  # a sequence (Credentials, Keyservers): not needed
            continue
        key, separator, rest = stripped.partition(":")
        if not separator or (rest and not rest[0].isspace()):
            raise ValueError(f"line {number}: expected 'key: value'")
        name = str(_scalar(key.strip()))
        value = rest.strip()
        parent = stack[-1][1]
        if value:
            parent[name] = _scalar(value)
        else:
            child: dict[str, Any] = {}
            parent[name] = child
            stack.append((indent, child))
    return root


_DOUBLE_QUOTED = re.compile(r'"(?:[^"\\]|\\.)*"')
_SINGLE_QUOTED = re.compile(r"'(?:[^']|'')*'")


def _scalar(text: str) -> Any:
    """A quoted or plain scalar, a trailing ``# comment`` dropped; only booleans and null are not strings."""
    if text[:1] in ('"', "'"):
        match = (_DOUBLE_QUOTED if text[0] == '"' else _SINGLE_QUOTED).match(text)
        if match is None:
            raise ValueError(f"unterminated quoted value: {text}")
        rest = text[match.end() :].strip()
        if rest and not rest.startswith("#"):
            raise ValueError(f"unexpected text after a quoted value: {text}")
        quoted = match.group()
        if quoted[0] == "'":
            return quoted[1:-1].replace("''", "'")
        return json.loads(quoted)  # Go's double-quoted escapes are JSON's
    plain = text.split(" #", 1)[0].rstrip()
    lowered = plain.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("null", "~"):
        return None
    return plain


def apptainer_remote_file(environ: Mapping[str, str]) -> Path:
    directory = environ.get("APPTAINER_CONFIGDIR") or str(Path(environ.get("HOME") or Path.home()) / ".apptainer")
    return Path(directory) / "remote.yaml"


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        return parse_simple_yaml(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read Apptainer remote config {path}: {exc}") from None


def _remotes(config: Mapping[str, Any]) -> Mapping[str, Any]:
    remotes = config.get("Remotes")
    return remotes if isinstance(remotes, dict) else {}


def load_remote(
    environ: Mapping[str, str] = os.environ, *, system_files: Sequence[Path] = SYSTEM_REMOTE_FILES
) -> RemoteEndpoint | None:
    """The active remote: the user's file first, the system's for what the user's lacks (as Apptainer syncs them).

    Tokens are only ever read from the user's file.
    """
    user = _read_yaml(apptainer_remote_file(environ))
    system: dict[str, Any] = {}
    for path in system_files:
        system = _read_yaml(path)
        if system:
            break
    active = user.get("Active") or system.get("Active")
    if not isinstance(active, str) or not active:
        return None
    entry = _remotes(user).get(active) or _remotes(system).get(active)
    if not isinstance(entry, dict) or not isinstance(entry.get("URI"), str) or not entry["URI"]:
        return None
    user_entry = _remotes(user).get(active)
    token = user_entry.get("Token") if isinstance(user_entry, dict) else None
    return RemoteEndpoint(
        name=active,
        uri=entry["URI"],
        token=token if isinstance(token, str) and token else None,
        insecure=entry.get("Insecure") is True,
    )


# -- resolution ----------------------------------------------------------------------------------------------


def _hostname(url: str) -> str:
    try:
        return (urlsplit(url if "://" in url else f"https://{url}").hostname or "").lower()
    except ValueError:
        return ""


def resolve_endpoint(
    *,
    cli_url: str | None,
    cli_token: str | None,
    ref_host: str = "",
    environ: Mapping[str, str] = os.environ,
    remote: RemoteEndpoint | None = None,
) -> Endpoint:
    """Pick URL and token by the documented precedence; ``remote`` is the active Apptainer remote, if any."""
    url: str | None
    if cli_url:
        url, url_source = cli_url, "--url"
    elif ref_host:
        url, url_source = f"https://{ref_host}", "the reference's host"
    elif environ.get(ENV_URL):
        url, url_source = environ[ENV_URL], ENV_URL
    elif remote is not None:
        url, url_source = None, f"Apptainer remote {remote.name}"
    else:
        raise UsageError(f"no registry URL: pass --url, set {ENV_URL}, or configure an Apptainer remote")
    if url is not None and urlsplit(url).scheme not in ("http", "https"):
        raise UsageError(f"registry URL must start with http:// or https://: {url}")

    if cli_token:
        return Endpoint(url, url_source, cli_token, "--token", remote)
    if environ.get(ENV_TOKEN):
        return Endpoint(url, url_source, environ[ENV_TOKEN], ENV_TOKEN, remote)
    # Apptainer sends a remote's token only to that remote; so do we.
    if remote is not None and remote.token and (url is None or _hostname(url) == _hostname(remote.base_url)):
        return Endpoint(url, url_source, remote.token, f"Apptainer remote {remote.name}", remote)
    return Endpoint(url, url_source, None, "none", remote)


async def discover_library_url(session: aiohttp.ClientSession, remote: RemoteEndpoint) -> str:
    """``libraryAPI.uri`` of the remote's discovery document (the gateway rewrites it to itself)."""
    address = f"{remote.base_url}/{DISCOVERY_PATH}"
    try:
        async with session.get(address, allow_redirects=True) as response:
            body = await response.read()
            status = response.status
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise TransportError(f"cannot reach Apptainer remote {remote.name} at {address}: {exc}") from None
    if status != 200:
        raise UsageError(f"Apptainer remote {remote.name}: {address} answered {status}; pass --url")
    try:
        document = json.loads(body)  # served as text/html by sregistry: parse whatever arrives
    except ValueError:
        raise UsageError(f"Apptainer remote {remote.name}: {address} is not JSON; pass --url") from None
    library = document.get("libraryAPI") if isinstance(document, dict) else None
    uri = library.get("uri") if isinstance(library, dict) else None
    if not isinstance(uri, str) or not uri:
        return remote.base_url
    return uri if "://" in uri else f"{'http' if remote.insecure else 'https'}://{uri}"
