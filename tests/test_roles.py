"""Roles mean what they say: real passwords on the embedded server, writers kept out of schema bookkeeping,
migration failures in one line, and what `forget` can and cannot erase."""

from __future__ import annotations

import os
import stat
import threading
import time
from pathlib import Path
from urllib.parse import parse_qs, urlsplit, urlunsplit

import psycopg
import pytest
from click.testing import CliRunner

from imagedb.cli import main
from imagedb.embed import ModelSpec
from imagedb.ingest import ingest
from imagedb.pg.database import open_connection
from imagedb.pg.migrate import head_revision
from imagedb.roles import forget, grant_reader, grant_writer
from imagedb.store import Store

from conftest import with_database


def _login(url: str, role: str, password: str | None) -> str:
    """The URL of `url`'s database for `role`, with that password (or none), and no password file."""
    parts = urlsplit(url)
    host = parts.netloc.split("@")[-1]
    query = "&".join(f"{k}={v[0]}" for k, v in parse_qs(parts.query).items() if k != "passfile")
    user = role if password is None else f"{role}:{password}"
    return urlunsplit(parts._replace(netloc=f"{user}@{host}", query=query))


def _refused(url: str) -> str:
    with pytest.raises(psycopg.OperationalError) as info:
        psycopg.connect(url, connect_timeout=5).close()
    return str(info.value)


def test_the_embedded_server_asks_every_login_for_its_password(store: Store, database_url: str) -> None:
    role = f"bi_{os.getpid()}"
    grant_reader(store, role, "the-right-one")
    with psycopg.connect(_login(database_url, role, "the-right-one")) as conn:
        assert conn.execute("SELECT count(*) FROM image_catalog").fetchone()[0] == 0
    assert "password authentication failed" in _refused(_login(database_url, role, "a-wrong-one"))
    assert "no password supplied" in _refused(_login(database_url, role, None))
    # The owner (a superuser) too: without the password file of IMAGEDB_HOME it is refused.
    assert "no password supplied" in _refused(_login(database_url, "postgres", None))
    assert "password authentication failed" in _refused(_login(database_url, "postgres", "guess"))


