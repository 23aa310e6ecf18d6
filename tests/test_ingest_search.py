"""Ingest -> search round trips on a real database with the real open_clip code path."""

from __future__ import annotations

import itertools
import os
import shutil
from datetime import datetime
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imagedb.embed import ModelSpec
from imagedb.ingest import ingest
from imagedb.query import parse
from imagedb.request import SearchRequest
from imagedb.search import search
from imagedb.store import Store


def _count(store: Store, table: str) -> int:
    return store.conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]


def _exact_ranking(store: Store, query: np.ndarray) -> list[int]:
    collection = store.models.get_collection("default")
    ids, matrix = store.search.all_vectors(collection)
    # Compare at the precision the database holds: halfvec values and a halfvec query.
    q = query.astype(np.float16).astype(np.float32)
    scores = matrix @ q / (np.linalg.norm(matrix, axis=1) * np.linalg.norm(q))
    return [ids[i] for i in np.argsort(-scores, kind="stable")]


def test_round_trip_text_image_and_like(store: Store, photos: Path, tiny_model: str) -> None:
    spec = ModelSpec.parse(tiny_model)
    summary = ingest(store, [photos], model=spec, batch_size=5)
    assert (summary.added, summary.reused, summary.skipped, summary.failed) == (12, 0, 0, 0)
    assert _count(store, "images") == _count(store, "embeddings") == _count(store, "thumbnails") == 12

    by_text = search(store, SearchRequest(parse(["a cat sitting on a sofa"]), limit=12))
    assert len(by_text) == 12
    assert [r.rank for r in by_text] == list(range(1, 13))
    assert all(a.score >= b.score for a, b in itertools.pairwise(by_text))

    by_image = search(store, SearchRequest(parse([str(photos / "rocket.jpg")]), limit=3))
    assert by_image[0].path == str(photos / "rocket.jpg")
    assert by_image[0].score == pytest.approx(1.0, abs=1e-3)

    rocket_id = by_image[0].image_id
    by_like = search(store, SearchRequest(parse([f"id:{rocket_id}"]), limit=3))
    assert len(by_like) == 3 and rocket_id not in [r.image_id for r in by_like]  # "more like this": not itself


def test_results_equal_exact_cosine_ranking(store: Store, photos: Path, tiny_model: str) -> None:
    ingest(store, [photos], model=ModelSpec.parse(tiny_model))
    collection = store.models.get_collection("default")
    ids, matrix = store.search.all_vectors(collection)
    for image_id, vector in zip(ids, matrix, strict=True):
        got = [r.image_id for r in search(store, SearchRequest(parse([f"id:{image_id}"]), limit=len(ids)))]
        assert got == [i for i in _exact_ranking(store, vector) if i != image_id]
    from imagedb import embed

    text_vector = embed.load(ModelSpec.parse(tiny_model)).encode_texts(["a red rocket"])[0]
    got = [r.image_id for r in search(store, SearchRequest(parse(["a red rocket"]), limit=len(ids)))]
    assert got == _exact_ranking(store, text_vector)


def test_rerun_is_idempotent_and_embeds_nothing(store: Store, photos: Path, tiny_model: str) -> None:
    spec = ModelSpec.parse(tiny_model)
    ingest(store, [photos], model=spec)
    before = store.conn.execute("SELECT image_id, embedding::text FROM embeddings ORDER BY 1").fetchall()
    again = ingest(store, [photos])
    assert (again.added, again.reused, again.skipped, again.failed) == (0, 0, 12, 0)
    after = store.conn.execute("SELECT image_id, embedding::text FROM embeddings ORDER BY 1").fetchall()
    assert before == after
    assert _count(store, "images") == 12


def test_identical_content_at_a_new_path_reuses_the_embedding(
    store: Store, photos: Path, tiny_model: str, tmp_path: Path
) -> None:
    spec = ModelSpec.parse(tiny_model)
    ingest(store, [photos], model=spec)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.copy(photos / "coffee.jpg", elsewhere / "copy of coffee.jpg")
    shutil.copy(photos / "camera.jpg", elsewhere / "twin-a.jpg")
    shutil.copy(photos / "camera.jpg", elsewhere / "twin-b.jpg")
    summary = ingest(store, [elsewhere])
    assert (summary.added, summary.reused) == (0, 3)
    rows = store.conn.execute(
        "SELECT count(DISTINCT e.embedding::text) FROM embeddings e JOIN images i ON i.id = e.image_id"
        " WHERE i.path LIKE %s",
        ("%coffee%",),
    ).fetchone()
    assert rows[0] == 1


@pytest.mark.slow
def test_duplicates_within_one_batch_are_embedded_once(store: Store, tmp_path: Path, tiny_model: str) -> None:
    folder = tmp_path / "same"
    folder.mkdir()
    Image.new("RGB", (80, 60), (200, 30, 30)).save(folder / "a.png")
    shutil.copy(folder / "a.png", folder / "b.png")
    summary = ingest(store, [folder], model=ModelSpec.parse(tiny_model))
    assert (summary.added, summary.reused) == (1, 1)


@pytest.mark.slow
def test_changed_file_is_replaced_not_duplicated(store: Store, photos: Path, tiny_model: str) -> None:
    ingest(store, [photos], model=ModelSpec.parse(tiny_model))
    target = photos / "noise_0.png"
    old = store.conn.execute("SELECT sha256 FROM images WHERE path = %s", (str(target),)).fetchone()[0]
    Image.new("RGB", (50, 50), (0, 0, 255)).save(target)
    summary = ingest(store, [photos])
    assert (summary.added, summary.skipped) == (1, 11)
    rows = store.conn.execute("SELECT sha256, width FROM images WHERE path = %s", (str(target),)).fetchall()
    assert len(rows) == 1 and rows[0][0] != old and rows[0][1] == 50
    assert _count(store, "embeddings") == _count(store, "thumbnails") == 12


