"""Images and ingest: runs, batches of images with their embeddings and thumbnails, errors, user attributes,
and single images as the API shows them."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
import psycopg
from pgvector import HalfVector
from psycopg import sql
from psycopg.types.json import Jsonb

from imagedb.errors import ConcurrentChange
from imagedb.store.base import Part
from imagedb.store.dicom import insert_dicom_rows
from imagedb.store.duplicates import forget_matches
from imagedb.store.notify import notify_hits
from imagedb.store.records import FILE_OF_SQL, FRAME_MARK, ImageRecord, file_of


@dataclass(frozen=True)
class BatchWritten:
    already: set[str]  # paths another ingest of the collection stored first, left alone
    watch_hits: int  # new images that look like a watched one


_WRITE_LOCK = 0x1A6E  # advisory lock class for batch writes; the second key is the collection id


# Path locks one transaction takes at most. The server's lock table is shared by every session (about 8,600 entries
# on a default server: max_locks_per_transaction 64 x its connections), and one ingest writes up to four batches at
# once, several ingests more: 4 x 4,096 files (--batch-size 4096) ran it out of shared memory.
PATHS_PER_TRANSACTION = 256


def _lock_key(path: str) -> str:
    """What a path's lock is named after: its file (a DICOM frame `file#frame=N` shares its file's lock); the
    same as the SQL of write_batch."""
    return file_of(path)


def _parts(records: Sequence[ImageRecord]) -> list[list[int]]:
    """The records' positions in groups of at most PATHS_PER_TRANSACTION files, a file's frames together; at
    least one group, maybe empty (a batch of failed files alone records their errors)."""
    files: dict[str, list[int]] = {}
    for n, record in enumerate(records):
        files.setdefault(_lock_key(record.path), []).append(n)
    groups = list(files.values())
    return [
        [n for group in groups[i : i + PATHS_PER_TRANSACTION] for n in group]
        for i in range(0, len(groups), PATHS_PER_TRANSACTION)
    ] or [[]]


def _finite_time(column: str) -> str:
    """A timestamp within what Python's datetime holds: a writer may store 'infinity', which psycopg cannot read."""
    return f"LEAST(GREATEST({column}, '0001-01-02'), '9999-12-30')"


# How deep a stored JSON value is shown; a writer may store one nested thousands deep, which no JSON encoder walks.
MAX_SHOWN_DEPTH = 32


def _shown_json(text: str) -> Any:
    try:
        return _within_depth(json.loads(text), MAX_SHOWN_DEPTH)
    except RecursionError:
        return {"_not_shown": f"nested deeper than {MAX_SHOWN_DEPTH} levels"}


def _within_depth(value: Any, depth: int) -> Any:
    if not isinstance(value, (dict, list)):
        return value
    if depth == 0:
        return f"(nested deeper than {MAX_SHOWN_DEPTH} levels)"
    if isinstance(value, dict):
        return {k: _within_depth(v, depth - 1) for k, v in value.items()}
    return [_within_depth(v, depth - 1) for v in value]


