"""A full disk under the database (issue 22, item 18): the error says so, where, and how much is free; after space
is freed a rerun stores the rest and builds the index the first bulk load dropped."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import psycopg
import pytest
from click.testing import CliRunner
from PIL import Image

from imagedb.cli import main
from imagedb.embed import ModelSpec
from imagedb.ingest import ingest
from imagedb.pg.database import open_connection
from imagedb.pg.diskspace import disk_full
from imagedb.pg.embedded import embedded_url, stop_embedded
from imagedb.pg.migrate import upgrade
from imagedb.store import Store
from imagedb.store.index import hnsw_index_name


def store_count(url: str, table: str) -> int:
    with psycopg.connect(url) as conn:
        return int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])


def _noise(folder: Path, count: int) -> Path:
    folder.mkdir()
    rng = np.random.default_rng(3)
    for i in range(count):  # noise compresses badly: each thumbnail takes tens of KB
        Image.fromarray((rng.random((256, 256, 3)) * 255).astype("uint8")).save(folder / f"noise_{i:03d}.png")
    return folder


def test_an_index_a_bulk_load_left_missing_is_built_by_the_next_ingest(
    store: Store, photos: Path, tiny_model: str
) -> None:
    spec = ModelSpec.parse(tiny_model)
    ingest(store, [photos], model=spec, bulk_threshold=1)  # the first load of the model: its index dropped, rebuilt
    model_id = store.conn.execute("SELECT model_id FROM collections").fetchone()[0]
    # What a load that failed after its batches (a full disk, the server gone) leaves: the index never rebuilt.
    store.conn.execute(f"DROP INDEX {hnsw_index_name(model_id)}")
    summary = ingest(store, [photos], model=spec)  # nothing new to store
    assert summary.added == 0
    assert store.index.valid_hnsw_indexes(model_id) == [hnsw_index_name(model_id)]


@pytest.mark.slow
@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("mount") is None, reason="mounting a tmpfs needs root")
def test_a_full_disk_is_said_and_a_rerun_after_freeing_space_restores_everything(
    tmp_path: Path, tiny_model: str
) -> None:
    images = _noise(tmp_path / "images", 120)
    disk = Path(tempfile.mkdtemp(prefix="imagedb-test-disk-"))  # outside pytest's root: see conftest.server_url
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=160m,mode=0755", "tmpfs", str(disk)]).returncode:
        pytest.skip("cannot mount a tmpfs here")
    home = disk / "home"
    try:
        url = embedded_url(home)
        upgrade(url)
        ballast = disk / "ballast"
        with ballast.open("wb") as out:  # leave 2 MB: the load fills it
            out.write(b"\0" * (shutil.disk_usage(disk).free - 2 * 2**20))
        spec = ModelSpec.parse(tiny_model)
        with Store(open_connection(url)) as store, pytest.raises(Exception) as failed:
            ingest(store, [images], model=spec, bulk_threshold=1, allow_random_weights=True)
        said = disk_full(failed.value, None, home)
        assert said is not None, failed.value
        assert f"disk is full: 0.0 MB free on the filesystem of the data directory {home / 'pgdata'}" in str(said)
        env = {"IMAGEDB_HOME": str(home)}
        again = CliRunner().invoke(main, ["ingest", str(images), "--model", tiny_model], env=env)
        assert again.exit_code == 1 and "Traceback" not in again.output, again.output
        errors = [line for line in again.output.splitlines() if line.startswith("Error")]
        assert len(errors) == 1 and "disk is full" in errors[0] and "MB free" in errors[0], again.output
        assert "rerun when the database is back" not in again.output

        # A search still answers: the text-query cache cannot keep its text, and need not.
        search = CliRunner().invoke(main, ["search", "a cat", "--json"], env=env)
        assert search.exit_code == 0, search.output
        assert store_count(url, "text_embeddings") == 0

        # A server that went away (here: stopped) while its disk is full: the connection error says nothing of
        # the disk, the message does.
        stop_embedded(home)
        with pytest.raises(psycopg.OperationalError) as gone:
            psycopg.connect(url, connect_timeout=5)
        assert "disk is full" in str(disk_full(gone.value, None, home)), gone.value

        ballast.unlink()
        rerun = CliRunner().invoke(main, ["ingest", str(images), "--model", tiny_model], env=env)
        assert rerun.exit_code == 0, rerun.output
        with Store(open_connection(url)) as store:
            assert store.conn.execute("SELECT count(*) FROM images").fetchone()[0] == 120
            assert store.conn.execute("SELECT count(*) FROM embeddings").fetchone()[0] == 120
            model_id = store.conn.execute("SELECT model_id FROM collections").fetchone()[0]
            assert store.index.valid_hnsw_indexes(model_id) == [hnsw_index_name(model_id)]
            assert [p for p in store.admin.problems() if "checkpoint" not in p] == []
    finally:
        stop_embedded(home)
        subprocess.run(["umount", "-l", str(disk)])
        shutil.rmtree(disk, ignore_errors=True)
