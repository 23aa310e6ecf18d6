"""imagedb on a real Citus cluster: a coordinator and two workers on loopback, made by bench/citus_local.py from the
embedded server with Citus built into it. Without Citus in the embedded server (CI machines) the cluster tests
skip with one line saying how to install it; the tests at the end run everywhere.
"""

from __future__ import annotations

import importlib.util
import json
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner
from pgvector import HalfVector

from imagedb.cli import main
from imagedb.pg.database import open_connection
from imagedb.store import Store
from imagedb.store.settings import set_local
from imagedb.watch_feed import WatchFeed

from helpers import fill_synthetic

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("citus_local", ROOT / "bench" / "citus_local.py")
citus_local: Any = importlib.util.module_from_spec(_spec)  # type: ignore[arg-type]
sys.modules["citus_local"] = citus_local  # its dataclass looks its module up
_spec.loader.exec_module(citus_local)  # type: ignore[union-attr]

NO_CITUS = (
    "Citus is not installed in the embedded server: `python bench/citus_local.py build CITUS_SOURCE`"
    " (a checkout of the citusdata/citus repository, v14; docs/scaling.md)"
)
SHARDS = 4


def _free_ports(count: int) -> int:
    """A first port with `count` free ports after it (checked by binding, then released)."""
    for first in range(57000, 60000, 10):
        try:
            for port in range(first, first + count):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", port))
        except OSError:
            continue
        return first
    raise RuntimeError("no free ports")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    if not citus_local.installed():
        pytest.skip(NO_CITUS)
    folder = tmp_path_factory.mktemp("citus")
    made = citus_local.start(folder, workers=2, port=_free_ports(3))
    yield made
    citus_local.stop(folder)
    assert not list(folder.glob("node*/postmaster.pid"))


@pytest.fixture(scope="module")
def citus_url(cluster: Any, tiny_model: str, photo_source: Path) -> str:
    """The coordinator's database, migrated, distributed and holding the photos, through imagedb's CLI."""
    url = cluster.url()
    run = _runner(url)
    assert run("db", "upgrade").exit_code == 0
    result = run("db", "distribute", "--shards", SHARDS)
    assert result.exit_code == 0, result.output
    assert f"images: distributed, {SHARDS} shards" in result.output
    assert "embeddings: distributed" in result.output and "collections: reference" in result.output
    result = run("ingest", photo_source, "--model", tiny_model, "--batch-size", "4")
    assert "added 12, reused 0, skipped 0 unchanged, failed 0" in result.output, result.output
    return url


def _runner(url: str):  # type: ignore[no-untyped-def]
    def invoke(*args: object):  # type: ignore[no-untyped-def]
        return CliRunner(env={"IMAGEDB_DATABASE_URL": url, "IMAGEDB_MODEL": None}).invoke(
            main, [str(a) for a in args], catch_exceptions=False
        )

    return invoke


def _paths(output: str) -> list[str]:
    return [json.loads(line)["path"] for line in output.splitlines()]


@pytest.mark.slow
def test_the_cluster_has_a_coordinator_and_two_workers_with_passwords(cluster: Any) -> None:
    with psycopg.connect(cluster.url()) as conn:
        nodes = conn.execute("SELECT nodeport, groupid FROM pg_dist_node ORDER BY groupid").fetchall()
    assert [p for p, _ in nodes] == cluster.ports
    for port in cluster.ports:  # every node refuses a wrong password
        with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
            psycopg.connect(f"postgresql://postgres:wrong@127.0.0.1:{port}/postgres").close()


@pytest.mark.slow
def test_searches_through_the_coordinator_match_the_single_node_database(
    citus_url: str, database_url: str, tiny_model: str, photo_source: Path
) -> None:
    single, distributed = _runner(database_url), _runner(citus_url)
    assert "added 12" in single("ingest", photo_source, "--model", tiny_model).output
    for photo in sorted(photo_source.iterdir()):
        args = ("search", "--image", photo, "--json", "-k", "5", "--ef-search", "400")
        here, there = single(*args), distributed(*args)
        assert there.exit_code == 0, there.output
        assert _paths(there.output) == _paths(here.output)
    store = Store(open_connection(database_url))  # and both equal the exact answer
    try:
        collection = store.models.get_collection("default")
        assert collection is not None
        ids = dict(store.conn.execute("SELECT id, path FROM images").fetchall())
        photo = photo_source / "coffee.jpg"
        image_id = next(i for i, p in ids.items() if p == str(photo))
        query = store.search.image_vector(image_id, collection.model_id)
        exact = [ids[i] for i in store.tuning.exact_nearest(collection, query, 5)]
    finally:
        store.close()
    assert _paths(distributed("search", "--image", photo, "--json", "-k", "5").output) == exact
    for args in (
        ("search", "a rocket", "--json", "-k", "3"),
        ("search", "a cat", "--json", "-k", "3", "--offset", "2", "--format", "JPEG"),
        ("search", "--like", "1", "--json", "-k", "4", "--after", "2000-01-01"),
    ):
        assert _paths(distributed(*args).output) == _paths(single(*args).output), args


