"""A full NOTIFY queue fails no ingest and no `watch add` (docs/security.md): a listener idle in an open
transaction while another login floods pg_notify fills the queue, after which PostgreSQL refuses every NOTIFY at
COMMIT. The watch hits are stored all the same; only their announcement is lost."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from imagedb.dupes import add_watches
from imagedb.embed import ModelSpec
from imagedb.ingest import ingest
from imagedb.pg.database import open_connection
from imagedb.pg.embedded import SERVER_SETTINGS, embedded_url, stop_embedded
from imagedb.pg.migrate import upgrade
from imagedb.store import Store


@pytest.fixture
def small_queue_url() -> Iterator[str]:
    """An embedded server of its own whose NOTIFY queue holds 64 pages (512 kB), the least PostgreSQL allows."""
    home = Path(tempfile.mkdtemp(prefix="imagedb-test-notify-"))
    try:
        url = embedded_url(home)
        with psycopg.connect(url, autocommit=True) as conn:
            if not conn.execute("SELECT 1 FROM pg_settings WHERE name = 'max_notify_queue_pages'").fetchone():
                pytest.skip("this PostgreSQL has no max_notify_queue_pages (before 17)")
            # the embedded server's own bound, for its next start: 128 MB of disk at most
            pending = conn.execute(
                "SELECT setting FROM pg_file_settings WHERE name = 'max_notify_queue_pages' AND applied IS NOT NULL"
            ).fetchall()
            assert pending == [(SERVER_SETTINGS["max_notify_queue_pages"],)]
            conn.execute("ALTER SYSTEM SET max_notify_queue_pages = 64")
        stop_embedded(home)
        url = embedded_url(home)
        upgrade(url)
        yield url
    finally:
        stop_embedded(home)
        shutil.rmtree(home, ignore_errors=True)


def _fill_queue(url: str) -> psycopg.Connection:
    """Fill the queue behind a listener that never reads; that listener, to be closed by the caller."""
    listener = psycopg.connect(url, autocommit=True)
    listener.execute("LISTEN anything")
    listener.execute("BEGIN")
    listener.execute("SELECT 1")  # idle in a transaction: it reads no notification, the queue's tail stays
    with psycopg.connect(url, autocommit=True) as flooder:
        for _ in range(1000):
            try:
                flooder.execute("SELECT pg_notify('flood', repeat('x', 7000)) FROM generate_series(1, 10)")
            except psycopg.errors.ProgramLimitExceeded:
                break
        else:
            raise AssertionError("the NOTIFY queue never filled")
        with pytest.raises(psycopg.errors.ProgramLimitExceeded, match="too many notifications"):
            flooder.execute("SELECT pg_notify('imagedb_watch', '{}')")
    return listener


@pytest.mark.slow
def test_ingest_and_watch_add_commit_with_a_full_notify_queue(
    small_queue_url: str, photos: Path, tiny_model: str
) -> None:
    listener = _fill_queue(small_queue_url)
    try:
        with Store(open_connection(small_queue_url)) as store:
            [first] = add_watches(store, [photos / "astronaut.jpg"], label="before")  # nothing stored yet
            summary = ingest(store, [photos], model=ModelSpec.parse(tiny_model))
            assert summary.added >= 2 and summary.watch_hits >= 1  # the ingest's own hit
            [second] = add_watches(store, [photos / "coffee.jpg"], label="after")  # a hit at once, in watch add
            hits = store.dupes.watch_hits()
            assert {h["watch_id"] for h in hits} == {first.watch_id, second.watch_id}
    finally:
        listener.close()
    with Store(open_connection(small_queue_url)) as store:  # committed: another connection sees them
        assert len(store.dupes.watch_hits()) == len(hits)
