"""Building a gateway config and app for tests: one place, so every test states only what differs."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from gateway.config import Config, load_config

TOKEN_SECRET = "test-token-secret-0123456789"


def gateway_config(
    *,
    upstream_url: str,
    s3_endpoint: str = "http://127.0.0.1:9",
    external_endpoint: str | None = None,
    access_key: str = "AKIDEXAMPLE",
    secret_key: str = "secret-secret",
    public_url: str = "http://127.0.0.1:8080",
    **sections: dict[str, Any],
) -> Config:
    """A validated Config; ``sections`` override fields per section, e.g. ``uploads={"multipart": False}``."""
    env = {
        "GATEWAY_UPSTREAM_URL": upstream_url,
        "GATEWAY_SERVER_PUBLIC_URL": public_url,
        "GATEWAY_S3_INTERNAL_ENDPOINT": s3_endpoint,
        "GATEWAY_S3_EXTERNAL_ENDPOINT": external_endpoint or s3_endpoint,
        "GATEWAY_S3_ACCESS_KEY": access_key,
        "GATEWAY_S3_SECRET_KEY": secret_key,
        "GATEWAY_UPLOADS_TOKEN_SECRET": TOKEN_SECRET,
    }
    config = load_config(None, env)
    for name, values in sections.items():
        config = replace(config, **{name: replace(getattr(config, name), **values)})
    return config
