"""HNSW rebuilds without downtime: a valid index for the model at every moment, searches never blocked,
interrupted builds cleaned up, and bulk loads that leave a serving index in place."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import psycopg
import pytest
from click.testing import CliRunner
from PIL import Image

from imagedb.cli import main
from imagedb.embed import ModelSpec
from imagedb.errors import InvalidInput
from imagedb.ingest import ingest
from imagedb.pg.database import open_connection
from imagedb.progress import NoProgress
from imagedb.store import Store, index
from imagedb.store.index import BUILD_SUFFIX, HnswParams, hnsw_index_name

from helpers import fill_synthetic


class _Observe(NoProgress):
    """Looks at the database after each stored batch of an ingest (the embedding phase's steps)."""

    def __init__(self, look: Callable[[], None]) -> None:
        self.look = look
        self.current = ""

    def phase(self, name: str, total: int | None = None, detail: str = "") -> None:
        self.current = name

    def advance(self, n: int = 1) -> None:
        if self.current == "embedding":
            self.look()


def _model_indexes(store: Store, model_id: int) -> list[tuple[str, bool]]:
    """Every index of the model's names, valid or not."""
    rows = store.conn.execute(
        "SELECT c.relname, x.indisvalid FROM pg_index x JOIN pg_class c ON c.oid = x.indexrelid"
        " WHERE x.indrelid = 'embeddings'::regclass AND c.relname ~ %s ORDER BY 1",
        (f"^{hnsw_index_name(model_id)}(_.*)?$",),
    ).fetchall()
    return [(r[0], r[1]) for r in rows]


def _index_problems(store: Store) -> list[str]:
    """`imagedb db check` findings, less the missing hashes of synthetic rows."""
    return [p for p in store.admin.problems() if "perceptual hash" not in p]


class Watcher(threading.Thread):
    """On its own connection, over and over: is there a valid HNSW index for the model (by predicate), and does
    a search answer without waiting on a lock?"""

    def __init__(self, database_url: str, collection) -> None:  # type: ignore[no-untyped-def]
        super().__init__(daemon=True)
        self.store = Store(open_connection(database_url))
        # Searches must never queue behind the rebuild: a lock wait longer than this fails the search.
        self.store.conn.execute("SET lock_timeout = '200ms'")
        self.collection = collection
        self.stop = threading.Event()
        self.checks = 0
        self.failures: list[str] = []
        self.query = np.random.default_rng(5).standard_normal(collection.dim).astype(np.float32)

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                try:
                    if not self.store.index.valid_hnsw_indexes(self.collection.model_id):
                        self.failures.append(f"no valid index at check {self.checks}")
                    if len(self.store.search.nearest(self.collection, self.query, 10)) != 10:
                        self.failures.append(f"short result at check {self.checks}")
                except psycopg.Error as exc:
                    self.failures.append(f"check {self.checks} failed: {exc}")
                self.checks += 1
        finally:
            self.store.close()


class _HeldBuild(threading.Thread):
    """Holds the rebuild's concurrent build in its wait for older snapshots (a REPEATABLE READ transaction of
    another session, as any long report would) until the watcher has made `checks` more checks meanwhile: then the
    searches provably ran during the rebuild, however fast this machine builds (a 5,000-vector build took ~1 s here
    and may take a tenth of that elsewhere), and checks that stall fail the test."""

    def __init__(self, database_url: str, watcher: Watcher, checks: int) -> None:
        super().__init__(daemon=True)
        self.database_url, self.watcher, self.checks = database_url, watcher, checks
        self.snapshot = psycopg.connect(database_url)
        self.snapshot.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        self.snapshot.execute("SELECT 1")  # the snapshot is taken here and kept until the rollback
        self.problem = ""

    def run(self) -> None:
        try:
            with psycopg.connect(self.database_url, autocommit=True) as probe:
                deadline = time.monotonic() + 60
                while not probe.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                    " AND wait_event_type = 'Lock' AND query LIKE 'CREATE INDEX CONCURRENTLY%%'"
                ).fetchone()[0]:  # type: ignore[index]
                    if time.monotonic() > deadline:
                        self.problem = "the rebuild never waited for the older snapshot"
                        return
                    time.sleep(0.01)
            wanted, deadline = self.watcher.checks + self.checks, time.monotonic() + 60
            while self.watcher.checks < wanted:
                if time.monotonic() > deadline:
                    self.problem = f"the searches stalled during the rebuild at check {self.watcher.checks}"
                    return
                time.sleep(0.01)
        finally:
            self.snapshot.rollback()
            self.snapshot.close()


