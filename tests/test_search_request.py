"""One declaration of a search (imagedb/request.py): every filter is reachable from the CLI, the API and SQL, and
means the same in each; a filter added in one entry works everywhere; the limits are the declaration's."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient
from PIL import Image
from psycopg import sql

from imagedb import request
from imagedb.api import create_app
from imagedb.attributes import tag
from imagedb.cli import main
from imagedb.cli.search import search as search_command
from imagedb.embed import ModelSpec
from imagedb.errors import InvalidInput
from imagedb.ingest import ingest
from imagedb.query import parse
from imagedb.request import MAX_EF_SEARCH, MAX_LIMIT, MAX_OFFSET, MAX_SIDE, Api, Filters, Param, SearchRequest
from imagedb.search import search
from imagedb.store import Store

# For each filter the CLI or the API takes: the text both are given, the library's value, and the images it keeps
# of the collection below (all four: beach.jpg, hill.jpg, city.jpg, drawing.png). A filter added to the
# declaration without a line here fails test_every_filter_means_the_same_from_the_cli_the_api_and_sql.
SAMPLES: dict[str, tuple[str, Any, set[str]]] = {
    "after": ("2023-01-01T00:00:00", datetime(2023, 1, 1), {"beach.jpg", "city.jpg", "drawing.png"}),  # drawing: now
    "before": ("2024-01-01T00:00:00", datetime(2024, 1, 1), {"beach.jpg", "hill.jpg"}),
    "camera": ("canon", "canon", {"beach.jpg", "city.jpg"}),
    "format": ("jpg", "jpg", {"beach.jpg", "hill.jpg", "city.jpg"}),
    "min_width": ("500", 500, {"beach.jpg", "city.jpg"}),
    "min_height": ("300", 300, {"beach.jpg", "city.jpg"}),
    "path": ("*/holidays/*", "*/holidays/*", {"beach.jpg", "hill.jpg"}),
    "attributes": ("group=a", (("group", "a"),), {"beach.jpg", "hill.jpg"}),
    "modality": ("ct", "ct", {"beach.jpg"}),
    "body_part": ("chest", "chest", {"city.jpg"}),
    # the words of file names and folders (docs/keywords.md)
    "keywords": ("holidays", ("holidays",), {"beach.jpg", "hill.jpg"}),
    "not_keywords": ("holidays", ("holidays",), {"city.jpg", "drawing.png"}),
}
EVERYTHING = {"beach.jpg", "hill.jpg", "city.jpg", "drawing.png"}


def _photo(path: Path, size: tuple[int, int], taken: str | None, camera: str | None) -> None:
    exif = Image.Exif()
    if camera:
        exif[0x010F], exif[0x0110] = camera.split(" ", 1)
    if taken:
        exif.get_ifd(0x8769)[0x9003] = taken
    Image.new("RGB", size, (len(path.name) * 20 % 255, 90, 40)).save(path, exif=exif)


@pytest.fixture
def library(store: Store, tmp_path: Path, tiny_model: str) -> dict[str, int]:
    """Four images that each filter splits differently; their ids by file name."""
    folder = tmp_path / "library"
    (folder / "holidays").mkdir(parents=True)
    _photo(folder / "holidays" / "beach.jpg", (640, 480), "2023:08:01 10:00:00", "Canon EOS R5")
    _photo(folder / "holidays" / "hill.jpg", (300, 200), "2021:05:20 09:00:00", "Nikon Z6")
    _photo(folder / "city.jpg", (1024, 768), "2024:02:11 18:30:00", "Canon PowerShot")
    _photo(folder / "drawing.png", (200, 200), None, None)
    ingest(store, [folder], model=ModelSpec.parse(tiny_model))
    tag(store, "default", "beach.jpg", {"group": "a"})
    tag(store, "default", "hill.jpg", {"group": "a"})
    tag(store, "default", "city.jpg", {"group": "b"})
    rows = store.conn.execute("SELECT id, path FROM images").fetchall()
    ids = {Path(path).name: int(i) for i, path in rows}
    # DICOM headers as ingest stores them (upper-case codes), on two of the photos: no DICOM file is needed.
    store.conn.execute(
        "INSERT INTO dicom_images (image_id, modality, body_part) VALUES (%s, 'CT', 'HEAD'), (%s, 'MR', 'CHEST')",
        (ids["beach.jpg"], ids["city.jpg"]),
    )
    return ids


@pytest.fixture
def client(database_url: str, library: dict[str, int]) -> Iterator[TestClient]:
    with TestClient(create_app(database_url), base_url="http://localhost") as c:
        yield c


def _names(ids: dict[str, int], found: list[int]) -> set[str]:
    by_id = {i: name for name, i in ids.items()}
    return {by_id[i] for i in found}


def _cli_ids(database_url: str, *args: str) -> list[int]:
    result = CliRunner().invoke(main, ["--database-url", database_url, "search", "x", "-k", "100", "--json", *args])
    assert result.exit_code == 0, result.output
    return [json.loads(line)["id"] for line in result.output.splitlines()]


def _api_ids(client: TestClient, **params: str) -> list[int]:
    answer = client.get("/api/search", params={"q": "x", "limit": "100", **params})
    assert answer.status_code == 200, answer.text
    return [hit["id"] for hit in answer.json()["results"]]


def _library_ids(store: Store, filters: Filters) -> list[int]:
    return [r.image_id for r in search(store, SearchRequest(parse(["x"]), limit=100, filters=filters))]


def _sql_ids(store: Store, filters: Filters) -> set[int]:
    clauses, params = filters.clauses()
    statement = sql.SQL("SELECT i.id FROM images i WHERE {}").format(sql.SQL(" AND ").join(clauses))
    return {int(r[0]) for r in store.conn.execute(statement, params).fetchall()}


def _cli_option(name: str) -> click.Option:
    with click.Context(search_command) as ctx:
        found = [p for p in search_command.get_params(ctx) if p.name == name]
    assert len(found) == 1, f"{name}: no single CLI option"
    assert isinstance(found[0], click.Option)
    return found[0]


def _cli_parsed(param: Param, text: str) -> Any:
    """The value `imagedb search x FLAG TEXT` gives the library for this Param."""
    with search_command.make_context("search", ["x", param.flags[0], text]) as ctx:
        return request.from_values((), {param.name: ctx.params[param.name]})


def test_every_filter_means_the_same_from_the_cli_the_api_and_sql(
    store: Store, database_url: str, library: dict[str, int], client: TestClient
) -> None:
    query_parameters = {
        p["name"] for p in client.get("/openapi.json").json()["paths"]["/api/search"]["get"]["parameters"]
    }
    typed = [p for p in request.FILTERS.values() if p.flags or p.api is not None]
    assert {p.name for p in typed} == SAMPLES.keys(), "a filter the CLI or the API takes has no sample here"
    for param in typed:
        text, value, expected = SAMPLES[param.name]
        assert param.clause is not None, param.name
        # Reachable from each: a CLI option that parses the text to the library's value, a query parameter, SQL.
        assert _cli_option(param.name).opts == list(param.flags)
        assert _cli_parsed(param, text).filters.checked() == Filters(**{param.name: value}).checked(), param.name
        assert param.query_name in query_parameters, param.name
        filters = Filters(**{param.name: value}).checked()
        # The same images from each, and the ones this filter is meant to keep (a strict part of the collection).
        by_sql = _names(library, sorted(_sql_ids(store, filters)))
        by_library = _library_ids(store, filters)
        assert by_sql == expected != EVERYTHING, param.name
        assert _names(library, by_library) == expected, param.name
        assert _cli_ids(database_url, param.flags[0], text) == by_library, param.name
        assert _api_ids(client, **{param.query_name: text}) == by_library, param.name
    # The one filter nobody types: the stored images a query is made of, left out of its results.
    exclude = request.FILTERS["exclude"]
    assert not exclude.flags and exclude.api is None and "exclude" not in query_parameters
    assert _names(library, sorted(_sql_ids(store, Filters(exclude=(library["beach.jpg"],))))) == EVERYTHING - {
        "beach.jpg"
    }


def _max_width(name: str, value: int) -> request.Clause:
    return sql.SQL("i.width <= {}").format(sql.Placeholder(f"filter_{name}")), {f"filter_{name}": value}


MAX_WIDTH = Param(
    "max_width",
    int,
    "At most this many pixels wide.",
    ("--max-width",),
    minimum=1,
    clause=_max_width,
    api=Api(maximum=MAX_SIDE, description="pixels"),
)


def test_a_filter_declared_once_works_from_the_cli_the_api_and_sql(
    store: Store, database_url: str, library: dict[str, int]
) -> None:
    saved = dict(request.FILTERS)  # the one dict every part reads: restored in place after
    request.register(MAX_WIDTH)
    try:
        narrow = Filters(max_width=500)
        assert _names(library, sorted(_sql_ids(store, narrow))) == {"hill.jpg", "drawing.png"}
        by_library = _library_ids(store, narrow)
        assert _names(library, by_library) == {"hill.jpg", "drawing.png"}

        help_text = CliRunner().invoke(main, ["search", "--help"]).output
        assert "--max-width INTEGER RANGE" in help_text and "At most this many pixels wide." in help_text
        assert _cli_ids(database_url, "--max-width", "500") == by_library
        refused = CliRunner().invoke(main, ["--database-url", database_url, "search", "x", "--max-width", "0"])
        assert refused.exit_code == 2 and "Invalid value for '--max-width'" in refused.output

        with TestClient(create_app(database_url), base_url="http://localhost") as client:
            assert _api_ids(client, max_width="500") == by_library
            assert client.get("/api/search", params={"q": "x", "max_width": "0"}).status_code == 422
            listed = client.get("/openapi.json").json()["paths"]["/api/images/{image_id}/similar"]["get"]["parameters"]
            (declared,) = [p for p in listed if p["name"] == "max_width"]
            assert declared["schema"]["anyOf"][0] == {"type": "integer", "minimum": 1, "maximum": MAX_SIDE}
        with pytest.raises(ValueError, match="exists already"):
            request.register(MAX_WIDTH)
    finally:
        request.FILTERS.clear()
        request.FILTERS.update(saved)
    # Gone with the test: nothing else was edited.
    with pytest.raises(TypeError, match="no filter named 'max_width'"):
        Filters(max_width=500)
    assert "--max-width" not in CliRunner().invoke(main, ["search", "--help"]).output


def test_the_limits_are_declared_once(store: Store, library: dict[str, int], client: TestClient) -> None:
    ranges = {name: _cli_option(name).type for name in ("limit", "offset", "ef_search")}
    cli_bounds = {name: (t.min, t.max) for name, t in ranges.items() if isinstance(t, click.IntRange)}
    assert cli_bounds == {"limit": (1, MAX_LIMIT), "offset": (0, MAX_OFFSET), "ef_search": (1, MAX_EF_SEARCH)}
    listed = {
        p["name"]: p["schema"] for p in client.get("/openapi.json").json()["paths"]["/api/search"]["get"]["parameters"]
    }
    assert (listed["limit"]["minimum"], listed["limit"]["maximum"]) == (1, MAX_LIMIT)
    assert (listed["offset"]["minimum"], listed["offset"]["maximum"]) == (0, MAX_OFFSET)
    assert client.get("/api/search", params={"q": "x", "limit": str(MAX_LIMIT + 1)}).status_code == 422
    for wrong in ({"limit": MAX_LIMIT + 1}, {"offset": MAX_OFFSET + 1}, {"ef_search": MAX_EF_SEARCH + 1}):
        with pytest.raises(InvalidInput, match=next(iter(wrong))):
            search(store, SearchRequest(parse(["x"]), **wrong))
