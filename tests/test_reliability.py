"""Concurrent ingests, batches with nothing to store, and crashes: nothing is lost or stored twice."""

from __future__ import annotations

import io
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imagedb.embed import ModelSpec
from imagedb.ingest import ingest
from imagedb.store import Store

from helpers import wait_for_a_batch_on_the_collection_lock


def _imagedb() -> str:
    found = shutil.which("imagedb", path=str(Path(sys.executable).parent)) or shutil.which("imagedb")
    assert found, "the imagedb console script is not installed"
    return found


def _many_photos(folder: Path, count: int) -> Path:
    folder.mkdir()
    rng = np.random.default_rng(11)
    for i in range(count):
        pixels = (rng.random((48, 64, 3)) * 255).astype("uint8")
        Image.fromarray(pixels).save(folder / f"img_{i:04d}.png")
    return folder


def _consistent(store: Store, expected: int) -> None:
    counts = store.conn.execute(
        "SELECT (SELECT count(*) FROM images), (SELECT count(DISTINCT path) FROM images),"
        " (SELECT count(*) FROM embeddings), (SELECT count(*) FROM thumbnails),"
        " (SELECT count(*) FROM images i WHERE NOT EXISTS (SELECT 1 FROM embeddings e WHERE e.image_id = i.id)"
        "    OR NOT EXISTS (SELECT 1 FROM thumbnails t WHERE t.image_id = i.id))"
    ).fetchone()
    store.conn.commit()
    assert counts == (expected, expected, expected, expected, 0), counts


def test_a_batch_of_only_bad_files(store: Store, tmp_path: Path, tiny_model: str) -> None:
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "a.jpg").write_bytes(b"")
    (folder / "b.png").write_text("text")
    summary = ingest(store, [folder], model=ModelSpec.parse(tiny_model), batch_size=1)
    assert (summary.added, summary.failed) == (0, 2)


