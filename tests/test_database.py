"""The database side: index-backed queries, schema and migrations, views, and a server that is down."""

from __future__ import annotations

from datetime import datetime, timezone

import numpy as np
import psycopg
import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine

from imagedb.errors import DatabaseUnavailable, SchemaOutOfDate
from imagedb.pg.connection import sqlalchemy_url
from imagedb.pg.database import open_connection
from imagedb.pg.migrate import upgrade
from imagedb.schema import metadata
from imagedb.store import ImageRecord, Store
from imagedb.store.index import HNSW_INDEX_PREFIX

from helpers import fill_synthetic

NOW = datetime.now(timezone.utc)


@pytest.mark.slow
def test_nearest_neighbour_query_uses_the_hnsw_index(store: Store) -> None:
    collection = fill_synthetic(store, 3000)
    query = np.ones(32, dtype=np.float32) / np.sqrt(32)
    plan = store.search.explain_nearest(collection, query, 10)
    assert f"Index Scan using {HNSW_INDEX_PREFIX}{collection.model_id}" in plan, plan


@pytest.mark.slow
def test_hnsw_search_matches_exact_search_on_a_larger_set(store: Store) -> None:
    collection = fill_synthetic(store, 3000)
    ids, matrix = store.search.all_vectors(collection)
    rng = np.random.default_rng(1)
    found = 0
    for _ in range(20):
        query = rng.standard_normal(32).astype(np.float32)
        exact = {ids[i] for i in np.argsort(-(matrix @ query))[:10]}
        found += len(exact & {h.image_id for h in store.search.nearest(collection, query, 10, ef_search=200)})
    assert found / 200 >= 0.95


@pytest.mark.slow
def test_other_collections_of_the_same_model_do_not_starve_results(store: Store) -> None:
    big = fill_synthetic(store, 2000)
    small = store.models.create_collection("small", big.model_id)
    run_id = store.images.start_run(small.id)
    records, vectors = [], []
    for i in range(3):
        records.append(
            ImageRecord(f"/small/{i}.jpg", f"s{i}", 1, NOW, 1, 1, "JPEG", None, None, None, None, {}, b"", (1, 1))
        )
        vectors.append(np.eye(32, dtype=np.float32)[i])
    store.images.write_batch(small.id, small.model_id, run_id, records, vectors, [])
    query = -np.ones(32, dtype=np.float32)  # far from the small collection's vectors
    hits = store.search.nearest(small, query, 10, ef_search=10)
    assert sorted(h.path for h in hits) == ["/small/0.jpg", "/small/1.jpg", "/small/2.jpg"]


def test_rebuild_indexes_with_new_parameters(store: Store) -> None:
    collection = fill_synthetic(store, 200)
    names = store.index.rebuild_indexes(m=8, ef_construction=32)
    assert names == [f"{HNSW_INDEX_PREFIX}{collection.model_id}"]
    definition = store.conn.execute("SELECT indexdef FROM pg_indexes WHERE indexname = %s", (names[0],)).fetchone()[0]
    assert "m='8'" in definition and "ef_construction='32'" in definition


def test_models_py_matches_the_migrated_schema(database_url: str) -> None:
    engine = create_engine(sqlalchemy_url(database_url))
    with engine.connect() as conn:
        context = MigrationContext.configure(
            conn, opts={"include_object": lambda o, n, t, r, c: not (t == "index" and n.startswith("embeddings_hnsw_"))}
        )
        diff = compare_metadata(context, metadata)
    engine.dispose()
    assert diff == []


def test_catalog_view_has_plain_columns_only(store: Store) -> None:
    fill_synthetic(store, 5)
    types = dict(
        store.conn.execute(
            "SELECT column_name, data_type FROM information_schema.columns WHERE table_name = 'image_catalog'"
        ).fetchall()
    )
    assert {"image_id", "collection", "path", "width", "height", "taken_at", "camera_model"} <= set(types)
    assert not {"USER-DEFINED", "bytea", "jsonb"} & set(types.values())
    assert store.conn.execute("SELECT count(*) FROM image_catalog").fetchone()[0] == 5


def test_an_external_database_behind_is_told_to_upgrade(server_url: str) -> None:
    from conftest import with_database

    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute("DROP DATABASE IF EXISTS imagedb_test_empty")
        conn.execute("CREATE DATABASE imagedb_test_empty")
    url = with_database(server_url, "imagedb_test_empty")
    try:
        with pytest.raises(SchemaOutOfDate, match="run `imagedb db upgrade`"):
            open_connection(url)
        upgrade(url)
        open_connection(url).close()
    finally:
        with psycopg.connect(server_url, autocommit=True) as conn:
            conn.execute("DROP DATABASE imagedb_test_empty WITH (FORCE)")


def test_a_database_that_is_down_gives_one_line(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(DatabaseUnavailable, match="cannot connect to the database") as info:
        open_connection(f"postgresql://postgres@/imagedb?host={tmp_path}")
    assert "\n" not in str(info.value)
    # The line that names the socket and the cause, not libpq's closing hint.
    assert f"{tmp_path}/.s.PGSQL.5432" in str(info.value) and "No such file or directory" in str(info.value)
    assert "\t" not in str(info.value) and "running locally" not in str(info.value)
