"""Configuration: a TOML file overlaid with ``GATEWAY_<SECTION>_<KEY>`` environment variables.

Validated eagerly into frozen dataclasses; anything wrong raises :class:`ConfigError` naming the key, and the CLI
exits 2 with that one line. Nothing downstream re-checks the config. The key names are a public contract.
"""

from __future__ import annotations

import dataclasses
import functools
import ipaddress
import math
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, get_args, get_origin, get_type_hints
from urllib.parse import urlsplit

from .plan import MAX_PART_SIZE, MIN_PART_SIZE
from .sigv4 import MAX_EXPIRES_S, Endpoint, origin_of

__all__ = [
    "DEFAULT_DOWNLOAD_EXPIRY_S",
    "DEFAULT_IMAGE_ID_PATTERN",
    "Config",
    "ConfigError",
    "DownloadsConfig",
    "S3Config",
    "ServerConfig",
    "UploadsConfig",
    "UpstreamConfig",
    "config_warnings",
    "load_config",
    "masked",
]

MIB = 1024 * 1024
ENV_PREFIX = "GATEWAY_"
# sregistry's ids: SQLite/PostgreSQL integer keys from 1; up to 18 digits always fits a signed 64-bit INTEGER.
DEFAULT_IMAGE_ID_PATTERN = "[1-9][0-9]{0,17}"
# Download redirects must outlive a whole pull: clients take every ranged GET from the one URL they were given, do
# not check each answer's status, and S3 checks expiry when each GET arrives (docs/protocol.md §7.1). Sized for the
# largest image pulled over a slow link, rounded up to whole hours: 64 GiB at 10 Mbit/s is 54,976 s, so 16 h.
LARGEST_PULL_BYTES = 64 * 1024 * MIB
SLOW_LINK_BYTES_PER_S = 10_000_000 // 8
DEFAULT_DOWNLOAD_EXPIRY_S = -(-LARGEST_PULL_BYTES // (SLOW_LINK_BYTES_PER_S * 3600)) * 3600
SECRET_KEYS = frozenset({"s3.secret_key", "uploads.token_secret", "uploads.previous_token_secrets"})
# A token secret's estimated entropy (secret_bits) must reach this. 16 random hex characters estimate 32 bits or
# more but about once in 10^9 draws (16 random digits: once in 2·10^5); "abab…", "passwordpassword",
# "changeme-changeme-…" or "aaa…ab" estimate 2 to 27.
MIN_SECRET_BITS = 32.0


class ConfigError(Exception):
    """One line: ``<section>.<key>: <what is wrong>``."""


@dataclass(frozen=True, slots=True)
class ServerConfig:
    listen: str = "127.0.0.1:8080"
    public_url: str = "http://127.0.0.1:8080"
    log_level: str = "info"
    shutdown_grace_seconds: float = 30.0
    keepalive_seconds: float = 75.0
    header_timeout_seconds: float = 20.0
    client_write_timeout_seconds: float = 60.0
    max_connections: int = 1000
    trusted_proxies: list[str] = field(default_factory=list)
    workers: int = 1
    event_loop: Literal["auto", "asyncio", "uvloop"] = "auto"

    @property
    def host(self) -> str:
        return self.listen.rpartition(":")[0].strip("[]")

    @property
    def port(self) -> int:
        return int(self.listen.rpartition(":")[2])


@dataclass(frozen=True, slots=True)
class UpstreamConfig:
    url: str = "http://127.0.0.1:8000"
    connect_timeout_seconds: float = 10.0
    read_timeout_seconds: float = 300.0
    first_byte_timeout_seconds: float = 300.0
    pool_size: int = 100
    keepalive_seconds: float = 15.0
    forward_host: Literal["upstream", "client"] = "client"


@dataclass(frozen=True, slots=True)
class S3Config:
    internal_endpoint: str = "http://127.0.0.1:9000"
    external_endpoint: str = "http://127.0.0.1:9000"
    aliases: list[str] = field(default_factory=list)
    region: str = "us-east-1"
    access_key: str = ""
    secret_key: str = ""
    bucket: str = "sregistry"
    verify_tls: bool = True
    ca_bundle: str = ""
    connect_timeout_seconds: float = 10.0
    read_timeout_seconds: float = 60.0


@dataclass(frozen=True, slots=True)
class UploadsConfig:
    multipart: bool = True
    mode: Literal["auto", "adopt", "relay"] = "auto"
    part_size: int = 64 * MIB
    url_expiry_seconds: int = 900
    token_ttl_seconds: int = 86400
    token_secret: str = ""
    previous_token_secrets: list[str] = field(default_factory=list)
    staging_prefix: str = "_gateway/"
    sweep_interval_seconds: float = 0.0
    sweep_grace_seconds: int = 3600
    image_id_pattern: str = DEFAULT_IMAGE_ID_PATTERN


@dataclass(frozen=True, slots=True)
class DownloadsConfig:
    url_expiry_seconds: int = DEFAULT_DOWNLOAD_EXPIRY_S
    redirect_status: Literal["keep", "303"] = "303"


@dataclass(frozen=True, slots=True)
class Config:
    server: ServerConfig = field(default_factory=ServerConfig)
    upstream: UpstreamConfig = field(default_factory=UpstreamConfig)
    s3: S3Config = field(default_factory=S3Config)
    uploads: UploadsConfig = field(default_factory=UploadsConfig)
    downloads: DownloadsConfig = field(default_factory=DownloadsConfig)

    @property
    def external_endpoint(self) -> Endpoint:
        return _endpoint(self.s3.external_endpoint)

    @property
    def internal_endpoint(self) -> Endpoint:
        return _endpoint(self.s3.internal_endpoint)

    def s3_origins(self) -> frozenset[Endpoint]:
        """Every origin under which an upstream URL points into our S3 (adopt mode, re-signing)."""
        urls = [self.s3.internal_endpoint, self.s3.external_endpoint, *self.s3.aliases]
        return frozenset(_endpoint(url) for url in urls)


@functools.lru_cache(maxsize=64)
def _endpoint(url: str) -> Endpoint:
    """An endpoint URL parsed once: validated at load, read on every use."""
    return Endpoint.parse(url)


_SECTIONS: dict[str, type[Any]] = {f.name: get_type_hints(Config)[f.name] for f in fields(Config)}


def load_config(path: str | os.PathLike[str] | None, environ: Mapping[str, str] | None = None) -> Config:
    """Read ``path`` (optional), overlay the environment, validate. Raises :class:`ConfigError`."""
    raw: dict[str, Any] = {}
    if path is not None:
        try:
            raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"config file {path}: {exc.strerror or exc}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path}: invalid TOML: {exc}") from exc
    sections: dict[str, dict[str, Any]] = {}
    for name, value in raw.items():
        if name not in _SECTIONS:
            raise ConfigError(f"{name}: unknown section (known: {', '.join(_SECTIONS)})")
        if not isinstance(value, dict):
            raise ConfigError(f"{name}: expected a [{name}] table")
        sections[name] = dict(value)
    for name, key, text in _environment_overrides(os.environ if environ is None else environ):
        sections.setdefault(name, {})[key] = _from_env_text(name, key, text)
    config = Config(**{name: _build_section(name, sections.get(name, {})) for name in _SECTIONS})
    _validate(config)
    return config


