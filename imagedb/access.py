"""Who may read and write: roles for BI tools and for ingest, and forgetting images for good."""

from __future__ import annotations

from collections.abc import Sequence

from imagedb import collection as collections
from imagedb.errors import NotFound
from imagedb.store import Store

# What BI tools may see: plain metadata, no vectors, thumbnails, raw EXIF (which can hold GPS) or attributes.
READER_VIEWS = ("image_catalog", "collection_stats", "duplicate_report")
WRITER_TABLES = (
    "alembic_version",
    "embedding_models",
    "collections",
    "images",
    "embeddings",
    "thumbnails",
    "ingest_runs",
    "ingest_errors",
    "duplicate_groups",
    "watches",
    "watch_hashes",
    "watch_hits",
    *READER_VIEWS,
)


def grant_reader(store: Store, role: str, password: str | None = None) -> bool:
    """SELECT on the BI views only; the role is created (LOGIN) if missing. Returns whether it was created."""
    return store.grant(role, READER_VIEWS, "SELECT", password)


def grant_writer(store: Store, role: str, password: str | None = None) -> bool:
    """What `imagedb ingest`, `search`, `tag`, `dupes` and `watch` need, on existing collections and models."""
    created = store.grant(role, WRITER_TABLES, "SELECT, INSERT, UPDATE, DELETE", password)
    store.grant_sequences_and_functions(role)
    return created


def forget(store: Store, collection: str, refs: Sequence[str]) -> list[int]:
    """Delete the images named by id, path or file name and everything derived from them."""
    target = collections.get(store, collection)
    ids = store.forget(target.id, list(refs))
    if not ids:
        raise NotFound(f"no image {', '.join(refs)} in collection {collection!r}: give ids, paths or file names")
    return ids
