"""The fake registry's configuration: the sregistry settings that change what a proxy in front of it sees."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

__all__ = ["Flavour", "RegistrySettings"]

# "s3": sregistry >= 1.1.24 with MINIO_MULTIPART_UPLOAD=false (uploadURL is a presigned S3 PUT).
# "selfhosted": sregistry <= 1.1.23 (uploadURL points at the registry, which stores the bytes itself).
Flavour = Literal["s3", "selfhosted"]

DRF_TOKEN = re.compile(r"[0-9a-f]{40}")


@dataclass(frozen=True, slots=True)
class RegistrySettings:
    """What an sregistry deployment is configured with (names follow the SREGISTRY_* settings)."""

    flavour: Flavour = "s3"
    # token -> username; DRF tokens are 40 lowercase hex characters.
    users: Mapping[str, str] = field(default_factory=dict)
    # Users whose last_login is NULL: sregistry then answers "updatedAt":"" (the Go client cannot parse it).
    users_never_logged_in: frozenset[str] = frozenset()
    domain_name: str = "http://127.0.0.1"  # DOMAIN_NAME, written into config.prod.json
    s3_endpoint: str = "http://127.0.0.1:9000"  # scheme + MINIO_SERVER (internal: deletes, size lookups)
    # MINIO_EXTERNAL_SERVER, host:port signed into client URLs (upload URLs and pull redirects). Never contacted:
    # a host the gateway does not know, or one that does not resolve (minio.invalid:9000), is signed all the same.
    s3_external_server: str = "127.0.0.1:9000"
    bucket: str = "sregistry"
    access_key: str = "minioadmin"
    secret_key: str = "minioadmin"
    region: str = "us-east-1"
    signed_url_expire_s: int = 300  # MINIO_SIGNED_URL_EXPIRE_MINUTES=5
    multipart_enabled: bool = False  # MINIO_MULTIPART_UPLOAD; only False is implemented
    minio_cleanup: bool = True  # not DISABLE_MINIO_CLEANUP: a replacing tag deletes the old object
    # Base URL the selfhosted flavour puts into uploadURL and download redirects (sregistry uses DOMAIN_NAME).
    # None: the scheme://Host of the request being answered.
    public_url: str | None = None
    storage_dir: Path | None = None  # selfhosted image files; None: a temporary directory per app
    # sregistry reports size from metadata that library pushes never set, so "size" is null.
    # True: report the stored object's size in bytes (S3 HEAD on the internal endpoint, or the file size).
    report_image_size: bool = False
    # How an unreported size is written: sregistry's null; "zero" and "absent" are the other ways library servers
    # say "unknown" (clients read all three as 0).
    unknown_image_size: Literal["null", "zero", "absent"] = "null"
    # uWSGI --http-socket: a POST/PUT whose body the view did not read leaves a dead pooled connection.
    # Emulated deterministically: the next request on that connection is reset.
    close_after_unread_body: bool = False
    # VIEW_RATE_LIMIT per client IP and view (django-ratelimit, blocking); None: unlimited.
    view_rate_limit: int | None = None
    # GET v1/oci-redirect?accessTypes=pull%2Cpush&mapped=1&namespace=e%2Fc%2Fn, the preflight of every push and pull
    # by the v1.4.x clients: sregistry has no such route (404). A URL: answer 200 {"token","url","name"} as a library
    # server with an OCI registry does, which switches those clients to OCI against that URL.
    oci_redirect_url: str | None = None
    first_collection_id: int = 1
    first_image_id: int = 1

    def __post_init__(self) -> None:
        if self.flavour not in ("s3", "selfhosted"):
            raise ValueError(f"flavour: expected 's3' or 'selfhosted', got {self.flavour!r}")
        for token, user in self.users.items():
            if not DRF_TOKEN.fullmatch(token):
                raise ValueError(f"users: token for {user!r} is not 40 lowercase hex characters")
        if len(set(self.users.values())) != len(self.users):
            raise ValueError("users: one token per user")
        if self.multipart_enabled:
            raise ValueError("multipart_enabled: sregistry's own multipart upload is not implemented")
        if urlsplit(self.s3_endpoint).scheme not in ("http", "https"):
            raise ValueError(f"s3_endpoint: expected http:// or https://, got {self.s3_endpoint!r}")
        if "/" in self.s3_external_server:
            raise ValueError(f"s3_external_server: expected host:port, got {self.s3_external_server!r}")
        if self.signed_url_expire_s <= 0:
            raise ValueError("signed_url_expire_s: must be positive")

    @property
    def s3_scheme(self) -> str:
        # MINIO_SSL selects one scheme for the internal and the external server.
        return urlsplit(self.s3_endpoint).scheme

    @property
    def s3_external_endpoint(self) -> str:
        return f"{self.s3_scheme}://{self.s3_external_server}"
