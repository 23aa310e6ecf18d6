"""A stored vector of zero length (a writer can store one) has no cosine and no Pearson correlation: it never
breaks a search's output (issue #22, item 10). Such rows are left out of every search, under every measure (a NaN
score reached the page as null and the CLI's --json as NaN, which is not JSON; and the cosine index holds no place
for them, so euclidean and inner listed one only once a scan ran past every other image), in the CLI, the API and
the SQL functions; `imagedb db check` reports them."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner, Result
from fastapi.testclient import TestClient

from imagedb.api import create_app
from imagedb.cli import main
from imagedb.request import METRICS


def _strict(text: str) -> Any:
    def refuse(constant: str) -> None:
        raise AssertionError(f"not JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


@pytest.fixture
def zeroed(database_url: str, photos: Path, tiny_model: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """The photos ingested, one image's vector then set to zeros, as a writer can; returns its path. The relevance
    sample holds every image of so small a collection, this one too."""
    monkeypatch.setenv("IMAGEDB_DATABASE_URL", database_url)
    monkeypatch.delenv("IMAGEDB_MODEL", raising=False)
    assert _cli("ingest", str(photos), "--model", tiny_model).exit_code == 0
    with psycopg.connect(database_url, autocommit=True) as conn:
        row = conn.execute(
            "UPDATE embeddings e SET embedding = array_fill(0, ARRAY[vector_dims(embedding)])::real[]::halfvec"
            " FROM images i WHERE i.id = e.image_id AND i.id = (SELECT min(id) FROM images) RETURNING i.path"
        ).fetchone()
    assert row is not None
    return str(row[0])


def _cli(*args: str) -> Result:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


@pytest.mark.slow
@pytest.mark.parametrize("metric", METRICS)
def test_a_zero_vector_never_breaks_the_json_output(zeroed: str, metric: str) -> None:
    result = _cli("search", "a photo", "--json", "-k", "50", "--metric", metric)
    assert result.exit_code == 0, result.output
    rows = [_strict(line) for line in result.output.splitlines()]
    assert rows and all(isinstance(r["score"], float) and math.isfinite(r["score"]) for r in rows), rows
    assert all(r["relevance"] is None or math.isfinite(r["relevance"]) for r in rows)
    assert zeroed not in {r["path"] for r in rows}


@pytest.mark.slow
@pytest.mark.parametrize("metric", ["euclidean", "inner"])
def test_the_top_k_is_the_start_of_a_longer_list_with_a_zero_vector_stored(
    database_url: str, zeroed: str, metric: str
) -> None:
    def ids(k: int) -> list[int]:
        result = _cli("search", "a photo", "--json", "-k", str(k), "--metric", metric)
        assert result.exit_code == 0, result.output
        return [_strict(line)["id"] for line in result.output.splitlines()]

    longest = ids(50)
    assert all(ids(k) == longest[:k] for k in (1, 5, len(longest) - 1, len(longest)))
    with psycopg.connect(database_url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT image_id, score FROM imagedb_search_text('a photo', 'default', 50, %s)", (metric,)
        ).fetchall()
        found = conn.execute("SELECT id FROM images WHERE path = %s", (zeroed,)).fetchone()
        cosine = conn.execute("SELECT score FROM imagedb_similar(%s, 50)", (longest[0],)).fetchall()
    assert found is not None and found[0] not in {r[0] for r in rows}
    assert all(math.isfinite(score) for (score,) in cosine)  # the SQL functions leave it out too: no NaN

    def relevance() -> float:
        result = _cli("search", "a photo", "--json", "-k", "1", "--metric", metric)
        return float(_strict(result.output.splitlines()[0])["relevance"])

    # The relevance baseline leaves it out as well: the same with its sample row as without.
    with_it = relevance()
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("DELETE FROM relevance_samples WHERE image_id = %s", (found[0],))
    assert relevance() == with_it


@pytest.mark.slow
def test_the_api_gives_every_result_a_number_and_db_check_reports_it(database_url: str, zeroed: str) -> None:
    client = TestClient(create_app(database_url), base_url="http://localhost")
    for metric in METRICS:
        hits = client.get("/api/search", params={"q": "a photo", "limit": 50, "metric": metric}).json()["results"]
        assert hits and all(isinstance(h["score"], float) for h in hits), (metric, hits)
        # The sample's other 11 images give a baseline: its zero vector must not make every relevance NaN (null).
        assert all(isinstance(h["relevance"], float) for h in hits), (metric, hits)
    checked = _cli("db", "check")
    assert checked.exit_code == 1 and "1 embeddings of zero length" in checked.output, checked.output


@pytest.mark.slow
def test_searching_like_a_zero_vector_says_why_it_cannot(database_url: str, zeroed: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        found = conn.execute("SELECT id FROM images WHERE path = %s", (zeroed,)).fetchone()
    assert found is not None
    result = _cli("search", "--like", str(found[0]))
    assert result.exit_code == 2 and "zero length" in result.output, result.output