@pytest.mark.slow
def test_two_ingests_of_one_folder_at_once(store: Store, database_url: str, tmp_path: Path, tiny_model: str) -> None:
    folder = _many_photos(tmp_path / "many", 120)
    env = {**os.environ, "IMAGEDB_DATABASE_URL": database_url, "IMAGEDB_MODEL": tiny_model}
    ingest(store, [folder / "img_0000.png"], model=ModelSpec.parse(tiny_model))  # the collection exists
    runs = [
        subprocess.Popen(
            [_imagedb(), "ingest", str(folder), "--batch-size", "8"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outputs = [run.communicate(timeout=300) for run in runs]
    for run, (out, err) in zip(runs, outputs, strict=True):
        assert run.returncode == 0, err
        assert "failed 0" in out
    _consistent(store, 120)


def _stored(store: Store) -> int:
    count = store.conn.execute("SELECT count(*) FROM images").fetchone()[0]
    store.conn.commit()
    return int(count)


@pytest.mark.slow
def test_kill_9_at_random_moments_then_rerun(store: Store, database_url: str, tmp_path: Path, tiny_model: str) -> None:
    folder = _many_photos(tmp_path / "many", 600)
    env = {**os.environ, "IMAGEDB_DATABASE_URL": database_url, "IMAGEDB_MODEL": tiny_model}
    ingest(store, [folder / "img_0000.png"], model=ModelSpec.parse(tiny_model))
    rng = np.random.default_rng(5)
    killed_mid_run = 0
    for _ in range(10):
        before = _stored(store)
        run = subprocess.Popen([_imagedb(), "ingest", str(folder), "--batch-size", "4"], env=env)
        # Kill it once it has stored a random number of images, a random moment after: a point in the run measured
        # in its own progress, not in seconds, so that a faster machine does not finish the 600 images within the
        # ten runs (a delay of up to 0.3 s let it: the tiny model stores ~100 images/s here, and more elsewhere).
        wanted = before + int(rng.integers(1, 20))
        deadline = time.monotonic() + 60
        while _stored(store) < wanted and run.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(float(rng.uniform(0, 0.03)))
        run.send_signal(signal.SIGKILL)
        run.wait()
        killed_mid_run += run.returncode == -signal.SIGKILL and _stored(store) < 600
        _consistent(store, _stored(store))
    assert killed_mid_run >= 5  # most kills landed in the middle of a run
    final = subprocess.run([_imagedb(), "ingest", str(folder)], env=env, capture_output=True, text=True)
    assert final.returncode == 0, final.stderr
    _consistent(store, 600)


@pytest.mark.slow
def test_database_stopped_mid_ingest_then_rerun(tmp_path: Path, tiny_model: str) -> None:
    """Its own embedded server, so stopping it disturbs no other test."""
    from imagedb.pg.database import open_connection
    from imagedb.pg.embedded import stop_embedded

    home = tmp_path / "home"
    folder = _many_photos(tmp_path / "many", 300)
    env = {**os.environ, "IMAGEDB_HOME": str(home), "IMAGEDB_MODEL": tiny_model}
    env.pop("IMAGEDB_DATABASE_URL", None)
    subprocess.run([_imagedb(), "ingest", str(folder / "img_0000.png")], env=env, check=True, capture_output=True)
    store = Store(open_connection(None, home))
    run = subprocess.Popen(
        [_imagedb(), "ingest", str(folder), "--batch-size", "4"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    while _stored(store) < 20 and time.monotonic() < deadline:
        time.sleep(0.05)
    # Then the run must not finish before the server stops (300 images take ~3 s here, a fraction elsewhere): its
    # batches wait for the collection's write lock, held here, so the stop finds them mid-statement.
    collection = store.models.get_collection("default")
    assert collection is not None
    holder = store.another()
    holder.conn.execute("BEGIN")
    holder.conn.execute("SELECT pg_advisory_xact_lock(%s, %s)", (0x1A6E, collection.id))
    wait_for_a_batch_on_the_collection_lock(store, run)
    store.close()
    stop_embedded(home)
    holder.conn.close()  # its server is gone
    out, err = run.communicate(timeout=120)
    assert run.returncode == 1, (out, err)
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines[-1].startswith("Error: ") and "database" in lines[-1], err
    assert "Traceback" not in err
    # The next command starts the server again, and the rerun completes the job.
    again = subprocess.run([_imagedb(), "ingest", str(folder)], env=env, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    store = Store(open_connection(None, home))
    try:
        _consistent(store, 300)
    finally:
        store.close()
        stop_embedded(home)


def _hostile_files(folder: Path) -> tuple[set[str], dict[str, str]]:
    """Files that are odd but valid (to be stored) and files that are not (name -> a word of the reason)."""
    folder.mkdir()
    stored = set()
    Image.new("CMYK", (64, 48), (0, 128, 255, 0)).save(folder / "cmyk.jpg")
    Image.new("I;16", (64, 48), 40000).save(folder / "sixteen-bit.png")
    palette = Image.new("P", (64, 48), 3)
    palette.info["transparency"] = 3
    palette.save(folder / "palette-transparent.png", transparency=3)
    frames = [Image.new("RGB", (32, 32), c) for c in ((255, 0, 0), (0, 0, 255))]
    frames[0].save(folder / "animated.gif", save_all=True, append_images=frames[1:], duration=100)
    frames[0].save(folder / "animated.webp", save_all=True, append_images=frames[1:], duration=100)
    # A JPEG whose EXIF segment is garbage: the pixels are fine and must be kept.
    good = io.BytesIO()
    Image.new("RGB", (40, 30), (9, 9, 9)).save(good, "JPEG")
    data = good.getvalue()
    broken_exif = b"Exif\x00\x00MM\x00\x2a\xff\xff\xff\xff" + os.urandom(40)
    app1 = b"\xff\xe1" + (len(broken_exif) + 2).to_bytes(2, "big") + broken_exif
    (folder / "broken-exif.jpg").write_bytes(data[:2] + app1 + data[2:])
    for name in ("with spaces.png", "new\nline.png", "日本語の写真.png", "ünïcødé.png"):
        Image.new("RGB", (20, 20), (len(name), 50, 50)).save(folder / name)
    stored = {p.name for p in folder.iterdir()}
    os.symlink(folder, folder / "loop")  # a folder that contains itself
    os.symlink(folder / "b-link.jpg", folder / "a-link.jpg")
    os.symlink(folder / "a-link.jpg", folder / "b-link.jpg")
    Image.new("L", (20000, 20000)).save(folder / "bomb.png")  # 400 megapixels, a small file
    return stored, {"a-link.jpg": "cannot read", "b-link.jpg": "cannot read", "bomb.png": "decompression bomb"}


@pytest.mark.slow
def test_hostile_files_are_stored_or_recorded(store: Store, tmp_path: Path, tiny_model: str) -> None:
    stored, refused = _hostile_files(tmp_path / "hostile")
    summary = ingest(store, [tmp_path / "hostile"], model=ModelSpec.parse(tiny_model))
    names = {Path(p).name for (p,) in store.conn.execute("SELECT path FROM images").fetchall()}
    assert names == stored
    assert {Path(p).name: r for p, r in summary.errors}.keys() == refused.keys()
    for path, reason in summary.errors:
        assert refused[Path(path).name] in reason
    modes = store.conn.execute("SELECT format, width FROM images WHERE path LIKE '%animated%'").fetchall()
    assert sorted(modes) == [("GIF", 32), ("WEBP", 32)]
    _consistent(store, len(stored))
