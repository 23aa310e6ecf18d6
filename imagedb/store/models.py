"""Models and collections: each embedding model's row, the collections bound to them, and the vectors of a model
being added to a collection.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from psycopg import sql
from psycopg.types.json import Jsonb

from imagedb.errors import ModelMismatch
from imagedb.store.base import Part
from imagedb.store.index import BUILD_SUFFIX, DEFAULT_HNSW, _create_sql, binary_index_name, hnsw_index_name
from imagedb.store.records import Collection, HeldModel, ModelRecord

_ADD_LOCK = 0x1A70  # advisory lock class for `models add`; the second key hashes (collection id, model id)
_WRITE_LOCK = 0x1A6E  # the batch-write lock of store/images.py: a switch or drop waits for a batch in flight
# Provenance columns filled on registration (and, for a model registered before they existed, on its next use).
PROVENANCE_COLUMNS = (
    "checkpoint_sha256",
    "checkpoint_bytes",
    "open_clip_version",
    "torch_version",
    "preprocess",
    "tokenizer",
)
_MODEL_COLUMNS = "m.id, m.name, m.pretrained, m.dim, m.checkpoint_sha256, m.checkpoint_bytes"


class ModelsStore(Part):
    def ensure_model(self, name: str, pretrained: str, dim: int, provenance: dict[str, Any] | None = None) -> int:
        """The id of this model, registered with its own HNSW index on first use. `provenance` (the columns of
        PROVENANCE_COLUMNS) is recorded when the model is new, and fills those a model registered before them
        lacks; recorded values are never overwritten (provenance.load_checked refuses a changed checkpoint)."""
        values = {c: (Jsonb(v) if c == "preprocess" and v is not None else v) for c, v in (provenance or {}).items()}
        columns = [c for c in PROVENANCE_COLUMNS if c in values]
        with self.conn.transaction():
            inserted = self.conn.execute(
                sql.SQL(
                    "INSERT INTO embedding_models (name, pretrained, dim{cols}) VALUES (%s, %s, %s{marks})"
                    " ON CONFLICT (name, pretrained) DO {update} RETURNING xmax = 0"
                ).format(
                    cols=sql.SQL("").join(sql.SQL(", ") + sql.Identifier(c) for c in columns),
                    marks=sql.SQL(", %s" * len(columns)),
                    update=sql.SQL("UPDATE SET ")
                    + sql.SQL(", ").join(
                        sql.SQL("{c} = COALESCE(embedding_models.{c}, EXCLUDED.{c})").format(c=sql.Identifier(c))
                        for c in columns
                    )
                    if columns
                    else sql.SQL("NOTHING"),
                ),
                (name, pretrained, dim, *(values[c] for c in columns)),
            ).fetchone()
            model_id, stored_dim = self.conn.execute(
                "SELECT id, dim FROM embedding_models WHERE name = %s AND pretrained = %s", (name, pretrained)
            ).fetchone()  # type: ignore[misc]
            if stored_dim == dim and (inserted is None or inserted[0]):
                # A new model (or a bare registration, as before provenance): its index is empty or exists, so a
                # plain build in this transaction is instant. A model registered before may have its index
                # dropped for a bulk load under way, which builds it.
                self.conn.execute(
                    _create_sql(hnsw_index_name(model_id), model_id, dim, DEFAULT_HNSW, concurrently=False)
                )
        if stored_dim != dim:
            raise ModelMismatch(f"model {name}:{pretrained} is registered with dimension {stored_dim}, not {dim}")
        return int(model_id)

    def model_record(self, name: str, pretrained: str) -> ModelRecord | None:
        row = self.conn.execute(
            f"SELECT {_MODEL_COLUMNS} FROM embedding_models m WHERE m.name = %s AND m.pretrained = %s",
            (name, pretrained),
        ).fetchone()
        return ModelRecord(*row) if row else None

    def move_model(self, model_id: int, pretrained: str) -> None:
        """A model's checkpoint moved (the caller checked it is the same file): record its new path."""
        self.conn.execute("UPDATE embedding_models SET pretrained = %s WHERE id = %s", (pretrained, model_id))

    def model_records(self) -> list[ModelRecord]:
        rows = self.conn.execute(f"SELECT {_MODEL_COLUMNS} FROM embedding_models m ORDER BY m.id").fetchall()
        return [ModelRecord(*r) for r in rows]

    def numeric_mode(self, model_id: int) -> str | None:
        """The numeric mode recorded in the model's provenance (None: recorded before modes were)."""
        row = self.conn.execute(
            "SELECT preprocess->>'numeric_mode' FROM embedding_models WHERE id = %s", (model_id,)
        ).fetchone()
        return row[0] if row else None

    def record_numeric_mode(self, model_id: int, mode: str) -> None:
        """Record the mode of a model that holds no vectors yet, so the first ones stored set its family."""
        self.conn.execute(
            "UPDATE embedding_models SET preprocess = jsonb_set(COALESCE(preprocess, '{}'::jsonb),"
            " '{numeric_mode}', to_jsonb(%s::text)) WHERE id = %s AND NOT EXISTS"
            " (SELECT 1 FROM embeddings WHERE model_id = %s)",
            (mode, model_id, model_id),
        )

    def model_has_embeddings(self, model_id: int) -> bool:
        row = self.conn.execute("SELECT EXISTS (SELECT 1 FROM embeddings WHERE model_id = %s)", (model_id,)).fetchone()
        return bool(row[0])  # type: ignore[index]

    def embedding_count(self, model_id: int) -> int:
        row = self.conn.execute("SELECT count(*) FROM embeddings WHERE model_id = %s", (model_id,)).fetchone()
        return int(row[0])  # type: ignore[index]

    def get_collection(self, name: str) -> Collection | None:
        row = self.conn.execute(
            "SELECT c.id, c.name, c.model_id, m.name, m.pretrained, m.dim, c.keep_phi, m.rerank"
            " FROM collections c JOIN embedding_models m ON m.id = c.model_id WHERE c.name = %s",
            (name,),
        ).fetchone()
        return Collection(*row) if row else None

    def create_collection(self, name: str, model_id: int, *, keep_phi: bool = False) -> Collection:
        """Create the collection, or return the one a concurrent process created a moment earlier."""
        with self.conn.transaction():
            created = self.conn.execute(
                "INSERT INTO collections (name, model_id, keep_phi) VALUES (%s, %s, %s)"
                " ON CONFLICT (name) DO NOTHING RETURNING id",
                (name, model_id, keep_phi),
            ).fetchone()
            if created:
                self.conn.execute(
                    "INSERT INTO collection_models (collection_id, model_id, ready_at) VALUES (%s, %s, now())",
                    (created[0], model_id),
                )
        collection = self.get_collection(name)
        assert collection is not None
        return collection

    # -- several models per collection (imagedb/models.py) ----------------------------------------------

    def held_models(self, collection_id: int) -> list[tuple[ModelRecord, bool]]:
        """The models a collection holds, with whether each is ready; the search model first."""
        rows = self.conn.execute(
            f"SELECT {_MODEL_COLUMNS}, h.ready_at IS NOT NULL FROM collection_models h"
            " JOIN embedding_models m ON m.id = h.model_id JOIN collections c ON c.id = h.collection_id"
            " WHERE h.collection_id = %s ORDER BY m.id <> c.model_id, h.added_at, m.id",
            (collection_id,),
        ).fetchall()
        return [(ModelRecord(*r[:-1]), bool(r[-1])) for r in rows]

    def model_listing(self) -> list[HeldModel]:
        """Every (collection, model) pair with its counts, provenance and index state."""
        rows = self.conn.execute(
            f"SELECT c.name, c.id, {_MODEL_COLUMNS}, m.id = c.model_id, h.ready_at IS NOT NULL,"
            " (SELECT count(*) FROM embeddings e JOIN images i ON i.id = e.image_id"
            "   WHERE e.model_id = m.id AND i.collection_id = c.id),"
            " (SELECT count(*) FROM images i WHERE i.collection_id = c.id),"
            " m.created_at, m.open_clip_version, m.torch_version, m.preprocess, m.tokenizer"
            " FROM collection_models h JOIN collections c ON c.id = h.collection_id"
            " JOIN embedding_models m ON m.id = h.model_id ORDER BY c.name, m.id <> c.model_id, h.added_at, m.id"
        ).fetchall()
        listing = []
        for r in rows:
            model = ModelRecord(*r[2:8])
            index = "valid" if self.store.index.valid_hnsw_indexes(model.id) else ("building" if r[10] else "none")
            listing.append(HeldModel(r[0], r[1], model, r[8], r[9], r[10], r[11], index, *r[12:]))
        return listing

    def hold_model(self, collection_id: int, model_id: int) -> None:
        """Record that the collection is getting this model (`models add`); nothing if it holds it already."""
        with self.conn.transaction():
            self.conn.execute(
                "INSERT INTO collection_models (collection_id, model_id) VALUES (%s, %s) ON CONFLICT DO NOTHING",
                (collection_id, model_id),
            )

    def images_without_vector(
        self, collection_id: int, model_id: int, after_id: int, limit: int
    ) -> list[tuple[int, str, str]]:
        """(id, path, sha256) of the collection's images without this model's vector, by id, after `after_id`."""
        rows = self.conn.execute(
            "SELECT i.id, i.path, i.sha256 FROM images i WHERE i.collection_id = %s AND i.id > %s"
            " AND NOT EXISTS (SELECT 1 FROM embeddings e WHERE e.image_id = i.id AND e.model_id = %s)"
            " ORDER BY i.id LIMIT %s",
            (collection_id, after_id, model_id, limit),
        ).fetchall()
        return [(int(i), p, sha) for i, p, sha in rows]

    def count_without_vector(self, collection_id: int, model_id: int) -> int:
        row = self.conn.execute(
            "SELECT count(*) FROM images i WHERE i.collection_id = %s"
            " AND NOT EXISTS (SELECT 1 FROM embeddings e WHERE e.image_id = i.id AND e.model_id = %s)",
            (collection_id, model_id),
        ).fetchone()
        return int(row[0])  # type: ignore[index]

    def write_vectors(self, model_id: int, run_id: int, rows: list[tuple[int, Any]]) -> int:
        """Store (image id, vector) rows of one model in one transaction; images deleted meanwhile and vectors
        stored meanwhile (by an ingest) are left out. Returns how many were stored."""
        from pgvector import HalfVector

        with self.conn.transaction():
            stored = self.conn.execute(
                "INSERT INTO embeddings (image_id, model_id, embedding, run_id)"
                " SELECT v.image_id, %s, v.embedding, %s"
                " FROM unnest(%s::bigint[], %s::halfvec[]) AS v(image_id, embedding)"
                " JOIN images i ON i.id = v.image_id ON CONFLICT DO NOTHING",
                (model_id, run_id, [i for i, _ in rows], [HalfVector(v) for _, v in rows]),
            ).rowcount
        return int(stored)

    def mark_ready(self, collection_id: int, model_id: int) -> bool:
        """Mark the model ready in the collection if every image has its vector (checked under the batch-write
        lock, so no ingest batch commits in between); returns whether it did."""
        with self.conn.transaction():
            self.conn.execute("SELECT pg_advisory_xact_lock(%s, %s)", (_WRITE_LOCK, collection_id))
            if self.count_without_vector(collection_id, model_id):
                return False
            self.conn.execute(
                "UPDATE collection_models SET ready_at = COALESCE(ready_at, now())"
                " WHERE collection_id = %s AND model_id = %s",
                (collection_id, model_id),
            )
        return True

    def switch_model(self, collection_id: int, model_id: int) -> int:
        """Make the model the collection's search model, in one transaction; returns how many of the collection's
        images lack its vector (then nothing changed). Searches already planned finish on the old model."""
        with self.conn.transaction():
            self.conn.execute("SELECT pg_advisory_xact_lock(%s, %s)", (_WRITE_LOCK, collection_id))
            missing = self.count_without_vector(collection_id, model_id)
            if not missing:
                self.conn.execute("UPDATE collections SET model_id = %s WHERE id = %s", (model_id, collection_id))
        return missing

    def release_model(self, collection_id: int, model_id: int) -> tuple[int, bool]:
        """Delete the collection's vectors of a model it does not search with, and its hold on the model; the
        model's row goes too when no collection holds it any more. Returns (vectors deleted, whether the model is
        now unused: its index is then to be dropped, see drop_unused_model)."""
        with self.conn.transaction():
            self.conn.execute("SELECT pg_advisory_xact_lock(%s, %s)", (_WRITE_LOCK, collection_id))
            searched = self.conn.execute(
                "SELECT 1 FROM collections WHERE id = %s AND model_id = %s", (collection_id, model_id)
            ).fetchone()
            if searched:
                raise ModelMismatch("internal error: the search model of a collection cannot be released")
            deleted = self.conn.execute(
                "DELETE FROM embeddings e USING images i WHERE i.id = e.image_id AND e.model_id = %s"
                " AND i.collection_id = %s",
                (model_id, collection_id),
            ).rowcount
            # What was measured or sampled for this collection with that model goes with its vectors.
            for table in ("search_tuning", "relevance_samples", "collection_models"):
                self.conn.execute(
                    sql.SQL("DELETE FROM {} WHERE collection_id = %s AND model_id = %s").format(sql.Identifier(table)),
                    (collection_id, model_id),
                )
            unused = not self.conn.execute(
                "SELECT 1 FROM collection_models WHERE model_id = %s UNION ALL"
                " SELECT 1 FROM collections WHERE model_id = %s LIMIT 1",
                (model_id, model_id),
            ).fetchone()
        return int(deleted), unused

    def drop_unused_model(self, model_id: int) -> bool:
        """Drop the HNSW index and the row (with its cached texts) of a model no collection holds; False when one
        holds it again meanwhile (then both stay). The index goes with DROP INDEX CONCURRENTLY, which waits for
        searches still reading it, outside any transaction."""
        with self.store.index.index_lock(model_id, wait=True):
            self.store.index.repair_interrupted_build(model_id)
            if self._model_in_use(model_id):
                return False
            self.store.index.drop_concurrently(hnsw_index_name(model_id) + BUILD_SUFFIX)
            self.store.index.drop_concurrently(hnsw_index_name(model_id))
            self.store.index.drop_concurrently(binary_index_name(model_id))
            with self.conn.transaction():
                if self._model_in_use(model_id):
                    return False  # held again meanwhile: its next use builds the index again
                self.conn.execute("DELETE FROM embedding_models WHERE id = %s", (model_id,))
        return True

    def _model_in_use(self, model_id: int) -> bool:
        return bool(
            self.conn.execute(
                "SELECT 1 FROM collection_models WHERE model_id = %s UNION ALL"
                " SELECT 1 FROM collections WHERE model_id = %s UNION ALL"
                " SELECT 1 FROM embeddings WHERE model_id = %s LIMIT 1",
                (model_id, model_id, model_id),
            ).fetchone()
        )

    @contextmanager
    def adding_lock(self, collection_id: int, model_id: int) -> Iterator[bool]:
        """One `models add` (or drop) of a model into a collection at a time, across processes; a session lock,
        so a killed process releases it. Yields whether it was taken."""
        key = (_ADD_LOCK, f"{collection_id}:{model_id}")
        row = self.conn.execute("SELECT pg_try_advisory_lock(%s, hashtext(%s))", key).fetchone()
        locked = bool(row[0])  # type: ignore[index]
        try:
            yield locked
        finally:
            if locked and not (self.conn.closed or self.conn.broken):
                self.conn.execute("SELECT pg_advisory_unlock(%s, hashtext(%s))", key)
