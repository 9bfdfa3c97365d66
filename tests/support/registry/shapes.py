"""JSON bodies exactly as sregistry's library helpers build them (shub/apps/library/views/helpers.py)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from .state import Collection, Image, RegistryState, User, is_dummy_tag

__all__ = [
    "collection_details",
    "collection_metadata",
    "collection_tags",
    "container_metadata",
    "sregistry_time",
    "user_data",
]

JSON = dict[str, Any]


def sregistry_time(moment: datetime | None) -> str:
    # formatString = "%Y-%m-%dT%X.%fZ"; a missing timestamp is rendered as "" (which Go cannot parse).
    return "" if moment is None else moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def description_of(collection: Collection) -> str:
    return f"{collection.name.capitalize()} Collection"


def user_data(user: User, state: RegistryState) -> JSON:
    """generate_user_data: the entity reply."""
    return {
        "collections": [str(c.id) for c in state.collections_owned_by(user)],
        "deleted": False,
        "createdBy": "",
        "createdAt": sregistry_time(user.date_joined),
        "updatedBy": "",
        "updatedAt": sregistry_time(user.last_login),
        "deletedAt": "0001-01-01T00:00:00Z",
        "id": str(user.id),
        "name": user.name,
        "description": user.name,
        "size": 0,
        "quota": 0,
        "defaultPrivate": False,
        "customData": "",
    }


def collection_metadata(collection: Collection, user: User, state: RegistryState) -> JSON:
    """generate_collection_metadata: `user` is the caller (the token's user)."""
    visible = not collection.private or user is collection.owner
    images = list(state.images_in(collection))
    return {
        "containers": [str(image.id) for image in images] if visible else [],
        "createdAt": sregistry_time(collection.add_date),
        "createdBy": str(collection.owner.id),
        "customData": "",
        "deleted": False,
        "deletedAt": "0001-01-01T00:00:00Z",
        "description": description_of(collection),
        "entity": str(user.id),
        "entityName": user.name,
        "id": str(collection.id),
        "name": collection.name,
        "owner": str(user.id),
        "private": collection.private,
        "size": len(images),
        "updatedAt": sregistry_time(collection.modify_date),
        "updatedBy": str(user.id),
    }


def collection_details(collection: Collection, images: list[Image], user: User, state: RegistryState) -> JSON:
    """generate_collection_details: the container reply, whose "id" is the collection's id."""
    tags = {image.tag: str(image.id) for image in images if not is_dummy_tag(image.tag)}
    # sregistry filters on the loop variable left over from the loop above, i.e. on the last image only.
    last_is_dummy = bool(images) and is_dummy_tag(images[-1].tag)
    data = collection_metadata(collection, user, state)
    data.update(
        {
            "archTags": {"amd64": tags},
            "collection": str(collection.id),
            "collectionName": collection.name,
            "downloadCount": None,  # get_collection_downloads() returns None
            "fullDescription": data["description"],
            "imageTags": tags,
            "images": [] if last_is_dummy else [image.version for image in images],
            "readOnly": False,
            "stars": 0,
        }
    )
    return data


def container_metadata(image: Image, state: RegistryState, *, arch: str = "amd64", size: int | None) -> JSON:
    """generate_container_metadata: the image reply. No "uploaded" key, so clients read false."""
    collection = image.collection
    owner = collection.owner
    tags = [other.tag for other in state.images_in(collection) if not is_dummy_tag(other.tag)]
    return {
        "deleted": False,
        "createdAt": sregistry_time(image.add_date),
        "createdBy": str(owner.id),
        "updatedBy": owner.name,
        "owner": str(owner.id),
        "id": str(image.id),
        "hash": image.version,
        "description": description_of(collection),
        "container": image.version,
        "arch": arch,
        "fingerprints": [],
        "customData": "",
        "size": size,
        "entity": str(owner.id),
        "entityName": owner.name,
        "collection": str(collection.id),
        "collectionName": collection.name.split("/")[0],
        "containerName": image.name.split("/")[-1],
        "tags": tags,
        "containerStars": 0,
        "containerDownloads": 0,
    }


def collection_tags(collection: Collection, state: RegistryState) -> dict[str, str]:
    """generate_collection_tags: every named tag in the collection -> newest image id, any container name."""
    tags: dict[str, str] = {}
    for image in sorted(state.images_in(collection), key=lambda i: i.id):
        if not is_dummy_tag(image.tag):
            tags[image.tag] = str(image.id)
    return tags
