"""Relevance per result, recall that checks itself (tune, db check --recall, db info), duplicates collapsed in
search, the watch list checking stored images, dupes output, and the same answer from every door."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import psycopg
import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient
from PIL import Image

from imagedb import relevance, tuning
from imagedb.api import create_app
from imagedb.cli import main
from imagedb.dupes import find_duplicates
from imagedb.embed import ModelSpec
from imagedb.errors import InvalidInput
from imagedb.ingest import ingest
from imagedb.query import parse
from imagedb.request import SearchRequest
from imagedb.search import plan, search
from imagedb.store import Store

from helpers import fill_synthetic


@pytest.fixture
def cli(database_url: str, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    monkeypatch.setenv("IMAGEDB_DATABASE_URL", database_url)
    monkeypatch.delenv("IMAGEDB_MODEL", raising=False)
    return lambda *args: CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture
def library(store: Store, photos: Path, tmp_path: Path, tiny_model: str) -> Path:
    """The photos, plus two copies of the rocket and one of the coffee (resized, recompressed)."""
    for name, size in (("rocket-small.jpg", 0.5), ("rocket-tiny.jpg", 0.3)):
        image = Image.open(photos / "rocket.jpg")
        image.resize((int(image.width * size), int(image.height * size))).save(photos / name, quality=70)
    Image.open(photos / "coffee.jpg").save(photos / "coffee-again.jpg", quality=60)
    ingest(store, [photos], model=ModelSpec.parse(tiny_model))
    return photos


# -- relevance ---------------------------------------------------------------------------------------------------


def test_relevance_is_the_score_in_deviations_above_the_collections_sample(store: Store, library: Path) -> None:
    collection = store.models.get_collection("default")
    assert store.tuning.tuning(collection)["sampled_count"] == 15  # ingest drew the sample: the whole small collection
    results = search(store, SearchRequest(parse([f"{library / 'rocket.jpg'}"]), limit=15))
    ids, matrix = store.search.all_vectors(collection)
    query = matrix[ids.index(results[0].image_id)]
    scores = matrix @ query / np.linalg.norm(matrix, axis=1) / np.linalg.norm(query)
    for r in results:
        assert r.relevance == pytest.approx((r.score - scores.mean()) / scores.std(), abs=0.02)
    # One query's relevance is another query's too: a cutoff in deviations keeps the same share of each.
    relevances = [r.relevance for r in results]
    assert relevances == sorted(relevances, reverse=True) and relevances[0] > 1


def test_min_relevance_keeps_only_results_above_it(store: Store, library: Path) -> None:
    query = parse([f"{library / 'rocket.jpg'}"])
    every = search(store, SearchRequest(query, limit=15))
    cut = every[2].relevance
    kept = search(store, SearchRequest(query, limit=15, min_relevance=cut))
    assert [r.image_id for r in kept] == [r.image_id for r in every if r.relevance >= cut]
    assert len(kept) == 3
    with pytest.raises(InvalidInput, match="standard deviations"):
        search(store, SearchRequest(query, min_relevance=float("nan")))


@pytest.mark.slow
def test_sample_is_redrawn_as_the_collection_grows(store: Store) -> None:
    assert relevance.needs_sample(None, 5) and not relevance.needs_sample(None, 0)
    assert relevance.needs_sample(10, 11)  # a small sample is the whole collection: redrawn on every addition
    assert not relevance.needs_sample(1000, 1400) and relevance.needs_sample(1000, 1500)
    collection = fill_synthetic(store, 1200)  # rows written directly: no sample yet
    assert store.tuning.tuning(collection) is None
    search(store, SearchRequest(parse(["id:1"]), collection="synthetic"))  # the first search draws it
    assert store.tuning.tuning(collection)["sampled_count"] == 1200
    assert store.conn.execute("SELECT count(*) FROM relevance_samples").fetchone()[0] == relevance.SAMPLE_SIZE
    assert not relevance.refresh_sample(store, collection)


def test_a_search_without_write_access_goes_on_without_a_sample(store: Store, database_url: str) -> None:
    fill_synthetic(store, 50)
    store.conn.execute(f'ALTER DATABASE "{store.conn.info.dbname}" SET default_transaction_read_only = on')
    reader = Store(psycopg.connect(database_url, autocommit=True))
    from pgvector.psycopg import register_vector

    register_vector(reader.conn)
    try:
        results = search(reader, SearchRequest(parse(["id:1"]), collection="synthetic", limit=3))
        assert len(results) == 3 and all(r.relevance is None for r in results)
        assert search(reader, SearchRequest(parse(["id:1"]), collection="synthetic", min_relevance=0)) == []
    finally:
        reader.close()


def test_cli_and_api_show_relevance_and_filter_by_it(cli, library: Path, database_url: str) -> None:  # type: ignore[no-untyped-def]
    result = cli("search", "--image", library / "rocket.jpg", "--json", "-k", "15")
    rows = [json.loads(line) for line in result.output.splitlines()]
    assert all(isinstance(r["relevance"], float) for r in rows)
    # Between the second and the third: the printed values are rounded, so a cut equal to one is a coin toss.
    cut = (rows[1]["relevance"] + rows[2]["relevance"]) / 2
    result = cli("search", "--image", library / "rocket.jpg", "--json", "-k", "15", "--min-relevance", cut)
    assert [json.loads(line)["id"] for line in result.output.splitlines()] == [r["id"] for r in rows[:2]]
    table = cli("search", "--image", library / "rocket.jpg", "-k", "2").output.splitlines()
    assert table[0].split()[:3] == ["rank", "score", "relev"] and re.search(r"\d\.\d{3}\s+\d+\.\d\s", table[1])
    assert cli("search", "x", "--min-relevance", "abc").exit_code == 2

    client = TestClient(create_app(database_url), base_url="http://localhost")
    found = client.get("/api/search", params={"q": "a rocket", "limit": 15}).json()["results"]
    assert all(isinstance(r["relevance"], float) for r in found)
    cut = (found[3]["relevance"] + found[4]["relevance"]) / 2
    kept = client.get("/api/search", params={"q": "a rocket", "limit": 15, "min_relevance": cut}).json()["results"]
    assert [r["id"] for r in kept] == [r["id"] for r in found[:4]]
    assert client.get("/api/search", params={"q": "x", "min_relevance": "nan"}).status_code in (400, 422)


# -- recall ------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_tune_stores_an_ef_search_that_search_and_sql_use(store: Store) -> None:
    collection = fill_synthetic(store, 3000)
    assert plan(store, SearchRequest(parse(["id:1"]), collection="synthetic")).ef_search == 100  # untuned: the default
    tuned = tuning.tune(store, "synthetic", target=0.9, queries=30)
    assert tuned.met and tuned.points[-1].recall >= 0.9 and tuned.ef_search == tuned.points[-1].ef_search
    assert all(p.recall < 0.9 for p in tuned.points[:-1])  # the smallest that meets it
    assert plan(store, SearchRequest(parse(["id:1"]), collection="synthetic")).ef_search == tuned.ef_search
    assert (
        plan(store, SearchRequest(parse(["id:1"]), collection="synthetic", ef_search=7)).ef_search == 7
    )  # an explicit one wins
    with store.conn.transaction():
        store.conn.execute("SELECT * FROM imagedb_nearest((SELECT embedding FROM embeddings LIMIT 1), 'synthetic')")
        used = store.conn.execute("SELECT current_setting('hnsw.ef_search')").fetchone()[0]
    assert int(used) == tuned.ef_search
    with store.conn.transaction():
        store.conn.execute(
            "SELECT * FROM imagedb_nearest((SELECT embedding FROM embeddings LIMIT 1), 'synthetic', 5, 321)"
        )
        assert store.conn.execute("SELECT current_setting('hnsw.ef_search')").fetchone()[0] == "321"
    last = tuning.last_recall(store, collection)
    assert last is not None and last.size == 3000 and not last.stale


def test_tune_refuses_bad_targets_and_empty_collections(store: Store) -> None:
    fill_synthetic(store, 1)
    with pytest.raises(InvalidInput, match="target recall"):
        tuning.tune(store, "synthetic", target=1.5)
    with pytest.raises(InvalidInput, match="recall needs at least 2"):
        tuning.tune(store, "synthetic")


@pytest.mark.slow
def test_db_check_recall_tune_and_db_info_on_the_server(cli, store: Store) -> None:  # type: ignore[no-untyped-def]
    fill_synthetic(store, 2000)
    store.conn.execute("UPDATE images SET dhash = repeat('0', 64)::bit(64)")  # db check wants every hash
    info = cli("db", "info").output
    assert "recall not measured (tuning matters from about 100,000 images)" in info  # 2000 images: no advice
    checked = cli("db", "check", "--recall", "-c", "synthetic", "--queries", "20")
    assert checked.exit_code == 0, checked.output
    lines = checked.output.splitlines()
    assert "recall of synthetic (2000 images), image queries (20 made from stored images):" in lines
    assert re.search(r"^\s+100\s+\d\.\d{3}\s+\d+\.\d{2}  <- searches use this$", checked.output, re.M)
    assert "recall@10" in cli("db", "info").output and "at ef_search 100" in cli("db", "info").output

    tuned = cli("tune", "-c", "synthetic", "--target-recall", "0.9", "--queries", "20")
    assert tuned.exit_code == 0, tuned.output
    ef = int(re.search(r"synthetic: image queries: ef_search (\d+) \(recall@10 (\S+) >= 0.9", tuned.output).group(1))
    assert f"ef_search {ef}; recall@10" in cli("db", "info").output
    assert cli("tune", "-c", "synthetic", "--target-recall", "0").exit_code == 2
    assert cli("tune", "-c", "nope").exit_code != 0 and "no collection named 'nope'" in cli("tune", "-c", "nope").output

    # The collection doubles: db info says to re-tune.
    collection = store.models.get_collection("synthetic")
    store.conn.execute("UPDATE search_tuning SET recall_count = 1000 WHERE collection_id = %s", (collection.id,))
    assert "grown 2.0x since: re-tune with imagedb tune -c synthetic" in cli("db", "info").output


# -- duplicates ----------------------------------------------------------------------------------------------------


def test_collapse_duplicates_returns_one_per_group_with_the_count(
    store: Store, library: Path, database_url: str, cli
) -> None:  # type: ignore[no-untyped-def]
    groups = find_duplicates(store)
    assert sorted(len(g.members) for g in groups) == [2, 3]
    query = parse([f"{library / 'rocket-small.jpg'}"])
    plain = search(store, SearchRequest(query, limit=15))
    collapsed = search(store, SearchRequest(query, limit=15, collapse_duplicates=True))
    assert len(collapsed) == 15 - 3 and len(plain) == 15
    rockets = {r.image_id for r in plain if "rocket" in r.path}
    first = collapsed[0]
    assert first.image_id in rockets and first.others == 2 and first.image_id == plain[0].image_id
    assert sum(r.others for r in collapsed) == 3 and [r.rank for r in collapsed] == list(range(1, 13))
    page = search(store, SearchRequest(query, limit=5, offset=5, collapse_duplicates=True))
    assert [r.image_id for r in page] == [r.image_id for r in collapsed[5:10]]

    result = cli("search", "--image", library / "rocket.jpg", "--json", "--collapse-duplicates", "-k", "3")
    rows = [json.loads(line) for line in result.output.splitlines()]
    assert rows[0]["duplicates"] == 2 and "rocket" in rows[0]["path"]
    client = TestClient(create_app(database_url), base_url="http://localhost")
    found = client.get("/api/search", params={"q": "x", "limit": 15, "collapse_duplicates": "true"}).json()["results"]
    assert len(found) == 12 and sorted(r["duplicates"] for r in found)[-2:] == [1, 2]


def test_watch_add_checks_images_already_stored(cli, photos: Path, tmp_path: Path, tiny_model: str) -> None:  # type: ignore[no-untyped-def]
    Image.open(photos / "astronaut.jpg").resize((256, 256)).save(photos / "astronaut-copy.jpg", quality=60)
    assert cli("ingest", photos, "--model", tiny_model).exit_code == 0
    result = cli("watch", "add", photos / "astronaut.jpg", "--label", "NASA")
    assert result.exit_code == 0, result.output
    assert "2 stored image(s) already look like it" in result.output  # the original and its copy
    hits = cli("watch", "hits", "--json").output.splitlines()
    assert {Path(json.loads(h)["path"]).name for h in hits} == {"astronaut.jpg", "astronaut-copy.jpg"}
    assert "2 hit(s)" in cli("watch", "list").output

    new = tmp_path / "new"
    new.mkdir()
    Image.open(photos / "astronaut.jpg").transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(new / "mirrored.jpg")
    shutil.copy(photos / "coffee.jpg", new / "coffee.jpg")
    result = cli("ingest", new)
    assert "added 1, reused 1, skipped 0 unchanged, failed 0, watch hits 1 in" in result.output, result.output
    assert "1 image(s) look like a watched one: see imagedb watch hits" in result.output


def test_dupes_output_speaks_bits_and_similarity_without_scientific_notation(cli, library: Path) -> None:  # type: ignore[no-untyped-def]
    # Two identical files (a sha256 link), copies (hash links), and CLIP links at a threshold that takes them.
    shutil.copy(library / "coffee.jpg", library / "coffee-same.jpg")
    assert cli("ingest", library).exit_code == 0
    text = cli("dupes", "--method", "both", "--min-similarity", "0.999").output
    assert "e-0" not in text and "e+0" not in text
    assert re.search(r"hash: \d+ of 64 bits differ from \d+", text)
    identical = cli("dupes", "--method", "clip", "--min-similarity", "1").output
    assert re.search(r"sha256: same file as \d+", identical), identical
    for match in re.findall(r"clip: similarity (\S+) to", text):
        assert re.fullmatch(r"[01]\.\d{4}", match) and float(match) >= 0.999
    rows = [json.loads(line) for line in cli("dupes", "--method", "both", "--json").output.splitlines()]
    members = [m for r in rows for m in r["members"]]
    assert {m["rule"] for m in members} <= {"first", "sha256", "hash", "clip"}
    assert all("distance" not in m for m in members)
    assert all(isinstance(m["bits"], int) for m in members if m["rule"] == "hash")
    assert all(m["similarity"] is None for m in members if m["rule"] != "clip")
    help_text = cli("dupes", "--help").output
    for rule in ("first", "sha256", "hash", "clip"):
        assert re.search(rf"^\s+{rule}\s+\S", help_text, re.M), rule


def test_clip_similarity_is_printed_in_four_decimals() -> None:
    from imagedb.dupes import Member

    tiny = Member(2, "/b.jpg", 1, "clip", 1.2e-7)
    assert tiny.similarity == 1.0 and "1e" not in tiny.describe() and tiny.describe() == "clip: similarity 1.0000 to 1"
    assert Member(2, "/b.jpg", 1, "clip", 1.0).similarity == 0.0  # not -0.0
    assert Member(2, "/b.jpg", 1, "hash", 3.0).describe() == "hash: 3 of 64 bits differ from 1"


# -- every door ----------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_cli_api_and_sql_return_the_same_ids_in_the_same_order(
    cli, library: Path, database_url: str, store: Store
) -> None:  # type: ignore[no-untyped-def]
    client = TestClient(create_app(database_url), base_url="http://localhost")
    ids = [r[0] for r in store.conn.execute("SELECT id FROM images ORDER BY id").fetchall()]
    for image_id in ids:
        result = cli("search", "--like", image_id, "--json", "-k", "6")
        by_cli = [json.loads(line)["id"] for line in result.output.splitlines()]
        by_api = [r["id"] for r in client.get(f"/api/images/{image_id}/similar", params={"limit": 6}).json()["results"]]
        by_sql = [r[0] for r in store.conn.execute("SELECT image_id FROM imagedb_similar(%s, 6)", (image_id,))]
        by_query = [
            r["id"] for r in client.get("/api/search", params={"q": f"id:{image_id}", "limit": 6}).json()["results"]
        ]
        assert by_cli == by_api == by_sql == by_query, image_id
        assert image_id not in by_cli and len(by_cli) == 6


@pytest.mark.slow
def test_two_redraws_of_one_sample_at_once_do_not_collide(store: Store, database_url: str) -> None:
    """Two ingests of one collection finishing together both redrew the
    sample, and one failed on relevance_samples' primary key."""
    import threading

    from imagedb.pg.database import open_connection

    collection = fill_synthetic(store, 2000)
    errors: list[BaseException] = []

    def redraw() -> None:
        other = Store(open_connection(database_url))
        try:
            for _ in range(15):
                other.tuning.draw_relevance_sample(collection, 500)
        except BaseException as exc:  # noqa: BLE001 - any failure is the finding
            errors.append(exc)
        finally:
            other.close()

    threads = [threading.Thread(target=redraw) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert errors == []
    assert store.conn.execute("SELECT count(*) FROM relevance_samples").fetchone()[0] == 500
