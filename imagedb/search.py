"""`imagedb search`: nearest images to a weighted mix of texts, image files and stored images, with filters.

A search runs in three steps, so that a server holds a database connection only while it uses one:
plan() reads the collection and the stored vectors of id: terms, query_vector() embeds texts and images with no
database at all, and nearest() asks the index. search() does all three on one connection.
"""

from __future__ import annotations

from contextlib import suppress
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path

import numpy as np
import psycopg

from imagedb import embed, provenance, relevance, tuning
from imagedb.collection import get_collection, held_model, model_of
from imagedb.embed import ModelSpec
from imagedb.errors import InvalidInput, NotFound
from imagedb.files import BadImage
from imagedb.images import decode
from imagedb.request import Filters, SearchRequest
from imagedb.store import Collection, Store
from imagedb.store.records import ModelRecord


@dataclass(frozen=True)
class SearchResult:
    rank: int
    score: float  # in the request's metric: cosine similarity (1.0 for an identical vector) unless it names another
    image_id: int
    path: str
    date: datetime  # when taken, else the file's time
    relevance: float | None = None  # standard deviations better than an unrelated image's score (relevance.py)
    others: int = 0  # with collapse_duplicates: the other images of its duplicate group, left out
    # Why it matched, for keyword and hybrid rankings (docs/keywords.md): its 1-based rank among the vector
    # candidates and among the keyword matches (None: not among them), ts_rank_cd, and the query's words it holds.
    vector_rank: int | None = None
    keyword_rank: int | None = None
    keyword_score: float | None = None
    matched: tuple[str, ...] = ()


@dataclass(frozen=True)
class Plan:
    """A checked search: what the database said before anything is embedded."""

    target: Collection
    request: SearchRequest  # checked, its filters normalised and the id: terms' images excluded
    stored: dict[int, np.ndarray]  # the vectors of the id: terms, by id
    ef_search: int  # the request's, else the collection's tuned value (for a query with text, text queries')
    texts: dict[str, np.ndarray] = field(default_factory=dict)  # the text terms' cached vectors (text_embeddings)
    # The texts query_vector() embedded, for nearest() to cache: the same query later needs no model.
    fresh: dict[str, np.ndarray] = field(default_factory=dict)
    # The model's registry row when the plan needs the model: its weights file is verified before embedding.
    weights: ModelRecord | None = None
    # The words to rank by (keywords alone, or fused with the vector by --hybrid); None: the vector alone.
    words: str | None = None

    @property
    def needs_model(self) -> bool:
        """Whether query_vector() runs the model (image files, texts not cached), not only stored vectors."""
        return any(t.kind == "image" or (t.kind == "text" and t.value not in self.texts) for t in self.request.terms)

    @property
    def model(self) -> ModelSpec:
        return model_of(self.target)


def search(store: Store, request: SearchRequest) -> list[SearchResult]:
    """The `request.limit` best matches for its terms (see query.py) that pass its filters.

    Results are ranked and scored by request.metric (cosine by default; store/metrics.py). min_score drops matches
    below that similarity, max_distance (euclidean) those farther, min_relevance those less relevant (relevance.py);
    sort="date" orders the matches newest first. ef_search None: the collection's tuned value (tuning.py).
    Stored images named by id: terms are never results themselves ("more like this" leaves the image out).
    collapse_duplicates keeps the best match of each duplicate group (`imagedb dupes`).
    """
    checked = plan(store, request)
    return nearest(store, checked, query_vector(checked))


