"""The text-query cache cannot be poisoned (issue 22, item 5): only the owner writes it, and a row that is not what
the model gives (another dimension, not of length 1, filed under another text's hash) is never used, is reported
by `imagedb db check` and deleted by `imagedb db repair`."""

from __future__ import annotations

import json
import os
from pathlib import Path
from urllib.parse import parse_qs, urlsplit, urlunsplit

import psycopg
import pytest
from click.testing import CliRunner, Result
from fastapi.testclient import TestClient

from imagedb.api import create_app
from imagedb.cli import main
from imagedb.embed import ModelSpec
from imagedb.ingest import ingest
from imagedb.roles import grant_writer
from imagedb.store import Store

pytestmark = pytest.mark.slow  # a tiny model loaded in the CLI and the API


def _login(url: str, role: str, password: str) -> str:
    parts = urlsplit(url)
    host = parts.netloc.split("@")[-1]
    query = "&".join(f"{k}={v[0]}" for k, v in parse_qs(parts.query).items() if k != "passfile")
    return urlunsplit(parts._replace(netloc=f"{role}:{password}@{host}", query=query))


def _cli(url: str, *args: str) -> Result:
    return CliRunner().invoke(main, ["--database-url", url, *args])


def _cached(store: Store) -> dict[str, int]:
    rows = store.conn.execute("SELECT text, vector_dims(embedding) FROM text_embeddings").fetchall()
    return {text: dims for text, dims in rows}


def _search_ids(url: str, text: str) -> list[int]:
    result = _cli(url, "search", text, "--json")
    assert result.exit_code == 0 and "Traceback" not in result.output, result.output
    return [json.loads(line)["id"] for line in result.output.splitlines()]