@pytest.mark.slow
def test_rebuild_keeps_a_valid_index_and_answers_searches_throughout(store: Store, database_url: str) -> None:
    collection = fill_synthetic(store, 5000)
    watcher = Watcher(database_url, collection)
    watcher.start()
    time.sleep(0.2)
    held = _HeldBuild(database_url, watcher, checks=5)
    held.start()
    before = watcher.checks
    started = time.perf_counter()
    names = store.index.rebuild_indexes(m=16, ef_construction=128)
    seconds = time.perf_counter() - started
    during = watcher.checks - before
    held.join(30)
    time.sleep(0.2)
    watcher.stop.set()
    watcher.join(30)
    assert held.problem == ""
    assert watcher.failures == [], watcher.failures[:5]
    assert during >= 5, f"only {during} checks during a {seconds:.2f} s rebuild"
    assert names == [hnsw_index_name(collection.model_id)]
    assert _model_indexes(store, collection.model_id) == [(names[0], True)]


@pytest.mark.slow
def test_rebuild_changes_parameters_keeps_the_name_and_resets_the_session(store: Store) -> None:
    collection = fill_synthetic(store, 3000)
    store.conn.execute("SET maintenance_work_mem = '100MB'")
    store.index.rebuild_indexes(m=8, ef_construction=32)
    assert store.index.hnsw_params(collection.model_id) == HnswParams(8, 32)
    assert store.conn.execute("SHOW maintenance_work_mem").fetchone()[0] == "100MB"
    # The index the planner uses is the new one, under the name docs/sql.md and EXPLAIN show.
    query = np.ones(32, dtype=np.float32)
    assert f"Index Scan using {hnsw_index_name(collection.model_id)}" in store.search.explain_nearest(
        collection, query, 10
    )
    assert _index_problems(store) == []


def _interrupted_concurrent_build(store: Store, database_url: str, model_id: int, dim: int) -> None:
    """A CREATE INDEX CONCURRENTLY cancelled while it waits for a writer: PostgreSQL leaves it INVALID."""
    with psycopg.connect(database_url) as writer:  # an open transaction holding ROW EXCLUSIVE on embeddings
        writer.execute("LOCK TABLE embeddings IN ROW EXCLUSIVE MODE")
        store.conn.execute("SET statement_timeout = '300ms'")
        with pytest.raises(psycopg.errors.QueryCanceled):
            store.conn.execute(
                f"CREATE INDEX CONCURRENTLY {hnsw_index_name(model_id)}{BUILD_SUFFIX} ON embeddings USING hnsw"
                f" ((embedding::halfvec({dim})) halfvec_cosine_ops) WHERE model_id = {model_id}"
            )
        store.conn.execute("RESET statement_timeout")


@pytest.mark.slow
def test_an_interrupted_concurrent_build_is_dropped_by_the_next_rebuild(store: Store, database_url: str) -> None:
    collection = fill_synthetic(store, 300)
    _interrupted_concurrent_build(store, database_url, collection.model_id, collection.dim)
    leftover = f"{hnsw_index_name(collection.model_id)}{BUILD_SUFFIX}"
    assert (leftover, False) in _model_indexes(store, collection.model_id)
    assert any("invalid: its build was interrupted" in p for p in _index_problems(store))
    result = CliRunner().invoke(main, ["--database-url", database_url, "db", "reindex"])
    assert result.exit_code == 0, result.output
    assert "searches used the old index meanwhile" in result.output
    assert _model_indexes(store, collection.model_id) == [(hnsw_index_name(collection.model_id), True)]
    assert _index_problems(store) == []


@pytest.mark.slow
def test_an_interrupted_build_is_also_cleaned_up_by_the_next_ingest(store: Store, database_url: str) -> None:
    collection = fill_synthetic(store, 300)
    _interrupted_concurrent_build(store, database_url, collection.model_id, collection.dim)
    store.index.restore_hnsw_index(collection.model_id, collection.dim, None)  # what every ingest runs at its end
    assert _model_indexes(store, collection.model_id) == [(hnsw_index_name(collection.model_id), True)]


