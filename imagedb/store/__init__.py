"""Every SQL statement imagedb runs, behind one class assembled from one module per table family.
Values are always bound parameters; the only composed pieces are integers (a model's id and dimension) and
identifiers, built with psycopg.sql. See base.py for the transaction discipline."""

from __future__ import annotations

from imagedb.store.duplicates import HASH_EDGES_SQL, DuplicatesStore
from imagedb.store.images import ImagesStore
from imagedb.store.models import BUILD_MEMORY, DEFAULT_HNSW_EF_CONSTRUCTION, DEFAULT_HNSW_M, ModelsStore
from imagedb.store.records import Collection, Filters, Hit, ImageRecord
from imagedb.store.roles import RolesStore
from imagedb.store.search import MAX_SCAN_TUPLES, SearchStore
from imagedb.store.tuning import TuningStore


class Store(ModelsStore, ImagesStore, SearchStore, DuplicatesStore, RolesStore, TuningStore):
    """The database as imagedb uses it; takes an autocommit connection (imagedb.db.connect makes one)."""


__all__ = [
    "BUILD_MEMORY",
    "DEFAULT_HNSW_EF_CONSTRUCTION",
    "DEFAULT_HNSW_M",
    "HASH_EDGES_SQL",
    "MAX_SCAN_TUPLES",
    "Collection",
    "Filters",
    "Hit",
    "ImageRecord",
    "Store",
]
