"""Nearest-neighbour search through the HNSW indexes, with metadata filters."""

from __future__ import annotations

from datetime import timezone
from typing import Any

import numpy as np
from pgvector import HalfVector
from psycopg import sql

from imagedb.request import IMAGE_DATE, MAX_EF_SEARCH, Filters
from imagedb.store import metrics
from imagedb.store.base import Part
from imagedb.store.index import binary_expression
from imagedb.store.records import Collection, Hit
from imagedb.store.settings import set_local

# How far an iterative index scan may read for a selective filter before giving up (pgvector's default is
# 20,000): enough for a 1% filter to fill a page of results on a million images.
MAX_SCAN_TUPLES = 100_000
# Query texts cached per model (about 1 KB each at 512 dimensions): the oldest beyond this go.
MAX_CACHED_TEXTS = 100_000

# What a cached text's row must be to be used (t: text_embeddings, m: its embedding_models row): of the model's
# dimension, of length 1 as embed.py stores every vector (halfvec rounding moves it by about 0.001), and filed
# under its own text's hash. Only the owner writes the cache (migration 0013); this guards rows from before, or
# from a hand-made INSERT. `imagedb db check` counts the others and `imagedb db repair` deletes them.
TRUSTED_TEXT_ROW = (
    "(vector_dims(t.embedding) = m.dim AND abs(l2_norm(t.embedding) - 1) <= 0.01"
    " AND t.text_sha256 = sha256(convert_to(t.text, 'UTF8')))"
)


def _nearest_query(
    collection: Collection,
    query: np.ndarray,
    limit: int,
    offset: int,
    filters: Filters,
    depth: int | None = None,
    metric: str = "cosine",
    ef_search: int | None = None,
) -> tuple[sql.Composed, dict[str, Any]]:
    """The search statement; with `depth`, duplicates are collapsed: the `depth` nearest are read, and of each
    duplicate group (the last `imagedb dupes` run) only its best-scoring member is kept, with the count of the
    group's other images. The index reads in cosine order whatever the metric; `distance` is the metric's rank key
    (metrics.py), and Pearson re-ranks a pool of candidates (metrics.pearson_pool)."""
    # The cast to the model's dimension is what matches the expression of the model's partial HNSW index.
    vector = sql.SQL("e.embedding::halfvec({})").format(sql.Literal(collection.dim))
    clauses, params = filters.clauses()  # each filter's own condition (request.FILTERS)
    where = sql.SQL("").join(sql.SQL(" AND {}").format(c) for c in clauses)
    read = limit + offset if depth is None else depth
    order = sql.SQL("{} <=> %(q)s").format(vector)
    if collection.rerank is not None:
        # Binary quantisation: the Hamming index picks `rerank` candidates, the exact halfvec distance ranks them.
        order = sql.SQL("{} <~> {}").format(
            binary_expression(sql.SQL("e.embedding"), collection.dim),
            binary_expression(sql.SQL("%(q)s"), collection.dim),
        )
        read = max(read, collection.rerank)
    if metric == "pearson":
        read = max(read, metrics.pearson_pool(limit + offset if depth is None else depth, ef_search))
    # A relaxed iterative scan may return rows slightly out of order (for better recall, as pgvector documents):
    # the outer query puts them in order, ties by id (as imagedb_nearest does).
    # A measure undefined for a stored vector leaves that candidate out: Pearson for a constant vector (NULL), the
    # cosine for one of zero length (NaN; a writer can store one). A NaN score would reach the page as null and the
    # CLI's JSON as NaN, which is not JSON.
    nearest = sql.SQL(
        "WITH candidates AS MATERIALIZED ("
        " SELECT i.id, i.path, {key} AS distance, " + IMAGE_DATE + " AS image_date"
        " FROM embeddings e JOIN images i ON i.id = e.image_id"
        " WHERE e.model_id = %(model_id)s AND i.collection_id = %(collection_id)s{where}"
        # A vector of zero length has no cosine (NaN), so the index holds no place for it: it is left out under
        # every measure, or euclidean and inner would list it only when the scan runs past the others.
        " AND ({vector} <=> %(q)s) <> 'NaN'"
        " ORDER BY {order} LIMIT %(depth)s),"
        " nearest AS MATERIALIZED (SELECT * FROM candidates WHERE distance IS NOT NULL AND distance <> 'NaN')"
    ).format(key=metrics.key(metric, vector), where=where, order=order, vector=vector)
    score = metrics.score(metric, sql.SQL("distance"))
    if depth is None:
        statement = nearest + sql.SQL(
            " SELECT id, path, {score} AS score, image_date, 0, 0 FROM nearest"
            " ORDER BY distance, id LIMIT %(limit)s OFFSET %(offset)s"
        ).format(score=score)
    else:
        # Images outside any group are groups of one (keyed by their negated id, never a group number).
        statement = nearest + sql.SQL(
            ", ranked AS (SELECT n.*, g.group_no,"
            "  row_number() OVER (PARTITION BY coalesce(g.group_no::bigint, -n.id) ORDER BY n.distance, n.id) AS r"
            "  FROM nearest n LEFT JOIN duplicate_groups g"
            "  ON g.collection_id = %(collection_id)s AND g.image_id = n.id)"
            # The group sizes by a join, not a correlated subquery per row, which Citus cannot run
            ", sizes AS (SELECT d.group_no, count(*) - 1 AS others FROM duplicate_groups d"
            "  WHERE d.collection_id = %(collection_id)s AND d.group_no IN (SELECT group_no FROM ranked WHERE r = 1)"
            "  GROUP BY d.group_no)"
            " SELECT id, path, {score} AS score, image_date, coalesce(s.others, 0), (SELECT count(*) FROM candidates)"
            " FROM ranked LEFT JOIN sizes s USING (group_no) WHERE r = 1 ORDER BY distance, id"
            " LIMIT %(limit)s OFFSET %(offset)s"
        ).format(score=score)
    params.update(
        q=HalfVector(query),
        model_id=collection.model_id,
        collection_id=collection.id,
        depth=read,
        limit=limit,
        offset=offset,
        **metrics.params(metric, query),
    )
    return statement, params


