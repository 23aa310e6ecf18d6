"""`imagedb models`: change a collection's model with no downtime.

`add` embeds every image of a collection with another model, batch by batch (resumable after a kill: it picks up
the images still without that model's vector), while searches keep using the current model; the new model's HNSW
index is built after the load, concurrently. `use` switches the collection's search model in one transaction.
`drop` deletes a model's vectors in a collection (and its index and row once no collection holds it).
(imagedb/models.py is the SQLAlchemy schema; this is the use case.)
"""

from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from imagedb import cpus, provenance
from imagedb.collection import get_collection, model_of
from imagedb.embed import Embedder, ModelSpec
from imagedb.errors import InvalidInput, ModelMismatch, NotReady
from imagedb.files import BadImage
from imagedb.images import decode
from imagedb.progress import BUILDING_INDEX, EMBEDDING, NoProgress, Progress
from imagedb.store import Collection, Store
from imagedb.store.records import HeldModel, ModelRecord

# Passes over the images still without the new model's vector: the first embeds them all; a later one those an
# ingest stored meanwhile without it (an ingest that started before this `add` and had decoded its batch).
MAX_PASSES = 5


@dataclass
class AddSummary:
    collection: str
    model: str
    run_id: int
    embedded: int = 0  # vectors computed
    reused: int = 0  # vectors of identical content stored already (in any collection)
    from_thumbnail: int = 0  # of those computed: the original file was gone or changed, so its stored thumbnail
    failed: list[tuple[int, str]] | None = None  # (image id, why): neither file nor thumbnail could be read
    ready: bool = False


@dataclass
class DropSummary:
    collection: str
    model: str
    vectors: int
    index_dropped: bool


def list_models(store: Store) -> list[HeldModel]:
    return store.models.model_listing()


def _held(store: Store, target: Collection, spec: ModelSpec) -> tuple[ModelRecord, bool]:
    for record, ready in store.models.held_models(target.id):
        if (record.name, record.pretrained) == (spec.name, spec.pretrained):
            return record, ready
    raise ModelMismatch(
        f"collection {target.name!r} holds no model {spec}: `imagedb models list` shows the models it holds"
    )


def add(
    store: Store,
    spec: ModelSpec,
    collection: str,
    *,
    batch_size: int = 32,
    progress: Progress | None = None,
    allow_random_weights: bool = False,
) -> AddSummary:
    """Give every image of `collection` a vector of `spec`, then its index; rerun to resume after a kill."""
    progress = progress or NoProgress()
    target = get_collection(store, collection)
    model_id, embedder = provenance.load_checked(store, spec, allow_random_weights=allow_random_weights)
    if model_id == target.model_id:
        raise InvalidInput(f"collection {target.name!r} searches with {spec} already: nothing to add")
    with store.models.adding_lock(target.id, model_id) as locked:
        if not locked:
            raise NotReady(
                f"another `imagedb models add {spec}` into {target.name!r} is running: wait for it to finish"
            )
        store.models.hold_model(target.id, model_id)  # from now on, ingests into the collection embed with it too
        summary = AddSummary(
            target.name, str(spec), store.images.start_run(target.id, model_id, "models add"), failed=[]
        )
        if not store.models.model_has_embeddings(model_id):
            # A first load: inserting row by row into HNSW costs far more than building it after the load.
            store.index.drop_hnsw_index(model_id)
        with ThreadPoolExecutor(max_workers=cpus.available()) as pool:
            for _ in range(MAX_PASSES):
                missing = store.models.count_without_vector(target.id, model_id)
                if missing:
                    progress.phase(EMBEDDING, missing, detail=str(spec))
                    if not _embed_all(store, target, model_id, embedder, batch_size, pool, progress, summary):
                        break  # nothing stored in a whole pass: only images that cannot be read are left
                progress.phase(BUILDING_INDEX)
                store.index.build_hnsw_index_concurrently(model_id, embedder.dim)
                if store.models.mark_ready(target.id, model_id):
                    summary.ready = True
                    break
        store.images.finish_run(summary.run_id, summary.embedded, 0, summary.reused, len(summary.failed))
    return summary


def _embed_all(
    store: Store,
    target: Collection,
    model_id: int,
    embedder: Embedder,
    batch_size: int,
    pool: ThreadPoolExecutor,
    progress: Progress,
    summary: AddSummary,
) -> int:
    """One pass over the images without the model's vector, in id order; returns how many it stored."""
    stored, after, side = 0, 0, embedder.input_side()
    failed_ids = {i for i, _ in summary.failed or []}
    while batch := store.models.images_without_vector(target.id, model_id, after, batch_size):
        after = batch[-1][0]
        todo = [b for b in batch if b[0] not in failed_ids]
        known = store.images.vectors_by_sha256(model_id, [sha for _, _, sha in todo])
        fresh = [b for b in todo if b[2] not in known]
        inputs = list(pool.map(lambda b: _input(store, embedder, side, *b), fresh))
        good = [(b, tensor) for b, (tensor, _, _) in zip(fresh, inputs, strict=True) if tensor is not None]
        for b, (tensor, thumb, reason) in zip(fresh, inputs, strict=True):
            if tensor is None:
                summary.failed.append((b[0], reason))  # type: ignore[union-attr]
            summary.from_thumbnail += int(thumb and tensor is not None)
        vectors: dict[int, np.ndarray] = {}
        if good:
            encoded = embedder.encode_images([tensor for _, tensor in good])
            vectors = {b[0]: v for (b, _), v in zip(good, encoded, strict=True)}
        rows = [(i, known[sha]) for i, _, sha in todo if sha in known] + list(vectors.items())
        written = store.models.write_vectors(model_id, summary.run_id, rows) if rows else 0
        stored += written
        summary.embedded += len(vectors)
        summary.reused += len(rows) - len(vectors)
        progress.advance(len(batch))
    return stored


