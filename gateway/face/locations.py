"""The URL policy: where a URL the registry hands out points, and what the client gets instead.

Upload URLs and redirects name the registry, our S3 or some other host. Only the download route's redirect into our
bucket is re-signed (for the external endpoint, and only when the registry itself signed it); a URL on the registry
moves onto the gateway's public URL; anything else passes as the registry wrote it.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from urllib.parse import urlsplit

from ..core.config import Config
from ..core.sigv4 import Endpoint, Signer, origin_of, verify_presigned_url
from ..core.upload_mode import Destination, S3Location, destination_of, s3_location
from ..edges.forwarder import Relocated
from ..ops.metrics import Metrics

__all__ = ["LocationPolicy"]


class LocationPolicy:
    def __init__(self, config: Config, *, signer: Signer, clock: Callable[[], datetime], metrics: Metrics) -> None:
        self.signer = signer
        self.clock = clock
        self.metrics = metrics
        self.bucket = config.s3.bucket
        self.staging_prefix = config.uploads.staging_prefix
        self.download_expiry_s = config.downloads.url_expiry_seconds
        # A re-signed download answers 303 (every client pulls in parallel then), or keeps the registry's status.
        self.download_status = 303 if config.downloads.redirect_status == "303" else None
        self.external = Endpoint.parse(config.s3.external_endpoint)
        self.s3_origins = config.s3_origins()
        self.upstream_origin = origin_of(config.upstream.url)
        self.public_url = config.server.public_url.rstrip("/")
        # Upload URLs on these are the registry's own (it stores images itself), not an S3 host.
        self.registry_origins = frozenset({self.upstream_origin, origin_of(self.public_url)})

    def s3_location(self, url: str) -> S3Location | None:
        """Bucket and key when ``url`` is a path-style URL on one of our S3 origins, else None."""
        return s3_location(url, self.s3_origins)

    def destination_of(self, upload_url: str) -> Destination:
        return destination_of(upload_url, s3_origins=self.s3_origins, registry_origins=self.registry_origins)

    def points_at_upstream(self, url: str) -> bool:
        return origin_of(url) == self.upstream_origin

    def to_public(self, url: str) -> str:
        parts = urlsplit(url)
        return self.public_url + parts.path + (f"?{parts.query}" if parts.query else "")

    def public_location(self, location: str) -> Relocated | None:
        """A redirect from the registry on any route: one to the registry itself is kept on the gateway; anything
        else (None) goes out as the registry sent it, with its status. Nothing is signed here."""
        if self.points_at_upstream(location):
            return Relocated(self.to_public(location))
        return None

    def download_location(self, location: str) -> Relocated | None:
        """A redirect from the registry's download route: re-signed for the external endpoint when the registry
        itself granted that download (``justified_download``), answered 303 with ``downloads.redirect_status =
        "303"``; else as ``public_location``. A URL into S3 that the registry did not sign passes unchanged, with
        its status: the gateway adds no access the registry did not give, and a registry serving the file itself
        (old sregistry's download view answers 200 and the whole file to any Range) is never sent ranged GETs."""
        target = self.justified_download(location)
        if target is None:
            return self.public_location(location)
        self.metrics.presigns.inc(kind="download")
        signed = self.signer.presign(
            "GET", self.external, target.bucket, target.key, now=self.clock(), expires_s=self.download_expiry_s
        )
        return Relocated(signed, self.download_status)

    def justified_download(self, location: str) -> S3Location | None:
        """Bucket and key of a registry redirect the gateway may sign a GET for, else None: a path-style URL on one
        of our S3 origins, in the configured bucket, for a key outside the gateway's own ``staging_prefix``
        (journal, relay staging, markers) with no empty or dot segments (which some servers normalise), that the
        registry presigned itself with our access key and secret and that has not expired. A registry that
        reflects input into Location cannot make the gateway sign anything the registry would not."""
        target = self.s3_location(location)
        if target is None or target.bucket != self.bucket or not self._image_key(target.key):
            return None
        if not verify_presigned_url(location, self.signer.credentials, method="GET", now=self.clock()):
            return None
        return target

    def _image_key(self, key: str) -> bool:
        segments = key.split("/")
        if any(segment in ("", ".", "..") for segment in segments):
            return False
        return not key.startswith(self.staging_prefix)
