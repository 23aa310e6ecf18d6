"""Recall for the queries people ask: `imagedb tune` and `db check --recall` measure text queries apart from image
queries (the cached query texts when there are enough, else text-like probes), tune keeps an ef_search for each
that meets the target or says it cannot within a latency bound, and searches with text use text queries' own."""

from __future__ import annotations

import re
from datetime import datetime, timezone

import numpy as np
import pytest
from click.testing import CliRunner

from imagedb import tuning
from imagedb.cli import main
from imagedb.errors import InvalidInput
from imagedb.query import parse
from imagedb.request import SearchRequest
from imagedb.search import plan
from imagedb.store import Collection, ImageRecord, Store

DIM = 32


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def _clustered(count: int, rng: np.random.Generator) -> np.ndarray:
    """Unit vectors around 20 centres, as image embeddings cluster."""
    centres = rng.standard_normal((20, DIM))
    return _unit(centres[rng.integers(0, 20, count)] + 0.6 * rng.standard_normal((count, DIM)))


def _gap(rng: np.random.Generator) -> np.ndarray:
    """CLIP's modality gap as bench/common.py draws it: one fixed offset of norm 1.2 from images to texts."""
    gap = rng.standard_normal(DIM)
    return (gap * 1.2 / np.linalg.norm(gap)).astype(np.float32)


def _fill(store: Store, vectors: np.ndarray, name: str = "gap") -> Collection:
    model_id = store.models.ensure_model(name, "", DIM)
    collection = store.models.create_collection(name, model_id)
    run_id = store.images.start_run(collection.id)
    now = datetime.now(timezone.utc)
    for start in range(0, len(vectors), 500):
        records = [
            ImageRecord(
                path=f"/gap/{i:06d}.jpg",
                sha256=f"{i:064x}",
                size_bytes=1,
                mtime=now,
                width=1,
                height=1,
                format="JPEG",
                taken_at=None,
                camera_make=None,
                camera_model=None,
                orientation=None,
                exif={},
                thumbnail=b"",
                thumbnail_size=(1, 1),
            )  # fmt: skip
            for i in range(start, min(start + 500, len(vectors)))
        ]
        store.images.write_batch(collection.id, model_id, run_id, records, list(vectors[start : start + 500]), [])
    store.conn.execute("ANALYZE")
    store.conn.commit()
    return store.models.get_collection(name)


def _cache_texts(store: Store, collection: Collection, texts: np.ndarray, first: int = 0) -> None:
    """Query texts as `imagedb search` caches them: their vectors, by the collection's model."""
    store.search.cache_texts(collection.model_id, {f"query text {i}": v for i, v in enumerate(texts, start=first)})


