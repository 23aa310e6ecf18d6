"""Recall that checks itself: measure the HNSW index's recall@k against an exact scan, for image queries and for
text queries apart, and keep per collection the smallest ef_search that meets a target for each (`imagedb tune`),
which searches, the API and imagedb_nearest then use.

Recall falls as a collection grows at a fixed ef_search (bench/results/growth.txt: 0.99 at 100k vectors and 0.82
at 500k with pgvector's default of 40), so the value is measured on the collection itself rather than fixed.

Text queries are measured apart because they fare worse: CLIP's text vectors sit far from every image (the modality
gap), so a search enters the graph away from its neighbours. At 1M vectors the index that answers image queries at
recall@10 0.968 answers text-like ones at 0.688 at the same ef_search (bench/results/graph_1000000.txt). They are
the texts users asked (the text cache) when it holds enough, else probes made like them (text_like()).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

import numpy as np

from imagedb.collection import get_collection
from imagedb.config import DEFAULT_COLLECTION, DEFAULT_EF_SEARCH
from imagedb.errors import InvalidInput
from imagedb.store import Collection, Filters, Store

K = 10
DEFAULT_QUERIES = 100
DEFAULT_TARGET_RECALL = 0.95
# The ef_search values tried, smallest first (pgvector accepts 1 to 1000). From twice the 10 results asked for:
# below that, 100 queries that meet the target by a hair were seen to miss it on held-out queries (5k vectors).
CANDIDATES = (20, 24, 32, 40, 48, 64, 80, 100, 128, 160, 200, 256, 320, 400, 500, 640, 800, 1000)
CHECKED = (10, 20, 40, 100, 200, 400)  # what `db check --recall` prints, beside the ef_search in use
SEED = 0.42  # the same queries on every run, so that two checks of an unchanged collection agree
REGROWTH = 1.5  # `db info` suggests re-tuning once the collection holds this many times the images measured
# The cached texts are used as text queries once there are this many (or as many as asked for, if fewer): below,
# one query's 10 neighbours move the recall by more than the gap between two candidate ef_search values.
ENOUGH_TEXTS = 20
# Norm of the offset that makes a text-like probe of an image query when the cache holds no text to measure the
# gap from: bench/common.py's TEXT_GAP (cosine about 0.64 between a point and its "caption"), the queries of the
# 1M measurements.
TEXT_GAP = 1.2
# The seed of the probes' random directions. Not 0: synthetic sets drawn from a generator seeded 0 (every bench's,
# and NumPy examples') take their cluster centres from that same stream, so each probe was pushed straight at another
# cluster and a third of them stalled in it (tune then asked for ef_search 640-1000 where 100-200 were enough).
PROBE_SEED = 0x696D6764


@dataclass(frozen=True)
class RecallPoint:
    ef_search: int
    recall: float  # recall@K: the share of the exact top K that the index returned
    p50_ms: float  # median time of one search, as `imagedb search` runs it (client side)


@dataclass(frozen=True)
class Choice:
    """The ef_search chosen for one kind of query, and what was measured on the way."""

    ef_search: int
    met: bool  # False when no candidate (within the latency bound) reached the target
    points: list[RecallPoint]
    limited: bool = False  # stopped by the latency bound rather than by the largest candidate

    @property
    def recall(self) -> float:
        return next(p.recall for p in self.points if p.ef_search == self.ef_search)


@dataclass(frozen=True)
class Tuned:
    collection: str
    target: float
    image: Choice
    text: Choice
    queries: int  # image queries
    text_queries: str  # what the text queries were: "N cached texts" or "N text-like probes ..."
    size: int
    max_latency_ms: float | None = None

    @property
    def ef_search(self) -> int:
        return self.image.ef_search

    @property
    def text_ef_search(self) -> int:
        return self.text.ef_search

    @property
    def met(self) -> bool:
        return self.image.met and self.text.met

    @property
    def points(self) -> list[RecallPoint]:
        return self.image.points


@dataclass(frozen=True)
class Checked:
    """`db check --recall`: recall at a few ef_search values and at those searches use, per kind of query."""

    in_use: int
    points: list[RecallPoint]
    text_in_use: int
    text_points: list[RecallPoint]
    queries: int
    text_queries: str
    size: int


@dataclass(frozen=True)
class LastRecall:
    recall: float
    ef_search: int
    at: datetime
    size: int  # the collection's size when it was measured
    grown: float  # its size now over then
    text_recall: float | None = None
    text_ef_search: int | None = None
    text_queries: str | None = None

    @property
    def stale(self) -> bool:
        return self.grown >= REGROWTH


def ef_search_for(tuning: dict | None, *, text: bool = False) -> int:  # type: ignore[type-arg]
    """The ef_search searches use: the tuned one (text queries' own when tune measured them), else the default."""
    if text and tuning and tuning.get("text_ef_search"):
        return int(tuning["text_ef_search"])
    return int(tuning["ef_search"]) if tuning and tuning.get("ef_search") else DEFAULT_EF_SEARCH


def held_out_like(vectors: np.ndarray, nearest_scores: np.ndarray, seed: int = PROBE_SEED) -> np.ndarray:
    """Queries like an image that is not stored, made from stored ones: each vector moved in a random direction
    by the distance to its own nearest neighbour, then normalised.

    A stored vector is a node of the graph, so the search walks straight to it and its neighbours: measured at
    100k clustered vectors, 100 stored vectors met recall 0.95 at ef_search 20 where held-out queries got 0.926.
    A point as far from the stored one as its neighbour is, and not in the graph, is what a new photo is."""
    rng = np.random.default_rng(seed)
    directions = rng.standard_normal(vectors.shape).astype(np.float32)
    directions -= (directions * vectors).sum(1, keepdims=True) * vectors  # orthogonal to each vector
    directions /= np.maximum(np.linalg.norm(directions, axis=1, keepdims=True), 1e-12)
    distances = np.sqrt(np.clip(2.0 - 2.0 * nearest_scores, 0.0, 4.0))[:, None]  # chord length on the sphere
    moved = vectors / np.linalg.norm(vectors, axis=1, keepdims=True) + distances * directions
    return (moved / np.linalg.norm(moved, axis=1, keepdims=True)).astype(np.float32)


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)).astype(np.float32)


