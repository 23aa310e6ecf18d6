"""Ingests that share the work, Ctrl-C with a summary, failed files retried only once changed, and forget that
remembers (issue 23, items 3-5)."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from imagedb import ingest_claims
from imagedb.cli import main
from imagedb.embed import Embedder, ModelSpec
from imagedb.ingest import IngestSummary, ingest
from imagedb.pg.database import open_connection
from imagedb.store import Store

from helpers import sigint_as_on_a_terminal

WRITE_LOCK = 0x1A6E  # store/images.py _WRITE_LOCK: held here, it stops every batch of a collection from committing


def _imagedb() -> str:
    found = shutil.which("imagedb", path=str(Path(sys.executable).parent)) or shutil.which("imagedb")
    assert found, "the imagedb console script is not installed"
    return found


def _many_photos(folder: Path, count: int, seed: int = 11) -> Path:
    folder.mkdir()
    rng = np.random.default_rng(seed)
    for i in range(count):
        pixels = (rng.random((48, 64, 3)) * 255).astype("uint8")
        Image.fromarray(pixels).save(folder / f"img_{i:04d}.png")
    return folder


def _count(store: Store, query: str) -> int:
    value = store.conn.execute(query).fetchone()[0]  # type: ignore[index]
    return int(value)


@pytest.fixture
def embedded_count(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many images the model embedded, over every run in this process (the real model still runs)."""
    counted = [0]
    encode = Embedder.encode_images
    lock = threading.Lock()

    def counting(self: Embedder, images: list[object]) -> np.ndarray:
        with lock:
            counted[0] += len(images)
        return encode(self, images)

    monkeypatch.setattr(Embedder, "encode_images", counting)
    return counted


@pytest.mark.slow
def test_two_concurrent_ingests_divide_the_files(
    store: Store, database_url: str, tmp_path: Path, tiny_model: str, embedded_count: list[int]
) -> None:
    folder = _many_photos(tmp_path / "many", 120)
    spec = ModelSpec.parse(tiny_model)
    ingest(store, [folder / "img_0000.png"], model=spec)  # the collection exists
    embedded_count[0] = 0
    collection = store.models.get_collection("default")
    assert collection is not None
    # Both runs must be under way at once, whatever the machine's speed: their batches wait for the collection's
    # write lock, held here, until each run has claimed files.
    holder = store.another()
    holder.conn.execute("BEGIN")
    holder.conn.execute("SELECT pg_advisory_xact_lock(%s, %s)", (WRITE_LOCK, collection.id))
    summaries: list[IngestSummary] = []
    failures: list[BaseException] = []

    def run() -> None:
        try:
            with Store(open_connection(database_url)) as own:
                summaries.append(ingest(own, [folder], batch_size=4))
        except BaseException as exc:  # reported by the test, not lost in the thread
            failures.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 120
    while _count(store, "SELECT count(DISTINCT run_id) FROM ingest_claims") < 2:
        assert time.monotonic() < deadline and not failures, failures
        time.sleep(0.05)
    holder.conn.execute("COMMIT")
    for thread in threads:
        thread.join(timeout=300)
    assert not failures, failures
    first, second = summaries
    # Every image stored once and embedded once in all, the work divided, and each summary adds up.
    assert embedded_count[0] == 119
    assert first.added + second.added == 119 and first.added > 0 and second.added > 0
    for mine, other in ((first, second), (second, first)):
        assert mine.skipped == 1 and mine.busy == 0 and mine.failed == 0
        assert mine.added + mine.by_others == 119, (mine, other)
        assert mine.by_others == other.added
    assert _count(store, "SELECT count(*) FROM images") == 120
    assert _count(store, "SELECT count(*) FROM embeddings") == 120
    assert _count(store, "SELECT count(*) FROM ingest_claims") == 0  # each run released its claims
    holder.close()


def _hold_claims(database_url: str, collection_id: int, paths: list[str]) -> Store:
    """A session that claims `paths` as a run of its own would, and keeps them while it lives."""
    other = Store(open_connection(database_url))
    run_id = other.images.start_run(collection_id)
    other.claims.hold_run(run_id)
    assert other.claims.claim(collection_id, run_id, paths) == set(paths)
    return other


