"""Changing a collection's model with no downtime (`imagedb models add/use/drop`), provenance per vector,
checkpoints verified, weightless specs refused; all on the embedded server with two tiny checkpoints."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psycopg
import pytest
from click.testing import CliRunner
from PIL import Image

from imagedb import search
from imagedb.cli import main
from imagedb.embed import ModelSpec
from imagedb.ingest import ingest
from imagedb.pg.connection import sqlalchemy_url
from imagedb.pg.database import open_connection
from imagedb.pg.migrate import alembic_config
from imagedb.query import parse
from imagedb.request import SearchRequest
from imagedb.store import Store

from tiny_model import make_tiny_model


@pytest.fixture(scope="session")
def model_b(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A second tiny model: the same architecture, other weights."""
    return make_tiny_model(tmp_path_factory.mktemp("model-b"), seed=1)


def _imagedb() -> str:
    found = shutil.which("imagedb", path=str(Path(sys.executable).parent)) or shutil.which("imagedb")
    assert found, "the imagedb console script is not installed"
    return found


def _cli(database_url: str, *args: str) -> object:
    return CliRunner().invoke(main, ["--database-url", database_url, *args])


def _folder(path: Path, count: int, seed: int) -> Path:
    path.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        Image.fromarray((rng.random((40, 52, 3)) * 255).astype("uint8")).save(path / f"img_{seed}_{i:03d}.png")
    return path


def _model_id(store: Store, spec: str) -> int:
    parsed = ModelSpec.parse(spec)
    record = store.models.model_record(parsed.name, parsed.pretrained)
    assert record is not None
    return record.id


def _count(store: Store, model_id: int) -> int:
    return store.models.embedding_count(model_id)


class SearchLoop:
    """Searches the collection over and over from its own connection, recording which model answered."""

    def __init__(self, database_url: str, collection: str) -> None:
        self.store = Store(open_connection(database_url))
        self.collection = collection
        self.seen: list[tuple[int, list[int]]] = []
        self.errors: list[BaseException] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                plan = search.plan(
                    self.store, SearchRequest(parse(["a red square"]), collection=self.collection, limit=5)
                )
                results = search.nearest(self.store, plan, search.query_vector(plan))
                self.seen.append((plan.target.model_id, [r.image_id for r in results]))
            except BaseException as exc:  # noqa: BLE001 - every failure is the finding
                self.errors.append(exc)
            time.sleep(0.01)

    def __enter__(self) -> SearchLoop:
        self._thread.start()
        return self

    def mark(self, more: int = 3) -> int:
        """How many searches are done, once `more` searches have finished since the call (a stuck loop fails)."""
        wanted, deadline = len(self.seen) + more, time.monotonic() + 60
        while len(self.seen) < wanted and not self.errors:
            assert time.monotonic() < deadline, "the searches stopped"
            time.sleep(0.02)
        return len(self.seen)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)
        self.store.close()


