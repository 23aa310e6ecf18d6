"""Indexes imagedb did not mean to keep: what an interrupted build, swap or quantisation leaves behind.

PostgreSQL finishes a CREATE INDEX CONCURRENTLY after its client is gone, so a `db reindex` killed before its swap
leaves `embeddings_hnsw_N_next` valid beside the real index (every insert then maintains both), and a killed
`--quantize binary` a valid binary index whose model has no rerank (never searched, still maintained). A build
stopped by a server crash or a cancel leaves an INVALID index. Which indexes imagedb keeps on `embeddings`: each
model's `embeddings_hnsw_<id>` and, while the model records a rerank (the chosen quantisation), its
`embeddings_hnsw_bit_<id>`. Every other index of imagedb's names there, and every invalid index on imagedb's tables,
is a leftover. An index a DBA made under another name is theirs and stays.

A model whose build lock another session holds is being built right now: its indexes are left alone, and so is any
index whose build is under way (pg_stat_progress_create_index).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from imagedb.schema import metadata
from imagedb.store.base import Part
from imagedb.store.index import _INDEX_LOCK, BUILD_SUFFIX, HNSW_INDEX_PREFIX, binary_index_name, hnsw_index_name

_MODEL_PREDICATE = re.compile(r"^\(model_id = (\d+)\)$")


@dataclass(frozen=True)
class Leftover:
    name: str
    table: str
    why: str

    def describe(self) -> str:
        return f"{self.name} on {self.table} ({self.why})"


class LeftoverStore(Part):
    def indexes(self) -> list[Leftover]:
        """Every index on imagedb's tables that imagedb did not mean to keep, except those of a model whose index
        is being built by another session right now."""
        rows = self.conn.execute(
            "SELECT c.relname, t.relname, x.indisvalid AND x.indisready, pg_get_expr(x.indpred, x.indrelid)"
            " FROM pg_index x JOIN pg_class c ON c.oid = x.indexrelid JOIN pg_class t ON t.oid = x.indrelid"
            " WHERE x.indrelid IN (SELECT to_regclass(n) FROM unnest(%s::text[]) AS n)"
            # An index being built right now (by anyone) is invalid until its build ends: not a leftover.
            " AND x.indexrelid NOT IN (SELECT index_relid FROM pg_stat_progress_create_index"
            "  WHERE index_relid IS NOT NULL AND pid <> pg_backend_pid())"
            " ORDER BY c.relname",
            (sorted(metadata.tables),),
        ).fetchall()
        reranks = dict(self.conn.execute("SELECT id, rerank FROM embedding_models").fetchall())
        busy = self._models_being_built()
        found = []
        for name, table, valid, predicate in rows:
            match = _MODEL_PREDICATE.match(predicate or "")
            model_id = int(match.group(1)) if match else None
            if (model_id if model_id is not None else _model_of(str(name))) in busy:
                continue
            why = _why_leftover(str(name), valid, reranks) if table == "embeddings" else None
            if why is None and not valid:
                why = "invalid: its build was interrupted"
            if why is not None:
                found.append(Leftover(str(name), str(table), why))
        return found

    def repair_model(self, model_id: int) -> None:
        """Undo what an interrupted build, swap or quantisation of this model left (the caller holds the model's
        build lock): invalid indexes are dropped; a valid new index whose old one is gone takes the canonical
        name; other valid leftovers (a `_next` beside the real index, an unchosen binary index) are dropped."""
        name = hnsw_index_name(model_id)
        building = name + BUILD_SUFFIX
        valid = set(self.store.index.valid_hnsw_indexes(model_id))
        if building in valid and name not in valid:
            self.store.index.drop_concurrently(name)  # an INVALID old one of that name, if any
            self.store.index.rename(building, name)
        for leftover in self._model_leftovers(model_id):
            self.store.index.drop_concurrently(leftover)

    def remove(self) -> list[Leftover]:
        """Drop every leftover index (DROP INDEX CONCURRENTLY: searches and writes go on); a model's under its build
        lock, so that a build another process starts meanwhile is never cut short. Returns what was removed."""
        before = self.indexes()
        skipped = set()
        for (model_id,) in self.conn.execute("SELECT id FROM embedding_models ORDER BY id").fetchall():
            with self.store.index.index_lock(int(model_id), wait=False) as locked:
                if locked:
                    self.repair_model(int(model_id))
                else:
                    skipped.add(int(model_id))  # being built elsewhere: that build cleans up after itself
        for leftover in self.indexes():  # of no model imagedb knows: a deleted model's, another table's
            if _model_of(leftover.name) not in skipped:
                self.store.index.drop_concurrently(leftover.name)
        after = {x.name for x in self.indexes()}
        return [x for x in before if x.name not in after]

    def _model_leftovers(self, model_id: int) -> list[str]:
        return [x.name for x in self.indexes() if _model_of(x.name) == model_id]

    def _models_being_built(self) -> set[int]:
        """Models whose build lock (index.index_lock) another session holds."""
        rows = self.conn.execute(
            "SELECT objid FROM pg_locks WHERE locktype = 'advisory' AND granted AND classid = %s AND objsubid = 2"
            " AND pid <> pg_backend_pid()"
            " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
            (_INDEX_LOCK,),
        ).fetchall()
        return {int(r[0]) for r in rows}


# embeddings_hnsw_<id>, embeddings_hnsw_<id>_<suffix>, embeddings_hnsw_bit_<id>[_<suffix>]
_MODEL_NAME = re.compile(rf"^{re.escape(HNSW_INDEX_PREFIX)}(?:bit_)?(\d+)(?:_[a-z0-9]+)?$")


def _model_of(name: str) -> int | None:
    match = _MODEL_NAME.match(name)
    return int(match.group(1)) if match else None


def _why_leftover(name: str, valid: bool, reranks: dict[int, int | None]) -> str | None:
    """Why this index on embeddings is a leftover, None when imagedb keeps it (or it is not imagedb's)."""
    owner = _model_of(name)
    if owner is None:
        return None  # not of imagedb's names: someone else's index (an invalid one is still reported by the caller)
    if not valid:
        return "invalid: its build was interrupted"
    if owner not in reranks:
        return "of a model that no longer exists"
    if name == hnsw_index_name(owner):
        return None
    if name == binary_index_name(owner):
        if reranks[owner] is not None:
            return None
        return "a binary-quantised index that was never finished: no rerank is recorded, so searches never use it"
    if name == hnsw_index_name(owner) + BUILD_SUFFIX:
        return "a second copy left by a `db reindex` stopped before its swap"
    return "not one imagedb keeps"
