"""Roles for BI tools and ingest, forgetting images for good, backups, and the integrity check."""

from __future__ import annotations

import os
import shutil
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from click.testing import CliRunner
from PIL import Image
from psycopg import sql

from imagedb.cli import main
from imagedb.dupes import add_watches, find_duplicates
from imagedb.embed import ModelSpec
from imagedb.errors import DatabaseUnavailable, InvalidInput, NotFound
from imagedb.ingest import ingest
from imagedb.pg.backup import dump, restore
from imagedb.pg.database import open_connection
from imagedb.pg.migrate import upgrade
from imagedb.query import parse
from imagedb.request import SearchRequest
from imagedb.roles import forget, grant_reader, grant_writer
from imagedb.search import search
from imagedb.store import Store
from imagedb.store.index import HNSW_INDEX_PREFIX

PASSWORD = "role-pw-for-tests"


def _as_role(url: str, role: str, password: str = PASSWORD) -> str:
    """The same database, logged in as `role` with its password (the embedded server asks every login for one)."""
    parts = urlsplit(url)
    host = parts.netloc.split("@")[-1]
    return urlunsplit(parts._replace(netloc=f"{role}:{password}@{host}"))


def test_reader_sees_the_bi_views_and_nothing_else(
    store: Store, database_url: str, photos: Path, tiny_model: str
) -> None:
    ingest(store, [photos], model=ModelSpec.parse(tiny_model))
    role = f"bi_reader_{os.getpid()}"
    assert grant_reader(store, role, PASSWORD).created is True
    assert grant_reader(store, role).created is False  # again: updated, not created
    with psycopg.connect(_as_role(database_url, role), autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM image_catalog").fetchone()[0] == 12
        assert conn.execute("SELECT images FROM collection_stats").fetchone()[0] == 12
        conn.execute("SELECT * FROM duplicate_report")
        for table in ("images", "embeddings", "thumbnails", "watch_hits", "ingest_errors"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(f"SELECT * FROM imagedb_internal.{table} LIMIT 1")  # its schema since migration 0014
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("CREATE TABLE mine (x int)")


def test_writer_can_ingest_and_search_but_not_change_the_schema(
    store: Store, database_url: str, photos: Path, tiny_model: str, tmp_path: Path
) -> None:
    spec = ModelSpec.parse(tiny_model)
    ingest(store, [photos / "coffee.jpg"], model=spec)
    role = f"ingester_{os.getpid()}"
    grant_writer(store, role, PASSWORD)
    writer = Store(open_connection(_as_role(database_url, role)))
    try:
        # Large enough to take the bulk path, whose index drop a writer may not do: it loads into the index.
        summary = ingest(writer, [photos], model=spec, bulk_threshold=2)
        assert (summary.added, summary.skipped, summary.failed) == (11, 1, 0)
        assert search(writer, SearchRequest(parse([str(photos / "rocket.jpg")]), limit=1))[0].path == str(
            photos / "rocket.jpg"
        )
        assert writer.admin.problems() == []
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            writer.conn.execute("DROP TABLE images")
    finally:
        writer.close()


def test_forget_leaves_nothing_behind(store: Store, photos: Path, tmp_path: Path, tiny_model: str) -> None:
    copy = tmp_path / "copy-of-rocket.jpg"
    Image.open(photos / "rocket.jpg").save(copy, quality=60)
    ingest(store, [photos, copy], model=ModelSpec.parse(tiny_model))
    add_watches(store, [photos / "coffee.jpg"])
    shutil.copy(photos / "coffee.jpg", tmp_path / "coffee-again.jpg")
    ingest(store, [tmp_path / "coffee-again.jpg"])
    find_duplicates(store)
    done = forget(store, "default", [str(copy), "coffee-again.jpg"])
    ids = done.ids
    assert len(ids) == 2 and done.unvacuumed == []
    for table, column in [
        ("images", "id"),
        ("embeddings", "image_id"),
        ("thumbnails", "image_id"),
        ("duplicate_groups", "image_id"),
        ("duplicate_groups", "matched_image_id"),
        ("watch_hits", "image_id"),
        ("image_catalog", "image_id"),
    ]:
        count = store.conn.execute(f"SELECT count(*) FROM {table} WHERE {column} = ANY(%s)", (ids,)).fetchone()[0]
        assert count == 0, table
    leftover = store.conn.execute(
        "SELECT count(*) FROM images WHERE path LIKE '%copy-of-rocket%' OR path LIKE '%coffee-again%'"
    ).fetchone()[0]
    assert leftover == 0
    with pytest.raises(NotFound):
        forget(store, "default", ["no-such-image.jpg"])


@pytest.mark.slow
def test_dump_and_restore_round_trip(
    store: Store, database_url: str, photos: Path, tmp_path: Path, tiny_model: str
) -> None:
    ingest(store, [photos], model=ModelSpec.parse(tiny_model))
    rocket = str(photos / "rocket.jpg")
    before = [r.image_id for r in search(store, SearchRequest(parse([rocket]), limit=12))]
    backup = tmp_path / "backup.dump"
    dump(database_url, backup)
    assert backup.stat().st_mode & 0o777 == 0o600  # it holds everything: its owner's alone
    forget(store, "default", ["rocket.jpg"])
    store.close()
    restore(database_url, backup)
    restored = Store(open_connection(database_url))
    try:
        assert [r.image_id for r in search(restored, SearchRequest(parse([rocket]), limit=12))] == before
        assert restored.admin.problems() == []
    finally:
        restored.close()
    with pytest.raises(NotFound):
        restore(database_url, tmp_path / "missing.dump")


def test_failed_dump_keeps_the_older_backup(database_url: str, tmp_path: Path) -> None:
    """A dump that fails (here: the server cannot be reached) leaves the backup made before as it was, byte for
    byte, and no half-written file beside it; the new dump replaces the old one only once it is complete."""
    backup = tmp_path / "backup.dump"
    dump(database_url, backup)
    good = backup.read_bytes()
    unreachable = f"postgresql://postgres@/imagedb?host={tmp_path / 'no-socket'}"
    with pytest.raises(DatabaseUnavailable):
        dump(unreachable, backup)
    assert backup.read_bytes() == good
    assert sorted(p.name for p in tmp_path.iterdir()) == ["backup.dump"]
    dump(database_url, backup)  # over an existing file: still its owner's alone
    assert backup.stat().st_mode & 0o777 == 0o600


def test_dump_refuses_a_target_that_is_not_a_regular_file(database_url: str, tmp_path: Path) -> None:
    """A device, a FIFO or a folder is not a dump file: refused in one line, its mode left alone (a dump once
    made /dev/full its owner's alone)."""
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    os.chmod(fifo, 0o666)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # a reader, drained, so that a write cannot block
    stop = threading.Event()

    def drain() -> None:
        while not stop.is_set():
            try:
                os.read(reader, 65536)
            except BlockingIOError:
                pass
            time.sleep(0.001)

    drainer = threading.Thread(target=drain, daemon=True)
    drainer.start()
    try:
        with pytest.raises(InvalidInput, match="not a regular file"):
            dump(database_url, fifo)
        assert fifo.stat().st_mode & 0o777 == 0o666
        result = CliRunner().invoke(main, ["--database-url", database_url, "db", "dump", str(fifo)])
        assert result.exit_code == 2 and "not a regular file" in result.output and "Traceback" not in result.output
    finally:
        stop.set()
        drainer.join()
        os.close(reader)


def test_check_reports_what_is_wrong(
    store: Store, database_url: str, photos: Path, tiny_model: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    ingest(store, [photos], model=ModelSpec.parse(tiny_model))
    monkeypatch.setenv("IMAGEDB_DATABASE_URL", database_url)
    result = CliRunner().invoke(main, ["db", "check"])
    assert result.exit_code == 0 and result.output.startswith("ok")
    store.conn.execute("DELETE FROM thumbnails WHERE image_id = (SELECT min(id) FROM images)")
    store.conn.execute("UPDATE images SET dhash = NULL WHERE id = (SELECT max(id) FROM images)")
    store.conn.execute("DELETE FROM embeddings WHERE image_id = (SELECT max(id) FROM images)")
    store.conn.commit()
    result = CliRunner().invoke(main, ["db", "check"])
    assert result.exit_code == 1
    for words in (
        "1 images without a thumbnail",
        "1 images without a perceptual hash",
        "1 images without an embedding",
    ):
        assert words in result.output
    store.index.rebuild_indexes(16, 64)
    store.conn.execute(f"DROP INDEX {HNSW_INDEX_PREFIX}1")
    store.conn.commit()
    assert "models without their HNSW index" in CliRunner().invoke(main, ["db", "check"]).output


@pytest.mark.slow
def test_cli_forget_grant_dump(
    database_url: str, monkeypatch: pytest.MonkeyPatch, photos: Path, tiny_model: str, tmp_path: Path
) -> None:
    monkeypatch.setenv("IMAGEDB_DATABASE_URL", database_url)
    runner = CliRunner()
    assert runner.invoke(main, ["ingest", str(photos), "-m", tiny_model]).exit_code == 0
    result = runner.invoke(main, ["forget", "coffee.jpg"], input="n\n")
    assert result.exit_code == 1 and "Aborted" in result.output
    result = runner.invoke(main, ["forget", "coffee.jpg", "--yes"])
    assert result.exit_code == 0 and "forgot 1 image(s)" in result.output
    assert "no image" in runner.invoke(main, ["forget", "coffee.jpg", "--yes"]).output
    role = f"cli_reader_{os.getpid()}"
    assert f"created role {role}" in runner.invoke(main, ["grant-reader", role]).output
    assert "cannot log in" in runner.invoke(main, ["grant-writer", f"cli_writer_{os.getpid()}"]).output
    result = runner.invoke(main, ["db", "dump", str(tmp_path / "b.dump")])
    assert result.exit_code == 0 and (tmp_path / "b.dump").stat().st_size > 0
    assert runner.invoke(main, ["db", "restore", str(tmp_path / "b.dump"), "--yes"]).exit_code == 0


@pytest.mark.slow
def test_restore_where_a_role_of_the_dump_is_missing_says_what_to_create(
    store: Store, database_url: str, photos: Path, tmp_path: Path, tiny_model: str
) -> None:
    """Roles belong to the server, not to the dump: a dump made where `grant-writer` ran, restored into a fresh
    home, fails on its GRANTs. The one line names the role and the command that makes it; nothing is restored."""
    ingest(store, [photos], model=ModelSpec.parse(tiny_model))
    grant_writer(store, "restore_gone_w")
    backup = tmp_path / "backup.dump"
    dump(database_url, backup)
    _drop_roles(store, "restore_gone_w")
    count = store.conn.execute("SELECT count(*) FROM images").fetchone()[0]
    with pytest.raises(NotFound) as info:
        restore(database_url, backup)
    message = str(info.value)
    assert "\n" not in message and "'restore_gone_w'" in message and "imagedb grant-writer restore_gone_w" in message
    assert store.conn.execute("SELECT count(*) FROM images").fetchone()[0] == count  # nothing restored
    # Several missing: all are named at once, before anything is touched, odd names shown as such.
    grant_writer(store, "restore_gone_w")
    odd = sql.Identifier('gone "r"\nx')  # made by hand: grant-* refuses such a name
    store.conn.execute(sql.SQL("CREATE ROLE {}; GRANT SELECT ON public.image_catalog TO {}").format(odd, odd))
    dump(database_url, backup)
    _drop_roles(store, "restore_gone_w", 'gone "r"\nx')
    with pytest.raises(NotFound) as info:
        restore(database_url, backup)
    message = str(info.value)
    assert "\n" not in message and "roles 'gone \"r\"\\nx', 'restore_gone_w'" in message
    assert store.conn.execute("SELECT count(*) FROM images").fetchone()[0] == count


def _drop_roles(store: Store, *names: str) -> None:
    from psycopg import sql

    with store.conn.transaction():
        for name in names:
            store.conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(name)))
            store.conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(name)))


