"""`imagedb ingest --watch` (issue 23, item 6): files created, moved in, renamed, deleted and written slowly, polling
for network folders, a database restart, and SIGTERM with the totals."""

from __future__ import annotations

import io
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imagedb.pg.database import open_connection
from imagedb.store import Store

from helpers import sigint_as_on_a_terminal


def _imagedb() -> str:
    found = shutil.which("imagedb", path=str(Path(sys.executable).parent)) or shutil.which("imagedb")
    assert found, "the imagedb console script is not installed"
    return found


def _png(seed: int, side: int = 64) -> bytes:
    pixels = (np.random.default_rng(seed).random((side, side, 3)) * 255).astype("uint8")
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "PNG")
    return out.getvalue()


def _paths(store: Store) -> dict[str, int]:
    rows = store.conn.execute("SELECT path, size_bytes FROM images").fetchall()
    return {path: size for path, size in rows}


def _until(check: Callable[[], bool], run: subprocess.Popen[str], seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert run.poll() is None, run.communicate()
        assert time.monotonic() < deadline, "not within the time"
        time.sleep(0.1)


def _start(folder: Path, env: dict[str, str], *more: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [_imagedb(), "ingest", "--watch", str(folder), "--settle", "0.5", *more],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=sigint_as_on_a_terminal,
    )


@pytest.mark.slow
def test_watch_follows_a_folder_then_stops_on_sigterm(
    store: Store, database_url: str, tmp_path: Path, tiny_model: str
) -> None:
    folder, outside = tmp_path / "photos", tmp_path / "elsewhere"
    folder.mkdir(), outside.mkdir()
    (folder / "first.png").write_bytes(_png(1))
    env = {**os.environ, "IMAGEDB_DATABASE_URL": database_url, "IMAGEDB_MODEL": tiny_model}
    run = _start(folder, env)
    try:
        _until(lambda: str(folder / "first.png") in _paths(store), run)
        (folder / "created.png").write_bytes(_png(2))  # created
        (outside / "moved.png").write_bytes(_png(3))
        os.rename(outside / "moved.png", folder / "moved.png")  # moved in
        (folder / "sub").mkdir()
        (folder / "sub" / "deep.png").write_bytes(_png(4))  # in a new folder
        (folder / "notes.txt").write_text("not an image")
        _until(lambda: {"created.png", "moved.png", "deep.png"} <= {Path(p).name for p in _paths(store)}, run)
        os.rename(folder / "created.png", folder / "renamed.png")  # renamed: the old name goes
        (folder / "first.png").unlink()  # deleted
        _until(lambda: {Path(p).name for p in _paths(store)} == {"renamed.png", "moved.png", "deep.png"}, run)
        # Written slowly, as a copy over a slow link: never stored half.
        data = _png(5, side=256)
        with open(folder / "slow.png", "wb") as slow:
            for start in range(0, len(data), len(data) // 8 + 1):
                slow.write(data[start : start + len(data) // 8 + 1])
                slow.flush()
                time.sleep(0.25)
        _until(lambda: str(folder / "slow.png") in _paths(store), run)
        assert _paths(store)[str(folder / "slow.png")] == len(data)
        assert store.conn.execute("SELECT count(*) FROM ingest_errors").fetchone() == (0,)
    finally:
        run.send_signal(signal.SIGTERM)
        out, err = run.communicate(timeout=60)
    assert run.returncode == 128 + signal.SIGTERM, (out, err)
    assert "Traceback" not in err
    # The renamed file's vector is reused; the deleted one and the old name are removed.
    assert "watch stopped: added 5, reused 1, removed 2, failed 0" in out, (out, err)


@pytest.mark.slow
def test_watch_by_polling(store: Store, database_url: str, tmp_path: Path, tiny_model: str) -> None:
    folder = tmp_path / "share"
    folder.mkdir()
    env = {**os.environ, "IMAGEDB_DATABASE_URL": database_url, "IMAGEDB_MODEL": tiny_model}
    (folder / "a.png").write_bytes(_png(6))
    run = _start(folder, env, "--poll")
    try:
        _until(lambda: len(_paths(store)) == 1, run)
        (folder / "b.png").write_bytes(_png(7))
        _until(lambda: len(_paths(store)) == 2, run)
    finally:
        run.send_signal(signal.SIGINT)
        out, err = run.communicate(timeout=60)
    assert run.returncode == 128 + signal.SIGINT, (out, err)
    assert "watch stopped: added 2" in out


@pytest.mark.slow
def test_watch_outlives_a_database_restart(tmp_path: Path, tiny_model: str) -> None:
    """Its own embedded server, so stopping it disturbs no other test."""
    from imagedb.pg.embedded import stop_embedded

    home, folder = tmp_path / "home", tmp_path / "photos"
    folder.mkdir()
    (folder / "a.png").write_bytes(_png(8))
    env = {**os.environ, "IMAGEDB_HOME": str(home), "IMAGEDB_MODEL": tiny_model}
    env.pop("IMAGEDB_DATABASE_URL", None)

    def stored() -> int:
        with Store(open_connection(None, home)) as store:
            return len(_paths(store))

    stored()  # the server started and the database made here, not by two processes at once
    run = _start(folder, env)
    try:
        _until(lambda: stored() == 1, run, seconds=120)
        stop_embedded(home)
        (folder / "b.png").write_bytes(_png(9))  # while the server is down
        time.sleep(3)
        assert run.poll() is None  # still watching
        _until(lambda: stored() == 2, run, seconds=120)  # the server is started again, by the watch or by us
    finally:
        run.send_signal(signal.SIGINT)
        out, err = run.communicate(timeout=60)
        stop_embedded(home)
    assert run.returncode == 128 + signal.SIGINT, (out, err)
    assert "watch stopped: added 2" in out, (out, err)


@pytest.mark.slow
def test_watch_outlives_losing_the_database_during_its_first_pass(
    store: Store, database_url: str, tmp_path: Path, tiny_model: str
) -> None:
    """The first pass was outside the watch's wait for the database: a connection ended during it (a restart, an
    operator's pg_terminate_backend) ended the watch with "database error: terminating connection ...", exit 1."""
    folder = tmp_path / "photos"
    folder.mkdir()
    for seed in range(120):
        (folder / f"{seed:03}.png").write_bytes(_png(seed, side=32))
    env = {**os.environ, "IMAGEDB_DATABASE_URL": database_url, "IMAGEDB_MODEL": tiny_model}
    started = store.conn.execute("SELECT clock_timestamp()").fetchone()[0]
    run = _start(folder, env, "--batch-size", "4")
    try:
        _until(lambda: len(_paths(store)) > 0, run)  # the first batches are stored, the pass goes on
        store.conn.execute(  # the watch's connections, no other test's
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database()"
            " AND pid <> pg_backend_pid() AND backend_type = 'client backend' AND backend_start > %s",
            (started,),
        )
        store.conn.commit()
        _until(lambda: len(_paths(store)) == 120, run)  # the pass, run again once the database answers
        (folder / "later.png").write_bytes(_png(500))
        _until(lambda: len(_paths(store)) == 121, run)
    finally:
        run.send_signal(signal.SIGTERM)
        out, err = run.communicate(timeout=60)
    assert run.returncode == 128 + signal.SIGTERM, (out, err)
    assert "database unavailable (" in err and "database back" in err, err  # the words depend on who noticed first
    assert "Traceback" not in err and "watch stopped: added" in out, (out, err)
