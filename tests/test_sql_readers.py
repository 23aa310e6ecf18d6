"""SQL for readers (migration 0012): a `grant-reader` login searches through imagedb_nearest, imagedb_similar and
imagedb_search_text, which refuse hostile arguments in one line and return no vectors, while the reader still may
not read vectors, thumbnails, raw EXIF or the base tables; and every view, view column and function says what it
holds (COMMENT ON), so BI tools and psql's \\d+ show more than bare names."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import warnings
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit, urlunsplit

import numpy as np
import psycopg
import pytest
from pgvector import HalfVector
from pgvector.psycopg import register_vector

from imagedb.pg.connection import sqlalchemy_url
from imagedb.pg.migrate import alembic_config
from imagedb.roles import grant_reader, grant_writer
from imagedb.store import Store

from helpers import fill_synthetic

PASSWORD = "a-reader-password"
VIEWS = ("image_catalog", "collection_stats", "duplicate_report", "dicom_catalog")
DIM = 32


def login(url: str, role: str, password: str = PASSWORD) -> str:
    """`url`'s database as `role` with its password, and no password file: a real login, as a BI tool makes."""
    parts = urlsplit(url)
    host = parts.netloc.split("@")[-1]
    query = "&".join(f"{k}={v[0]}" for k, v in parse_qs(parts.query).items() if k != "passfile")
    return urlunsplit(parts._replace(netloc=f"{role}:{password}@{host}", query=query))


@pytest.fixture
def reader(store: Store, database_url: str) -> Iterator[tuple[psycopg.Connection, list[int], np.ndarray]]:
    """A reader's connection to a collection `synthetic` of 50 random unit vectors, and a cached text query."""
    collection = fill_synthetic(store, 50, dim=DIM)
    ids = [r[0] for r in store.conn.execute("SELECT id FROM images ORDER BY id").fetchall()]
    register_vector(store.conn)
    vectors = np.array(
        [
            r[0].to_numpy()
            for r in store.conn.execute(
                "SELECT embedding FROM embeddings ORDER BY image_id"
            ).fetchall()
        ]
    )  # fmt: skip
    store.conn.execute(
        "INSERT INTO text_embeddings (model_id, text_sha256, text, embedding) VALUES (%s, %s, %s, %s)",
        (collection.model_id, hashlib.sha256(b"a red car").digest(), "a red car", HalfVector(vectors[7])),
    )
    store.conn.commit()
    role = f"sql_reader_{os.getpid()}"
    grant_reader(store, role, PASSWORD)
    with psycopg.connect(login(database_url, role), autocommit=True) as conn:
        register_vector(conn)
        yield conn, ids, vectors


def _refused(conn: psycopg.Connection, statement: str, params: tuple[object, ...], message: str) -> None:
    with pytest.raises(psycopg.errors.RaiseException, match=message) as info:
        conn.execute(statement, params)
    assert "\n" not in (info.value.diag.message_primary or "\n")


