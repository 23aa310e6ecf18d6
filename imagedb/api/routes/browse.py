"""Browsing without a query: a collection's images newest first, by keyset pages, and the counts to filter by.

The query parameters are the search routes' own, derived from the declaration of a search (imagedb/request/):
the collection and limit settings, and every filter."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel

from imagedb import browse, request
from imagedb.api.deps import Stores
from imagedb.api.schemas import QueryParameters, filters
from imagedb.request import Filters

router = APIRouter()


class Listed(BaseModel):
    id: int
    path: str
    date: datetime  # taken, else the file's time, in UTC
    format: str
    width: int
    height: int
    thumbnail: str


class BrowseResponse(BaseModel):
    collection: str
    results: list[Listed]
    # Pass as `cursor` for the next page; null on the last page.
    next: str | None


class FacetValue(BaseModel):
    value: str | int
    count: int


class FacetsResponse(BaseModel):
    collection: str
    total: int
    # format, camera, year and collection always; modality and body_part where DICOM images pass the filters.
    facets: dict[str, list[FacetValue]]


def _where(values: dict[str, Any]) -> dict[str, Any]:
    return values


# The settings of a search that a listing takes: which collection, how many.
where = QueryParameters(lambda: [p for p in request.settings() if p.name in ("collection", "limit")], _where)
Where = Annotated[dict[str, Any], Depends(where)]
Filtered = Annotated[Filters, Depends(filters)]


@router.get("/browse", response_model=BrowseResponse)
def newest(
    store: Stores,
    at: Where,
    f: Filtered,
    cursor: Annotated[str | None, Query(max_length=64, description="the `next` of the previous page")] = None,
) -> BrowseResponse:
    """The collection's images that pass the filters, newest first (taken, else the file's time), a page at a time:
    pass the answer's `next` as `cursor` for the following page."""
    with store() as s:
        page = browse.newest(s, at["collection"], f, at["limit"], cursor or None)
    results = [
        Listed(**{**vars(i), "thumbnail": f"/api/images/{i.id}/thumbnail"})  # type: ignore[arg-type]
        for i in page.images
    ]
    return BrowseResponse(collection=at["collection"], results=results, next=page.next)


@router.get("/facets", response_model=FacetsResponse)
def facets(store: Stores, at: Where, f: Filtered) -> FacetsResponse:
    """How many of the collection's images pass the filters, and how many of those have each format, camera, year
    (newest first), collection and, where DICOM images pass them, modality and body part."""
    with store() as s:
        found = browse.facets(s, at["collection"], f)
    counts = {name: [FacetValue(value=v, count=n) for v, n in values] for name, values in found.counts.items()}
    return FacetsResponse(collection=at["collection"], total=found.total, facets=counts)