def test_files_of_a_claimer_that_dies_are_taken_over(
    store: Store, database_url: str, photos: Path, tiny_model: str, embedded_count: list[int]
) -> None:
    spec = ModelSpec.parse(tiny_model)
    ingest(store, [photos / "coffee.jpg"], model=spec)
    collection = store.models.get_collection("default")
    assert collection is not None
    held = [str(photos / "rocket.jpg"), str(photos / "camera.jpg")]
    other = _hold_claims(database_url, collection.id, held)
    # The claimer's session ends (a crash, a kill) while this run waits for those files: it takes them over.
    threading.Timer(1.0, other.close).start()
    summary = ingest(store, [photos])
    assert (summary.added, summary.skipped, summary.by_others, summary.busy) == (11, 1, 0, 0)
    assert _count(store, "SELECT count(*) FROM images") == 12
    assert embedded_count[0] == 12


def test_files_another_run_keeps_are_reported_as_being_ingested(
    store: Store, database_url: str, photos: Path, tiny_model: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = ModelSpec.parse(tiny_model)
    ingest(store, [photos / "coffee.jpg"], model=spec)
    collection = store.models.get_collection("default")
    assert collection is not None
    other = _hold_claims(database_url, collection.id, [str(photos / "rocket.jpg")])
    monkeypatch.setattr(ingest_claims, "WAIT_FOR_OTHERS_S", 0.5)
    monkeypatch.setenv("IMAGEDB_DATABASE_URL", database_url)
    result = CliRunner().invoke(main, ["ingest", str(photos)], catch_exceptions=False)
    other.close()
    assert result.exit_code == 0, result.output
    assert "added 10, reused 0, skipped 1 unchanged, failed 0, watch hits 0, 1 skipped: being ingested by" in (
        result.output
    )
    assert _count(store, "SELECT count(*) FROM images") == 11


def _wait_stored(store: Store, at_least: int, run: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 120
    while _count(store, "SELECT count(*) FROM images") < at_least:
        assert run.poll() is None and time.monotonic() < deadline, run.communicate()
        time.sleep(0.02)


@pytest.mark.slow
@pytest.mark.parametrize("sent", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_prints_what_was_kept_and_how_to_continue(
    store: Store, database_url: str, tmp_path: Path, tiny_model: str, sent: signal.Signals
) -> None:
    folder = _many_photos(tmp_path / "many", 300)
    env = {**os.environ, "IMAGEDB_DATABASE_URL": database_url, "IMAGEDB_MODEL": tiny_model}
    ingest(store, [folder / "img_0000.png"], model=ModelSpec.parse(tiny_model))
    command = [_imagedb(), "ingest", str(folder), "--batch-size", "4"]
    run = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=sigint_as_on_a_terminal
    )
    _wait_stored(store, 30, run)
    run.send_signal(sent)
    out, err = run.communicate(timeout=60)
    assert run.returncode == 128 + sent, (out, err)
    assert "Traceback" not in err and "Aborted" not in err
    added = int(re.search(r"default: added (\d+), reused 0, skipped 1 unchanged", out).group(1))  # type: ignore[union-attr]
    stored = _count(store, "SELECT count(*) FROM images")
    assert 30 <= stored < 300, (out, err)
    assert added == stored - 1, (out, err)  # exactly what was committed
    assert f"to continue: imagedb ingest {folder} --batch-size 4" in err
    again = subprocess.run(command, env=env, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    assert f"added {300 - stored}, reused 0, skipped {stored} unchanged" in again.stdout
    assert _count(store, "SELECT count(*) FROM ingest_claims") == 0


def test_failed_files_are_retried_only_once_changed(store: Store, photos: Path, tiny_model: str) -> None:
    broken = photos / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    spec = ModelSpec.parse(tiny_model)
    first = ingest(store, [photos], model=spec)
    assert (first.added, first.failed) == (12, 1)
    again = ingest(store, [photos])
    assert (again.failed, again.failed_unchanged, again.errors) == (0, 1, [])
    os.utime(broken, ns=(time.time_ns(), time.time_ns() + 10**9))  # touched: tried again
    touched = ingest(store, [photos])
    assert (touched.failed, touched.failed_unchanged) == (1, 0)
    forced = ingest(store, [photos], retry_failed=True)
    assert (forced.failed, forced.failed_unchanged) == (1, 0)
    Image.new("RGB", (32, 32), (1, 2, 3)).save(broken, "JPEG")  # mended: stored
    mended = ingest(store, [photos])
    assert (mended.added, mended.failed, mended.failed_unchanged) == (1, 0, 0)


def test_forget_keeps_a_file_out_until_unforget(
    store: Store, database_url: str, photos: Path, tiny_model: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("IMAGEDB_DATABASE_URL", database_url)

    def cli(*args: str) -> str:
        result = CliRunner().invoke(main, list(args), catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return result.output

    cli("ingest", str(photos), "--model", tiny_model)
    cli("forget", str(photos / "rocket.jpg"), "--yes")
    assert "1 forgotten, left out (imagedb unforget)" in cli("ingest", str(photos))
    assert "11 images" in cli("db", "info") and "1 forgotten file(s) left out" in cli("db", "info")
    # By content: the same bytes under another name stay out too.
    cli("forget", "camera.jpg", "--yes", "--content")
    shutil.copy(photos / "camera.jpg", photos / "copy-of-camera.jpg")
    out = cli("ingest", str(photos))
    assert "added 0, reused 0, skipped 10 unchanged" in out and "3 forgotten, left out" in out
    assert _count(store, "SELECT count(*) FROM images") == 10
    assert "1 file(s) no longer left out" in cli("unforget", str(photos / "rocket.jpg"))
    out = cli("ingest", str(photos))
    assert "added 1, reused 0, skipped 10 unchanged" in out and "2 forgotten, left out" in out
    cli("ingest", str(photos), "--include-forgotten")
    assert _count(store, "SELECT count(*) FROM images") == 13
    assert "0 forgotten file(s) left out" in cli("db", "info")


def test_a_file_named_like_a_frame_is_forgotten_alone(store: Store, tmp_path: Path, tiny_model: str) -> None:
    """A fourth outside attack: paths were cut at the first `#frame=`, so forgetting `a.png#frame=1.png` also left
    `a.png` out of every later ingest (and shared its lock)."""
    from imagedb.roles import forget

    folder = tmp_path / "frames"
    folder.mkdir()
    Image.new("RGB", (32, 32), (200, 10, 10)).save(folder / "a.png")
    Image.new("RGB", (32, 32), (10, 200, 10)).save(folder / "a.png#frame=1.png")
    ingest(store, [folder], model=ModelSpec.parse(tiny_model))
    forget(store, "default", [str(folder / "a.png#frame=1.png")])
    os.utime(folder / "a.png", ns=(time.time_ns(), time.time_ns() + 10**9))  # changed: to be stored again
    again = ingest(store, [folder])
    assert (again.added + again.reused, again.forgotten) == (1, 1), again
    assert _count(store, "SELECT count(*) FROM images") == 1
    # A verifying attack: a DICOM file named `b.png#frame=1` is a file, not b.png's frame.
    from pydicom.data import get_testdata_file

    shutil.copy(str(get_testdata_file("MR_small.dcm")), folder / "b.png#frame=1")
    Image.new("RGB", (32, 32), (10, 10, 200)).save(folder / "b.png")
    assert ingest(store, [folder, folder / "b.png#frame=1"]).added == 2  # named: a folder's walk leaves it out
    forget(store, "default", [str(folder / "b.png#frame=1")])
    os.utime(folder / "b.png", ns=(time.time_ns(), time.time_ns() + 2 * 10**9))
    last = ingest(store, [folder])
    assert (last.added + last.reused, last.forgotten) == (1, 1), last  # b.png again; a.png#frame=1.png left out
    assert _count(store, "SELECT count(*) FROM images") == 2


def test_unforget_of_nothing_forgotten_is_one_line(database_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMAGEDB_DATABASE_URL", database_url)
    result = CliRunner().invoke(main, ["unforget"])
    assert result.exit_code == 2 and "give FILES or --all" in result.output
