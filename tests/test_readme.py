"""The SQL in the README and in docs/sql.md is the contract for SQL users: run it, and check that the
nearest-neighbour queries read the HNSW index. docs/bi.md's example questions run as a BI reader."""

from __future__ import annotations

import os
import re
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import numpy as np
import psycopg
import pytest
from pgvector import HalfVector

from imagedb.roles import grant_reader
from imagedb.store import Store
from imagedb.store.index import HNSW_INDEX_PREFIX

from helpers import fill_synthetic

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
SQL_DOC = ROOT / "docs" / "sql.md"
BI_DOC = ROOT / "docs" / "bi.md"


def _sql_blocks(path: Path) -> list[str]:
    return re.findall(r"```sql\n(.*?)```", path.read_text(), flags=re.S)


def _nearest_queries(path: Path) -> list[str]:
    """The nearest-neighbour recipes; a block opening with a comment is a set of several (docs/sql.md's measures,
    which tests/test_metric.py runs)."""
    return [
        b.strip().rstrip(";")
        for b in _sql_blocks(path)
        if "ORDER BY" in b and "<=>" in b and "imagedb_" not in b and not b.startswith("--")
    ]


def test_docs_sql_has_the_two_recipes_and_the_readme_shows_one_of_them() -> None:
    recipes = _nearest_queries(SQL_DOC)
    assert len(recipes) == 2, "docs/sql.md: one query with a parameter vector, one like a stored image"
    assert any("$1" in q for q in recipes) and any("image_id = 42" in q for q in recipes)
    shown = _nearest_queries(README)
    assert len(shown) >= 1, "the README's tour shows a nearest-neighbour query"
    assert all(q in recipes for q in shown), "the README's query is one of docs/sql.md's, word for word"


@pytest.mark.parametrize("doc", [SQL_DOC, README], ids=["docs-sql", "readme"])
def test_nearest_neighbour_queries_use_the_index_and_agree_with_imagedb(store: Store, doc: Path) -> None:
    queries = _nearest_queries(doc)
    assert queries
    collection = fill_synthetic(store, 3000)
    ids, matrix = store.search.all_vectors(collection)
    target_id, target = ids[42], matrix[42]
    expected = [h.image_id for h in store.search.nearest(collection, target, 10, ef_search=None)]
    index = f"{HNSW_INDEX_PREFIX}{collection.model_id}"
    for query in queries:
        # The docs are written for ViT-B-32 (512 dimensions) and model 1; the synthetic model differs.
        sql = (
            query.replace("halfvec(512)", f"halfvec({collection.dim})")
            .replace("model_id = 1", f"model_id = {collection.model_id}")
            .replace("image_id = 42", f"image_id = {target_id}")
            .replace("$1", "%(q)s")
        )
        params = {"q": HalfVector(target)}
        plan = "\n".join(r[0] for r in store.conn.execute("EXPLAIN " + sql, params).fetchall())
        assert f"Index Scan using {index}" in plan, plan
        assert [r[0] for r in store.conn.execute(sql, params).fetchall()] == expected
        store.conn.rollback()
    assert np.allclose(np.linalg.norm(matrix, axis=1), 1.0, atol=1e-2)


@pytest.mark.parametrize("doc", [SQL_DOC, README], ids=["docs-sql", "readme"])
def test_sql_functions_run(store: Store, doc: Path) -> None:
    collection = fill_synthetic(store, 300)
    ids, matrix = store.search.all_vectors(collection)
    block = re.findall(r"```sql\n(SELECT \* FROM imagedb_similar.*?)```", doc.read_text(), flags=re.DOTALL)[0]
    similar, nearest = [line.split(";")[0] for line in block.strip().splitlines()]
    expected = [h.image_id for h in store.search.nearest(collection, matrix[42], 11)]
    rows = store.conn.execute(
        similar.replace("42", str(ids[42])),
    ).fetchall()
    assert [r[0] for r in rows] == [i for i in expected if i != ids[42]][:10]
    rows = store.conn.execute(
        nearest.replace("$1", "%s").replace("'default'", "'synthetic'"), (HalfVector(matrix[42]),)
    ).fetchall()
    assert [r[0] for r in rows] == expected[:10]


def test_bi_example_questions_run_as_a_reader(store: Store, database_url: str) -> None:
    fill_synthetic(store, 50)
    statements = [s.strip() for b in _sql_blocks(BI_DOC) for s in b.split(";") if s.strip()]
    assert len(statements) >= 4
    role, password = f"bi_doc_{os.getpid()}", "role-pw-for-tests"
    grant_reader(store, role, password)
    parts = urlsplit(database_url)
    url = urlunsplit(parts._replace(netloc=f"{role}:{password}@{parts.netloc.split('@')[-1]}"))
    with psycopg.connect(url, autocommit=True) as conn:
        for statement in statements:
            conn.execute(statement).fetchall()


def test_docs_sql_recipes_run(store: Store) -> None:
    fill_synthetic(store, 50)
    block = next(b for b in _sql_blocks(SQL_DOC) if "FROM collection_stats" in b)
    statements = [line.split(";")[0] for line in block.strip().splitlines()]
    assert len(statements) >= 5
    for statement in statements:
        cursor = store.conn.execute(statement)
        if cursor.description is not None:  # LISTEN returns no rows
            cursor.fetchall()