def modality_gap(images: np.ndarray, texts: np.ndarray, seed: int = PROBE_SEED) -> np.ndarray:
    """The offset from image vectors to text vectors: the difference of their centroids when there are texts (how
    the gap of CLIP-like models is measured), else a fixed random direction of norm TEXT_GAP."""
    if len(texts) and len(images):
        return (_unit(texts).mean(0) - _unit(images).mean(0)).astype(np.float32)
    gap = np.random.default_rng(seed).standard_normal(images.shape[1]).astype(np.float32)
    return (gap * TEXT_GAP / np.linalg.norm(gap)).astype(np.float32)


def text_like(image_queries: np.ndarray, gap: np.ndarray) -> np.ndarray:
    """Probes like text queries: image queries pushed by the modality gap and normalised, as bench/common.py's
    search_set makes its text-like queries - near their images' neighbours, away from every stored vector."""
    return _unit(image_queries + gap[None, :])


def choose_ef_search(
    measure: Callable[[int], RecallPoint],
    target: float,
    candidates: Sequence[int] = CANDIDATES,
    max_latency_ms: float | None = None,
) -> tuple[int, bool, list[RecallPoint]]:
    """The smallest candidate whose measured recall meets `target` with a median time within `max_latency_ms`,
    whether one did, and what was measured. None met: the best recall within the bound (the largest candidate
    measured under it; the smallest candidate if none was). Shared with bench/growth_bench.py."""
    points: list[RecallPoint] = []
    for ef in candidates:
        points.append(measure(ef))
        if max_latency_ms is not None and points[-1].p50_ms > max_latency_ms:
            break  # larger ones only take longer
        if points[-1].recall >= target:
            return ef, True, points
    within = [p for p in points if max_latency_ms is None or p.p50_ms <= max_latency_ms]
    return (within[-1].ef_search if within else candidates[0]), False, points


def _choice(measure: Callable[[int], RecallPoint], target: float, max_latency_ms: float | None) -> Choice:
    ef, met, points = choose_ef_search(measure, target, max_latency_ms=max_latency_ms)
    limited = max_latency_ms is not None and any(p.p50_ms > max_latency_ms for p in points)
    return Choice(ef, met, points, limited and not met)


class _Probe:
    """Recall of the collection's index at any ef_search for a set of queries, against exact answers computed
    once."""

    def __init__(self, store: Store, collection: Collection, vectors: np.ndarray) -> None:
        self.store, self.collection, self.vectors = store, collection, vectors
        self.truth = [store.tuning.exact_nearest(collection, v, K) for v in vectors]

    def __call__(self, ef_search: int) -> RecallPoint:
        found, times = 0, []
        for vector, truth in zip(self.vectors, self.truth, strict=True):
            started = time.perf_counter()
            hits = self.store.search.nearest(self.collection, vector, K, ef_search)
            times.append((time.perf_counter() - started) * 1000)
            found += len({h.image_id for h in hits} & set(truth))
        expected = sum(len(t) for t in self.truth)
        return RecallPoint(ef_search, found / expected if expected else 1.0, statistics.median(times) if times else 0.0)


