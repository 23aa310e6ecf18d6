"""Models and collections: each model's row and its HNSW index, and the collections bound to them."""

from __future__ import annotations

from contextlib import suppress

import psycopg
from psycopg import sql

from imagedb.db import HNSW_INDEX_PREFIX
from imagedb.errors import ModelMismatch
from imagedb.store.base import StoreBase
from imagedb.store.records import Collection

DEFAULT_HNSW_M = 16
DEFAULT_HNSW_EF_CONSTRUCTION = 64
BUILD_MEMORY = "1GB"


class ModelsStore(StoreBase):
    def ensure_model(self, name: str, pretrained: str, dim: int) -> int:
        """The id of this model, registered with its own HNSW index on first use."""
        with self.conn.transaction():
            self.conn.execute(
                "INSERT INTO embedding_models (name, pretrained, dim) VALUES (%s, %s, %s)"
                " ON CONFLICT (name, pretrained) DO NOTHING",
                (name, pretrained, dim),
            )
            model_id, stored_dim = self.conn.execute(
                "SELECT id, dim FROM embedding_models WHERE name = %s AND pretrained = %s", (name, pretrained)
            ).fetchone()  # type: ignore[misc]
            if stored_dim == dim:
                self._create_hnsw_index(model_id, dim, DEFAULT_HNSW_M, DEFAULT_HNSW_EF_CONSTRUCTION)
        if stored_dim != dim:
            raise ModelMismatch(f"model {name}:{pretrained} is registered with dimension {stored_dim}, not {dim}")
        return int(model_id)

    def _create_hnsw_index(self, model_id: int, dim: int, m: int, ef_construction: int) -> None:
        # Measured (bench/vectors_bench.py): the build's graph must fit in maintenance_work_mem to stay fast.
        self.conn.execute("SELECT set_config('maintenance_work_mem', %s, true)", (BUILD_MEMORY,))
        self.conn.execute(
            sql.SQL(
                "CREATE INDEX IF NOT EXISTS {name} ON embeddings"
                " USING hnsw ((embedding::halfvec({dim})) halfvec_cosine_ops)"
                " WITH (m = {m}, ef_construction = {efc}) WHERE model_id = {model_id}"
            ).format(
                name=sql.Identifier(f"{HNSW_INDEX_PREFIX}{model_id}"),
                dim=sql.Literal(dim),
                m=sql.Literal(m),
                efc=sql.Literal(ef_construction),
                model_id=sql.Literal(model_id),
            )
        )

    def drop_hnsw_index(self, model_id: int) -> str | None:
        """Drop a model's HNSW index before a bulk load; returns its definition, to build it again after."""
        name = f"{HNSW_INDEX_PREFIX}{model_id}"
        try:
            with self.conn.transaction():
                row = self.conn.execute("SELECT indexdef FROM pg_indexes WHERE indexname = %s", (name,)).fetchone()
                self.conn.execute(sql.SQL("DROP INDEX IF EXISTS {}").format(sql.Identifier(name)))
        except psycopg.errors.InsufficientPrivilege:
            return None  # a writer role may not drop it: the load goes into the index, slower but fine
        return row[0] if row else None

    def restore_hnsw_index(self, model_id: int, dim: int, definition: str | None) -> None:
        """Build the model's HNSW index if it is missing: from a saved definition, else with the defaults.
        A role that may not build it leaves it to the owner (`imagedb db check` reports it missing)."""
        with suppress(psycopg.errors.InsufficientPrivilege), self.conn.transaction():
            name = f"{HNSW_INDEX_PREFIX}{model_id}"
            if self.conn.execute("SELECT to_regclass(%s)", (name,)).fetchone()[0] is not None:  # type: ignore[index]
                return
            if definition is None:
                self._create_hnsw_index(model_id, dim, DEFAULT_HNSW_M, DEFAULT_HNSW_EF_CONSTRUCTION)
            else:
                self.conn.execute("SELECT set_config('maintenance_work_mem', %s, true)", (BUILD_MEMORY,))
                # PostgreSQL's own text of the index drop_hnsw_index removed: it keeps custom m / ef_construction.
                self.conn.execute(definition.encode())

    def embedding_count(self, model_id: int) -> int:
        row = self.conn.execute("SELECT count(*) FROM embeddings WHERE model_id = %s", (model_id,)).fetchone()
        return int(row[0])  # type: ignore[index]

    def rebuild_indexes(self, m: int, ef_construction: int) -> list[str]:
        """Recreate every model's HNSW index with new build parameters; returns the index names."""
        names = []
        with self.conn.transaction():
            for model_id, dim in self.conn.execute("SELECT id, dim FROM embedding_models ORDER BY id").fetchall():
                name = f"{HNSW_INDEX_PREFIX}{model_id}"
                self.conn.execute(sql.SQL("DROP INDEX IF EXISTS {}").format(sql.Identifier(name)))
                self._create_hnsw_index(model_id, dim, m, ef_construction)
                names.append(name)
        return names

    def get_collection(self, name: str) -> Collection | None:
        row = self.conn.execute(
            "SELECT c.id, c.name, c.model_id, m.name, m.pretrained, m.dim"
            " FROM collections c JOIN embedding_models m ON m.id = c.model_id WHERE c.name = %s",
            (name,),
        ).fetchone()
        return Collection(*row) if row else None

    def create_collection(self, name: str, model_id: int) -> Collection:
        """Create the collection, or return the one a concurrent process created a moment earlier."""
        with self.conn.transaction():
            self.conn.execute(
                "INSERT INTO collections (name, model_id) VALUES (%s, %s) ON CONFLICT (name) DO NOTHING",
                (name, model_id),
            )
        collection = self.get_collection(name)
        assert collection is not None
        return collection
