"""The four measures (cosine, euclidean, pearson, inner) from the CLI, the API and SQL: each ranking and score is
checked against numpy on the vectors read back from the database; cosine, euclidean and inner read the HNSW index;
a measure or threshold that cannot apply is refused in one line."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import psycopg
import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient
from pgvector import HalfVector

from imagedb.api import create_app
from imagedb.cli import main
from imagedb.pg.connection import sqlalchemy_url
from imagedb.pg.migrate import alembic_config
from imagedb.request import METRICS
from imagedb.store import Collection, Store
from imagedb.store.index import HNSW_INDEX_PREFIX

from helpers import fill_synthetic

SQL_DOC = Path(__file__).resolve().parents[1] / "docs" / "sql.md"
HIGHER_IS_BETTER = {"cosine": True, "euclidean": False, "pearson": True, "inner": True}


def _measure(metric: str, matrix: np.ndarray, q: np.ndarray) -> np.ndarray:
    """The measure computed independently, in float64, from the stored vectors and the query as the database
    holds them."""
    m, q = matrix.astype(np.float64), q.astype(np.float64)
    if metric == "cosine":
        return (m @ q) / (np.linalg.norm(m, axis=1) * np.linalg.norm(q))
    if metric == "euclidean":
        return np.linalg.norm(m - q, axis=1)
    if metric == "inner":
        return m @ q
    return np.array([np.corrcoef(row, q)[0, 1] for row in m])


def _expected(metric: str, ids: list[int], matrix: np.ndarray, q: np.ndarray, k: int, leave_out: int) -> list:
    scores = _measure(metric, matrix, q)
    sign = -1 if HIGHER_IS_BETTER[metric] else 1
    order = sorted((i for i in range(len(ids)) if ids[i] != leave_out), key=lambda i: (sign * scores[i], ids[i]))
    return [(ids[i], float(scores[i])) for i in order[:k]]


def _query(vector: np.ndarray) -> np.ndarray:
    """A stored vector as `imagedb search --like` sends it: normalised again, then rounded to halfvec."""
    return (vector / np.linalg.norm(vector)).astype(np.float16).astype(np.float32)


@pytest.fixture
def vectors(store: Store) -> tuple[Collection, list[int], np.ndarray]:
    # 90 images: Pearson's candidate pool (10 k, at least ef_search 100) holds them all, so its answer is exact.
    collection = fill_synthetic(store, 90, dim=32, seed=7)
    ids, matrix = store.search.all_vectors(collection)
    return collection, ids, matrix


def _assert_same(found: list[tuple[int, float]], expected: list[tuple[int, float]], metric: str) -> None:
    assert [i for i, _ in found] == [i for i, _ in expected], metric
    assert np.allclose([s for _, s in found], [s for _, s in expected], atol=2e-3), (metric, found, expected)


def test_each_metric_ranks_and_scores_as_numpy_from_the_cli_the_api_and_sql(
    store: Store, database_url: str, vectors: tuple[Collection, list[int], np.ndarray]
) -> None:
    collection, ids, matrix = vectors
    target = ids[5]
    with TestClient(create_app(database_url), base_url="http://localhost") as client:
        for metric in METRICS:
            expected = _expected(metric, ids, matrix, _query(matrix[5]), 10, target)
            # The CLI
            result = CliRunner().invoke(
                main,
                ["--database-url", database_url, "search", "--like", str(target), "-c", collection.name,
                 "--metric", metric, "-k", "10", "--json"],
            )  # fmt: skip
            assert result.exit_code == 0, result.output
            rows = [json.loads(line) for line in result.output.splitlines()]
            assert {r["metric"] for r in rows} == {metric}
            _assert_same([(r["id"], r["score"]) for r in rows], expected, metric)
            # The API
            answer = client.get(f"/api/images/{target}/similar", params={"metric": metric, "limit": "10"})
            assert answer.status_code == 200, answer.text
            body = answer.json()
            assert body["metric"] == metric and body["higher_is_better"] == HIGHER_IS_BETTER[metric]
            _assert_same([(h["id"], h["score"]) for h in body["results"]], expected, metric)
            # SQL: imagedb_similar sends the stored vector as it is (not normalised again)
            stored = _expected(metric, ids, matrix, matrix[5], 10, target)
            found = store.conn.execute(
                "SELECT image_id, score FROM imagedb_similar(%s, 10, NULL, %s)", (target, metric)
            )
            _assert_same([(int(i), float(s)) for i, s in found.fetchall()], stored, metric)
            found = store.conn.execute(
                "SELECT image_id, score FROM imagedb_nearest(%s, %s, 10, metric => %s)",
                (HalfVector(matrix[5]), collection.name, metric),
            )
            _assert_same([(int(i), float(s)) for i, s in found.fetchall()], _expected(metric, ids, matrix, matrix[5],
                                                                                      10, -1), metric)  # fmt: skip
            store.conn.rollback()


def test_the_table_names_the_measure(database_url: str, vectors: tuple[Collection, list[int], np.ndarray]) -> None:
    collection, ids, _ = vectors
    args = ["--database-url", database_url, "search", "--like", str(ids[0]), "-c", collection.name, "-k", "3"]
    for metric, header in (("cosine", "score"), ("euclidean", "distance"), ("pearson", "pearson"), ("inner", "inner")):
        result = CliRunner().invoke(main, [*args, "--metric", metric])
        assert result.exit_code == 0, result.output
        assert result.output.splitlines()[0].split()[1] == header


def test_the_old_signatures_still_rank_by_cosine(
    store: Store, vectors: tuple[Collection, list[int], np.ndarray]
) -> None:
    collection, ids, matrix = vectors
    expected = _expected("cosine", ids, matrix, matrix[3], 10, ids[3])
    for statement, args in (
        ("SELECT image_id, score FROM imagedb_similar(%s, 10)", (ids[3],)),
        ("SELECT image_id, score FROM imagedb_similar(%s, 10, 40)", (ids[3],)),
        ("SELECT image_id, score FROM imagedb_nearest(%s, %s, 10, NULL, %s)", (HalfVector(matrix[3]), collection.name,
                                                                              ids[3])),
    ):  # fmt: skip
        _assert_same([(int(i), float(s)) for i, s in store.conn.execute(statement, args).fetchall()], expected, "old")
    store.conn.execute(
        "INSERT INTO text_embeddings (model_id, text_sha256, text, embedding)"
        " VALUES (%s, sha256(convert_to('probe', 'UTF8')), 'probe', %s)",
        (collection.model_id, HalfVector(matrix[3])),
    )
    for metric in METRICS:
        rows = store.conn.execute(
            "SELECT image_id, score FROM imagedb_search_text('probe', %s, 10, %s)", (collection.name, metric)
        ).fetchall()
        _assert_same([(int(i), float(s)) for i, s in rows], _expected(metric, ids, matrix, matrix[3], 10, -1), metric)


def test_cosine_euclidean_and_inner_read_the_hnsw_index(store: Store) -> None:
    collection = fill_synthetic(store, 3000)
    _, matrix = store.search.all_vectors(collection)
    index = f"{HNSW_INDEX_PREFIX}{collection.model_id}"
    for metric in METRICS:  # Pearson's candidates come from the index too
        plan = store.search.explain_nearest(collection, matrix[0], 10, metric=metric)
        assert f"Index Scan using {index}" in plan, (metric, plan)


def _measure_recipes() -> list[str]:
    block = next(b for b in re.findall(r"```sql\n(.*?)```", SQL_DOC.read_text(), flags=re.S) if "AS euclidean" in b)
    lines = "\n".join(line for line in block.splitlines() if not line.startswith("--"))
    return [s.strip() for s in lines.split(";") if s.strip()]


def test_docs_sql_measure_recipes_use_the_index_and_agree_with_numpy(store: Store) -> None:
    collection = fill_synthetic(store, 3000)
    ids, matrix = store.search.all_vectors(collection)
    index = f"{HNSW_INDEX_PREFIX}{collection.model_id}"
    recipes = _measure_recipes()
    measures = [re.search(r" AS (\w+)\s+FROM", r).group(1) for r in recipes]  # type: ignore[union-attr]
    assert sorted(measures) == ["cosine", "euclidean", "inner_product", "pearson"]
    q = matrix[42]
    for recipe, measure in zip(recipes, measures, strict=True):
        statement = (
            recipe.replace("halfvec(512)", f"halfvec({collection.dim})")
            .replace("ARRAY[512]", f"ARRAY[{collection.dim}]")
            .replace("/ 512", f"/ {collection.dim}")
            .replace("model_id = 1", f"model_id = {collection.model_id}")
            .replace("$1", "%(q)s")
        )
        params = {"q": HalfVector(q)}
        plan = "\n".join(r[0] for r in store.conn.execute("EXPLAIN " + statement, params).fetchall())
        # Pearson ranks differently from the index's cosine: the recipe is an exact scan, and says so.
        assert (f"Index Scan using {index}" in plan) == (measure != "pearson"), (measure, plan)
        metric = {"inner_product": "inner"}.get(measure, measure)
        found = [(int(i), float(s)) for i, s in store.conn.execute(statement, params).fetchall()]
        _assert_same(found, _expected(metric, ids, matrix, q, 10, -1), measure)


def test_relevance_and_thresholds_are_in_the_chosen_measure(
    store: Store, database_url: str, vectors: tuple[Collection, list[int], np.ndarray]
) -> None:
    collection, ids, matrix = vectors
    base = ["--database-url", database_url, "search", "--like", str(ids[5]), "-c", collection.name, "--json"]
    q = _query(matrix[5])
    for metric in METRICS:
        rows = [json.loads(line) for line in CliRunner().invoke(main, [*base, "--metric", metric]).output.splitlines()]
        # The first search drew the sample (all 90 images: fewer than relevance.SAMPLE_SIZE).
        sample = {int(r[0]) for r in store.conn.execute("SELECT image_id FROM relevance_samples").fetchall()}
        at = [ids.index(i) for i in sorted(sample)]
        sampled = _measure(metric, matrix[at], q)
        sign = 1 if HIGHER_IS_BETTER[metric] else -1
        for r in rows:
            # Standard deviations better than the sample's mean, in the measure itself (the query image is sampled too)
            assert r["relevance"] == pytest.approx(sign * (r["score"] - sampled.mean()) / sampled.std(), abs=2e-2)
        # Results come best first, so relevance falls down the list: a cut between the 5th and the 6th keeps 5.
        cut = (rows[4]["relevance"] + rows[5]["relevance"]) / 2
        kept = CliRunner().invoke(main, [*base, "--metric", metric, "--min-relevance", str(cut)]).output.splitlines()
        assert [json.loads(line)["id"] for line in kept] == [r["id"] for r in rows[:5]]
    rows = [json.loads(line) for line in CliRunner().invoke(main, [*base, "--metric", "euclidean"]).output.splitlines()]
    limit = (rows[2]["score"] + rows[3]["score"]) / 2
    kept = CliRunner().invoke(main, [*base, "--metric", "euclidean", "--max-distance", str(limit)]).output
    assert [json.loads(line)["id"] for line in kept.splitlines()] == [r["id"] for r in rows[:3]]
    rows = [json.loads(line) for line in CliRunner().invoke(main, [*base, "--metric", "pearson"]).output.splitlines()]
    cut = (rows[1]["score"] + rows[2]["score"]) / 2
    kept = CliRunner().invoke(main, [*base, "--metric", "pearson", "--min-score", str(cut)]).output
    assert [json.loads(line)["id"] for line in kept.splitlines()] == [r["id"] for r in rows[:2]]


@pytest.mark.parametrize(
    "args, words",
    [
        (["--metric", "manhattan"], "'manhattan' is not one of"),
        (["--metric", "euclidean", "--min-score", "0.5"], "use --max-distance"),
        (["--max-distance", "0.5"], "applies to --metric euclidean only"),
        (["--metric", "pearson", "--max-distance", "0.5"], "applies to --metric euclidean only"),
        (["--metric", "euclidean", "--max-distance", "3"], "0<=x<=2"),
    ],
)
def test_a_measure_or_threshold_that_cannot_apply_is_refused(
    database_url: str, vectors: tuple[Collection, list[int], np.ndarray], args: list[str], words: str
) -> None:
    collection, ids, _ = vectors
    result = CliRunner().invoke(
        main, ["--database-url", database_url, "search", "--like", str(ids[0]), "-c", collection.name, *args]
    )
    assert result.exit_code == 2, result.output
    assert words in result.output
    assert "Traceback" not in result.output


def test_the_api_and_sql_refuse_them_too(store: Store, database_url: str, vectors: tuple) -> None:
    collection, ids, matrix = vectors
    with TestClient(create_app(database_url), base_url="http://localhost") as client:
        similar = f"/api/images/{ids[0]}/similar"
        assert client.get(similar, params={"metric": "manhattan"}).status_code == 422
        refused = client.get(similar, params={"metric": "euclidean", "min_score": "0.5"})
        assert refused.status_code == 400 and refused.json()["detail"].endswith("use max_distance")  # its own name
        assert client.get(similar, params={"max_distance": "0.5"}).status_code == 400
        assert client.get("/api/search", params={"q": "x", "metric": "MANHATTAN"}).status_code == 422
    with pytest.raises(psycopg.errors.RaiseException, match="unknown metric 'manhattan'"):
        store.conn.execute("SELECT * FROM imagedb_similar(%s, 10, NULL, 'manhattan')", (ids[0],))
    store.conn.rollback()
    flat = HalfVector(np.full(collection.dim, 0.1, dtype=np.float32))
    with pytest.raises(psycopg.errors.RaiseException, match="constant"):
        store.conn.execute("SELECT * FROM imagedb_nearest(%s, %s, metric => 'pearson')", (flat, collection.name))
    store.conn.rollback()


@pytest.fixture
def migration_database(server_url: str) -> Iterator[str]:
    from conftest import with_database

    name = f"imagedb_metric_migration_{os.getpid()}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name}")
        conn.execute(f"CREATE DATABASE {name}")
    yield with_database(server_url, name)
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def test_the_migration_keeps_writers_able_to_search_and_downgrades(migration_database: str) -> None:
    """A writer role made before the revision keeps EXECUTE on the replaced functions; the downgrade restores the
    old signatures."""
    from alembic import command
    from sqlalchemy import create_engine

    engine = create_engine(sqlalchemy_url(migration_database))
    cfg = alembic_config()

    def migrate(step: object, revision: str) -> None:
        with engine.begin() as conn:
            cfg.attributes["connection"] = conn
            step(cfg, revision)  # type: ignore[operator]

    role = f"metric_writer_{os.getpid()}"
    signatures = "SELECT oid::regprocedure::text FROM pg_proc WHERE proname LIKE 'imagedb\\_%%' ORDER BY 1"
    try:
        migrate(command.upgrade, "upgrade")
        with psycopg.connect(migration_database, autocommit=True) as conn:
            conn.execute(f"DROP ROLE IF EXISTS {role}")
            conn.execute(f"CREATE ROLE {role}")
            conn.execute(f"GRANT SELECT, INSERT ON embeddings TO {role}")
            old = [r[0] for r in conn.execute(signatures).fetchall()]
        migrate(command.upgrade, "head")
        with psycopg.connect(migration_database, autocommit=True) as conn:
            new = [r[0] for r in conn.execute(signatures).fetchall()]
            assert "imagedb_nearest(halfvec,text,integer,integer,bigint,text)" in new
            for function in ("imagedb_nearest", "imagedb_similar", "imagedb_search_text"):
                # Granted to the role itself, as grant-writer grants it, not only through PUBLIC.
                granted = conn.execute(
                    "SELECT count(*) FROM pg_proc p, aclexplode(p.proacl) a WHERE p.proname = %s"
                    " AND a.grantee = %s::regrole AND a.privilege_type = 'EXECUTE'",
                    (function, role),
                ).fetchone()[0]
                assert granted == 1, function
        migrate(command.downgrade, "upgrade")
        with psycopg.connect(migration_database, autocommit=True) as conn:
            assert [r[0] for r in conn.execute(signatures).fetchall()] == old
    finally:
        engine.dispose()
        with psycopg.connect(migration_database, autocommit=True) as conn:
            conn.execute(f"DROP OWNED BY {role}")
            conn.execute(f"DROP ROLE IF EXISTS {role}")


def test_docs_sql_metric_calls_run(store: Store, vectors: tuple[Collection, list[int], np.ndarray]) -> None:
    collection, ids, matrix = vectors
    block = next(b for b in re.findall(r"```sql\n(.*?)```", SQL_DOC.read_text(), flags=re.S) if "metric =>" in b)
    calls = [line.split(";")[0] for line in block.strip().splitlines()]
    assert len(calls) == 3
    first, second = (store.conn.execute(c.replace("42", str(ids[42]))).fetchall() for c in calls[:2])
    assert first == second
    assert [r[0] for r in first] == [i for i, _ in _expected("euclidean", ids, matrix, matrix[42], 10, ids[42])]
    third = calls[2].replace("$1", "%s").replace("'default'", f"'{collection.name}'")
    rows = store.conn.execute(third, (HalfVector(matrix[42]),)).fetchall()
    assert [r[0] for r in rows] == [i for i, _ in _expected("pearson", ids, matrix, matrix[42], 10, -1)]


def test_every_metric_with_collapsed_duplicates_and_with_a_binary_index(
    store: Store, database_url: str, vectors: tuple[Collection, list[int], np.ndarray]
) -> None:
    """The other shapes of the search statement: collapsing duplicates, and a binary-quantised index whose
    candidates (here all 90 images, rerank 100) are ranked by the measure."""
    collection, ids, matrix = vectors
    base = ["--database-url", database_url, "search", "--like", str(ids[5]), "-c", collection.name, "--json"]
    expected = {m: _expected(m, ids, matrix, _query(matrix[5]), 10, ids[5]) for m in METRICS}
    for metric in METRICS:
        result = CliRunner().invoke(main, [*base, "--metric", metric, "--collapse-duplicates"])
        assert result.exit_code == 0, result.output
        rows = [json.loads(line) for line in result.output.splitlines()]
        _assert_same([(r["id"], r["score"]) for r in rows], expected[metric], metric)  # no groups: nothing collapsed
    reindex = ["--database-url", database_url, "db", "reindex", "--quantize", "binary", "--rerank", "100"]
    assert CliRunner().invoke(main, reindex).exit_code == 0
    for metric in METRICS:
        result = CliRunner().invoke(main, [*base, "--metric", metric])
        assert result.exit_code == 0, result.output
        rows = [json.loads(line) for line in result.output.splitlines()]
        _assert_same([(r["id"], r["score"]) for r in rows], expected[metric], f"{metric}, binary index")


def test_the_page_offers_every_measure_next_to_sort() -> None:
    page = (Path(__file__).resolve().parents[1] / "imagedb" / "web" / "index.html").read_text()
    select = re.search(r'<select id="metric">(.*?)</select>', page)
    assert select is not None and page.index('id="sort"') < page.index('id="metric"')
    assert tuple(re.findall(r'<option value="(\w+)"', select.group(1))) == METRICS
    script = (Path(__file__).resolve().parents[1] / "imagedb" / "web" / "app.js").read_text()
    assert 'p.set("metric"' in script and "data.metric" in script
