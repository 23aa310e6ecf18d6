"""Who may read and write: roles for BI tools and for ingest, and forgetting images for good."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from imagedb.collection import get_collection
from imagedb.errors import InvalidInput, NotFound
from imagedb.store import Store
from imagedb.store.admin import FORGET_TABLES

# What BI tools may see: plain metadata, no vectors, thumbnails, raw EXIF (which can hold GPS) or attributes.
READER_VIEWS = ("image_catalog", "collection_stats", "duplicate_report", "dicom_catalog")
# The SQL searches, which run as their owner and return ids, paths and scores, never vectors (migration 0012).
READER_FUNCTIONS = (
    "imagedb_nearest(halfvec, text, integer, integer, bigint, text)",
    "imagedb_similar(bigint, integer, integer, text)",
    "imagedb_search_text(text, text, integer, text)",
    "imagedb_search_hybrid(text, text, integer)",
)
# What ingest, tag, dupes, watch and tune write (never dicom_secret: writers hash DICOM UIDs through
# imagedb_uid_hash). Schema bookkeeping (alembic_version) and the model/collection
# registry are read-only for writers: a writer that changed them would break every owner command.
WRITER_TABLES = (
    "images",
    "embeddings",
    "thumbnails",
    "ingest_runs",
    "ingest_errors",
    "duplicate_groups",
    "watches",
    "watch_hashes",
    "watch_hits",
    "relevance_samples",
    "search_tuning",
    "dicom_images",
    "text_embeddings",  # a writer's text searches are cached too
    "image_words",  # captions and OCR text; the triggers on images write it as the writer
)
WRITER_READ_ONLY = ("alembic_version", "embedding_models", "collections", "collection_models", *READER_VIEWS)


@dataclass(frozen=True)
class Grant:
    created: bool  # the role did not exist before
    can_log_in: bool  # it has a password (the embedded server asks every login for one)


@dataclass(frozen=True)
class Forgotten:
    ids: list[int]
    unvacuumed: list[str]  # tables this role may not VACUUM: the deleted rows' bytes stay there until the owner does


def grant_reader(store: Store, role: str, password: str | None = None) -> Grant:
    """SELECT on the BI views and EXECUTE on the SQL searches only; the role is created (LOGIN) if missing."""
    created = store.admin.grant(role, READER_VIEWS, "SELECT", _checked_password(password))
    store.admin.grant_execute(role, READER_FUNCTIONS)
    return Grant(created, store.admin.has_password(role))


def grant_writer(store: Store, role: str, password: str | None = None) -> Grant:
    """What `imagedb ingest`, `search`, `tag`, `dupes`, `watch` and `forget` need, on existing collections and
    models; VACUUM of the tables `forget` touches where the server has the MAINTAIN privilege (PostgreSQL 17+)."""
    created = store.admin.grant(role, WRITER_TABLES, "SELECT, INSERT, UPDATE, DELETE", _checked_password(password))
    store.admin.grant(role, WRITER_READ_ONLY, "SELECT", None)
    store.admin.grant_maintain(role, FORGET_TABLES)
    store.admin.grant_sequences_and_functions(role)
    return Grant(created, store.admin.has_password(role))


def _checked_password(password: str | None) -> str | None:
    if password is not None and (not password or "\x00" in password):
        raise InvalidInput("a password cannot be empty or contain a NUL character")
    return password


def forget(store: Store, collection: str, refs: Sequence[str], *, full: bool = False) -> Forgotten:
    """Delete the images named by id, path or file name and everything derived from them, then VACUUM."""
    target = get_collection(store, collection)
    ids, unvacuumed = store.admin.forget(target.id, list(refs), full=full)
    if not ids:
        raise NotFound(f"no image {', '.join(refs)} in collection {collection!r}: give ids, paths or file names")
    return Forgotten(ids, unvacuumed)
