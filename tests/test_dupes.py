"""Near-duplicates by perceptual hash and CLIP, index-backed, persisted; the watch list with LISTEN/NOTIFY."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import psycopg
import pytest
from click.testing import CliRunner
from PIL import Image, ImageDraw, ImageEnhance

from imagedb import store as store_module
from imagedb.cli import main
from imagedb.dupes import add_watches, backfill_hashes, find_duplicates
from imagedb.embed import ModelSpec
from imagedb.errors import InvalidInput
from imagedb.ingest import ingest
from imagedb.store import Store


@pytest.fixture
def copies(photos: Path, tmp_path: Path) -> Path:
    """The photos plus copies of two of them: resized, recompressed, brighter, watermarked, and a byte copy."""
    folder = tmp_path / "copies"
    folder.mkdir()
    rocket = Image.open(photos / "rocket.jpg")
    rocket.resize((rocket.width // 2, rocket.height // 2)).save(folder / "rocket-small.jpg")
    rocket.save(folder / "rocket-q30.jpg", quality=30)
    ImageEnhance.Brightness(rocket).enhance(1.2).save(folder / "rocket-bright.jpg")
    coffee = Image.open(photos / "coffee.jpg").convert("RGB")
    ImageDraw.Draw(coffee).text((20, 20), "(c) someone", fill=(255, 255, 255))
    coffee.save(folder / "coffee-marked.jpg")
    shutil.copy(photos / "camera.jpg", folder / "camera-copy.jpg")
    return folder


def _groups_by_name(groups) -> list[set[str]]:  # type: ignore[no-untyped-def]
    return sorted(({Path(m.path).name for m in g.members} for g in groups), key=sorted)


def test_hash_groups_copies_and_only_copies(store: Store, photos: Path, copies: Path, tiny_model: str) -> None:
    ingest(store, [photos, copies], model=ModelSpec.parse(tiny_model))
    groups = find_duplicates(store, method="hash")
    assert _groups_by_name(groups) == [
        {"camera.jpg", "camera-copy.jpg"},
        {"coffee.jpg", "coffee-marked.jpg"},
        {"rocket.jpg", "rocket-small.jpg", "rocket-q30.jpg", "rocket-bright.jpg"},
    ]
    camera = next(g for g in groups if len(g.members) == 2 and "camera" in g.members[0].path)
    assert [m.rule for m in camera.members] == ["first", "sha256"]
    report = store.conn.execute("SELECT group_no, path, rule FROM duplicate_report ORDER BY 1, 2").fetchall()
    assert len(report) == 8 and {r[2] for r in report} == {"first", "sha256", "hash"}
    # A rerun replaces the stored result instead of adding to it.
    find_duplicates(store, method="hash")
    assert store.conn.execute("SELECT count(*) FROM duplicate_groups").fetchone()[0] == 8


def test_exact_copies_group_even_at_distance_zero_and_method_clip(
    store: Store, photos: Path, copies: Path, tiny_model: str
) -> None:
    ingest(store, [photos, copies], model=ModelSpec.parse(tiny_model))
    groups = find_duplicates(store, method="hash", max_distance=0)
    assert {"camera.jpg", "camera-copy.jpg"} in _groups_by_name(groups)
    # CLIP edges are the pairs a brute-force scan finds above the threshold.
    collection = store.models.get_collection("default")
    ids, matrix = store.search.all_vectors(collection)
    sims = matrix @ matrix.T / np.outer(np.linalg.norm(matrix, axis=1), np.linalg.norm(matrix, axis=1))
    threshold = float(np.sort(sims[np.triu_indices(len(ids), 1)])[-5])  # the 5 most similar pairs
    edges = store.dupes.clip_edges(collection, 1 - threshold + 1e-6, 10)
    brute = {(ids[a], ids[b]) for a, b in zip(*np.where(np.triu(sims, 1) >= threshold - 1e-6), strict=True)}
    assert {tuple(sorted((a, b))) for a, b, _ in edges} == brute
    clip_groups = find_duplicates(store, method="clip", min_similarity=threshold)
    assert {m.rule for g in clip_groups for m in g.members} >= {"clip", "first"}


def test_neighbour_queries_read_the_hash_index(store: Store, photos: Path, tiny_model: str) -> None:
    ingest(store, [photos], model=ModelSpec.parse(tiny_model))
    store.conn.execute("SET enable_sort = off")  # a dozen rows; on a real collection the index wins anyway
    plan = "\n".join(
        r[0]
        for r in store.conn.execute("EXPLAIN " + store_module.HASH_EDGES_SQL, {"c": 1, "k": 10, "max": 10}).fetchall()
    )
    assert "Index Scan using images_dhash_hnsw" in plan, plan


def test_backfill_recomputes_the_same_hashes_from_thumbnails(store: Store, photos: Path, tiny_model: str) -> None:
    ingest(store, [photos], model=ModelSpec.parse(tiny_model))
    before = store.conn.execute("SELECT id, dhash::text FROM images ORDER BY id").fetchall()
    store.conn.execute("UPDATE images SET dhash = NULL")
    store.conn.commit()
    assert backfill_hashes(store, batch_size=5) == 12
    assert store.conn.execute("SELECT id, dhash::text FROM images ORDER BY id").fetchall() == before


def test_watch_list_catches_flipped_and_turned_copies_and_notifies(
    store: Store, database_url: str, photos: Path, tmp_path: Path, tiny_model: str
) -> None:
    spec = ModelSpec.parse(tiny_model)
    ingest(store, [photos], model=spec)
    [watched] = add_watches(store, [photos / "astronaut.jpg"], label="NASA")
    watch_id = watched.watch_id
    assert watched.stored_hits == 1  # the astronaut already stored
    listener = psycopg.connect(database_url, autocommit=True)
    listener.execute("LISTEN imagedb_watch")

    upload = tmp_path / "uploads"
    upload.mkdir()
    astronaut = Image.open(photos / "astronaut.jpg")
    astronaut.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(upload / "mirrored.jpg", quality=70)
    astronaut.transpose(Image.Transpose.ROTATE_90).resize((256, 256)).save(upload / "turned.png")
    shutil.copy(photos / "coffee.jpg", upload / "unrelated.jpg")
    ingest(store, [upload])

    payloads = [json.loads(n.payload) for n in listener.notifies(timeout=2, stop_after=2)]
    listener.close()
    hits = store.dupes.watch_hits()
    assert {Path(h["path"]).name for h in hits} == {"astronaut.jpg", "mirrored.jpg", "turned.png"}
    assert [set(p) for p in payloads] == [{"hit_id"}] * 2  # the id alone: a listener reads the hit (watch_feed.py)
    assert {p["hit_id"] for p in payloads} == {h["id"] for h in hits[1:]}
    assert all(h["watch_id"] == watch_id and 0 <= h["distance"] <= 8 for h in hits)
    assert store.dupes.watches()[0]["hits"] == 3


def test_watch_and_dupes_refuse_bad_input(store: Store, photos: Path, tmp_path: Path, tiny_model: str) -> None:
    ingest(store, [photos / "coffee.jpg"], model=ModelSpec.parse(tiny_model))
    (tmp_path / "notes.jpg").write_text("not an image")
    with pytest.raises(InvalidInput, match="cannot watch .*notes.jpg: not an image"):
        add_watches(store, [photos / "coffee.jpg", tmp_path / "notes.jpg"])
    assert store.dupes.watches() == []  # nothing of the batch was stored
    with pytest.raises(InvalidInput, match="unknown method"):
        find_duplicates(store, method="pixels")  # type: ignore[arg-type]
    with pytest.raises(InvalidInput, match="0 to 64"):
        find_duplicates(store, max_distance=65)


@pytest.mark.parametrize(
    "args, message",
    [
        (("dupes", "--method", "pixels"), "Invalid value for '--method'"),
        (("dupes", "--max-distance", "99"), "Invalid value for '--max-distance'"),
        (("watch", "add", "/no/such.jpg"), "cannot watch /no/such.jpg: no such file"),
    ],
)
def test_cli_bad_input_exits_2(database_url: str, monkeypatch: pytest.MonkeyPatch, args, message: str) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("IMAGEDB_DATABASE_URL", database_url)
    result = CliRunner().invoke(main, list(args))
    assert result.exit_code == 2 and message in result.output, result.output


@pytest.mark.slow
def test_cli_dupes_and_watch(
    database_url: str, monkeypatch: pytest.MonkeyPatch, photos: Path, copies: Path, tiny_model: str
) -> None:
    monkeypatch.setenv("IMAGEDB_DATABASE_URL", database_url)
    runner = CliRunner()
    assert runner.invoke(main, ["watch", "add", str(photos / "rocket.jpg"), "--label", "ACME"]).exit_code == 0
    assert runner.invoke(main, ["ingest", str(photos), str(copies), "-m", tiny_model]).exit_code == 0
    result = runner.invoke(main, ["dupes", "--json"])
    groups = [json.loads(line) for line in result.output.splitlines()]
    assert len(groups) == 3 and all(g["members"][0]["rule"] == "first" for g in groups)
    hits = runner.invoke(main, ["watch", "hits", "--json"]).output.splitlines()
    assert {Path(json.loads(h)["path"]).name for h in hits} == {
        "rocket.jpg",
        "rocket-small.jpg",
        "rocket-q30.jpg",
        "rocket-bright.jpg",
    }
    assert "ACME" in runner.invoke(main, ["watch", "list"]).output