@dataclass(frozen=True)
class _Queries:
    image: _Probe
    text: _Probe
    text_source: str
    size: int


def _queries(store: Store, collection: Collection, count: int) -> _Queries:
    """`count` image queries (held out like new photos) and `count` text queries: the most recent cached texts
    when there are enough, else text-like probes made from the image queries."""
    if not 1 <= count <= 10_000:
        raise InvalidInput(f"queries must be between 1 and 10000, not {count}")
    size = store.tuning.collection_size(collection)
    if size < 2:
        raise InvalidInput(f"collection {collection.name!r} holds {size} embedded image(s): recall needs at least 2")
    ids, stored = store.tuning.sample_vectors(collection, count, SEED)
    # Each stored image's nearest other image, through the index at its largest ef_search (for a stored
    # vector that is all but exact), sets how far its query is moved (see held_out_like).
    nearest = [
        store.search.nearest(collection, v, 1, 1000, filters=Filters(exclude=(i,)))
        for i, v in zip(ids, stored, strict=True)
    ]
    scores = np.array([hits[0].score if hits else 1.0 for hits in nearest], dtype=np.float32)
    images = held_out_like(stored, scores) if len(ids) else stored
    cached = store.tuning.recent_texts(collection, count)
    cached = cached[np.linalg.norm(cached, axis=1) > 1e-6] if len(cached) else cached  # no direction: no query
    if len(cached) >= min(count, ENOUGH_TEXTS):
        texts, source = cached, f"{len(cached)} cached texts"
    else:
        texts = text_like(images, modality_gap(stored, cached))
        gap = f"the gap of {len(cached)} cached texts" if len(cached) else "a generated gap, no cached texts"
        source = f"{len(texts)} text-like probes ({gap})"
    return _Queries(_Probe(store, collection, images), _Probe(store, collection, texts), source, size)


def tune(
    store: Store,
    collection: str = DEFAULT_COLLECTION,
    *,
    target: float = DEFAULT_TARGET_RECALL,
    queries: int = DEFAULT_QUERIES,
    max_latency_ms: float | None = None,
) -> Tuned:
    """Measure recall@10 at growing ef_search, for image and for text queries, and store for each the smallest
    that meets `target` (within `max_latency_ms` of median search time, when given) for the collection."""
    if not 0 < target <= 1:
        raise InvalidInput(f"the target recall is a share, above 0 and at most 1, not {target}")
    if max_latency_ms is not None and not max_latency_ms > 0:
        raise InvalidInput(f"the latency bound is in milliseconds, above 0, not {max_latency_ms}")
    found = get_collection(store, collection)
    probes = _queries(store, found, queries)
    image = _choice(probes.image, target, max_latency_ms)
    text = _choice(probes.text, target, max_latency_ms)
    store.tuning.save_tuned_ef_search(
        found, image.ef_search, target, image.recall, probes.size, (text.ef_search, text.recall, probes.text_source)
    )
    return Tuned(found.name, target, image, text, len(probes.image.vectors), probes.text_source, probes.size,
                 max_latency_ms)  # fmt: skip


def check_recall(store: Store, collection: str = DEFAULT_COLLECTION, *, queries: int = DEFAULT_QUERIES) -> Checked:
    """Recall@10 and latency at a few ef_search values and at those searches use, for image and text queries; the
    recall at the values in use is stored as the collection's last recall."""
    found = get_collection(store, collection)
    tuned = store.tuning.tuning(found)
    in_use, text_in_use = ef_search_for(tuned), ef_search_for(tuned, text=True)
    probes = _queries(store, found, queries)
    points = [probes.image(ef) for ef in sorted({*CHECKED, in_use})]
    text_points = [probes.text(ef) for ef in sorted({*CHECKED, text_in_use})]
    recall = next(p.recall for p in points if p.ef_search == in_use)
    text_recall = next(p.recall for p in text_points if p.ef_search == text_in_use)
    store.tuning.save_recall(found, recall, in_use, probes.size, (text_in_use, text_recall, probes.text_source))
    return Checked(in_use, points, text_in_use, text_points, len(probes.image.vectors), probes.text_source,
                   probes.size)  # fmt: skip


def last_recall(store: Store, collection: Collection) -> LastRecall | None:
    row = store.tuning.tuning(collection)
    if not row or row.get("recall") is None:
        return None
    then = int(row["recall_count"] or 0)
    now = store.tuning.collection_size(collection)
    text = row.get("text_recall")
    return LastRecall(
        float(row["recall"]),
        int(row["recall_ef_search"]),
        row["recall_at"],
        then,
        now / max(then, 1),
        float(text) if text is not None else None,
        int(row["text_recall_ef_search"]) if text is not None else None,
        row.get("text_queries"),
    )
