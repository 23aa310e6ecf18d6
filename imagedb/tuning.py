"""Recall that checks itself: measure the HNSW index's recall@k against an exact scan, on stored vectors used as
queries, and keep per collection the smallest ef_search that meets a target (`imagedb tune`), which searches, the
API and imagedb_nearest then use.

Recall falls as a collection grows at a fixed ef_search (bench/results/growth.txt: 0.99 at 100k vectors and 0.82
at 500k with pgvector's default of 40), so the value is measured on the collection itself rather than fixed.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

from imagedb import collection as collections
from imagedb.config import DEFAULT_COLLECTION, DEFAULT_EF_SEARCH
from imagedb.errors import InvalidInput
from imagedb.store import Collection, Filters, Store

K = 10
DEFAULT_QUERIES = 100
DEFAULT_TARGET_RECALL = 0.95
# The ef_search values tried, smallest first (pgvector accepts 1 to 1000).
CANDIDATES = (10, 16, 20, 24, 32, 40, 48, 64, 80, 100, 128, 160, 200, 256, 320, 400, 500, 640, 800, 1000)
CHECKED = (10, 20, 40, 100, 200, 400)  # what `db check --recall` prints, beside the ef_search in use
SEED = 0.42  # the same queries on every run, so that two checks of an unchanged collection agree
REGROWTH = 1.5  # `db info` suggests re-tuning once the collection holds this many times the images measured


@dataclass(frozen=True)
class RecallPoint:
    ef_search: int
    recall: float  # recall@K: the share of the exact top K that the index returned
    p50_ms: float  # median time of one search, as `imagedb search` runs it (client side)


@dataclass(frozen=True)
class Tuned:
    collection: str
    ef_search: int
    target: float
    met: bool  # False when even the largest candidate fell short; ef_search is then that largest
    points: list[RecallPoint]
    queries: int
    size: int


@dataclass(frozen=True)
class LastRecall:
    recall: float
    ef_search: int
    at: datetime
    size: int  # the collection's size when it was measured
    grown: float  # its size now over then

    @property
    def stale(self) -> bool:
        return self.grown >= REGROWTH


def ef_search_for(tuning: dict | None) -> int:  # type: ignore[type-arg]
    """The ef_search searches use: the tuned one, else imagedb's default."""
    return int(tuning["ef_search"]) if tuning and tuning.get("ef_search") else DEFAULT_EF_SEARCH


def choose_ef_search(
    measure: Callable[[int], RecallPoint], target: float, candidates: Sequence[int] = CANDIDATES
) -> tuple[int, bool, list[RecallPoint]]:
    """The smallest candidate whose measured recall meets `target`, whether one did, and what was measured.
    Shared with bench/growth_bench.py, which runs it on its own table."""
    points = []
    for ef in candidates:
        points.append(measure(ef))
        if points[-1].recall >= target:
            return ef, True, points
    return candidates[-1], False, points


class _Probe:
    """Recall of the collection's index at any ef_search, against exact answers computed once."""

    def __init__(self, store: Store, collection: Collection, queries: int) -> None:
        if not 1 <= queries <= 10_000:
            raise InvalidInput(f"queries must be between 1 and 10000, not {queries}")
        self.store, self.collection = store, collection
        self.size = store.collection_size(collection)
        if self.size < 2:
            raise InvalidInput(
                f"collection {collection.name!r} holds {self.size} embedded image(s): recall needs at least 2"
            )
        self.ids, self.vectors = store.sample_vectors(collection, queries, SEED)
        # Each query is a stored image, left out of both answers (as `search --like` leaves it out).
        self.truth = [
            store.exact_nearest(collection, v, K, exclude=i) for i, v in zip(self.ids, self.vectors, strict=True)
        ]

    def __call__(self, ef_search: int) -> RecallPoint:
        found, times = 0, []
        for image_id, vector, truth in zip(self.ids, self.vectors, self.truth, strict=True):
            started = time.perf_counter()
            hits = self.store.nearest(self.collection, vector, K, ef_search, filters=Filters(exclude=(image_id,)))
            times.append((time.perf_counter() - started) * 1000)
            found += len({h.image_id for h in hits} & set(truth))
        expected = sum(len(t) for t in self.truth)
        return RecallPoint(ef_search, found / expected if expected else 1.0, statistics.median(times))


def tune(
    store: Store,
    collection: str = DEFAULT_COLLECTION,
    *,
    target: float = DEFAULT_TARGET_RECALL,
    queries: int = DEFAULT_QUERIES,
) -> Tuned:
    """Measure recall@10 at growing ef_search and store the smallest that meets `target` for the collection."""
    if not 0 < target <= 1:
        raise InvalidInput(f"the target recall is a share, above 0 and at most 1, not {target}")
    found = collections.get(store, collection)
    probe = _Probe(store, found, queries)
    ef, met, points = choose_ef_search(probe, target)
    store.save_tuned_ef_search(found, ef, target, points[-1].recall, probe.size)
    return Tuned(found.name, ef, target, met, points, len(probe.ids), probe.size)


def check_recall(
    store: Store, collection: str = DEFAULT_COLLECTION, *, queries: int = DEFAULT_QUERIES
) -> tuple[int, list[RecallPoint], int]:
    """Recall@10 and latency at a few ef_search values and at the one searches use, which is stored as the
    collection's last recall. Returns (the ef_search in use, the points, the collection's size)."""
    found = collections.get(store, collection)
    in_use = ef_search_for(store.tuning(found))
    probe = _Probe(store, found, queries)
    points = [probe(ef) for ef in sorted({*CHECKED, in_use})]
    store.save_recall(found, next(p.recall for p in points if p.ef_search == in_use), in_use, probe.size)
    return in_use, points, probe.size


def last_recall(store: Store, collection: Collection) -> LastRecall | None:
    row = store.tuning(collection)
    if not row or row.get("recall") is None:
        return None
    then = int(row["recall_count"] or 0)
    now = store.collection_size(collection)
    return LastRecall(float(row["recall"]), int(row["recall_ef_search"]), row["recall_at"], then, now / max(then, 1))