@pytest.mark.slow
def test_dupes_forget_tune_check_and_info_run_through_the_coordinator(citus_url: str, photo_source: Path) -> None:
    run = _runner(citus_url)
    copy = photo_source.parent / "citus-copy"
    copy.mkdir(exist_ok=True)
    (copy / "coffee-again.jpg").write_bytes((photo_source / "coffee.jpg").read_bytes())
    assert "added 0, reused 1" in run("ingest", copy).output
    both = run("dupes", "--method", "both", "--json")  # the CLIP pass too (its groups are replaced just below)
    assert both.exit_code == 0 and '"rule": "clip"' in both.output, both.output
    result = run("dupes")
    assert result.exit_code == 0, result.output
    assert "sha256: same file as" in result.output
    collapsed = run("search", "--image", copy / "coffee-again.jpg", "--json", "-k", "3", "--collapse-duplicates")
    assert collapsed.exit_code == 0, collapsed.output
    assert len({json.loads(line)["id"] for line in collapsed.output.splitlines()}) == 3
    with psycopg.connect(citus_url) as conn:
        assert conn.execute("SELECT count(*) FROM duplicate_groups").fetchone() == (2,)
    # Forgetting the first image of the group takes the member matched through it out too (no foreign key now)
    result = run("forget", "coffee.jpg", "--yes")
    assert "forgot 1 image(s)" in result.output, result.output
    with psycopg.connect(citus_url) as conn:
        assert conn.execute("SELECT count(*) FROM duplicate_groups").fetchone() == (0,)
    # forget remembers the file (the reference table `forgotten`): ingest leaves it out until unforget
    assert "1 forgotten, left out" in run("ingest", photo_source).output
    result = run("unforget", photo_source / "coffee.jpg")
    assert result.exit_code == 0, result.output
    assert "reused 1, skipped 11" in run("ingest", photo_source).output
    for args, expected in (
        (("tune", "--target-recall", "0.9"), "searches use it from now on"),
        (("db", "check", "--recall"), "<- searches use this"),
        (("db", "info"), "collection default: 13 images, 13 embeddings"),
        # CREATE INDEX CONCURRENTLY, DROP INDEX CONCURRENTLY and the rename run on every shard
        (("db", "reindex", "--m", "8", "--ef-construction", "32"), "embeddings_hnsw_1 (m=8, ef_construction=32)"),
        (("db", "check"), "ok:"),
    ):
        result = run(*args)
        assert result.exit_code == 0 and expected in result.output, (args, result.output)


@pytest.mark.slow
def test_sql_functions_answer_through_the_coordinator(citus_url: str) -> None:
    with psycopg.connect(citus_url) as conn:
        first = conn.execute("SELECT min(id) FROM images").fetchone()[0]  # type: ignore[index]
        rows = conn.execute("SELECT image_id, score FROM imagedb_similar(%s, 3)", (first,)).fetchall()
        assert len(rows) == 3 and first not in [r[0] for r in rows]
        vector = conn.execute("SELECT embedding FROM embeddings WHERE image_id = %s", (first,)).fetchone()[0]  # type: ignore[index]
        nearest = conn.execute("SELECT image_id FROM imagedb_nearest(%s, 'default', 1)", (vector,)).fetchone()
        assert nearest == (first,)


@pytest.fixture(scope="module")
def synthetic(citus_url: str) -> Iterator[Store]:
    store = Store(open_connection(citus_url))
    fill_synthetic(store, 2000, dim=16, name="synthetic-citus")
    yield store
    store.close()


