"""A collection is bound to the model it was created with: every vector in it must come from that model."""

from __future__ import annotations

from imagedb import embed
from imagedb.config import DEFAULT_MODEL
from imagedb.embed import ModelSpec
from imagedb.errors import InvalidInput, ModelMismatch, NotFound
from imagedb.store import Collection, Store


def model_of(collection: Collection) -> ModelSpec:
    return ModelSpec(collection.model_name, collection.pretrained)


def check_model(collection: Collection, requested: ModelSpec | None) -> ModelSpec:
    """The collection's model; refuses a different one asked for explicitly."""
    bound = model_of(collection)
    if requested is not None and requested != bound:
        raise ModelMismatch(
            f"collection {collection.name!r} was created with model {bound}, not {requested}:"
            f" leave out --model/IMAGEDB_MODEL, or use another --collection"
        )
    return bound


def _checked_name(name: str) -> str:
    if not name.strip() or "\x00" in name:
        raise InvalidInput(f"{name!r} is not a collection name")
    return name


def get(store: Store, name: str, requested: ModelSpec | None = None) -> Collection:
    collection = store.get_collection(_checked_name(name))
    if collection is None:
        raise NotFound(
            f"no collection named {name!r}: ingest images into it first (imagedb ingest PATH --collection {name})"
        )
    check_model(collection, requested)
    return collection


def get_or_create(store: Store, name: str, requested: ModelSpec | None) -> Collection:
    """The named collection; a new one is bound to the requested model, or the default one."""
    collection = store.get_collection(_checked_name(name))
    if collection is not None:
        check_model(collection, requested)
        return collection
    spec = requested or ModelSpec.parse(DEFAULT_MODEL)
    model_id = store.ensure_model(spec.name, spec.pretrained, embed.load(spec).dim)
    return store.create_collection(name, model_id)
