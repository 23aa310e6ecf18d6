"""What an API client is told, in the API's own words: a bad parameter is named as it was sent (min_score, not the
CLI's --min-score), and the schema is behind the token like every route it describes."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient

from imagedb.api import create_app
from imagedb.cli import main
from imagedb.embed import ModelSpec
from imagedb.ingest import ingest
from imagedb.pg.database import open_connection
from imagedb.request import ParamError, SearchRequest, Term
from imagedb.store import Store

LOCAL = "http://localhost"
# (API query, CLI options, the API's words, the CLI's words)
BAD = [
    (
        {"metric": "euclidean", "min_score": "0.5"},
        ["--metric", "euclidean", "--min-score", "0.5"],
        "min_score is a similarity, and metric euclidean scores by distance (lower is better): use max_distance",
        "--min-score is a similarity, and --metric euclidean scores by distance (lower is better): use --max-distance",
    ),
    (
        {"max_distance": "0.5"},
        ["--max-distance", "0.5"],
        "max_distance applies to metric euclidean only, not cosine: use min_score",
        "--max-distance applies to --metric euclidean only, not cosine: use --min-score",
    ),
    (
        {"after": "2024-02-01", "before": "2024-01-01"},
        ["--after", "2024-02-01", "--before", "2024-01-01"],
        "after must be earlier than before",
        "--after must be earlier than --before",
    ),
]


@pytest.fixture
def served(database_url: str, tmp_path: Path, tiny_model: str) -> str:
    from PIL import Image

    Image.new("RGB", (64, 48), (200, 30, 30)).save(tmp_path / "red.png")
    store = Store(open_connection(database_url))
    ingest(store, [tmp_path], model=ModelSpec.parse(tiny_model))
    store.close()
    return database_url


def test_a_bad_parameter_is_named_as_each_surface_received_it(served: str) -> None:
    """API 400s said "--min-score" and "--after", options of a CLI the API client never used."""
    client = TestClient(create_app(served), base_url=LOCAL)
    for query, options, api_words, cli_words in BAD:
        answer = client.get("/api/search", params={"q": "red", **query})
        assert answer.status_code == 400 and answer.json()["detail"] == api_words, answer.text
        assert "--" not in answer.json()["detail"]
        result = CliRunner().invoke(main, ["--database-url", served, "search", "red", *options])
        assert result.exit_code == 2 and cli_words in result.output, result.output


def test_the_library_names_its_keywords() -> None:
    request = SearchRequest((Term("text", "red", 1.0),), limit=0)
    with pytest.raises(ParamError) as raised:
        request.checked()
    assert str(raised.value) == "limit must be between 1 and 1000, not 0"
    assert raised.value.named(lambda name: f"<{name}>") == "<limit> must be between 1 and 1000, not 0"


def test_the_schema_needs_the_token_like_the_routes_it_describes(database_url: str) -> None:
    """/openapi.json was served without the token: every route, parameter and registered filter to anyone."""
    client = TestClient(create_app(database_url, token="s3cret"), base_url=LOCAL)
    assert client.get("/openapi.json").status_code == 401
    assert client.get("/openapi.json", headers={"Authorization": "Bearer wrong"}).status_code == 401
    schema = client.get("/openapi.json", headers={"Authorization": "Bearer s3cret"})
    assert schema.status_code == 200 and "/api/search" in schema.json()["paths"]
    assert client.get("/").status_code == 200  # the page asks for the token itself
    # Without a token (loopback only) the schema is served as before.
    assert TestClient(create_app(database_url), base_url=LOCAL).get("/openapi.json").status_code == 200
