"""Storing an ingest's embedded batches on connections of their own, while the next batch is embedded."""

from __future__ import annotations

import queue
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import datetime

import numpy as np

from imagedb.store import Collection, ImageRecord, Store
from imagedb.store.images import BatchWritten

# How long a failed or interrupted run waits for its batches in flight to commit before it cancels them.
STOP_GRACE_S = 2.0


@dataclass
class EmbeddedBatch:
    """A batch ready to store: its records, each model's vectors, the files that failed."""

    records: list[ImageRecord]
    vectors: np.ndarray | list[np.ndarray]
    others: dict[int, list[np.ndarray]]
    errors: list[tuple[str, str]]
    fresh: set[str]  # SHA-256s of the contents embedded for this batch (the others reused stored vectors)
    files: int  # files, not frames: what progress counts
    paths: tuple[str, ...] = ()  # those files, as claimed (store/claims.py) and shown
    excluded: int = 0  # files left out as forgotten content
    error_states: dict[str, tuple[int, datetime]] = field(default_factory=dict)  # failed files' size and mtime


class BatchWriters:
    """Stores batches on `count` connections of their own at once, while the caller embeds the next; results come
    back in the order submitted. Each batch is still one transaction, or several of whole files when large
    (Store.write_batch)."""

    def __init__(self, store: Store, count: int) -> None:
        self._store, self._count = store, count
        self._idle: queue.SimpleQueue[Store] = queue.SimpleQueue()
        self._opened: list[Store] = []
        self._pool: ThreadPoolExecutor | None = None
        self._in_flight: deque[tuple[EmbeddedBatch, Future[BatchWritten]]] = deque()
        self._ready: deque[tuple[EmbeddedBatch, BatchWritten]] = deque()

    def __enter__(self) -> BatchWriters:
        return self

    def put(self, target: Collection, run_id: int, batch: EmbeddedBatch) -> None:
        """Start storing `batch` (waiting for the oldest while all writers are busy); the batches that finished
        wait in finished() until the caller has accounted for them."""
        if self._pool is None:  # connections are opened for a run that stores something, not for every run
            self._open()
        assert self._pool is not None
        if not self._opened:  # no connection to spare: written here, on the caller's own connection, in turn
            future: Future[BatchWritten] = Future()
            future.set_result(self._write(target, run_id, batch))
        else:
            future = self._pool.submit(self._write, target, run_id, batch)
        self._in_flight.append((batch, future))
        while self._in_flight and (len(self._in_flight) > self._count or self._in_flight[0][1].done()):
            self._finish()

    def submit(self, target: Collection, run_id: int, batch: EmbeddedBatch) -> list[tuple[EmbeddedBatch, BatchWritten]]:
        """put(), and the batches that finished meanwhile."""
        self.put(target, run_id, batch)
        return list(self.finished())

    def wait_all(self) -> None:
        while self._in_flight:
            self._finish()

    def drain(self) -> list[tuple[EmbeddedBatch, BatchWritten]]:
        self.wait_all()
        return list(self.finished())

    def finished(self) -> Iterator[tuple[EmbeddedBatch, BatchWritten]]:
        """The batches stored, in the order put; each leaves only once the caller asks for the next, so one whose
        accounting a Ctrl-C interrupted is still in completed()."""
        while self._ready:
            yield self._ready[0]
            self._ready.popleft()

    def completed(self) -> list[tuple[EmbeddedBatch, BatchWritten]]:
        """After the run stopped (Ctrl-C): the batches not yet taken from finished(), and those in flight that
        committed all the same."""
        ready = list(self._ready)
        seen = {id(batch) for batch, _ in ready}
        return ready + [
            (b, f.result())
            for b, f in self._in_flight
            if id(b) not in seen and f.done() and not f.cancelled() and not f.exception()
        ]

    def _finish(self) -> None:
        batch, future = self._in_flight[0]
        written = future.result()  # an interrupt while waiting here leaves the batch in flight, for __exit__
        self._ready.append((batch, written))  # before it leaves _in_flight: completed() skips it there
        self._in_flight.popleft()

    def _open(self) -> None:
        for _ in range(self._count):
            try:
                self._opened.append(self._store.another())
            except Exception:  # e.g. the role's or the server's connection limit: fewer writers, or none
                break
        for store in self._opened or [self._store]:
            self._idle.put(store)
        self._count = max(1, len(self._opened))
        self._pool = ThreadPoolExecutor(max_workers=self._count, thread_name_prefix="imagedb-writer")

    def _stop(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)  # batches not begun are dropped
        pending = [f for _, f in self._in_flight if not f.done()]
        if pending:
            pending = list(wait(pending, timeout=STOP_GRACE_S).not_done)
        while pending:
            for store in self._opened:  # cancelling a connection with nothing running does nothing
                with suppress(Exception):
                    store.conn.cancel_safe(timeout=5)
            pending = list(wait(pending, timeout=0.5).not_done)

    def _write(self, target: Collection, run_id: int, batch: EmbeddedBatch) -> BatchWritten:
        store = self._idle.get()
        try:
            return store.images.write_batch(
                target.id,
                target.model_id,
                run_id,
                batch.records,
                batch.vectors,
                [(path, reason, *batch.error_states.get(path, (None, None))) for path, reason in batch.errors],
                batch.others,
            )
        finally:
            self._idle.put(store)

    def __exit__(self, exc_type: object, *exc: object) -> None:
        # A batch in flight when the run fails (Ctrl-C, the database went away, a model switch) gets a moment to
        # commit on its own connection; then it is cancelled: it may be waiting for a lock that another session
        # holds for as long as it likes (a VACUUM FULL, an index build), and only this thread sees a Ctrl-C. None
        # is left half written, since each is one transaction.
        if exc_type is not None:
            self._stop()
        for _, future in self._in_flight:
            if not future.cancelled():
                future.exception()
        if self._pool is not None:
            self._pool.shutdown()
        for store in self._opened:
            store.close(failing=exc_type is not None)
