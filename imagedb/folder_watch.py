"""`imagedb ingest --watch`: keep a collection in step with folders. After a first ingest of them, files created,
changed or moved in are ingested once their size and mtime have stood still for a moment (a copy in progress is
never stored half), and files deleted or moved away are removed from the collection.

Changes come from watchdog: inotify (or the platform's own) by default, polling with `poll` for network folders,
where no change notifications arrive. A database that goes away (a restart) is waited for: the changes seen
meanwhile are stored once it is back. Ctrl-C ends the watch with the totals.

Not `imagedb watch`, which is copy detection (a watch list of images whose copies later ingests report).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

from imagedb.collection import get_collection
from imagedb.config import DEFAULT_COLLECTION
from imagedb.errors import DatabaseUnavailable, ImagedbError
from imagedb.files import find_images, is_image_name
from imagedb.ingest import IngestSummary, ingest
from imagedb.progress import NoProgress, Progress
from imagedb.store import Store

TICK_S = 0.25  # how often changes are looked at
RECONNECT_S = 2.0  # how often a lost database is tried again
POLL_INTERVAL_S = 1.0  # --poll: how often each folder is listed again


@dataclass
class WatchTotals:
    passes: int = 0
    added: int = 0
    reused: int = 0
    failed: int = 0
    removed: int = 0
    interrupted: bool = False

    def count(self, summary: IngestSummary) -> None:
        self.passes += 1
        self.added += summary.added
        self.reused += summary.reused
        self.failed += summary.failed
        self.interrupted = self.interrupted or summary.interrupted


class _Changes:
    """What changed under the watched folders since last asked; fed by watchdog's thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # path -> (first event, last event, last state)
        self._pending: dict[str, tuple[float, float, tuple[int, int] | None]] = {}
        self._gone: dict[str, float] = {}  # path -> when it went
        self._folders: set[str] = set()  # created or moved in: listed, their images pending

    def dispatch(self, event: Any) -> None:  # watchdog's handler interface
        kind = event.event_type
        if kind in ("opened", "closed_no_write"):
            return
        source, dest = os.fsdecode(event.src_path), os.fsdecode(getattr(event, "dest_path", "") or "")
        with self._lock:
            now = time.monotonic()
            if kind in ("deleted", "moved"):
                self._gone[source] = now
                self._pending.pop(source, None)
            arrived = dest if kind == "moved" else (source if kind != "deleted" else "")
            if not arrived:
                return
            if event.is_directory:
                if kind != "modified":
                    self._folders.add(arrived)
            else:
                first = self._pending.get(arrived, (now, now, None))[0]
                self._pending[arrived] = (first, now, None)

    def take(self, settle_s: float) -> tuple[list[Path], list[str]]:
        """(files whose size and mtime stood still for `settle_s` since their last event, paths gone)."""
        now = time.monotonic()
        with self._lock:
            folders, self._folders = self._folders, set()
        for folder in folders:  # outside the lock: listing a large folder must not hold up the watchdog thread
            with suppress(Exception):
                for path in find_images([folder]):
                    with self._lock:
                        self._pending.setdefault(str(path), (now, now, None))
        ready = []
        with self._lock:
            # A file's removal waits for the files that arrived with or before it (a rename's new name): stored
            # first, they reuse the vector stored under the old name.
            oldest = min((first for first, _, _ in self._pending.values()), default=float("inf"))
            gone = [p for p, at in self._gone.items() if at < oldest and not os.path.lexists(p)]
            self._gone = {p: at for p, at in self._gone.items() if at >= oldest}
            for path, (first, last, state) in list(self._pending.items()):
                if now - last < settle_s:
                    continue
                try:
                    info = os.stat(path)
                except OSError:
                    del self._pending[path]  # gone again: its deletion is in _gone
                    continue
                current = (info.st_size, info.st_mtime_ns)
                if current != state:
                    self._pending[path] = (first, now, current)  # still being written, or not looked at yet: wait
                else:
                    del self._pending[path]
                    ready.append(Path(path))
        return ready, gone

    def put_back(self, ready: Sequence[Path], gone: Sequence[str]) -> None:
        with self._lock:
            for path in ready:
                self._pending.setdefault(str(path), (0.0, 0.0, None))
            self._gone.update({p: 0.0 for p in gone})