def _section_hints(name: str) -> dict[str, Any]:
    return get_type_hints(_SECTIONS[name])


def _environment_overrides(environ: Mapping[str, str]) -> list[tuple[str, str, str]]:
    found = []
    for var, text in environ.items():
        if not var.startswith(ENV_PREFIX):
            continue
        rest = var[len(ENV_PREFIX) :].lower()
        for name in _SECTIONS:
            if rest.startswith(name + "_"):
                key = rest[len(name) + 1 :]
                if key not in _section_hints(name):
                    raise ConfigError(f"{name}.{key}: unknown key (from environment variable {var})")
                found.append((name, key, text))
    return found


def _from_env_text(section: str, key: str, text: str) -> Any:
    kind = _section_hints(section)[key]
    if get_origin(kind) is list:
        return [item.strip() for item in text.split(",") if item.strip()]
    if kind is bool:
        lowered = text.strip().lower()
        if lowered in {"1", "true", "yes", "on"}:
            return True
        if lowered in {"0", "false", "no", "off"}:
            return False
        raise ConfigError(f"{section}.{key}: expected true or false, got {text!r}")
    if kind is int or kind is float:
        try:
            return kind(text.strip())
        except ValueError:
            raise ConfigError(f"{section}.{key}: expected a number, got {text!r}") from None
    return text


def _build_section(name: str, values: dict[str, Any]) -> Any:
    hints = _section_hints(name)
    for key, value in values.items():
        if key not in hints:
            raise ConfigError(f"{name}.{key}: unknown key")
        _check_type(f"{name}.{key}", hints[key], value)
    return _SECTIONS[name](**values)


