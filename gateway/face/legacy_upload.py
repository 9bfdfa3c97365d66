"""The legacy single-PUT upload: the registry's upload URL, made usable by the client.

The gateway forwards the start to the registry (which is how it learns who may push) and rewrites the URL in its
answer: one into our S3 is re-signed for the external endpoint (with the image's sha256 bound, when the client
sent one), one on the registry moves onto the gateway's public URL, any other is handed on unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from ..core.bodies import LegacyStartRequest
from ..core.errors import PayloadTooLarge
from ..core.plan import MAX_SINGLE_PUT
from ..core.sigv4 import Signer
from ..core.upload_mode import choose_legacy
from ..ops.metrics import Metrics
from .locations import LocationPolicy
from .mode_log import ModeLog

__all__ = ["LegacyUpload"]


@dataclass(eq=False, kw_only=True)
class LegacyUpload:
    locations: LocationPolicy  # where the registry's upload URL points; the endpoint it is re-signed for
    url_expiry_s: int
    signer: Signer
    clock: Callable[[], datetime]
    metrics: Metrics
    modes: ModeLog

    def rewrite_upload_url(self, request: LegacyStartRequest, upload_url: str) -> str:
        choice = choose_legacy(self.locations.destination_of(upload_url))
        self.modes.tell("legacy", choice.mode, choice.reason, upload_url)
        target = self.locations.s3_location(upload_url)
        if target is not None:
            if request.filesize > MAX_SINGLE_PUT:
                raise PayloadTooLarge(
                    "images above 5 GiB need multipart uploads: enable uploads.multipart on the gateway"
                )
            # With the sha256 bound and signed as a header (v3h), the client sends it and S3 verifies the file.
            self.metrics.presigns.inc(kind="legacy")
            return self.signer.presign(
                "PUT",
                self.locations.external,
                target.bucket,
                target.key,
                now=self.clock(),
                expires_s=self.url_expiry_s,
                payload_sha256=request.sha256,
                sign_sha256_header=request.sha256 is not None,
            )
        on_gateway = self.locations.public_location(upload_url)  # the registry's own URL, moved onto the gateway
        return upload_url if on_gateway is None else on_gateway.location
