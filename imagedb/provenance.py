"""Where a model's vectors come from: registration with provenance, and the weights file checked before each use.

A model is registered (embedding_models) with the SHA-256 and size of its weights file, the open_clip and torch
versions, its image preprocessing and its tokenizer. Before an ingest or `imagedb models add` stores vectors of a
registered model, and before a search embeds a query with it (search.load_model), its weights file is hashed again:
a checkpoint replaced under the same path is a different model, and its vectors would silently mix with the old
ones in one index, or rank a query against them (and stay in the text-query cache), so it is refused.
"""

from __future__ import annotations

import hashlib
import os
from contextlib import suppress
from pathlib import Path

import psycopg

from imagedb import embed
from imagedb.embed import Embedder, ModelSpec
from imagedb.errors import ModelUnavailable
from imagedb.store import Store
from imagedb.store.records import ModelRecord


class CheckpointChanged(ModelUnavailable):
    """A registered model's weights file no longer has the SHA-256 recorded when it was registered."""


# (path, device, inode, size, mtime_ns) -> SHA-256: a file is hashed once per process while it stays the same.
_digests: dict[tuple[str, int, int, int, int], str] = {}


def file_digest(path: Path) -> tuple[str, int]:
    """The file's SHA-256 (hex) and size."""
    stat = path.stat()
    key = (str(path), stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns)
    if key not in _digests:
        with path.open("rb") as f:
            _digests[key] = hashlib.file_digest(f, "sha256").hexdigest()
    return _digests[key], stat.st_size


def weights_file(spec: ModelSpec) -> Path | None:
    """The file the model's weights are read from: its checkpoint, the weights in a local-dir, or the hub's cached
    download; None for random weights or hub weights not downloaded yet."""
    if spec.checkpoint is not None:
        return spec.checkpoint
    if spec.name.startswith("local-dir:"):
        folder = Path(spec.name[len("local-dir:") :])
        return next((p for p in (folder / "open_clip_model.safetensors", folder / "open_clip_pytorch_model.bin")
                     if p.is_file()), None)  # fmt: skip
    if not spec.has_weights:
        return None
    return _hub_cached_file(spec)


def _hub_cached_file(spec: ModelSpec) -> Path | None:
    import open_clip

    weights = embed._hub_weights(spec, open_clip)
    cached = embed.hub_cached(*weights) if weights else None
    return Path(os.path.realpath(cached[1])) if cached else None


def verify(spec: ModelSpec, record: ModelRecord) -> None:
    """Refuse a weights file that is not the one the model was registered with. Nothing to compare when the
    model was registered without a hash (random weights, or before provenance was recorded) or when hub weights
    are not downloaded yet (the download is the registered file: the hub names it by its hash)."""
    if record.checkpoint_sha256 is None:
        return
    path = weights_file(spec)
    if path is None:
        if spec.checkpoint is not None:
            raise ModelUnavailable(f"checkpoint file not found: {spec.checkpoint}")
        return
    if not path.is_file():
        raise ModelUnavailable(f"checkpoint file not found: {path}")
    digest, size = file_digest(path)
    if digest != record.checkpoint_sha256:
        raise CheckpointChanged(changed_message(spec, record, path, digest, size))


def changed_message(spec: ModelSpec, record: ModelRecord, path: Path, digest: str, size: int) -> str:
    return (
        f"checkpoint {path} of model {spec} changed since it was registered (SHA-256 {record.checkpoint_sha256[:12]}…,"
        f" {record.checkpoint_bytes} bytes; now {digest[:12]}…, {size} bytes): its vectors would not match the"
        " stored ones. Put the original file back, or give the new weights their own path and add them as another"
        " model (imagedb models add NAME:/new/path -c COLLECTION)"
    )


def load_checked(store: Store, spec: ModelSpec, *, allow_random_weights: bool = False) -> tuple[int, Embedder]:
    """The model's id and embedder, for storing vectors: registers a new model with its provenance, refuses a
    spec without weights (unless allowed) and a registered model whose weights file changed."""
    record = store.models.model_record(spec.name, spec.pretrained)
    if record is None and not allow_random_weights:
        embed.require_weights(spec)
    if record is not None:
        verify(spec, record)  # before loading: a changed file is never loaded to store vectors
    embedder = embed.load(spec)
    if record is not None and record.checkpoint_sha256 is not None:
        return record.id, embedder
    return _record(store, spec, embedder), embedder


def load_registered(store: Store, record: ModelRecord) -> Embedder:
    """The embedder of a model a collection holds, for storing vectors: its weights file verified first, and its
    provenance recorded if it was registered before provenance was."""
    spec = ModelSpec(record.name, record.pretrained)
    verify(spec, record)
    embedder = embed.load(spec)
    if record.checkpoint_sha256 is None:
        # A writer role may not update the registry: the owner's next use records it.
        with suppress(psycopg.errors.InsufficientPrivilege):
            _record(store, spec, embedder)
    return embedder


def _record(store: Store, spec: ModelSpec, embedder: Embedder) -> int:
    """Register the model with its provenance, or fill what a model registered before provenance lacks (a
    recorded value is never overwritten)."""
    path = weights_file(spec)
    digest, size = file_digest(path) if path is not None else (None, None)
    provenance = {"checkpoint_sha256": digest, "checkpoint_bytes": size, **embedder.provenance()}
    return store.models.ensure_model(spec.name, spec.pretrained, embedder.dim, provenance)


def checkpoint_problems(store: Store) -> list[str]:
    """Registered models whose weights file is missing or changed, one line each, for `imagedb db check`."""
    found = []
    for record in store.models.model_records():
        if record.checkpoint_sha256 is None:
            continue
        spec = ModelSpec(record.name, record.pretrained)
        path = weights_file(spec)
        if path is None:
            if spec.checkpoint is not None:
                found.append(f"checkpoint of model {spec} is missing: {spec.checkpoint}")
            continue
        if not path.is_file():
            found.append(f"checkpoint of model {spec} is missing: {path}")
            continue
        digest, size = file_digest(path)
        if digest != record.checkpoint_sha256:
            found.append(changed_message(spec, record, path, digest, size))
    return found
