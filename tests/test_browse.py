"""Browsing without a query: a collection newest first by keyset pages to the end, facet counts that change with a
filter, one-line 400s for bad parameters, the DICOM facets only where DICOM images are, and the icon and the API
docs served from the package."""

from __future__ import annotations

import os
import shutil
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import parse_qs, urlsplit, urlunsplit

import pytest
from fastapi.testclient import TestClient
from pydicom.data.data_manager import DATA_ROOT

from imagedb import browse
from imagedb.api import create_app
from imagedb.embed import ModelSpec
from imagedb.errors import InvalidInput
from imagedb.ingest import ingest
from imagedb.request import Filters
from imagedb.roles import grant_writer
from imagedb.store import Store


def _dated(photos: Path) -> dict[str, datetime]:
    """Each photo's mtime set apart (four years, one month each), so that newest first is a known order."""
    dates = {}
    for n, path in enumerate(sorted(photos.iterdir())):
        when = datetime(2015 + n % 4, 1 + n, 1, 12, tzinfo=timezone.utc)
        os.utime(path, (when.timestamp(), when.timestamp()))
        dates[path.name] = when
    return dates


@pytest.fixture
def dated(store: Store, photos: Path, tiny_model: str) -> dict[str, datetime]:
    dates = _dated(photos)
    ingest(store, [photos], model=ModelSpec.parse(tiny_model))
    return dates


@pytest.fixture
def client(database_url: str, dated: dict[str, datetime]) -> TestClient:
    return TestClient(create_app(database_url), base_url="http://localhost")


def _newest_first(dates: dict[str, datetime]) -> list[str]:
    return sorted(dates, key=lambda name: dates[name], reverse=True)


def test_browse_pages_newest_first_to_the_end(client: TestClient, dated: dict[str, datetime]) -> None:
    names, cursor, pages = [], None, 0
    while True:
        params = {"limit": 5, **({"cursor": cursor} if cursor else {})}
        page = client.get("/api/browse", params=params)
        assert page.status_code == 200, page.text
        body = page.json()
        names += [Path(r["path"]).name for r in body["results"]]
        pages += 1
        cursor = body["next"]
        if cursor is None:
            break
        assert len(body["results"]) == 5
    assert pages == 3 and names == _newest_first(dated)  # 5 + 5 + 2, none twice, none left out
    first = client.get("/api/browse").json()
    assert first["next"] is None and len(first["results"]) == 12  # the API's default limit is 24
    hit = first["results"][0]
    assert Path(hit["path"]).name == "rocket.jpg" and hit["format"] == "JPEG" and hit["width"] > 0
    assert hit["thumbnail"] == f"/api/images/{hit['id']}/thumbnail"
    assert client.get(hit["thumbnail"]).headers["content-type"] == "image/jpeg"


def test_a_page_after_an_ingest_neither_repeats_nor_skips(
    store: Store, dated: dict[str, datetime], photos: Path, tiny_model: str
) -> None:
    first = browse.newest(store, "default", Filters(), 4)
    newer = photos / "newer.jpg"
    shutil.copyfile(photos / "coffee.jpg", newer)  # newest of all: it goes before the first page, not into page 2
    ingest(store, [photos], model=ModelSpec.parse(tiny_model))
    rest = browse.newest(store, "default", Filters(), 100, first.next)
    shown = [Path(i.path).name for i in [*first.images, *rest.images]]
    assert shown == _newest_first(dated) and rest.next is None


def test_facets_count_and_change_with_a_filter(client: TestClient, dated: dict[str, datetime]) -> None:
    everything = client.get("/api/facets").json()
    assert everything["total"] == 12
    facets = everything["facets"]
    assert set(facets) == {"format", "camera", "year", "collection"}  # no DICOM image: no DICOM facet
    assert facets["format"] == [{"value": "JPEG", "count": 7}, {"value": "PNG", "count": 5}]
    years = {d.year for d in dated.values()}
    assert [f["value"] for f in facets["year"]] == sorted(years, reverse=True)
    assert facets["collection"] == [{"value": "default", "count": 12}]
    png = client.get("/api/facets", params={"format": "png"}).json()
    assert png["total"] == 5 and png["facets"]["format"] == [{"value": "PNG", "count": 5}]
    assert png["facets"]["collection"] == [{"value": "default", "count": 5}]
    listed = client.get("/api/browse", params={"format": "png"}).json()["results"]
    assert len(listed) == 5 and {r["format"] for r in listed} == {"PNG"}
    # A year as the page filters by it: after its first day, before the next year's.
    year = facets["year"][0]
    one_year = {"after": f"{year['value']}-01-01T00:00:00", "before": f"{year['value'] + 1}-01-01T00:00:00"}
    assert client.get("/api/facets", params=one_year).json()["total"] == year["count"]
    assert len(client.get("/api/browse", params=one_year).json()["results"]) == year["count"]


BAD: list[tuple[dict[str, str], int, str]] = [
    ({"format": "jpgx"}, 400, "unknown format"),
    ({"cursor": "yesterday"}, 400, "cursor"),
    ({"cursor": "2020-01-01T00:00:00.000000_0"}, 400, "cursor"),
    ({"cursor": "2020-01-01T00:00:00+05:00_3"}, 400, "cursor"),
    ({"cursor": "2020-01-01T00:00:00_99999999999999999999"}, 400, "cursor"),
    ({"path": "a\x00b"}, 400, "NUL"),
    ({"after": "2021-01-01T00:00:00", "before": "2020-01-01T00:00:00"}, 400, "earlier"),
    ({"collection": "nope"}, 404, "no collection named 'nope'"),
    ({"collection": "a\x00b"}, 400, "not a collection name"),
    ({"collection": " "}, 400, "not a collection name"),
    ({"attr": "novalue"}, 400, "expected key=value"),
]