@pytest.mark.slow
def test_restore_on_a_server_where_a_superuser_made_the_extension(
    server_url: str, photos: Path, tmp_path: Path, tiny_model: str
) -> None:
    """An external server as documented: a superuser ran CREATE EXTENSION vector, imagedb's own role owns the rest.
    pg_restore --clean would drop and recreate the extension, which only its owner may: the restore must keep the
    extension that is there and replace everything else."""
    from conftest import with_database

    name = f"imagedb_ext_{os.getpid()}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name}")
        conn.execute("DROP ROLE IF EXISTS ext_owner")
        conn.execute("CREATE ROLE ext_owner LOGIN PASSWORD 'ext pw'")
        conn.execute(f"CREATE DATABASE {name} OWNER ext_owner")
    admin_url = with_database(server_url, name)
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION vector")
    parts = urlsplit(admin_url)
    url = urlunsplit(parts._replace(netloc="ext_owner:ext%20pw@" + parts.netloc.rsplit("@", 1)[-1]))
    try:
        upgrade(url)
        with Store(open_connection(url)) as store:
            ingest(store, [photos], model=ModelSpec.parse(tiny_model))
        backup = tmp_path / "ext.dump"
        dump(url, backup)
        with Store(open_connection(url)) as store:
            forget(store, "default", ["rocket.jpg"])
        restore(url, backup)
        with Store(open_connection(url)) as store:
            assert store.conn.execute("SELECT count(*) FROM images").fetchone()[0] == 12
            assert store.admin.problems() == []
    finally:
        with psycopg.connect(server_url, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
            conn.execute("DROP ROLE IF EXISTS ext_owner")