def test_a_reader_searches_in_sql_through_the_functions(
    store: Store, reader: tuple[psycopg.Connection, list[int], np.ndarray]
) -> None:
    conn, ids, vectors = reader
    query = HalfVector(vectors[3])
    owner = store.conn.execute("SELECT * FROM imagedb_nearest(%s, 'synthetic', 5)", (query,)).fetchall()
    found = conn.execute("SELECT * FROM imagedb_nearest(%s, 'synthetic', 5)", (query,)).fetchall()
    assert found == owner and found[0][0] == ids[3] and found[0][2] == pytest.approx(1, abs=1e-3)
    assert [c.name for c in conn.execute("SELECT * FROM imagedb_similar(%s, 3)", (ids[3],)).description] == [
        "image_id",
        "path",
        "score",
    ]
    similar = conn.execute("SELECT image_id FROM imagedb_similar(%s, 4)", (ids[3],)).fetchall()
    assert [r[0] for r in similar] == [r[0] for r in owner[1:]]  # itself left out
    for metric in ("cosine", "euclidean", "pearson", "inner"):
        rows = conn.execute("SELECT * FROM imagedb_similar(%s, 3, NULL, %s)", (ids[3], metric)).fetchall()
        assert len(rows) == 3, metric
        rows = conn.execute("SELECT * FROM imagedb_nearest(%s, 'synthetic', 3, metric => %s)", (query, metric))
        assert len(rows.fetchall()) == 3, metric
    text = conn.execute("SELECT image_id FROM imagedb_search_text('a red car', 'synthetic', 2, 'inner')").fetchall()
    assert text[0][0] == ids[7]
    # ef_search is set for the rest of the transaction, as before (only search_path is pinned by the function).
    path = conn.execute("SELECT current_setting('search_path')").fetchone()[0]
    with conn.transaction():
        conn.execute("SELECT * FROM imagedb_nearest(%s, 'synthetic', 5, 123)", (query,))
        assert conn.execute("SELECT current_setting('hnsw.ef_search')").fetchone()[0] == "123"
    assert conn.execute("SELECT current_setting('search_path')").fetchone()[0] == path


def test_a_reader_still_reads_no_vectors_thumbnails_exif_or_base_tables(
    reader: tuple[psycopg.Connection, list[int], np.ndarray],
) -> None:
    conn, ids, vectors = reader
    for statement in (
        "SELECT embedding FROM embeddings LIMIT 1",
        "SELECT jpeg FROM thumbnails LIMIT 1",
        "SELECT exif FROM images LIMIT 1",
        "SELECT id FROM images LIMIT 1",
        "SELECT * FROM collections",
        "SELECT * FROM text_embeddings",
        "SELECT * FROM dicom_secret",
        "SELECT imagedb_uid_hash('1.2.3')",
        "SELECT imagedb_older_snapshot('1'::xid8)",  # a writer's, for forget: other sessions' pids and roles
        "SELECT e.image_id FROM embeddings e ORDER BY e.embedding::halfvec(32) <=> e.embedding::halfvec(32) LIMIT 1",
    ):
        # The tables are in imagedb_internal, which the reader has no USAGE on: unqualified, its search path does not
        # reach them; qualified, the schema is refused.
        with pytest.raises((psycopg.errors.InsufficientPrivilege, psycopg.errors.UndefinedTable)):
            conn.execute(statement)
        qualified = re.sub(r"\bFROM (\w+)", r"FROM imagedb_internal.\1", statement)
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="permission denied"):
            conn.execute(qualified)
    role = conn.info.user
    assert conn.execute("SELECT has_schema_privilege(%s, 'public', 'CREATE')", (role,)).fetchone()[0] is False
    assert conn.execute("SELECT count(*) FROM image_catalog").fetchone()[0] == 50