def plan(store: Store, request: SearchRequest) -> Plan:
    """Check the search and read what it needs from the database; raises InvalidInput or NotFound."""
    request = request.checked()
    target = get_collection(store, request.collection)
    if request.model is not None:  # any model the collection holds, e.g. one being added, to compare before switching
        target = held_model(store, target, request.model)
    filters = _checked(store, target, request.filters)
    tuned = store.tuning.tuning(target)
    relevance.ensure_sample(store, tuned["sampled_count"] if tuned else None, target)
    keywords = [t for t in request.terms if t.kind == "keyword"]
    terms = tuple(t for t in request.terms if t.kind != "keyword")
    filters = filters.replace(
        keywords=filters.keywords + tuple(t.value for t in keywords if t.weight > 0),
        not_keywords=filters.not_keywords + tuple(t.value for t in keywords if t.weight < 0),
    ).checked()
    words = _words(request, terms, filters)
    stored: dict[int, np.ndarray] = {}
    for term in terms:
        if term.kind == "id" and int(term.value) not in stored:
            found = store.search.image_vector(int(term.value), target.model_id)
            if found is None:
                raise NotFound(f"no stored image with id {term.value} embedded by {model_of(target).shown}")
            if not np.any(found):  # all zeros, as a writer can store: it has no direction to search along
                raise InvalidInput(
                    f"image {term.value} has a stored vector of zero length, which is like nothing: run"
                    " `imagedb db check`"
                )
            stored[int(term.value)] = found
    texts = store.search.cached_texts(target.model_id, sorted({t.value for t in terms if t.kind == "text"}))
    needs_model = any(t.kind == "image" or (t.kind == "text" and t.value not in texts) for t in terms)
    return Plan(
        target=target,
        request=replace(request, terms=terms, filters=filters.replace(exclude=tuple(stored))),
        stored=stored,
        # A query with text in it gets text queries' own tuned ef_search: they sit far from the images (tuning.py).
        ef_search=request.ef_search
        if request.ef_search is not None
        else tuning.ef_search_for(tuned, text=any(t.kind == "text" for t in terms)),
        texts=texts,
        weights=store.models.model_record(target.model_name, target.pretrained) if needs_model else None,
        words=words,
    )


def _words(request: SearchRequest, terms: tuple, filters: Filters) -> str | None:  # type: ignore[type-arg]
    """What a keyword ranking ranks by: the kw: words when the query has nothing else, and with --hybrid its
    added texts too; None when the vector alone ranks."""
    if not terms:
        return " ".join(filters.keywords)
    if request.hybrid:
        texts = [t.value for t in terms if t.kind == "text" and t.weight > 0]
        return " ".join([*texts, *filters.keywords]) or None
    return None


def nearest(store: Store, plan: Plan, query: np.ndarray) -> list[SearchResult]:
    """The plan's results for the query vector from query_vector(); caches the texts it embedded first."""
    if plan.fresh:
        # A replica, a role that may not write (only the owner writes the cache) or a full disk: the search still
        # answers; the text is embedded again next time.
        with suppress(
            psycopg.errors.ReadOnlySqlTransaction, psycopg.errors.InsufficientPrivilege, psycopg.errors.DiskFull
        ):
            store.search.cache_texts(plan.target.model_id, plan.fresh)
    request = plan.request
    if plan.words is not None:
        return _ranked(store, plan, query if len(query) else None)
    hits = store.search.nearest(
        plan.target,
        query,
        request.limit,
        plan.ef_search,
        offset=request.offset,
        filters=request.filters,
        collapse=request.collapse_duplicates,
        metric=request.metric,
    )
    base = relevance.baseline(store, plan.target, query, request.metric)
    scored = [(h, base.relevance(h.score)) for h in hits]
    if request.min_score is not None:
        scored = [(h, r) for h, r in scored if h.score >= request.min_score]
    if request.max_distance is not None:
        scored = [(h, r) for h, r in scored if h.score <= request.max_distance]
    if request.min_relevance is not None:
        # Without a baseline (an empty sample) nothing can be shown to be relevant enough.
        scored = [(h, r) for h, r in scored if r is not None and r >= request.min_relevance]
    if request.sort == "date":
        scored = sorted(scored, key=lambda pair: pair[0].date, reverse=True)
    # kw: conditions hold for every result: their words are what each matched.
    words = " ".join(request.filters.keywords) if scored else ""
    matched = tuple(dict.fromkeys(store.keywords.lexemes(words))) if words else ()
    return [
        SearchResult(rank, hit.score, hit.image_id, hit.path, hit.date, rel, hit.others, matched=matched)
        for rank, (hit, rel) in enumerate(scored, start=request.offset + 1)
    ]


