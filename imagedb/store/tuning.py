"""Relevance samples and search tuning: the random sample of each collection's vectors that relevance compares a
query's scores with, the tuned ef_search, and the recall measured last, per collection and model."""

from __future__ import annotations

from typing import Any

import numpy as np
from pgvector import HalfVector
from psycopg import sql

from imagedb.store import metrics
from imagedb.store.base import Part
from imagedb.store.records import Collection
from imagedb.store.settings import set_local

# Advisory lock class for redrawing a relevance sample; the second key is the collection.
_SAMPLE_LOCK = 0x1A6F


class TuningStore(Part):
    def collection_size(self, collection: Collection) -> int:
        """How many of the collection's images have an embedding of its model."""
        row = self.conn.execute(
            "SELECT count(*) FROM embeddings e JOIN images i ON i.id = e.image_id"
            " WHERE e.model_id = %s AND i.collection_id = %s",
            (collection.model_id, collection.id),
        ).fetchone()
        return int(row[0])  # type: ignore[index]

    def tuning(self, collection: Collection) -> dict[str, Any] | None:
        """The collection's search_tuning row (sample, ef_search, last recall), None when it has none."""
        cur = self.conn.execute(
            "SELECT * FROM search_tuning WHERE collection_id = %s AND model_id = %s",
            (collection.id, collection.model_id),
        )
        row = cur.fetchone()
        return dict(zip([c.name for c in cur.description or []], row, strict=True)) if row else None

    def draw_relevance_sample(self, collection: Collection, size: int) -> int:
        """Replace the collection's relevance sample by `size` images drawn at random; returns the collection's
        size, recorded with the sample (relevance.py redraws it once the collection has grown)."""
        with self.conn.transaction():
            # Two ingests of one collection finishing together both redraw: one at a time, or the second's
            # DELETE misses the first's new rows and its INSERT hits them (found by the concurrent-ingest test).
            self.conn.execute("SELECT pg_advisory_xact_lock(%s, %s)", (_SAMPLE_LOCK, collection.id))
            self.conn.execute(
                "DELETE FROM relevance_samples WHERE collection_id = %s AND model_id = %s",
                (collection.id, collection.model_id),
            )
            self.conn.execute(
                "INSERT INTO relevance_samples (collection_id, model_id, image_id)"
                " SELECT %(c)s, %(m)s, i.id FROM images i JOIN embeddings e ON e.image_id = i.id AND e.model_id = %(m)s"
                " WHERE i.collection_id = %(c)s ORDER BY random() LIMIT %(n)s ON CONFLICT DO NOTHING",
                {"c": collection.id, "m": collection.model_id, "n": size},
            )
            count = self.collection_size(collection)
            self.conn.execute(
                "INSERT INTO search_tuning (collection_id, model_id, sampled_at, sampled_count)"
                " VALUES (%s, %s, now(), %s) ON CONFLICT (collection_id, model_id)"
                " DO UPDATE SET sampled_at = excluded.sampled_at, sampled_count = excluded.sampled_count",
                (collection.id, collection.model_id, count),
            )
        return count

    def score_baseline(
        self, collection: Collection, query: np.ndarray, metric: str = "cosine"
    ) -> tuple[float, float, int]:
        """Mean and standard deviation of the query's score in `metric` (cosine similarity by default) against the
        collection's relevance sample, and how many sampled images have one (0: no sample; then mean and deviation
        are 0)."""
        vector = sql.SQL("e.embedding::halfvec({})").format(sql.Literal(collection.dim))
        score = metrics.score(metric, sql.SQL("({})").format(metrics.key(metric, vector)))
        row = self.conn.execute(
            sql.SQL(
                "SELECT coalesce(avg(s), 0), coalesce(stddev_pop(s), 0), count(s) FROM ("
                " SELECT {score} AS s FROM relevance_samples r"
                " JOIN embeddings e ON e.image_id = r.image_id AND e.model_id = r.model_id"
                " WHERE r.collection_id = %(c)s AND r.model_id = %(m)s"
                # A sampled vector of zero length is no image's neighbour under any measure (searches leave it
                # out), so it is left out of the baseline too; its NaN cosine would make every relevance NaN.
                " AND ({vector} <=> %(q)s) <> 'NaN') scores"
                " WHERE s <> 'NaN'"
            ).format(score=score, vector=vector),
            {"q": HalfVector(query), "c": collection.id, "m": collection.model_id, **metrics.params(metric, query)},
        ).fetchone()
        mean, std, n = row  # type: ignore[misc]
        return float(mean), float(std), int(n)

    def sample_vectors(self, collection: Collection, count: int, seed: float) -> tuple[list[int], np.ndarray]:
        """`count` of the collection's images at random (repeatably for one seed, -1 to 1), with their vectors:
        the queries of a recall check."""
        with self.conn.transaction():
            self.conn.execute("SELECT setseed(%s)", (seed,))
            rows = self.conn.execute(
                "SELECT i.id, e.embedding FROM images i JOIN embeddings e ON e.image_id = i.id AND e.model_id = %s"
                " WHERE i.collection_id = %s ORDER BY random() LIMIT %s",
                (collection.model_id, collection.id, count),
            ).fetchall()
        ids = [int(r[0]) for r in rows]
        vectors = np.array([r[1].to_numpy() for r in rows], dtype=np.float32).reshape(len(rows), collection.dim)
        return ids, vectors

    def recent_texts(self, collection: Collection, count: int) -> np.ndarray:
        """The vectors of the `count` query texts this model embedded most recently (the text cache): what users
        ask, the text queries of a recall check."""
        rows = self.conn.execute(
            "SELECT embedding FROM text_embeddings WHERE model_id = %s ORDER BY created_at DESC, text_sha256 LIMIT %s",
            (collection.model_id, count),
        ).fetchall()
        return np.array([r[0].to_numpy() for r in rows], dtype=np.float32).reshape(len(rows), collection.dim)

    def exact_nearest(self, collection: Collection, query: np.ndarray, k: int, exclude: int | None = None) -> list[int]:
        """The true `k` nearest image ids (ties by id), `exclude` left out: a scan of every vector, no index. The
        answer recall is measured against."""
        # No cast to halfvec(dim), which only matches the HNSW index's expression: this scan uses no index, and the
        # cast costs every row a check and a copy (about 12% of the scan: bench/results/exact.txt).
        vector = sql.SQL("e.embedding")
        with self.conn.transaction():
            set_local(self.conn, {"enable_indexscan": "off", "enable_bitmapscan": "off"})
            rows = self.conn.execute(
                sql.SQL(
                    "SELECT i.id FROM embeddings e JOIN images i ON i.id = e.image_id"
                    " WHERE e.model_id = %(m)s AND i.collection_id = %(c)s AND i.id IS DISTINCT FROM %(x)s"
                    " ORDER BY {v} <=> %(q)s, i.id LIMIT %(k)s"
                ).format(v=vector),
                {"q": HalfVector(query), "c": collection.id, "m": collection.model_id, "k": k, "x": exclude},
                prepare=False,
            ).fetchall()
        return [int(r[0]) for r in rows]

    def save_tuned_ef_search(
        self,
        collection: Collection,
        ef_search: int,
        target: float,
        recall: float,
        count: int,
        text: tuple[int, float, str] | None = None,
    ) -> None:
        """Store the ef_search that `imagedb tune` chose, with the recall it measured at it; `text` is text
        queries' own (ef_search, recall at it, what they were)."""
        values: dict[str, Any] = {
            "ef_search": ef_search,
            "target_recall": target,
            "recall": recall,
            "recall_ef_search": ef_search,
            "recall_count": count,
        }
        if text is not None:
            values |= {
                "text_ef_search": text[0],
                "text_recall": text[1],
                "text_recall_ef_search": text[0],
                "text_queries": text[2],
            }
        self._upsert_tuning(collection, values)

    def save_recall(
        self,
        collection: Collection,
        recall: float,
        ef_search: int,
        count: int,
        text: tuple[int, float, str] | None = None,
    ) -> None:
        """Store the recall measured at the ef_search searches use (`imagedb db check --recall`); `text` as the
        text queries' (ef_search in use, recall at it, what they were)."""
        values: dict[str, Any] = {"recall": recall, "recall_ef_search": ef_search, "recall_count": count}
        if text is not None:
            values |= {"text_recall_ef_search": text[0], "text_recall": text[1], "text_queries": text[2]}
        self._upsert_tuning(collection, values)

    def _upsert_tuning(self, collection: Collection, values: dict[str, Any]) -> None:
        columns = [*values, "recall_at"]
        statement = sql.SQL(
            "INSERT INTO search_tuning (collection_id, model_id, {cols}) VALUES (%s, %s, {vals}, now())"
            " ON CONFLICT (collection_id, model_id) DO UPDATE SET {sets}"
        ).format(
            cols=sql.SQL(", ").join(map(sql.Identifier, columns)),
            vals=sql.SQL(", ").join([sql.Placeholder()] * len(values)),
            sets=sql.SQL(", ").join(sql.SQL("{0} = excluded.{0}").format(sql.Identifier(c)) for c in columns),
        )
        with self.conn.transaction():
            self.conn.execute(statement, (collection.id, collection.model_id, *values.values()))