def test_the_functions_refuse_hostile_arguments_in_one_line(
    store: Store, reader: tuple[psycopg.Connection, list[int], np.ndarray]
) -> None:
    conn, ids, vectors = reader
    q = HalfVector(vectors[0])
    nearest = "SELECT * FROM imagedb_nearest(%s, %s, %s)"
    for k in (10**6, 1001, 0, -1, None):
        _refused(conn, nearest, (q, "synthetic", k), "imagedb_nearest: k must be between 1 and 1000")
        _refused(conn, "SELECT * FROM imagedb_similar(%s, %s)", (ids[0], k), "imagedb_similar: k must be between")
        _refused(
            conn, "SELECT * FROM imagedb_search_text('a red car', 'synthetic', %s)", (k,), "imagedb_search_text: k"
        )
    _refused(conn, nearest, (None, "synthetic", 5), "the query vector is NULL")
    _refused(conn, nearest, (HalfVector(np.zeros(DIM)), "synthetic", 5), "has length 0")
    _refused(conn, nearest, (HalfVector([1.0, 0.0, 0.0]), "synthetic", 5), "has 3 dimensions, collection 'synthetic'")
    _refused(conn, nearest, (HalfVector(np.ones(4096)), "synthetic", 5), "has 4096 dimensions")
    for name in ("synthetic'; DROP TABLE images; --", 'x" OR 1=1', "", None):
        _refused(conn, nearest, (q, name, 5), "imagedb_nearest: no collection named")
        _refused(conn, "SELECT * FROM imagedb_search_text('a red car', %s)", (name,), "no collection named")
    for metric in ("manhattan", "cosine; SELECT 1", None):
        _refused(conn, "SELECT * FROM imagedb_nearest(%s, 'synthetic', 5, metric => %s)", (q, metric), "unknown metric")
        _refused(conn, "SELECT * FROM imagedb_similar(%s, 5, metric => %s)", (ids[0], metric), "unknown metric")
    _refused(conn, "SELECT * FROM imagedb_similar(%s)", (None,), "no embedded image with id NULL")
    _refused(conn, "SELECT * FROM imagedb_similar(%s)", (-1,), "no embedded image with id -1")
    _refused(conn, "SELECT * FROM imagedb_search_text(NULL, 'synthetic')", (), "the query text is NULL")
    _refused(conn, "SELECT * FROM imagedb_search_text('never searched', 'synthetic')", (), "has not been embedded")
    store.conn.execute("UPDATE embedding_models SET pretrained = '/srv/private/weights/ckpt.pt'")
    store.conn.commit()
    with pytest.raises(psycopg.errors.RaiseException, match="synthetic:ckpt.pt yet") as info:  # no server path
        conn.execute("SELECT * FROM imagedb_search_text('never searched', 'synthetic')")
    assert "/srv/private" not in str(info.value)
    _refused(conn, "SELECT * FROM imagedb_nearest(%s, 'synthetic', 5, 100000)", (q,), "ef_search must be between")
    assert conn.execute("SELECT count(*) FROM image_catalog").fetchone()[0] == 50  # nothing dropped


def test_the_functions_run_as_their_owner_with_a_pinned_search_path_and_not_for_public(
    store: Store, database_url: str
) -> None:
    rows = store.conn.execute(
        "SELECT p.proname, p.prosecdef, p.proconfig, pg_get_userbyid(p.proowner),"
        " has_function_privilege('public', p.oid, 'EXECUTE')"
        " FROM pg_proc p WHERE p.proname IN ('imagedb_nearest', 'imagedb_similar', 'imagedb_search_text')"
    ).fetchall()
    owner = store.conn.execute("SELECT tableowner FROM pg_tables WHERE tablename = 'images'").fetchone()[0]
    assert sorted(r[0] for r in rows) == ["imagedb_nearest", "imagedb_search_text", "imagedb_similar"]
    for name, definer, config, function_owner, public in rows:
        assert definer and config == ["search_path=pg_catalog, imagedb_internal, public"] and function_owner == owner, (
            name
        )
        assert public is False, name
    # A login that is neither reader nor writer may not run them; a writer may.
    plain, writer = f"sql_plain_{os.getpid()}", f"sql_writer_{os.getpid()}"
    store.conn.execute(f"DROP ROLE IF EXISTS {plain}")
    store.conn.execute(f"CREATE ROLE {plain} LOGIN PASSWORD '{PASSWORD}'")
    store.conn.commit()
    grant_writer(store, writer, PASSWORD)
    fill_synthetic(store, 3, dim=DIM)
    image = store.conn.execute("SELECT min(id) FROM images").fetchone()[0]
    try:
        with psycopg.connect(login(database_url, plain)) as conn:
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="function imagedb_similar"):
                conn.execute("SELECT * FROM imagedb_similar(%s, 1)", (image,))
        with psycopg.connect(login(database_url, writer)) as conn:
            assert len(conn.execute("SELECT * FROM imagedb_similar(%s, 2)", (image,)).fetchall()) == 2
    finally:
        store.conn.execute(f"DROP OWNED BY {plain}")
        store.conn.execute(f"DROP ROLE {plain}")
        store.conn.commit()


