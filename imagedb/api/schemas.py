"""What the API takes and gives: response models and the query parameters shared by the search routes."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import Query
from pydantic import BaseModel

from imagedb.attributes import parse_pairs
from imagedb.config import DEFAULT_COLLECTION
from imagedb.search import MAX_LIMIT, MAX_OFFSET
from imagedb.store import Filters


class SearchHit(BaseModel):
    rank: int
    score: float
    # Standard deviations above the mean score of the collection's random sample for this query (None: the
    # collection has too few images for a sample).
    relevance: float | None
    duplicates: int = 0  # with collapse_duplicates: the other images of its duplicate group, not listed
    id: int
    path: str
    date: datetime
    thumbnail: str


class SearchResponse(BaseModel):
    results: list[SearchHit]


class ImageInfo(BaseModel):
    id: int
    collection: str
    path: str
    sha256: str
    size_bytes: int
    mtime: datetime
    width: int
    height: int
    format: str
    taken_at: datetime | None
    camera_make: str | None
    camera_model: str | None
    orientation: int | None
    exif: dict[str, Any]
    attributes: dict[str, Any]
    ingested_at: datetime


class CollectionInfo(BaseModel):
    collection: str
    model: str
    pretrained: str
    dim: int
    images: int
    embeddings: int
    errors: int


class Problem(BaseModel):
    detail: str


def filters(
    after: datetime | None = None,
    before: datetime | None = None,
    camera: str | None = None,
    format: str | None = None,
    min_width: Annotated[int | None, Query(ge=1, le=2**31 - 1)] = None,
    min_height: Annotated[int | None, Query(ge=1, le=2**31 - 1)] = None,
    path: str | None = None,
    attr: Annotated[list[str], Query(description="KEY=VALUE, repeatable")] = [],  # noqa: B006
    modality: Annotated[str | None, Query(max_length=64, description="DICOM modality: CT, MR...")] = None,
    body_part: Annotated[str | None, Query(max_length=64, description="DICOM body part: CHEST...")] = None,
) -> Filters:
    return Filters(
        after=after,
        before=before,
        camera=camera,
        format=format,
        min_width=min_width,
        min_height=min_height,
        path=path,
        attributes=tuple(parse_pairs(attr).items()),
        modality=modality or None,
        body_part=body_part or None,
    )


class Page(BaseModel):
    """Which results: collection, how many, from where, at least how good, in which order."""

    collection: str = DEFAULT_COLLECTION
    limit: int = 24
    offset: int = 0
    min_score: float | None = None
    min_relevance: float | None = None
    collapse_duplicates: bool = False
    sort: Literal["score", "date"] = "score"


def page(
    collection: str = DEFAULT_COLLECTION,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 24,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
    min_score: Annotated[float | None, Query(ge=-1, le=1)] = None,
    min_relevance: Annotated[
        float | None, Query(ge=-1000, le=1000, description="standard deviations above an unrelated image's score")
    ] = None,
    collapse_duplicates: Annotated[
        bool, Query(description="one result per duplicate group (`imagedb dupes`), its best match")
    ] = False,
    sort: Literal["score", "date"] = "score",
) -> Page:
    return Page(
        collection=collection,
        limit=limit,
        offset=offset,
        min_score=min_score,
        min_relevance=min_relevance,
        collapse_duplicates=collapse_duplicates,
        sort=sort,
    )
