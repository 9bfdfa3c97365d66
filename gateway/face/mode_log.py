"""Which way uploads go, told to the operator: each choice counted, and logged at the first upload of its kind and
whenever it changes, so the mode and its reason are known without reading every start."""

from __future__ import annotations

import logging
from urllib.parse import urlsplit

from ..core.upload_mode import SIGNS_FOR_UNKNOWN_HOST, UNKNOWN_HOST_FIX
from ..ops.metrics import Metrics

__all__ = ["ModeLog"]

log = logging.getLogger("gateway.uploads")

class ModeLog:
    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self._told: dict[str, tuple[str, str]] = {}  # upload kind -> (mode, reason) last logged

    def tell(self, upload: str, mode: str, reason: str, upload_url: str) -> None:
        """``upload``: the kind ("multipart", "legacy"); ``upload_url``: the registry's, whose host is logged."""
        self.metrics.upload_mode.choose("upload", upload=upload, mode=mode, reason=reason)
        if self._told.get(upload) == (mode, reason):
            return
        self._told[upload] = (mode, reason)
        host = urlsplit(upload_url).netloc
        unknown = reason == SIGNS_FOR_UNKNOWN_HOST
        log.log(
            logging.WARNING if unknown else logging.INFO,
            "%s uploads: mode %s, reason %s, registry upload URL host %s%s",
            upload,
            mode,
            reason,
            host,
            UNKNOWN_HOST_FIX if unknown else "",
            extra={"event": "upload-mode", "upload": upload, "mode": mode, "reason": reason, "upload_url_host": host},
        )
