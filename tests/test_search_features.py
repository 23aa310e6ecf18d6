"""Combined queries, filters that keep their results, thresholds, date order, paging, user attributes, SQL."""

from __future__ import annotations

import json
import shutil
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from imagedb import embed
from imagedb.attributes import tag
from imagedb.cli import main
from imagedb.embed import ModelSpec
from imagedb.errors import InvalidInput
from imagedb.ingest import ingest
from imagedb.query import parse
from imagedb.request import SearchRequest
from imagedb.search import search
from imagedb.store import Filters, Store
from imagedb.store import search as store_search

from helpers import fill_synthetic

HOSTILE = ["'; DROP TABLE images; --", 'a"b', "%", "_", "\\", "ünïcødé ✓ 写真", "1 OR 1=1", "$$", "*/ --"]


def _photo(path: Path, size: tuple[int, int], colour: tuple[int, int, int], taken: str | None, camera: str | None):  # type: ignore[no-untyped-def]
    exif = Image.Exif()
    if camera:
        exif[0x010F], exif[0x0110] = camera.split(" ", 1)
    if taken:
        exif.get_ifd(0x8769)[0x9003] = taken
    image = Image.new("RGB", size, colour)
    if path.suffix == ".jpg":
        image.save(path, exif=exif)
    else:
        image.save(path)


@pytest.fixture
def library(store: Store, tmp_path: Path, tiny_model: str) -> Path:
    folder = tmp_path / "library"
    (folder / "holidays").mkdir(parents=True)
    _photo(folder / "holidays" / "beach.jpg", (640, 480), (240, 200, 90), "2023:08:01 10:00:00", "Canon EOS R5")
    _photo(folder / "holidays" / "hill.jpg", (300, 200), (40, 160, 40), "2021:05:20 09:00:00", "Nikon Z6")
    _photo(folder / "city.jpg", (1024, 768), (90, 90, 100), "2024:02:11 18:30:00", "Canon PowerShot")
    _photo(folder / "drawing.png", (200, 200), (255, 0, 0), None, None)
    ingest(store, [folder], model=ModelSpec.parse(tiny_model))
    return folder


def _paths(results) -> set[str]:  # type: ignore[no-untyped-def]
    return {Path(r.path).name for r in results}


def test_combined_query_is_the_normalised_weighted_sum(store: Store, photos: Path, tiny_model: str) -> None:
    spec = ModelSpec.parse(tiny_model)
    ingest(store, [photos], model=spec)
    collection = store.models.get_collection("default")
    ids, matrix = store.search.all_vectors(collection)
    texts = embed.load(spec).encode_texts(["beach", "people"])
    stored = matrix[3] / np.linalg.norm(matrix[3])
    expected = 2 * texts[0] + stored - texts[1]
    expected /= np.linalg.norm(expected)
    q = expected.astype(np.float16).astype(np.float32)
    exact = [ids[i] for i in np.argsort(-(matrix @ q / np.linalg.norm(matrix, axis=1))) if i != 3]  # id: term left out
    got = search(store, SearchRequest(parse(["2:beach", "+", f"id:{ids[3]}", "-", "people"]), limit=len(ids)))
    assert [r.image_id for r in got] == exact


def test_each_filter_selects_exactly_its_images(store: Store, library: Path) -> None:
    def names(**kwargs) -> set[str]:  # type: ignore[no-untyped-def]
        return _paths(search(store, SearchRequest(parse(["anything"]), limit=100, filters=Filters(**kwargs))))

    assert names() == {"beach.jpg", "hill.jpg", "city.jpg", "drawing.png"}
    assert names(after=datetime(2023, 1, 1), before=datetime(2024, 1, 1)) == {"beach.jpg"}
    assert names(before=datetime(2023, 1, 1)) == {"hill.jpg"}
    assert "drawing.png" in names(after=datetime(2025, 1, 1))  # no EXIF date: the file's time counts
    assert names(camera="canon") == {"beach.jpg", "city.jpg"}
    assert names(camera="Z6") == {"hill.jpg"}
    assert names(format="PNG") == {"drawing.png"}
    assert names(min_width=600) == {"beach.jpg", "city.jpg"}
    assert names(min_width=600, min_height=700) == {"city.jpg"}
    assert names(path="*/holidays/*") == {"beach.jpg", "hill.jpg"}
    assert names(path="*/h?ll.jpg") == {"hill.jpg"}
    assert _paths(search(store, SearchRequest(parse(["x"]), limit=100, filters=Filters(format="jpg")))) == {
        "beach.jpg",
        "hill.jpg",
        "city.jpg",
    }


