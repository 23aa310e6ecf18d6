"""`imagedb ingest`: find images, decode each once, embed new content, store everything batch by batch."""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from imagedb import cpus, keywords, provenance, relevance
from imagedb import ocr as ocr_module
from imagedb.attributes import read_rows
from imagedb.batch_writers import BatchWriters, EmbeddedBatch
from imagedb.collection import get_or_create_collection, model_of
from imagedb.config import DEFAULT_COLLECTION
from imagedb.dicom import DicomOptions
from imagedb.embed import Embedder, ModelSpec, Preprocess
from imagedb.files import BadImage, file_mtime, find_images, outside, readable
from imagedb.images import decode
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
from imagedb.store import Collection, ImageRecord, Store
from imagedb.store.images import BatchWritten
from imagedb.store.records import ModelRecord


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
    words: WordsSummary | None = None  # captions and OCR text read after the batches (imagedb.keywords)


# From this many new images on (and more than are indexed already), the HNSW index is built after the load.
BULK_THRESHOLD = 5000
PREFETCH_BATCHES = 2
# Batches stored at once, each on its own connection: HNSW inserts take nearly all of a batch's write time and
# pgvector runs them in parallel across backends (bench/insert_bench.py). At least two, so storing one batch
# overlaps embedding the next.
WRITERS = min(4, max(2, cpus.available() // 4))
# Vectors a run keeps of what it embedded last, per model, so that content seen again before its batch commits is
# not embedded twice (a few batches' worth: 4,096 x 512 x 4 bytes = 8 MB).
RECENT_VECTORS = 4096
# What a decode worker hands back: the path (printable), the record and its input per model id, or the reason it
# failed. No pixels: a batch waiting to be embedded holds only thumbnails and model-sized tensors.
_Prepared = tuple[str, ImageRecord | None, dict[int, object] | None, str | None]


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
    ocr: bool = False,
) -> IngestSummary:
    """Store every image under `paths` in `collection`; rerunning adds only what is new or changed.

    Bad files are recorded in ingest_errors and counted, never raised: one broken photo must not stop a
    library of thousands. Each batch is committed on its own. `metadata` (CSV or JSON Lines) attaches user
    attributes once the images are stored. EXIF GPS and identifying fields (exif.IDENTIFYING_EXIF_TAGS) are
    stored only with `keep_gps` / `keep_identifying`. DICOM files are de-identified unless `dicom.keep_phi`, which
    only a collection created with it accepts (see imagedb.dicom). New images get a vector of every model the
    collection holds (one being added by `imagedb models add` too); a registered model's checkpoint is verified
    before use (provenance.verify), and a new collection's model must have weights unless `allow_random_weights`.
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
    todo = _changed_files(files, store.images.file_states(target.id))
    summary.skipped = len(files) - len(todo)
    # A model's first large load: inserting row by row into HNSW costs 100x a COPY, and building the index
    # afterwards is faster than both together (bench/results/vectors_100000.txt). Only while the index serves
    # nothing: once the model has embeddings the load goes into the index, so searches never lose it (building a
    # new one after the load would cost the same load plus a build: bench/results/rebuild.txt). A run killed in
    # between leaves no index; the next run builds it (restore_hnsw_index is a no-op when a valid one exists).
    bulk = len(todo) >= bulk_threshold and not store.models.model_has_embeddings(target.model_id)
    index_definition = store.index.drop_hnsw_index(target.model_id) if bulk else None
    interrupted = False
    try:
        if todo:
            spec = model_of(target)
            progress.phase(LOADING_MODEL, detail=str(spec))
            models = _Models(store, target)
            models.refresh()
            progress.phase(EMBEDDING, len(todo))
            roots = tuple(Path(p).expanduser().resolve() for p in paths)
            options = _DecodeOptions(keep_gps, keep_identifying, models.input_side(), dicom, roots)
            embedding_started = time.perf_counter()
            with ThreadPoolExecutor(cpus.available()) as pool, BatchWriters(store, WRITERS) as writers:
                for prepared in _prefetched(pool, todo, batch_size, models, options):
                    embedded = _embed(store, target, prepared, models)
                    for done, written in writers.submit(target, summary.run_id, embedded):
                        _account(summary, done, written)
                        progress.advance(done.files)
                    models.refresh()
                for done, written in writers.drain():
                    _account(summary, done, written)
                    progress.advance(done.files)
            summary.embedding_seconds = time.perf_counter() - embedding_started
    except KeyboardInterrupt:
        interrupted = True  # Ctrl-C stops now, as a kill would: the build (minutes at a million) is the next run's
        raise
    finally:
        # Not after Ctrl-C, nor when the database went away: the next run builds the index (or `db reindex`).
        if not (interrupted or store.conn.closed or store.conn.broken):
            if index_definition is not None:
                progress.phase(BUILDING_INDEX)
            store.index.restore_hnsw_index(target.model_id, target.dim, index_definition)
    if attribute_rows:
        progress.phase(ATTACHING_METADATA, len(attribute_rows))
        unmatched = store.images.attach_attributes(target.id, attribute_rows)
        summary.metadata_unmatched = sorted(unmatched)
        summary.metadata_matched = sum(1 for key, _ in attribute_rows if key not in unmatched)
    summary.words = keywords.after_ingest(store, target, read_ocr=ocr)
    summary.seconds = time.perf_counter() - started
    store.images.finish_run(summary.run_id, summary.added, summary.skipped, summary.reused, summary.failed)
    if summary.added or summary.reused:
        relevance.refresh_sample(store, target)  # the baseline of relevance follows the collection's growth
    return summary


def _changed_files(files: list[Path], known: dict[str, tuple[int, object]]) -> list[Path]:
    todo = []
    for path in files:
        try:
            stat = path.stat()
        except OSError:
            todo.append(path)  # decode() records why it cannot be read
            continue
        if known.get(str(path)) != (stat.st_size, file_mtime(stat)):
            todo.append(path)
    return todo


class _Models:
    """The embedders of every model the collection holds, the search model first. Read again after each batch:
    a `models add` started during this run gets the vectors of the images this run stores from then on."""

    def __init__(self, store: Store, target: Collection) -> None:
        self._store, self._target = store, target
        self.embedders: dict[int, Embedder] = {}
        self.recent: dict[int, dict[str, np.ndarray]] = {}  # see RECENT_VECTORS

    def refresh(self) -> None:
        held = {record.id: record for record, _ in self._store.models.held_models(self._target.id)}
        held.setdefault(self._target.model_id, ModelRecord(self._target.model_id, self._target.model_name,
                                                           self._target.pretrained, self._target.dim))  # fmt: skip
        for model_id in [m for m in self.embedders if m not in held]:
            del self.embedders[model_id]  # dropped meanwhile
        for model_id, record in held.items():
            if model_id not in self.embedders:  # verified first: a replaced checkpoint never stores a vector
                self.embedders[model_id] = provenance.load_registered(self._store, record)

    def input_side(self) -> int:
        return max(e.input_side() for e in self.embedders.values())

    def current(self) -> dict[int, Embedder]:
        return dict(self.embedders)


@dataclass(frozen=True)
class _DecodeOptions:
    keep_gps: bool
    keep_identifying: bool
    min_side: int  # the model's input size: decoded pixels are shrunk to no less
    dicom: DicomOptions = DicomOptions()
    roots: tuple[Path, ...] = ()  # the files and folders given, resolved: no symlink may lead out of them


def _prepare(path: Path, preprocessors: dict[int, Preprocess], options: _DecodeOptions) -> list[_Prepared]:
    """Decode one file and make each model's input from it, in a decode thread."""
    shown = readable(path)  # a non-UTF-8 name must reach neither the database nor a terminal as surrogates
    try:
        if reason := outside(path, options.roots):
            return [(shown, None, None, reason)]
        decoded = decode(
            path,
            keep_gps=options.keep_gps,
            keep_identifying=options.keep_identifying,
            min_side=options.min_side,
            dicom_options=options.dicom,
        )
        # The other frames of a DICOM file stored frame by frame come in the same batch as the file.
        return [
            (shown, d.record, {m: p(d.pixels) for m, p in preprocessors.items()}, None)
            for d in [decoded, *decoded.more]
        ]
    except BadImage as exc:
        return [(shown, None, None, readable(str(exc)))]
    except Exception as exc:  # a bug or an exotic file must not end the run; keep the reason
        return [(shown, None, None, readable(f"unexpected error: {type(exc).__name__}: {exc}"))]


def _prefetched(
    pool: ThreadPoolExecutor, files: list[Path], batch_size: int, models: _Models, options: _DecodeOptions
) -> Iterator[list[_Prepared]]:
    """Batches of decoded files; the next batches decode in the pool while the caller embeds this one. Each file
    gets the input of every model held when its batch was submitted (each model has its own preprocessing).

    Threads, not processes: on 16 cores, 16 decode processes did 799 camera JPEGs/s alone against 249 for threads
    (the GIL), yet the whole ingest went slower with them, 139-163 images/s against 239 (bench/results)."""

    def submit(paths: list[Path]) -> list[Future[list[_Prepared]]]:
        preprocessors = {m: e.preprocessor for m, e in models.current().items()}
        return [pool.submit(_prepare, p, preprocessors, options) for p in paths]

    # Two batches queued ahead: the pool never drains while the caller embeds and stores (with one, its threads
    # idled through each batch's last few files).
    batches = iter([files[i : i + batch_size] for i in range(0, len(files), batch_size)])
    pending: deque[list[Future[list[_Prepared]]]] = deque()
    while True:
        while len(pending) < PREFETCH_BATCHES and (following := next(batches, None)):
            pending.append(submit(following))
        if not pending:
            return
        yield [item for f in pending.popleft() for item in f.result()]


def _embed(store: Store, target: Collection, batch: list[_Prepared], models: _Models) -> EmbeddedBatch:
    errors = [(path, reason) for path, _, _, reason in batch if reason is not None]
    good = [(record, tensors) for _, record, tensors, _ in batch if record is not None and tensors is not None]
    fresh: set[str] = set()
    vectors: dict[int, list[np.ndarray]] = {}
    for model_id, embedder in models.current().items():
        if all(model_id in tensors for _, tensors in good):  # else held since the batch was decoded: `models add`
            embedded, computed = _model_vectors(store, model_id, embedder, good, models.recent.setdefault(model_id, {}))
            vectors[model_id] = embedded
            if model_id == target.model_id:
                fresh = computed
    others = {m: v for m, v in vectors.items() if m != target.model_id}
    files = len({path for path, *_ in batch})
    return EmbeddedBatch([r for r, _ in good], vectors[target.model_id], others, errors, fresh, files)


def _account(summary: IngestSummary, batch: EmbeddedBatch, written: BatchWritten) -> None:
    already = written.already
    summary.watch_hits += written.watch_hits
    # Another ingest of this collection may have stored some of these files first: they count as unchanged.
    fresh_written = {r.sha256 for r in batch.records if r.path not in already} & batch.fresh
    summary.added += len(fresh_written)
    summary.reused += len(batch.records) - len(already) - len(fresh_written)
    summary.skipped += len(already)
    summary.failed += len(batch.errors)
    summary.errors.extend(batch.errors)


def _model_vectors(
    store: Store,
    model_id: int,
    embedder: Embedder,
    good: list[tuple[ImageRecord, dict[int, object]]],
    recent: dict[str, np.ndarray],
) -> tuple[list[np.ndarray], set[str]]:
    """One model's vector for each record, reusing stored vectors of identical content, and those this run
    embedded lately (`recent`: their batches may still be in its writers' hands, not yet committed); and the
    SHA-256s of the contents it embedded."""
    known = store.images.vectors_by_sha256(model_id, [r.sha256 for r, _ in good])
    known.update({r.sha256: recent[r.sha256] for r, _ in good if r.sha256 not in known and r.sha256 in recent})
    # Identical files within the batch are embedded once.
    fresh: dict[str, object] = {}
    for record, tensors in good:
        if record.sha256 not in known:
            fresh.setdefault(record.sha256, tensors[model_id])
    if fresh:
        vectors = dict(zip(fresh, embedder.encode_images(list(fresh.values())), strict=True))
        known.update(vectors)
        recent.update(vectors)
        for sha256 in list(recent)[: max(0, len(recent) - RECENT_VECTORS)]:  # the oldest first
            del recent[sha256]
    return [known[r.sha256] for r, _ in good], set(fresh)