def watch(
    connect: Callable[[], Store],
    paths: Sequence[str | os.PathLike[str]],
    *,
    poll: bool = False,
    settle_s: float = 2.0,
    progress: Progress | None = None,
    on_pass: Callable[[IngestSummary], None] | None = None,
    on_status: Callable[[str], None] | None = None,
    **options: Any,
) -> WatchTotals:
    """Ingest `paths`, then keep ingesting what changes under them until Ctrl-C (KeyboardInterrupt); `options` are
    ingest()'s. `connect` opens the database, again after it went away; `on_pass` is told of each ingest, and
    `on_status` of the database going and coming back."""
    from watchdog.observers import Observer
    from watchdog.observers.polling import PollingObserver

    totals = WatchTotals()
    say = on_status or (lambda text: None)
    given = [Path(p).expanduser().absolute() for p in paths]
    roots = [p.resolve() for p in given]
    files = {str(p) for p in given if not p.is_dir()}
    changes = _Changes()
    observer = PollingObserver(timeout=POLL_INTERVAL_S) if poll else Observer()
    for path in given:  # before the first pass, so that nothing changed during it is missed
        observer.schedule(changes, str(path if path.is_dir() else path.parent), recursive=path.is_dir())
    observer.start()
    options["loaded_models"] = {}  # each model loaded once, not on every change
    store: Store | None = None
    first = True  # the first pass, of everything under `paths`, runs (again) until it ends once
    try:
        store = connect()  # a database that is not there at all is an error, not waited for
        while not totals.interrupted:
            ready: list[Path] = []
            gone: list[str] = []
            if not first:
                time.sleep(TICK_S)
                ready, gone = changes.take(settle_s)
                ready = [p for p in ready if _wanted(p, given, files)]
                gone = [p for p in gone if _under(Path(p), given)]
                if not ready and not gone:
                    continue
            try:
                if store is None:
                    store = _reconnect(connect)
                    say("database back: storing the changes seen meanwhile")
                if first:
                    _passed(totals, ingest(store, paths, progress=progress, roots=roots, **options), on_pass)
                    first = False
                    options.pop("metadata", None)  # attached once
                    options.pop("include_forgotten", None)
                if ready:  # before the removals: a renamed file reuses the vector stored under its old name
                    _passed(totals, ingest(store, ready, progress=NoProgress(), roots=roots, **options), on_pass)
                    ready = []
                if gone:
                    target = get_collection(store, options.get("collection", DEFAULT_COLLECTION))
                    totals.removed += store.exclusions.remove_files(target.id, gone)
            except (psycopg.OperationalError, DatabaseUnavailable, _Reconnecting) as exc:
                changes.put_back(ready, gone)
                if store is not None:
                    say(f"database unavailable ({str(exc).strip().splitlines()[0]}): trying again every"
                        f" {RECONNECT_S:g} s; changes are kept meanwhile")  # fmt: skip
                    with suppress(Exception):
                        store.close(failing=True)
                    store = None
                time.sleep(RECONNECT_S)
    except KeyboardInterrupt:
        totals.interrupted = True
    finally:
        observer.stop()
        with suppress(Exception):
            observer.join(timeout=5)
        if store is not None:
            store.close(failing=True)
    return totals


def _passed(totals: WatchTotals, summary: IngestSummary, on_pass: Callable[[IngestSummary], None] | None) -> None:
    totals.count(summary)
    if on_pass:
        on_pass(summary)


class _Reconnecting(Exception):
    """The database is not back yet."""


def _reconnect(connect: Callable[[], Store]) -> Store:
    try:
        return connect()
    except ImagedbError as exc:  # e.g. the embedded server is still starting (or another command is starting it)
        raise _Reconnecting(str(exc)) from exc


def _under(path: Path, given: Sequence[Path]) -> bool:
    """Inside a watched folder that is still there (a network folder that went away is not a deletion), or a
    watched file."""
    return any(path == g or (g.is_dir() and path.is_relative_to(g)) for g in given)


def _wanted(path: Path, given: Sequence[Path], files: set[str]) -> bool:
    if str(path) in files:
        return True
    return is_image_name(path) and any(g.is_dir() and path.is_relative_to(g) for g in given)