def test_min_score_sort_by_date_and_paging(store: Store, library: Path) -> None:
    beach = str(library / "holidays" / "beach.jpg")
    everything = search(store, SearchRequest(parse([beach]), limit=4))
    assert everything[0].path == beach
    threshold = (everything[1].score + everything[2].score) / 2
    assert [r.path for r in search(store, SearchRequest(parse([beach]), limit=4, min_score=threshold))] == [
        r.path for r in everything[:2]
    ]
    by_date = search(store, SearchRequest(parse([beach]), limit=4, sort="date"))
    assert [r.date for r in by_date] == sorted((r.date for r in by_date), reverse=True)
    page_two = search(store, SearchRequest(parse([beach]), limit=2, offset=2))
    assert [r.path for r in page_two] == [r.path for r in everything[2:]]
    assert [r.rank for r in page_two] == [3, 4]


@pytest.mark.slow
def test_selective_filter_keeps_its_results_through_iterative_index_scans(store: Store) -> None:
    collection = fill_synthetic(store, 6000)
    ids, matrix = store.search.all_vectors(collection)
    rare = ids[::100]  # 1% of the rows
    store.images.merge_attributes(rare, {"group": "rare"})
    filters = Filters(attributes=(("group", "rare"),))
    rare_set = set(rare)
    rare_rows = np.array([i in rare_set for i in ids])
    queries = np.random.default_rng(3).standard_normal((20, 32)).astype(np.float32)

    def recall() -> float:
        found = 0
        for query in queries:
            exact = {ids[i] for i in np.argsort(-np.where(rare_rows, matrix @ query, -np.inf))[:10]}
            hits = store.search.nearest(collection, query, 10, filters=filters)
            assert len(hits) == 10
            found += len(exact & {h.image_id for h in hits})
        return found / (10 * len(queries))

    # On 6,000 rows the planner may well scan exactly; on millions it reads the HNSW index. Take both paths.
    assert recall() >= 0.95
    store.conn.execute("SET enable_sort = off")  # as on a large table: the ordered index scan wins
    store.conn.commit()
    assert "Index Scan using embeddings_hnsw_" in store.search.explain_nearest(collection, queries[0], 10, filters)
    # Without iterative scans the index hands over ef_search candidates and the filter keeps about 1% of them.
    statement, params = store_search._nearest_query(collection, queries[0], 10, 0, filters)
    with store.conn.transaction():
        store.conn.execute("SET LOCAL hnsw.iterative_scan = off")
        assert len(store.conn.execute(statement, params).fetchall()) < 10
    assert recall() >= 0.95


