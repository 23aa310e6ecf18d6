"""Relevance: how far a result's score stands above what an unrelated image of its collection scores for the
same query.

A cosine score means little on its own: with CLIP, relevant and unrelated images separate near 0.88 for one query
and near 0.93 for another, so no flat `--min-score` fits every query. Relevance is the score in standard deviations
above the mean of the query's scores against a fixed random sample of the collection's images (per collection and
model, drawn by ingest and redrawn once the collection has grown by half): most of a collection is unrelated to
most queries, so the sample's scores are what "unrelated" looks like for this query.
"""

from __future__ import annotations

from contextlib import suppress
from dataclasses import dataclass

import numpy as np
import psycopg

from imagedb.request import LOWER_IS_BETTER
from imagedb.store import Collection, Store

SAMPLE_SIZE = 1000  # images in a collection's sample: the mean and deviation of 1000 scores vary by a few percent
GROWTH = 1.5  # the sample is redrawn once the collection holds this many times the images it was drawn from
MIN_SAMPLE = 2  # fewer sampled images give no deviation: results then carry no relevance
MIN_DEVIATION = 1e-6


@dataclass(frozen=True)
class Baseline:
    """The query's scores against the collection's sample."""

    mean: float
    deviation: float
    sampled: int
    lower_is_better: bool = False  # a distance (euclidean): relevance counts deviations below the mean

    def relevance(self, score: float) -> float | None:
        if self.sampled < MIN_SAMPLE or self.deviation < MIN_DEVIATION:
            return None
        above = (score - self.mean) / self.deviation
        return -above if self.lower_is_better else above


def needs_sample(sampled_count: int | None, size: int) -> bool:
    """Whether a sample drawn when the collection held `sampled_count` images (None: never) is out of date."""
    if sampled_count is None:
        return size > 0
    if size <= sampled_count:
        return False
    # A sample short of SAMPLE_SIZE is the whole collection as it was: redrawn whenever images are added.
    return sampled_count < SAMPLE_SIZE or size >= GROWTH * sampled_count


def refresh_sample(store: Store, collection: Collection, *, force: bool = False) -> bool:
    """Redraw the collection's sample if it has none or has grown since (ingest calls this); True if redrawn."""
    row = store.tuning.tuning(collection)
    if not force and not needs_sample(row["sampled_count"] if row else None, store.tuning.collection_size(collection)):
        return False
    store.tuning.draw_relevance_sample(collection, SAMPLE_SIZE)
    return True


def ensure_sample(store: Store, sampled_count: int | None, collection: Collection) -> None:
    """Draw a sample for a collection that never had one (stored before relevance existed, or by a tool that
    writes rows itself). A role or server that may not write (a reader, a standby), or a full disk: the search goes
    on without it."""
    if sampled_count is not None:
        return
    with suppress(psycopg.errors.InsufficientPrivilege, psycopg.errors.ReadOnlySqlTransaction, psycopg.errors.DiskFull):
        refresh_sample(store, collection)


def baseline(store: Store, collection: Collection, query: np.ndarray, metric: str = "cosine") -> Baseline:
    """The sample's scores in the search's own measure, so that relevance compares like with like: a Euclidean
    distance is not an affine function of the cosine, nor is a Pearson correlation."""
    mean, deviation, sampled = store.tuning.score_baseline(collection, query, metric)
    return Baseline(mean, deviation, sampled, metric in LOWER_IS_BETTER)