def _jpeg_with_exif(path: Path, *, orientation: int, gps: bool) -> None:
    image = Image.new("RGB", (400, 200), (10, 120, 200))
    exif = Image.Exif()
    exif[0x010F] = "ACME"  # Make
    exif[0x0110] = "Shooter 3000"  # Model
    exif[0x0112] = orientation
    exif.get_ifd(0x8769)[0x9003] = "2021:07:04 15:30:00"  # DateTimeOriginal
    if gps:
        exif.get_ifd(0x8825).update({1: "N", 2: (52.0, 31.0, 12.0), 3: "E", 4: (13.0, 24.0, 36.0)})
    image.save(path, exif=exif)


def test_exif_metadata_orientation_and_gps_privacy(store: Store, tmp_path: Path, tiny_model: str) -> None:
    folder = tmp_path / "exif"
    folder.mkdir()
    _jpeg_with_exif(folder / "rotated.jpg", orientation=6, gps=True)
    spec = ModelSpec.parse(tiny_model)
    ingest(store, [folder], model=spec)
    row = store.conn.execute(
        "SELECT i.taken_at, i.camera_make, i.camera_model, i.orientation, i.width, i.height, i.exif, t.width,"
        " t.height, t.jpeg FROM images i JOIN thumbnails t ON t.image_id = i.id"
    ).fetchone()
    taken_at, make, model, orientation, width, height, exif, thumb_w, thumb_h, jpeg = row
    assert taken_at == datetime(2021, 7, 4, 15, 30)
    assert (make, model, orientation) == ("ACME", "Shooter 3000", 6)
    assert (width, height) == (400, 200)  # as stored in the file
    assert thumb_h > thumb_w  # orientation 6 turns it upright: portrait
    assert Image.open(BytesIO(jpeg)).format == "JPEG" and max(thumb_w, thumb_h) <= 256
    assert "GPSInfo" not in exif and "GPS" not in str(exif)

    kept = tmp_path / "kept"
    kept.mkdir()
    _jpeg_with_exif(kept / "with-gps.jpg", orientation=1, gps=True)
    ingest(store, [kept], collection="travel", model=spec, keep_gps=True)
    gps = store.conn.execute("SELECT exif->'GPSInfo' FROM images WHERE path LIKE '%with-gps.jpg'").fetchone()[0]
    assert gps["GPSLatitudeRef"] == "N" and gps["GPSLatitude"] == [52.0, 31.0, 12.0]


def test_every_supported_format_is_stored(store: Store, tmp_path: Path, tiny_model: str) -> None:
    folder = tmp_path / "formats"
    folder.mkdir()
    base = Image.new("RGB", (120, 90), (40, 160, 90))
    base.save(folder / "a.PNG")
    base.save(folder / "b.webp")
    base.save(folder / "c.bmp")
    base.save(folder / "d.tiff")
    base.save(folder / "e.jpeg")
    frames = [Image.new("RGB", (64, 64), c) for c in ((255, 0, 0), (0, 255, 0))]
    frames[0].save(folder / "f.gif", save_all=True, append_images=frames[1:])
    (folder / "notes.txt").write_text("not an image, and not picked up")
    summary = ingest(store, [folder], model=ModelSpec.parse(tiny_model))
    assert (summary.added + summary.reused, summary.failed) == (6, 0)
    formats = {r[0] for r in store.conn.execute("SELECT format FROM images").fetchall()}
    assert formats == {"PNG", "WEBP", "BMP", "TIFF", "JPEG", "GIF"}


def test_search_can_pass_a_single_file_and_collections_are_separate(
    store: Store, photos: Path, tiny_model: str
) -> None:
    spec = ModelSpec.parse(tiny_model)
    ingest(store, [photos / "coffee.jpg"], collection="one", model=spec)
    ingest(store, [photos], collection="two", model=spec)
    assert [r.path for r in search(store, SearchRequest(parse(["x"]), collection="one"))] == [
        str(photos / "coffee.jpg")
    ]
    assert len(search(store, SearchRequest(parse(["x"]), collection="two", limit=50))) == 12


def test_mtime_is_stored_exactly(store: Store, photos: Path, tiny_model: str) -> None:
    target = photos / "coffee.jpg"
    os.utime(target, ns=(1_700_000_000_123_456_789, 1_700_000_000_123_456_789))
    ingest(store, [target], model=ModelSpec.parse(tiny_model))
    assert ingest(store, [target]).skipped == 1


def test_bulk_load_builds_the_index_after_and_keeps_its_parameters(
    store: Store, photos: Path, tiny_model: str, tmp_path: Path
) -> None:
    spec = ModelSpec.parse(tiny_model)
    ingest(store, [photos / "coffee.jpg"], model=spec)
    store.index.rebuild_indexes(m=8, ef_construction=40)
    summary = ingest(store, [photos], bulk_threshold=5)
    assert summary.added == 11
    definition = store.conn.execute(
        "SELECT indexdef FROM pg_indexes WHERE indexname LIKE 'embeddings_hnsw_%'"
    ).fetchone()[0]
    assert "m='8'" in definition and "ef_construction='40'" in definition
    assert store.admin.problems() == []
    # A bulk run that died in between left no index: the next run builds one.
    store.index.drop_hnsw_index(1)
    ingest(store, [photos])
    assert store.admin.problems() == []
