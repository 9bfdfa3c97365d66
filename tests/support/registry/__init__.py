"""A faithful fake of Singularity Registry Server's library API (sregistry), for tests and the demo.

It answers the routes, statuses, JSON shapes and wire quirks of the real server (docs/protocol.md §2-§8, §9b)
from in-memory state, and presigns S3 URLs like sregistry does. It never imports the gateway.

    app = make_registry_app(RegistrySettings(users={TOKEN: "alice"}, s3_endpoint=..., ...))
    app[REQUEST_LOG]   # every request as it reached the registry
    app[STATE]         # collections and image rows

Standalone: python -m tests.support.registry --help
"""

from __future__ import annotations

from .app import make_registry_app, reconfigure
from .context import REGISTRY, REQUEST_LOG, STATE, Registry
from .settings import Flavour, RegistrySettings
from .state import Collection, Image, RegistryState, User
from .wire import RequestRecord

__all__ = [
    "REGISTRY",
    "REQUEST_LOG",
    "STATE",
    "Collection",
    "Flavour",
    "Image",
    "Registry",
    "RegistrySettings",
    "RegistryState",
    "RequestRecord",
    "User",
    "make_registry_app",
    "reconfigure",
]