def _check_type(where: str, kind: Any, value: Any) -> None:
    origin = get_origin(kind)
    if origin is list:
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            raise ConfigError(f"{where}: expected a list of strings")
    elif origin is Literal:
        if value not in get_args(kind):
            choices = " | ".join(map(str, get_args(kind)))
            raise ConfigError(f"{where}: expected one of {choices}, got {value!r}")
    elif kind is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false")
    elif kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer")
    elif kind is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where}: expected a number")
    elif kind is str and not isinstance(value, str):
        raise ConfigError(f"{where}: expected a string")


def _validate(config: Config) -> None:
    _check_listen(config.server.listen)
    _check_url("server.public_url", config.server.public_url)
    public = urlsplit(config.server.public_url)
    if public.query or public.fragment or config.server.public_url.endswith(("?", "#")):
        # Paths are appended to it (Location, discovery): a query would end up in the middle of every URL.
        raise ConfigError("server.public_url: must not have a query or fragment")
    for proxy in config.server.trusted_proxies:
        try:
            ipaddress.ip_network(proxy, strict=False)
        except ValueError:
            raise ConfigError(f"server.trusted_proxies: {proxy!r} is not an IP address or network") from None
    if not 1 <= config.server.workers <= 256:
        raise ConfigError("server.workers: must be within 1..256 (one per core is plenty)")
    if config.server.log_level.lower() not in {"debug", "info", "warning", "error"}:
        raise ConfigError("server.log_level: expected debug | info | warning | error")
    _check_url("upstream.url", config.upstream.url)
    if origin_of(config.server.public_url) == origin_of(config.upstream.url):
        raise ConfigError(
            "server.public_url: names the registry itself (the origin of upstream.url): clients would bypass the "
            "gateway; set the URL clients use to reach the gateway"
        )
    _check_url("s3.internal_endpoint", config.s3.internal_endpoint, origin_only=True)
    _check_url("s3.external_endpoint", config.s3.external_endpoint, origin_only=True)
    for alias in config.s3.aliases:
        _check_url("s3.aliases", alias, origin_only=True)
    for key in ("region", "access_key", "secret_key", "bucket"):
        if not getattr(config.s3, key):
            raise ConfigError(f"s3.{key}: required, set it in the file or GATEWAY_S3_{key.upper()}")
    if config.s3.ca_bundle and not Path(config.s3.ca_bundle).is_file():
        raise ConfigError(f"s3.ca_bundle: no such file {config.s3.ca_bundle!r}")
    uploads = config.uploads
    if not uploads.token_secret:
        raise ConfigError("uploads.token_secret: required, set it in the file or GATEWAY_UPLOADS_TOKEN_SECRET")
    if len(uploads.token_secret) < 16:
        raise ConfigError("uploads.token_secret: too short, use at least 16 characters (32 random bytes is good)")
    for where, secrets in (
        ("uploads.token_secret", [uploads.token_secret]),
        ("uploads.previous_token_secrets", uploads.previous_token_secrets),
    ):
        for secret in secrets:
            _check_token_secret(where, secret, s3_secret_key=config.s3.secret_key)
    if not MIN_PART_SIZE <= uploads.part_size <= MAX_PART_SIZE:
        raise ConfigError(f"uploads.part_size: must be within {MIN_PART_SIZE}..{MAX_PART_SIZE} bytes (5 MiB..5 GiB)")
    for where, seconds in (
        ("uploads.url_expiry_seconds", uploads.url_expiry_seconds),
        ("downloads.url_expiry_seconds", config.downloads.url_expiry_seconds),
    ):
        if not 1 <= seconds <= MAX_EXPIRES_S:
            raise ConfigError(f"{where}: must be within 1..{MAX_EXPIRES_S} (S3's limit is 7 days)")
    if uploads.sweep_interval_seconds < 0:
        raise ConfigError("uploads.sweep_interval_seconds: must be 0 (off) or positive")
    if uploads.sweep_grace_seconds < 0:
        raise ConfigError("uploads.sweep_grace_seconds: must not be negative")
    if uploads.token_ttl_seconds <= 0:
        raise ConfigError("uploads.token_ttl_seconds: must be positive")
    if not uploads.staging_prefix or uploads.staging_prefix.startswith("/"):
        raise ConfigError("uploads.staging_prefix: must be a non-empty key prefix not starting with '/'")
    if not uploads.image_id_pattern:
        raise ConfigError("uploads.image_id_pattern: must not be empty")
    try:
        re.compile(uploads.image_id_pattern)
    except re.error as error:
        raise ConfigError(f"uploads.image_id_pattern: not a regular expression ({error})") from None
    for where, number in (
        ("server.shutdown_grace_seconds", config.server.shutdown_grace_seconds),
        ("server.keepalive_seconds", config.server.keepalive_seconds),
        ("server.header_timeout_seconds", config.server.header_timeout_seconds),
        ("server.client_write_timeout_seconds", config.server.client_write_timeout_seconds),
        ("server.max_connections", config.server.max_connections),
        ("upstream.connect_timeout_seconds", config.upstream.connect_timeout_seconds),
        ("upstream.read_timeout_seconds", config.upstream.read_timeout_seconds),
        ("upstream.first_byte_timeout_seconds", config.upstream.first_byte_timeout_seconds),
        ("upstream.pool_size", config.upstream.pool_size),
        ("upstream.keepalive_seconds", config.upstream.keepalive_seconds),
        ("s3.connect_timeout_seconds", config.s3.connect_timeout_seconds),
        ("s3.read_timeout_seconds", config.s3.read_timeout_seconds),
    ):
        if number <= 0:
            raise ConfigError(f"{where}: must be positive")


