"""What several test files share: synthetic rows for tests that need many vectors but no image files, and waits on
a running ingest."""

from __future__ import annotations

import subprocess
import time
from datetime import datetime, timezone

import numpy as np

from imagedb.store import Collection, ImageRecord, Store


def fill_synthetic(store: Store, count: int, dim: int = 32, name: str = "synthetic", seed: int = 0) -> Collection:
    """A collection of `count` images with random unit vectors, written through Store.write_batch."""
    model_id = store.models.ensure_model(name, "", dim)
    collection = store.models.create_collection(name, model_id)
    run_id = store.images.start_run(collection.id)
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((count, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    now = datetime.now(timezone.utc)
    for start in range(0, count, 500):
        records = [
            ImageRecord(
                path=f"/synthetic/{i:06d}.jpg",
                sha256=f"{i:064x}",
                size_bytes=1,
                mtime=now,
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
            )
            for i in range(start, min(start + 500, count))
        ]
        store.images.write_batch(collection.id, model_id, run_id, records, list(vectors[start : start + 500]), [])
    store.conn.execute("ANALYZE")
    store.conn.commit()
    return collection


def wait_for_a_batch_on_the_collection_lock(store: Store, run: subprocess.Popen[str], seconds: float = 60) -> None:
    """Until a batch of the ingest `run` waits for its collection's write lock (held by the test); fails if the run
    ends first, or after `seconds`."""
    deadline = time.monotonic() + seconds
    while not store.conn.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
        " AND query LIKE '%%pg_advisory_xact_lock_shared%%'"
    ).fetchone()[0]:  # type: ignore[index]
        assert run.poll() is None and time.monotonic() < deadline, run.communicate()
        time.sleep(0.05)


def sigint_as_on_a_terminal() -> None:
    """A Popen preexec_fn for a child the test sends SIGINT: a shell's background job (`pytest ... &`) ignores SIGINT
    and its children inherit that, so Python would install no KeyboardInterrupt handler and Ctrl-C do nothing."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)
