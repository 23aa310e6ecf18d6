"""The schema stays ready for Citus (docs/scaling.md): every unique key and foreign key of a table that would be
distributed includes its distribution column, checked from the catalog of a migrated database.

Citus refuses a unique constraint or index of a distributed table that leaves out the distribution column (it could
only be checked across shards), and a foreign key between distributed tables unless both sides are the distribution
columns of co-located tables; a distributed table may reference a reference table, never the other way round.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import numpy as np

from imagedb.store import ImageRecord, Store

from helpers import fill_synthetic

# The design in docs/scaling.md: the image tables are distributed by image id (co-located, so the joins of a search
# stay on each shard), the small tables are reference tables copied to every node.
DISTRIBUTED = {
    "images": "id",
    "embeddings": "image_id",
    "thumbnails": "image_id",
    "duplicate_groups": "image_id",
    "watch_hits": "image_id",
    "relevance_samples": "image_id",
    "dicom_images": "image_id",
    "image_words": "image_id",
}
REFERENCE = {
    "embedding_models",
    "collections",
    "ingest_runs",
    "ingest_errors",
    "watches",
    "watch_hashes",
    "search_tuning",
    "dicom_secret",
    "collection_models",
    "text_embeddings",
    "ingest_claims",
    "forgotten",
}

# Migration 0016 removed the last two (images' unique path key, duplicate_groups.matched_image_id's foreign key);
# tests/test_citus.py distributes the schema on a real cluster.
KNOWN_REMAINING: set[str] = set()


def _columns(store: Store, table_oid: int, attnums: list[int]) -> list[str]:
    names = dict(
        store.conn.execute("SELECT attnum, attname FROM pg_attribute WHERE attrelid = %s", (table_oid,)).fetchall()
    )
    return [names[n] for n in attnums]


def violations(store: Store) -> set[str]:
    found = set()
    uniques = store.conn.execute(
        "SELECT t.relname, t.oid, i.relname, x.indkey::int2[] FROM pg_index x"
        " JOIN pg_class t ON t.oid = x.indrelid JOIN pg_class i ON i.oid = x.indexrelid"
        " JOIN pg_namespace n ON n.oid = t.relnamespace"
        " WHERE n.nspname = ANY(current_schemas(false)) AND x.indisunique AND t.relname = ANY(%s)",
        (list(DISTRIBUTED),),
    ).fetchall()
    for table, oid, index, keys in uniques:
        columns = _columns(store, oid, list(keys))
        if DISTRIBUTED[table] not in columns:
            found.add(f"{table}: unique {index} ({', '.join(columns)}) lacks {DISTRIBUTED[table]}")
    foreign = store.conn.execute(
        "SELECT t.relname, t.oid, c.conname, c.conkey, r.relname, r.oid, c.confkey FROM pg_constraint c"
        " JOIN pg_class t ON t.oid = c.conrelid JOIN pg_class r ON r.oid = c.confrelid"
        " JOIN pg_namespace n ON n.oid = t.relnamespace"
        " WHERE n.nspname = ANY(current_schemas(false)) AND c.contype = 'f'"
    ).fetchall()
    for table, oid, name, keys, target, target_oid, target_keys in foreign:
        if target in REFERENCE:
            continue  # allowed from both kinds of table
        columns, target_columns = _columns(store, oid, keys), _columns(store, target_oid, target_keys)
        edge = f"{name} ({', '.join(columns)}) -> {target}({', '.join(target_columns)})"
        if table in REFERENCE:
            found.add(f"{table}: foreign key {edge} from a reference table to a distributed one")
        elif (DISTRIBUTED[table], DISTRIBUTED[target]) not in zip(columns, target_columns, strict=True):
            found.add(f"{table}: foreign key {edge} is not on the distribution column")
    return found


def test_every_table_has_a_place_in_the_distribution_design(store: Store) -> None:
    tables = {
        r[0]
        for r in store.conn.execute(
            "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = ANY(current_schemas(false)) AND c.relkind IN ('r', 'p')"
            " AND c.relname <> 'alembic_version'"
        ).fetchall()
    }
    # A new table must be put in DISTRIBUTED or REFERENCE here, and in docs/scaling.md.
    assert tables == set(DISTRIBUTED) | REFERENCE


def test_unique_and_foreign_keys_include_the_distribution_column(store: Store) -> None:
    # None: a new violation fails.
    assert violations(store) == KNOWN_REMAINING


def test_the_largest_tables_are_ready(store: Store) -> None:
    ready = ("embeddings", "thumbnails", "watch_hits")
    assert not [v for v in violations(store) if v.split(":")[0] in ready]


def test_watch_hits_still_ignores_a_second_hit_of_the_same_watch_and_image(store: Store) -> None:
    # The primary key that replaced the surrogate one is what ON CONFLICT DO NOTHING in write_batch relies on.
    store.conn.execute(
        "INSERT INTO embedding_models (name, pretrained, dim) VALUES ('m', '', 2);"
        " INSERT INTO collections (name, model_id) VALUES ('c', 1);"
        " INSERT INTO images (collection_id, path, sha256, size_bytes, mtime, width, height, format)"
        "  VALUES (1, '/a.jpg', 'x', 1, now(), 1, 1, 'JPEG');"
        " INSERT INTO watches (path, sha256, max_distance) VALUES ('/w.jpg', 'y', 5);"
    )
    for _ in range(2):
        store.conn.execute(
            "INSERT INTO watch_hits (watch_id, image_id, distance) VALUES (1, 1, 3) ON CONFLICT DO NOTHING"
        )
    assert store.conn.execute("SELECT count(*), min(id) FROM watch_hits").fetchone() == (1, 1)


def test_the_design_here_is_the_one_imagedb_db_distribute_applies() -> None:
    from imagedb.store import citus

    assert dict.fromkeys([citus.DISTRIBUTED, *citus.COLOCATED]) == dict.fromkeys(DISTRIBUTED)
    assert set(citus.REFERENCE) == REFERENCE


def test_forget_takes_out_the_group_members_matched_through_a_forgotten_image(store: Store) -> None:
    # duplicate_groups.matched_image_id has no foreign key now; forget does what its ON DELETE CASCADE did
    store.conn.execute(
        "INSERT INTO embedding_models (name, pretrained, dim) VALUES ('m', '', 2);"
        " INSERT INTO collections (name, model_id) VALUES ('c', 1);"
        " INSERT INTO images (collection_id, path, sha256, size_bytes, mtime, width, height, format)"
        "  SELECT 1, '/' || n || '.jpg', 'x', 1, now(), 1, 1, 'JPEG' FROM generate_series(1, 3) n;"
        " INSERT INTO duplicate_groups (collection_id, group_no, image_id, matched_image_id, rule)"
        "  VALUES (1, 1, 1, NULL, 'first'), (1, 1, 2, 1, 'sha256'), (1, 1, 3, 2, 'sha256');"
    )
    assert store.admin.forget(1, ["1"])[0] == [1]
    assert store.conn.execute("SELECT image_id FROM duplicate_groups ORDER BY 1").fetchall() == [(3,)]


def test_a_changed_file_replaced_by_ingest_takes_out_the_members_matched_through_it(store: Store) -> None:

    collection = fill_synthetic(store, 3, dim=4)
    first, second = (r[0] for r in store.conn.execute("SELECT id FROM images ORDER BY id LIMIT 2").fetchall())
    store.conn.execute(
        "INSERT INTO duplicate_groups (collection_id, group_no, image_id, matched_image_id, rule)"
        " VALUES (%s, 1, %s, NULL, 'first'), (%s, 1, %s, %s, 'sha256')",
        (collection.id, first, collection.id, second, first),
    )
    path, mtime = store.conn.execute("SELECT path, mtime FROM images WHERE id = %s", (first,)).fetchone()  # type: ignore[misc]
    assert path in store.images.file_states(collection.id)
    record = _record(path, mtime + timedelta(seconds=1))
    run_id = store.images.start_run(collection.id)
    store.images.write_batch(collection.id, collection.model_id, run_id, [record], [np.ones(4, np.float32) / 2], [])
    assert store.conn.execute("SELECT count(*) FROM duplicate_groups").fetchone() == (0,)


def _record(path: str, mtime: datetime) -> ImageRecord:
    return ImageRecord(
        path=path, sha256="f" * 64, size_bytes=1, mtime=mtime, width=1, height=1, format="JPEG", taken_at=None,
        camera_make=None, camera_model=None, orientation=None, exif={}, thumbnail=b"", thumbnail_size=(1, 1),
    )  # fmt: skip