@pytest.mark.slow
def test_set_local_reaches_the_workers_and_set_config_does_not(synthetic: Store) -> None:
    # imagedb's searches, exact scans and dupes set their settings with set_local (imagedb.store.settings).
    # Without an iterative scan an HNSW scan returns at most ef_search rows: with ef_search 1 on every shard, a
    # LIMIT 100 query over SHARDS shards gets at most SHARDS rows, but only if the setting reached the workers.
    collection = synthetic.models.get_collection("synthetic-citus")
    assert collection is not None
    query = (
        "SELECT count(*) FROM (SELECT image_id FROM embeddings WHERE model_id = %(m)s"
        " ORDER BY embedding::halfvec(16) <=> %(q)s LIMIT 100) n"
    )
    vector = synthetic.search.all_vectors(collection)[1][0]
    counts = {}
    for how in ("set_local", "set_config"):
        with synthetic.conn.transaction():
            if how == "set_local":
                set_local(synthetic.conn, {"hnsw.ef_search": 1})
            else:
                synthetic.conn.execute("SELECT set_config('hnsw.ef_search', '1', true)")
            # the HNSW index only (shards this small would be read in full and sorted), and no iterative scan
            for name in ("hnsw.iterative_scan", "enable_seqscan", "enable_bitmapscan", "enable_sort"):
                synthetic.conn.execute(f"SET LOCAL {name} = off")
            counts[how] = synthetic.conn.execute(
                query, {"m": collection.model_id, "q": HalfVector(vector)}, prepare=False
            ).fetchone()[0]  # type: ignore[index]
    assert counts == {"set_local": SHARDS, "set_config": 100}


def test_distribute_refuses_a_server_without_citus_in_one_line(database_url: str) -> None:
    result = _runner(database_url)("db", "distribute")
    assert result.exit_code == 2
    assert result.output.strip().splitlines()[-1] == (
        "Error: this database has no Citus extension: connect to a Citus coordinator"
    )


@pytest.mark.slow
def test_watch_hits_and_their_notifications_come_through_the_coordinator(citus_url: str, photo_source: Path) -> None:
    run = _runner(citus_url)
    assert run("watch", "add", photo_source / "rocket.jpg").exit_code == 0
    # Ingest announces each hit by its id alone; WatchFeed reads the hit it names from watch_hits (a distributed
    # table joined with the images and the reference table watches), through the coordinator.
    follower = Store(open_connection(citus_url))
    try:
        feed = WatchFeed(follower)
        copy = photo_source.parent / "citus-watch"
        copy.mkdir(exist_ok=True)
        (copy / "rocket-copy.jpg").write_bytes((photo_source / "rocket.jpg").read_bytes())
        result = run("ingest", copy)
        assert "watch hits 1" in result.output, result.output
        hits = feed.poll(5)
        assert [(h["distance"], h["path"]) for h in hits] == [(0, str(copy / "rocket-copy.jpg"))]
    finally:
        follower.close()
    assert "rocket-copy.jpg" in run("watch", "hits").output


@pytest.mark.slow
def test_a_reader_role_searches_through_the_coordinator(cluster: Any, citus_url: str) -> None:
    # Citus opens the worker connections as the same role, with a password from the nodes' passfile
    result = _runner(citus_url)("grant-reader", "citus_reader", "--password", "reader-secret")
    assert result.exit_code == 0, result.output
    passfile = cluster.folder / "pgpass"
    passfile.write_text(passfile.read_text() + "*:*:*:citus_reader:reader-secret\n")
    url = citus_url.replace(f"postgres:{cluster.password}@", "citus_reader:reader-secret@")
    with psycopg.connect(url) as conn:
        first = conn.execute("SELECT image_id FROM imagedb_similar(1, 2)").fetchall()
        assert len(first) == 2
        with pytest.raises(psycopg.errors.InsufficientPrivilege):  # the tables' schema is not the reader's
            conn.execute("SELECT embedding FROM imagedb_internal.embeddings LIMIT 1")


@pytest.mark.slow
def test_the_http_api_searches_through_the_coordinator(citus_url: str, photo_source: Path) -> None:
    from fastapi.testclient import TestClient

    from imagedb.api import create_app

    client = TestClient(create_app(citus_url), base_url="http://localhost")
    found = client.get("/api/search", params={"q": "a rocket", "limit": 3})
    assert found.status_code == 200 and len(found.json()["results"]) == 3, found.text
    upload = client.post(
        "/api/search/image",
        params={"limit": 1},
        files={"file": ("coffee.jpg", (photo_source / "chelsea.jpg").read_bytes(), "image/jpeg")},
    )
    assert upload.status_code == 200 and upload.json()["results"][0]["path"] == str(photo_source / "chelsea.jpg")
    first = upload.json()["results"][0]["id"]
    similar = client.get(f"/api/images/{first}/similar", params={"limit": 2})
    assert similar.status_code == 200 and len(similar.json()["results"]) == 2, similar.text
    assert client.get(f"/api/images/{first}/thumbnail").headers["content-type"] == "image/jpeg"
    assert client.get("/api/collections").status_code == 200


