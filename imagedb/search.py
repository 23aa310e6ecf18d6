"""`imagedb search`: nearest images to a weighted mix of texts, image files and stored images, with filters.

A search runs in three steps, so that a server holds a database connection only while it uses one:
plan() reads the collection and the stored vectors of id: terms, query_vector() embeds texts and images with no
database at all, and nearest() asks the index. search() does all three on one connection.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import suppress
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

import numpy as np
import psycopg

from imagedb import collection as collections
from imagedb import embed, provenance, relevance, tuning
from imagedb.config import DEFAULT_COLLECTION
from imagedb.embed import ModelSpec
from imagedb.errors import InvalidInput, NotFound
from imagedb.files import BadImage
from imagedb.images import decode
from imagedb.query import Term
from imagedb.store import Collection, Filters, Store
from imagedb.store.records import ModelRecord

MAX_LIMIT = 1000
MAX_OFFSET = 100_000  # an index scan reads at most hnsw.max_scan_tuples rows: none lie past it
MAX_EF_SEARCH = 1000  # pgvector's upper bound for hnsw.ef_search
# Phones name HEIF files .heic; Pillow reports them as HEIF.
FORMAT_ALIASES = {"JPG": "JPEG", "TIF": "TIFF", "HEIC": "HEIF"}
FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "HEIF", "AVIF", "DICOM")  # what ingest stores


@dataclass(frozen=True)
class SearchResult:
    rank: int
    score: float  # cosine similarity, 1.0 for an identical vector
    image_id: int
    path: str
    date: datetime  # when taken, else the file's time
    relevance: float | None = None  # standard deviations above an unrelated image's score (relevance.py)
    others: int = 0  # with collapse_duplicates: the other images of its duplicate group, left out


@dataclass(frozen=True)
class Plan:
    """A checked search: what the database said before anything is embedded."""

    target: Collection
    terms: tuple[Term, ...]
    stored: dict[int, np.ndarray]  # the vectors of the id: terms, by id
    filters: Filters
    limit: int
    offset: int
    ef_search: int
    min_score: float | None
    sort: Literal["score", "date"]
    min_relevance: float | None = None
    collapse_duplicates: bool = False
    texts: dict[str, np.ndarray] = field(default_factory=dict)  # the text terms' cached vectors (text_embeddings)
    # The texts query_vector() embedded, for nearest() to cache: the same query later needs no model.
    fresh: dict[str, np.ndarray] = field(default_factory=dict)
    # The model's registry row when the plan needs the model: its weights file is verified before embedding.
    weights: ModelRecord | None = None

    @property
    def needs_model(self) -> bool:
        """Whether query_vector() runs the model (image files, texts not cached), not only stored vectors."""
        return any(t.kind == "image" or (t.kind == "text" and t.value not in self.texts) for t in self.terms)

    @property
    def model(self) -> ModelSpec:
        return collections.model_of(self.target)


def search(
    store: Store,
    terms: Sequence[Term],
    *,
    collection: str = DEFAULT_COLLECTION,
    model: ModelSpec | None = None,
    limit: int = 10,
    offset: int = 0,
    ef_search: int | None = None,
    filters: Filters = Filters(),
    min_score: float | None = None,
    sort: Literal["score", "date"] = "score",
    min_relevance: float | None = None,
    collapse_duplicates: bool = False,
) -> list[SearchResult]:
    """The `limit` best matches for the query `terms` (see query.py) that pass `filters`.

    min_score drops matches below that cosine similarity, min_relevance those less relevant (relevance.py);
    sort="date" orders the matches newest first. ef_search None: the collection's tuned value (tuning.py).
    Stored images named by id: terms are never results themselves ("more like this" leaves the image out).
    collapse_duplicates keeps the best match of each duplicate group (`imagedb dupes`).
    """
    checked = plan(
        store,
        terms,
        collection=collection,
        model=model,
        limit=limit,
        offset=offset,
        ef_search=ef_search,
        filters=filters,
        min_score=min_score,
        sort=sort,
        min_relevance=min_relevance,
        collapse_duplicates=collapse_duplicates,
    )
    return nearest(store, checked, query_vector(checked))


def plan(
    store: Store,
    terms: Sequence[Term],
    *,
    collection: str = DEFAULT_COLLECTION,
    model: ModelSpec | None = None,
    limit: int = 10,
    offset: int = 0,
    ef_search: int | None = None,
    filters: Filters = Filters(),
    min_score: float | None = None,
    sort: Literal["score", "date"] = "score",
    min_relevance: float | None = None,
    collapse_duplicates: bool = False,
) -> Plan:
    """Check the search and read what it needs from the database; raises InvalidInput or NotFound."""
    if not terms:
        raise InvalidInput("the query is empty: give a text, an image path or id:N")
    if not 1 <= limit <= MAX_LIMIT:
        raise InvalidInput(f"limit must be between 1 and {MAX_LIMIT}, not {limit}")
    if not 0 <= offset <= MAX_OFFSET:
        raise InvalidInput(f"offset must be between 0 and {MAX_OFFSET:,}, not {offset}")
    if ef_search is not None and not 1 <= ef_search <= MAX_EF_SEARCH:
        raise InvalidInput(f"ef_search must be between 1 and {MAX_EF_SEARCH}, not {ef_search}")
    if min_score is not None and not -1.0 <= min_score <= 1.0:
        raise InvalidInput(f"min_score is a cosine similarity, between -1 and 1, not {min_score}")
    if min_relevance is not None and not np.isfinite(min_relevance):
        raise InvalidInput(f"min_relevance is a number of standard deviations, not {min_relevance}")
    target = collections.get_collection(store, collection)
    if model is not None:  # any model the collection holds, e.g. one being added, to compare before switching
        target = collections.held_model(store, target, model)
    checked = _checked(store, target, filters)
    tuned = store.tuning.tuning(target)
    relevance.ensure_sample(store, tuned["sampled_count"] if tuned else None, target)
    stored: dict[int, np.ndarray] = {}
    for term in terms:
        if term.kind == "id" and int(term.value) not in stored:
            found = store.search.image_vector(int(term.value), target.model_id)
            if found is None:
                raise NotFound(f"no stored image with id {term.value} embedded by {collections.model_of(target)}")
            stored[int(term.value)] = found
    checked = replace(checked, exclude=tuple(stored))
    ef = ef_search if ef_search is not None else tuning.ef_search_for(tuned)
    texts = store.search.cached_texts(target.model_id, sorted({t.value for t in terms if t.kind == "text"}))
    needs_model = any(t.kind == "image" or (t.kind == "text" and t.value not in texts) for t in terms)
    weights = store.models.model_record(target.model_name, target.pretrained) if needs_model else None
    return Plan(
        target,
        tuple(terms),
        stored,
        checked,
        limit,
        offset,
        ef,
        min_score,
        sort,
        min_relevance,
        collapse_duplicates,
        texts,
        weights=weights,
    )


def nearest(store: Store, plan: Plan, query: np.ndarray) -> list[SearchResult]:
    """The plan's results for the query vector from query_vector(); caches the texts it embedded first."""
    if plan.fresh:
        # A replica or a role that may not write still searches; the text is embedded again next time.
        with suppress(psycopg.errors.ReadOnlySqlTransaction, psycopg.errors.InsufficientPrivilege):
            store.search.cache_texts(plan.target.model_id, plan.fresh)
    hits = store.search.nearest(
        plan.target,
        query,
        plan.limit,
        plan.ef_search,
        offset=plan.offset,
        filters=plan.filters,
        collapse=plan.collapse_duplicates,
    )
    base = relevance.baseline(store, plan.target, query)
    scored = [(h, base.relevance(h.score)) for h in hits]
    if plan.min_score is not None:
        scored = [(h, r) for h, r in scored if h.score >= plan.min_score]
    if plan.min_relevance is not None:
        # Without a baseline (an empty sample) nothing can be shown to be relevant enough.
        scored = [(h, r) for h, r in scored if r is not None and r >= plan.min_relevance]
    if plan.sort == "date":
        scored = sorted(scored, key=lambda pair: pair[0].date, reverse=True)
    return [
        SearchResult(rank, hit.score, hit.image_id, hit.path, hit.date, rel, hit.others)
        for rank, (hit, rel) in enumerate(scored, start=plan.offset + 1)
    ]


