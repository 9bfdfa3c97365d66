"""Calls the gateway makes to the registry itself: the legacy upload start (which is how the gateway asks who
may push), ``_complete``, readiness, and the relay PUT of an assembled image to the upload URL the registry signs."""

from __future__ import annotations

import json
from collections.abc import AsyncIterable
from typing import Any

import aiohttp
from multidict import CIMultiDict
from yarl import URL

from ..core.config import Config
from ..core.errors import RelayFailed, UpstreamRefused, UpstreamUnavailable
from .forwarder import Forwarder
from .registry_answer import RegistryAnswer

__all__ = ["RegistryClient", "error_message"]


def error_message(answer: RegistryAnswer) -> str:
    """The registry's own error text when it sent the library error shape, else a plain one."""
    if isinstance(answer.json, dict):
        error = answer.json.get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str) and error["message"]:
            return str(error["message"])
    return f"registry refused the request ({answer.status})"


class RegistryClient:
    """The registry as the gateway itself calls it. Its JSON calls share the forwarder's connection pool (one pool
    to the registry, ``upstream.pool_size``). A relay goes to whatever upload URL the registry signs, usually its
    S3 on another host, so it has its own aiohttp session: opened at the first relay, holding at most one
    connection per client connection (each relay is a client's complete waiting on it)."""

    def __init__(
        self,
        forwarder: Forwarder,
        *,
        read_timeout_s: float,
        connect_timeout_s: float,
        relay_connections: int,
    ) -> None:
        self.forwarder = forwarder
        self.read_timeout_s = read_timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.relay_connections = relay_connections
        self._relay_session: aiohttp.ClientSession | None = None

    @classmethod
    def from_config(cls, config: Config, forwarder: Forwarder) -> RegistryClient:
        return cls(
            forwarder,
            read_timeout_s=config.upstream.read_timeout_seconds,
            connect_timeout_s=config.upstream.connect_timeout_seconds,
            relay_connections=config.server.max_connections,
        )

    async def close(self) -> None:
        if self._relay_session is not None:
            await self._relay_session.close()

    async def call(self, method: str, path: str, *, headers: CIMultiDict[str], body: bytes) -> RegistryAnswer:
        """One small JSON call; raises UpstreamUnavailable/UpstreamTimeout when the registry can't be reached or
        answers out of time or broken."""
        return await self.forwarder.call(method, path, headers.items(), body, timeout_s=self.read_timeout_s)

    async def start_upload(self, image_id: str, *, headers: CIMultiDict[str], filesize: int) -> str:
        """Ask the registry for a legacy upload URL: its consent that this caller may push this image."""
        answer = await self.call(
            "POST", f"/v2/imagefile/{image_id}", headers=headers, body=json.dumps({"filesize": filesize}).encode()
        )
        raise_for_refusal(answer)
        data = answer.json.get("data") if isinstance(answer.json, dict) else None
        url = data.get("uploadURL") if isinstance(data, dict) else None
        if not isinstance(url, str) or not url:
            raise UpstreamUnavailable("registry answered the upload start without an uploadURL")
        return url

    async def complete_upload(self, image_id: str, *, headers: CIMultiDict[str]) -> dict[str, Any]:
        answer = await self.call("PUT", f"/v2/imagefile/{image_id}/_complete", headers=headers, body=b"{}")
        raise_for_refusal(answer)
        # The client JSON-decodes this answer; sregistry's is empty, so send {} unless there is an object.
        return answer.json if isinstance(answer.json, dict) else {}

    async def put_stream(self, url: str, body: AsyncIterable[bytes], *, length: int) -> None:
        """Relay: stream an image to the registry's own upload URL with Content-Length (uWSGI refuses chunked)."""
        headers = {"Content-Length": str(length), "Content-Type": "application/octet-stream"}
        target = URL(url, encoded=True)
        host = target.raw_authority
        try:
            async with self._relay().put(
                target,
                data=body,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=None, sock_read=self.read_timeout_s),
                allow_redirects=False,
            ) as response:
                status, answer = response.status, await response.read()
        except TimeoutError as exc:
            raise RelayFailed(f"relaying the image to {host} timed out", retryable=True, status=504) from exc
        except aiohttp.ClientConnectorDNSError as exc:
            raise RelayFailed(
                f"relaying the image to {host} failed: DNS error, the name does not resolve from the gateway",
                retryable=False,
            ) from exc
        except aiohttp.ClientSSLError as exc:
            raise RelayFailed(f"relaying the image to {host} failed: TLS error ({exc})", retryable=False) from exc
        except aiohttp.ClientConnectorError as exc:
            refused = isinstance(exc.os_error, ConnectionRefusedError)
            why = "connection refused" if refused else f"cannot connect ({exc.os_error.strerror or exc.os_error})"
            raise RelayFailed(f"relaying the image to {host} failed: {why}", retryable=not refused) from exc
        except aiohttp.ClientError as exc:  # cut mid-transfer: the host is there, it may take the image next time
            raise RelayFailed(f"relaying the image to {host} failed: {exc.__class__.__name__}", retryable=True) from exc
        if status not in (200, 201, 204):
            raise RelayFailed(
                f"{host} refused the relayed image ({status}{_s3_code(answer)})",
                retryable=status >= 500,
            )

    def _relay(self) -> aiohttp.ClientSession:
        if self._relay_session is None:
            self._relay_session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self.relay_connections),
                timeout=aiohttp.ClientTimeout(total=None, connect=self.connect_timeout_s),
                auto_decompress=False,
                cookie_jar=aiohttp.DummyCookieJar(),
            )
        return self._relay_session


def _s3_code(body: bytes) -> str:
    """``: <Code>`` of an S3 error document (a presigned upload URL answers with one), else nothing."""
    start, end = body.find(b"<Code>"), body.find(b"</Code>")
    if start < 0 or end <= start:
        return ""
    return ": " + body[start + 6 : end].decode("utf-8", "replace")[:64]


def raise_for_refusal(answer: RegistryAnswer) -> None:
    if 200 <= answer.status < 300:
        return
    if 400 <= answer.status < 500:
        raise UpstreamRefused(error_message(answer), status=answer.status)
    raise UpstreamUnavailable(f"registry failed ({answer.status})")
