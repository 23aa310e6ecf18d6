"""What the API takes and gives: response models, and the query parameters of the search routes, derived from the
declaration of a search (imagedb/request.py)."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import Query
from pydantic import BaseModel, ConfigDict

from imagedb import request
from imagedb.request import Filters, Param, SearchRequest, Term


class SearchHit(BaseModel):
    rank: int
    score: float
    # Standard deviations better than the mean score of the collection's random sample for this query, in the
    # search's metric (None: the collection has too few images for a sample).
    relevance: float | None
    duplicates: int = 0  # with collapse_duplicates: the other images of its duplicate group, not listed
    id: int
    path: str
    date: datetime
    thumbnail: str
    # Why it matched, for keyword and hybrid rankings (docs/keywords.md): 1-based ranks among the vector candidates
    # and the keyword matches (None: not among them), ts_rank_cd, and the query's words it holds.
    vector_rank: int | None = None
    keyword_rank: int | None = None
    keyword_score: float | None = None
    matched: list[str] = []


class SearchResponse(BaseModel):
    results: list[SearchHit]
    # What each score measures: cosine similarity, euclidean distance, pearson correlation or inner product.
    metric: str = "cosine"
    higher_is_better: bool = True  # False for a distance (euclidean)


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


class Page(BaseModel):
    """Which results: collection, how many, from where, at least how good, in which order. Its fields are the
    settings of a search that the API takes (request.settings() with an Api), as the `page` dependency read them."""

    model_config = ConfigDict(extra="allow")

    def request(self, terms: Sequence[Term], filters: Filters) -> SearchRequest:
        return replace(request.from_values(terms, self.model_dump()), filters=filters)


class QueryParameters:
    """A FastAPI dependency whose query parameters are Params: their names, types, bounds and descriptions, read
    when a route is made, so that a filter registered before create_app() is a parameter of the search routes.
    FastAPI checks each value (422) before make() gets them, by Param name."""

    def __init__(self, declared: Callable[[], list[Param]], make: Callable[[dict[str, Any]], Any]) -> None:
        self._declared = declared
        self._make = make

    @property
    def __signature__(self) -> inspect.Signature:  # what FastAPI reads a dependency's parameters from
        return inspect.Signature([_query_parameter(p) for p in self._declared()])

    def __call__(self, **given: Any) -> Any:
        values: dict[str, Any] = {}
        for param in self._declared():
            value = given.get(param.query_name)
            assert param.api is not None  # declared() gives only Params with an Api
            values[param.name] = None if param.api.blank_is_none and value == "" else value
        return self._make(values)


def _query_parameter(param: Param) -> inspect.Parameter:
    assert param.api is not None
    kind: Any = param.type
    if param.choices and param.case_sensitive:  # choices in any case are left to the library's check (400)
        kind = Literal[param.choices]  # type: ignore[valid-type]
    default = param.query_default
    if param.multiple:
        kind, default = list[kind], []  # type: ignore[valid-type]
    elif default is None:
        kind = kind | None
    bounds = {
        "ge": param.minimum,
        "le": param.api.maximum if param.api.maximum is not None else param.maximum,
        "max_length": param.api.max_length,
        "description": param.api.description,
    }
    query = Query(**{k: v for k, v in bounds.items() if v is not None})
    return inspect.Parameter(
        param.query_name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=Annotated[kind, query]
    )


def _filters(values: dict[str, Any]) -> Filters:
    return request.from_values((), values).filters


# The query parameters shared by the search routes: the settings (collection, limit...), then the filters.
page = QueryParameters(lambda: [p for p in request.settings() if p.api is not None], lambda values: Page(**values))
filters = QueryParameters(lambda: [p for p in request.FILTERS.values() if p.api is not None], _filters)