def _utc_naive(value: datetime | None) -> datetime | None:
    # The image date compared against is a naive UTC timestamp (taken_at, or mtime in UTC): an aware bound is
    # converted to it, so aware and naive bounds compare with each other and with the column.
    if value is None or value.tzinfo is None:
        return value
    try:
        return value.astimezone(timezone.utc).replace(tzinfo=None)
    except OverflowError as exc:  # 0001-01-01T00:00+01:00 is before the first representable moment in UTC
        raise InvalidInput(f"the date {value.isoformat()} is out of range once converted to UTC") from exc


def _checked(store: Store, target: Collection, filters: Filters) -> Filters:
    texts = [filters.camera, filters.format, filters.path, filters.modality, filters.body_part]
    texts += [v for pair in filters.attributes for v in pair]
    if any(t is not None and "\x00" in t for t in texts):
        raise InvalidInput("a filter value cannot contain a NUL character")
    if filters.attributes:
        known = store.images.attribute_keys(target.id)
        unknown = sorted({k for k, _ in filters.attributes} - known)
        if unknown:
            names = ", ".join(sorted(known)) or "none yet"
            raise InvalidInput(f"no image in {target.name!r} has the attribute {unknown[0]!r} (known: {names})")
    if filters.format is not None:
        fmt = filters.format.strip().upper().lstrip(".")
        fmt = FORMAT_ALIASES.get(fmt, fmt)
        if fmt not in FORMATS:  # a typo would otherwise match nothing, silently
            known = ", ".join(FORMATS)
            raise InvalidInput(f"unknown format {filters.format!r}: use one of {known} (or JPG, TIF, HEIC)")
        filters = replace(filters, format=fmt)
    filters = replace(filters, after=_utc_naive(filters.after), before=_utc_naive(filters.before))
    if filters.after and filters.before and filters.after >= filters.before:
        raise InvalidInput("--after must be earlier than --before")
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
    texts = sorted({t.value for t in plan.terms if t.kind == "text"} - plan.texts.keys())
    if texts:
        # Rounded as the cache stores them (halfvec), so a first query and its repeats give the same results.
        embedded = embed.load(spec).encode_texts(texts).astype(np.float16).astype(np.float32)
        plan.fresh.update(zip(texts, embedded, strict=True))
    for term in plan.terms:
        if term.kind == "text":
            vectors.append(plan.texts[term.value] if term.value in plan.texts else plan.fresh[term.value])
        elif term.kind == "id":
            vectors.append(plan.stored[int(term.value)])
        else:
            vectors.append(_image_vector(Path(term.value), spec))
    total = sum(t.weight * v / max(np.linalg.norm(v), 1e-12) for t, v in zip(plan.terms, vectors, strict=True))
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
