"""Upgrading a database written by the first imagedb (schema revision 0001) to today's, without the old code.

The rows are written with the statements the 0001 code ran (imagedb/store.py of the first release: INSERT into
embedding_models, collections, ingest_runs, images, thumbnails, embeddings, and the model's HNSW index by its
name), from a real photo with real EXIF, real vectors of a real (tiny) CLIP and a real thumbnail. Halfway, at
revision 0004, what the 0004 code let users add: attributes (`imagedb tag`), a watch (`imagedb watch add`), a
writer and a reader role with the grants `grant-writer` / `grant-reader` gave then. Then today's upgrade path
(upgrade, what open_connection runs for the embedded server and `imagedb db upgrade` for an external one), and
today's library must find everything, intact, and work on it.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import psycopg
import pytest
from pgvector import HalfVector
from pgvector.psycopg import register_vector
from PIL import ExifTags, Image
from psycopg import sql
from psycopg.types.json import Jsonb

from imagedb import dupes, embed, images, models
from imagedb import search as searching
from imagedb.embed import ModelSpec
from imagedb.ingest import ingest
from imagedb.pg.connection import sqlalchemy_url
from imagedb.pg.database import open_connection
from imagedb.pg.migrate import alembic_config, current_revision, head_revision, upgrade
from imagedb.query import parse
from imagedb.request import SearchRequest
from imagedb.store import Store
from imagedb.store.records import Filters

from conftest import with_database


@pytest.fixture
def old_database(server_url: str) -> Iterator[str]:
    name = f"imagedb_upgrade_{os.getpid()}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    roles = [f"old_writer_{os.getpid()}", f"old_reader_{os.getpid()}"]
    try:
        yield with_database(server_url, name)
    finally:
        with psycopg.connect(server_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
            for role in roles:
                conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))


def _migrate_to(url: str, revision: str) -> None:
    from alembic import command
    from sqlalchemy import create_engine

    engine = create_engine(sqlalchemy_url(url))
    cfg = alembic_config()
    try:
        with engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, revision)
    finally:
        engine.dispose()


def _photo_with_exif(source: Path, target: Path) -> Path:
    """A real photo as a camera writes it: make, model, time taken, a quarter turn, exposure, GPS."""
    exif = Image.Exif()
    exif[ExifTags.Base.Make] = "Canon"
    exif[ExifTags.Base.Model] = "EOS 5D"
    exif[ExifTags.Base.Orientation] = 6
    sub = exif.get_ifd(ExifTags.IFD.Exif)
    sub[ExifTags.Base.DateTimeOriginal] = "2019:03:12 10:20:30"
    sub[ExifTags.Base.ExposureTime] = 0.01
    gps = exif.get_ifd(ExifTags.IFD.GPSInfo)
    gps.update({1: "N", 2: (52.0, 30.0, 0.0), 3: "E", 4: (13.0, 24.0, 0.0)})
    with Image.open(source) as image:
        image.save(target, quality=90, exif=exif)
    return target


def _write_like_0001(conn: psycopg.Connection, spec: ModelSpec, files: list[Path]) -> dict[str, int]:
    """The first release's ingest, statement by statement (its Store.ensure_model, create_collection, start_run,
    write_batch, finish_run); returns path -> image id."""
    embedder = embed.load(spec)
    decoded = [images.decode(f, keep_gps=True) for f in files]
    vectors = embedder.encode_images([embedder.preprocess(d.pixels) for d in decoded])
    with conn.transaction():
        conn.execute(
            "INSERT INTO embedding_models (name, pretrained, dim) VALUES (%s, %s, %s)"
            " ON CONFLICT (name, pretrained) DO NOTHING",
            (spec.name, spec.pretrained, embedder.dim),
        )
        model_id = conn.execute(
            "SELECT id FROM embedding_models WHERE name = %s AND pretrained = %s", (spec.name, spec.pretrained)
        ).fetchone()[0]  # type: ignore[index]
        conn.execute(
            sql.SQL(
                "CREATE INDEX IF NOT EXISTS {name} ON embeddings USING hnsw ((embedding::halfvec({dim}))"
                " halfvec_cosine_ops) WITH (m = 16, ef_construction = 64) WHERE model_id = {model_id}"
            ).format(
                name=sql.Identifier(f"embeddings_hnsw_{model_id}"),
                dim=sql.Literal(embedder.dim),
                model_id=sql.Literal(model_id),
            )
        )
    conn.execute(
        "INSERT INTO collections (name, model_id) VALUES (%s, %s) ON CONFLICT (name) DO NOTHING", ("old", model_id)
    )
    collection_id = conn.execute("SELECT id FROM collections WHERE name = 'old'").fetchone()[0]  # type: ignore[index]
    run_id = conn.execute(
        "INSERT INTO ingest_runs (collection_id) VALUES (%s) RETURNING id", (collection_id,)
    ).fetchone()[0]  # type: ignore[index]
    ids = {}
    with conn.transaction():
        for d, vector in zip(decoded, vectors, strict=True):
            r = d.record
            image_id = conn.execute(
                "INSERT INTO images (collection_id, path, sha256, size_bytes, mtime, width, height, format,"
                " taken_at, camera_make, camera_model, orientation, exif)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING id",
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
                ),
            ).fetchone()[0]  # type: ignore[index]
            conn.execute(
                "INSERT INTO embeddings (image_id, model_id, embedding) VALUES (%s, %s, %s)",
                (image_id, model_id, HalfVector(vector)),
            )
            conn.execute(
                "INSERT INTO thumbnails (image_id, jpeg, width, height) VALUES (%s, %s, %s, %s)",
                (image_id, r.thumbnail, *r.thumbnail_size),
            )
            ids[r.path] = int(image_id)
        conn.execute(
            "INSERT INTO ingest_errors (run_id, path, reason) VALUES (%s, %s, %s)",
            (run_id, "/old/broken.jpg", "cannot identify image file"),
        )
    conn.execute(
        "UPDATE ingest_runs SET finished_at = now(), added = %s, skipped = 0, reused = 0, failed = 1 WHERE id = %s",
        (len(files), run_id),
    )
    return ids


def _add_like_0004(conn: psycopg.Connection, cat: Path, cat_id: int, writer: str, reader: str) -> None:
    """What the 0004 code let a user add: attributes, a watch with its eight hash variants, and roles with the
    grants of its grant-writer and grant-reader."""
    conn.execute(
        "UPDATE images SET attributes = attributes || %s WHERE id = ANY(%s)",
        (Jsonb({"animal": "cat", "rating": "5"}), [cat_id]),
    )
    _, hashes = dupes.watch_hashes(cat)
    with conn.transaction():
        watch_id = conn.execute(
            "INSERT INTO watches (label, path, sha256, max_distance) VALUES (%s, %s, %s, %s) RETURNING id",
            ("cat", str(cat), hashlib.sha256(cat.read_bytes()).hexdigest(), 8),
        ).fetchone()[0]  # type: ignore[index]
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO watch_hashes (watch_id, variant, hash) VALUES (%s, %s, %s::bit(64))"
                " ON CONFLICT DO NOTHING",
                [(watch_id, n, h) for n, h in enumerate(hashes)],
            )
    reader_views = ("image_catalog", "collection_stats", "duplicate_report")
    writer_tables = (
        "images",
        "embeddings",
        "thumbnails",
        "ingest_runs",
        "ingest_errors",
        "duplicate_groups",
        "watches",
        "watch_hashes",
        "watch_hits",
    )
    grants = [
        (writer, writer_tables, "SELECT, INSERT, UPDATE, DELETE"),
        (writer, ("alembic_version", "embedding_models", "collections", *reader_views), "SELECT"),
        (reader, reader_views, "SELECT"),
    ]
    for role in (writer, reader):
        conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
        conn.execute(sql.SQL("GRANT USAGE ON SCHEMA public TO {}").format(sql.Identifier(role)))
    for role, tables, privileges in grants:
        conn.execute(
            sql.SQL("GRANT {} ON {} TO {}").format(
                sql.SQL(privileges), sql.SQL(", ").join(map(sql.Identifier, tables)), sql.Identifier(role)
            )
        )
    conn.execute(sql.SQL("GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO {}").format(sql.Identifier(writer)))
    conn.execute(sql.SQL("GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA public TO {}").format(sql.Identifier(writer)))


def _stored(conn: psycopg.Connection) -> dict[str, Any]:
    """Every value the 0001 code stored, to compare before and after the upgrade (attributes: see the test)."""
    return {
        "images": conn.execute(
            "SELECT id, collection_id, path, sha256, size_bytes, mtime, width, height, format, taken_at,"
            " camera_make, camera_model, orientation, exif, ingested_at FROM images ORDER BY id"
        ).fetchall(),
        "embeddings": conn.execute(
            "SELECT image_id, model_id, embedding::text FROM embeddings ORDER BY image_id"
        ).fetchall(),
        "thumbnails": conn.execute("SELECT image_id, jpeg, width, height FROM thumbnails ORDER BY 1").fetchall(),
        "models": conn.execute("SELECT id, name, pretrained, dim, created_at FROM embedding_models").fetchall(),
        "collections": conn.execute("SELECT id, name, model_id, created_at FROM collections").fetchall(),
        "runs": conn.execute(
            "SELECT id, collection_id, started_at, finished_at, added, failed FROM ingest_runs"
        ).fetchall(),
        "errors": conn.execute("SELECT run_id, path, reason FROM ingest_errors").fetchall(),
    }


def _watched(conn: psycopg.Connection) -> dict[str, Any]:
    return {
        "watches": conn.execute("SELECT id, label, path, sha256, max_distance FROM watches").fetchall(),
        "watch_hashes": conn.execute("SELECT watch_id, variant, hash::text FROM watch_hashes ORDER BY 1, 2").fetchall(),
    }


def test_a_database_of_the_first_release_upgrades_with_everything_intact(
    old_database: str, photos: Path, tiny_model: str, tmp_path: Path
) -> None:
    url = old_database
    spec = ModelSpec.parse(tiny_model)
    folder = tmp_path / "old-photos"
    folder.mkdir()
    cat = _photo_with_exif(photos / "chelsea.jpg", folder / "chelsea.jpg")
    shutil.copy(photos / "coffee.jpg", folder / "coffee.jpg")
    shutil.copy(photos / "coffee.jpg", folder / "coffee-copy.jpg")  # the same file twice
    with Image.open(photos / "coffee.jpg") as image:  # the same picture, re-encoded: only its hash tells
        image.save(folder / "coffee-recompressed.jpg", quality=60)
    shutil.copy(photos / "astronaut.jpg", folder / "astronaut.jpg")
    files = sorted(folder.iterdir())
    writer, reader = f"old_writer_{os.getpid()}", f"old_reader_{os.getpid()}"

    _migrate_to(url, "0001")
    with psycopg.connect(url, autocommit=True) as conn:
        register_vector(conn)  # as the 0001 code's connect did
        ids = _write_like_0001(conn, spec, files)
        stored = _stored(conn)
    _migrate_to(url, "0004")
    with psycopg.connect(url, autocommit=True) as conn:
        _add_like_0004(conn, cat, ids[str(cat)], writer, reader)
        watched = _watched(conn)
        assert conn.execute("SELECT count(dhash) FROM images").fetchone()[0] == 0  # 0003 added the column empty

    upgrade(url)

    with open_connection(url) as conn:
        assert current_revision(conn) == head_revision()
        assert _stored(conn) == stored
        assert _watched(conn) == watched
    with Store(open_connection(url)) as store:
        assert store.admin.problems() == []  # `imagedb db check`: embeddings, thumbnails, hashes, indexes
        details = store.images.image_details(ids[str(cat)])
        assert details is not None
        assert (details["camera_make"], details["camera_model"], details["orientation"]) == ("Canon", "EOS 5D", 6)
        assert details["taken_at"] == datetime(2019, 3, 12, 10, 20, 30, tzinfo=timezone.utc)
        assert details["exif"]["GPSInfo"]["GPSLatitudeRef"] == "N"
        assert details["attributes"] == {"animal": "cat", "rating": "5"}
        with Image.open(io.BytesIO(store.images.thumbnail(ids[str(cat)]))) as thumb:  # type: ignore[arg-type]
            assert thumb.format == "JPEG" and thumb.height > thumb.width  # stored upright: the quarter turn applied

        [held] = models.list_models(store)
        assert (held.collection, held.searched, held.ready, held.vectors, held.images, held.index) == (
            "old",
            True,
            True,
            len(files),
            len(files),
            "valid",
        )
        found = searching.search(store, SearchRequest(parse(["a cat"]), collection="old", model=spec, limit=10))
        assert {r.image_id for r in found} == set(ids.values())
        like = searching.search(
            store, SearchRequest(parse([f"id:{ids[str(folder / 'coffee.jpg')]}"]), collection="old", limit=1)
        )
        assert like[0].image_id == ids[str(folder / "coffee-copy.jpg")] and like[0].score > 0.999
        tagged = searching.search(
            store,
            SearchRequest(
                parse(["a cat"]), collection="old", model=spec, filters=Filters(attributes=(("animal", "cat"),))
            ),
        )
        assert [r.image_id for r in tagged] == [ids[str(cat)]]

        # Hashes of the old images: the re-encoded copy is found by its hash, and a watch sees the stored cat.
        [group] = dupes.find_duplicates(store, collection="old", method="hash")
        rules = {m.image_id: m.rule for m in group.members}
        coffee = [ids[str(folder / n)] for n in ("coffee.jpg", "coffee-copy.jpg", "coffee-recompressed.jpg")]
        assert set(rules) == set(coffee) and "hash" in rules.values()
        [watched] = dupes.add_watches(store, [cat], label="cat again")
        assert watched.stored_hits == 1

    # The roles made by the 0004 code still do their jobs.
    with Store(open_connection(url)) as store:
        store.conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(writer)))
        assert searching.search(store, SearchRequest(parse(["a rocket"]), collection="old", model=spec, limit=3))
        new = tmp_path / "new"
        new.mkdir()
        shutil.copy(photos / "rocket.jpg", new / "rocket.jpg")
        summary = ingest(store, [new], collection="old", model=spec)
        assert summary.added == 1
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(reader)))
        assert conn.execute("SELECT count(*) FROM image_catalog").fetchone()[0] == len(files) + 1
        assert conn.execute("SELECT count(*) FROM dicom_catalog").fetchone()[0] == 0
