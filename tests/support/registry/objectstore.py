"""Where the fake's image bytes live: an S3 bucket it presigns URLs for, or files on its own disk."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import aiohttp
import botocore.session
from botocore.client import Config

from .replies import ServerError
from .settings import RegistrySettings
from .state import Image

__all__ = ["LocalFiles", "S3Bucket"]

CHUNK_BYTES = 1 << 20
S3_TIMEOUT = aiohttp.ClientTimeout(total=30)


@functools.cache
def botocore_session() -> Any:
    # One session for every app in a test run: it caches the S3 service model between clients.
    return botocore.session.get_session()


def s3_client(settings: RegistrySettings, endpoint_url: str) -> Any:
    # What sregistry's boto3 clients and minio-py presign: path-style SigV4 query auth, SignedHeaders=host,
    # UNSIGNED-PAYLOAD.
    return botocore_session().create_client(
        "s3",
        endpoint_url=endpoint_url,
        aws_access_key_id=settings.access_key,
        aws_secret_access_key=settings.secret_key,
        region_name=settings.region,
        config=Config(signature_version="s3v4", s3={"addressing_style": "path"}),
    )


class S3Bucket:
    """Presigns for MINIO_EXTERNAL_SERVER (client URLs) and MINIO_SERVER (the fake's own calls)."""

    def __init__(self, settings: RegistrySettings) -> None:
        self._bucket = settings.bucket
        self._expires_s = settings.signed_url_expire_s
        self._external = s3_client(settings, settings.s3_external_endpoint)
        self._internal = s3_client(settings, settings.s3_endpoint)
        self._session: aiohttp.ClientSession | None = None

    async def open(self) -> None:
        self._session = aiohttp.ClientSession(timeout=S3_TIMEOUT)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
        self._external.close()
        self._internal.close()

    def presigned_put(self, key: str) -> str:
        return self._presign(self._external, "put_object", key)

    def presigned_get(self, key: str) -> str:
        return self._presign(self._external, "get_object", key)

    async def delete(self, key: str) -> None:
        """minioClient.remove_object; any failure surfaces as sregistry's 500."""
        url = self._presign(self._internal, "delete_object", key)
        try:
            async with self._client().delete(url) as reply:
                if reply.status not in (200, 204):
                    raise ServerError(f"S3 DELETE {key}: {reply.status}")
        except (TimeoutError, aiohttp.ClientError) as error:
            raise ServerError(f"S3 DELETE {key}: {error}") from error

    async def size(self, key: str) -> int | None:
        url = self._presign(self._internal, "head_object", key)
        try:
            async with self._client().head(url) as reply:
                return reply.content_length if reply.status == 200 else None
        except (TimeoutError, aiohttp.ClientError):
            return None

    def _presign(self, client: Any, operation: str, key: str) -> str:
        params = {"Bucket": self._bucket, "Key": key}
        return str(client.generate_presigned_url(operation, Params=params, ExpiresIn=self._expires_s))

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("S3Bucket.open() was not awaited (app not started)")
        return self._session


class LocalFiles:
    """sregistry <= 1.1.23: MEDIA_ROOT/<collection>/<name>-<version>.sif."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def path_for(self, image: Image) -> Path:
        return self.directory / image.collection.name / f"{image.name}-{image.version}.sif"

    async def store(self, image: Image, body: aiohttp.StreamReader) -> tuple[Path, int]:
        target = self.path_for(image)
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(target.name + ".part")
        received = 0
        with partial.open("wb") as out:
            while chunk := await body.read(CHUNK_BYTES):
                out.write(chunk)
                received += len(chunk)
        partial.replace(target)
        return target, received

    @staticmethod
    def remove(path: Path) -> None:
        path.unlink(missing_ok=True)
