"""What a reader's catalog shows (migration 0014): imagedb's tables live in `imagedb_internal`, which a reader has no
USAGE on, so psql's `\\dt`, `information_schema.tables` and JDBC's `getTables` on `public` list only the views it may
read; the owner, writers and later migrations still find the tables by their plain names. And the errors of the SQL
functions name the function called and show control characters escaped."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import numpy as np
import psycopg
import pytest
from alembic import command
from pgvector import HalfVector
from sqlalchemy import create_engine, inspect
from test_sql_readers import DIM, PASSWORD, VIEWS, login, reader  # noqa: F401  (reader is a fixture)

from imagedb import roles
from imagedb.pg.cluster import program
from imagedb.pg.connection import INTERNAL_SCHEMA, connect, session_options, sqlalchemy_url
from imagedb.pg.migrate import alembic_config
from imagedb.roles import grant_writer
from imagedb.store import Store

Reader = tuple[psycopg.Connection, list[int], np.ndarray]

# What PgJDBC 42.7's DatabaseMetaData.getTables(null, "public", "%", null) reads: every relation of the schema,
# whatever the caller's privileges (without hideUnprivilegedObjects).
_JDBC_PUBLIC = (
    "SELECT c.relname, c.relkind FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace"
    " WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p', 'v', 'm', 'S', 'i', 'f') ORDER BY 1"
)


def _psql(url: str, command_text: str) -> str:
    psql = program("psql")
    done = subprocess.run(
        [psql, url, "-X", "-c", command_text], env={"PATH": f"{Path(psql).parent}:/usr/bin:/bin"},
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout + done.stderr


def test_a_reader_lists_only_the_views_it_can_read(reader: Reader, store: Store, database_url: str) -> None:  # noqa: F811
    conn, _, _ = reader
    role = conn.info.user
    assert conn.execute(_JDBC_PUBLIC).fetchall() == [(v, "v") for v in sorted(VIEWS)]
    listed = conn.execute(
        "SELECT table_schema, table_name FROM information_schema.tables"
        " WHERE table_schema NOT IN ('pg_catalog', 'information_schema') ORDER BY 2"
    ).fetchall()
    assert listed == [("public", v) for v in sorted(VIEWS)]
    assert conn.execute("SELECT has_schema_privilege(%s, %s, 'USAGE')", (role, INTERNAL_SCHEMA)).fetchone()[0] is False
    # The owner's public schema holds no table either: every base table moved, whoever's migration made it.
    assert store.conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").fetchone()[0] == 0
    url = login(database_url, role)
    engine = create_engine(sqlalchemy_url(url))  # what Superset lists
    try:
        with engine.connect() as sa:
            found = inspect(sa)
            assert found.get_table_names() == [] and sorted(found.get_view_names()) == sorted(VIEWS)
    finally:
        engine.dispose()
    assert "Did not find any" in _psql(url, r"\dt")  # "relations." (psql 15), "tables." (newer)
    views = _psql(url, r"\dv")
    assert all(v in views for v in VIEWS) and "(4 rows)" in views


def test_the_owner_writers_and_later_migrations_find_the_tables_by_name(store: Store, database_url: str) -> None:
    from helpers import fill_synthetic

    fill_synthetic(store, 5, dim=DIM)
    writer = f"catalog_writer_{os.getpid()}"
    grant_writer(store, writer, PASSWORD)
    with psycopg.connect(login(database_url, writer), autocommit=True) as conn:  # the database's search_path
        assert conn.execute("SELECT count(*) FROM embeddings").fetchone()[0] == 5
        raw = conn.execute(
            "SELECT e.image_id FROM embeddings e ORDER BY e.embedding::halfvec(32) <=> %s::halfvec(32) LIMIT 3",
            (str([0.1] * DIM),),
        ).fetchall()
        assert len(raw) == 3
        assert conn.execute("SELECT nextval('images_id_seq') > 0").fetchone()[0] is True
    # imagedb's own sessions set the path themselves, and a table made later (as by a later migration) lands inside.
    with store.conn.transaction(force_rollback=True):
        store.conn.execute("CREATE TABLE made_later (id int)")
        where = store.conn.execute("SELECT relnamespace::regnamespace::text FROM pg_class WHERE relname = 'made_later'")
        assert where.fetchone()[0] == INTERNAL_SCHEMA


def test_an_external_urls_options_and_pgoptions_are_kept_beside_the_search_path(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from imagedb.pg.database import open_connection

    monkeypatch.setenv("PGOPTIONS", "-c work_mem=7MB")
    with open_connection(database_url) as conn:
        assert conn.execute("SHOW work_mem").fetchone() == ("7MB",)
        assert conn.execute("SHOW search_path").fetchone() == ("imagedb_internal,public",)
    options = "options=-c%20work_mem%3D8MB"
    url = f"{database_url}{'&' if '?' in database_url else '?'}{options}"
    with open_connection(url) as conn:
        assert conn.execute("SHOW work_mem").fetchone() == ("8MB",)
        assert conn.execute("SELECT count(*) FROM embeddings").fetchone() == (0,)


def _functions(conn: psycopg.Connection) -> dict[str, tuple[str, list[str] | None]]:
    rows = conn.execute(
        "SELECT p.proname, p.prosrc, p.proconfig FROM pg_proc p WHERE p.pronamespace = 'public'::regnamespace"
        " AND p.proname LIKE 'imagedb%'"
    ).fetchall()
    return {name: (source, config) for name, source, config in rows}


@pytest.mark.slow
def test_the_move_downgrades_and_upgrades_again(
    store: Store, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    upgraded = _functions(store.conn)
    writer = f"old_writer_{os.getpid()}"
    cfg = alembic_config()
    engine = create_engine(sqlalchemy_url(database_url), connect_args={"options": session_options(database_url)})
    try:
        with engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.downgrade(cfg, "readers")
        with psycopg.connect(database_url, autocommit=True) as conn:
            assert conn.execute("SELECT to_regnamespace(%s)", (INTERNAL_SCHEMA,)).fetchone()[0] is None
            assert conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").fetchone()[0] >= 18
            before = _functions(conn)
            assert before["imagedb_nearest"][1] == ["search_path=pg_catalog, public"]
            assert all("imagedb_internal" not in source and "EXCEPTION WHEN" not in source for source, _ in
                       before.values())  # fmt: skip
            assert "public.embeddings" in before["imagedb_nearest"][0]
            setting = conn.execute(
                "SELECT count(*) FROM pg_db_role_setting s JOIN pg_database d ON d.oid = s.setdatabase"
                " WHERE d.datname = current_database()"
            )
            assert setting.fetchone()[0] == 0
        old_store = Store(connect(database_url))  # a writer made before the upgrade, by that release's grant-writer
        later = {"image_words", "ingest_claims", "forgotten"}  # tables of revisions after that release
        for name in ("WRITER_TABLES", "FORGET_TABLES"):
            monkeypatch.setattr(roles, name, tuple(t for t in getattr(roles, name) if t not in later))
        try:
            grant_writer(old_store, writer, PASSWORD)
        finally:
            old_store.close()
        with engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")
    finally:
        engine.dispose()
    with psycopg.connect(database_url, autocommit=True) as conn:
        assert _functions(conn) == upgraded
        assert conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").fetchone()[0] == 0
    with psycopg.connect(login(database_url, writer), autocommit=True) as conn:  # given USAGE by the upgrade
        assert conn.execute("SELECT count(*) FROM embeddings").fetchone()[0] == 0


def _message(conn: psycopg.Connection, statement: str, params: tuple[object, ...]) -> str:
    with pytest.raises(psycopg.errors.RaiseException) as info:
        conn.execute(statement, params)
    diag = info.value.diag
    return f"{diag.message_primary}\nHINT: {diag.message_hint}"


def test_errors_name_the_function_called(reader: Reader) -> None:  # noqa: F811
    conn, ids, _ = reader
    similar = "SELECT * FROM imagedb_similar(%s, 3, %s, %s)"
    assert _message(conn, similar, (ids[0], None, "bogus")).startswith("imagedb_similar: unknown metric 'bogus'")
    assert _message(conn, similar, (ids[0], 5000, "cosine")).startswith("imagedb_similar: ef_search must be")
    text = "SELECT * FROM imagedb_search_text('a red car', 'synthetic', 3, %s)"
    assert _message(conn, text, ("bogus",)).startswith("imagedb_search_text: unknown metric 'bogus'")


@pytest.mark.parametrize("odd", ["bell\x07", "esc\x1b[31mred", "new\nline", "tab\there", "c1\x9bcsi", "del\x7f"])
def test_control_characters_in_arguments_are_escaped_in_errors(reader: Reader, odd: str) -> None:  # noqa: F811
    conn, ids, vectors = reader
    q = HalfVector(vectors[0])
    escaped = "".join(f"\\x{ord(c):02x}" if ord(c) < 32 or 127 <= ord(c) <= 159 else c for c in odd)
    messages = [
        _message(conn, "SELECT * FROM imagedb_nearest(%s, %s, 3)", (q, odd)),
        _message(conn, "SELECT * FROM imagedb_nearest(%s, 'synthetic', 3, metric => %s)", (q, odd)),
        _message(conn, "SELECT * FROM imagedb_similar(%s, 3, NULL, %s)", (ids[0], odd)),
        _message(conn, "SELECT * FROM imagedb_search_text(%s, 'synthetic', 3)", (odd,)),
        _message(conn, "SELECT * FROM imagedb_search_text('a red car', %s, 3)", (odd,)),
    ]
    for message in messages:
        assert escaped in message, message
        assert not any(ord(c) < 32 and c != "\n" or 127 <= ord(c) <= 159 for c in message), repr(message)
        assert message.count("\n") == 1, repr(message)  # the one between message and hint
    # A plain name is untouched.
    plain = _message(conn, "SELECT * FROM imagedb_nearest(%s, 'nowhere', 3)", (q,))
    assert plain.startswith("imagedb_nearest: no collection named 'nowhere'")