def test_metadata_files_attach_attributes_and_report_unmatched_rows(
    store: Store, photos: Path, tiny_model: str, tmp_path: Path
) -> None:
    csv_file = tmp_path / "products.csv"
    csv_file.write_text(
        "filename,sku,category,price\n"
        "coffee.jpg,SKU-1,drinks,4.50\n"
        "rocket.jpg,SKU-2,toys,99\n"
        "nothing-like-this.jpg,SKU-404,ghosts,0\n"
    )
    summary = ingest(store, [photos], model=ModelSpec.parse(tiny_model), metadata=csv_file)
    assert (summary.metadata_matched, summary.metadata_unmatched) == (2, ["nothing-like-this.jpg"])
    toys = search(store, SearchRequest(parse(["x"]), limit=50, filters=Filters(attributes=(("category", "toys"),))))
    assert _paths(toys) == {"rocket.jpg"}

    relative = Path("..") / photos.name / "camera.jpg"  # a path relative to the metadata file's folder
    (tmp_path / "sub").mkdir()
    jsonl = tmp_path / "sub" / "labels.jsonl"
    jsonl.write_text(json.dumps({"path": str(relative), "label": "portrait", "stars": 5}) + "\n\n")
    summary = ingest(store, [photos], metadata=jsonl)
    assert (summary.skipped, summary.metadata_matched) == (12, 1)
    row = store.conn.execute("SELECT attributes FROM images WHERE path LIKE '%/camera.jpg'").fetchone()[0]
    assert row == {"label": "portrait", "stars": 5}

    # A changed file is re-embedded, and keeps the attributes a user gave it.
    Image.new("RGB", (64, 64), (1, 1, 1)).save(photos / "coffee.jpg")
    ingest(store, [photos])
    row = store.conn.execute("SELECT attributes FROM images WHERE path LIKE '%/coffee.jpg'").fetchone()[0]
    assert row["sku"] == "SKU-1"


@pytest.mark.parametrize(
    "content, suffix, message",
    [
        ("sku\nA\n", ".csv", "needs a 'path' or 'filename' column"),
        ('{"filename": "a.jpg"}\n{broken\n', ".jsonl", "line 2: not valid JSON"),
        ("[1, 2]\n", ".jsonl", "line 1: each line must be a JSON object"),
        ("filename,x\n,1\n", ".csv", "line 2: no 'path' or 'filename' value"),
        ("a", ".xlsx", "must be .csv or .jsonl"),
    ],
)
def test_bad_metadata_files_stop_before_anything_is_stored(
    store: Store, photos: Path, tiny_model: str, tmp_path: Path, content: str, suffix: str, message: str
) -> None:
    bad = tmp_path / f"bad{suffix}"
    bad.write_text(content)
    with pytest.raises(InvalidInput, match=message):
        ingest(store, [photos], model=ModelSpec.parse(tiny_model), metadata=bad)
    assert store.conn.execute("SELECT count(*) FROM images").fetchone()[0] == 0


def test_tag_by_id_path_and_file_name(store: Store, library: Path) -> None:
    beach = library / "holidays" / "beach.jpg"
    image_id = store.images.image_ids(store.models.get_collection("default").id, str(beach))[0]
    assert tag(store, "default", str(image_id), {"rating": "5"}) == [image_id]
    assert tag(store, "default", str(beach), {"album": "summer"}) == [image_id]
    assert tag(store, "default", "beach.jpg", {"rating": "4"}) == [image_id]
    row = store.conn.execute("SELECT attributes FROM images WHERE id = %s", (image_id,)).fetchone()[0]
    assert row == {"rating": "4", "album": "summer"}


def test_hostile_strings_are_data(store: Store, library: Path) -> None:
    tag(store, "default", "beach.jpg", {h: h for h in HOSTILE})
    for hostile in HOSTILE:
        found = search(store, SearchRequest(parse(["x"]), limit=10, filters=Filters(attributes=((hostile, hostile),))))
        assert _paths(found) == {"beach.jpg"}
        for filters in (Filters(camera=hostile), Filters(path=hostile)):
            assert search(store, SearchRequest(parse(["x"]), limit=10, filters=filters)) == []
        with pytest.raises(InvalidInput):  # not a format: refused before any SQL
            search(store, SearchRequest(parse(["x"]), limit=10, filters=Filters(format=hostile)))
    assert store.conn.execute("SELECT count(*) FROM images").fetchone()[0] == 4
    with pytest.raises(InvalidInput, match="has the attribute"):
        search(store, SearchRequest(parse(["x"]), filters=Filters(attributes=(("no such key", "x"),))))