def test_every_view_column_and_imagedb_function_has_a_comment(store: Store) -> None:
    missing = store.conn.execute(
        "SELECT c.relname || coalesce('.' || a.attname, '') FROM pg_class c"
        " LEFT JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped"
        " WHERE c.relname = ANY(%s) AND c.relnamespace = 'public'::regnamespace"
        "   AND (obj_description(c.oid, 'pg_class') IS NULL OR col_description(c.oid, a.attnum) IS NULL)",
        (list(VIEWS),),
    ).fetchall()
    assert missing == []
    functions = store.conn.execute(
        "SELECT p.oid::regprocedure::text, obj_description(p.oid, 'pg_proc') FROM pg_proc p"
        " WHERE p.proname LIKE 'imagedb\\_%%' AND p.pronamespace = 'public'::regnamespace"
    ).fetchall()
    assert len(functions) == 6 and [f for f, text in functions if not text] == []
    columns = store.conn.execute(
        "SELECT count(*) FROM pg_attribute WHERE attrelid = ANY(%s::regclass[]) AND attnum > 0", (list(VIEWS),)
    ).fetchone()[0]
    assert columns == 14 + 13 + 13 + 16
    deprecated = store.conn.execute(
        "SELECT c.relname || '.' || a.attname FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid"
        " WHERE c.relname = ANY(%s) AND col_description(c.oid, a.attnum) LIKE 'Deprecated%%' ORDER BY 1",
        (list(VIEWS),),
    ).fetchall()
    assert [r[0] for r in deprecated] == [
        "collection_stats.cameras",
        "collection_stats.formats",
        "collection_stats.model",
        "dicom_catalog.model",
        "duplicate_report.distance",
    ]


def test_the_clearer_columns_say_what_the_old_ones_meant(store: Store) -> None:
    collection = fill_synthetic(store, 4, dim=DIM)
    ids = [r[0] for r in store.conn.execute("SELECT id FROM images ORDER BY id").fetchall()]
    store.conn.execute(
        "INSERT INTO duplicate_groups (collection_id, group_no, image_id, matched_image_id, rule, distance)"
        " VALUES (%(c)s, 1, %(a)s, NULL, 'first', NULL), (%(c)s, 1, %(b)s, %(a)s, 'clip', 0.125),"
        " (%(c)s, 2, %(d)s, NULL, 'first', NULL), (%(c)s, 2, %(e)s, %(d)s, 'hash', 3)",
        {"c": collection.id, "a": ids[0], "b": ids[1], "d": ids[2], "e": ids[3]},
    )
    rows = store.conn.execute(
        "SELECT rule, distance, similarity, hash_distance_bits FROM duplicate_report ORDER BY group_no, rule"
    ).fetchall()
    assert rows == [("clip", 0.125, 0.875, None), ("first", None, None, None), ("first", None, None, None),
                    ("hash", 3.0, None, 3)]  # fmt: skip
    stats = store.conn.execute(
        "SELECT model, embedding_model, formats, distinct_formats, cameras, distinct_cameras FROM collection_stats"
    ).fetchone()
    assert stats == ("synthetic", "synthetic", 1, 1, 0, 0)
    store.conn.execute("SELECT model, scanner_model FROM dicom_catalog")