class ImagesStore(Part):
    def file_states(self, collection_id: int) -> dict[str, tuple[int, datetime]]:
        """path -> (size, mtime) of every image stored in the collection: what a rerun may skip."""
        rows = self.conn.execute(
            "SELECT path, size_bytes, mtime FROM images WHERE collection_id = %s", (collection_id,)
        ).fetchall()
        return {path: (size, mtime) for path, size, mtime in rows}

    def vectors_by_sha256(self, model_id: int, sha256s: Sequence[str]) -> dict[str, np.ndarray]:
        """Stored embeddings of identical content anywhere in the database, so it is not embedded twice."""
        rows = self.conn.execute(
            "SELECT DISTINCT ON (i.sha256) i.sha256, e.embedding FROM images i"
            " JOIN embeddings e ON e.image_id = i.id AND e.model_id = %s WHERE i.sha256 = ANY(%s)",
            (model_id, list(sha256s)),
        ).fetchall()
        return {sha: vec.to_numpy().astype(np.float32) for sha, vec in rows}

    def start_run(self, collection_id: int, model_id: int | None = None, command: str = "ingest") -> int:
        """A new run (an ingest, or a `models add` of model_id), which the vectors it stores name."""
        with self.conn.transaction():
            row = self.conn.execute(
                "INSERT INTO ingest_runs (collection_id, model_id, command) VALUES (%s, %s, %s) RETURNING id",
                (collection_id, model_id, command),
            ).fetchone()
        return int(row[0])  # type: ignore[index]

    def write_batch(
        self,
        collection_id: int,
        model_id: int,
        run_id: int,
        records: Sequence[ImageRecord],
        vectors: Sequence[np.ndarray],
        errors: Iterable[tuple[Any, ...]],
        other_models: dict[int, Sequence[np.ndarray]] | None = None,
    ) -> BatchWritten:
        """Store one batch, in one transaction up to PATHS_PER_TRANSACTION files (a larger one in several, each of
        whole files): a crash loses at most the transaction in flight, never half an image.

        `other_models` holds the vectors of the same records by the other models the collection holds (during
        `imagedb models add`); a model the collection no longer holds (dropped meanwhile) is left out.
        Returns the paths it left alone because another ingest of the same collection stored them first, and how
        many watch hits its images made.
        """
        others = other_models or {}
        already: set[str] = set()
        hits = 0
        parts = _parts(records)
        for n, part in enumerate(parts):
            written = self._write_part(
                collection_id,
                model_id,
                run_id,
                [records[i] for i in part],
                [vectors[i] for i in part],
                list(errors) if n == len(parts) - 1 else [],
                {m: [vs[i] for i in part] for m, vs in others.items()},
            )
            already |= written.already
            hits += written.watch_hits
        return BatchWritten(already, hits)

    def _write_part(
        self,
        collection_id: int,
        model_id: int,
        run_id: int,
        records: Sequence[ImageRecord],
        vectors: Sequence[np.ndarray],
        errors: Iterable[tuple[Any, ...]],
        other_models: dict[int, Sequence[np.ndarray]],
    ) -> BatchWritten:
        with self.conn.transaction(), self.conn.cursor() as cur:
            # Batches of one collection are written at once (several writers of an ingest, or several ingests),
            # but never two holding the same file: each takes a lock per path (a DICOM frame's is its file's), in
            # one order, so the check below is reliable and no two batches deadlock. The collection's own lock is
            # taken shared: `models use` and the like take it alone, and wait for the batches in flight.
            cur.execute("SELECT pg_advisory_xact_lock_shared(%s, %s)", (_WRITE_LOCK, collection_id))
            cur.execute(
                "SELECT count(pg_advisory_xact_lock(key)) FROM (SELECT DISTINCT"
                f" hashtextextended({FILE_OF_SQL.format('path')}, %s) AS key FROM unnest(%s::text[]) AS path"
                " ORDER BY key) AS keys",
                (collection_id, [r.path for r in records]),
            )
            cur.execute("SELECT name, model_id FROM collections WHERE id = %s", (collection_id,))
            name, searched = cur.fetchone() or (None, model_id)
            if searched != model_id:
                raise ConcurrentChange(
                    f"collection {name!r} switched its search model (imagedb models use) during this ingest: run the"
                    " ingest again; the images stored so far are kept"
                )
            cur.execute(
                "SELECT path, size_bytes, mtime, attributes FROM images WHERE collection_id = %s AND path = ANY(%s)",
                (collection_id, [r.path for r in records]),
            )
            stored = {path: (size, mtime, attributes) for path, size, mtime, attributes in cur.fetchall()}
            done = {r.path for r in records if stored.get(r.path, (None, None, None))[:2] == (r.size_bytes, r.mtime)}
            todo = [(r, v) for r, v in zip(records, vectors, strict=True) if r.path not in done]
            hit_ids: list[int] = []
            if todo:
                extra = self._held(cur, collection_id, other_models)
                by_path = {r.path: n for n, r in enumerate(records)}
                extra_todo = {m: [vs[by_path[r.path]] for r, _ in todo] for m, vs in extra.items()}
                hit_ids = self._insert_images(cur, collection_id, model_id, run_id, todo, stored, extra_todo)
            # (path, reason) or (path, reason, size, mtime): the file as it was, so a rerun retries it once changed
            cur.executemany(
                "INSERT INTO ingest_errors (run_id, path, reason, size_bytes, mtime) VALUES (%s, %s, %s, %s, %s)",
                [(run_id, *error, *(None,) * (4 - len(error))) for error in errors],
            )
        notify_hits(self.conn, hit_ids)
        return BatchWritten(done, len(hit_ids))

    @staticmethod
    def _held(
        cur: psycopg.Cursor, collection_id: int, vectors: dict[int, Sequence[np.ndarray]]
    ) -> dict[int, Sequence[np.ndarray]]:
        if not vectors:
            return {}
        cur.execute(
            "SELECT model_id FROM collection_models WHERE collection_id = %s AND model_id = ANY(%s)",
            (collection_id, list(vectors)),
        )
        return {m: vectors[m] for (m,) in cur.fetchall()}

    @staticmethod
    def _insert_images(
        cur: psycopg.Cursor,
        collection_id: int,
        model_id: int,
        run_id: int,
        todo: list[tuple[ImageRecord, np.ndarray]],
        stored: dict[str, tuple[int, datetime, dict[str, Any]]],
        extra: dict[int, list[np.ndarray]],
    ) -> list[int]:
        # A file that changed since the last run is replaced whole, with everything derived from it,
        # but the attributes a user gave it stay.
        cur.execute(
            "DELETE FROM images WHERE collection_id = %s AND path = ANY(%s) RETURNING id",
            (collection_id, [r.path for r, _ in todo if r.path in stored]),
        )
        gone = [row[0] for row in cur.fetchall()]
        # A changed multi-frame DICOM file takes its former frame rows (path#frame=N) with it, those it has now
        # come back below: a file with fewer frames, or ingested again without --all-frames, leaves none behind.
        cur.execute(
            "DELETE FROM images i USING unnest(%s::text[]) AS f(path) WHERE i.collection_id = %s"
            f" AND starts_with(i.path, f.path || '{FRAME_MARK}') AND {FILE_OF_SQL.format('i.path')} = f.path"
            " AND NOT i.path = ANY(%s) RETURNING i.id",
            (
                [r.path for r, _ in todo if r.dicom is not None and file_of(r.path) == r.path],
                collection_id,
                [r.path for r, _ in todo],
            ),
        )
        gone += [row[0] for row in cur.fetchall()]
        forget_matches(cur, gone)
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
        insert_dicom_rows(cur, ids, [r for r, _ in todo])
        with cur.copy(
            "COPY embeddings (image_id, model_id, embedding, run_id) FROM STDIN WITH (FORMAT BINARY)"
        ) as copy:
            copy.set_types(["bigint", "integer", "halfvec", "bigint"])
            for image_id, (_, vector) in zip(ids, todo, strict=True):
                copy.write_row((image_id, model_id, HalfVector(vector), run_id))
            for other, vectors in extra.items():
                for image_id, vector in zip(ids, vectors, strict=True):
                    copy.write_row((image_id, other, HalfVector(vector), run_id))
        with cur.copy("COPY thumbnails (image_id, jpeg, width, height) FROM STDIN WITH (FORMAT BINARY)") as copy:
            copy.set_types(["bigint", "bytea", "integer", "integer"])
            for image_id, (r, _) in zip(ids, todo, strict=True):
                copy.write_row((image_id, r.thumbnail, *r.thumbnail_size))
        # New images that look like a watched one are recorded; the caller announces them once committed.
        cur.execute(
            "WITH hits AS ("
            "  INSERT INTO watch_hits (watch_id, image_id, distance)"
            "  SELECT n.watch_id, i.id, min(n.distance) FROM images i CROSS JOIN LATERAL ("
            "   SELECT h.watch_id, (h.hash <~> i.dhash)::integer AS distance FROM watch_hashes h"
            "   ORDER BY h.hash <~> i.dhash LIMIT 64) n"
            "  JOIN watches w ON w.id = n.watch_id"
            "  WHERE i.id = ANY(%s) AND i.dhash IS NOT NULL AND n.distance <= w.max_distance"
            "  GROUP BY n.watch_id, i.id"
            "  ON CONFLICT DO NOTHING RETURNING id)"
            " SELECT id FROM hits",
            (ids,),
        )
        return [int(hit_id) for (hit_id,) in cur.fetchall()]

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

    def run_errors(self, run_id: int) -> list[tuple[str, str]]:
        rows = self.conn.execute(
            "SELECT path, reason FROM ingest_errors WHERE run_id = %s ORDER BY id", (run_id,)
        ).fetchall()
        return [(path, reason) for path, reason in rows]

    # -- user attributes -------------------------------------------------------------------------------------

    def attribute_keys(self, collection_id: int) -> set[str]:
        rows = self.conn.execute(
            "SELECT DISTINCT jsonb_object_keys(attributes) FROM images WHERE collection_id = %s", (collection_id,)
        ).fetchall()
        return {r[0] for r in rows}

    def image_ids(self, collection_id: int, ref: str) -> list[int]:
        """Images named by an id, an absolute path, or a file name."""
        rows = self.conn.execute(
            "SELECT id FROM images WHERE collection_id = %(c)s"
            " AND (id::text = %(ref)s OR path = %(ref)s OR regexp_replace(path, '^.*/', '') = %(ref)s)"
            " ORDER BY id",
            {"c": collection_id, "ref": ref},
        ).fetchall()
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

    def image_details(self, image_id: int) -> dict[str, Any] | None:
        """Everything about one image a person may look at: no vector, no bytes; GPS only if it was kept."""
        cur = self.conn.execute(
            f"SELECT i.id, c.name AS collection, i.path, i.sha256, i.size_bytes, {_finite_time('i.mtime')} AS mtime,"
            " i.width, i.height, i.format,"
            # EXIF times carry no zone; like the date filters, the API reads them as UTC, so every date has one.
            f" {_finite_time('i.taken_at')} AT TIME ZONE 'UTC' AS taken_at, i.camera_make, i.camera_model,"
            " i.orientation, i.exif::text AS exif, i.attributes::text AS attributes,"
            f" {_finite_time('i.ingested_at')} AS ingested_at"
            " FROM images i JOIN collections c ON c.id = i.collection_id WHERE i.id = %s",
            (image_id,),
        )
        row = cur.fetchone()
        if row is None:
            return None
        found = dict(zip([c.name for c in cur.description or []], row, strict=True))
        return {**found, "exif": _shown_json(found["exif"]), "attributes": _shown_json(found["attributes"])}

    def thumbnail(self, image_id: int) -> bytes | None:
        row = self.conn.execute("SELECT jpeg FROM thumbnails WHERE image_id = %s", (image_id,)).fetchone()
        return bytes(row[0]) if row else None