def test_sql_functions_and_collection_stats(store: Store, library: Path) -> None:
    beach_id = store.images.image_ids(store.models.get_collection("default").id, "beach.jpg")[0]
    expected = [
        r.image_id for r in search(store, SearchRequest(parse([f"id:{beach_id}"]), limit=3))
    ]  # both leave it out
    rows = store.conn.execute("SELECT image_id, score FROM imagedb_similar(%s, 3)", (beach_id,)).fetchall()
    assert [r[0] for r in rows] == expected
    nearest = store.conn.execute(
        "SELECT image_id FROM imagedb_nearest((SELECT embedding FROM embeddings WHERE image_id = %s), 'default', 2)",
        (beach_id,),
    ).fetchall()
    assert nearest[0][0] == beach_id
    stats = store.conn.execute(
        "SELECT collection, images, formats, format_counts, cameras, camera_names, first_date::date"
        " FROM collection_stats"
    ).fetchone()
    assert stats[:6] == ("default", 4, 2, "JPEG: 3, PNG: 1", 3, "Canon EOS R5, Canon PowerShot, Nikon Z6")
    assert str(stats[6]) == "2021-05-20"


@pytest.fixture
def cli(database_url: str, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    monkeypatch.setenv("IMAGEDB_DATABASE_URL", database_url)
    return lambda *args: CliRunner().invoke(main, [str(a) for a in args])


def test_cli_search_output_modes_and_filters(cli, library: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    beach = library / "holidays" / "beach.jpg"
    result = cli("search", "sunny", "+", beach, "--paths", "--camera", "canon", "--after", "2023-01-01")
    assert result.exit_code == 0, result.output
    assert set(result.output.split()) == {str(beach), str(library / "city.jpg")}
    result = cli("search", "--image", beach, "--json", "-k", "1", "--min-score", "0.99")
    assert json.loads(result.output)["path"] == str(beach)
    assert cli("tag", "beach.jpg", "sku=B-1").exit_code == 0
    result = cli("search", "x", "--attr", "sku=B-1", "--paths")
    assert result.output.strip() == str(beach)
    shutil.copy(beach, tmp_path / "query.jpg")
    result = cli("search", "2:sea", "-", tmp_path / "query.jpg", "--sort", "date", "--json")
    assert result.exit_code == 0 and len(result.output.splitlines()) == 4


@pytest.mark.parametrize(
    "args, message",
    [
        (("search", "a", "+"), "cannot end with an operator"),
        (("search", "+", "b"), "cannot start with '+'"),
        (("search", "x", "--after", "last tuesday"), "Invalid value for '--after'"),
        (("search", "x", "--attr", "colour=red"), "has the attribute 'colour'"),
        (("search", "x", "--attr", "novalue"), "expected key=value"),
        (("search", "x", "--sort", "size"), "Invalid value for '--sort'"),
        (("search", "x", "--min-score", "3"), "Invalid value for '--min-score'"),
        (("search", "x", "--frobnicate"), "No such option"),
        (("tag", "beach.jpg", "nokey"), "expected key=value"),
    ],
)
def test_cli_malformed_input_exits_2_and_runs_nothing(cli, library: Path, args, message: str) -> None:  # type: ignore[no-untyped-def]
    result = cli(*args)
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output


def test_a_date_a_writer_set_to_infinity_does_not_break_searches(store: Store, photos: Path, tiny_model: str) -> None:
    """`UPDATE images SET taken_at = 'infinity'` (a writer may) made every search reaching
    that row fail with "timestamp too large"."""
    ingest(store, [photos], model=ModelSpec.parse(tiny_model))
    store.conn.execute("UPDATE images SET taken_at = 'infinity' WHERE path LIKE '%/rocket.jpg'")
    store.conn.execute("UPDATE images SET taken_at = '-infinity' WHERE path LIKE '%/coffee.jpg'")
    found = search(store, SearchRequest(parse(["x"]), limit=12, sort="date"))
    assert len(found) == 12 and Path(found[0].path).name == "rocket.jpg" and Path(found[-1].path).name == "coffee.jpg"
    after = search(store, SearchRequest(parse(["x"]), limit=12, filters=Filters(after=datetime(2000, 1, 1))))
    assert "coffee.jpg" not in {Path(r.path).name for r in after}


def test_a_multi_picture_jpeg_is_a_jpeg(store: Store, photos: Path, tmp_path: Path, tiny_model: str) -> None:
    """A JPEG with a second picture appended (MPO, as phones write a depth map or a second
    exposure) was stored as format 'MPO', so --format jpeg never found it and --format mpo was refused. It is
    stored as JPEG now, and a JPEG filter finds the rows stored as MPO before."""
    folder = tmp_path / "mpo"
    folder.mkdir()
    first = Image.open(photos / "chelsea.jpg").convert("RGB")
    first.save(folder / "phone.jpg", format="MPO", save_all=True, append_images=[first.rotate(90)])
    assert Image.open(folder / "phone.jpg").format == "MPO"
    ingest(store, [folder, photos / "rocket.jpg"], model=ModelSpec.parse(tiny_model))
    stored = store.conn.execute("SELECT format FROM images WHERE path LIKE %s", ("%phone.jpg",)).fetchone()[0]
    assert stored == "JPEG"
    found = [Path(r.path).name for r in search(store, SearchRequest(parse(["x"]), filters=Filters(format="jpeg")))]
    assert sorted(found) == ["phone.jpg", "rocket.jpg"]
    store.conn.execute("UPDATE images SET format = 'MPO' WHERE path LIKE %s", ("%phone.jpg",))  # as stored before
    found = [Path(r.path).name for r in search(store, SearchRequest(parse(["x"]), filters=Filters(format="JPG")))]
    assert sorted(found) == ["phone.jpg", "rocket.jpg"]


def test_an_unknown_format_filter_is_refused(store: Store, photos: Path, tiny_model: str) -> None:
    """The CLI refused an unknown --format, the library (and so the API) answered no results for it."""
    ingest(store, [photos / "rocket.jpg"], model=ModelSpec.parse(tiny_model))
    with pytest.raises(InvalidInput, match="unknown format 'jepg'"):
        search(store, SearchRequest(parse(["x"]), filters=Filters(format="jepg")))


def test_imagedb_nearest_refuses_a_null_or_zero_query_vector(store: Store, library: Path) -> None:
    """docs/sql.md's recipe, a text's cached vector as the query, gives NULL for a text never embedded: that must be
    one readable error, not k arbitrary images with a NULL score (nor NaN scores for a zero vector). Found from
    outside, as a BI user."""
    import psycopg

    never_asked = "SELECT embedding FROM text_embeddings WHERE text = 'never asked'"
    with pytest.raises(psycopg.errors.RaiseException, match="imagedb_nearest: the query vector is NULL") as raised:
        store.conn.execute(f"SELECT * FROM imagedb_nearest(({never_asked}), 'default', 3)").fetchall()
    assert "text_embeddings" in (raised.value.diag.message_hint or "")
    dim = store.conn.execute("SELECT dim FROM embedding_models LIMIT 1").fetchone()[0]
    zero = "[" + ",".join(["0"] * dim) + "]"
    with pytest.raises(psycopg.errors.RaiseException, match="imagedb_nearest: the query vector has length 0"):
        store.conn.execute("SELECT * FROM imagedb_nearest(%s::halfvec, 'default', 3)", (zero,)).fetchall()
    beach_id = store.images.image_ids(store.models.get_collection("default").id, "beach.jpg")[0]
    rows = store.conn.execute("SELECT image_id, score FROM imagedb_similar(%s, 3)", (beach_id,)).fetchall()
    assert len(rows) == 3 and all(score is not None for _, score in rows)  # the checks leave real queries alone
