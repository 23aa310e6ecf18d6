"""Sharing an ingest's files with other ingests of the same collection running at the same time.

Each file is claimed just before it is decoded (store/claims.py); a file another run holds is put off, and once
this run has stored everything else it waits for those: a file the other run stored meanwhile is counted as done
by another run, one whose claimer died (killed, cut off) is taken over, and one still held when the wait ends is
reported as being ingested by another run. So two ingests of one folder each decode and embed about half of it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path

from imagedb.files import readable
from imagedb.store import Store

# How long a run waits, once it has nothing else to do, for files other runs are ingesting: a run's claims cover
# only the batches it is decoding and storing (seconds each), so a longer wait means that run is stuck.
WAIT_FOR_OTHERS_S = 60.0
POLL_S = 0.2


class Claimer:
    """The claims of one run (`run_id`) on a collection's files, whose sizes and mtimes are `states` (path shown
    -> (size, mtime)), and what it learned of the other runs."""

    def __init__(self, store: Store, collection_id: int, run_id: int, states: dict[str, tuple[int, datetime]]) -> None:
        self._store, self._collection_id, self._run_id, self._states = store, collection_id, run_id, states
        self.deferred: list[Path] = []  # held by another run when this one came to them
        self.by_others = 0  # stored by another run while this one ran
        self.busy = 0  # still being ingested by another run when this one gave up waiting
        store.claims.forget_dead(collection_id)
        store.claims.hold_run(run_id)

    def batches(self, files: list[Path], batch_size: int, on_skipped: Callable[[int], None]) -> Iterator[list[Path]]:
        """`files` in batches of those this run claimed, each claimed only when the caller asks for it; the
        others are put off (`deferred`) or, stored by another run meanwhile, counted and passed to `on_skipped`."""
        position = 0
        while position < len(files):
            batch: list[Path] = []
            while len(batch) < batch_size and position < len(files):
                chunk = files[position : position + batch_size - len(batch)]
                position += len(chunk)
                mine, others, stored = self._take(chunk)
                batch.extend(mine)
                self.deferred.extend(others)
                if stored:
                    on_skipped(stored)
            if batch:
                yield batch

    def wait_for_deferred(self, on_skipped: Callable[[int], None]) -> list[Path]:
        """Wait for the files put off: returns those this run must ingest after all (claimed now: their claimer
        died, or failed to store them); the rest were stored by another run, or are still being ingested by one
        when the wait ends (both counted, and passed to `on_skipped`)."""
        waiting, self.deferred = self.deferred, []
        deadline = time.monotonic() + WAIT_FOR_OTHERS_S
        taken: list[Path] = []
        while waiting:
            mine, waiting, stored = self._take(waiting)
            taken.extend(mine)
            if stored:
                on_skipped(stored)
            if waiting and time.monotonic() >= deadline:
                self.busy += len(waiting)
                on_skipped(len(waiting))
                break
            if waiting:
                time.sleep(POLL_S)
        return taken

    def release(self, paths: tuple[str, ...]) -> None:
        """These files are stored (or failed): others may have them."""
        self._store.claims.unclaim(self._collection_id, self._run_id, paths)

    def close(self) -> None:
        self._store.claims.release_run(self._collection_id, self._run_id)

    def _take(self, files: list[Path]) -> tuple[list[Path], list[Path], int]:
        """Claim `files`: (those now this run's to ingest, those another run holds, how many another run stored
        in the state this run found them in)."""
        shown = {readable(str(f)): f for f in files}
        claimed = self._store.claims.claim(self._collection_id, self._run_id, list(shown))
        stored = self._store.claims.stored_states(self._collection_id, list(claimed))
        done = [p for p in claimed if p in stored and stored[p] == self._states.get(p)]
        if done:
            self._store.claims.unclaim(self._collection_id, self._run_id, done)
            self.by_others += len(done)
        return (
            [f for p, f in shown.items() if p in claimed and p not in done],
            [f for p, f in shown.items() if p not in claimed],
            len(done),
        )
