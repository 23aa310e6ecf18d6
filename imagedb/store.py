"""Every SQL statement imagedb runs, behind one small class. Values are always bound parameters; the only
composed pieces are integers (a model's id and dimension) and identifiers, built with psycopg.sql."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
import psycopg
from pgvector import HalfVector
from psycopg import sql
from psycopg.types.json import Jsonb

from imagedb.db import HNSW_INDEX_PREFIX

DEFAULT_HNSW_M = 16
DEFAULT_HNSW_EF_CONSTRUCTION = 64


@dataclass(frozen=True)
class Collection:
    id: int
    name: str
    model_id: int
    model_name: str
    pretrained: str
    dim: int


@dataclass(frozen=True)
class ImageRecord:
    """One decoded file, ready to store (see images.decode)."""

    path: str
    sha256: str
    size_bytes: int
    mtime: datetime
    width: int
    height: int
    format: str
    taken_at: datetime | None
    camera_make: str | None
    camera_model: str | None
    orientation: int | None
    exif: dict[str, Any]
    thumbnail: bytes
    thumbnail_size: tuple[int, int]


@dataclass(frozen=True)
class Hit:
    image_id: int
    path: str
    score: float


def _nearest_query(collection: Collection, query: np.ndarray, limit: int) -> tuple[sql.Composed, dict[str, Any]]:
    # The cast to the model's dimension is what matches the expression of the model's partial HNSW index.
    vector = sql.SQL("e.embedding::halfvec({})").format(sql.Literal(collection.dim))
    statement = sql.SQL(
        "SELECT i.id, i.path, 1 - ({vector} <=> %(q)s) AS score"
        " FROM embeddings e JOIN images i ON i.id = e.image_id"
        " WHERE e.model_id = %(model_id)s AND i.collection_id = %(collection_id)s"
        " ORDER BY {vector} <=> %(q)s LIMIT %(limit)s"
    ).format(vector=vector)
    params = {"q": HalfVector(query), "model_id": collection.model_id, "collection_id": collection.id, "limit": limit}
    return statement, params


class Store:
    def __init__(self, conn: psycopg.Connection) -> None:
        self.conn = conn

    def close(self) -> None:
        self.conn.close()

    # -- models and collections ------------------------------------------------------------------------------

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
            raise ValueError(f"model {name}:{pretrained} is registered with dimension {stored_dim}, not {dim}")
        return int(model_id)

    def _create_hnsw_index(self, model_id: int, dim: int, m: int, ef_construction: int) -> None:
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
        self.conn.commit()
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

    # -- ingest ----------------------------------------------------------------------------------------------

    def file_states(self, collection_id: int) -> dict[str, tuple[int, datetime]]:
        """path -> (size, mtime) of every image stored in the collection: what a rerun may skip."""
        rows = self.conn.execute(
            "SELECT path, size_bytes, mtime FROM images WHERE collection_id = %s", (collection_id,)
        ).fetchall()
        self.conn.commit()
        return {path: (size, mtime) for path, size, mtime in rows}

    def vectors_by_sha256(self, model_id: int, sha256s: Sequence[str]) -> dict[str, np.ndarray]:
        """Stored embeddings of identical content anywhere in the database, so it is not embedded twice."""
        rows = self.conn.execute(
            "SELECT DISTINCT ON (i.sha256) i.sha256, e.embedding FROM images i"
            " JOIN embeddings e ON e.image_id = i.id AND e.model_id = %s WHERE i.sha256 = ANY(%s)",
            (model_id, list(sha256s)),
        ).fetchall()
        self.conn.commit()
        return {sha: vec.to_numpy().astype(np.float32) for sha, vec in rows}

    def start_run(self, collection_id: int) -> int:
        with self.conn.transaction():
            row = self.conn.execute(
                "INSERT INTO ingest_runs (collection_id) VALUES (%s) RETURNING id", (collection_id,)
            ).fetchone()
        return int(row[0])  # type: ignore[index]

    def write_batch(
        self,
        collection_id: int,
        model_id: int,
        run_id: int,
        records: Sequence[ImageRecord],
        vectors: Sequence[np.ndarray],
        errors: Iterable[tuple[str, str]],
    ) -> None:
        """Store one batch in one transaction: a crash loses at most this batch, never half an image."""
        with self.conn.transaction(), self.conn.cursor() as cur:
            # A file that changed since the last run is replaced whole, with everything derived from it.
            cur.execute(
                "DELETE FROM images WHERE collection_id = %s AND path = ANY(%s)",
                (collection_id, [r.path for r in records]),
            )
            cur.executemany(
                "INSERT INTO images (collection_id, path, sha256, size_bytes, mtime, width, height, format,"
                " taken_at, camera_make, camera_model, orientation, exif)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING id",
                [
                    (
                        collection_id, r.path, r.sha256, r.size_bytes, r.mtime, r.width, r.height, r.format,
                        r.taken_at, r.camera_make, r.camera_model, r.orientation, Jsonb(r.exif),
                    )
                    for r in records
                ],
                returning=True,
            )
            ids = []
            while True:
                ids.append(cur.fetchone()[0])  # type: ignore[index]
                if not cur.nextset():
                    break
            with cur.copy("COPY embeddings (image_id, model_id, embedding) FROM STDIN WITH (FORMAT BINARY)") as copy:
                copy.set_types(["bigint", "integer", "halfvec"])
                for image_id, vector in zip(ids, vectors):
                    copy.write_row((image_id, model_id, HalfVector(vector)))
            with cur.copy("COPY thumbnails (image_id, jpeg, width, height) FROM STDIN WITH (FORMAT BINARY)") as copy:
                copy.set_types(["bigint", "bytea", "integer", "integer"])
                for image_id, r in zip(ids, records):
                    copy.write_row((image_id, r.thumbnail, *r.thumbnail_size))
            cur.executemany(
                "INSERT INTO ingest_errors (run_id, path, reason) VALUES (%s, %s, %s)",
                [(run_id, path, reason) for path, reason in errors],
            )

    def finish_run(self, run_id: int, added: int, skipped: int, reused: int, failed: int) -> None:
        with self.conn.transaction():
            self.conn.execute(
                "UPDATE ingest_runs SET finished_at = now(), added = %s, skipped = %s, reused = %s, failed = %s"
                " WHERE id = %s",
                (added, skipped, reused, failed, run_id),
            )

    def run_errors(self, run_id: int) -> list[tuple[str, str]]:
        rows = self.conn.execute(
            "SELECT path, reason FROM ingest_errors WHERE run_id = %s ORDER BY id", (run_id,)
        ).fetchall()
        self.conn.commit()
        return [(path, reason) for path, reason in rows]

    # -- search ----------------------------------------------------------------------------------------------

    def image_vector(self, image_id: int, model_id: int) -> np.ndarray | None:
        row = self.conn.execute(
            "SELECT embedding FROM embeddings WHERE image_id = %s AND model_id = %s", (image_id, model_id)
        ).fetchone()
        self.conn.commit()
        return row[0].to_numpy().astype(np.float32) if row else None

    def nearest(self, collection: Collection, query: np.ndarray, limit: int, ef_search: int | None) -> list[Hit]:
        """The `limit` images nearest to `query` by cosine distance, through the model's HNSW index."""
        statement, params = _nearest_query(collection, query, limit)
        with self.conn.transaction():
            # Other collections sharing the model are filtered out after the index scan; an iterative scan
            # keeps reading the index until `limit` rows of this collection are found.
            self.conn.execute("SELECT set_config('hnsw.iterative_scan', 'strict_order', true)")
            if ef_search is not None:
                self.conn.execute("SELECT set_config('hnsw.ef_search', %s, true)", (str(ef_search),))
            rows = self.conn.execute(statement, params).fetchall()
        return [Hit(int(image_id), path, float(score)) for image_id, path, score in rows]

    def explain_nearest(self, collection: Collection, query: np.ndarray, limit: int) -> str:
        """EXPLAIN of the query nearest() runs: tests assert that it reads the HNSW index."""
        statement, params = _nearest_query(collection, query, limit)
        rows = self.conn.execute(sql.SQL("EXPLAIN ") + statement, params).fetchall()
        self.conn.commit()
        return "\n".join(r[0] for r in rows)

    def all_vectors(self, collection: Collection) -> tuple[list[int], np.ndarray]:
        """Every (image id, vector) of a collection, for exact search and checks."""
        rows = self.conn.execute(
            "SELECT i.id, e.embedding FROM embeddings e JOIN images i ON i.id = e.image_id"
            " WHERE e.model_id = %s AND i.collection_id = %s ORDER BY i.id",
            (collection.model_id, collection.id),
        ).fetchall()
        self.conn.commit()
        ids = [int(r[0]) for r in rows]
        matrix = np.array([r[1].to_numpy() for r in rows], dtype=np.float32).reshape(len(rows), collection.dim)
        return ids, matrix

    # -- information -----------------------------------------------------------------------------------------

    def server_versions(self) -> tuple[str, str]:
        row = self.conn.execute(
            "SELECT current_setting('server_version'),"
            " (SELECT extversion FROM pg_extension WHERE extname = 'vector')"
        ).fetchone()
        self.conn.commit()
        return row[0], row[1]  # type: ignore[index]

    def collection_stats(self) -> list[dict[str, Any]]:
        rows = self.conn.execute(
            "SELECT c.name, m.name, m.pretrained, m.dim,"
            " (SELECT count(*) FROM images i WHERE i.collection_id = c.id),"
            " (SELECT count(*) FROM embeddings e JOIN images i ON i.id = e.image_id WHERE i.collection_id = c.id),"
            " (SELECT count(*) FROM ingest_errors r JOIN ingest_runs u ON u.id = r.run_id"
            "   WHERE u.collection_id = c.id)"
            " FROM collections c JOIN embedding_models m ON m.id = c.model_id ORDER BY c.name"
        ).fetchall()
        self.conn.commit()
        keys = ("collection", "model", "pretrained", "dim", "images", "embeddings", "errors")
        return [dict(zip(keys, r)) for r in rows]
