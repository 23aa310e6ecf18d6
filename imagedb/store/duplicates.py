"""Duplicates and the watch list: index-backed hash and CLIP neighbours, groups, watched images and hits."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import psycopg
from psycopg import sql

from imagedb.store.base import Part
from imagedb.store.notify import notify_hits
from imagedb.store.records import Collection
from imagedb.store.settings import set_local

# Each image's nearest hashes by Hamming distance; the LATERAL subquery reads the HNSW index once per image.
HASH_EDGES_SQL = (
    "SELECT i.id, n.id, n.distance FROM images i CROSS JOIN LATERAL ("
    "  SELECT j.id, (j.dhash <~> i.dhash) AS distance FROM images j"
    "  WHERE j.collection_id = i.collection_id AND j.id <> i.id AND j.dhash IS NOT NULL"
    "  ORDER BY j.dhash <~> i.dhash LIMIT %(k)s) n"
    " WHERE i.collection_id = %(c)s AND i.dhash IS NOT NULL AND n.distance <= %(max)s"
)


def forget_matches(cur: psycopg.Cursor[Any], image_ids: Sequence[int]) -> None:
    """Take out of their groups the members linked through deleted images: `matched_image_id` has no foreign key
    (under Citus the matched image is on another shard), so every statement that deletes images calls this in its
    transaction, as ON DELETE CASCADE did."""
    if image_ids:
        cur.execute("DELETE FROM duplicate_groups WHERE matched_image_id = ANY(%s)", (list(image_ids),))


class DuplicatesStore(Part):
    def hash_edges(self, collection_id: int, max_distance: int, neighbours: int) -> list[tuple[int, int, float]]:
        """(image, near image, Hamming distance) for each image's nearest hashes, through the HNSW index."""
        params = {"c": collection_id, "k": neighbours, "max": max_distance}
        if self.store.citus.distributed():
            return self._edges_each(
                "SELECT id, dhash FROM images WHERE collection_id = %(c)s AND dhash IS NOT NULL",
                "SELECT j.id, (j.dhash <~> %(q)s) AS distance FROM images j WHERE j.collection_id = %(c)s"
                " AND j.id <> %(a)s AND j.dhash IS NOT NULL ORDER BY j.dhash <~> %(q)s LIMIT %(k)s",
                params,
            )
        return self._edges(HASH_EDGES_SQL, params)

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
        params = {"c": collection.id, "m": collection.model_id, "k": neighbours, "max": max_distance}
        if self.store.citus.distributed():
            return self._edges_each(
                sql.SQL(
                    "SELECT e.image_id, e.{v} FROM embeddings e JOIN images i ON i.id = e.image_id"
                    " WHERE e.model_id = %(m)s AND i.collection_id = %(c)s"
                ).format(v=vector),
                sql.SQL(
                    "SELECT e.image_id, (e.{v} <=> %(q)s) AS distance FROM embeddings e JOIN images i"
                    " ON i.id = e.image_id WHERE e.model_id = %(m)s AND i.collection_id = %(c)s"
                    " AND e.image_id <> %(a)s ORDER BY e.{v} <=> %(q)s LIMIT %(k)s"
                ).format(v=vector),
                params,
            )
        return self._edges(statement, params)

    def sha256_edges(self, collection_id: int) -> list[tuple[int, int, float]]:
        """Identical files: each image linked to the first image with the same content."""
        return self._edges(
            # min(id) by a join, not first_value() over a window by sha256, which Citus cannot push to the shards
            "SELECT i.id, f.first, 0 FROM images i JOIN ("
            "  SELECT sha256, min(id) AS first FROM images WHERE collection_id = %(c)s"
            "  GROUP BY sha256 HAVING count(*) > 1) f ON f.sha256 = i.sha256 WHERE i.collection_id = %(c)s",
            {"c": collection_id},
        )

    def _edges(self, statement: str | sql.Composed, params: dict[str, Any]) -> list[tuple[int, int, float]]:
        with self.conn.transaction():
            set_local(self.conn, {"hnsw.iterative_scan": "relaxed_order"})
            rows = self.conn.execute(statement, params, prepare=False).fetchall()
        return [(int(a), int(b), float(d)) for a, b, d in rows if a != b]

    def _edges_each(
        self, sources: str | sql.Composed, neighbours: str | sql.Composed, params: dict[str, Any]
    ) -> list[tuple[int, int, float]]:
        """The edges of _edges one image at a time: under Citus the pairwise LATERAL join spans shards, which Citus
        cannot plan; each image's neighbour query is an index scan on every shard merged by the coordinator."""
        edges = []
        with self.conn.transaction():
            set_local(self.conn, {"hnsw.iterative_scan": "relaxed_order"})
            for a, value in self.conn.execute(sources, params).fetchall():
                rows = self.conn.execute(neighbours, {**params, "a": a, "q": value}).fetchall()
                edges += [(int(a), int(b), float(d)) for b, d in rows if d <= params["max"] and a != b]
        return edges

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
        return dict(rows)

    def missing_hashes(self, limit: int) -> list[tuple[int, bytes]]:
        """(image id, thumbnail) of images stored before perceptual hashes existed."""
        rows = self.conn.execute(
            "SELECT i.id, t.jpeg FROM images i JOIN thumbnails t ON t.image_id = i.id WHERE i.dhash IS NULL"
            " ORDER BY i.id LIMIT %s",
            (limit,),
        ).fetchall()
        return [(int(i), bytes(j)) for i, j in rows]

    def set_hashes(self, hashes: Sequence[tuple[int, str]]) -> None:
        with self.conn.transaction(), self.conn.cursor() as cur:
            cur.executemany("UPDATE images SET dhash = %s::bit(64) WHERE id = %s", [(h, i) for i, h in hashes])

    def add_watch(
        self, label: str | None, path: str, sha256: str, max_distance: int, hashes: Sequence[str]
    ) -> tuple[int, int]:
        """Watch an image; the stored images that already look like it become hits in the same transaction.
        Returns the watch id and that number of hits."""
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
            hit_ids = self._match_stored_images(cur, watch_id)
        notify_hits(self.conn, hit_ids)
        return watch_id, len(hit_ids)

    @staticmethod
    def _match_stored_images(cur: psycopg.Cursor, watch_id: int) -> list[int]:
        """Record the stored images that already look like a newly watched one (the caller announces them once
        committed): the images of every collection, each compared with the watch's eight orientations. A scan of
        the hashes, not the index: every image within the distance is wanted, however many. Returns the hits'
        ids."""
        cur.execute(
            "WITH hits AS ("
            "  INSERT INTO watch_hits (watch_id, image_id, distance)"
            "  SELECT w.id, i.id, min((h.hash <~> i.dhash)::integer) FROM watches w"
            "  JOIN watch_hashes h ON h.watch_id = w.id CROSS JOIN images i"
            "  WHERE w.id = %s AND i.dhash IS NOT NULL AND (h.hash <~> i.dhash) <= w.max_distance"
            "  GROUP BY w.id, i.id"
            "  ON CONFLICT DO NOTHING RETURNING id)"
            " SELECT id FROM hits",
            (watch_id,),
        )
        return [int(hit_id) for (hit_id,) in cur.fetchall()]

    def watches(self) -> list[dict[str, Any]]:
        cur = self.conn.execute(
            "SELECT w.id, w.label, w.path, w.max_distance, w.created_at,"
            " (SELECT count(*) FROM watch_hits h WHERE h.watch_id = w.id) AS hits FROM watches w ORDER BY w.id"
        )
        rows = [dict(zip([c.name for c in cur.description or []], r, strict=True)) for r in cur.fetchall()]
        return rows

    def watch_hits(self, watch_id: int | None = None) -> list[dict[str, Any]]:
        cur = self.conn.execute(
            "SELECT h.id, h.watch_id, w.label, w.path AS watched_path, h.image_id, i.path, h.distance, h.found_at"
            " FROM watch_hits h JOIN watches w ON w.id = h.watch_id JOIN images i ON i.id = h.image_id"
            " WHERE %(w)s::integer IS NULL OR h.watch_id = %(w)s ORDER BY h.id",
            {"w": watch_id},
        )
        rows = [dict(zip([c.name for c in cur.description or []], r, strict=True)) for r in cur.fetchall()]
        return rows

    def verified_hits(self, ids: Sequence[int], after: int) -> list[dict[str, Any]]:
        """The stored hits among `ids` (as a notification names them) whose id is above `after`: a notification is
        believed only as far as watch_hits, which readers cannot write, holds it."""
        cur = self.conn.execute(
            "SELECT h.id, h.watch_id, w.label, w.path AS watched_path, h.image_id, i.path, h.distance, h.found_at"
            " FROM watch_hits h JOIN watches w ON w.id = h.watch_id JOIN images i ON i.id = h.image_id"
            " WHERE h.id = ANY(%s::bigint[]) AND h.id > %s ORDER BY h.id",
            (list(ids), after),
        )
        return [dict(zip([c.name for c in cur.description or []], r, strict=True)) for r in cur.fetchall()]

    def last_hit_id(self) -> int:
        return int(self.conn.execute("SELECT coalesce(max(id), 0) FROM watch_hits").fetchone()[0])  # type: ignore[index]