def _input(
    store: Store, embedder: Embedder, side: int, image_id: int, path: str, sha256: str
) -> tuple[object, bool, str]:
    """The model input of a stored image: from its file while it is the file ingested (same SHA-256), else from
    its stored thumbnail (256 pixels, more than most models' input). Returns (input or None, from thumbnail, why)."""
    try:
        decoded = decode(Path(path), min_side=side)
        if decoded.record.sha256 == sha256:
            return embedder.preprocess(decoded.pixels), False, ""
    except (BadImage, OSError):
        pass
    jpeg = store.images.thumbnail(image_id)  # psycopg serialises the decode threads' statements on the one connection
    if jpeg is None:
        return None, True, "the file changed or is gone, and no thumbnail is stored"
    try:
        with Image.open(io.BytesIO(jpeg)) as image:
            return embedder.preprocess(image.convert("RGB")), True, ""
    except (OSError, ValueError) as exc:
        return None, True, f"the file changed or is gone, and its thumbnail cannot be read: {exc}"


def use(store: Store, spec: ModelSpec, collection: str) -> str:
    """Make `spec` the collection's search model, in one transaction; returns the model it replaces."""
    target = get_collection(store, collection)
    record, ready = _held(store, target, spec)
    previous = str(model_of(target))
    if record.id == target.model_id:
        raise InvalidInput(f"collection {target.name!r} searches with {spec} already")
    if not ready:
        missing = store.models.count_without_vector(target.id, record.id)
        raise NotReady(
            f"model {spec} is not fully added to {target.name!r} yet ({missing} image(s) without its vector, or its"
            f" index not built): finish with imagedb models add {spec} -c {target.name}"
        )
    if not store.index.valid_hnsw_indexes(record.id):
        raise NotReady(f"model {spec} has no valid index yet: run imagedb models add {spec} -c {target.name} again")
    # Searches embed their texts with it from now on: weights missing or changed would fail or mislead them all.
    provenance.verify(ModelSpec(record.name, record.pretrained), record)
    missing = store.models.switch_model(target.id, record.id)
    if missing:
        raise NotReady(
            f"{missing} image(s) of {target.name!r} were stored without a vector of {spec} (an ingest that started"
            f" before the add): run imagedb models add {spec} -c {target.name} again, then switch"
        )
    return previous


def drop(store: Store, spec: ModelSpec, collection: str) -> DropSummary:
    """Delete the collection's vectors of `spec` (not its search model); the index and the model row go too
    once no collection holds the model."""
    target = get_collection(store, collection)
    record, _ = _held(store, target, spec)
    if record.id == target.model_id:
        others = [
            str(ModelSpec(r.name, r.pretrained)) for r, ok in store.models.held_models(target.id) if r.id != record.id
        ]
        hint = (
            f"switch first: imagedb models use {others[0]} -c {target.name}"
            if others
            else "it holds no other model, so it would have no vectors left"
        )
        raise InvalidInput(f"{spec} is the model collection {target.name!r} searches with: {hint}")
    with store.models.adding_lock(target.id, record.id) as locked:
        if not locked:
            raise NotReady(f"`imagedb models add {spec}` into {target.name!r} is running: stop it first")
        deleted, unused = store.models.release_model(target.id, record.id)
    dropped = store.models.drop_unused_model(record.id) if unused else False
    return DropSummary(target.name, str(spec), deleted, dropped)


def move(store: Store, spec: ModelSpec, new_checkpoint: Path) -> ModelSpec:
    """Point a registered model at its checkpoint's new place: the same weights (the SHA-256 recorded at
    registration), so every vector stays valid. A different file is a different model: `models add` it."""
    record = store.models.model_record(spec.name, spec.pretrained)
    if record is None:
        raise InvalidInput(f"no model {spec} is registered (`imagedb models list` shows them)")
    if spec.checkpoint is None:
        raise InvalidInput(f"{spec} names no checkpoint file: only a local checkpoint can move")
    moved = ModelSpec.parse(f"{spec.name}:{new_checkpoint}")
    if moved.checkpoint is None or not moved.checkpoint.is_file():
        raise InvalidInput(f"no checkpoint file at {new_checkpoint}")
    if record.checkpoint_sha256 is None:
        raise InvalidInput(
            f"model {spec} was registered before imagedb recorded checkpoints' SHA-256, so nothing proves"
            f" {new_checkpoint} holds the same weights: `imagedb models add` it as a new model instead"
        )
    digest, _ = provenance.file_digest(moved.checkpoint)
    if digest != record.checkpoint_sha256:
        raise InvalidInput(
            f"{new_checkpoint} is not the checkpoint of {spec} (SHA-256 {digest[:12]}…, registered"
            f" {record.checkpoint_sha256[:12]}…): a different file is a different model, `imagedb models add` it"
        )
    store.models.move_model(record.id, moved.pretrained)
    return moved
