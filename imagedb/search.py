"""`imagedb search`: nearest images to a text, an image file, or a stored image."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from imagedb import collection as collections
from imagedb import embed
from imagedb.config import DEFAULT_COLLECTION
from imagedb.embed import ModelSpec
from imagedb.errors import InvalidInput, NotFound
from imagedb.images import BadImage, decode
from imagedb.store import Store

MAX_LIMIT = 1000
MAX_EF_SEARCH = 1000  # pgvector's upper bound for hnsw.ef_search


@dataclass(frozen=True)
class SearchResult:
    rank: int
    score: float  # cosine similarity, 1.0 for an identical vector
    image_id: int
    path: str


def search(
    store: Store,
    *,
    text: str | None = None,
    image: str | Path | None = None,
    like: int | None = None,
    collection: str = DEFAULT_COLLECTION,
    model: ModelSpec | None = None,
    limit: int = 10,
    ef_search: int | None = None,
) -> list[SearchResult]:
    """Exactly one of `text`, `image` (a file) or `like` (a stored image's id) is the query."""
    if sum(q is not None for q in (text, image, like)) != 1:
        raise InvalidInput("give exactly one query: a text, --image PATH, or --like ID")
    if not 1 <= limit <= MAX_LIMIT:
        raise InvalidInput(f"limit must be between 1 and {MAX_LIMIT}, not {limit}")
    if ef_search is not None and not 1 <= ef_search <= MAX_EF_SEARCH:
        raise InvalidInput(f"ef_search must be between 1 and {MAX_EF_SEARCH}, not {ef_search}")
    target = collections.get(store, collection, model)
    if like is not None:
        found = store.image_vector(like, target.model_id)
        if found is None:
            raise NotFound(f"no stored image with id {like} embedded by {collections.model_of(target)}")
        query: np.ndarray = found
    elif text is not None:
        if not text.strip():
            raise InvalidInput("the search text is empty")
        query = embed.load(collections.model_of(target)).encode_texts([text])[0]
    else:
        query = _image_vector(Path(str(image)), collections.model_of(target))
    hits = store.nearest(target, query, limit, ef_search)
    return [SearchResult(rank, hit.score, hit.image_id, hit.path) for rank, hit in enumerate(hits, start=1)]


def _image_vector(path: Path, spec: ModelSpec) -> np.ndarray:
    if not path.is_file():
        raise NotFound(f"no such image file: {path}")
    try:
        decoded = decode(path)
    except BadImage as exc:
        raise InvalidInput(f"cannot use {path} as a query: {exc}") from exc
    embedder = embed.load(spec)
    return embedder.encode_images([embedder.preprocess(decoded.pixels)])[0]
