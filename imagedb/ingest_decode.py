"""Ingest's decode side: decoding files in threads a few batches ahead, and turning each batch into vectors of every
model the collection holds, reusing stored vectors of identical content."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from imagedb import gpu_decode, provenance
from imagedb.batch_writers import EmbeddedBatch
from imagedb.dicom import DicomOptions
from imagedb.embed import Embedder, Preprocess
from imagedb.files import BadImage, outside, readable
from imagedb.images import Decoded, decode
from imagedb.store import Collection, ImageRecord, Store
from imagedb.store.records import ModelRecord

PREFETCH_BATCHES = 2
# Vectors a run keeps of what it embedded last, per model, so that content seen again before its batch commits is
# not embedded twice (a few batches' worth: 4,096 x 512 x 4 bytes = 8 MB).
RECENT_VECTORS = 4096
# What a decode worker hands back: the path (printable), the record and its input per model id, or the reason it
# failed. No pixels: a batch waiting to be embedded holds only thumbnails and model-sized tensors.
Prepared = tuple[str, ImageRecord | None, dict[int, object] | None, str | None]


class Models:
    """The embedders of every model the collection holds, the search model first. Read again after each batch:
    a `models add` started during this run gets the vectors of the images this run stores from then on."""

    def __init__(self, store: Store, target: Collection, loaded: dict[int, Embedder] | None = None) -> None:
        self._store, self._target = store, target
        # `loaded`: a caller's models kept from run to run (a watch ingests every few seconds), filled here.
        self.embedders: dict[int, Embedder] = {} if loaded is None else loaded
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
class DecodeOptions:
    keep_gps: bool
    keep_identifying: bool
    min_side: int  # the model's input size: decoded pixels are shrunk to no less
    dicom: DicomOptions = DicomOptions()
    roots: tuple[Path, ...] = ()  # the files and folders given, resolved: no symlink may lead out of them


def prepare(path: Path, preprocessors: dict[int, Preprocess], options: DecodeOptions) -> list[Prepared]:
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
        return inputs(path, decoded, preprocessors)
    except BadImage as exc:
        return [(shown, None, None, readable(str(exc)))]
    except Exception as exc:  # a bug or an exotic file must not end the run; keep the reason
        return [(shown, None, None, readable(f"unexpected error: {type(exc).__name__}: {exc}"))]


def inputs(path: Path, decoded: Decoded, preprocessors: dict[int, Preprocess]) -> list[Prepared]:
    # The other frames of a DICOM file stored frame by frame come in the same batch as the file.
    shown = readable(path)
    return [
        (shown, d.record, {m: p(d.pixels) for m, p in preprocessors.items()}, None) for d in [decoded, *decoded.more]
    ]


def prefetched(
    pool: ThreadPoolExecutor, batches: Iterator[list[Path]], models: Models, options: DecodeOptions
) -> Iterator[list[Prepared]]:
    """Batches of decoded files, taken from `batches` (never an empty one) only when their decoding starts; the
    next batches decode in the pool while the caller embeds this one. Each file gets the input of every model held
    when its batch was submitted (each model has its own preprocessing).

    Threads, not processes: on 16 cores, 16 decode processes did 799 camera JPEGs/s alone against 249 for threads
    (the GIL), yet the whole ingest went slower with them, 139-163 images/s against 239 (bench/results); on 2
    cores threads keep 0.95 of their standalone rate inside ingest, processes 0.67 (docs/benchmarks.md). With the
    search model on a CUDA GPU, JPEGs decode there (imagedb/gpu_decode.py), everything else as here."""

    def submit(paths: list[Path]) -> list[Future[list[Prepared]]]:
        preprocessors = {m: e.preprocessor for m, e in models.current().items()}
        device = gpu_decode.device_for(next(iter(models.current().values())).device)
        if device is None:
            return [pool.submit(prepare, p, preprocessors, options) for p in paths]
        return gpu_decode.submit_batch(
            pool, paths, device, keep_gps=options.keep_gps, keep_identifying=options.keep_identifying,
            min_side=options.min_side, take=lambda p: not outside(p, options.roots),
            on_cpu=lambda p: prepare(p, preprocessors, options), prepare=lambda p, d: inputs(p, d, preprocessors),
        )  # fmt: skip

    # Two batches queued ahead: the pool never drains while the caller embeds and stores (with one, its threads
    # idled through each batch's last few files).
    pending: deque[list[Future[list[Prepared]]]] = deque()
    while True:
        while len(pending) < PREFETCH_BATCHES and (following := next(batches, None)):
            pending.append(submit(following))
        if not pending:
            return
        yield [item for f in pending.popleft() for item in f.result()]


def embed_batch(
    store: Store, target: Collection, batch: list[Prepared], models: Models, forgotten: frozenset[str] = frozenset()
) -> EmbeddedBatch:
    """The vectors of a decoded batch; content whose SHA-256 is in `forgotten` (`imagedb forget --content`) is
    left out."""
    errors = [(path, reason) for path, _, _, reason in batch if reason is not None]
    excluded = {path for path, record, _, _ in batch if record is not None and record.sha256 in forgotten}
    good = [
        (record, tensors)
        for path, record, tensors, _ in batch
        if record is not None and tensors is not None and path not in excluded
    ]
    fresh: set[str] = set()
    vectors: dict[int, list[np.ndarray]] = {}
    for model_id, embedder in models.current().items():
        if all(model_id in tensors for _, tensors in good):  # else held since the batch was decoded: `models add`
            embedded, computed = _model_vectors(store, model_id, embedder, good, models.recent.setdefault(model_id, {}))
            vectors[model_id] = embedded
            if model_id == target.model_id:
                fresh = computed
    others = {m: v for m, v in vectors.items() if m != target.model_id}
    paths = tuple(dict.fromkeys(path for path, *_ in batch))
    return EmbeddedBatch(
        [r for r, _ in good], vectors.get(target.model_id, []), others, errors, fresh, len(paths), paths, len(excluded)
    )


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
