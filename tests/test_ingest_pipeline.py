"""Ingest's pipeline: batches written at once by several connections (one ingest's writers, or two ingests) never
store a file twice, and a model switch waits for the batches in flight."""

from __future__ import annotations

import os
import shutil
import threading
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from psycopg import sql

from imagedb import ingest as ingest_module
from imagedb.batch_writers import BatchWriters
from imagedb.embed import ModelSpec
from imagedb.errors import DatabaseUnavailable, ImagedbError
from imagedb.ingest import ingest
from imagedb.progress import EMBEDDING
from imagedb.store import ImageRecord, Store

from helpers import sigint_as_on_a_terminal, wait_for_a_batch_on_the_collection_lock


def _vectors(store: Store, collection: str) -> dict[str, np.ndarray]:
    rows = store.conn.execute(
        "SELECT i.path, e.embedding FROM images i JOIN collections c ON c.id = i.collection_id"
        " JOIN embeddings e ON e.image_id = i.id AND e.model_id = c.model_id WHERE c.name = %s",
        (collection,),
    ).fetchall()
    return {Path(path).name: np.asarray(vector.to_numpy(), dtype=np.float32) for path, vector in rows}


def test_one_ingest_writes_batches_on_several_connections(
    store: Store, tiny_model: str, photos: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ingest_module, "WRITERS", 3)
    opened: list[Store] = []
    another = Store.another

    def counted(self: Store) -> Store:
        opened.append(another(self))
        return opened[-1]

    monkeypatch.setattr(Store, "another", counted)
    summary = ingest(store, [photos], model=ModelSpec.parse(tiny_model), batch_size=1)
    assert (summary.added, summary.failed) == (12, 0)
    assert len(opened) == 3 and all(s.conn.closed for s in opened)  # its own connections, closed at the end
    count, distinct = store.conn.execute("SELECT count(*), count(DISTINCT path) FROM images").fetchone()  # type: ignore[misc]
    assert count == distinct == 12
    assert store.conn.execute("SELECT count(*) FROM embeddings").fetchone() == (12,)
    assert ingest(store, [photos], batch_size=1).skipped == 12


MTIME = datetime(2026, 1, 2, tzinfo=timezone.utc)