def test_a_role_without_password_cannot_log_in_and_is_told(database_url: str, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("IMAGEDB_DATABASE_URL", database_url)
    role = f"nopw_{os.getpid()}"
    result = CliRunner().invoke(main, ["grant-reader", role])
    assert result.exit_code == 0 and "cannot log in: set one with --password" in result.output
    assert "no password supplied" in _refused(_login(database_url, role, None))
    assert CliRunner().invoke(main, ["grant-reader", role, "--password", ""]).exit_code == 2


def test_the_owner_password_lives_in_a_private_file_not_in_the_url(server_url: str) -> None:
    query = parse_qs(urlsplit(server_url).query)
    passfile = Path(query["passfile"][0])
    assert stat.S_IMODE(passfile.stat().st_mode) == 0o600
    secret = passfile.read_text().strip().rsplit(":", 1)[1]
    assert len(secret) >= 32 and secret not in server_url
    hba = (passfile.parent / "pgdata" / "pg_hba.conf").read_text()
    rules = [line.split() for line in hba.splitlines() if line.strip() and not line.startswith("#")]
    # Every rule asks for a password or refuses outright: none lets a login in on trust, peer or md5.
    assert rules and all(rule[-1] in ("scram-sha-256", "reject") for rule in rules)
    assert [rule for rule in rules if rule[-1] == "scram-sha-256"]


def test_a_writer_cannot_touch_schema_bookkeeping(store: Store, database_url: str) -> None:
    role = f"writer_{os.getpid()}"
    grant_writer(store, role, "writer-login-pw")
    with psycopg.connect(_login(database_url, role, "writer-login-pw"), autocommit=True) as conn:
        assert conn.execute("SELECT version_num FROM alembic_version").fetchone()[0] == head_revision()
        for statement in (
            "UPDATE alembic_version SET version_num = 'x'",
            "UPDATE embedding_models SET dim = 3",
            "DELETE FROM collections",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(statement)


def test_a_schema_revision_nobody_knows_is_one_line(database_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("UPDATE alembic_version SET version_num = 'from_the_future'")
    monkeypatch.setenv("IMAGEDB_DATABASE_URL", database_url)
    for args in (["db", "info"], ["db", "upgrade"]):
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 1, result.output
        assert result.output.count("\n") == 1 and "Traceback" not in result.output, result.output
    assert "newer imagedb" in result.output


def test_no_right_to_create_the_extension_is_one_line(server_url: str) -> None:
    """pgvector is not a trusted extension: a database owner who is no superuser is told who must create it."""
    name = f"imagedb_noext_{os.getpid()}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name}")
        conn.execute("DROP ROLE IF EXISTS plain_owner")
        conn.execute("CREATE ROLE plain_owner LOGIN PASSWORD 'pw'")
        conn.execute(f"CREATE DATABASE {name} OWNER plain_owner")
    try:
        url = _login(with_database(server_url, name), "plain_owner", "pw")
        result = CliRunner().invoke(main, ["--database-url", url, "db", "upgrade"])
        assert result.exit_code == 1 and result.output.count("\n") == 1, result.output
        assert "a superuser must run `CREATE EXTENSION vector;` in the database" in result.output
    finally:
        with psycopg.connect(server_url, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE {name} WITH (FORCE)")
            conn.execute("DROP ROLE plain_owner")


def _files_hold(conn: psycopg.Connection, tables: list[str], needle: bytes) -> list[str]:
    """Which on-disk files of these tables (heap, TOAST, every index) contain `needle`."""
    conn.execute("CHECKPOINT")  # write every dirty page to the files
    datadir = Path(conn.execute("SHOW data_directory").fetchone()[0])
    relations = conn.execute(
        "SELECT c.oid::regclass::text, pg_relation_filepath(c.oid) FROM pg_class c WHERE c.oid = ANY("
        " SELECT t.oid FROM pg_class t WHERE t.relname = ANY(%(t)s) UNION"
        " SELECT t.reltoastrelid FROM pg_class t WHERE t.relname = ANY(%(t)s) UNION"
        " SELECT x.indexrelid FROM pg_index x JOIN pg_class t ON t.oid = x.indrelid WHERE t.relname = ANY(%(t)s))",
        {"t": tables},
    ).fetchall()
    found = []
    for name, relative in relations:
        if relative and any(needle in f.read_bytes() for f in datadir.glob(relative + "*") if f.is_file()):
            found.append(name)
    return found


@pytest.mark.slow
def test_forget_full_leaves_no_bytes_in_the_table_files(
    store: Store, photos: Path, tiny_model: str, database_url: str
) -> None:
    target = photos / "secret-name-of-a-person.jpg"
    (photos / "coffee.jpg").rename(target)
    ingest(store, [photos], model=ModelSpec.parse(tiny_model))
    needle = str(target).encode()
    with psycopg.connect(database_url, autocommit=True) as admin:
        assert "images" in _files_hold(admin, ["images"], needle)  # the test can see it when it is there
        done = forget(store, "default", [target.name], full=True)
        assert len(done.ids) == 1 and done.unvacuumed == []
        tables = ["images", "ingest_errors", "duplicate_groups", "watch_hits", "forgotten", "ingest_claims"]
        assert _files_hold(admin, tables, needle) == []


def _database_files_hold(conn: psycopg.Connection, needle: bytes) -> list[str]:
    """Which files of the database's folder (every table, index and catalog of it, pg_statistic included) contain
    `needle`."""
    conn.execute("CHECKPOINT")
    datadir = Path(conn.execute("SHOW data_directory").fetchone()[0])
    oid = conn.execute("SELECT oid FROM pg_database WHERE datname = current_database()").fetchone()[0]
    return sorted(f.name for f in (datadir / "base" / str(oid)).iterdir() if f.is_file() and needle in f.read_bytes())


def _in_stats(conn: psycopg.Connection, path: str) -> bool:
    return (
        conn.execute(
            "SELECT count(*) FROM pg_stats WHERE tablename = 'images' AND attname = 'path'"
            " AND (histogram_bounds::text::text[] @> ARRAY[%(p)s] OR most_common_vals::text::text[] @> ARRAY[%(p)s])",
            {"p": path},
        ).fetchone()[0]
        > 0
    )


@pytest.mark.slow
def test_forget_full_leaves_the_path_in_no_statistics(
    store: Store, photos: Path, tiny_model: str, database_url: str
) -> None:
    """ANALYZE had sampled the path into pg_statistic (file 2619), where `forget --full` left it: pg_stats showed
    it and the catalog's file held it."""
    target = photos / "secret-name-in-the-stats.jpg"
    (photos / "coffee.jpg").rename(target)
    ingest(store, [photos], model=ModelSpec.parse(tiny_model))
    needle = str(target).encode()
    with psycopg.connect(database_url, autocommit=True) as admin:
        admin.execute("ANALYZE images")
        assert _in_stats(admin, str(target))  # what autoanalyze does after an ingest
        done = forget(store, "default", [target.name], full=True)
        assert not _in_stats(admin, str(target))
        assert _database_files_hold(admin, needle) == []
        assert done.blocker is None and not done.statistics_kept


@pytest.mark.slow
def test_forget_full_waits_for_an_older_snapshot_and_says_when_it_stays(
    store: Store, photos: Path, tiny_model: str, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reader's open REPEATABLE READ snapshot (no lock on imagedb's tables) made VACUUM FULL copy the deleted rows
    into the new files, and forget still said "forgot 1 image(s)"."""
    target = photos / "secret-name-seen-by-a-reader.jpg"
    (photos / "coffee.jpg").rename(target)
    ingest(store, [photos], model=ModelSpec.parse(tiny_model))
    needle = str(target).encode()
    role = f"snapshot_{os.getpid()}"
    grant_reader(store, role, "reader-login-pw")
    monkeypatch.setenv("IMAGEDB_DATABASE_URL", database_url)
    command = ["forget", "--yes", "--full", str(target)]
    with psycopg.connect(_login(database_url, role, "reader-login-pw"), application_name="bi-tool") as reader:
        reader.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        reader.execute("SELECT 1")
        pid = reader.info.backend_pid
        result = CliRunner().invoke(main, command)
        assert result.exit_code == 1, result.output
        assert "forgot" not in result.output and "deleted 1 image(s)" in result.output
        last = result.output.splitlines()[-1]
        assert f"session {pid} (role '{role}', application 'bi-tool'" in last, last
        assert f"SELECT pg_terminate_backend({pid})" in last and "imagedb forget --full" in last
        with psycopg.connect(database_url, autocommit=True) as admin:
            assert "images" in _files_hold(admin, ["images"], needle)  # the bytes the line warns of
        again = CliRunner().invoke(main, command)  # the rerun while the snapshot stays: the error alone
        assert again.exit_code == 1 and "rewrote" not in again.output and "pg_terminate_backend" in again.output
        reader.rollback()
    rerun = CliRunner().invoke(main, command)  # nothing left to match: it rewrites again
    assert rerun.exit_code == 0 and "rewrote the tables" in rerun.output, rerun.output
    with psycopg.connect(database_url, autocommit=True) as admin:
        assert _database_files_hold(admin, needle) == []


@pytest.mark.slow
def test_forget_full_behind_a_readers_lock_says_what_it_deleted(
    store: Store, photos: Path, tiny_model: str, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A verifying attack: a reader holding a lock on images (a read in an open transaction) made `forget --full`
    end in the lock line alone, without saying the image was deleted (it was, and left out of later ingests)."""
    ingest(store, [photos], model=ModelSpec.parse(tiny_model))
    role = f"lockreader_{os.getpid()}"
    grant_reader(store, role, "reader-login-pw")
    monkeypatch.setenv("IMAGEDB_DATABASE_URL", database_url)
    with psycopg.connect(_login(database_url, role, "reader-login-pw"), application_name="bi-tool") as reader:
        reader.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        reader.execute("SELECT count(*) FROM image_catalog")
        pid = reader.info.backend_pid
        result = CliRunner().invoke(main, ["forget", "--yes", "--full", "rocket.jpg"])
        reader.rollback()
    assert result.exit_code == 1, result.output
    assert "deleted 1 image(s)" in result.output and "forgot" not in result.output, result.output
    last = result.output.splitlines()[-1]
    assert "for a lock" in last and f"session {pid}" in last and "pg_terminate_backend" in last, last


def test_plain_forget_warns_when_an_older_snapshot_keeps_the_rows(
    store: Store, photos: Path, tiny_model: str, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A second outside attack: `forget` said "forgot 1 image(s)" and nothing else while a reader's open snapshot
    kept VACUUM from removing the row, whose path then stayed in the table and index files."""
    ingest(store, [photos], model=ModelSpec.parse(tiny_model))
    role = f"plainsnap_{os.getpid()}"
    grant_reader(store, role, "reader-login-pw")
    monkeypatch.setenv("IMAGEDB_DATABASE_URL", database_url)
    with psycopg.connect(_login(database_url, role, "reader-login-pw"), application_name="bi-tool") as reader:
        reader.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        reader.execute("SELECT 1")
        pid = reader.info.backend_pid
        result = CliRunner().invoke(main, ["forget", "--yes", "rocket.jpg"])
        assert result.exit_code == 0 and "forgot 1 image(s)" in result.output, result.output
        warning = [line for line in result.output.splitlines() if line.startswith("warning: session")]
        assert warning and f"session {pid} (role '{role}', application 'bi-tool'" in warning[0], result.output
        assert "imagedb forget --full" in warning[0]
        reader.rollback()
    quiet = CliRunner().invoke(main, ["forget", "--yes", "coffee.jpg"])
    assert quiet.exit_code == 0 and "warning" not in quiet.output, quiet.output


@pytest.mark.slow
def test_a_writers_forget_sees_a_readers_snapshot(
    store: Store, photos: Path, tiny_model: str, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """pg_stat_activity hides another role's snapshot from a writer: its `forget` said "forgot 1 image(s)" with no
    warning, and `forget --full` said it rewrote the tables, while a reader's REPEATABLE READ kept the rows."""
    target = photos / "secret-name-a-writer-forgets.jpg"
    (photos / "coffee.jpg").rename(target)
    ingest(store, [photos], model=ModelSpec.parse(tiny_model))
    reader_role, writer_role = f"wsnap_reader_{os.getpid()}", f"wsnap_writer_{os.getpid()}"
    grant_reader(store, reader_role, "reader-login-pw")
    grant_writer(store, writer_role, "writer-login-pw")
    monkeypatch.setenv("IMAGEDB_DATABASE_URL", _login(database_url, writer_role, "writer-login-pw"))
    with psycopg.connect(_login(database_url, reader_role, "reader-login-pw"), application_name="bi-tool") as reader:
        reader.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        reader.execute("SELECT 1")
        pid = reader.info.backend_pid
        plain = CliRunner().invoke(main, ["forget", "--yes", "rocket.jpg"])
        assert plain.exit_code == 0 and "forgot 1 image(s)" in plain.output, plain.output
        assert f"warning: session {pid} (role '{reader_role}', application 'bi-tool'" in plain.output, plain.output
        full = CliRunner().invoke(main, ["forget", "--yes", "--full", str(target)])
        assert full.exit_code == 1 and "deleted 1 image(s)" in full.output, full.output
        assert f"session {pid} (role '{reader_role}'" in full.output and "rewrote" not in full.output
        reader.rollback()
    rerun = CliRunner().invoke(main, ["forget", "--yes", "--full", str(target)])
    assert rerun.exit_code == 0 and "rewrote the tables" in rerun.output, rerun.output
    # A writer may not rewrite pg_statistic, where an autoanalyze may have sampled the path: it says so.
    assert "may not rewrite pg_statistic" in rerun.output
    with psycopg.connect(database_url, autocommit=True) as admin:
        statistics = str(admin.execute("SELECT pg_relation_filenode('pg_statistic')").fetchone()[0])
        assert set(_database_files_hold(admin, str(target).encode())) <= {statistics}


@pytest.mark.slow
def test_forget_full_waits_for_autovacuums_analyze(
    store: Store, photos: Path, tiny_model: str, database_url: str
) -> None:
    """A fourth outside attack: the check skipped every autovacuum worker, but an ANALYZE holds its snapshot like a
    session (only a plain VACUUM's is ignored), so `forget --full` said "forgot" while the rewritten files of
    images, its path index and pg_statistic held the path."""
    ingest(store, [photos], model=ModelSpec.parse(tiny_model))
    with psycopg.connect(database_url, autocommit=True) as admin:
        admin.execute("CREATE SCHEMA analyze_probe")
        admin.execute("CREATE TABLE analyze_probe.slow (id int, pad text)")
        admin.execute(  # an ANALYZE that autovacuum starts within a second and that reads a page every 0.1 s
            "ALTER TABLE analyze_probe.slow SET (autovacuum_analyze_threshold = 0, autovacuum_analyze_scale_factor = 0,"
            " autovacuum_vacuum_cost_limit = 1, autovacuum_vacuum_cost_delay = 100,"
            " autovacuum_vacuum_threshold = 2000000000, autovacuum_vacuum_insert_threshold = 2000000000)"
        )
        admin.execute("INSERT INTO analyze_probe.slow SELECT g, repeat('p', 1000) FROM generate_series(1, 2000) g")
        admin.execute("ALTER SYSTEM SET autovacuum_naptime = '1s'")
        admin.execute("SELECT pg_reload_conf()")
        try:
            deadline = time.monotonic() + 60
            while not admin.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'autovacuum worker'"
                " AND query LIKE '%%ANALYZE analyze_probe.slow%%' AND backend_xmin IS NOT NULL"
            ).fetchone()[0]:
                assert time.monotonic() < deadline, "autovacuum did not analyze the table"
                time.sleep(0.1)
            done = forget(store, "default", ["rocket.jpg"], full=True)  # waits 10 s: the ANALYZE takes longer
            assert done.blocker and "autovacuum: ANALYZE analyze_probe.slow" in done.blocker, done.blocker
        finally:
            admin.execute("ALTER SYSTEM RESET autovacuum_naptime")
            admin.execute("SELECT pg_reload_conf()")
            admin.execute("DROP SCHEMA analyze_probe CASCADE")


def test_forget_full_waits_for_a_snapshot_that_ends_meanwhile(
    store: Store, photos: Path, tiny_model: str, database_url: str
) -> None:
    ingest(store, [photos], model=ModelSpec.parse(tiny_model))
    with psycopg.connect(database_url) as other:
        other.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        other.execute("SELECT 1")
        timer = threading.Timer(1.0, other.rollback)
        timer.start()
        started = time.monotonic()
        done = forget(store, "default", ["rocket.jpg"], full=True)
        timer.join()
    assert done.blocker is None and 0.8 < time.monotonic() - started < 10


def test_forget_by_a_role_that_may_not_vacuum_says_so(
    store: Store, photos: Path, tiny_model: str, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    ingest(store, [photos], model=ModelSpec.parse(tiny_model))
    role = f"forgetter_{os.getpid()}"
    grant_writer(store, role, "writer-login-pw")
    writer_url = _login(database_url, role, "writer-login-pw")
    writer = Store(open_connection(writer_url))
    try:  # a writer may VACUUM what forget touches (PostgreSQL 17's MAINTAIN privilege)
        assert forget(writer, "default", ["rocket.jpg"]).unvacuumed == []
    finally:
        writer.close()
    store.conn.execute(f"REVOKE MAINTAIN ON images, thumbnails FROM {role}")
    monkeypatch.setenv("IMAGEDB_DATABASE_URL", writer_url)
    result = CliRunner().invoke(main, ["forget", "--yes", "camera.jpg"])
    assert result.exit_code == 0 and "forgot 1 image(s)" in result.output
    assert "warning: this role may not VACUUM images, thumbnails" in result.output


def test_grant_refuses_the_owner(store: Store) -> None:
    """`grant-reader postgres --password x` reset the owner's password and locked every
    command out."""
    from imagedb.errors import InvalidInput

    for grant in (grant_reader, grant_writer):
        with pytest.raises(InvalidInput, match="superuser or the role imagedb runs as"):
            grant(store, "postgres", "long enough to pass")
    assert store.conn.execute("SELECT 1").fetchone() == (1,)


def test_a_writer_asking_for_a_new_collection_is_told_who_can(
    store: Store, database_url: str, photos: Path, tiny_model: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    ingest(store, [photos / "coffee.jpg"], model=ModelSpec.parse(tiny_model))
    role = f"newcoll_{os.getpid()}"
    grant_writer(store, role, "writer-login-pw")
    monkeypatch.setenv("IMAGEDB_DATABASE_URL", _login(database_url, role, "writer-login-pw"))
    result = CliRunner().invoke(main, ["ingest", str(photos / "rocket.jpg"), "-c", "brand-new", "-m", tiny_model])
    assert result.exit_code == 1 and "this role may not create one" in result.output, result.output
    assert [line for line in result.output.splitlines() if line.startswith("Error")] == result.output.splitlines()[-1:]


def test_a_readers_url_or_no_url_given_to_imagedb_is_bad_usage(
    store: Store, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A verifying attack: a reader's URL got "the database schema is at revision none ... run `imagedb db
    upgrade`" (a reader cannot see the schema's revision), and a string that is no URL "database error", exit 1."""
    role = f"urlreader_{os.getpid()}"
    grant_reader(store, role, "reader-login-pw")
    monkeypatch.setenv("IMAGEDB_DATABASE_URL", _login(database_url, role, "reader-login-pw"))
    for command in (["db", "info"], ["search", "a cat"]):
        result = CliRunner().invoke(main, command)
        assert result.exit_code == 2 and "this login may not read imagedb's tables" in result.output, result.output
        assert "revision" not in result.output
    monkeypatch.setenv("IMAGEDB_DATABASE_URL", "not a url")
    result = CliRunner().invoke(main, ["db", "info"])
    assert result.exit_code == 2 and "not a database URL" in result.output, result.output
