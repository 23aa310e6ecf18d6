"""Nearest-neighbour search through the HNSW indexes, with metadata filters."""

from __future__ import annotations

from typing import Any

import numpy as np
from pgvector import HalfVector
from psycopg import sql

from imagedb.store.base import StoreBase
from imagedb.store.models import binary_expression
from imagedb.store.records import Collection, Filters, Hit

# How far an iterative index scan may read for a selective filter before giving up (pgvector's default is
# 20,000): enough for a 1% filter to fill a page of results on a million images.
MAX_SCAN_TUPLES = 100_000


# Photos carry the time they were taken; other images fall back to the file's time (in UTC).
_IMAGE_DATE = "COALESCE(i.taken_at, i.mtime AT TIME ZONE 'UTC')"


def _like_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _glob_to_like(glob: str) -> str:
    return _like_escape(glob).replace("*", "%").replace("?", "_")


def _filter_clauses(filters: Filters) -> tuple[list[str], dict[str, Any]]:
    clauses: list[str] = []
    params: dict[str, Any] = {}
    if filters.after is not None:
        clauses.append(f"{_IMAGE_DATE} >= %(after)s")
        params["after"] = filters.after
    if filters.before is not None:
        clauses.append(f"{_IMAGE_DATE} < %(before)s")
        params["before"] = filters.before
    if filters.camera is not None:
        clauses.append("concat_ws(' ', i.camera_make, i.camera_model) ILIKE %(camera)s")
        params["camera"] = f"%{_like_escape(filters.camera)}%"
    if filters.format is not None:
        clauses.append("i.format = %(format)s")
        params["format"] = filters.format
    if filters.min_width is not None:
        clauses.append("i.width >= %(min_width)s")
        params["min_width"] = filters.min_width
    if filters.min_height is not None:
        clauses.append("i.height >= %(min_height)s")
        params["min_height"] = filters.min_height
    if filters.path is not None:
        clauses.append("i.path LIKE %(path)s")
        params["path"] = _glob_to_like(filters.path)
    for n, (key, value) in enumerate(filters.attributes):
        clauses.append(f"i.attributes ->> %(attr_key_{n})s = %(attr_value_{n})s")
        params[f"attr_key_{n}"], params[f"attr_value_{n}"] = key, value
    return clauses, params


def _nearest_query(
    collection: Collection, query: np.ndarray, limit: int, offset: int, filters: Filters
) -> tuple[sql.Composed, dict[str, Any]]:
    # The cast to the model's dimension is what matches the expression of the model's partial HNSW index.
    vector = sql.SQL("e.embedding::halfvec({})").format(sql.Literal(collection.dim))
    clauses, params = _filter_clauses(filters)
    where = sql.SQL("").join(sql.SQL(" AND " + c) for c in clauses)
    depth = limit + offset
    order = sql.SQL("{} <=> %(q)s").format(vector)
    if collection.rerank is not None:
        # Binary quantisation: the Hamming index picks `rerank` candidates, the exact halfvec distance ranks them.
        order = sql.SQL("{} <~> {}").format(
            binary_expression(sql.SQL("e.embedding"), collection.dim),
            binary_expression(sql.SQL("%(q)s"), collection.dim),
        )
        depth = max(depth, collection.rerank)
    # A relaxed iterative scan may return rows slightly out of order (for better recall, as pgvector documents):
    # the outer query puts them in order.
    statement = sql.SQL(
        "WITH nearest AS MATERIALIZED ("
        " SELECT i.id, i.path, {vector} <=> %(q)s AS distance, " + _IMAGE_DATE + " AS image_date"
        " FROM embeddings e JOIN images i ON i.id = e.image_id"
        " WHERE e.model_id = %(model_id)s AND i.collection_id = %(collection_id)s{where}"
        " ORDER BY {order} LIMIT %(depth)s)"
        " SELECT id, path, 1 - distance AS score, image_date FROM nearest"
        " ORDER BY distance LIMIT %(limit)s OFFSET %(offset)s"
    ).format(vector=vector, where=where, order=order)
    params.update(
        q=HalfVector(query),
        model_id=collection.model_id,
        collection_id=collection.id,
        depth=depth,
        limit=limit,
        offset=offset,
    )
    return statement, params


def effective_ef_search(collection: Collection, ef_search: int | None) -> int | None:
    """With a binary index, the scan must keep at least `rerank` candidates (pgvector's ef_search caps what one
    scan returns; its maximum is 1000)."""
    if collection.rerank is None:
        return ef_search
    return min(max(ef_search or 0, collection.rerank), 1000)


class SearchStore(StoreBase):
    def image_vector(self, image_id: int, model_id: int) -> np.ndarray | None:
        row = self.conn.execute(
            "SELECT embedding FROM embeddings WHERE image_id = %s AND model_id = %s", (image_id, model_id)
        ).fetchone()
        return row[0].to_numpy().astype(np.float32) if row else None

    def nearest(
        self,
        collection: Collection,
        query: np.ndarray,
        limit: int,
        ef_search: int | None = None,
        *,
        offset: int = 0,
        filters: Filters = Filters(),
    ) -> list[Hit]:
        """The images nearest to `query` by cosine distance that pass `filters`, through the HNSW index."""
        statement, params = _nearest_query(collection, query, limit, offset, filters)
        with self.conn.transaction():
            # Filters (and other collections sharing the model) drop rows after the index scan; an iterative
            # scan keeps reading the index until enough rows pass, up to max_scan_tuples.
            self.conn.execute("SELECT set_config('hnsw.iterative_scan', 'relaxed_order', true)")
            self.conn.execute("SELECT set_config('hnsw.max_scan_tuples', %s, true)", (str(MAX_SCAN_TUPLES),))
            ef_search = effective_ef_search(collection, ef_search)
            if ef_search is not None:
                self.conn.execute("SELECT set_config('hnsw.ef_search', %s, true)", (str(ef_search),))
            # Not prepared: after five runs PostgreSQL may switch a prepared statement to a generic plan, chosen
            # without the LIMIT and filter values, which need not read the index.
            rows = self.conn.execute(statement, params, prepare=False).fetchall()
        return [Hit(int(image_id), path, float(score), date) for image_id, path, score, date in rows]

    def explain_nearest(
        self, collection: Collection, query: np.ndarray, limit: int, filters: Filters = Filters()
    ) -> str:
        """EXPLAIN of the query nearest() runs: tests assert that it reads the HNSW index."""
        statement, params = _nearest_query(collection, query, limit, 0, filters)
        rows = self.conn.execute(sql.SQL("EXPLAIN ") + statement, params).fetchall()
        return "\n".join(r[0] for r in rows)

    def all_vectors(self, collection: Collection) -> tuple[list[int], np.ndarray]:
        """Every (image id, vector) of a collection, for exact search and checks."""
        rows = self.conn.execute(
            "SELECT i.id, e.embedding FROM embeddings e JOIN images i ON i.id = e.image_id"
            " WHERE e.model_id = %s AND i.collection_id = %s ORDER BY i.id",
            (collection.model_id, collection.id),
        ).fetchall()
        ids = [int(r[0]) for r in rows]
        matrix = np.array([r[1].to_numpy() for r in rows], dtype=np.float32).reshape(len(rows), collection.dim)
        return ids, matrix
