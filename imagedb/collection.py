"""A collection is bound to the model it was created with: every vector in it must come from that model."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import psycopg

from imagedb import config, provenance
from imagedb.embed import ModelSpec
from imagedb.errors import InvalidInput, ModelMismatch, NotFound
from imagedb.store import Collection, Store


def model_of(collection: Collection) -> ModelSpec:
    return ModelSpec(collection.model_name, collection.pretrained)


def check_model(collection: Collection, requested: ModelSpec | None) -> ModelSpec:
    """The collection's search model; refuses a different one asked for explicitly."""
    bound = model_of(collection)
    if requested is not None and requested != bound:
        raise ModelMismatch(
            f"collection {collection.name!r} searches with model {bound}, not {requested}: leave out --model (new"
            f" images get a vector of every model it holds), or add that model with imagedb models add {requested}"
            f" -c {collection.name}"
        )
    return bound


def _checked_name(name: str) -> str:
    if not name.strip() or "\x00" in name:
        raise InvalidInput(f"{name!r} is not a collection name")
    return name


def get_collection(store: Store, name: str, requested: ModelSpec | None = None) -> Collection:
    """The named collection; NotFound when there is none, ModelMismatch when `requested` is not its model."""
    collection = store.models.get_collection(_checked_name(name))
    if collection is None:
        raise NotFound(
            f"no collection named {name!r}: ingest images into it first (imagedb ingest PATH --collection {name})"
        )
    check_model(collection, requested)
    return collection


def get_or_create_collection(
    store: Store,
    name: str,
    requested: ModelSpec | None,
    *,
    keep_phi: bool = False,
    allow_random_weights: bool = False,
) -> Collection:
    """The named collection; a new one is bound to the requested model, else IMAGEDB_MODEL's, else the default.

    A model without weights is refused unless `allow_random_weights` (see provenance.load_checked). `keep_phi`
    (DICOM headers stored whole) creates a collection marked for it, and is refused for an existing collection
    created without it: patient data must never land beside data that was promised to hold none.
    """
    collection = store.models.get_collection(_checked_name(name))
    if collection is not None:
        check_model(collection, requested)
        if keep_phi and not collection.keep_phi:
            raise InvalidInput(
                f"collection {name!r} was created without --keep-phi, so it stores no patient data:"
                f" ingest with --keep-phi into a new collection (--collection NEW_NAME), or leave out --keep-phi"
            )
        return collection
    spec = requested or _configured_model()
    try:
        model_id, _ = provenance.load_checked(store, spec, allow_random_weights=allow_random_weights)
        created = store.models.create_collection(name, model_id, keep_phi=keep_phi)
    except psycopg.errors.InsufficientPrivilege as exc:
        raise NotFound(
            f"no collection named {name!r}, and this role may not create one (a writer ingests into existing"
            " collections): ask the database's owner to create it, e.g. with a first `imagedb ingest`"
        ) from exc
    if keep_phi and not created.keep_phi:  # another process created it a moment earlier, without --keep-phi
        raise InvalidInput(f"collection {name!r} was just created without --keep-phi by another process")
    return created


def _configured_model() -> ModelSpec:
    """A new collection's model when --model names none; a bad one says where it was set."""
    found = config.resolve("model")
    try:
        return ModelSpec.parse(str(found.value))
    except InvalidInput as exc:
        raise InvalidInput(f"{exc} (the model of new collections, from {found.source})") from exc


def held_model(store: Store, collection: Collection, requested: ModelSpec) -> Collection:
    """The collection as searched with `requested`, one of the models it holds (`imagedb search --model`)."""
    for record, _ in store.models.held_models(collection.id):
        if (record.name, record.pretrained) == (requested.name, requested.pretrained):
            return replace(
                collection, model_id=record.id, model_name=record.name, pretrained=record.pretrained, dim=record.dim
            )
    held = ", ".join(str(ModelSpec(r.name, r.pretrained)) for r, _ in store.models.held_models(collection.id))
    raise ModelMismatch(
        f"collection {collection.name!r} holds no model {requested} (it holds {held}): add it first with"
        f" imagedb models add {requested} -c {collection.name}"
    )


def find_stored_images(store: Store, name: str, refs: Sequence[str]) -> tuple[list[tuple[int, str]], list[str]]:
    """(id, path) of the images named by ids, paths or file names, and the refs that named none.

    A ref with a `/` is a path, made absolute against the current folder. Raises NotFound when no ref names an
    image, InvalidInput for a ref with a NUL character (no path or name holds one).
    """
    target = get_collection(store, name)
    found: dict[int, None] = {}
    missing = []
    for ref in refs:
        if "\x00" in ref:
            raise InvalidInput(f"{ref!r} cannot name an image: it holds a NUL character")
        ids = store.images.image_ids(target.id, absolute_ref(ref))
        found.update(dict.fromkeys(ids))
        if not ids:
            missing.append(ref)
    if not found:
        raise NotFound(f"no image {', '.join(refs)} in collection {name!r}: give ids, paths or file names")
    paths = store.dupes.paths(found)
    return [(image_id, paths[image_id]) for image_id in found if image_id in paths], missing


def absolute_ref(ref: str) -> str:
    """An image reference as stored: a path (it has a `/`) made absolute; an id or a bare file name as is."""
    return str(Path(ref).expanduser().resolve()) if "/" in ref else ref
