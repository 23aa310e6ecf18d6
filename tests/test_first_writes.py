"""A success message means committed: every write command, run as the first command on a brand-new embedded
database (the one that migrates it), is read back through a new connection afterwards.

Before the store's connections were autocommit, the connection that ran the first migration was still inside a
transaction; the command's own `transaction()` became a savepoint, and closing the connection rolled it back
after `watch add` had printed "watching 1 image(s)".
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from click.testing import CliRunner

from imagedb.cli import main
from imagedb.pg.embedded import embedded_url, stop_embedded


@pytest.fixture
def fresh_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A home with no server and no database yet: the command under test creates and migrates it."""
    home = tmp_path / "home"
    monkeypatch.setenv("IMAGEDB_HOME", str(home))
    monkeypatch.delenv("IMAGEDB_DATABASE_URL", raising=False)
    monkeypatch.delenv("IMAGEDB_MODEL", raising=False)
    yield home
    stop_embedded(home)


def _run(*args: object) -> str:
    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def _read(home: Path, query: str) -> list[tuple]:  # type: ignore[type-arg]
    """Through a connection of its own, as another program would see the database."""
    with psycopg.connect(embedded_url(home), autocommit=True) as conn:
        return conn.execute(query).fetchall()


@pytest.mark.slow
def test_watch_add_first(fresh_home: Path, photos: Path) -> None:
    assert "watching 1 image" in _run("watch", "add", photos / "coffee.jpg")
    assert _read(fresh_home, "SELECT path FROM watches") == [(str(photos / "coffee.jpg"),)]
    assert _read(fresh_home, "SELECT count(*) FROM watch_hashes")[0][0] >= 1


@pytest.mark.slow
def test_grant_reader_first(fresh_home: Path) -> None:
    _run("grant-reader", "first_bi", "--password", "first-bi-pw-1")
    grants = _read(fresh_home, "SELECT table_name FROM information_schema.role_table_grants WHERE grantee = 'first_bi'")
    assert ("image_catalog",) in grants


@pytest.mark.slow
def test_grant_writer_first(fresh_home: Path) -> None:
    _run("grant-writer", "first_writer", "--password", "first-writer-pw-2")
    assert _read(fresh_home, "SELECT rolname FROM pg_roles WHERE rolname = 'first_writer'") == [("first_writer",)]


@pytest.mark.slow
def test_ingest_first_then_every_other_write(fresh_home: Path, photos: Path, tiny_model: str) -> None:
    """ingest migrates; then tag, dupes, watch add and forget each start a new process-like command."""
    assert "added 12" in _run("ingest", photos, "--model", tiny_model)
    assert _read(fresh_home, "SELECT count(*) FROM images")[0][0] == 12
    assert _read(fresh_home, "SELECT count(*) FROM embeddings")[0][0] == 12
    assert _read(fresh_home, "SELECT finished_at IS NOT NULL FROM ingest_runs") == [(True,)]

    _run("tag", "coffee.jpg", "label=mine")
    assert _read(fresh_home, "SELECT attributes->>'label' FROM images WHERE path LIKE '%/coffee.jpg'") == [("mine",)]

    (photos / "copy.jpg").write_bytes((photos / "coffee.jpg").read_bytes())
    _run("ingest", photos)
    _run("dupes")
    assert _read(fresh_home, "SELECT count(*) FROM duplicate_groups")[0][0] == 2

    _run("forget", "--yes", "copy.jpg")
    assert _read(fresh_home, "SELECT count(*) FROM images WHERE path LIKE '%/copy.jpg'")[0][0] == 0


def test_the_store_refuses_a_connection_that_is_not_autocommit(database_url: str) -> None:
    """One transaction discipline: a connection that would keep a transaction open is not accepted."""
    from imagedb.store import Store

    with psycopg.connect(database_url) as conn, pytest.raises(ValueError, match="autocommit"):
        Store(conn)
