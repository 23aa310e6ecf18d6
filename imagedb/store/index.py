"""Each model's HNSW index: its build parameters, builds and rebuilds without downtime, binary quantisation, and
the locks that keep two builds of one model apart.

HNSW builds after the first never leave a moment without a valid index (searches find the index by its expression
and predicate, never by name): the new index is built with CREATE INDEX CONCURRENTLY under a temporary name, the
old one is dropped with DROP INDEX CONCURRENTLY, and the new one renamed to the canonical name. Neither takes a lock
that blocks searches or writes, and none of the three takes an ACCESS EXCLUSIVE lock on the table, the lock that a
streaming standby replays and that blocked its readers for as long as the old DROP + CREATE transaction ran.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from typing import NamedTuple

import psycopg
from psycopg import sql

from imagedb import cpus
from imagedb.errors import ImagedbError, InvalidInput
from imagedb.store.base import Part

HNSW_INDEX_PREFIX = "embeddings_hnsw_"
DEFAULT_HNSW_M = 16


DEFAULT_HNSW_EF_CONSTRUCTION = 64


BUILD_MEMORY = "1GB"


# What an HNSW build's graph takes per row beyond the halfvec itself (measured: 1M x 512 halfvec needs more than
# 1GB to build in memory, bench/results/scale_1000000.json); a build is given enough for the whole graph, up to a
# quarter of this machine's memory (the embedded server runs here).
_GRAPH_BYTES_PER_ROW = 1024


# The name a concurrent build gives the new index until it replaces the old one.
BUILD_SUFFIX = "_next"


_INDEX_LOCK = 0x1A6F  # advisory lock class for index builds; the second key is the model id


_LOCK_POLL_S = 0.2


class HnswParams(NamedTuple):
    m: int
    ef_construction: int


DEFAULT_HNSW = HnswParams(DEFAULT_HNSW_M, DEFAULT_HNSW_EF_CONSTRUCTION)


# From this many vectors on, a model's index is built denser unless told otherwise: on a million clustered 512-d
# vectors, m 24 / ef_construction 128 gave recall@10 0.968 at ef_search 100 (server p50 4.1 ms) where m 16 / 64
# gave 0.855 (3.8 ms), for a 1.9x longer build and a 1.2x larger index (bench/results/graph_1000000.json). Below
# it m 16 / 64 still reaches 0.95 at ef_search 100 (0.951 at 250,000: bench/results/growth_tuned.txt) and builds
# in half the time.
LARGE_INDEX_ROWS = 250_000


DENSE_HNSW = HnswParams(24, 128)


def default_hnsw(rows: int) -> HnswParams:
    """The build parameters of an index over `rows` vectors when nobody chose them."""
    return DENSE_HNSW if rows >= LARGE_INDEX_ROWS else DEFAULT_HNSW


def hnsw_index_name(model_id: int) -> str:
    return f"{HNSW_INDEX_PREFIX}{model_id}"


def binary_index_name(model_id: int) -> str:
    """The model's binary-quantised HNSW index (`imagedb db reindex --quantize binary`); never matched by the
    halfvec index's repair pattern (embeddings_hnsw_<id>[_suffix])."""
    return f"{HNSW_INDEX_PREFIX}bit_{model_id}"


def binary_expression(column: sql.Composable, dim: int) -> sql.Composed:
    """binary_quantize(x::halfvec(dim))::bit(dim): one bit a dimension, the sign. The expression of the binary index,
    and the one a search must order by for the planner to use it."""
    return sql.SQL("binary_quantize({}::halfvec({}))::bit({})").format(column, sql.Literal(dim), sql.Literal(dim))


def _create_binary_sql(name: str, model_id: int, dim: int, params: HnswParams) -> sql.Composed:
    return sql.SQL(
        "CREATE INDEX CONCURRENTLY IF NOT EXISTS {name} ON embeddings USING hnsw (({bits}) bit_hamming_ops)"
        " WITH (m = {m}, ef_construction = {efc}) WHERE model_id = {model_id}"
    ).format(
        name=sql.Identifier(name),
        bits=binary_expression(sql.Identifier("embedding"), dim),
        m=sql.Literal(params.m),
        efc=sql.Literal(params.ef_construction),
        model_id=sql.Literal(model_id),
    )