@pytest.fixture
def migration_database(server_url: str) -> Iterator[str]:
    from conftest import with_database

    name = f"imagedb_readers_migration_{os.getpid()}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name}")
        conn.execute(f"CREATE DATABASE {name}")
    yield with_database(server_url, name)
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.mark.slow
def test_the_migration_lets_existing_readers_search_and_downgrades(migration_database: str) -> None:
    """Readers and writers made before the revision get EXECUTE, PUBLIC loses it; the downgrade gives the views
    back their old columns, with their grants, and the functions back to PUBLIC."""
    from alembic import command
    from sqlalchemy import create_engine

    engine = create_engine(sqlalchemy_url(migration_database))
    cfg = alembic_config()

    def migrate(step: object, revision: str) -> None:
        with engine.begin() as conn:
            cfg.attributes["connection"] = conn
            step(cfg, revision)  # type: ignore[operator]

    reader, writer = f"old_sql_reader_{os.getpid()}", f"old_sql_writer_{os.getpid()}"
    can = "SELECT has_function_privilege(%s, 'imagedb_similar(bigint, integer, integer, text)', 'EXECUTE')"
    columns = "SELECT count(*) FROM information_schema.columns WHERE table_name = 'duplicate_report'"
    try:
        migrate(command.upgrade, "metric")
        with psycopg.connect(migration_database, autocommit=True) as conn:
            for role in (reader, writer):
                conn.execute(f"DROP ROLE IF EXISTS {role}")
                conn.execute(f"CREATE ROLE {role}")
            conn.execute(f"GRANT SELECT ON image_catalog, collection_stats, duplicate_report TO {reader}")
            conn.execute(f"GRANT SELECT, INSERT ON embeddings TO {writer}")
        migrate(command.upgrade, "head")
        with psycopg.connect(migration_database, autocommit=True) as conn:
            assert [conn.execute(can, (r,)).fetchone()[0] for r in (reader, writer, "public")] == [True, True, False]
            assert conn.execute(columns).fetchone()[0] == 13
        migrate(command.downgrade, "metric")
        with psycopg.connect(migration_database, autocommit=True) as conn:
            assert conn.execute(columns).fetchone()[0] == 11
            assert conn.execute("SELECT has_table_privilege(%s, 'duplicate_report', 'SELECT')", (reader,)).fetchone()[0]
            assert conn.execute(can, ("public",)).fetchone()[0] is True
            assert (
                conn.execute("SELECT prosecdef FROM pg_proc WHERE proname = 'imagedb_nearest'").fetchone()[0] is False
            )
        migrate(command.upgrade, "head")
    finally:
        engine.dispose()
        with psycopg.connect(migration_database, autocommit=True) as conn:
            for role in (reader, writer):
                conn.execute(f"DROP OWNED BY {role}")
                conn.execute(f"DROP ROLE IF EXISTS {role}")


def _recipes() -> list[str]:
    text = (Path(__file__).resolve().parents[1] / "docs" / "bi.md").read_text()
    section = text.split("## From code")[1]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