@pytest.mark.slow
def test_change_model_with_no_downtime(
    store: Store, database_url: str, tmp_path: Path, tiny_model: str, model_b: str
) -> None:
    folder = _folder(tmp_path / "photos", 40, seed=1)
    ingest(store, [folder], collection="c", model=ModelSpec.parse(tiny_model))
    a = _model_id(store, tiny_model)
    ids = sorted(r[0] for r in store.conn.execute("SELECT id FROM images").fetchall())
    expected_a = [
        r.image_id for r in search.search(store, SearchRequest(parse(["a red square"]), collection="c", limit=5))
    ]
    env = {**os.environ, "IMAGEDB_DATABASE_URL": database_url}

    with SearchLoop(database_url, "c") as loop:
        # Hold image 20 (in id order) so that `models add` blocks on it after 19 images, then kill it there.
        blocker = psycopg.connect(database_url)
        blocker.execute("SELECT 1 FROM images WHERE id = %s FOR UPDATE", (ids[19],))
        run = subprocess.Popen(
            [_imagedb(), "models", "add", model_b, "-c", "c", "--batch-size", "1"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + 90
        b = None
        while time.monotonic() < deadline and run.poll() is None:
            record = store.models.model_record(*ModelSpec.parse(model_b).__dict__.values())
            if record is not None and _count(store, record.id) >= 19:
                b = record.id
                break
            time.sleep(0.05)
        assert b is not None, run.communicate()
        time.sleep(0.3)
        assert _count(store, b) == 19  # blocked on image 20

        # Attacks while it runs: a second add of the same model, switching to it, dropping the search model.
        second = _cli(database_url, "models", "add", model_b, "-c", "c")
        assert second.exit_code == 1 and "is running" in second.output, second.output
        early = _cli(database_url, "models", "use", model_b, "-c", "c")
        assert early.exit_code == 1 and "not fully added" in early.output, early.output
        only = _cli(database_url, "models", "drop", tiny_model, "-c", "c", "--yes")
        assert only.exit_code == 2 and "searches with" in only.output, only.output

        run.send_signal(signal.SIGKILL)
        run.wait()
        blocker.rollback()
        blocker.close()
        assert _count(store, b) == 19

        # New images while the add is unfinished get vectors of both models.
        more = _folder(tmp_path / "more", 5, seed=2)
        summary = ingest(store, [more], collection="c")
        new_ids = [
            r[0] for r in store.conn.execute("SELECT id FROM images WHERE path LIKE %s", (f"{more}/%",)).fetchall()
        ]
        both = store.conn.execute(
            "SELECT model_id, count(*), min(run_id), max(run_id) FROM embeddings WHERE image_id = ANY(%s)"
            " GROUP BY model_id ORDER BY model_id",
            (new_ids,),
        ).fetchall()
        assert both == [(a, 5, summary.run_id, summary.run_id), (b, 5, summary.run_id, summary.run_id)]

        resumed = _cli(database_url, "models", "add", model_b, "-c", "c")
        assert resumed.exit_code == 0, resumed.output
        assert "embedded 21" in resumed.output and "ready" in resumed.output  # 40 - 19, the 5 new ones had it
        assert _count(store, b) == 45 and _count(store, a) == 45
        assert store.index.valid_hnsw_indexes(b) == [f"embeddings_hnsw_{b}"]
        before_switch = loop.mark()

        # Compare before switching: search --model B answers from B, the default still from A.
        compared = _cli(database_url, "search", "a red square", "-c", "c", "--model", model_b, "--json", "-k", "5")
        assert compared.exit_code == 0, compared.output
        query_b = SearchRequest(parse(["a red square"]), collection="c", model=ModelSpec.parse(model_b), limit=5)
        expected_b = [r.image_id for r in search.search(store, query_b)]
        assert expected_b != expected_a  # the two models rank differently, so the loop tells them apart

        used = _cli(database_url, "models", "use", model_b, "-c", "c")
        assert used.exit_code == 0, used.output
        after_switch = loop.mark()
        dropped = _cli(database_url, "models", "drop", tiny_model, "-c", "c", "--yes")
        assert dropped.exit_code == 0, dropped.output
        dropped_at = len(loop.seen)
        after_drop = loop.mark()  # three more searches, all after the drop

    assert loop.errors == []
    during_add = loop.seen[:before_switch]
    assert during_add and all(m == a for m, _ in during_add)
    assert all(r == expected_a for m, r in loop.seen[: before_switch - 1] if len(r) == 5)
    assert all(m == b and r == expected_b for m, r in loop.seen[after_switch:])
    assert after_drop >= dropped_at + 3 and all(m == b for m, _ in loop.seen[dropped_at:])
    # A is gone: its vectors, its index, its registration; B untouched.
    assert store.conn.execute("SELECT count(*) FROM embeddings WHERE model_id = %s", (a,)).fetchone()[0] == 0
    assert store.index.valid_hnsw_indexes(a) == []
    assert store.conn.execute("SELECT to_regclass(%s)", (f"embeddings_hnsw_{a}",)).fetchone()[0] is None
    assert store.models.model_record(*ModelSpec.parse(tiny_model).__dict__.values()) is None
    assert _count(store, b) == 45 and store.index.valid_hnsw_indexes(b)
    assert store.admin.problems() == []
    # Every vector names the run that made it: the two `models add` runs and the ingest.
    runs = store.conn.execute(
        "SELECT r.command, count(*) FROM embeddings e JOIN ingest_runs r ON r.id = e.run_id GROUP BY r.command"
    ).fetchall()
    assert dict(runs) == {"models add": 40, "ingest": 5}


def test_search_loop_sees_added_images_of_the_new_model_only_after_the_switch(
    store: Store, database_url: str, tmp_path: Path, tiny_model: str, model_b: str
) -> None:
    """The only model cannot be dropped; a model the collection does not hold cannot be searched or used."""
    ingest(store, [_folder(tmp_path / "p", 3, seed=3)], model=ModelSpec.parse(tiny_model))
    only = _cli(database_url, "models", "drop", tiny_model, "--yes")
    assert only.exit_code == 2 and "holds no other model" in only.output, only.output
    assert _count(store, _model_id(store, tiny_model)) == 3
    for args in (["search", "x", "--model", model_b], ["models", "use", model_b], ["models", "drop", model_b, "--yes"]):
        result = _cli(database_url, *args)
        assert result.exit_code != 0 and "holds no model" in result.output, result.output
        assert len(result.output.strip().splitlines()[-1]) > 20  # one readable line, no traceback
        assert "Traceback" not in result.output


def _copied_checkpoint(model: str, folder: Path) -> tuple[Path, str]:
    """A copy of `model`'s checkpoint and config in `folder`, to replace or delete: its path, and its --model value."""
    folder.mkdir()
    original = Path(model.split(":", 1)[1])
    for source in original.parent.iterdir():
        shutil.copy(source, folder / source.name)
    checkpoint = folder / original.name
    return checkpoint, f"{ModelSpec.parse(model).name}:{checkpoint}"


@pytest.mark.slow
def test_a_checkpoint_replaced_in_place_is_refused(
    store: Store, database_url: str, tmp_path: Path, tiny_model: str, model_b: str
) -> None:
    checkpoint, spec = _copied_checkpoint(tiny_model, tmp_path / "weights")
    photos = _folder(tmp_path / "p", 4, seed=4)
    ingest(store, [photos / "img_4_000.png"], collection="c", model=ModelSpec.parse(spec))
    record = store.models.model_record(*ModelSpec.parse(spec).__dict__.values())
    assert record is not None
    assert record.checkpoint_sha256 == hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    assert _cli(database_url, "db", "check").exit_code == 0

    shutil.copy(Path(model_b.split(":", 1)[1]), checkpoint)  # other weights under the same path
    refused = _cli(database_url, "ingest", str(photos), "-c", "c")
    assert refused.exit_code == 1 and "changed since it was registered" in refused.output, refused.output
    assert store.conn.execute("SELECT count(*) FROM images").fetchone()[0] == 1
    ingest(store, [photos / "img_4_000.png"], collection="other", model=ModelSpec.parse(tiny_model))
    add = _cli(database_url, "models", "add", spec, "-c", "other")
    assert add.exit_code == 1 and "changed since it was registered" in add.output, add.output
    assert store.models.embedding_count(record.id) == 1
    check = _cli(database_url, "db", "check")
    assert check.exit_code == 1 and f"checkpoint {checkpoint} of model" in check.output, check.output
    checkpoint.unlink()
    missing = _cli(database_url, "db", "check")
    assert missing.exit_code == 1 and "is missing" in missing.output, missing.output


@pytest.mark.slow
def test_a_search_refuses_a_replaced_checkpoint_and_caches_nothing(
    store: Store, database_url: str, tmp_path: Path, tiny_model: str, model_b: str
) -> None:
    """A search that must run the model (a text not cached, an image file) verifies the weights file as ingest
    does. It did not: other weights under the registered path embedded the text silently, the wrong vector went
    into the text-query cache, and that text kept its wrong results after the right file was put back."""
    checkpoint, spec = _copied_checkpoint(tiny_model, tmp_path / "weights")
    photos = _folder(tmp_path / "p", 3, seed=6)
    ingest(store, [photos], collection="c", model=ModelSpec.parse(spec))
    cached = _cli(database_url, "search", "a text asked before", "-c", "c")
    assert cached.exit_code == 0, cached.output

    shutil.copy(Path(model_b.split(":", 1)[1]), checkpoint)  # other weights under the same path
    for query in (["a text never asked"], ["--image", str(photos / "img_6_000.png")]):
        refused = _cli(database_url, "search", *query, "-c", "c")
        assert refused.exit_code == 1 and "changed since it was registered" in refused.output, refused.output
        assert "Traceback" not in refused.output
    texts = [r[0] for r in store.conn.execute("SELECT text FROM text_embeddings ORDER BY text").fetchall()]
    assert texts == ["a text asked before"]
    assert _cli(database_url, "search", "a text asked before", "-c", "c").exit_code == 0  # no model needed


@pytest.mark.slow
def test_models_use_refuses_a_model_whose_checkpoint_is_gone_or_changed(
    store: Store, database_url: str, tmp_path: Path, tiny_model: str, model_b: str
) -> None:
    """`models use` switched a collection to a model whose checkpoint was truncated on disk,
    said so as a success, and every text search failed from then on. It now checks the weights file first."""
    folder = tmp_path / "b"
    folder.mkdir()
    for source in Path(model_b.split(":", 1)[1]).parent.iterdir():
        shutil.copy(source, folder / source.name)
    checkpoint = folder / Path(model_b.split(":", 1)[1]).name
    spec_b = f"{ModelSpec.parse(model_b).name}:{checkpoint}"
    ingest(store, [_folder(tmp_path / "p", 3, seed=7)], collection="c", model=ModelSpec.parse(tiny_model))
    assert _cli(database_url, "models", "add", spec_b, "-c", "c").exit_code == 0
    good = checkpoint.read_bytes()
    searched = "SELECT model_id FROM collections WHERE name = 'c'"
    before = store.conn.execute(searched).fetchone()[0]
    for damage, words in (
        (lambda: checkpoint.write_bytes(good[:1000]), "changed since"),
        (checkpoint.unlink, "not found"),
    ):
        damage()
        refused = _cli(database_url, "models", "use", spec_b, "-c", "c")
        assert refused.exit_code == 1 and words in refused.output and "Traceback" not in refused.output, refused.output
        assert store.conn.execute(searched).fetchone()[0] == before
    checkpoint.write_bytes(good)
    assert _cli(database_url, "models", "use", spec_b, "-c", "c").exit_code == 0
    assert store.conn.execute(searched).fetchone()[0] != before


def test_a_weightless_spec_is_refused_with_the_known_tags(database_url: str, store: Store, tmp_path: Path) -> None:
    photos = _folder(tmp_path / "p", 2, seed=5)
    result = _cli(database_url, "ingest", str(photos), "-c", "c2", "--model", "ViT-B-32")
    assert result.exit_code == 2, result.output
    assert "names no weights" in result.output and "laion2b_s34b_b79k" in result.output
    assert "--allow-random-weights" in result.output
    assert store.models.get_collection("c2") is None
    unknown = _cli(database_url, "ingest", str(photos), "--model", "NoSuchNet")
    assert unknown.exit_code == 2 and "has no model architecture 'NoSuchNet'" in unknown.output, unknown.output


@pytest.mark.slow
def test_random_weights_only_when_asked_and_the_same_in_every_process(
    database_url: str, store: Store, tmp_path: Path
) -> None:
    """The issue's case: `ViT-B-32` alone gave random weights that differed on every run, so searching by one of
    the collection's own images ranked another first. Now refused; asked for, the same weights in every process."""
    photos = _folder(tmp_path / "p", 3, seed=6)
    refused = _cli(database_url, "ingest", str(photos), "--model", "ViT-B-32")
    assert refused.exit_code == 2 and "names no weights" in refused.output, refused.output
    env = {**os.environ, "IMAGEDB_DATABASE_URL": database_url}
    run = [_imagedb(), "ingest", str(photos), "--model", "ViT-B-32", "--allow-random-weights"]
    allowed = subprocess.run(run, env=env, capture_output=True, text=True)
    assert allowed.returncode == 0, allowed.stderr
    assert "loading ViT-B-32 (random weights) ..." in allowed.stderr
    assert store.conn.execute("SELECT checkpoint_sha256 FROM embedding_models").fetchone()[0] is None
    # In a new process, as the user searched: the same random weights, so the image itself comes first.
    image = sorted(photos.iterdir())[1]
    found = subprocess.run([_imagedb(), "search", "--image", str(image), "-k", "1", "--paths"], env=env,
                           capture_output=True, text=True)  # fmt: skip
    assert found.returncode == 0, found.stderr
    assert found.stdout.strip() == str(image)


def test_provenance_is_recorded_and_listed(store: Store, database_url: str, tmp_path: Path, tiny_model: str) -> None:
    summary = ingest(store, [_folder(tmp_path / "p", 3, seed=7)], model=ModelSpec.parse(tiny_model))
    row = store.conn.execute(
        "SELECT checkpoint_sha256, checkpoint_bytes, open_clip_version, torch_version, preprocess, tokenizer"
        " FROM embedding_models"
    ).fetchone()
    checkpoint = Path(tiny_model.split(":", 1)[1])
    import open_clip
    import torch

    assert row[0] == hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    assert row[1] == checkpoint.stat().st_size
    assert (row[2], row[3]) == (open_clip.__version__, torch.__version__)
    assert row[4]["size"] == [64, 64] and row[4]["mean"] and row[4]["std"] and row[4]["resize_mode"]
    assert "Tokenizer" in row[5]
    runs = store.conn.execute("SELECT DISTINCT e.run_id, r.model_id FROM embeddings e JOIN ingest_runs r"
                              " ON r.id = e.run_id").fetchall()  # fmt: skip
    assert runs == [(summary.run_id, _model_id(store, tiny_model))]
    listed = _cli(database_url, "models", "list")
    assert listed.exit_code == 0, listed.output
    assert "[search]  3/3 vectors, dim 32, index valid" in listed.output
    assert f"sha256 {row[0]}" in listed.output and f"open_clip {open_clip.__version__}" in listed.output


def test_repeated_text_query_needs_no_model(
    store: Store, database_url: str, tmp_path: Path, tiny_model: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    ingest(store, [_folder(tmp_path / "p", 6, seed=8)], model=ModelSpec.parse(tiny_model))
    with pytest.raises(psycopg.errors.RaiseException, match="has not been embedded by model") as raised:
        store.conn.execute("SELECT * FROM imagedb_search_text('a blue sky', 'default', 3)").fetchall()
    assert "imagedb search 'a blue sky'" in (raised.value.diag.message_hint or "")
    first = search.search(store, SearchRequest(parse(["a blue sky"]), limit=3))

    def no_model(spec: ModelSpec) -> None:
        raise AssertionError("the model was loaded for a cached text")

    monkeypatch.setattr(search.embed, "load", no_model)
    plan = search.plan(store, SearchRequest(parse(["a blue sky"]), limit=3))
    assert not plan.needs_model
    again = search.search(store, SearchRequest(parse(["a blue sky"]), limit=3))
    assert [(r.image_id, r.score) for r in again] == [(r.image_id, r.score) for r in first]
    rows = store.conn.execute("SELECT image_id, score FROM imagedb_search_text('a blue sky', 'default', 3)").fetchall()
    assert [r[0] for r in rows] == [r.image_id for r in first]
    assert np.allclose([r[1] for r in rows], [r.score for r in first], atol=1e-3)
    with pytest.raises(psycopg.errors.RaiseException, match="no collection named"):
        store.conn.execute("SELECT * FROM imagedb_search_text('a blue sky', 'nope', 3)").fetchall()


@pytest.mark.slow
def test_the_cli_says_when_it_loads_a_model_and_not_on_a_cached_query(
    store: Store, database_url: str, tmp_path: Path, tiny_model: str
) -> None:
    ingest(store, [_folder(tmp_path / "p", 4, seed=9)], model=ModelSpec.parse(tiny_model))
    env = {**os.environ, "IMAGEDB_DATABASE_URL": database_url}
    first = subprocess.run([_imagedb(), "search", "a green field"], env=env, capture_output=True, text=True)
    assert first.returncode == 0, first.stderr
    assert first.stderr.splitlines() == [f"loading imagedb-tiny-clip ({tiny_model.split(':', 1)[1]}) ..."]
    again = subprocess.run([_imagedb(), "search", "a green field"], env=env, capture_output=True, text=True)
    assert again.returncode == 0 and again.stderr == "" and again.stdout == first.stdout


def test_a_text_cache_write_refused_does_not_fail_the_search(
    store: Store, database_url: str, tmp_path: Path, tiny_model: str
) -> None:
    ingest(store, [_folder(tmp_path / "p", 3, seed=10)], model=ModelSpec.parse(tiny_model))
    store.conn.execute("SET default_transaction_read_only = on")  # as on a replica
    results = search.search(store, SearchRequest(parse(["a yellow boat"]), limit=2))
    assert len(results) == 2
    store.conn.execute("SET default_transaction_read_only = off")
    assert store.conn.execute("SELECT count(*) FROM text_embeddings").fetchone()[0] == 0


def test_an_api_text_query_is_cached_for_the_api_and_sql(
    database_url: str, store: Store, tmp_path: Path, tiny_model: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fastapi.testclient import TestClient

    from imagedb.api import create_app

    ingest(store, [_folder(tmp_path / "p", 5, seed=11)], model=ModelSpec.parse(tiny_model))
    client = TestClient(create_app(database_url), base_url="http://localhost")
    first = client.get("/api/search", params={"q": "an orange cat", "limit": 3})
    assert first.status_code == 200, first.text

    def no_model(spec: ModelSpec) -> None:
        raise AssertionError("the model was loaded for a cached text")

    monkeypatch.setattr(search.embed, "load", no_model)
    again = client.get("/api/search", params={"q": "an orange cat", "limit": 3})
    assert again.json() == first.json()
    rows = store.conn.execute("SELECT image_id FROM imagedb_search_text('an orange cat', 'default', 3)").fetchall()
    assert [r[0] for r in rows] == [r["id"] for r in first.json()["results"]]


def test_models_add_refuses_the_search_model_and_a_weightless_spec(
    database_url: str, store: Store, tmp_path: Path, tiny_model: str
) -> None:
    ingest(store, [_folder(tmp_path / "p", 2, seed=12)], model=ModelSpec.parse(tiny_model))
    same = _cli(database_url, "models", "add", tiny_model)
    assert same.exit_code == 2 and "nothing to add" in same.output, same.output
    weightless = _cli(database_url, "models", "add", "ViT-B-32")
    assert weightless.exit_code == 2 and "laion2b_s34b_b79k" in weightless.output, weightless.output
    assert store.conn.execute("SELECT count(*) FROM collection_models").fetchone()[0] == 1
    assert store.conn.execute("SELECT count(*) FROM embedding_models").fetchone()[0] == 1


def test_the_migration_keeps_existing_collections_and_their_writers(server_url: str, tmp_path: Path) -> None:
    """A database at the revision before (dicom) with a collection and a writer role: after the upgrade the
    collection holds its model,
    runs name it, the writer may read the registry and the text cache; and the downgrade undoes it all."""
    from alembic import command
    from sqlalchemy import create_engine

    from conftest import with_database

    name = f"imagedb_models_migration_{os.getpid()}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name}")
        conn.execute(f"CREATE DATABASE {name}")
    url = with_database(server_url, name)
    engine = create_engine(sqlalchemy_url(url))
    cfg = alembic_config()

    def migrate(step: object, revision: str) -> None:
        with engine.begin() as conn:
            cfg.attributes["connection"] = conn
            step(cfg, revision)  # type: ignore[operator]

    role = f"old_writer_{os.getpid()}"
    try:
        migrate(command.upgrade, "dicom")
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("INSERT INTO embedding_models (name, pretrained, dim) VALUES ('m', '/x.pt', 4)")
            conn.execute("INSERT INTO collections (name, model_id) SELECT 'old', id FROM embedding_models")
            conn.execute("INSERT INTO ingest_runs (collection_id) SELECT id FROM collections")
            conn.execute(f"DROP ROLE IF EXISTS {role}")
            conn.execute(f"CREATE ROLE {role}")
            conn.execute(f"GRANT SELECT, INSERT ON embeddings TO {role}")
        migrate(command.upgrade, "head")
        with psycopg.connect(url, autocommit=True) as conn:
            held = conn.execute(
                "SELECT c.name, h.ready_at IS NOT NULL FROM collection_models h JOIN collections c"
                " ON c.id = h.collection_id AND c.model_id = h.model_id"
            ).fetchall()
            assert held == [("old", True)]
            assert conn.execute("SELECT count(*) FROM ingest_runs WHERE model_id IS NOT NULL").fetchone()[0] == 1
            grants = conn.execute(
                "SELECT table_name, privilege_type FROM information_schema.role_table_grants WHERE grantee = %s"
                " AND table_name IN ('collection_models', 'text_embeddings') ORDER BY 1, 2",
                (role,),
            ).fetchall()
            assert ("collection_models", "SELECT") in grants and ("text_embeddings", "SELECT") in grants
            assert ("text_embeddings", "INSERT") not in grants  # the cache is the owner's alone (migration 0013)
        migrate(command.downgrade, "dicom")
        with psycopg.connect(url, autocommit=True) as conn:
            assert conn.execute("SELECT to_regclass('collection_models')").fetchone()[0] is None
            assert conn.execute("SELECT count(*) FROM collections").fetchone()[0] == 1
    finally:
        engine.dispose()
        with psycopg.connect(server_url, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
            conn.execute(f"DROP ROLE IF EXISTS {role}")


def test_a_model_registered_before_provenance_gets_it_on_next_use(
    store: Store, tmp_path: Path, tiny_model: str
) -> None:
    ingest(store, [_folder(tmp_path / "p", 2, seed=13)], model=ModelSpec.parse(tiny_model))
    store.conn.execute(
        "UPDATE embedding_models SET checkpoint_sha256 = NULL, checkpoint_bytes = NULL, open_clip_version = NULL,"
        " torch_version = NULL, preprocess = NULL, tokenizer = NULL"
    )
    ingest(store, [_folder(tmp_path / "q", 1, seed=14)])
    row = store.conn.execute("SELECT checkpoint_sha256, open_clip_version, preprocess FROM embedding_models").fetchone()
    assert row[0] == hashlib.sha256(Path(tiny_model.split(":", 1)[1]).read_bytes()).hexdigest()
    assert row[1] and row[2]["size"] == [64, 64]


@pytest.mark.slow
def test_a_moved_checkpoint_is_followed_by_its_sha256(database_url: str, tmp_path: Path, model_b: str) -> None:
    """After a checkpoint was moved, the collection could neither use it (not found) nor
    name its new place (another model). `models move` records the new path when the file is the same."""
    from tiny_model import make_tiny_model

    own = make_tiny_model(tmp_path / "before", seed=5)  # a model of this test's own, to move about
    photos = _folder(tmp_path / "photos", 4, seed=9)
    assert _cli(database_url, "ingest", str(photos), "-c", "m", "--model", own).exit_code == 0
    old = Path(own.split(":", 1)[1])
    (tmp_path / "after").mkdir()
    for file in old.parent.iterdir():  # the checkpoint and the NAME.json of its architecture
        file.rename(tmp_path / "after" / file.name)
    new = tmp_path / "after" / old.name
    (photos / "more.png").write_bytes((photos / "img_9_000.png").read_bytes()[:-1] + b"\0")
    stuck = _cli(database_url, "ingest", str(photos), "-c", "m")
    assert stuck.exit_code == 1 and "not found" in stuck.output

    other = Path(model_b.split(":", 1)[1])
    refused = _cli(database_url, "models", "move", own, str(other))
    assert refused.exit_code == 2 and "a different file is a different model" in refused.output
    moved = _cli(database_url, "models", "move", own, str(new))
    assert moved.exit_code == 0, moved.output
    again = _cli(database_url, "ingest", str(photos), "-c", "m")
    assert again.exit_code == 0 and "failed 0" in again.output, again.output
    found = _cli(database_url, "search", "x", "-c", "m", "--json")
    assert found.exit_code == 0 and len(found.output.splitlines()) == 5
