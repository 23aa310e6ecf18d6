"""`imagedb ingest`: find images, decode each once, embed new content, store everything batch by batch."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from psycopg.pq import TransactionStatus

from imagedb import cpus, keywords, relevance
from imagedb import ocr as ocr_module
from imagedb.attributes import read_rows
from imagedb.batch_writers import BatchWriters, EmbeddedBatch
from imagedb.collection import get_or_create_collection, model_of
from imagedb.config import DEFAULT_COLLECTION
from imagedb.dicom import DicomOptions
from imagedb.embed import Embedder, ModelSpec
from imagedb.files import file_mtime, find_images, readable
from imagedb.ingest_claims import Claimer
from imagedb.ingest_decode import DecodeOptions, Models, embed_batch, prefetched
from imagedb.keywords import WordsSummary
from imagedb.progress import (
    ATTACHING_METADATA,
    BUILDING_INDEX,
    EMBEDDING,
    LOADING_MODEL,
    SCANNING,
    NoProgress,
    Progress,
)
from imagedb.store import Collection, Store
from imagedb.store.exclusions import path_key
from imagedb.store.images import BatchWritten


@dataclass
class IngestSummary:
    collection: str
    run_id: int
    added: int = 0  # stored with a freshly computed embedding
    reused: int = 0  # stored with the embedding of identical content already in the database
    skipped: int = 0  # unchanged since the last run (same path, size and mtime)
    failed: int = 0
    seconds: float = 0.0
    embedding_seconds: float = 0.0  # decoding, embedding and storing alone: no model load, no walk, no index build
    errors: list[tuple[str, str]] = field(default_factory=list)
    metadata_matched: int = 0  # rows of the --metadata file attached to images
    metadata_unmatched: list[str] = field(default_factory=list)  # their keys, for rows that matched no image
    watch_hits: int = 0  # stored images that look like a watched one (`imagedb watch hits`)
    by_others: int = 0  # files another ingest running at the same time stored (store/claims.py)
    busy: int = 0  # files another ingest was still ingesting when this one ended
    failed_unchanged: int = 0  # files that failed before and have not changed since: not tried again
    forgotten: int = 0  # files `imagedb forget` keeps out (by path, or by content)
    interrupted: bool = False  # stopped by Ctrl-C or SIGTERM: the counts are what was committed
    words: WordsSummary | None = None  # captions and OCR text read after the batches (imagedb.keywords)


# From this many new images on (and more than are indexed already), the HNSW index is built after the load.
BULK_THRESHOLD = 5000
# Batches stored at once, each on its own connection: HNSW inserts take nearly all of a batch's write time and
# pgvector runs them in parallel across backends (bench/insert_bench.py). At least two, so storing one batch
# overlaps embedding the next.
WRITERS = min(4, max(2, cpus.available() // 4))


def ingest(
    store: Store,
    paths: Sequence[str | os.PathLike[str]],
    *,
    collection: str = DEFAULT_COLLECTION,
    model: ModelSpec | None = None,
    batch_size: int = 32,
    keep_gps: bool = False,
    keep_identifying: bool = False,
    metadata: Path | None = None,
    progress: Progress | None = None,
    bulk_threshold: int = BULK_THRESHOLD,
    dicom: DicomOptions = DicomOptions(),
    allow_random_weights: bool = False,
    retry_failed: bool = False,
    include_forgotten: bool = False,
    roots: Sequence[Path] | None = None,
    loaded_models: dict[int, Embedder] | None = None,
    ocr: bool = False,
) -> IngestSummary:
    """Store every image under `paths` in `collection`; rerunning adds only what is new or changed.

    Bad files are recorded in ingest_errors and counted, never raised: one broken photo must not stop a
    library of thousands; a rerun tries such a file again only once its size or mtime changed, or with
    `retry_failed`. Each batch is committed on its own. `metadata` (CSV or JSON Lines) attaches user
    attributes once the images are stored. EXIF GPS and identifying fields (exif.IDENTIFYING_EXIF_TAGS) are
    stored only with `keep_gps` / `keep_identifying`. DICOM files are de-identified unless `dicom.keep_phi`, which
    only a collection created with it accepts (see imagedb.dicom). New images get a vector of every model the
    collection holds (one being added by `imagedb models add` too); a registered model's checkpoint is verified
    before use (provenance.verify), and a new collection's model must have weights unless `allow_random_weights`.

    Ingests of the same collection running at once share the files (imagedb.ingest_claims). Files `imagedb
    forget` removed stay out unless `include_forgotten`, which lets them back in for good. Ctrl-C (KeyboardInterrupt)
    ends the run with a summary of what was committed (`interrupted`), not an exception, once it has begun
    storing. `roots`: the folders no symlink may lead out of, when not `paths` themselves (a watch's folders);
    `loaded_models`: the models of earlier runs of the caller, kept (and filled) to load each once.
    Once the batches are stored, the new images' captions are read, and with `ocr` their text (imagedb.keywords).
    """
    if ocr:
        ocr_module.require()  # one line saying how to turn it on, before any work
    started = time.perf_counter()
    progress = progress or NoProgress()
    progress.phase(SCANNING)
    files = find_images(paths, on_found=progress.advance)
    attribute_rows = read_rows(metadata) if metadata else []  # a bad file fails before anything is stored
    target = get_or_create_collection(
        store, collection, model, keep_phi=dicom.keep_phi, allow_random_weights=allow_random_weights
    )
    summary = IngestSummary(collection=target.name, run_id=store.images.start_run(target.id, target.model_id))
    states = _states(files)
    if include_forgotten:
        store.exclusions.unforget_paths(target.id, [readable(str(f)) for f in files])
    forgotten_paths, forgotten_hashes = set(), set()
    if not include_forgotten:
        forgotten_paths, forgotten_hashes = store.exclusions.forgotten(target.id)
    failed = {} if retry_failed else store.exclusions.failed_states(target.id)
    # A file named on the command line is the user asking for it again: tried whatever it failed with before
    # (a link refused as outside the folders given when its folder was walked, for one).
    for given in paths:
        if not Path(given).expanduser().is_dir():
            failed.pop(readable(str(Path(given).expanduser().absolute())), None)
    todo = _todo(files, states, store.images.file_states(target.id), failed, forgotten_paths, summary)
    # A model's first large load: inserting row by row into HNSW costs 100x a COPY, and building the index
    # afterwards is faster than both together (bench/results/vectors_100000.txt). Only while the index serves
    # nothing: once the model has embeddings the load goes into the index, so searches never lose it (building a
    # new one after the load would cost the same load plus a build: bench/results/rebuild.txt). A run killed in
    # between leaves no index; the next run builds it (restore_hnsw_index is a no-op when a valid one exists).
    bulk = len(todo) >= bulk_threshold and not store.models.model_has_embeddings(target.model_id)
    index_definition = store.index.drop_hnsw_index(target.model_id) if bulk else None
    claimer: Claimer | None = None
    try:
        if todo:
            spec = model_of(target)
            progress.phase(LOADING_MODEL, detail=str(spec))
            models = Models(store, target, loaded_models)
            models.refresh()
            progress.phase(EMBEDDING, len(todo))
            given = roots or [Path(p).expanduser() for p in paths]
            options = DecodeOptions(keep_gps, keep_identifying, models.input_side(), dicom,
                                    tuple(Path(p).resolve() for p in given))  # fmt: skip
            embedding_started = time.perf_counter()
            claimer = Claimer(store, target.id, summary.run_id, states)
            remaining = todo
            while remaining:
                run = _Pipeline(store, target, summary, models, options, progress, claimer, states)
                run.store_all(claimer.batches(remaining, batch_size, progress.advance), frozenset(forgotten_hashes))
                remaining = claimer.wait_for_deferred(progress.advance)
            summary.embedding_seconds = time.perf_counter() - embedding_started
    except KeyboardInterrupt:
        summary.interrupted = True  # Ctrl-C stops now, as a kill would: the index build is the next run's
    finally:
        if claimer is not None:
            summary.by_others += claimer.by_others
            summary.busy += claimer.busy
        try:
            _wind_down(store, summary, claimer, target, index_definition, progress)
        except KeyboardInterrupt:  # Ctrl-C just after the last commit: what was committed is still this run's
            summary.interrupted = True
            _settle(store)
    if summary.interrupted:
        summary.seconds = time.perf_counter() - started
        with suppress(Exception):
            _finish(store, summary)
        return summary
    try:
        if attribute_rows:
            progress.phase(ATTACHING_METADATA, len(attribute_rows))
            unmatched = store.images.attach_attributes(target.id, attribute_rows)
            summary.metadata_unmatched = sorted(unmatched)
            summary.metadata_matched = sum(1 for key, _ in attribute_rows if key not in unmatched)
        summary.words = keywords.after_ingest(store, target, read_ocr=ocr)
        summary.seconds = time.perf_counter() - started
        _finish(store, summary)
        if summary.added or summary.reused:
            relevance.refresh_sample(store, target)  # the baseline of relevance follows the collection's growth
    except KeyboardInterrupt:  # the images are stored: say so, as above
        summary.interrupted = True
        _settle(store)
        with suppress(Exception):
            _finish(store, summary)
    return summary


def _wind_down(
    store: Store,
    summary: IngestSummary,
    claimer: Claimer | None,
    target: Collection,
    index_definition: str | None,
    progress: Progress,
) -> None:
    """After the batches: release the claims and put the HNSW index back, except after Ctrl-C or when the
    database went away (the next run builds the index, or `db reindex`)."""
    if summary.interrupted:
        _settle(store)
    usable = not (store.conn.closed or store.conn.broken)
    if claimer is not None and usable:
        with suppress(Exception):  # after Ctrl-C; the claims end with the session anyway
            claimer.close()
    if not summary.interrupted and usable:
        if index_definition is not None:
            progress.phase(BUILDING_INDEX)
        store.index.restore_hnsw_index(target.model_id, target.dim, index_definition)


def _settle(store: Store) -> None:
    """After Ctrl-C, which may have come in the middle of a statement or transaction on the run's own connection:
    end it, so that the summary can still be recorded and the connection closes cleanly."""
    with suppress(Exception):
        if store.conn.info.transaction_status == TransactionStatus.ACTIVE:
            store.conn.cancel_safe(timeout=5)
            # Interrupted between sending a statement and reading its result, the connection stays ACTIVE until
            # the result (now an error) is read: read it, else nothing more can run on it.
            while store.conn.pgconn.get_result() is not None:
                pass
    with suppress(Exception):
        if store.conn.info.transaction_status != TransactionStatus.IDLE:
            store.conn.rollback()


def _finish(store: Store, summary: IngestSummary) -> None:
    skipped = summary.skipped + summary.by_others + summary.busy + summary.failed_unchanged + summary.forgotten
    store.images.finish_run(summary.run_id, summary.added, skipped, summary.reused, summary.failed)


def _states(files: list[Path]) -> dict[str, tuple[int, datetime]]:
    """path shown -> (size, mtime) of each file that can be stat'ed (decode() records why another cannot)."""
    states = {}
    for path in files:
        with suppress(OSError):
            stat = path.stat()
            states[readable(str(path))] = (stat.st_size, file_mtime(stat))
    return states


def _todo(
    files: list[Path],
    states: dict[str, tuple[int, datetime]],
    known: dict[str, tuple[int, datetime]],
    failed: dict[str, tuple[int, datetime]],
    forgotten: set[str],
    summary: IngestSummary,
) -> list[Path]:
    """The files to store: not forgotten, and new or changed since they were stored, or since they failed."""
    todo = []
    for path in files:
        shown = readable(str(path))
        state = states.get(shown)
        if forgotten and path_key(shown) in forgotten:
            summary.forgotten += 1
        elif state is not None and known.get(shown) == state:
            summary.skipped += 1
        elif state is not None and failed.get(shown) == state:
            summary.failed_unchanged += 1
        else:
            todo.append(path)
    return todo


class _Pipeline:
    """One pass of decoding, embedding and storing batches, accounting each in the summary as it commits."""

    def __init__(
        self,
        store: Store,
        target: Collection,
        summary: IngestSummary,
        models: Models,
        options: DecodeOptions,
        progress: Progress,
        claimer: Claimer,
        states: dict[str, tuple[int, datetime]],
    ) -> None:
        self.store, self.target, self.summary, self.models = store, target, summary, models
        self.options, self.progress, self.claimer, self.states = options, progress, claimer, states

    def store_all(self, batches: Iterator[list[Path]], forgotten: frozenset[str]) -> None:
        writers = BatchWriters(self.store, WRITERS)
        try:
            with ThreadPoolExecutor(cpus.available()) as pool, writers:
                for prepared in prefetched(pool, batches, self.models, self.options):
                    embedded = embed_batch(self.store, self.target, prepared, self.models, forgotten)
                    embedded.error_states = {p: self.states[p] for p, _ in embedded.errors if p in self.states}
                    writers.put(self.target, self.summary.run_id, embedded)
                    for done, written in writers.finished():
                        self._account(done, written)
                    self.models.refresh()
                writers.wait_all()
                for done, written in writers.finished():
                    self._account(done, written)
        except KeyboardInterrupt:
            # The batches that committed while the run stopped (BatchWriters gives them a moment) were kept.
            for done, written in writers.completed():
                self._account(done, written, release=False)
            raise

    def _account(self, batch: EmbeddedBatch, written: BatchWritten, release: bool = True) -> None:
        # The claims first: a Ctrl-C while they are released leaves the batch to BatchWriters.completed(), uncounted.
        if release:
            self.claimer.release(batch.paths)
        self.progress.advance(batch.files)
        summary, already = self.summary, written.already
        # Another ingest of this collection may have stored some of these files first.
        fresh_written = {r.sha256 for r in batch.records if r.path not in already} & batch.fresh
        summary.watch_hits += written.watch_hits
        summary.added += len(fresh_written)
        summary.reused += len(batch.records) - len(already) - len(fresh_written)
        summary.by_others += len(already)
        summary.failed += len(batch.errors)
        summary.forgotten += batch.excluded
        summary.errors.extend(batch.errors)
