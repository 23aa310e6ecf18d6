"""Indexes imagedb did not mean to keep (issue 22, item 7): a `_next` copy that a killed `db reindex` leaves valid
(PostgreSQL finishes CREATE INDEX CONCURRENTLY after its client is gone), a valid binary index no rerank was
recorded for, an invalid binary index of a crashed `--quantize binary`. `db check` names them and `db repair`;
`db repair`, the next `db reindex` and the next ingest remove them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import psycopg
import pytest
from click.testing import CliRunner, Result

from imagedb.cli import main
from imagedb.store import Store
from imagedb.store.index import BUILD_SUFFIX, HnswParams, _create_binary_sql, binary_index_name, hnsw_index_name

from helpers import fill_synthetic


def _cli(url: str, *args: str) -> Result:
    return CliRunner().invoke(main, ["--database-url", url, *args])


def _indexes(store: Store) -> list[tuple[str, bool]]:
    return store.conn.execute(
        "SELECT c.relname, x.indisvalid FROM pg_index x JOIN pg_class c ON c.oid = x.indexrelid"
        " WHERE x.indrelid = 'embeddings'::regclass AND c.relname LIKE 'embeddings_hnsw%' ORDER BY 1"
    ).fetchall()


def _next_copy(store: Store, model_id: int) -> str:
    """The `_next` index exactly as a `db reindex` killed after its build and before its swap leaves it: valid."""
    name = hnsw_index_name(model_id) + BUILD_SUFFIX
    store.conn.execute(
        f"CREATE INDEX CONCURRENTLY {name} ON embeddings USING hnsw ((embedding::halfvec(32)) halfvec_cosine_ops)"
        f" WHERE model_id = {model_id}"
    )
    return name


def _check(url: str) -> Result:
    result = _cli(url, "db", "check")
    assert "Traceback" not in result.output, result.output
    return result


def test_a_next_copy_beside_the_real_index_is_found_and_removed_by_repair(store: Store, database_url: str) -> None:
    collection = fill_synthetic(store, 200)
    name = _next_copy(store, collection.model_id)
    check = _check(database_url)
    assert check.exit_code == 1 and name in check.output and "`imagedb db repair`" in check.output, check.output
    assert "stopped before its swap" in check.output
    repair = _cli(database_url, "db", "repair")
    assert repair.exit_code == 0 and f"removed index {name}" in repair.output, repair.output
    assert _indexes(store) == [(hnsw_index_name(collection.model_id), True)]
    assert store.leftovers.indexes() == []


def test_the_next_ingest_and_the_next_reindex_remove_a_next_copy(store: Store, database_url: str) -> None:
    collection = fill_synthetic(store, 200)
    _next_copy(store, collection.model_id)
    store.index.restore_hnsw_index(collection.model_id, collection.dim, None)  # what every ingest runs at its end
    assert _indexes(store) == [(hnsw_index_name(collection.model_id), True)]
    _next_copy(store, collection.model_id)
    assert _cli(database_url, "db", "reindex").exit_code == 0
    assert _indexes(store) == [(hnsw_index_name(collection.model_id), True)]


@pytest.mark.slow
def test_a_binary_index_without_rerank_is_a_leftover_and_with_rerank_is_kept(store: Store, database_url: str) -> None:
    collection = fill_synthetic(store, 200)
    bits = binary_index_name(collection.model_id)
    # What a `--quantize binary` killed after its build leaves: the index valid, the model's rerank never set.
    store.conn.execute(_create_binary_sql(bits, collection.model_id, collection.dim, HnswParams(16, 64)))
    check = _check(database_url)
    assert check.exit_code == 1 and bits in check.output and "never finished" in check.output, check.output
    store.index.restore_hnsw_index(collection.model_id, collection.dim, None)  # the next ingest
    assert bits not in dict(_indexes(store))
    # A finished quantisation is kept, by check, repair, ingest and a halfvec reindex alike.
    assert _cli(database_url, "db", "reindex", "--quantize", "binary").exit_code == 0
    assert _cli(database_url, "db", "repair").exit_code == 0
    store.index.restore_hnsw_index(collection.model_id, collection.dim, None)
    assert _cli(database_url, "db", "reindex").exit_code == 0
    assert (bits, True) in _indexes(store)
    assert store.leftovers.indexes() == []


@pytest.mark.slow
def test_an_invalid_binary_index_is_removed_by_the_reindex_check_advises(store: Store, database_url: str) -> None:
    collection = fill_synthetic(store, 300)
    bits = binary_index_name(collection.model_id)
    # A concurrent build stopped midway (a server crash, a cancel) leaves the index INVALID.
    with psycopg.connect(database_url) as writer:
        writer.execute("LOCK TABLE embeddings IN ROW EXCLUSIVE MODE")
        store.conn.execute("SET statement_timeout = '300ms'")
        with pytest.raises(psycopg.errors.QueryCanceled):
            store.conn.execute(_create_binary_sql(bits, collection.model_id, collection.dim, HnswParams(16, 64)))
        store.conn.execute("RESET statement_timeout")
    assert (bits, False) in _indexes(store)
    check = _check(database_url)
    assert check.exit_code == 1 and f"{bits} on embeddings (invalid" in check.output, check.output
    reindex = _cli(database_url, "db", "reindex")  # before, only `--quantize none` removed it
    assert reindex.exit_code == 0, reindex.output
    assert _indexes(store) == [(hnsw_index_name(collection.model_id), True)]
    assert [p for p in store.admin.problems() if "perceptual hash" not in p] == []  # synthetic rows have none


def test_a_build_under_way_elsewhere_is_not_a_leftover(store: Store, database_url: str) -> None:
    collection = fill_synthetic(store, 200)
    name = _next_copy(store, collection.model_id)
    with psycopg.connect(database_url, autocommit=True) as builder:  # holds the model's build lock, as reindex does
        assert builder.execute("SELECT pg_try_advisory_lock(%s, %s)", (0x1A6F, collection.model_id)).fetchone()[0]
        assert store.leftovers.indexes() == []
        assert store.leftovers.remove() == []
        assert name in dict(_indexes(store))
        # Unlocked here: a closed connection's backend may hold its locks a moment longer.
        builder.execute("SELECT pg_advisory_unlock(%s, %s)", (0x1A6F, collection.model_id))
    assert [x.name for x in store.leftovers.indexes()] == [name]


@pytest.mark.slow
def test_a_killed_reindex_leaves_a_valid_next_copy_that_check_and_repair_handle(
    store: Store, database_url: str
) -> None:
    """The real thing: `imagedb db reindex` killed (SIGKILL) while CREATE INDEX CONCURRENTLY runs."""
    collection = fill_synthetic(store, 6000)
    name = hnsw_index_name(collection.model_id) + BUILD_SUFFIX
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    run = subprocess.Popen(
        [sys.executable, "-m", "imagedb", "--database-url", database_url, "db", "reindex", "--m", "32"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while not store.conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE query LIKE 'CREATE INDEX CONCURRENTLY%%' AND query LIKE %s",
            (f"%{name}%",),
        ).fetchone():
            assert time.monotonic() < deadline and run.poll() is None, "the reindex never started its build"
            time.sleep(0.02)
        run.send_signal(signal.SIGKILL)
    finally:
        run.wait(10)
    deadline = time.monotonic() + 120
    while store.conn.execute(  # the server goes on with the build for the client that is gone
        "SELECT 1 FROM pg_stat_activity WHERE query LIKE 'CREATE INDEX CONCURRENTLY%%' AND state = 'active'"
        " AND pid <> pg_backend_pid()"
    ).fetchone():
        assert time.monotonic() < deadline
        time.sleep(0.1)
    indexes = dict(_indexes(store))
    assert indexes.get(hnsw_index_name(collection.model_id)) is True
    assert indexes.get(name) is not None  # valid when the build finished, invalid if the server stopped it
    check = _check(database_url)
    assert check.exit_code == 1 and name in check.output and "`imagedb db repair`" in check.output, check.output
    assert _cli(database_url, "db", "repair").exit_code == 0
    assert _indexes(store) == [(hnsw_index_name(collection.model_id), True)]
