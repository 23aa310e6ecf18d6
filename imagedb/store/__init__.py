"""Every SQL statement imagedb runs on its own tables, behind one Store made of one part per table family:
`store.images`, `store.models`, `store.index`, `store.leftovers`, `store.search`, `store.dupes`, `store.tuning`,
`store.admin`, `store.browse`, `store.citus`, `store.claims`,
`store.exclusions`, `store.keywords`. Values are always bound parameters; the only composed pieces are
integers (a model's id and dimension) and identifiers, built with psycopg.sql.
See base.py for the transaction discipline."""

from __future__ import annotations

import psycopg

from imagedb.store.admin import AdminStore
from imagedb.store.base import StoreBase
from imagedb.store.browse import BrowseStore
from imagedb.store.citus import CitusStore
from imagedb.store.claims import ClaimsStore
from imagedb.store.duplicates import HASH_EDGES_SQL, DuplicatesStore
from imagedb.store.exclusions import ExclusionsStore
from imagedb.store.images import ImagesStore
from imagedb.store.index import BUILD_MEMORY, DEFAULT_HNSW_EF_CONSTRUCTION, DEFAULT_HNSW_M, IndexStore
from imagedb.store.keywords import KeywordsStore
from imagedb.store.leftovers import LeftoverStore
from imagedb.store.models import ModelsStore
from imagedb.store.records import Collection, Filters, Hit, ImageRecord
from imagedb.store.search import MAX_SCAN_TUPLES, SearchStore
from imagedb.store.tuning import TuningStore


class Store(StoreBase):
    """The database as imagedb uses it; takes an autocommit connection (imagedb.pg.connection.connect makes one)."""

    def __init__(self, conn: psycopg.Connection) -> None:
        super().__init__(conn)
        self.images = ImagesStore(self)
        self.models = ModelsStore(self)
        self.index = IndexStore(self)
        self.leftovers = LeftoverStore(self)
        self.search = SearchStore(self)
        self.dupes = DuplicatesStore(self)
        self.tuning = TuningStore(self)
        self.admin = AdminStore(self)
        self.browse = BrowseStore(self)
        self.citus = CitusStore(self)
        self.claims = ClaimsStore(self)
        self.exclusions = ExclusionsStore(self)
        self.keywords = KeywordsStore(self)


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