def _ranked(store: Store, plan: Plan, query: np.ndarray | None) -> list[SearchResult]:
    """Keywords alone (score: ts_rank_cd), or fused with the vector (score: cosine similarity)."""
    request = plan.request
    assert plan.words is not None
    hits = store.keywords.ranked(
        plan.target, query, plan.words, request.limit, request.offset, request.filters, plan.ef_search
    )
    base = relevance.baseline(store, plan.target, query, request.metric) if query is not None else None
    results = []
    for h in hits:
        score = h.score if query is not None else h.keyword_score
        rel = base.relevance(h.score) if base is not None and h.score is not None else None
        if query is not None and request.min_score is not None and (h.score is None or h.score < request.min_score):
            continue
        if request.min_relevance is not None and (rel is None or rel < request.min_relevance):
            continue
        results.append((h, score or 0.0, rel))
    if request.sort == "date":
        results.sort(key=lambda r: r[0].date, reverse=True)
    return [
        SearchResult(
            rank, score, h.image_id, h.path, h.date, rel,
            vector_rank=h.vector_rank, keyword_rank=h.keyword_rank, keyword_score=h.keyword_score, matched=h.matched,
        )
        for rank, (h, score, rel) in enumerate(results, start=request.offset + 1)
    ]  # fmt: skip


def _checked(store: Store, target: Collection, filters: Filters) -> Filters:
    filters = filters.checked()
    if filters.attributes:  # a key no image has would otherwise match nothing, silently
        known = store.images.attribute_keys(target.id)
        unknown = sorted({k for k, _ in filters.attributes} - known)
        if unknown:
            names = ", ".join(sorted(known)) or "none yet"
            raise InvalidInput(f"no image in {target.name!r} has the attribute {unknown[0]!r} (known: {names})")
    return filters


def load_model(plan: Plan) -> embed.Embedder:
    """The plan's model, its weights file verified first as ingest verifies it: other weights under the
    registered path would give vectors that match nothing stored, and the text-query cache would keep them."""
    if plan.weights is not None:
        provenance.verify(plan.model, plan.weights)  # hashed once per process while the file stays the same
    return embed.load(plan.model)


def query_vector(plan: Plan) -> np.ndarray:
    """The normalised weighted sum of the terms' normalised vectors; embeds texts and images, no database."""
    spec = plan.model
    if plan.needs_model:
        load_model(plan)
    vectors: list[np.ndarray] = []
    terms = plan.request.terms
    if not terms:  # keywords alone: no vector
        return np.zeros(0, dtype=np.float32)
    texts = sorted({t.value for t in terms if t.kind == "text"} - plan.texts.keys())
    if texts:
        # Rounded as the cache stores them (halfvec), so a first query and its repeats give the same results.
        embedded = embed.load(spec).encode_texts(texts).astype(np.float16).astype(np.float32)
        plan.fresh.update(zip(texts, embedded, strict=True))
    for term in terms:
        if term.kind == "text":
            vectors.append(plan.texts[term.value] if term.value in plan.texts else plan.fresh[term.value])
        elif term.kind == "id":
            vectors.append(plan.stored[int(term.value)])
        else:
            vectors.append(_image_vector(Path(term.value), spec))
    total = sum(t.weight * v / max(np.linalg.norm(v), 1e-12) for t, v in zip(terms, vectors, strict=True))
    if not np.all(np.isfinite(total)):  # weights are bounded in query.py; this guards any other caller
        raise InvalidInput("the query's weights are too large: use weights between 0 and 1000")
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