def test_a_swap_stopped_after_the_old_index_was_dropped_is_finished(store: Store) -> None:
    collection = fill_synthetic(store, 300)
    name = hnsw_index_name(collection.model_id)
    store.conn.execute(
        f"CREATE INDEX CONCURRENTLY {name}{BUILD_SUFFIX} ON embeddings USING hnsw"
        f" ((embedding::halfvec(32)) halfvec_cosine_ops) WITH (m = 8) WHERE model_id = {collection.model_id}"
    )
    store.conn.execute(f"DROP INDEX CONCURRENTLY {name}")
    store.index.restore_hnsw_index(collection.model_id, collection.dim, None)
    # Renamed, not built again: it keeps the new index's parameters, and no second index is left.
    assert _model_indexes(store, collection.model_id) == [(name, True)]
    assert store.index.hnsw_params(collection.model_id) == HnswParams(8, 64)


def test_renaming_an_index_takes_no_lock_that_blocks_searches_or_reaches_a_standby(store: Store) -> None:
    collection = fill_synthetic(store, 50)
    name = hnsw_index_name(collection.model_id)
    with store.conn.transaction(force_rollback=True):
        store.conn.execute(f"ALTER INDEX {name} RENAME TO renamed_for_the_test")
        locks = store.conn.execute(
            "SELECT c.relname, l.mode FROM pg_locks l JOIN pg_class c ON c.oid = l.relation"
            " WHERE l.pid = pg_backend_pid() AND c.relname IN ('renamed_for_the_test', 'embeddings')"
        ).fetchall()
    # Only ACCESS EXCLUSIVE locks are written to the WAL for standbys; searches take ACCESS SHARE.
    assert locks == [("renamed_for_the_test", "ShareUpdateExclusiveLock")]