@pytest.fixture
def cli(database_url: str, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    monkeypatch.setenv("IMAGEDB_DATABASE_URL", database_url)
    monkeypatch.delenv("IMAGEDB_MODEL", raising=False)
    return lambda *args: CliRunner().invoke(main, [str(a) for a in args])


# -- choosing, without a database --------------------------------------------------------------------------------


def _measure(table: dict[int, tuple[float, float]]):  # type: ignore[no-untyped-def]
    seen: list[int] = []

    def measure(ef: int) -> tuning.RecallPoint:
        seen.append(ef)
        recall, ms = table[ef]
        return tuning.RecallPoint(ef, recall, ms)

    return measure, seen


def test_choose_ef_search_stops_at_the_latency_bound_and_keeps_the_best_within_it() -> None:
    table = {20: (0.6, 1.0), 40: (0.8, 2.0), 80: (0.9, 4.0), 160: (0.97, 8.0), 320: (0.99, 16.0)}
    measure, seen = _measure(table)
    assert tuning.choose_ef_search(measure, 0.95, (20, 40, 80, 160, 320))[:2] == (160, True)
    measure, seen = _measure(table)
    ef, met, points = tuning.choose_ef_search(measure, 0.95, (20, 40, 80, 160, 320), max_latency_ms=5.0)
    assert (ef, met) == (80, False) and seen == [20, 40, 80, 160]  # 160 took 8 ms: nothing larger is tried
    measure, seen = _measure(table)
    assert tuning.choose_ef_search(measure, 0.95, (20, 40, 80, 160, 320), max_latency_ms=0.5)[:2] == (20, False)


def test_text_like_probes_sit_apart_from_the_images_and_near_their_neighbours() -> None:
    rng = np.random.default_rng(1)
    images = _clustered(200, rng)
    gap = tuning.modality_gap(images, np.empty((0, DIM), np.float32))
    assert abs(float(np.linalg.norm(gap)) - tuning.TEXT_GAP) < 1e-5
    probes = tuning.text_like(images, gap)
    assert np.allclose(np.linalg.norm(probes, axis=1), 1, atol=1e-5)
    own = (probes * images).sum(1)
    assert 0.4 < float(own.mean()) < 0.85  # CLIP's text-image cosines are far below image-image ones
    assert float((images @ images.T).max(1).mean()) > float((probes @ images.T).max(1).mean())  # off the data
    texts = _unit(images[:50] + _gap(rng))
    measured = tuning.modality_gap(images, texts)  # with a few cached texts: the difference of the centroids
    assert np.allclose(measured, _unit(texts).mean(0) - images.mean(0), atol=1e-5)


def test_probes_stay_by_their_images_on_data_drawn_from_a_generator_seeded_0() -> None:
    """Synthetic sets (every bench's) draw their cluster centres first from default_rng(0): probes whose random
    directions came from that stream were each pushed at another cluster, and tune chose an ef_search 3-6 times too
    large (bench/results/text_recall_500000.txt)."""
    rng = np.random.default_rng(0)
    centres = _unit(rng.standard_normal((20, DIM)))
    labels = rng.integers(0, 20, 400)
    images = _unit(centres[labels] + 0.6 / np.sqrt(DIM) * np.linalg.norm(centres[0]) * rng.standard_normal((400, DIM)))
    nearest = np.sort(images @ images.T, axis=1)[:, -2]  # each image's nearest other image
    probes = tuning.held_out_like(images[:20], nearest[:20])  # as many queries as clusters, as tune's 100 of 1M
    assert float(((probes @ centres.T).argmax(1) == labels[:20]).mean()) > 0.95
    text = tuning.text_like(probes, tuning.modality_gap(images, np.empty((0, DIM), np.float32)))
    assert float(((text @ centres.T).argmax(1) == labels[:20]).mean()) > 0.6


# -- tune and db check on a real database ------------------------------------------------------------------------


@pytest.mark.slow
def test_tune_measures_text_queries_apart_with_probes_and_searches_with_text_use_their_own(store: Store) -> None:
    collection = _fill(store, _clustered(3000, np.random.default_rng(0)))
    tuned = tuning.tune(store, "gap", target=0.9, queries=20)
    assert tuned.text_queries == "20 text-like probes (a generated gap, no cached texts)"
    assert tuned.text.points and tuned.image.points
    assert tuned.met and tuned.image.recall >= 0.9 and tuned.text.recall >= 0.9  # both meet the target
    assert all(p.recall < 0.9 for p in tuned.text.points[:-1])  # the smallest that does
    row = store.tuning.tuning(collection)
    assert (row["ef_search"], row["text_ef_search"]) == (tuned.ef_search, tuned.text_ef_search)
    assert row["text_recall"] == tuned.text.recall and row["text_queries"] == tuned.text_queries

    # A search with text uses text queries' ef_search, one by stored images the images', an explicit one wins.
    _cache_texts(store, collection, _unit(_clustered(1, np.random.default_rng(5))))  # no model needed to plan it
    store.conn.execute("UPDATE search_tuning SET text_ef_search = 321 WHERE collection_id = %s", (collection.id,))
    assert plan(store, SearchRequest(parse(["query text 0"]), collection="gap")).ef_search == 321
    assert plan(store, SearchRequest(parse(["query text 0", "+", "id:1"]), collection="gap")).ef_search == 321
    assert plan(store, SearchRequest(parse(["id:1"]), collection="gap")).ef_search == tuned.ef_search
    assert plan(store, SearchRequest(parse(["query text 0"]), collection="gap", ef_search=7)).ef_search == 7


@pytest.mark.slow
def test_tune_uses_the_most_recent_cached_texts_when_there_are_enough(store: Store) -> None:
    rng = np.random.default_rng(2)
    images = _clustered(1500, rng)
    collection = _fill(store, images)
    texts = _unit(images[rng.integers(0, 1500, 30)] + _gap(rng))
    _cache_texts(store, collection, texts[:5])  # too few: probes, with the gap those few texts show
    assert tuning.tune(store, "gap", queries=20).text_queries == "20 text-like probes (the gap of 5 cached texts)"
    _cache_texts(store, collection, texts[5:], first=5)
    tuned = tuning.tune(store, "gap", queries=20)
    assert tuned.text_queries == "20 cached texts" and tuned.queries == 20
    assert tuning.tune(store, "gap", queries=40).text_queries == "30 cached texts"  # all there are
    assert tuning.tune(store, "gap", queries=3).text_queries == "3 cached texts"  # asked for few: few are enough


def test_tune_refuses_a_latency_bound_that_is_no_time(store: Store) -> None:
    for bound in (0, -1, float("nan")):
        with pytest.raises(InvalidInput, match="latency bound"):
            tuning.tune(store, "default", max_latency_ms=bound)


@pytest.mark.slow
def test_tune_and_db_check_report_text_recall_and_say_when_the_latency_bound_is_too_low(cli, store: Store) -> None:  # type: ignore[no-untyped-def]
    collection = _fill(store, _clustered(2000, np.random.default_rng(3)))
    store.conn.execute("UPDATE images SET dhash = repeat('0', 64)::bit(64)")  # db check wants every hash
    store.conn.commit()

    checked = cli("db", "check", "--recall", "-c", "gap", "--queries", "20")
    assert checked.exit_code == 0, checked.output
    lines = checked.output.splitlines()
    assert "recall of gap (2000 images), image queries (20 made from stored images):" in lines
    assert "recall of gap, text queries (20 text-like probes (a generated gap, no cached texts)):" in lines
    assert len(re.findall(r"^\s+100\s+\d\.\d{3}\s+\d+\.\d{2}  <- searches use this$", checked.output, re.M)) == 2
    assert "text queries: ef_search 100, recall@10" in cli("db", "info").output

    tuned = cli("tune", "-c", "gap", "--target-recall", "0.9", "--queries", "20")
    assert tuned.exit_code == 0, tuned.output
    image = re.search(r"gap: image queries: ef_search (\d+) \(recall@10 (\S+) >= 0.9", tuned.output)
    text = re.search(r"gap: text queries: ef_search (\d+) \(recall@10 (\S+) >= 0.9", tuned.output)
    assert image and text, tuned.output
    assert f"ef_search {image.group(1)}; recall@10" in cli("db", "info").output
    assert f"text queries: ef_search {text.group(1)}, recall@10 {text.group(2)}" in cli("db", "info").output

    too_fast = cli("tune", "-c", "gap", "--queries", "5", "--max-latency-ms", "0.001")
    assert too_fast.exit_code == 0, too_fast.output
    for kind in ("image", "text"):
        assert f"gap: {kind} queries: cannot reach recall@10 0.95 within 0.001 ms" in too_fast.output
    # The best it could afford is stored: the smallest candidate.
    assert store.tuning.tuning(collection)["text_ef_search"] == tuning.CANDIDATES[0]
    assert cli("tune", "-c", "gap", "--max-latency-ms", "0").exit_code == 2

    _cache_texts(store, collection, _unit(_clustered(25, np.random.default_rng(4)) + _gap(np.random.default_rng(4))))
    checked = cli("db", "check", "--recall", "-c", "gap", "--queries", "20")
    assert "recall of gap, text queries (20 cached texts):" in checked.output.splitlines(), checked.output


def test_the_sql_text_searches_use_text_queries_own_ef_search(store: Store) -> None:
    """imagedb_search_text and imagedb_search_hybrid searched text with the image queries' ef_search (revision
    textef); imagedb_nearest, given any vector, keeps the image queries'."""
    collection = _fill(store, _clustered(300, np.random.default_rng(4)))
    text = _unit(_clustered(1, np.random.default_rng(5)))
    _cache_texts(store, collection, text)
    store.tuning.save_tuned_ef_search(collection, 40, 0.95, 1.0, 300, (321, 1.0, "20 text-like probes"))
    for statement, expected in (
        ("SELECT * FROM imagedb_search_text('query text 0', 'gap', 5)", "321"),
        ("SELECT * FROM imagedb_search_hybrid('query text 0', 'gap', 5)", "321"),
        ("SELECT * FROM imagedb_nearest(%s::halfvec, 'gap', 5)", "40"),
    ):
        with store.conn.transaction():
            params = (str(text[0].tolist()),) if "%s" in statement else ()
            assert len(store.conn.execute(statement, params).fetchall()) == 5
            ef = store.conn.execute("SELECT current_setting('hnsw.ef_search')").fetchone()[0]  # type: ignore[index]
            assert ef == expected, statement
