"""The README's SQL is the contract for SQL users: run it, and check that it reads the HNSW index."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from pgvector import HalfVector

from imagedb.store import Store
from imagedb.store.index import HNSW_INDEX_PREFIX

from helpers import fill_synthetic

README = Path(__file__).resolve().parents[1] / "README.md"


def _readme_queries() -> list[str]:
    blocks = re.findall(r"```sql\n(.*?)```", README.read_text(), flags=re.S)
    return [b.strip().rstrip(";") for b in blocks if "ORDER BY" in b and "<=>" in b and "imagedb_" not in b]


def test_readme_nearest_neighbour_queries_use_the_index_and_agree_with_imagedb(store: Store) -> None:
    queries = _readme_queries()
    assert len(queries) == 2
    collection = fill_synthetic(store, 3000)
    ids, matrix = store.search.all_vectors(collection)
    target_id, target = ids[42], matrix[42]
    expected = [h.image_id for h in store.search.nearest(collection, target, 10, ef_search=None)]
    index = f"{HNSW_INDEX_PREFIX}{collection.model_id}"
    for query in queries:
        # The README is written for ViT-B-32 (512 dimensions) and model 1; the synthetic model differs.
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


def test_readme_sql_functions_run(store: Store) -> None:
    collection = fill_synthetic(store, 300)
    ids, matrix = store.search.all_vectors(collection)
    text = README.read_text()
    block = re.findall(r"```sql\n(SELECT \* FROM imagedb_similar.*?)```", text, flags=re.DOTALL)[0]
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
