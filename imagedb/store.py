"""Every SQL statement imagedb runs, behind one small class. Values are always bound parameters; the only
composed pieces are integers (a model's id and dimension) and identifiers, built with psycopg.sql."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from contextlib import suppress
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
import psycopg
from pgvector import HalfVector
from psycopg import sql
from psycopg.types.json import Jsonb

from imagedb.db import HNSW_INDEX_PREFIX
from imagedb.errors import ModelMismatch

DEFAULT_HNSW_M = 16
DEFAULT_HNSW_EF_CONSTRUCTION = 64
# How far an iterative index scan may read for a selective filter before giving up (pgvector's default is
# 20,000): enough for a 1% filter to fill a page of results on a million images.
MAX_SCAN_TUPLES = 100_000
BUILD_MEMORY = "1GB"
# Each image's nearest hashes by Hamming distance; the LATERAL subquery reads the HNSW index once per image.
HASH_EDGES_SQL = (
    "SELECT i.id, n.id, n.distance FROM images i CROSS JOIN LATERAL ("
    "  SELECT j.id, (j.dhash <~> i.dhash) AS distance FROM images j"
    "  WHERE j.collection_id = i.collection_id AND j.id <> i.id AND j.dhash IS NOT NULL"
    "  ORDER BY j.dhash <~> i.dhash LIMIT %(k)s) n"
    " WHERE i.collection_id = %(c)s AND i.dhash IS NOT NULL AND n.distance <= %(max)s"
)
_WRITE_LOCK = 0x1A6E  # advisory lock class for batch writes; the second key is the collection id


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
    dhash: str | None = None  # 64 characters of 0 and 1


@dataclass(frozen=True)
class Hit:
    image_id: int
    path: str
    score: float
    date: datetime  # when taken, else the file's time


@dataclass(frozen=True)
class Filters:
    """Metadata conditions a search result must meet; every value reaches SQL as a bound parameter."""

    after: datetime | None = None  # taken_at (or file time) on or after
    before: datetime | None = None  # ... strictly before
    camera: str | None = None  # substring of "make model", any case
    format: str | None = None  # JPEG, PNG, ...
    min_width: int | None = None
    min_height: int | None = None
    path: str | None = None  # glob: * any characters, ? one character
    attributes: tuple[tuple[str, str], ...] = ()  # user attribute key = value (as text)


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
    # A relaxed iterative scan may return rows slightly out of order (for better recall, as pgvector documents):
    # the outer query puts them in order.
    statement = sql.SQL(
        "WITH nearest AS MATERIALIZED ("
        " SELECT i.id, i.path, {vector} <=> %(q)s AS distance, " + _IMAGE_DATE + " AS image_date"
        " FROM embeddings e JOIN images i ON i.id = e.image_id"
        " WHERE e.model_id = %(model_id)s AND i.collection_id = %(collection_id)s{where}"
        " ORDER BY {vector} <=> %(q)s LIMIT %(depth)s)"
        " SELECT id, path, 1 - distance AS score, image_date FROM nearest"
        " ORDER BY distance LIMIT %(limit)s OFFSET %(offset)s"
    ).format(vector=vector, where=where)
    params.update(
        q=HalfVector(query),
        model_id=collection.model_id,
        collection_id=collection.id,
        depth=limit + offset,
        limit=limit,
        offset=offset,
    )
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
        self.conn.commit()
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
    ) -> set[str]:
        """Store one batch in one transaction: a crash loses at most this batch, never half an image.

        Returns the paths it left alone because another ingest of the same collection stored them first.
        """
        with self.conn.transaction(), self.conn.cursor() as cur:
            # Concurrent ingests of one collection write one batch at a time, so the check below is reliable.
            cur.execute("SELECT pg_advisory_xact_lock(%s, %s)", (_WRITE_LOCK, collection_id))
            cur.execute(
                "SELECT path, size_bytes, mtime, attributes FROM images WHERE collection_id = %s AND path = ANY(%s)",
                (collection_id, [r.path for r in records]),
            )
            stored = {path: (size, mtime, attributes) for path, size, mtime, attributes in cur.fetchall()}
            done = {r.path for r in records if stored.get(r.path, (None, None, None))[:2] == (r.size_bytes, r.mtime)}
            todo = [(r, v) for r, v in zip(records, vectors, strict=True) if r.path not in done]
            if todo:
                self._insert_images(cur, collection_id, model_id, todo, stored)
            cur.executemany(
                "INSERT INTO ingest_errors (run_id, path, reason) VALUES (%s, %s, %s)",
                [(run_id, path, reason) for path, reason in errors],
            )
        return done

    @staticmethod
    def _insert_images(
        cur: psycopg.Cursor,
        collection_id: int,
        model_id: int,
        todo: list[tuple[ImageRecord, np.ndarray]],
        stored: dict[str, tuple[int, datetime, dict[str, Any]]],
    ) -> None:
        # A file that changed since the last run is replaced whole, with everything derived from it,
        # but the attributes a user gave it stay.
        cur.execute(
            "DELETE FROM images WHERE collection_id = %s AND path = ANY(%s)",
            (collection_id, [r.path for r, _ in todo if r.path in stored]),
        )
        cur.executemany(
            "INSERT INTO images (collection_id, path, sha256, size_bytes, mtime, width, height, format,"
            " taken_at, camera_make, camera_model, orientation, exif, attributes, dhash)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s::bit(64)) RETURNING id",
            [
                (
                    collection_id,
                    r.path,
                    r.sha256,
                    r.size_bytes,
                    r.mtime,
                    r.width,
                    r.height,
                    r.format,
                    r.taken_at,
                    r.camera_make,
                    r.camera_model,
                    r.orientation,
                    Jsonb(r.exif),
                    Jsonb(stored[r.path][2] if r.path in stored else {}),
                    r.dhash,
                )
                for r, _ in todo
            ],
            returning=True,
        )
        ids = [row[0] for _ in cur.results() for row in cur.fetchall()]
        with cur.copy("COPY embeddings (image_id, model_id, embedding) FROM STDIN WITH (FORMAT BINARY)") as copy:
            copy.set_types(["bigint", "integer", "halfvec"])
            for image_id, (_, vector) in zip(ids, todo, strict=True):
                copy.write_row((image_id, model_id, HalfVector(vector)))
        with cur.copy("COPY thumbnails (image_id, jpeg, width, height) FROM STDIN WITH (FORMAT BINARY)") as copy:
            copy.set_types(["bigint", "bytea", "integer", "integer"])
            for image_id, (r, _) in zip(ids, todo, strict=True):
                copy.write_row((image_id, r.thumbnail, *r.thumbnail_size))
        # New images that look like a watched one are recorded, and announced to LISTENers when this commits.
        cur.execute(
            "WITH hits AS ("
            "  INSERT INTO watch_hits (watch_id, image_id, distance)"
            "  SELECT n.watch_id, i.id, min(n.distance) FROM images i CROSS JOIN LATERAL ("
            "   SELECT h.watch_id, (h.hash <~> i.dhash)::integer AS distance FROM watch_hashes h"
            "   ORDER BY h.hash <~> i.dhash LIMIT 64) n"
            "  JOIN watches w ON w.id = n.watch_id"
            "  WHERE i.id = ANY(%s) AND i.dhash IS NOT NULL AND n.distance <= w.max_distance"
            "  GROUP BY n.watch_id, i.id"
            "  ON CONFLICT DO NOTHING RETURNING watch_id, image_id, distance)"
            " SELECT pg_notify('imagedb_watch', json_build_object("
            "  'watch_id', watch_id, 'image_id', image_id, 'distance', distance)::text) FROM hits",
            (ids,),
        )

    def finish_run(self, run_id: int, added: int, skipped: int, reused: int, failed: int) -> None:
        with self.conn.transaction():
            self.conn.execute(
                "UPDATE ingest_runs SET finished_at = now(), added = %s, skipped = %s, reused = %s, failed = %s"
                " WHERE id = %s",
                (added, skipped, reused, failed, run_id),
            )
        if added or reused:
            # Fresh statistics right after a bulk load: without them the planner takes the new rows for a few
            # and scans instead of reading the HNSW indexes (measured: 20x slower duplicate search at 10k images).
            self.conn.execute("ANALYZE images, embeddings")
            self.conn.commit()

    def run_errors(self, run_id: int) -> list[tuple[str, str]]:
        rows = self.conn.execute(
            "SELECT path, reason FROM ingest_errors WHERE run_id = %s ORDER BY id", (run_id,)
        ).fetchall()
        self.conn.commit()
        return [(path, reason) for path, reason in rows]

    # -- user attributes -------------------------------------------------------------------------------------

    def attribute_keys(self, collection_id: int) -> set[str]:
        rows = self.conn.execute(
            "SELECT DISTINCT jsonb_object_keys(attributes) FROM images WHERE collection_id = %s", (collection_id,)
        ).fetchall()
        self.conn.commit()
        return {r[0] for r in rows}

    def image_ids(self, collection_id: int, ref: str) -> list[int]:
        """Images named by an id, an absolute path, or a file name."""
        rows = self.conn.execute(
            "SELECT id FROM images WHERE collection_id = %(c)s"
            " AND (id::text = %(ref)s OR path = %(ref)s OR regexp_replace(path, '^.*/', '') = %(ref)s)"
            " ORDER BY id",
            {"c": collection_id, "ref": ref},
        ).fetchall()
        self.conn.commit()
        return [r[0] for r in rows]

    def merge_attributes(self, image_ids: Sequence[int], attributes: dict[str, Any]) -> None:
        with self.conn.transaction():
            self.conn.execute(
                "UPDATE images SET attributes = attributes || %s WHERE id = ANY(%s)",
                (Jsonb(attributes), list(image_ids)),
            )

    def attach_attributes(self, collection_id: int, rows: Sequence[tuple[str, dict[str, Any]]]) -> set[str]:
        """Merge attributes into images matched by absolute path, or by file name for keys without a folder.
        Returns the keys that matched no image."""
        paths = [(k, v) for k, v in rows if "/" in k]
        names = [(k, v) for k, v in rows if "/" not in k]
        matched: set[str] = set()
        with self.conn.transaction():
            for column, chosen in (("i.path", paths), ("regexp_replace(i.path, '^.*/', '')", names)):
                if not chosen:
                    continue
                # One statement for the whole file: a hash join, not a query per row.
                found = self.conn.execute(
                    sql.SQL(
                        "WITH m AS (SELECT * FROM unnest(%s::text[], %s::jsonb[]) AS m(key, attrs))"
                        " UPDATE images i SET attributes = i.attributes || m.attrs FROM m"
                        " WHERE i.collection_id = %s AND {} = m.key RETURNING m.key"
                    ).format(sql.SQL(column)),
                    ([k for k, _ in chosen], [Jsonb(v) for _, v in chosen], collection_id),
                ).fetchall()
                matched.update(r[0] for r in found)
        return {k for k, _ in rows} - matched

    # -- search ----------------------------------------------------------------------------------------------

    def image_vector(self, image_id: int, model_id: int) -> np.ndarray | None:
        row = self.conn.execute(
            "SELECT embedding FROM embeddings WHERE image_id = %s AND model_id = %s", (image_id, model_id)
        ).fetchone()
        self.conn.commit()
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

    # -- duplicates and the watch list -----------------------------------------------------------------------

    def hash_edges(self, collection_id: int, max_distance: int, neighbours: int) -> list[tuple[int, int, float]]:
        """(image, near image, Hamming distance) for each image's nearest hashes, through the HNSW index."""
        return self._edges(HASH_EDGES_SQL, {"c": collection_id, "k": neighbours, "max": max_distance})

    def clip_edges(self, collection: Collection, max_distance: float, neighbours: int) -> list[tuple[int, int, float]]:
        """(image, near image, cosine distance) for each image's nearest embeddings, through the HNSW index."""
        vector = sql.SQL("embedding::halfvec({})").format(sql.Literal(collection.dim))
        statement = sql.SQL(
            "SELECT a.image_id, n.image_id, n.distance FROM embeddings a"
            " JOIN images ai ON ai.id = a.image_id AND ai.collection_id = %(c)s"
            " CROSS JOIN LATERAL ("
            "  SELECT e.image_id, (e.{v} <=> a.{v}) AS distance FROM embeddings e JOIN images i ON i.id = e.image_id"
            "  WHERE e.model_id = %(m)s AND i.collection_id = %(c)s AND e.image_id <> a.image_id"
            "  ORDER BY e.{v} <=> a.{v} LIMIT %(k)s) n"
            " WHERE a.model_id = %(m)s AND n.distance <= %(max)s"
        ).format(v=vector)
        return self._edges(
            statement, {"c": collection.id, "m": collection.model_id, "k": neighbours, "max": max_distance}
        )

    def sha256_edges(self, collection_id: int) -> list[tuple[int, int, float]]:
        """Identical files: each image linked to the first image with the same content."""
        return self._edges(
            "SELECT id, first_value(id) OVER (PARTITION BY sha256 ORDER BY id), 0 FROM images"
            " WHERE collection_id = %(c)s AND sha256 IN ("
            "  SELECT sha256 FROM images WHERE collection_id = %(c)s GROUP BY sha256 HAVING count(*) > 1)",
            {"c": collection_id},
        )

    def _edges(self, statement: str | sql.Composed, params: dict[str, Any]) -> list[tuple[int, int, float]]:
        with self.conn.transaction():
            self.conn.execute("SELECT set_config('hnsw.iterative_scan', 'relaxed_order', true)")
            rows = self.conn.execute(statement, params, prepare=False).fetchall()
        return [(int(a), int(b), float(d)) for a, b, d in rows if a != b]

    def save_duplicate_groups(
        self, collection_id: int, rows: Sequence[tuple[int, int, int | None, str, float | None]]
    ) -> None:
        """Replace the collection's duplicate groups: (group_no, image_id, matched_image_id, rule, distance)."""
        with self.conn.transaction(), self.conn.cursor() as cur:
            cur.execute("DELETE FROM duplicate_groups WHERE collection_id = %s", (collection_id,))
            with cur.copy(
                "COPY duplicate_groups (collection_id, group_no, image_id, matched_image_id, rule, distance) FROM STDIN"
            ) as copy:
                for row in rows:
                    copy.write_row((collection_id, *row))

    def paths(self, image_ids: Iterable[int]) -> dict[int, str]:
        rows = self.conn.execute("SELECT id, path FROM images WHERE id = ANY(%s)", (list(image_ids),)).fetchall()
        self.conn.commit()
        return dict(rows)

    def missing_hashes(self, limit: int) -> list[tuple[int, bytes]]:
        """(image id, thumbnail) of images stored before perceptual hashes existed."""
        rows = self.conn.execute(
            "SELECT i.id, t.jpeg FROM images i JOIN thumbnails t ON t.image_id = i.id WHERE i.dhash IS NULL"
            " ORDER BY i.id LIMIT %s",
            (limit,),
        ).fetchall()
        self.conn.commit()
        return [(int(i), bytes(j)) for i, j in rows]

    def set_hashes(self, hashes: Sequence[tuple[int, str]]) -> None:
        with self.conn.transaction(), self.conn.cursor() as cur:
            cur.executemany("UPDATE images SET dhash = %s::bit(64) WHERE id = %s", [(h, i) for i, h in hashes])

    def add_watch(self, label: str | None, path: str, sha256: str, max_distance: int, hashes: Sequence[str]) -> int:
        with self.conn.transaction(), self.conn.cursor() as cur:
            cur.execute(
                "INSERT INTO watches (label, path, sha256, max_distance) VALUES (%s, %s, %s, %s) RETURNING id",
                (label, path, sha256, max_distance),
            )
            watch_id = int(cur.fetchone()[0])  # type: ignore[index]
            cur.executemany(
                "INSERT INTO watch_hashes (watch_id, variant, hash) VALUES (%s, %s, %s::bit(64))"
                " ON CONFLICT DO NOTHING",
                [(watch_id, n, h) for n, h in enumerate(hashes)],
            )
        return watch_id

    def watches(self) -> list[dict[str, Any]]:
        cur = self.conn.execute(
            "SELECT w.id, w.label, w.path, w.max_distance, w.created_at,"
            " (SELECT count(*) FROM watch_hits h WHERE h.watch_id = w.id) AS hits FROM watches w ORDER BY w.id"
        )
        rows = [dict(zip([c.name for c in cur.description or []], r, strict=True)) for r in cur.fetchall()]
        self.conn.commit()
        return rows

    def watch_hits(self, watch_id: int | None = None) -> list[dict[str, Any]]:
        cur = self.conn.execute(
            "SELECT h.id, h.watch_id, w.label, w.path AS watched_path, h.image_id, i.path, h.distance, h.found_at"
            " FROM watch_hits h JOIN watches w ON w.id = h.watch_id JOIN images i ON i.id = h.image_id"
            " WHERE %(w)s::integer IS NULL OR h.watch_id = %(w)s ORDER BY h.id",
            {"w": watch_id},
        )
        rows = [dict(zip([c.name for c in cur.description or []], r, strict=True)) for r in cur.fetchall()]
        self.conn.commit()
        return rows

    # -- forgetting, roles and checks --------------------------------------------------------------------------

    def forget(self, collection_id: int, refs: Sequence[str]) -> list[int]:
        """Delete images named by id, path or file name, with everything derived from them (foreign keys
        cascade to embeddings, thumbnails, duplicate groups and watch hits); then VACUUM, so that no index
        or dead row still holds their data."""
        ids = sorted({i for ref in refs for i in self.image_ids(collection_id, ref)})
        with self.conn.transaction():
            self.conn.execute("DELETE FROM images WHERE id = ANY(%s)", (ids,))
        autocommit = self.conn.autocommit
        self.conn.autocommit = True  # VACUUM cannot run inside a transaction
        try:
            self.conn.execute("VACUUM images, embeddings, thumbnails, duplicate_groups, watch_hits")
        finally:
            self.conn.autocommit = autocommit
        return ids

    def grant(self, role: str, tables: Sequence[str], privileges: str, password: str | None) -> bool:
        """Give `role` (created with LOGIN when missing) these privileges on these tables and views.
        Returns whether the role was created."""
        name = sql.Identifier(role)
        with self.conn.transaction():
            exists = self.conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone()
            if not exists:
                self.conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(name))
            if password is not None:
                self.conn.execute(sql.SQL("ALTER ROLE {} PASSWORD {}").format(name, sql.Literal(password)))
            self.conn.execute(sql.SQL("GRANT USAGE ON SCHEMA public TO {}").format(name))
            self.conn.execute(
                sql.SQL("GRANT {} ON {} TO {}").format(
                    sql.SQL(privileges), sql.SQL(", ").join(map(sql.Identifier, tables)), name
                )
            )
        return not exists

    def grant_sequences_and_functions(self, role: str) -> None:
        with self.conn.transaction():
            name = sql.Identifier(role)
            self.conn.execute(sql.SQL("GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO {}").format(name))
            self.conn.execute(sql.SQL("GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA public TO {}").format(name))

    def problems(self) -> list[str]:
        """What is wrong with the stored data, one line each; empty when all is well."""
        checks = [
            (
                "images without an embedding of their collection's model",
                "SELECT count(*) FROM images i JOIN collections c ON c.id = i.collection_id WHERE NOT EXISTS"
                " (SELECT 1 FROM embeddings e WHERE e.image_id = i.id AND e.model_id = c.model_id)",
            ),
            (
                "embeddings of a model other than their collection's",
                "SELECT count(*) FROM embeddings e JOIN images i ON i.id = e.image_id"
                " JOIN collections c ON c.id = i.collection_id WHERE e.model_id <> c.model_id",
            ),
            (
                "embeddings whose dimension is not their model's",
                "SELECT count(*) FROM embeddings e JOIN embedding_models m ON m.id = e.model_id"
                " WHERE vector_dims(e.embedding) <> m.dim",
            ),
            (
                "images without a thumbnail",
                "SELECT count(*) FROM images i WHERE NOT EXISTS (SELECT 1 FROM thumbnails t WHERE t.image_id = i.id)",
            ),
            (
                "images without a perceptual hash (run `imagedb db reindex --hashes`)",
                "SELECT count(*) FROM images WHERE dhash IS NULL",
            ),
            (
                "models without their HNSW index (run `imagedb db reindex`)",
                "SELECT count(*) FROM embedding_models m WHERE to_regclass(%s || m.id) IS NULL",
            ),
            (
                "invalid indexes (a build was interrupted: run `imagedb db reindex`)",
                "SELECT count(*) FROM pg_index x JOIN pg_class c ON c.oid = x.indexrelid"
                " JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'public' AND NOT x.indisvalid",
            ),
        ]
        found = []
        for label, query in checks:
            params = (HNSW_INDEX_PREFIX,) if "%s" in query else ()
            count = self.conn.execute(query, params).fetchone()[0]  # type: ignore[index]
            if count:
                found.append(f"{count} {label}")
        self.conn.commit()
        return found

    # -- single images ---------------------------------------------------------------------------------------

    def image_details(self, image_id: int) -> dict[str, Any] | None:
        """Everything about one image a person may look at: no vector, no bytes; GPS only if it was kept."""
        cur = self.conn.execute(
            "SELECT i.id, c.name AS collection, i.path, i.sha256, i.size_bytes, i.mtime, i.width, i.height, i.format,"
            " i.taken_at, i.camera_make, i.camera_model, i.orientation, i.exif, i.attributes, i.ingested_at"
            " FROM images i JOIN collections c ON c.id = i.collection_id WHERE i.id = %s",
            (image_id,),
        )
        row = cur.fetchone()
        names = [c.name for c in cur.description or []]
        self.conn.commit()
        return dict(zip(names, row, strict=True)) if row else None

    def thumbnail(self, image_id: int) -> bytes | None:
        row = self.conn.execute("SELECT jpeg FROM thumbnails WHERE image_id = %s", (image_id,)).fetchone()
        self.conn.commit()
        return bytes(row[0]) if row else None

    def image_path(self, image_id: int) -> str | None:
        row = self.conn.execute("SELECT path FROM images WHERE id = %s", (image_id,)).fetchone()
        self.conn.commit()
        return row[0] if row else None

    # -- information -----------------------------------------------------------------------------------------

    def server_versions(self) -> tuple[str, str]:
        row = self.conn.execute(
            "SELECT current_setting('server_version'), (SELECT extversion FROM pg_extension WHERE extname = 'vector')"
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
        return [dict(zip(keys, r, strict=True)) for r in rows]