def test_a_writer_may_read_the_cache_but_never_write_it(
    store: Store, database_url: str, photos: Path, tiny_model: str
) -> None:
    ingest(store, [photos], model=ModelSpec.parse(tiny_model))
    role = f"cache_writer_{os.getpid()}"
    grant_writer(store, role, "writer-login-pw")
    writer = _login(database_url, role, "writer-login-pw")
    owner_ids = _search_ids(database_url, "a cat")
    assert _cached(store) == {"a cat": 32}
    stored = store.conn.execute("SELECT embedding::text FROM embeddings ORDER BY image_id DESC LIMIT 1").fetchone()[0]
    with psycopg.connect(writer, autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM text_embeddings").fetchone()[0] == 1
        for statement, params in (
            # The attack: any text then finds the image the writer chose, at score 1.0, without the model.
            ("UPDATE text_embeddings SET embedding = %s::halfvec", (stored,)),
            (
                "INSERT INTO text_embeddings (model_id, text_sha256, text, embedding)"
                " SELECT model_id, sha256(convert_to('a dog', 'UTF8')), 'a dog', %s::halfvec FROM text_embeddings",
                (stored,),
            ),
            ("DELETE FROM text_embeddings", ()),
            ("TRUNCATE text_embeddings", ()),
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(statement, params)
    # The writer's own searches read the cache and work; what they embed is not kept.
    assert _search_ids(writer, "a cat") == owner_ids
    assert _search_ids(writer, "a dog")
    assert _cached(store) == {"a cat": 32}


def test_untrusted_rows_are_ignored_recomputed_reported_and_repaired(
    store: Store, database_url: str, photos: Path, tiny_model: str
) -> None:
    ingest(store, [photos], model=ModelSpec.parse(tiny_model))
    expected = _search_ids(database_url, "a cat")
    # Rows as a writer could leave them before the cache was the owner's alone (or a hand-made INSERT).
    store.conn.execute("UPDATE text_embeddings SET embedding = '[1,0,0]'")  # another dimension
    assert "cached query texts" in _cli(database_url, "db", "check").output
    assert _search_ids(database_url, "a cat") == expected  # ignored, embedded again, no database error
    assert _cached(store) == {"a cat": 32}  # and replaced by the model's vector
    with TestClient(create_app(database_url), base_url="http://localhost") as client:
        store.conn.execute("UPDATE text_embeddings SET embedding = '[1,0,0]'")
        answer = client.get("/api/search", params={"q": "a cat", "limit": len(expected)})
        assert answer.status_code == 200, answer.text  # was a 500
        assert [r["id"] for r in answer.json()["results"]] == expected

    model_id = store.conn.execute("SELECT model_id FROM text_embeddings").fetchone()[0]
    stored = store.conn.execute("SELECT embedding FROM embeddings ORDER BY image_id LIMIT 1").fetchone()[0]
    store.conn.execute(
        "INSERT INTO text_embeddings (model_id, text_sha256, text, embedding) VALUES"
        " (%(m)s, sha256(convert_to('twice', 'UTF8')), 'twice', array_fill(0.5, ARRAY[32])::halfvec),"  # length 2.8
        " (%(m)s, sha256(convert_to('zero', 'UTF8')), 'zero', array_fill(0, ARRAY[32])::halfvec),"
        " (%(m)s, sha256(convert_to('a dog', 'UTF8')), 'a cat', %(v)s)",  # filed under another text's hash
        {"m": model_id, "v": stored},
    )
    check = _cli(database_url, "db", "check")
    assert check.exit_code == 1 and "3 cached query texts" in check.output, check.output
    assert store.search.cached_texts(model_id, ["twice", "zero", "a dog"]) == {}
    repair = _cli(database_url, "db", "repair")
    assert repair.exit_code == 0 and "3 cached text(s)" in repair.output, repair.output
    assert _cached(store) == {"a cat": 32}
    assert "cached query texts" not in _cli(database_url, "db", "check").output


def test_the_migration_takes_the_cache_from_writers_and_empties_it(store: Store, database_url: str) -> None:
    """A database whose writers could write the cache (grant-writer before this revision): the upgrade revokes
    it and deletes the rows, which nobody can tell from the owner's."""
    from alembic import command
    from sqlalchemy import create_engine

    from imagedb.pg.connection import sqlalchemy_url
    from imagedb.pg.migrate import alembic_config

    role = f"old_cache_writer_{os.getpid()}"
    grant_writer(store, role, "writer-login-pw")
    model_id = store.models.ensure_model("m", "", 3)
    store.conn.execute(f"GRANT INSERT, UPDATE, DELETE ON text_embeddings TO {role}")
    store.conn.execute(
        "INSERT INTO text_embeddings (model_id, text_sha256, text, embedding)"
        " VALUES (%s, sha256(convert_to('x', 'UTF8')), 'x', '[1,0,0]')",
        (model_id,),
    )
    engine = create_engine(sqlalchemy_url(database_url))
    cfg = alembic_config()
    try:
        for step, revision in ((command.downgrade, "readers"), (command.upgrade, "head")):
            with engine.begin() as conn:
                cfg.attributes["connection"] = conn
                step(cfg, revision)
    finally:
        engine.dispose()
    privileges = store.conn.execute(
        "SELECT privilege_type FROM information_schema.role_table_grants"
        " WHERE grantee = %s AND table_name = 'text_embeddings' ORDER BY 1",
        (role,),
    ).fetchall()
    assert privileges == [("SELECT",)]
    assert store.conn.execute("SELECT count(*) FROM text_embeddings").fetchone()[0] == 0


def test_a_grant_made_by_hand_is_reported_and_repair_takes_it_back(store: Store, database_url: str) -> None:
    role = f"hand_granted_{os.getpid()}"
    grant_writer(store, role, "writer-login-pw")
    model_id = store.models.ensure_model("m", "", 3)
    store.conn.execute(
        "INSERT INTO text_embeddings (model_id, text_sha256, text, embedding)"
        " VALUES (%s, sha256(convert_to('x', 'UTF8')), 'x', '[1,0,0]')",
        (model_id,),
    )
    assert store.admin.cache_writers() == []  # grant-writer gives SELECT only
    store.conn.execute(f"GRANT INSERT ON text_embeddings TO {role}")
    store.conn.execute("GRANT UPDATE ON text_embeddings TO PUBLIC")
    check = _cli(database_url, "db", "check")
    assert check.exit_code == 1 and f"may write the text-query cache, which every search trusts: PUBLIC, {role}" in (
        check.output
    ), check.output
    repair = _cli(database_url, "db", "repair")
    assert repair.exit_code == 0 and f"revoked writing it from PUBLIC, {role}" in repair.output, repair.output
    assert store.admin.cache_writers() == []
    assert store.conn.execute("SELECT count(*) FROM text_embeddings").fetchone()[0] == 0
    with psycopg.connect(_login(database_url, role, "writer-login-pw"), autocommit=True) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("DELETE FROM text_embeddings")