def test_the_docs_recipes_run_as_written_for_a_reader_and_a_writer(
    store: Store, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    collection = fill_synthetic(store, 50, dim=512, name="default")
    assert collection.model_id == 1 and store.conn.execute("SELECT 42 IN (SELECT id FROM images)").fetchone()[0]
    register_vector(store.conn)
    store.conn.execute(
        "INSERT INTO text_embeddings (model_id, text_sha256, text, embedding)"
        " SELECT 1, %s, 'a red car', embedding FROM embeddings WHERE image_id = 7",
        (hashlib.sha256(b"a red car").digest(),),
    )
    store.conn.commit()
    reader, writer = f"recipe_reader_{os.getpid()}", f"recipe_writer_{os.getpid()}"
    grant_reader(store, reader, PASSWORD)
    grant_writer(store, writer, PASSWORD)
    monkeypatch.setenv("IMAGEDB_URL", login(database_url, reader))
    monkeypatch.setenv("IMAGEDB_WRITER_URL", login(database_url, writer))
    blocks = _recipes()
    assert len(blocks) == 4
    namespace: dict[str, object] = {}
    engines = []
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "Did not recognize type 'halfvec'" among them
        for block in blocks[:3]:
            exec(compile(block, "docs/bi.md", "exec"), namespace)
            if "engine" in namespace:
                engines.append(namespace["engine"])
        assert [r[0] for r in namespace["like_42"]][:1] != [42] and len(namespace["like_42"]) == 10  # type: ignore[arg-type]
        assert len(namespace["rows"]) == 10  # type: ignore[arg-type]
        from sqlalchemy import MetaData

        tables = MetaData()  # the writer's tables reflect with pgvector's types, without a warning
        with namespace["engine"].connect() as conn:  # type: ignore[attr-defined]
            tables.reflect(conn, only=["embeddings", "text_embeddings"])
        assert type(tables.tables["embeddings"].c.embedding.type).__name__ == "HALFVEC"
    assert len(namespace["cars"]) == 5  # type: ignore[arg-type]
    try:
        if importlib.util.find_spec("pandas") is not None:  # not in the test extra; the pandas recipe needs it
            exec(compile(blocks[3], "docs/bi.md", "exec"), namespace)
            assert len(namespace["frame"]) == 10  # type: ignore[arg-type]
    finally:
        for engine in engines:
            engine.dispose()  # type: ignore[attr-defined]


def test_the_pandas_recipe_needs_pandas() -> None:
    pytest.importorskip("pandas", reason="pandas is not installed: the docs' pandas recipe was not run")
    assert "pd.read_sql(" in _recipes()[3]


def _jdbc_driver() -> Path | None:
    if os.environ.get("IMAGEDB_TEST_JDBC_JAR"):
        return Path(os.environ["IMAGEDB_TEST_JDBC_JAR"])
    found = sorted(Path.home().glob(".m2/repository/org/postgresql/postgresql/*/postgresql-*.jar"))
    return found[-1] if found else None


_JAVA = """
import java.sql.*;

public class Recipe {
    public static void main(String[] args) throws Exception {
        String vector = "[" + String.join(",", java.util.Collections.nCopies(512, "0.1")) + "]";
        try (Connection conn = DriverManager.getConnection(args[0], args[1], args[2])) {
            BLOCK
            int rows = 0;
            try (ResultSet r = st.executeQuery()) { while (r.next()) rows++; }
            PreparedStatement untyped = DriverManager.getConnection(args[0] + "?stringtype=unspecified", args[1],
                args[2]).prepareStatement("SELECT image_id FROM imagedb_nearest(?, ?, ?)");
            untyped.setString(1, vector); untyped.setString(2, "default"); untyped.setInt(3, 10);
            int more = 0;
            try (ResultSet r = untyped.executeQuery()) { while (r.next()) more++; }
            System.out.println(rows + " " + more);
        }
    }
}
"""


@pytest.mark.slow
def test_the_jdbc_recipe_runs_for_a_reader_over_tcp(tmp_path: Path) -> None:
    """The docs' JDBC lines, as written, from a reader's login over TCP (`imagedb db listen`)."""
    import shutil
    import socket
    import subprocess

    from click.testing import CliRunner

    from imagedb.cli import main
    from imagedb.pg.database import open_connection
    from imagedb.pg.embedded import stop_embedded

    driver = _jdbc_driver()
    if shutil.which("javac") is None or driver is None:
        pytest.skip("no JDK or no PostgreSQL JDBC driver here: the JDBC recipe was not run")
    text = (Path(__file__).resolve().parents[1] / "docs" / "bi.md").read_text()
    block = re.findall(r"```java\n(.*?)```", text, flags=re.S)[0]
    home = tmp_path / "home"
    store = Store(open_connection(home=home))
    try:
        fill_synthetic(store, 20, dim=512, name="default")
    finally:
        store.close()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    try:
        for args in (["db", "listen", f"127.0.0.1:{port}"], ["grant-reader", "jdbc_reader", "--password", PASSWORD]):
            result = CliRunner().invoke(main, ["--home", str(home), *args], env={"IMAGEDB_DATABASE_URL": None})
            assert result.exit_code == 0, result.output
        (tmp_path / "Recipe.java").write_text(_JAVA.replace("BLOCK", block))
        subprocess.run(["javac", "-cp", str(driver), "Recipe.java"], cwd=tmp_path, check=True, timeout=120)
        run = subprocess.run(
            ["java", "-cp", f"{driver}{os.pathsep}.", "Recipe", f"jdbc:postgresql://127.0.0.1:{port}/imagedb",
             "jdbc_reader", PASSWORD],
            cwd=tmp_path, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert run.returncode == 0, run.stderr
        assert run.stdout.split() == ["10", "10"]
    finally:
        stop_embedded(home)
