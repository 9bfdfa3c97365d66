"""In-memory rows of sregistry's database: users, collections and "containers" (the library API's images)."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from .settings import RegistrySettings

__all__ = ["Collection", "Image", "RegistryState", "User", "is_dummy_tag"]

# sregistry gives every image row a temporary tag until the client's tag POST names it.
DUMMY_TAG = re.compile(r"DUMMY-[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")


def is_dummy_tag(tag: str) -> bool:
    return DUMMY_TAG.search(tag) is not None


def now() -> datetime:
    return datetime.now(UTC)


@dataclass(slots=True)
class User:
    id: int
    name: str
    token: str
    date_joined: datetime
    last_login: datetime | None


@dataclass(slots=True)
class Collection:
    id: int
    name: str
    owner: User
    private: bool
    secret: str  # selfhosted download URLs carry it
    add_date: datetime = field(default_factory=now)
    modify_date: datetime = field(default_factory=now)


@dataclass(slots=True)
class Image:
    """sregistry's Container model: one row per (collection, name, tag, version)."""

    id: int
    collection: Collection
    name: str
    tag: str
    version: str  # "sha256.<hex>"
    frozen: bool = False
    add_date: datetime = field(default_factory=now)
    push_secret: str | None = None  # selfhosted: the secret in the last uploadURL
    file_path: Path | None = None  # selfhosted: the stored image file

    @property
    def storage_key(self) -> str:
        # Container.get_storage(): the entity is not part of the key.
        return f"{self.collection.name}/{self.name}:{self.version}"


class RegistryState:
    def __init__(self, settings: RegistrySettings) -> None:
        joined = now()
        self.users: dict[str, User] = {}
        for user_id, (token, name) in enumerate(settings.users.items(), start=1):
            last_login = None if name in settings.users_never_logged_in else joined
            self.users[token] = User(user_id, name, token, joined, last_login)
        self.collections: dict[int, Collection] = {}
        self.images: dict[int, Image] = {}
        self._next_collection_id = settings.first_collection_id
        self._next_image_id = settings.first_image_id

    # users

    def user_for_token(self, token: str) -> User | None:
        return self.users.get(token)

    def user_named(self, name: str) -> User | None:
        return next((user for user in self.users.values() if user.name == name), None)

    # collections (names are global, not per entity)

    def collection_named(self, name: str) -> Collection | None:
        return next((c for c in self.collections.values() if c.name == name), None)

    def collections_owned_by(self, user: User) -> list[Collection]:
        return [c for c in self.collections.values() if c.owner is user]

    def create_collection(self, name: str, owner: User, *, private: bool) -> Collection:
        collection = Collection(self._next_collection_id, name, owner, private, str(uuid.uuid4()))
        self._next_collection_id += 1
        self.collections[collection.id] = collection
        return collection

    # images

    def images_in(self, collection: Collection) -> Iterator[Image]:
        return (image for image in self.images.values() if image.collection is collection)

    def create_image(self, collection: Collection, name: str, version: str) -> Image:
        image = Image(self._next_image_id, collection, name, f"DUMMY-{uuid.uuid4()}", version)
        self._next_image_id += 1
        self.images[image.id] = image
        return image

    def delete_image(self, image: Image) -> None:
        self.images.pop(image.id, None)

    def reinsert(self, image: Image) -> None:
        """save() after delete(): Django inserts the row again under a fresh id."""
        image.id = self._next_image_id
        self._next_image_id += 1
        self.images[image.id] = image

    def images_named(self, name: str, tag: str) -> list[Image]:
        # Container.objects.get(name=..., tag=...) in the tag view: any collection.
        return [i for i in self.images.values() if i.name == name and i.tag == tag]

    def count_with_version(self, version: str) -> int:
        return sum(1 for image in self.images.values() if image.version == version)

    def file_in_use(self, path: Path) -> bool:
        return any(image.file_path == path for image in self.images.values())