def _records(paths: list[str]) -> list[ImageRecord]:
    return [
        ImageRecord(
            path=path,
            sha256=f"{i:064x}",
            size_bytes=1,
            mtime=MTIME,
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
        for i, path in enumerate(paths)
    ]


def test_batches_holding_the_same_files_take_turns_and_store_each_once(store: Store) -> None:
    """Two connections write overlapping batches at once, in opposite orders: each path is stored once (the other
    batch finds it stored), no unique-key error and no deadlock, while disjoint batches go at the same time."""
    model_id = store.models.ensure_model("pipeline-test", "", 8)
    collection = store.models.create_collection("pipeline", model_id)
    run_id = store.images.start_run(collection.id)
    others = [store.another() for _ in range(2)]
    paths = [f"/p/{i}.jpg" for i in range(40)]
    rng = np.random.default_rng(0)
    outcomes: list[set[str]] = []
    failures: list[BaseException] = []

    def write(writer: Store, order: list[str]) -> None:
        try:
            records = _records(order)
            vectors = list(rng.standard_normal((len(records), 8)).astype(np.float32))
            outcomes.append(writer.images.write_batch(collection.id, model_id, run_id, records, vectors, []).already)
        except BaseException as exc:  # reported below, in the test's thread
            failures.append(exc)

    for _ in range(5):
        store.conn.execute("DELETE FROM images")
        outcomes.clear()
        threads = [
            threading.Thread(target=write, args=(others[0], paths)),
            threading.Thread(target=write, args=(others[1], paths[::-1])),
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert not failures, failures
        assert sorted(len(already) for already in outcomes) == [0, len(paths)]  # one stored all, one none
        assert store.conn.execute("SELECT count(*) FROM images").fetchone() == (len(paths),)
    for other in others:
        other.close()


def test_a_model_switch_waits_for_batches_in_flight(store: Store) -> None:
    """Batches take the collection's lock shared (they run together); `models use` takes it alone."""
    model_id = store.models.ensure_model("pipeline-switch", "", 8)
    other_model = store.models.ensure_model("pipeline-other", "", 8)
    collection = store.models.create_collection("switching", model_id)
    writer = store.another()
    with writer.conn.transaction():
        writer.conn.execute("SELECT pg_advisory_xact_lock_shared(%s, %s)", (0x1A6E, collection.id))
        # Another batch goes ahead meanwhile...
        run_id = store.images.start_run(collection.id)
        vectors = list(np.ones((1, 8), dtype=np.float32))
        assert (
            store.images.write_batch(collection.id, model_id, run_id, _records(["/x.jpg"]), vectors, []).already
            == set()
        )
        # ...but the switch waits.
        switcher = store.another()
        switcher.conn.execute("SET lock_timeout = '200ms'")
        with pytest.raises(Exception, match="lock timeout"):
            switcher.models.switch_model(collection.id, other_model)
        switcher.close()
    writer.close()


def test_a_copied_photo_tree_is_stored_whole_by_four_writers(
    store: Store, tiny_model: str, photos: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """More files than a batch, and identical contents in batches written at the same time."""
    monkeypatch.setattr(ingest_module, "WRITERS", 4)
    for copy in range(3):
        shutil.copytree(photos, tmp_path / "tree" / f"copy{copy}")
    Image.new("RGB", (300, 200), (1, 2, 3)).save(tmp_path / "tree" / "one more.png")
    summary = ingest(store, [tmp_path / "tree"], model=ModelSpec.parse(tiny_model), batch_size=5)
    assert (summary.added + summary.reused, summary.failed) == (37, 0)
    # Each content embedded once, even when its first batch was still with the writers.
    assert summary.added == 13
    assert store.conn.execute("SELECT count(*), count(DISTINCT sha256) FROM images").fetchone() == (37, 13)


@pytest.mark.parametrize("limit", [2, 1])
def test_a_role_short_of_connections_still_ingests_everything(
    store: Store, database_url: str, tiny_model: str, photos: Path, tmp_path: Path, limit: int
) -> None:
    """A writer role the administrator allows `limit` connections: ingest writes with what it can open (one writer
    beside its own connection, or none: then on its own connection, in turn), and a password in the URL (not a
    password file) reaches its writers too."""
    from test_roles import _login

    from imagedb.pg.database import open_connection
    from imagedb.roles import grant_writer

    role = f"limited_{limit}_{os.getpid()}"
    grant_writer(store, role, "writer-login-pw")
    store.conn.execute(sql.SQL("ALTER ROLE {} CONNECTION LIMIT {}").format(sql.Identifier(role), sql.Literal(limit)))
    first = tmp_path / "first"
    first.mkdir()
    shutil.move(photos / "astronaut.jpg", first / "astronaut.jpg")
    ingest(store, [first], collection="limited", model=ModelSpec.parse(tiny_model))  # the owner creates it
    writer = Store(open_connection(_login(database_url, role, "writer-login-pw")))
    summary = ingest(writer, [photos], collection="limited", batch_size=2)
    writer.close()
    assert (summary.added + summary.reused, summary.failed) == (11, 0)
    assert store.conn.execute(
        "SELECT count(*) FROM images i JOIN collections c ON c.id = i.collection_id WHERE c.name = 'limited'"
    ).fetchone() == (12,)


@pytest.mark.slow
def test_ctrl_c_ends_a_run_whose_batches_wait_on_a_lock(
    store: Store, database_url: str, tiny_model: str, photos: Path, tmp_path: Path
) -> None:
    """Ctrl-C while the writers wait for a lock another session holds (`forget --full`'s VACUUM FULL, a long
    index build, a `models use`): the run ends at once, its batches in flight rolled back, and a rerun completes.
    It used to wait for the other session, however long, since only the main thread sees the interrupt."""
    import signal
    import subprocess
    import time

    from test_hostile_folder import _imagedb

    first = tmp_path / "first"
    first.mkdir()
    shutil.move(photos / "astronaut.jpg", first / "astronaut.jpg")
    ingest(store, [first], collection="held", model=ModelSpec.parse(tiny_model))
    collection = store.models.get_collection("held")
    assert collection is not None
    holder = store.another()
    holder.conn.execute("BEGIN")
    holder.conn.execute("SELECT pg_advisory_xact_lock(%s, %s)", (0x1A6E, collection.id))
    env = {**os.environ, "IMAGEDB_DATABASE_URL": database_url, "IMAGEDB_MODEL": tiny_model}
    run = subprocess.Popen(
        [_imagedb(), "ingest", str(photos), "-c", "held", "--batch-size", "1"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=sigint_as_on_a_terminal,
    )
    try:
        wait_for_a_batch_on_the_collection_lock(store, run)
        run.send_signal(signal.SIGINT)
        interrupted = time.monotonic()
        try:
            out, err = run.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            pytest.fail("the run went on waiting for the lock after Ctrl-C")
        assert time.monotonic() - interrupted < 15
        assert run.returncode != 0 and "Traceback" not in err, err
        # Nothing of it is left on the server: its batches in flight were rolled back, its connections closed.
        deadline = time.monotonic() + 10
        while store.conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> ALL(%s)",
            ([store.conn.info.backend_pid, holder.conn.info.backend_pid],),
        ).fetchone()[0]:  # type: ignore[index]
            assert time.monotonic() < deadline, "connections left behind"
            time.sleep(0.1)
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
        holder.conn.execute("ROLLBACK")
        holder.close()
    summary = ingest(store, [photos], collection="held", batch_size=1)  # the rerun completes
    assert (summary.added + summary.reused + summary.skipped, summary.failed) == (11, 0)
    assert store.conn.execute(
        "SELECT count(*), count(DISTINCT path) FROM images i JOIN collections c ON c.id = i.collection_id"
        " WHERE c.name = 'held'"
    ).fetchone() == (12, 12)


@pytest.mark.slow
def test_a_large_batch_fits_in_a_server_lock_table_others_fill(store: Store) -> None:
    """`--batch-size 4096` on four writers, or two ingests at once, held a lock per path for every file of every
    batch in flight, 16,384 on a server whose shared lock table holds about 8,600 (max_locks_per_transaction 64 x
    its connections): "out of shared memory". Here another session leaves room for 1,500 locks, and a batch of
    4,096 files is stored whole all the same."""
    hog = store.another()
    # Session locks until the table is full; those taken before the statement failed stay held.
    with pytest.raises(Exception, match="shared memory"):
        hog.conn.execute("SELECT pg_advisory_lock(1234567, g) FROM generate_series(1, 10000000) AS g")
    hog.conn.execute("SELECT pg_advisory_unlock(1234567, g) FROM generate_series(1, 1500) AS g")
    try:
        model_id = store.models.ensure_model("pipeline-locks", "", 8)
        collection = store.models.create_collection("locks", model_id)
        run_id = store.images.start_run(collection.id)
        paths = [f"/many/{i:05d}.jpg" for i in range(4096)]
        vectors = list(np.ones((len(paths), 8), dtype=np.float32))
        written = store.images.write_batch(
            collection.id, model_id, run_id, _records(paths), vectors, [("/many/x", "bad")]
        )
        assert written.already == set()
    finally:
        hog.close()
    assert store.conn.execute("SELECT count(*), count(DISTINCT path) FROM images").fetchone() == (4096, 4096)
    assert store.conn.execute("SELECT count(*) FROM embeddings").fetchone() == (4096,)
    assert store.conn.execute("SELECT count(*) FROM ingest_errors WHERE run_id = %s", (run_id,)).fetchone() == (1,)


def test_a_large_batch_is_split_between_files_never_between_frames() -> None:
    from imagedb.store.images import PATHS_PER_TRANSACTION, _parts

    paths = [f"/d/{i:04d}.jpg" for i in range(PATHS_PER_TRANSACTION - 1)]
    paths += [f"/d/scan.dcm#frame={n}" for n in range(1, 4)] + ["/d/z.jpg"]
    parts = _parts(_records(paths))
    assert [len(p) for p in parts] == [PATHS_PER_TRANSACTION + 2, 1]  # 256 files, the last with its 3 frames
    assert sorted(n for p in parts for n in p) == list(range(len(paths)))
    assert _parts([]) == [[]]


class _SwitchAfterFirstBatch:
    """A Progress that switches the collection to another model once the first batch is stored, as `imagedb models
    use` from another terminal would (the switch itself is tested in test_models.py; here only its timing)."""

    def __init__(self, store: Store, collection: str) -> None:
        self.store, self.collection, self.switched, self.embedding = store, collection, False, False

    def phase(self, name: str, total: int | None = None, detail: str = "") -> None:
        self.embedding = name == EMBEDDING

    def advance(self, n: int = 1) -> None:
        if self.switched or not self.embedding:  # files found while scanning come first
            return
        other = self.store.models.ensure_model("switched-to", "", 64)
        self.store.conn.execute("UPDATE collections SET model_id = %s WHERE name = %s", (other, self.collection))
        self.switched = True


def test_a_model_switch_during_an_ingest_ends_it_as_a_conflict_not_bad_usage(
    store: Store, tiny_model: str, photos: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """It ended with exit code 2 and the usage lines, as if the command had been mistyped."""
    import click

    from imagedb.cli.support import one_line_errors
    from imagedb.errors import ConcurrentChange

    monkeypatch.setattr(ingest_module, "WRITERS", 1)  # one batch in flight: the next one meets the switch
    progress = _SwitchAfterFirstBatch(store, "switching")
    with pytest.raises(ConcurrentChange, match="switched its search model .* run the ingest again") as info:
        ingest(store, [photos], collection="switching", model=ModelSpec.parse(tiny_model), batch_size=2,
               progress=progress)  # fmt: skip
    stored = store.conn.execute("SELECT count(*) FROM images").fetchone()[0]  # type: ignore[index]
    assert 2 <= stored < 12  # what was stored before the switch is kept
    with pytest.raises(click.ClickException) as mapped, one_line_errors(click.Context(click.Command("ingest"))):
        raise info.value
    assert mapped.value.exit_code == 1 and not isinstance(mapped.value, click.UsageError)


def _dropped_mid_statement(store: Store) -> None:
    """Leave `store` as a server that went away mid-statement does, before libpq has read to the socket's end: the
    statement still reads as active and the connection as open."""
    store.conn.pgconn.send_query(b"SELECT pg_sleep(30)")
    assert store.conn.info.transaction_status.name == "ACTIVE" and not store.conn.closed


def test_a_failing_run_reports_its_own_error_not_a_writer_dropped_mid_statement(store: Store) -> None:
    """The database stopped during an ingest, and the run reported "internal error: a transaction was
    left open" (a writer's connection had not yet noticed) instead of the database error."""
    writers = BatchWriters(store, 2)
    with pytest.raises(DatabaseUnavailable, match="went away"), writers:
        writers._open()
        _dropped_mid_statement(writers._opened[0])
        raise DatabaseUnavailable("the database went away")
    assert writers._opened and all(s.conn.closed for s in writers._opened)
    # A command's own store, the same way; and a transaction left open by a run that succeeded is still a bug.
    with pytest.raises(DatabaseUnavailable, match="went away"), store.another() as other:
        _dropped_mid_statement(other)
        raise DatabaseUnavailable("the database went away")
    with pytest.raises(ImagedbError, match="left open"), store.another() as other:
        other.conn.execute("BEGIN")


@pytest.mark.slow
@pytest.mark.skipif(
    not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs to leave one"
)
def test_a_process_allowed_one_cpu_embeds_and_decodes_on_one(tiny_model: str) -> None:
    """Under taskset or a container's cpuset os.cpu_count() still counts all of the host's CPUs: torch got that
    many threads (and decoding that many) on the few CPUs the process may use."""
    import subprocess
    import sys

    program = (
        "import os; os.sched_setaffinity(0, {min(os.sched_getaffinity(0))});"
        "import torch; from imagedb import cpus, ingest; from imagedb.embed import ModelSpec, load;"
        f"load(ModelSpec.parse({tiny_model!r})); print(torch.get_num_threads(), cpus.available(), ingest.WRITERS)"
    )
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["1", "1", "2"]  # still two writers: storing one batch overlaps embedding the next