def _create_sql(name: str, model_id: int, dim: int, params: HnswParams, *, concurrently: bool) -> sql.Composed:
    return sql.SQL(
        "CREATE INDEX {how} IF NOT EXISTS {name} ON embeddings"
        " USING hnsw ((embedding::halfvec({dim})) halfvec_cosine_ops)"
        " WITH (m = {m}, ef_construction = {efc}) WHERE model_id = {model_id}"
    ).format(
        how=sql.SQL("CONCURRENTLY" if concurrently else ""),
        name=sql.Identifier(name),
        dim=sql.Literal(dim),
        m=sql.Literal(params.m),
        efc=sql.Literal(params.ef_construction),
        model_id=sql.Literal(model_id),
    )


class IndexStore(Part):
    def valid_hnsw_indexes(self, model_id: int) -> list[str]:
        """The valid HNSW indexes that serve this model's searches, found as the planner finds them: by table,
        access method and predicate, whatever their names."""
        rows = self.conn.execute(
            "SELECT c.relname FROM pg_index x JOIN pg_class c ON c.oid = x.indexrelid"
            " JOIN pg_am a ON a.oid = c.relam"
            " WHERE x.indrelid = 'embeddings'::regclass AND a.amname = 'hnsw' AND x.indisvalid AND x.indisready"
            " AND pg_get_expr(x.indpred, x.indrelid) = %s"
            # The halfvec index, not the model's binary-quantised one (bit_hamming_ops).
            " AND pg_get_indexdef(x.indexrelid) LIKE '%%halfvec_cosine_ops%%' ORDER BY c.relname",
            (f"(model_id = {int(model_id)})",),
        ).fetchall()
        return [r[0] for r in rows]

    def hnsw_params(self, model_id: int) -> HnswParams | None:
        """The build parameters of the model's index, None when it has none."""
        found = self.index_params([hnsw_index_name(model_id)])
        return found[0][1] if found else None

    def index_params(self, names: Sequence[str]) -> list[tuple[str, HnswParams]]:
        """The build parameters of the named indexes that exist."""
        rows = self.conn.execute(
            "SELECT n.name, c.reloptions FROM unnest(%s::text[]) WITH ORDINALITY AS n(name, i)"
            " JOIN pg_class c ON c.oid = to_regclass(n.name) ORDER BY n.i",
            (list(names),),
        ).fetchall()
        found = []
        for name, reloptions in rows:
            options = dict(o.split("=", 1) for o in reloptions or [])
            m = int(options.get("m", DEFAULT_HNSW_M))
            found.append((name, HnswParams(m, int(options.get("ef_construction", DEFAULT_HNSW_EF_CONSTRUCTION)))))
        return found

    def drop_hnsw_index(self, model_id: int) -> HnswParams | None:
        """Drop a model's HNSW index before the first bulk load of a model (ingest drops only an index that
        serves nothing: see model_has_embeddings); returns its build parameters, for restore_hnsw_index. None when
        it had no index, or the role may not drop it."""
        params = self.hnsw_params(model_id)
        try:
            # Concurrently, although empty: a plain DROP INDEX locks the whole table (every model's searches) and
            # that lock is replayed on standbys.
            self.conn.execute(
                sql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {}").format(sql.Identifier(hnsw_index_name(model_id)))
            )
        except psycopg.errors.InsufficientPrivilege:
            return None  # a writer role may not drop it: the load goes into the index, slower but fine
        return params

    def restore_hnsw_index(self, model_id: int, dim: int, params: HnswParams | None) -> None:
        """Build the model's HNSW index if it has no valid one (a first bulk load, a run killed before the build),
        with `params` (else the defaults for its size: default_hnsw); finish or clean up an interrupted concurrent
        rebuild first. A plain CREATE INDEX: no index existed, so there is nothing to keep serving. A role that may
        not build it leaves it to the owner (`imagedb db check` reports it missing); a rebuild under way elsewhere
        is left to finish."""
        with suppress(psycopg.errors.InsufficientPrivilege), self.index_lock(model_id, wait=False) as locked:
            if not locked:
                return  # another process is building this model's index: it leaves a valid one
            self.repair_interrupted_build(model_id)
            if self.valid_hnsw_indexes(model_id):
                return
            if params in (None, DEFAULT_HNSW):  # nobody chose them (the empty index a model starts with has these)
                params = default_hnsw(self.store.models.embedding_count(model_id))
            with self._build_memory(model_id):
                self.conn.execute(_create_sql(hnsw_index_name(model_id), model_id, dim, params, concurrently=False))

    def sparse_large_indexes(self) -> list[tuple[str, int, HnswParams]]:
        """Models of LARGE_INDEX_ROWS vectors or more whose index is sparser than the default for their size (built
        small and grown since, or chosen so): (model name, vectors, the index's parameters)."""
        rows = self.conn.execute(
            "SELECT m.id, m.name, count(e.image_id) FROM embedding_models m JOIN embeddings e ON e.model_id = m.id"
            " GROUP BY m.id, m.name HAVING count(e.image_id) >= %s ORDER BY m.id",
            (LARGE_INDEX_ROWS,),
        ).fetchall()
        found = []
        for model_id, name, count in rows:
            params = self.hnsw_params(model_id)
            if params is not None and (params.m, params.ef_construction) < (DENSE_HNSW.m, DENSE_HNSW.ef_construction):
                found.append((str(name), int(count), params))
        return found

    def _chosen(self, model_id: int, m: int | None, ef_construction: int | None) -> HnswParams:
        default = default_hnsw(self.store.models.embedding_count(model_id))
        m = m or default.m
        ef_construction = ef_construction or max(default.ef_construction, 2 * m)
        if ef_construction < 2 * m:  # pgvector's own rule
            raise InvalidInput(f"--ef-construction must be at least 2 * m = {2 * m}")
        return HnswParams(m, ef_construction)

    def rebuild_hnsw_index(self, model_id: int, dim: int, params: HnswParams) -> str:
        """Build the model's HNSW index again with `params`, while the old one keeps serving searches; returns
        the index name. Waits for a rebuild of the same model elsewhere to finish first."""
        name, building = hnsw_index_name(model_id), hnsw_index_name(model_id) + BUILD_SUFFIX
        with self.index_lock(model_id, wait=True):
            self.repair_interrupted_build(model_id)
            self.drop_concurrently(building)  # a valid leftover of a run stopped before its swap
            try:
                with self._build_memory(model_id):
                    self.conn.execute(_create_sql(building, model_id, dim, params, concurrently=True))
            except BaseException:
                # A failed or cancelled concurrent build leaves an INVALID index behind; remove it now if the
                # connection still works, else the next rebuild does (`imagedb db check` reports it meanwhile).
                with suppress(psycopg.Error):
                    self.drop_concurrently(building)
                raise
            # From here two valid indexes exist; the planner uses either, and then the new one alone.
            self.drop_concurrently(name)
            self.rename(building, name)
        return name

    def rebuild_indexes(self, m: int | None = None, ef_construction: int | None = None) -> list[str]:
        """Rebuild every model's HNSW index with new build parameters, without downtime; returns the names. What is
        not given comes from the defaults for each model's size (default_hnsw)."""
        models = self.conn.execute("SELECT id, dim FROM embedding_models ORDER BY id").fetchall()
        # Every model's parameters are checked before any index is built: one refused must leave all unchanged.
        chosen = [(model_id, dim, self._chosen(model_id, m, ef_construction)) for model_id, dim in models]
        try:
            self.store.leftovers.remove()  # also those of no model's build: a deleted model's, an invalid one's
            return [self.rebuild_hnsw_index(model_id, dim, params) for model_id, dim, params in chosen]
        except psycopg.errors.InsufficientPrivilege as exc:
            raise ImagedbError(
                "only the owner of the embeddings table may rebuild its indexes: run `imagedb db reindex` as"
                " the role that ran `imagedb db upgrade`"
            ) from exc

    def quantize_indexes(self, rerank: int | None, m: int, ef_construction: int) -> list[str]:
        """Give every model a binary-quantised HNSW index that searches read for `rerank` candidates, re-ranked
        exactly on the stored halfvec; with `rerank` None, remove those indexes. Returns the indexes built.

        The halfvec index stays: it serves searches while the binary one builds (the model's rerank is NULL
        until the build is done), and filtered or exact paths keep it."""
        models = self.conn.execute("SELECT id, dim FROM embedding_models ORDER BY id").fetchall()
        built = []
        try:
            self.store.leftovers.remove()
            for model_id, dim in models:
                with self.index_lock(model_id, wait=True):
                    self.repair_interrupted_build(model_id)
                    self.conn.execute("UPDATE embedding_models SET rerank = NULL WHERE id = %s", (model_id,))
                    self.drop_concurrently(binary_index_name(model_id))
                    if rerank is None:
                        continue
                    try:
                        with self._build_memory(model_id):
                            self.conn.execute(
                                _create_binary_sql(
                                    binary_index_name(model_id), model_id, dim, HnswParams(m, ef_construction)
                                )
                            )
                    except BaseException:
                        with suppress(psycopg.Error):  # a failed concurrent build leaves an INVALID index
                            self.drop_concurrently(binary_index_name(model_id))
                        raise
                    self.conn.execute("UPDATE embedding_models SET rerank = %s WHERE id = %s", (rerank, model_id))
                    built.append(binary_index_name(model_id))
        except psycopg.errors.InsufficientPrivilege as exc:
            raise ImagedbError(
                "only the owner of the embeddings table may change its indexes: run `imagedb db reindex` as"
                " the role that ran `imagedb db upgrade`"
            ) from exc
        return built

    def repair_interrupted_build(self, model_id: int) -> None:
        """Undo what a concurrent build, swap, drop or quantisation stopped halfway left (store/leftovers.py); the
        caller holds the model's build lock."""
        self.store.leftovers.repair_model(model_id)

    def drop_concurrently(self, name: str) -> None:
        # Outside any transaction (the connection is in autocommit mode): waits for searches using the index.
        self.conn.execute(sql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {}").format(sql.Identifier(name)))

    def rename(self, old: str, new: str) -> None:
        # ALTER INDEX ... RENAME takes SHARE UPDATE EXCLUSIVE on the index (PostgreSQL >= 12): searches and
        # writes go on, and no lock record reaches a standby (tests/test_rebuilds.py checks the lock mode).
        self.conn.execute(sql.SQL("ALTER INDEX {} RENAME TO {}").format(sql.Identifier(old), sql.Identifier(new)))

    @contextmanager
    def index_lock(self, model_id: int, *, wait: bool) -> Iterator[bool]:
        """One index build per model at a time, across processes (a session lock: the builds run outside
        transactions). Waiting polls instead of blocking in pg_advisory_lock: a statement blocked there is a
        transaction, which the other process's CREATE INDEX CONCURRENTLY waits for, a deadlock (found by
        tests/test_rebuilds.py)."""
        while not (locked := self._try_index_lock(model_id)) and wait:
            time.sleep(_LOCK_POLL_S)
        try:
            yield locked
        finally:
            if locked and not (self.conn.closed or self.conn.broken):
                self.conn.execute("SELECT pg_advisory_unlock(%s, %s)", (_INDEX_LOCK, model_id))

    def _try_index_lock(self, model_id: int) -> bool:
        row = self.conn.execute("SELECT pg_try_advisory_lock(%s, %s)", (_INDEX_LOCK, model_id)).fetchone()
        return bool(row[0])  # type: ignore[index]

    def _graph_bytes(self, model_id: int) -> int:
        rows, dim = self.conn.execute(
            "SELECT (SELECT count(*) FROM embeddings WHERE model_id = %s), (SELECT dim FROM embedding_models"
            " WHERE id = %s)",
            (model_id, model_id),
        ).fetchone()  # type: ignore[misc]
        wanted = int(rows) * (2 * int(dim or 0) + _GRAPH_BYTES_PER_ROW)
        return min(wanted, cpus.memory() // 4)

    @contextmanager
    def _build_memory(self, model_id: int | None = None) -> Iterator[None]:
        """maintenance_work_mem of at least BUILD_MEMORY for this session's builds, put back afterwards.
        On the session, not the transaction: CREATE INDEX CONCURRENTLY runs outside a transaction block. Put back
        to the session's own value rather than RESET, which would also undo a SET of the caller's.
        Measured (bench/vectors_bench.py): the build's graph must fit in maintenance_work_mem to stay fast."""
        before = self.conn.execute("SELECT current_setting('maintenance_work_mem')").fetchone()[0]  # type: ignore[index]
        memory = BUILD_MEMORY
        if model_id is not None:
            memory = f"{max(self._graph_bytes(model_id) >> 20, 1024)}MB"
        self.conn.execute(
            "SELECT set_config('maintenance_work_mem', %s, false)"
            " WHERE pg_size_bytes(current_setting('maintenance_work_mem')) < pg_size_bytes(%s)",
            (memory, memory),
        )
        try:
            yield
        finally:
            if not (self.conn.closed or self.conn.broken):
                self.conn.execute("SELECT set_config('maintenance_work_mem', %s, false)", (before,))

    def build_hnsw_index_concurrently(self, model_id: int, dim: int) -> None:
        """Build the model's HNSW index if it has no valid one, with CREATE INDEX CONCURRENTLY: ingests into the
        table go on meanwhile (a plain CREATE INDEX would block every model's writes for the whole build)."""
        params = self.hnsw_params(model_id)
        with self.index_lock(model_id, wait=True):
            self.repair_interrupted_build(model_id)
            if self.valid_hnsw_indexes(model_id):
                return
            name = hnsw_index_name(model_id)
            try:
                with self._build_memory():
                    self.conn.execute(_create_sql(name, model_id, dim, params or DEFAULT_HNSW, concurrently=True))
            except BaseException:
                with suppress(psycopg.Error):
                    self.drop_concurrently(name)  # an invalid index left by the failed build
                raise