@pytest.mark.slow
def test_concurrent_rebuilds_of_one_model_take_turns(store: Store, database_url: str) -> None:
    collection = fill_synthetic(store, 1000)
    errors: list[BaseException] = []

    def rebuild(m: int) -> None:
        other = Store(open_connection(database_url))
        try:
            other.index.rebuild_indexes(m=m, ef_construction=64)
        except BaseException as exc:  # reported by the assertion below
            errors.append(exc)
        finally:
            other.close()

    threads = [threading.Thread(target=rebuild, args=(m,)) for m in (8, 12, 16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert errors == []
    assert _model_indexes(store, collection.model_id) == [(hnsw_index_name(collection.model_id), True)]
    assert _index_problems(store) == []


def _noise_images(folder: Path, count: int) -> Path:
    folder.mkdir()
    rng = np.random.default_rng(11)
    for i in range(count):
        Image.fromarray((rng.random((40, 48, 3)) * 255).astype("uint8")).save(folder / f"more_{i:02d}.png")
    return folder


def test_a_bulk_load_into_a_serving_index_keeps_it(
    store: Store, database_url: str, photos: Path, tiny_model: str, tmp_path: Path
) -> None:
    spec = ModelSpec.parse(tiny_model)
    ingest(store, [photos], model=spec)
    model_id = store.models.get_collection("default").model_id  # type: ignore[union-attr]
    observer = Store(open_connection(database_url))
    seen: list[list[str]] = []
    try:
        # More new files than are indexed, over the threshold: the case that used to drop the index.
        more = _noise_images(tmp_path / "more", 20)
        summary = ingest(
            store,
            [more],
            bulk_threshold=5,
            batch_size=4,
            progress=_Observe(lambda: seen.append(observer.index.valid_hnsw_indexes(model_id))),
        )
    finally:
        observer.close()
    assert summary.added == 20
    assert len(seen) == 5 and all(seen), seen
    assert _index_problems(store) == []


def test_a_first_bulk_load_still_builds_the_index_after_the_load(
    store: Store, database_url: str, tiny_model: str, tmp_path: Path
) -> None:
    spec = ModelSpec.parse(tiny_model)
    observer = Store(open_connection(database_url))
    seen: list[list[str]] = []
    try:
        more = _noise_images(tmp_path / "more", 12)
        ingest(
            store,
            [more],
            model=spec,
            bulk_threshold=5,
            batch_size=4,
            progress=_Observe(lambda: seen.append(observer.index.valid_hnsw_indexes(1))),
        )
    finally:
        observer.close()
    assert seen == [[], [], []]  # nothing to serve yet: loaded without the index
    assert _model_indexes(store, 1) == [(hnsw_index_name(1), True)]
    assert _index_problems(store) == []


@pytest.mark.slow
def test_build_parameters_follow_the_size_unless_chosen(
    store: Store, tiny_model: str, photos: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A model of LARGE_INDEX_ROWS vectors or more gets the denser graph (m 24, ef_construction 128) when nobody
    chose its parameters: at its first bulk load and at `imagedb db reindex` without --m/--ef-construction. The
    threshold is lowered here, so that 12 photos count as a large model and 3,000 vectors as a small one."""
    monkeypatch.setattr(index, "LARGE_INDEX_ROWS", 10)
    summary = ingest(store, [photos], collection="large", model=ModelSpec.parse(tiny_model), bulk_threshold=5)
    model_id = store.models.get_collection("large").model_id  # type: ignore[union-attr]
    assert summary.added + summary.reused == 12
    assert store.index.hnsw_params(model_id) == index.DENSE_HNSW
    small = fill_synthetic(store, 3000)
    monkeypatch.setattr(index, "LARGE_INDEX_ROWS", 5000)
    store.index.rebuild_indexes()
    assert store.index.hnsw_params(small.model_id) == index.DEFAULT_HNSW
    assert store.index.hnsw_params(model_id) == index.DEFAULT_HNSW  # 12 is small again
    store.index.rebuild_indexes(m=32)  # ef_construction follows: at least 2 * m
    assert store.index.hnsw_params(small.model_id) == HnswParams(32, 64)
    with pytest.raises(InvalidInput, match="at least 2 \\* m = 64"):
        store.index.rebuild_indexes(m=32, ef_construction=40)
    monkeypatch.setattr(index, "LARGE_INDEX_ROWS", 1000)
    store.index.rebuild_indexes(ef_construction=200)
    assert store.index.hnsw_params(small.model_id) == HnswParams(24, 200)


def test_db_check_advises_a_reindex_for_a_large_model_on_a_sparse_graph(
    store: Store, database_url: str, tiny_model: str, photos: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An index built small and grown past LARGE_INDEX_ROWS keeps its parameters: `db check` says so (exit 0).
    The threshold is lowered so that 12 photos make a large model; they go into the index the model started with."""
    summary = ingest(store, [photos], model=ModelSpec.parse(tiny_model))
    model_id = store.models.get_collection(summary.collection).model_id  # type: ignore[union-attr]
    monkeypatch.setenv("IMAGEDB_DATABASE_URL", database_url)
    result = CliRunner().invoke(main, ["db", "check"])
    assert result.exit_code == 0 and "note:" not in result.output, result.output
    monkeypatch.setattr(index, "LARGE_INDEX_ROWS", 10)
    result = CliRunner().invoke(main, ["db", "check"])
    assert result.exit_code == 0, result.output
    assert "holds 12 vectors in an index built with m 16, ef_construction 64" in result.output
    result = CliRunner().invoke(main, ["db", "reindex"])
    assert result.exit_code == 0, result.output
    assert f"{hnsw_index_name(model_id)} (m=24, ef_construction=128)" in result.output
    assert "note:" not in CliRunner().invoke(main, ["db", "check"]).output


def test_bad_build_parameters_are_refused_before_any_index_changes(
    store: Store, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`db reindex --ef-construction 40` over a small model (m 16: 40 is enough) and a large one (m 24: 40 < 48)
    is refused with exit code 2 before anything is built; it used to rebuild the small model's index first. And
    `--quantize binary --ef-construction 10` (m 16) is refused the same way, where it dropped the binary indexes
    and failed with a database error (exit code 1)."""
    small = fill_synthetic(store, 50, name="small")
    large = fill_synthetic(store, 300, name="large", seed=1)
    monkeypatch.setattr(index, "LARGE_INDEX_ROWS", 200)
    runner = CliRunner()
    assert runner.invoke(main, ["--database-url", database_url, "db", "reindex", "--quantize", "binary"]).exit_code == 0
    indexes = store.conn.execute("SELECT indexrelid FROM pg_index ORDER BY 1").fetchall()
    for options in (["--ef-construction", "40"], ["--quantize", "binary", "--ef-construction", "10"]):
        result = runner.invoke(main, ["--database-url", database_url, "db", "reindex", *options])
        assert result.exit_code == 2, result.output
        assert "at least 2 * m" in result.output.splitlines()[-1], result.output
        assert store.index.hnsw_params(small.model_id) == store.index.hnsw_params(large.model_id) == index.DEFAULT_HNSW
        assert store.conn.execute("SELECT indexrelid FROM pg_index ORDER BY 1").fetchall() == indexes
        assert store.conn.execute("SELECT count(*) FROM embedding_models WHERE rerank IS NULL").fetchone() == (0,)


def test_reindex_options_that_would_do_nothing_are_refused(database_url: str) -> None:
    """`db reindex --hashes --m 30` ignored --m without a word."""
    for options, words in (
        (["--hashes", "--m", "30"], "--hashes builds no index: --m would do nothing"),
        (["--quantize", "none", "--ef-construction", "80"], "only removes the binary indexes: --ef-construction"),
        # --rerank without --quantize binary rebuilt the halfvec indexes, rerank unused.
        (["--rerank", "5"], "--rerank is for --quantize binary"),
        (["--quantize", "none", "--rerank", "5"], "--rerank is for --quantize binary"),
        (["--hashes", "--rerank", "5"], "--rerank is for --quantize binary"),
    ):
        result = CliRunner().invoke(main, ["--database-url", database_url, "db", "reindex", *options])
        assert result.exit_code == 2 and words in result.output, result.output


def test_check_options_for_recall_need_recall(database_url: str) -> None:
    """`db check -c nope --queries 5` ran the plain check, the two options unused."""
    for options in (["-c", "nope"], ["--queries", "5"]):
        result = CliRunner().invoke(main, ["--database-url", database_url, "db", "check", *options])
        assert result.exit_code == 2 and "for --recall" in result.output, result.output


class _CtrlCWhileEmbedding:
    """A Progress that raises KeyboardInterrupt (what Ctrl-C raises in the main thread) once a batch is stored."""

    def __init__(self) -> None:
        self.embedding = False

    def phase(self, name: str, total: int | None = None, detail: str = "") -> None:
        self.embedding = name == "embedding"
        assert name != "building index", "the index was being built after Ctrl-C"

    def advance(self, n: int = 1) -> None:
        if self.embedding:
            raise KeyboardInterrupt


def test_ctrl_c_during_a_first_bulk_load_stops_without_building_the_index(
    store: Store, tiny_model: str, photos: Path
) -> None:
    """Ctrl-C during a model's first bulk load ends the run at once, as a kill would: the build (minutes at a
    million vectors) is left to the next run, which makes it; `db check` reports the index missing meanwhile."""
    stopped = ingest(store, [photos], collection="bulk", model=ModelSpec.parse(tiny_model), batch_size=2,
                     bulk_threshold=5, progress=_CtrlCWhileEmbedding())  # fmt: skip
    assert stopped.interrupted  # a summary of what was kept, not an exception (imagedb ingest prints it)
    model_id = store.models.get_collection("bulk").model_id  # type: ignore[union-attr]
    assert _model_indexes(store, model_id) == []
    assert any("without their HNSW index" in p for p in _index_problems(store))
    summary = ingest(store, [photos], collection="bulk", bulk_threshold=5)
    assert summary.added + summary.reused + summary.skipped == 12
    assert _model_indexes(store, model_id) == [(hnsw_index_name(model_id), True)]


class _CtrlCAtTheIndexBuild(NoProgress):
    def phase(self, name: str, total: int | None = None, detail: str = "") -> None:
        if name == "building index":
            raise KeyboardInterrupt


def test_ctrl_c_just_after_the_last_commit_is_a_summary_of_what_was_committed(
    store: Store, tiny_model: str, photos: Path
) -> None:
    """Ctrl-C (or a watch's SIGTERM) landing after the last batch committed, while claims are released and the
    index put back, once escaped ingest(): the caller counted none of the committed images."""
    summary = ingest(store, [photos], collection="late", model=ModelSpec.parse(tiny_model), batch_size=2,
                     bulk_threshold=5, progress=_CtrlCAtTheIndexBuild())  # fmt: skip
    assert summary.interrupted and summary.added == 12
    stored = store.conn.execute(
        "SELECT count(*) FROM images i JOIN collections c ON c.id = i.collection_id WHERE c.name = 'late'"
    ).fetchone()
    assert stored == (12,)
