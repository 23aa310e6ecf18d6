"""`imagedb search`: nearest images to a weighted mix of texts, image files and stored images, with filters."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Literal

import numpy as np

from imagedb import collection as collections
from imagedb import embed
from imagedb.config import DEFAULT_COLLECTION, DEFAULT_EF_SEARCH
from imagedb.embed import ModelSpec
from imagedb.errors import InvalidInput, NotFound
from imagedb.images import BadImage, decode
from imagedb.query import Term
from imagedb.store import Collection, Filters, Store

MAX_LIMIT = 1000
MAX_EF_SEARCH = 1000  # pgvector's upper bound for hnsw.ef_search
FORMAT_ALIASES = {"JPG": "JPEG", "TIF": "TIFF"}


@dataclass(frozen=True)
class SearchResult:
    rank: int
    score: float  # cosine similarity, 1.0 for an identical vector
    image_id: int
    path: str
    date: datetime  # when taken, else the file's time


def search(
    store: Store,
    terms: Sequence[Term],
    *,
    collection: str = DEFAULT_COLLECTION,
    model: ModelSpec | None = None,
    limit: int = 10,
    offset: int = 0,
    ef_search: int = DEFAULT_EF_SEARCH,
    filters: Filters = Filters(),
    min_score: float | None = None,
    sort: Literal["score", "date"] = "score",
) -> list[SearchResult]:
    """The `limit` best matches for the query `terms` (see query.py) that pass `filters`.

    min_score drops matches below that cosine similarity; sort="date" orders the matches newest first.
    """
    if not terms:
        raise InvalidInput("the query is empty: give a text, an image path or id:N")
    if not 1 <= limit <= MAX_LIMIT:
        raise InvalidInput(f"limit must be between 1 and {MAX_LIMIT}, not {limit}")
    if offset < 0:
        raise InvalidInput(f"offset cannot be negative: {offset}")
    if not 1 <= ef_search <= MAX_EF_SEARCH:
        raise InvalidInput(f"ef_search must be between 1 and {MAX_EF_SEARCH}, not {ef_search}")
    if min_score is not None and not -1.0 <= min_score <= 1.0:
        raise InvalidInput(f"min_score is a cosine similarity, between -1 and 1, not {min_score}")
    target = collections.get(store, collection, model)
    filters = _checked(store, target, filters)
    query = query_vector(store, target, terms)
    hits = store.nearest(target, query, limit, ef_search, offset=offset, filters=filters)
    if min_score is not None:
        hits = [h for h in hits if h.score >= min_score]
    if sort == "date":
        hits = sorted(hits, key=lambda h: h.date, reverse=True)
    return [
        SearchResult(rank, hit.score, hit.image_id, hit.path, hit.date)
        for rank, hit in enumerate(hits, start=offset + 1)
    ]


def _checked(store: Store, target: Collection, filters: Filters) -> Filters:
    texts = [filters.camera, filters.format, filters.path, *(v for pair in filters.attributes for v in pair)]
    if any(t is not None and "\x00" in t for t in texts):
        raise InvalidInput("a filter value cannot contain a NUL character")
    if filters.attributes:
        known = store.attribute_keys(target.id)
        unknown = sorted({k for k, _ in filters.attributes} - known)
        if unknown:
            names = ", ".join(sorted(known)) or "none yet"
            raise InvalidInput(f"no image in {target.name!r} has the attribute {unknown[0]!r} (known: {names})")
    if filters.format is not None:
        fmt = filters.format.strip().upper().lstrip(".")
        filters = replace(filters, format=FORMAT_ALIASES.get(fmt, fmt))
    if filters.after and filters.before and filters.after >= filters.before:
        raise InvalidInput("--after must be earlier than --before")
    return filters


def query_vector(store: Store, target: Collection, terms: Sequence[Term]) -> np.ndarray:
    """The normalised weighted sum of the terms' normalised vectors."""
    spec = collections.model_of(target)
    vectors: list[np.ndarray] = []
    texts = [t.value for t in terms if t.kind == "text"]
    text_vectors = iter(embed.load(spec).encode_texts(texts)) if texts else iter(())
    for term in terms:
        if term.kind == "text":
            vectors.append(next(text_vectors))
        elif term.kind == "id":
            found = store.image_vector(int(term.value), target.model_id)
            if found is None:
                raise NotFound(f"no stored image with id {term.value} embedded by {spec}")
            vectors.append(found)
        else:
            vectors.append(_image_vector(Path(term.value), spec))
    total = sum(t.weight * v / max(np.linalg.norm(v), 1e-12) for t, v in zip(terms, vectors, strict=True))
    norm = float(np.linalg.norm(total))
    if norm < 1e-6:
        raise InvalidInput("the query's terms cancel each other out")
    return (total / norm).astype(np.float32)


def _image_vector(path: Path, spec: ModelSpec) -> np.ndarray:
    if not path.is_file():
        raise NotFound(f"no such image file: {path}")
    try:
        decoded = decode(path)
    except BadImage as exc:
        raise InvalidInput(f"cannot use {path} as a query: {exc}") from exc
    embedder = embed.load(spec)
    return embedder.encode_images([embedder.preprocess(decoded.pixels)])[0]