@pytest.mark.slow
def test_a_live_runs_claims_are_kept_and_a_dead_runs_taken_over_through_the_coordinator(citus_url: str) -> None:
    # A run's claims are live while its session holds an advisory lock, which is taken on the coordinator:
    # ingest_claims (a reference table) is on every node, so whether the run lives must be read there, not on a worker
    stores = [Store(open_connection(citus_url)) for _ in range(2)]
    try:
        collection = stores[0].models.get_collection("default")
        assert collection is not None
        paths = ["/elsewhere/a.jpg", "/elsewhere/b\nc.jpg"]
        runs = [s.images.start_run(collection.id) for s in stores]
        for store, run_id in zip(stores, runs, strict=True):
            store.claims.hold_run(run_id)
        assert stores[0].claims.claim(collection.id, runs[0], paths) == set(paths)
        assert stores[1].claims.claim(collection.id, runs[1], paths) == set()
        assert stores[1].claims.forget_dead(collection.id) == 0
        stores[0].close()  # its server process ends, and its lock with it, a moment later
        deadline = time.monotonic() + 10
        while not (taken := stores[1].claims.claim(collection.id, runs[1], paths[:1])) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert taken == set(paths[:1])
        assert stores[1].claims.forget_dead(collection.id) == 1
        stores[1].claims.release_run(collection.id, runs[1])
        assert stores[1].conn.execute("SELECT count(*) FROM ingest_claims").fetchone() == (0,)
    finally:
        for store in stores:
            store.close()


@pytest.mark.slow
def test_keyword_words_stay_current_through_the_coordinator(citus_url: str, photo_source: Path) -> None:
    # image_words is co-located with images and kept by the triggers on images, which run on the workers' shards
    run = _runner(citus_url)
    folder = photo_source.parent / "citus-words"
    folder.mkdir(exist_ok=True)
    photo = folder / "IMG_4711_zanzibar.jpg"
    photo.write_bytes((photo_source / "camera.jpg").read_bytes())
    assert "added 0, reused 1" in run("ingest", folder).output
    found = run("search", "kw:zanzibar", "--paths")
    assert found.exit_code == 0 and found.output.split() == [str(photo)], found.output
    assert run("search", "kw:favourite", "--paths").output.strip() == ""
    tagged = run("tag", photo, "mood=favourite")
    assert tagged.exit_code == 0, tagged.output
    assert run("search", "kw:favourite", "--paths").output.split() == [str(photo)]
    refreshed = run("keywords", "refresh")  # remakes every document: an UPDATE of image_words joined with images
    assert refreshed.exit_code == 0, refreshed.output
    assert run("search", "kw:favourite", "--paths").output.split() == [str(photo)]
    assert "images: " in run("keywords", "status").output
    with psycopg.connect(citus_url) as conn:
        rows = conn.execute("SELECT path, keyword_rank, matched FROM imagedb_search_hybrid('favourite', 'default', 3)")
        assert rows.fetchall() == [(str(photo), 1, ["favourite"])]
        # every image has its row of words, on the shard of its image
        assert conn.execute(
            "SELECT count(*) FROM images i LEFT JOIN image_words w ON w.image_id = i.id WHERE w.image_id IS NULL"
        ).fetchone() == (0,)


@pytest.mark.slow
def test_a_database_distributed_before_keywords_upgrades_to_them(
    tmp_path: Path, tiny_model: str, photo_source: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A coordinator distributed at migration 0017 (claims), before image_words: migration 0018 places image_words
    # beside images and makes the triggers on the distributed images, and ingest then fills the words.
    from alembic import command
    from sqlalchemy import create_engine

    from imagedb.pg.connection import connect, sqlalchemy_url
    from imagedb.pg.migrate import alembic_config
    from imagedb.store import citus

    if not citus_local.installed():
        pytest.skip(NO_CITUS)
    made = citus_local.start(tmp_path, workers=2, port=_free_ports(3))
    try:
        url = made.url()
        cfg = alembic_config()
        with create_engine(sqlalchemy_url(url)).begin() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "claims")
        monkeypatch.setattr(citus, "COLOCATED", tuple(t for t in citus.COLOCATED if t != "image_words"))
        monkeypatch.setattr(citus, "TABLES", (citus.DISTRIBUTED, *citus.COLOCATED, *citus.REFERENCE))
        store = Store(connect(url))
        try:
            assert store.citus.distribute(2)[0] == citus.Placement("images", "distributed", 2)
        finally:
            store.close()
        monkeypatch.undo()
        run = _runner(url)
        result = run("db", "upgrade")
        assert result.exit_code == 0, result.output
        placed = run("db", "distribute")  # nothing left to place
        assert placed.exit_code == 0 and "image_words: distributed, 2 shards" in placed.output, placed.output
        assert "added 12" in run("ingest", photo_source, "--model", tiny_model).output
        assert run("search", "kw:hubble", "--paths").output.split() == [str(photo_source / "hubble_deep_field.jpg")]
    finally:
        citus_local.stop(tmp_path)