def _check_token_secret(where: str, secret: str, *, s3_secret_key: str) -> None:
    """Refuse a token secret anyone could guess: it seals every upload token, so it is as strong as bucket writes."""
    if len(set(secret)) == 1:
        raise ConfigError(f"{where}: one character repeated; use 32 random bytes (docs/configuration.md)")
    bits = secret_bits(secret)
    if bits < MIN_SECRET_BITS:
        raise ConfigError(
            f"{where}: too little entropy (about {bits:.0f} bits, at least {MIN_SECRET_BITS:.0f} needed): "
            "use 32 random bytes (docs/configuration.md)"
        )
    if secret == s3_secret_key:
        # One leaked secret would then give both bucket access and forged tokens; nor should either be derivable.
        raise ConfigError(f"{where}: equal to s3.secret_key; use a secret of its own")


def secret_bits(secret: str) -> float:
    """A generous estimate of a secret's entropy in bits: the length of its shortest repeating unit (``abab…`` →
    ``ab``) times log2 of the number of distinct characters in it. It catches repetition and tiny alphabets, not
    dictionary words; for anything a person chose it is an upper bound."""
    unit = secret
    for period in range(1, len(secret) // 2 + 1):
        if secret[period:] == secret[:-period]:
            unit = secret[:period]
            break
    return len(unit) * math.log2(len(set(unit))) if unit else 0.0


def config_warnings(config: Config) -> list[str]:
    """Settings that work but are risky: one line each, naming the key; logged at start and shown by doctor."""
    warnings = []
    if urlsplit(config.server.public_url).scheme.lower() == "http":
        warnings.append(
            "server.public_url: http:// sends registry credentials and upload tokens in the clear; "
            "use https:// (TLS at nginx in front, docs/deploy.md)"
        )
    if config.internal_endpoint == config.external_endpoint:
        warnings.append(
            "s3.external_endpoint: equal to s3.internal_endpoint: clients are sent to the gateway's own S3 address, "
            "which works only if they can reach it under that name (docs/configuration.md)"
        )
    return warnings


def _check_listen(listen: str) -> None:
    host, sep, port = listen.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"server.listen: expected host:port, got {listen!r}")


def _check_url(where: str, url: str, *, origin_only: bool = False) -> None:
    parts = urlsplit(url)
    if not parts.scheme or "://" not in url:
        raise ConfigError(f"{where}: missing scheme, expected http:// or https://, got {url!r}")
    if origin_only and (parts.path not in ("", "/") or parts.query or parts.fragment):
        raise ConfigError(f"{where}: expected scheme://host[:port] with no path (S3 is addressed path-style)")
    try:
        Endpoint.parse(f"{parts.scheme}://{parts.netloc}")
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def masked(config: Config) -> dict[str, dict[str, Any]]:
    """The effective config as plain data, secrets replaced by ``***``."""
    out: dict[str, dict[str, Any]] = {}
    for section in fields(config):
        values = dataclasses.asdict(getattr(config, section.name))
        for key, value in values.items():
            if f"{section.name}.{key}" in SECRET_KEYS and value:
                values[key] = ["***"] * len(value) if isinstance(value, list) else "***"
        out[section.name] = values
    return out
