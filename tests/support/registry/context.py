"""Everything a view needs, reachable from the app under typed keys."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aiohttp import web

from .objectstore import LocalFiles, S3Bucket
from .replies import ServerError
from .settings import RegistrySettings
from .state import Image, RegistryState, User
from .wire import RequestRecord, WireState

__all__ = ["REGISTRY", "REQUEST_LOG", "STATE", "Registry", "registry_of"]


@dataclass
class Registry:
    settings: RegistrySettings
    state: RegistryState
    wire: WireState
    bucket: S3Bucket | None  # s3 flavour
    files: LocalFiles | None  # selfhosted flavour; set when the app starts

    def require_bucket(self) -> S3Bucket:
        if self.bucket is None:
            raise RuntimeError("no S3 bucket in the selfhosted flavour")
        return self.bucket

    def require_files(self) -> LocalFiles:
        if self.files is None:
            raise RuntimeError("no local storage in the s3 flavour (or the app was not started)")
        return self.files

    def delete_row(self, image: Image) -> None:
        """Container.delete(): in the selfhosted flavour the post_delete signal removes an unused file."""
        self.state.delete_image(image)
        if image.file_path is not None and not self.state.file_in_use(image.file_path):
            self.require_files().remove(image.file_path)

    async def image_size(self, image: Image) -> int | None:
        if not self.settings.report_image_size:
            return None
        if self.bucket is not None:
            return await self.bucket.size(image.storage_key)
        if image.file_path is not None and image.file_path.exists():
            return image.file_path.stat().st_size
        return None

    def with_unknown_size(self, metadata: dict[str, Any]) -> dict[str, Any]:
        """The image reply with a null size written as the settings say."""
        if metadata["size"] is None and self.settings.unknown_image_size == "zero":
            return metadata | {"size": 0}
        if metadata["size"] is None and self.settings.unknown_image_size == "absent":
            return {key: value for key, value in metadata.items() if key != "size"}
        return metadata

    def image_by_id(self, raw_id: str) -> Image | None:
        """Container.objects.get(id=raw_id): a non-integer id raises ValueError, i.e. a 500 (pitfall G4), and so
        does one outside SQLite's signed 64-bit INTEGER (OverflowError). Django's int() takes "+1", " 1", "1_0"."""
        try:
            image_id = int(raw_id)
        except ValueError as error:
            raise ServerError(f"Field 'id' expected a number but got {raw_id!r}.") from error
        if not -(2**63) <= image_id < 2**63:
            raise ServerError("OverflowError: Python int too large to convert to SQLite INTEGER")
        return self.state.images.get(image_id)

    def token_user(self, request: web.BaseRequest) -> User | None:
        token = presented_token(request)
        return None if token is None else self.state.user_for_token(token)


def presented_token(request: web.BaseRequest) -> str | None:
    # sregistry >= 1.1.31 strips "bearer" in any case, so "BEARER t", "Bearer t" and a bare "t" all work.
    header = request.headers.get("Authorization")
    if not header:
        return None
    token = header.strip()
    if token[:6].lower() == "bearer":
        token = token[6:].strip()
    return token


REGISTRY = web.AppKey("registry", Registry)
STATE = web.AppKey("state", RegistryState)
REQUEST_LOG = web.AppKey("request_log", list[RequestRecord])


def registry_of(request: web.Request) -> Registry:
    return request.app[REGISTRY]
