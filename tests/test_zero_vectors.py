"""A stored vector of zero length (a writer can store one) has no cosine and no Pearson correlation: it never
breaks a search's output (issue #22, item 10). Such rows are left out where their score is undefined (a NaN score
reached the page as null and the CLI's --json as NaN, which is not JSON), keep their defined euclidean and inner
scores, and `imagedb db check` reports them."""

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
    paths = {r["path"] for r in rows}
    if metric in ("cosine", "pearson"):  # undefined for a vector of no length: left out
        assert zeroed not in paths
    else:  # defined: a distance of 1 from any unit query, an inner product of 0
        assert zeroed in paths


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
