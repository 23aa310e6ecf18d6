"""Concurrent ingests, batches with nothing to store, and crashes: nothing is lost or stored twice."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from imagedb.embed import ModelSpec
from imagedb.ingest import ingest
from imagedb.store import Store


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


def test_killed_ingest_resumes_without_duplicates_or_orphans(
    store: Store, database_url: str, tmp_path: Path, tiny_model: str
) -> None:
    folder = _many_photos(tmp_path / "many", 200)
    env = {**os.environ, "IMAGEDB_DATABASE_URL": database_url, "IMAGEDB_MODEL": tiny_model}
    ingest(store, [folder / "img_0000.png"], model=ModelSpec.parse(tiny_model))
    rng = np.random.default_rng(5)
    for _ in range(3):
        run = subprocess.Popen([_imagedb(), "ingest", str(folder), "--batch-size", "8"], env=env)
        time.sleep(float(rng.uniform(1.5, 4.0)))
        run.send_signal(signal.SIGKILL)
        run.wait()
    stored = store.conn.execute("SELECT count(*) FROM images").fetchone()[0]
    store.conn.commit()
    _consistent(store, stored)
    final = subprocess.run([_imagedb(), "ingest", str(folder)], env=env, capture_output=True, text=True)
    assert final.returncode == 0, final.stderr
    assert f"skipped {stored} unchanged" in final.stdout
    _consistent(store, 200)