def effective_ef_search(collection: Collection, ef_search: int | None) -> int | None:
    """With a binary index, the scan must keep at least `rerank` candidates (pgvector's ef_search caps what one
    scan returns; its maximum is 1000)."""
    if collection.rerank is None:
        return ef_search
    return min(max(ef_search or 0, collection.rerank), MAX_EF_SEARCH)


# Collapsing duplicates reads this many times the page's depth first, and four times more while groups leave the
# page short, up to COLLAPSE_MAX_DEPTH candidates.
COLLAPSE_FIRST_FACTOR = 4
COLLAPSE_MAX_DEPTH = 20_000


class SearchStore(Part):
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
        collapse: bool = False,
        metric: str = "cosine",
    ) -> list[Hit]:
        """The images nearest to `query` by `metric` (request.METRICS; scores in that measure) that pass `filters`,
        through the HNSW index; with `collapse`, one per duplicate group (see _nearest_query)."""
        if not collapse:
            return self._nearest(collection, query, limit, ef_search, offset, filters, None, metric)[0]
        depth = (limit + offset) * COLLAPSE_FIRST_FACTOR
        while True:
            hits, candidates = self._nearest(collection, query, limit, ef_search, offset, filters, depth, metric)
            # Done when the page is full, the candidates ran out, or the depth reached its bound.
            if len(hits) == limit or candidates < depth or depth >= COLLAPSE_MAX_DEPTH:
                return hits
            depth = min(depth * 4, COLLAPSE_MAX_DEPTH)

    def _nearest(
        self,
        collection: Collection,
        query: np.ndarray,
        limit: int,
        ef_search: int | None,
        offset: int,
        filters: Filters,
        depth: int | None,
        metric: str,
    ) -> tuple[list[Hit], int]:
        statement, params = _nearest_query(collection, query, limit, offset, filters, depth, metric, ef_search)
        with self.conn.transaction():
            # Filters (and other collections sharing the model) drop rows after the index scan; an iterative
            # scan keeps reading the index until enough rows pass, up to max_scan_tuples.
            settings: dict[str, str | int] = {
                "hnsw.iterative_scan": "relaxed_order",
                "hnsw.max_scan_tuples": MAX_SCAN_TUPLES,
            }
            ef_search = effective_ef_search(collection, ef_search)
            if ef_search is not None:
                settings["hnsw.ef_search"] = ef_search
            set_local(self.conn, settings)
            # Not prepared: after five runs PostgreSQL may switch a prepared statement to a generic plan, chosen
            # without the LIMIT and filter values, which need not read the index.
            rows = self.conn.execute(statement, params, prepare=False).fetchall()
        # Dates in UTC with their zone, as the documented convention reads EXIF times (which carry none).
        hits = [
            Hit(int(i), path, float(score), date.replace(tzinfo=timezone.utc), int(others))
            for i, path, score, date, others, _ in rows
        ]
        # No row: how many candidates there were is unknown (a page past the last group, or none at all).
        return hits, int(rows[0][5]) if rows else (depth or 0)

    def explain_nearest(
        self,
        collection: Collection,
        query: np.ndarray,
        limit: int,
        filters: Filters = Filters(),
        metric: str = "cosine",
    ) -> str:
        """EXPLAIN of the query nearest() runs: tests assert that it reads the HNSW index."""
        statement, params = _nearest_query(collection, query, limit, 0, filters, metric=metric)
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

    # -- the text-query cache ----------------------------------------------------------------------------------

    def cached_texts(self, model_id: int, texts: list[str]) -> dict[str, np.ndarray]:
        """The stored vectors of these query texts by this model (those embedded before)."""
        if not texts:
            return {}
        # A row that is not what the model gives (another dimension, not of length 1, another text under this
        # text's hash) is not used: the text is embedded again and the row replaced (cache_texts).
        rows = self.conn.execute(
            "SELECT t.text, t.embedding FROM text_embeddings t JOIN embedding_models m ON m.id = t.model_id"
            " WHERE t.model_id = %s AND t.text_sha256 = ANY(SELECT sha256(convert_to(q, 'UTF8'))"
            " FROM unnest(%s::text[]) AS q) AND t.text = ANY(%s::text[]) AND " + TRUSTED_TEXT_ROW,
            (model_id, texts, texts),
        ).fetchall()
        return {text: vector.to_numpy().astype(np.float32) for text, vector in rows}

    def cache_texts(self, model_id: int, vectors: dict[str, np.ndarray], keep: int = MAX_CACHED_TEXTS) -> None:
        """Keep these query texts' vectors; the oldest beyond `keep` per model go, so that queries from the API
        cannot fill the disk."""
        if not vectors:
            return
        with self.conn.transaction():
            self.conn.execute(
                "INSERT INTO text_embeddings (model_id, text_sha256, text, embedding)"
                " SELECT %s, sha256(convert_to(q, 'UTF8')), q, v FROM unnest(%s::text[], %s::halfvec[]) AS u(q, v)"
                # A row that was not used (cached_texts) is replaced by what the model gave now.
                " ON CONFLICT (model_id, text_sha256) DO UPDATE"
                " SET text = EXCLUDED.text, embedding = EXCLUDED.embedding, created_at = EXCLUDED.created_at",
                (model_id, list(vectors), [HalfVector(v) for v in vectors.values()]),
            )
            self.conn.execute(
                "DELETE FROM text_embeddings WHERE model_id = %(m)s AND created_at < ("
                " SELECT created_at FROM text_embeddings WHERE model_id = %(m)s"
                " ORDER BY created_at DESC OFFSET %(keep)s LIMIT 1)",
                {"m": model_id, "keep": keep},
            )