def test_bad_parameters_are_one_line(client: TestClient) -> None:
    for params, status, words in BAD:
        for route in ("/api/browse", "/api/facets"):
            if route == "/api/facets" and "cursor" in params:
                continue
            answer = client.get(route, params=params)
            assert answer.status_code == status, (params, answer.text)
            detail = answer.json()["detail"]
            assert isinstance(detail, str) and "\n" not in detail and words in detail, (params, detail)


def test_out_of_bounds_numbers_are_refused_before_any_work(client: TestClient) -> None:
    for limit in (0, 1001, "many"):
        assert client.get("/api/browse", params={"limit": limit}).status_code == 422
    assert client.get("/api/browse", params={"cursor": "x" * 65}).status_code == 422


@pytest.mark.slow
def test_dicom_facets_only_where_dicom_images_are(store: Store, tiny_model: str, tmp_path: Path) -> None:
    tree = Path(DATA_ROOT, "test_files", "dicomdirtests")
    scans = tmp_path / "scans"
    scans.mkdir()
    for source in [*(tree / "77654033/CT2").iterdir(), *(tree / "98892003/MR700").iterdir()]:
        shutil.copyfile(source, scans / f"{source.parent.name}_{source.name}")
    ingest(store, [scans], collection="scans", model=ModelSpec.parse(tiny_model))
    found = browse.facets(store, "scans", Filters())
    assert found.total == 11 and dict(found.counts["modality"]) == {"MR": 7, "CT": 4}
    assert dict(found.counts["body_part"])["HEAD"] == 4 and dict(found.counts["format"]) == {"DICOM": 11}
    ct = browse.facets(store, "scans", Filters(modality="ct"))
    assert ct.total == 4 and dict(ct.counts["modality"]) == {"CT": 4}
    assert len(browse.newest(store, "scans", Filters(modality="ct"), 50).images) == 4


def test_icon_and_offline_api_docs(client: TestClient) -> None:
    icon = client.get("/favicon.ico")
    assert icon.status_code == 200 and icon.headers["content-type"] == "image/x-icon"
    assert icon.content[:4] == b"\x00\x00\x01\x00"  # an ICO file
    docs = client.get("/docs")
    assert docs.status_code == 200 and "default-src 'self'" in docs.headers["content-security-policy"]
    assert "http" not in docs.text.replace("http-equiv", "")  # nothing from another host
    for asset in ("swagger-ui-bundle.js", "swagger-ui.css"):
        assert client.get(f"/docs/assets/{asset}").status_code == 200
    for other in ("index.html", "..%2F__init__.py", "swagger-ui-bundle.js.map"):
        assert client.get(f"/docs/assets/{other}").status_code == 404


def _login(url: str, role: str, password: str) -> str:
    """`url`'s database as `role` with `password`, without the owner's password file (as in test_roles)."""
    parts = urlsplit(url)
    query = "&".join(f"{k}={v[0]}" for k, v in parse_qs(parts.query).items() if k != "passfile")
    return urlunsplit(parts._replace(netloc=f"{role}:{password}@{parts.netloc.split('@')[-1]}", query=query))


def test_an_api_served_as_a_writer_role_browses(store: Store, database_url: str, dated: dict[str, datetime]) -> None:
    role = f"browse_writer_{os.getpid()}"
    grant_writer(store, role, "writer-login-pw")
    client = TestClient(create_app(_login(database_url, role, "writer-login-pw")), base_url="http://localhost")
    # Every filter at once: each one's condition reads its own table (attributes, DICOM codes) as this role.
    every = {"format": "png", "camera": "x", "path": "*", "attr": "k=v", "modality": "CT", "body_part": "HEAD"}
    every |= {"min_width": 1, "min_height": 1, "after": "2001-01-01T00:00:00", "before": "2100-01-01T00:00:00"}
    for route in ("/api/browse", "/api/facets"):
        assert client.get(route).status_code == 200
        answer = client.get(route, params=every)
        assert answer.status_code == 200, answer.text
    assert len(client.get("/api/browse").json()["results"]) == 12
    assert client.get("/api/facets", params=every).json()["total"] == 0


def test_images_of_one_date_page_by_id(store: Store, photos: Path, tiny_model: str) -> None:
    when = datetime(2020, 5, 5, tzinfo=timezone.utc).timestamp()
    for path in photos.iterdir():
        os.utime(path, (when, when))
    ingest(store, [photos], model=ModelSpec.parse(tiny_model))
    ids, cursor = [], None
    while True:
        page = browse.newest(store, "default", Filters(), 5, cursor)
        ids += [i.id for i in page.images]
        if (cursor := page.next) is None:
            break
    assert len(ids) == 12 and ids == sorted(ids, reverse=True)


def test_the_library_checks_limit_and_cursor_as_the_search_declares_them(store: Store) -> None:
    for limit in (0, 1001):
        with pytest.raises(InvalidInput, match="limit must be between 1 and 1000"):
            browse.newest(store, "default", Filters(), limit)
    with pytest.raises(InvalidInput, match="cursor"):
        browse.newest(store, "default", Filters(), 5, "2020-13-01T00:00:00_1")
